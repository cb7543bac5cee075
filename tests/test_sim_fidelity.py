"""Simulator answers where clients notice: JSON mode that follows the prompt, and logprobs."""

from __future__ import annotations

import json
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import openai
import pytest

from router.sim.json_prompt import requested_schema

from .conftest import Stack

USER_SCHEMA = {
    "title": "User",
    "type": "object",
    "properties": {
        "name": {"title": "Name", "type": "string"},
        "age": {"title": "Age", "type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age"],
}


def json_answer(stack: Stack, messages: Any) -> Any:
    answer = stack.client().chat.completions.create(
        model="m", messages=messages, response_format={"type": "json_object"}
    )
    content = answer.choices[0].message.content
    assert content is not None
    return json.loads(content)


def test_json_mode_follows_a_schema_in_the_system_prompt(stack: Stack) -> None:
    # The way instructor's JSON mode asks.
    system = (
        "As a genius expert, your task is to understand the content and provide the parsed "
        "objects in json that match the following json_schema:\n\n"
        + json.dumps(USER_SCHEMA, indent=2)
        + "\n\nMake sure to return an instance of the JSON, not the schema itself"
    )
    value = json_answer(
        stack, [{"role": "system", "content": system}, {"role": "user", "content": "Ann, 31"}]
    )
    jsonschema.validate(value, USER_SCHEMA)
    assert set(value) == {"name", "age", "tags"}


def test_json_mode_follows_langchains_format_instructions(stack: Stack) -> None:
    instructions = (
        "The output should be formatted as a JSON instance that conforms to the JSON schema "
        'below.\n\nAs an example, for the schema {"properties": {"foo": {"title": "Foo", '
        '"description": "a list of strings", "type": "array", "items": {"type": "string"}}}, '
        '"required": ["foo"]}\nthe object {"foo": ["bar", "baz"]} is a well-formatted instance '
        'of the schema. The object {"properties": {"foo": ["bar", "baz"]}} is not '
        "well-formatted.\n\nHere is the output schema:\n```\n"
        + json.dumps({k: v for k, v in USER_SCHEMA.items() if k != "type"})
        + "\n```"
    )
    value = json_answer(stack, [{"role": "user", "content": "Tell me a joke.\n" + instructions}])
    jsonschema.validate(value, USER_SCHEMA)


@pytest.mark.parametrize(
    ("prompt", "keys"),
    [
        ('Reply in JSON with the keys "city" and "country".', {"city", "country"}),
        ("Return a JSON object with fields: title, year and rating", {"title", "year", "rating"}),
        ('Answer exactly like {"ok": true, "count": 3}', {"ok", "count"}),
    ],
)
def test_json_mode_uses_field_names_from_the_prompt(
    stack: Stack, prompt: str, keys: set[str]
) -> None:
    value = json_answer(stack, [{"role": "user", "content": prompt}])
    assert set(value) == keys


def test_json_mode_without_a_readable_shape_is_still_json(stack: Stack) -> None:
    value = json_answer(stack, [{"role": "user", "content": "Give me JSON {not json at all"}])
    assert isinstance(value, dict) and value


def test_requested_schema_prefers_the_newest_message() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": 'Use the keys "a" and "b".'},
        {"role": "user", "content": [{"type": "text", "text": 'Now use the keys "c".'}]},
    ]
    schema = requested_schema(messages)
    assert schema is not None and list(schema["properties"]) == ["c"]
    assert requested_schema([{"role": "user", "content": "hi"}]) is None


def test_chat_logprobs_in_the_openai_shape(stack: Stack) -> None:
    answer = stack.client().chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        logprobs=True,
        top_logprobs=3,
    )
    choice = answer.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    content = choice.logprobs.content
    assert "".join(entry.token for entry in content) == choice.message.content
    for entry in content:
        assert entry.logprob < 0 and entry.bytes == list(entry.token.encode())
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].token == entry.token
        values = [alt.logprob for alt in entry.top_logprobs]
        assert values == sorted(values, reverse=True)
    plain = stack.client().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )
    assert plain.choices[0].logprobs is None


def test_streamed_chat_logprobs_come_with_each_token(stack: Stack) -> None:
    chunks = list(
        stack.client().chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "hi"}],
            logprobs=True,
            top_logprobs=2,
            stream=True,
        )
    )
    text = tokens = ""
    for chunk in chunks:
        if not chunk.choices or not chunk.choices[0].delta.content:
            continue
        logprobs = chunk.choices[0].logprobs
        assert logprobs is not None and logprobs.content is not None
        (entry,) = logprobs.content
        assert entry.token == chunk.choices[0].delta.content
        assert len(entry.top_logprobs) == 2
        text += chunk.choices[0].delta.content
        tokens += entry.token
    assert text and text == tokens


def test_legacy_completion_logprobs(stack: Stack) -> None:
    answer = stack.client().completions.create(model="m", prompt="Say", logprobs=2, max_tokens=5)
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens is not None
    assert "".join(logprobs.tokens) == answer.choices[0].text
    assert logprobs.text_offset is not None and logprobs.text_offset[0] == 0
    assert logprobs.top_logprobs is not None and all(len(t) == 2 for t in logprobs.top_logprobs)


def test_top_logprobs_without_logprobs_is_a_400(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError, match="logprobs must be true"):
        stack.client().chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], top_logprobs=2
        )
