"""Breakpoints -> prefix keys (the marked chain's records): validation, chaining, stripping."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.chain import Prefix, build_chain
from router.errors import InvalidRequest
from router.prefix import check_marker_places, strip_cache_control

EPHEMERAL = {"type": "ephemeral"}
NS = "pool\x00model"


def part(text: str, cc: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "text", "text": text}
    if cc is not None:
        out["cache_control"] = cc
    return out


def chat(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": list(messages), **extra}


def system(text: str, cc: dict[str, Any] | None = EPHEMERAL) -> dict[str, Any]:
    return {"role": "system", "content": [part(text, cc)]}


def find_breakpoints(body: dict[str, Any], namespace: str) -> list[Prefix]:
    return build_chain(body, namespace, automatic=False).records


def test_no_markers_no_keys() -> None:
    assert find_breakpoints(chat({"role": "user", "content": "hi"}), NS) == []


def test_key_ignores_what_follows_the_breakpoint() -> None:
    a = find_breakpoints(chat(system("long stable prompt"), {"role": "user", "content": "q1"}), NS)
    b = find_breakpoints(chat(system("long stable prompt"), {"role": "user", "content": "q2"}), NS)
    assert len(a) == 1
    assert a == b
    assert a[0].ttl == 300


def test_namespace_separates_pools() -> None:
    body = chat(system("stable"))
    assert find_breakpoints(body, "a\x00m")[0].key != find_breakpoints(body, "b\x00m")[0].key


def test_string_content_and_text_part_share_a_key() -> None:
    as_part = chat({"role": "system", "content": [part("same", EPHEMERAL)]})
    as_message = chat({"role": "system", "content": "same", "cache_control": EPHEMERAL})
    assert find_breakpoints(as_part, NS) == find_breakpoints(as_message, NS)


def test_tool_breakpoint_and_top_level_automatic_mode() -> None:
    tool = {"type": "function", "function": {"name": "f"}, "cache_control": EPHEMERAL}
    body = chat({"role": "user", "content": "hi"}, tools=[tool], cache_control=EPHEMERAL)
    keys = find_breakpoints(body, NS)
    assert len(keys) == 2
    assert keys[0].key != keys[1].key
    assert keys[0].tokens < keys[1].tokens


def test_one_hour_ttl() -> None:
    [bp] = find_breakpoints(chat(system("x", {"type": "ephemeral", "ttl": "1h"})), NS)
    assert bp.ttl == 3600


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (chat(system("x", {"type": "persistent"})), "messages[0].content[0].cache_control.type"),
        (
            chat(system("x", {"type": "ephemeral", "ttl": "2h"})),
            "messages[0].content[0].cache_control.ttl",
        ),
        (chat(system("x", "yes")), "messages[0].content[0].cache_control"),  # type: ignore[arg-type]
        (
            chat(
                system("a", {"type": "ephemeral", "ttl": "5m"}),
                system("b", {"type": "ephemeral", "ttl": "1h"}),
            ),
            "messages[1].content[0].cache_control.ttl",
        ),
        (chat(*(system(str(i)) for i in range(5))), "messages[4].content[0].cache_control"),
    ],
)
def test_bad_breakpoints_name_the_param(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        find_breakpoints(body, NS)
    assert caught.value.param == param
    assert caught.value.http_status == 400


def test_one_hour_before_five_minutes_is_fine() -> None:
    body = chat(system("a", {"type": "ephemeral", "ttl": "1h"}), system("b", {"type": "ephemeral"}))
    assert [bp.ttl for bp in find_breakpoints(body, NS)] == [3600, 300]


def test_strip_removes_every_marker_and_leaves_the_input_alone() -> None:
    tool = {"type": "function", "function": {"name": "f"}, "cache_control": EPHEMERAL}
    body = chat(
        system("a"),
        {"role": "user", "content": "q", "cache_control": EPHEMERAL},
        tools=[tool],
        cache_control=EPHEMERAL,
    )
    before = copy.deepcopy(body)
    stripped = strip_cache_control(body)
    assert body == before
    assert "cache_control" not in str(stripped)
    assert stripped["messages"][0]["content"][0] == {"type": "text", "text": "a"}


texts = st.lists(st.text(min_size=1, max_size=20), min_size=2, max_size=6)


def _marked(chunks: list[str], marks: set[int], ttl: str = "5m") -> dict[str, Any]:
    parts = [
        part(t, {"type": "ephemeral", "ttl": ttl} if i in marks else None)
        for i, t in enumerate(chunks)
    ]
    return chat({"role": "user", "content": parts})


@given(texts, st.data())
def test_longer_prefix_never_shares_a_key(chunks: list[str], data: st.DataObject) -> None:
    marks = set(range(len(chunks)))
    if len(marks) > 4:
        marks = set(sorted(marks)[-4:])
    keys = [bp.key for bp in find_breakpoints(_marked(chunks, marks), NS)]
    assert len(set(keys)) == len(keys)


@given(texts, st.data())
def test_changing_an_earlier_block_changes_every_later_key(
    chunks: list[str], data: st.DataObject
) -> None:
    index = data.draw(st.integers(0, len(chunks) - 1))
    marks = set(range(index, min(len(chunks), index + 4)))
    changed = list(chunks)
    changed[index] = chunks[index] + "!"
    before = find_breakpoints(_marked(chunks, marks), NS)
    after = find_breakpoints(_marked(changed, marks), NS)
    assert all(a.key != b.key for a, b in zip(before, after, strict=True))


@given(texts, st.data())
def test_moving_or_rettling_a_marker_keeps_the_content_hash(
    chunks: list[str], data: st.DataObject
) -> None:
    last = len(chunks) - 1
    ttl = data.draw(st.sampled_from(["5m", "1h"]))
    only_last = find_breakpoints(_marked(chunks, {last}, ttl), NS)
    earlier = data.draw(st.integers(0, last))
    both = find_breakpoints(_marked(chunks, {earlier, last}), NS)
    assert only_last[-1].key == both[-1].key


MARKER = {"type": "ephemeral"}
CALL = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            chat(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{**CALL, "cache_control": MARKER}],
                }
            ),
            "messages[0].tool_calls[0].cache_control",
        ),
        (
            chat(
                {"role": "user", "content": "hi"},
                tools=[{"type": "function", "function": {"name": "f", "cache_control": MARKER}}],
            ),
            "tools[0].function.cache_control",
        ),
        (
            chat(
                {"role": "user", "content": "hi"},
                response_format={"type": "json_object", "cache_control": MARKER},
            ),
            "response_format.cache_control",
        ),
        (
            chat(
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image_url",
                            "image_url": {"url": "https://x/y.png", "cache_control": MARKER},
                        }
                    ],
                }
            ),
            "messages[0].content[0].image_url.cache_control",
        ),
    ],
)
def test_a_marker_where_none_is_read_is_refused_by_name(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_marker_places(body)
    assert caught.value.param == param
    assert caught.value.http_status == 400


def test_a_null_marker_anywhere_is_no_marker() -> None:
    call = {**CALL, "cache_control": None}
    body = chat(
        {"role": "assistant", "content": None, "tool_calls": [call]},
        response_format={"type": "text", "cache_control": None},
    )
    check_marker_places(body)


def test_a_schema_property_named_cache_control_is_not_a_marker() -> None:
    """A JSON schema may describe a ``cache_control`` property (an HTTP tool's argument)."""
    schema = {"type": "object", "properties": {"cache_control": {"type": "string"}}}
    tool = {"type": "function", "function": {"name": "fetch", "parameters": schema}}
    body = chat(
        {"role": "user", "content": "hi"},
        tools=[tool],
        response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}},
    )
    check_marker_places(body)


def test_the_word_cache_control_in_text_is_not_a_marker() -> None:
    body = chat(
        {"role": "user", "content": "cache_control"},
        {"role": "user", "content": 'set "cache_control" on it'},
        system("x"),
    )
    check_marker_places(body)


_read_places = st.fixed_dictionaries(
    {},
    optional={
        "top": st.just(MARKER),
        "tool": st.just(MARKER),
        "message": st.just(MARKER),
        "part": st.just(MARKER),
        "null": st.none(),
    },
)


@given(_read_places, st.text(max_size=30))
def test_markers_where_they_are_read_are_never_refused(places: dict[str, Any], text: str) -> None:
    tool: dict[str, Any] = {"type": "function", "function": {"name": "f"}}
    part: dict[str, Any] = {"type": "text", "text": text}
    message: dict[str, Any] = {"role": "user", "content": [part]}
    if "tool" in places:
        tool["cache_control"] = places["tool"]
    if "part" in places:
        part["cache_control"] = places["part"]
    if "message" in places:
        message["cache_control"] = places["message"]
    if "null" in places:
        tool["cache_control"] = None
    extra = {"cache_control": MARKER} if "top" in places else {}
    body = chat(message, {"role": "assistant", "content": text}, tools=[tool], **extra)
    check_marker_places(body)
