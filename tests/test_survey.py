"""The messages survey: every reader that skips plain turns answers as if it had read them all."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.classify import classify
from router.config import LimitsConfig
from router.limits import Limits, check
from router.prefix import find_markers, iter_blocks, strip_cache_control
from router.survey import Survey, survey, survey_of

EPHEMERAL = {"type": "ephemeral"}

text = st.text(max_size=8)
marker = st.sampled_from([None, EPHEMERAL, {"type": "ephemeral", "ttl": "1h"}])
plain = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant"]), "content": text}
)


@st.composite
def other(draw: st.DrawFn) -> Any:
    """A turn the survey must not call plain: parts, markers, tool turns, extra keys, junk."""
    kind = draw(st.sampled_from(["parts", "marked", "tool", "calls", "named", "none", "junk"]))
    if kind == "parts":
        parts = draw(st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": text})))
        return {"role": "user", "content": parts}
    if kind == "marked":
        part = {"type": "text", "text": draw(text), "cache_control": draw(marker)}
        return {"role": "user", "content": [part], "cache_control": draw(marker)}
    if kind == "tool":
        return {"role": "tool", "content": draw(text), "tool_call_id": "c1"}
    if kind == "calls":
        call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        return {"role": "assistant", "content": None, "tool_calls": [call]}
    if kind == "named":
        return {"role": "user", "content": draw(text), "name": "ann"}
    if kind == "none":
        return {"role": "assistant", "content": None}
    return draw(st.sampled_from([[], "turn", 3, None]))


messages = st.lists(st.one_of(plain, other()), max_size=12)
tools = st.lists(
    st.fixed_dictionaries({"type": st.just("function")}, optional={"cache_control": marker}),
    max_size=2,
)


def unsurveyed(body: dict[str, Any]) -> Survey:
    """A survey that calls no turn plain: every reader then reads every turn."""
    found = body["messages"]
    return Survey(found, list(range(len(found))))


def test_plain_turns_are_a_known_role_and_a_string_and_nothing_else() -> None:
    turns: list[Any] = [
        {"role": "user", "content": "hi"},
        {"role": "tool", "content": "42", "tool_call_id": "c"},
        {"role": "user", "content": "hi", "name": "ann"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": ["user"], "content": "hi"},
        {"role": "assistant", "content": "hello"},
        "junk",
    ]
    found = survey(turns)
    assert found.others == [1, 2, 3, 4, 6]
    assert found.plain == 2
    assert found.plain_strings() == ["user", "assistant", "hi", "hello"]
    assert survey("not a list").messages == []


def test_a_survey_answers_only_for_the_list_it_was_taken_of() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    found = survey(body["messages"])
    assert survey_of(body, found) is found
    copied = {"messages": list(body["messages"])}
    assert survey_of(copied, found) is not found


@settings(max_examples=300, deadline=None)
@given(messages, tools, st.one_of(st.none(), marker))
def test_markers_match_the_blocks_read_one_by_one(
    turns: list[Any], tool_list: list[Any], top: Any
) -> None:
    body: dict[str, Any] = {"model": "m", "messages": turns, "tools": tool_list}
    if top is not None:
        body["cache_control"] = top
    found = find_markers(body, survey(turns))
    blocks = list(iter_blocks(body))
    assert found.blocks == len(blocks)
    assert set(found.at) == {i for i, block in enumerate(blocks) if block.marker is not None}
    assert found == find_markers(body, unsurveyed(body))


@settings(max_examples=200, deadline=None)
@given(messages, tools)
def test_stripping_only_the_marked_turns_equals_stripping_all(
    turns: list[Any], tool_list: list[Any]
) -> None:
    body: dict[str, Any] = {"model": "m", "messages": turns, "tools": tool_list}
    before = copy.deepcopy(body)
    assert strip_cache_control(body, find_markers(body)) == strip_cache_control(body)
    assert body == before


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.one_of(plain, other()), max_size=30),
    st.integers(1, 8),
    st.integers(5, 120),
    st.booleans(),
    st.integers(5, 12),  # around the keys' and roles' own lengths ("model": 5, "assistant": 9)
)
def test_limits_count_plain_turns_as_if_walked(
    turns: list[Any], depth: int, values: int, hashing: bool, longest: int
) -> None:
    config = LimitsConfig(max_depth=depth, max_json_values=values, max_hashed_string=longest)
    limits = Limits.of(config)
    body = {"model": "m", "messages": turns}
    fast = check(body, limits, hashing=hashing, surveyed=survey(turns))
    walked = check(body, limits, hashing=hashing, surveyed=unsurveyed(body))
    # Which limit a body over two of them is told about may differ; whether it is over one
    # may not.
    assert (fast is None) == (walked is None)


@pytest.mark.parametrize(
    ("turns", "expected"),
    [
        ([{"role": "user", "content": "hi"}] * 3, "text"),
        (
            [
                {"role": "user", "content": "hi"},
                {"role": "tool", "content": "1", "tool_call_id": "c"},
            ],
            "code",
        ),
        (
            [
                {"role": "user", "content": "hi"},
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]},
            ],
            "vision",
        ),
    ],
)
def test_classification_reads_the_turns_that_are_not_plain(turns: list[Any], expected: str) -> None:
    body = {"model": "m", "messages": turns}
    assert classify(body, surveyed=survey(turns)).value == expected
