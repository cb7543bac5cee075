"""Deterministic choices: lengths, finish reasons, stop strings and seeds."""

from __future__ import annotations

from typing import Any

import pytest

from router.sim.errors import SimError
from router.sim.generate import chat_choices, cut_at_stop
from router.sim.request import ChatRequest
from router.sim.settings import SimSettings
from router.sim.tokenizer import chat_prompt, tokenize

SETTINGS = SimSettings(output_tokens=20)


def _choices(**fields: Any) -> list[Any]:
    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}], **fields}
    request = ChatRequest.model_validate(body)
    prompt = chat_prompt(request.messages, request.tools, image_count=SETTINGS.image_tokens)
    return chat_choices(request, prompt, SETTINGS)


def test_cut_at_stop_cuts_inside_a_piece_at_the_earliest_stop() -> None:
    assert cut_at_stop(["ab", "cd", "ef"], ["e", "d"]) == (["ab", "c"], True)
    assert cut_at_stop(["ab", "cd"], ["ab"]) == ([], True)
    assert cut_at_stop(["ab", "cd"], ["x", ""]) == (["ab", "cd"], False)


def test_default_length_stops_and_a_limit_is_a_length_finish() -> None:
    (default,) = _choices()
    assert (default.tokens, default.finish_reason) == (20, "stop")
    (limited,) = _choices(max_tokens=7)
    assert (limited.tokens, limited.finish_reason) == (7, "length")
    (newer,) = _choices(max_tokens=7, max_completion_tokens=3)
    assert newer.tokens == 3
    assert len(tokenize(default.text)) == default.tokens


def test_output_is_deterministic_and_varies_by_choice_and_seed() -> None:
    first = _choices(n=2)
    assert [c.text for c in first] == [c.text for c in _choices(n=2)]
    assert first[0].text != first[1].text
    assert _choices(seed=1)[0].text != _choices(seed=2)[0].text


def test_stop_string_cuts_the_text() -> None:
    (full,) = _choices()
    word = full.text.split()[3]
    (stopped,) = _choices(stop=[word])
    assert stopped.text == full.text[: full.text.index(word)]
    assert stopped.finish_reason == "stop"


def test_json_document_cut_by_the_limit_finishes_with_length() -> None:
    (choice,) = _choices(response_format={"type": "json_object"}, max_tokens=3)
    assert (choice.tokens, choice.finish_reason) == (3, "length")


def test_forcing_an_unknown_function_is_a_400() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    choice = {"type": "function", "function": {"name": "g"}}
    with pytest.raises(SimError) as caught:
        _choices(tools=tools, tool_choice=choice)
    assert caught.value.status == 400
    assert caught.value.param == "tool_choice"
