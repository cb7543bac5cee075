"""The prefix chain: lookback over block boundaries, automatic prefixes, hashing that stops."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.chain import LOOKBACK_BLOCKS, PROMPT_CHUNK_TOKENS, build_chain, prompt_chain
from router.prefix import BYTES_PER_TOKEN

NS = "pool\x00model"
EPHEMERAL = {"type": "ephemeral"}
LONG = " ".join(["lorem"] * 1200)  # ~1,800 estimated tokens


def text(value: str, marked: bool = False) -> list[dict[str, Any]]:
    part: dict[str, Any] = {"type": "text", "text": value}
    if marked:
        part["cache_control"] = EPHEMERAL
    return [part]


def conversation(turns: int, style: str) -> dict[str, Any]:
    """A chat of ``turns`` user turns, marked in one of the three styles (or not at all)."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": text(LONG, marked=style == "system")}
    ]
    for turn in range(turns):
        newest = turn == turns - 1
        messages.append(
            {"role": "user", "content": text(f"question {turn}", style == "newest" and newest)}
        )
        if not newest:
            messages.append({"role": "assistant", "content": f"answer {turn}"})
    body: dict[str, Any] = {"model": "m", "messages": messages}
    if style == "top-level":
        body["cache_control"] = EPHEMERAL
    return body


@pytest.mark.parametrize("style", ["top-level", "newest", "none"])
def test_the_next_turn_looks_up_what_the_previous_turn_recorded(style: str) -> None:
    for turns in range(1, 5):
        before = build_chain(conversation(turns, style), NS)
        after = build_chain(conversation(turns + 1, style), NS)
        looked_up = {p.key for p in after.lookups}
        # The previous turn's whole prompt is a prefix of this one, found by lookback.
        assert before.records[-1].key in looked_up
        assert after.records[-1].tokens > before.records[-1].tokens


@pytest.mark.parametrize(
    ("style", "turns"),
    [("top-level", [True]), ("newest", [True]), ("system", [False]), ("none", [False])],
)
def test_a_breakpoint_on_a_conversations_turn_is_a_turn(style: str, turns: list[bool]) -> None:
    """A conversation marked on its latest turn records a turn (the next turns extend it);
    a marked system prompt, shared by the requests that follow it, and automatic prefixes
    do not."""
    chain = build_chain(conversation(3, style), NS)
    assert [p.turn for p in chain.records][-1:] == turns


def test_turns_are_the_messages_after_the_system_prompt_and_tools() -> None:
    """Tools and the system (or developer) prompt are what requests share; every other
    marked message is a turn, also when an assistant prefill follows the newest one, and
    both of the two newest when the client marks two."""
    body: dict[str, Any] = {
        "model": "m",
        "tools": [{"type": "function", "function": {"name": "f"}, "cache_control": EPHEMERAL}],
        "messages": [
            {"role": "developer", "content": text(LONG, marked=True)},
            {"role": "user", "content": text("question 0 " + LONG, marked=True)},
            {"role": "assistant", "content": "answer 0"},
            {"role": "user", "content": text("question 1", marked=True)},
            {"role": "assistant", "content": "The answer is"},  # a prefill
        ],
    }
    chain = build_chain(body, NS)
    assert [p.turn for p in chain.records] == [False, False, True, True]


def test_a_marked_system_prompt_is_the_same_prefix_every_turn() -> None:
    keys = {build_chain(conversation(turns, "system"), NS).records[-1].key for turns in (1, 4)}
    assert len(keys) == 1


def test_hashing_stops_at_the_last_boundary_needed() -> None:
    body = conversation(3, "system")
    # Anything after the breakpoint is never serialised: this would not be.
    body["messages"].append({"role": "user", "content": [{"type": "text", "text": {1, 2}}]})
    chain = build_chain(body, NS)
    assert len(chain.records) == 1 and chain.marked


def test_lookback_reaches_twenty_blocks_before_a_breakpoint() -> None:
    parts: list[dict[str, Any]] = [
        {"type": "text", "text": f"part {i} " + "x" * 40} for i in range(30)
    ]
    parts[29]["cache_control"] = EPHEMERAL
    chain = build_chain({"model": "m", "messages": [{"role": "user", "content": parts}]}, NS)
    assert len(chain.lookups) == LOOKBACK_BLOCKS + 1
    assert [p.tokens for p in chain.lookups] == sorted(p.tokens for p in chain.lookups)
    assert chain.records == [chain.lookups[-1]] and chain.records[0].turn


def test_automatic_prefixes_need_the_minimum_and_can_be_turned_off() -> None:
    short = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
    assert build_chain(short, NS).lookups == []
    long = conversation(2, "none")
    chain = build_chain(long, NS)
    assert chain.automatic and not chain.marked
    assert all(p.tokens >= 1024 and p.ttl == 300 for p in chain.lookups)
    # Records: the first eligible boundary (the system prompt) and the whole prompt.
    assert len(chain.records) == 2
    assert build_chain(long, NS, automatic=False).lookups == []
    assert build_chain(long, NS, automatic_min_tokens=100_000).lookups == []


def test_requests_sharing_a_system_prompt_share_their_placement_key() -> None:
    a = conversation(1, "none")
    b = conversation(3, "none")
    assert build_chain(a, NS).placement_key == build_chain(b, NS).placement_key
    assert build_chain(a, NS).records[-1].key != build_chain(b, NS).records[-1].key


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.text(max_size=300), min_size=1, max_size=40),
    st.integers(0, 200),
    st.data(),
)
def test_automatic_keys_are_the_keys_of_the_shorter_conversations(
    contents: list[str], minimum: int, data: st.DataObject
) -> None:
    """Every automatic lookup is the whole-prompt key of the conversation cut at that
    boundary, and the boundaries are the first eligible one and the last twenty."""
    messages = [{"role": "user", "content": c} for c in contents]
    body = {"model": "m", "messages": messages}
    chain = build_chain(body, NS, automatic_min_tokens=minimum)
    whole_keys = [
        build_chain({**body, "messages": messages[:cut]}, NS, automatic_min_tokens=0).lookups
        for cut in range(1, len(messages) + 1)
    ]
    wanted = [(i, keys[-1]) for i, keys in enumerate(whole_keys) if keys[-1].tokens >= minimum]
    tail = [(i, p) for i, p in wanted if i >= len(messages) - LOOKBACK_BLOCKS]
    expected = ([wanted[0]] if wanted and wanted[0] not in tail else []) + tail
    assert [p.key for p in chain.lookups] == [p.key for _, p in expected]
    assert [p.tokens for p in chain.lookups] == sorted(p.tokens for p in chain.lookups)


def test_a_prompt_has_boundaries_every_chunk_from_its_start() -> None:
    chunk = PROMPT_CHUNK_TOKENS * BYTES_PER_TOKEN
    text = "x" * (chunk * 30 + 5)
    chain = prompt_chain(text, "ns", minimum=1024)
    tokens = [p.tokens for p in chain.lookups]
    first = 1024 // PROMPT_CHUNK_TOKENS  # the first chunk end holding 1,024 tokens
    assert tokens[0] == first * PROMPT_CHUNK_TOKENS
    assert tokens[1:] == [n * PROMPT_CHUNK_TOKENS for n in range(30 - LOOKBACK_BLOCKS + 1, 31)]
    assert [p.key for p in chain.records] == [chain.lookups[0].key, chain.lookups[-1].key]
    # A longer prompt with the same start has the same keys where the chunks are the same.
    longer = prompt_chain(text + "y" * chunk * 3, "ns", minimum=1024)
    assert chain.lookups[-1].key in {p.key for p in longer.lookups}
    assert prompt_chain(text, "other", minimum=1024).lookups[0].key != chain.lookups[0].key


@pytest.mark.parametrize(
    "prompt",
    ["short", ["a" * 20_000, "b" * 20_000], [[1, 2], [3]], [], 5, [1.5] * 5000],
)
def test_no_automatic_prefix_for_short_batched_or_odd_prompts(prompt: Any) -> None:
    assert prompt_chain(prompt, "ns", minimum=1024).lookups == []


def test_a_one_prompt_batch_and_token_ids_have_prefixes() -> None:
    text = "z" * 20_000
    assert prompt_chain([text], "ns", 1024).lookups == prompt_chain(text, "ns", 1024).lookups
    ids = prompt_chain(list(range(3000)), "ns", 1024)
    assert ids.lookups and ids.lookups[0].tokens == 1024
    huge = prompt_chain([2**63 + 1] * 3000, "ns", 1024)  # past int64: hashed as text
    assert huge.lookups
