"""The upstream body: the client's bytes unless a backend setting changes them, on every surface."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from router.balancer import Pool
from router.chain import NO_PREFIX, build_chain
from router.classify import RequestType
from router.config import BackendConfig
from router.dispatch import Plan
from router.prefix import find_markers
from router.rewrite import (
    CHAT,
    CHAT_FROM_MESSAGES,
    MESSAGES,
    RESPONSES,
    Outgoing,
    Shape,
    upstream_body,
)
from router.tenants import cache_salt

EPHEMERAL = {"type": "ephemeral"}


def plan(body: dict[str, Any], effort: str | None = None, **backend: Any) -> Plan:
    config = BackendConfig.model_validate(
        {"name": "pool", "replicas": [{"id": "r0", "url": "http://127.0.0.1:1"}], **backend}
    )
    markers = find_markers(body)
    chain = build_chain(body, "ns", markers=markers) if markers.keys else NO_PREFIX
    return Plan(
        RequestType.TEXT,
        Pool(config, []),
        chain,
        markers if markers.keys else None,
        scope="team-a",
        effort=effort,
    )


CHAT_BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
MARKED_CHAT = {
    "model": "m",
    "messages": [
        {"role": "system", "content": [{"type": "text", "text": "s", "cache_control": EPHEMERAL}]},
        {"role": "user", "content": "hi"},
    ],
}


@pytest.mark.parametrize("shape", [CHAT, RESPONSES, MESSAGES])
def test_an_unchanged_body_goes_as_the_clients_bytes(shape: Shape) -> None:
    raw = b'{"model":  "m", "messages": [{"role": "user", "content": "hi"}]}'
    assert upstream_body(orjson.loads(raw), raw, plan(CHAT_BODY), shape) is raw


def test_chat_gets_model_salt_effort_and_loses_its_markers() -> None:
    sent = orjson.loads(
        upstream_body(
            MARKED_CHAT,
            orjson.dumps(MARKED_CHAT),
            plan(MARKED_CHAT, "high", model="up", cache_salt=True, reasoning_effort=True),
        )
    )
    assert sent["model"] == "up"
    assert sent["cache_salt"] == cache_salt("team-a")
    assert sent["reasoning_effort"] == "high"
    assert b"cache_control" not in orjson.dumps(sent)
    assert sent["messages"][1] == {"role": "user", "content": "hi"}


def test_responses_effort_goes_in_reasoning_and_markers_leave_the_input() -> None:
    part = {"type": "input_text", "text": "hi", "cache_control": EPHEMERAL}
    body = {
        "model": "m",
        "reasoning": {"summary": "auto"},
        "input": [{"role": "user", "content": [part]}],
    }
    sent = orjson.loads(
        upstream_body(
            body, orjson.dumps(body), plan(MARKED_CHAT, "low", reasoning_effort=True), RESPONSES
        )
    )
    assert sent["reasoning"] == {"summary": "auto", "effort": "low"}
    assert "reasoning_effort" not in sent
    assert b"cache_control" not in orjson.dumps(sent)
    assert "messages" not in sent


def test_messages_keep_their_own_effort_and_take_no_prompt_cache_key() -> None:
    body = {
        "model": "m",
        "max_tokens": 8,
        "system": [{"type": "text", "text": "s", "cache_control": EPHEMERAL}],
        "messages": [{"role": "user", "content": "hi"}],
    }
    sent = orjson.loads(
        upstream_body(
            body,
            orjson.dumps(body),
            plan(MARKED_CHAT, "high", reasoning_effort=True, prompt_cache_key=True),
            MESSAGES,
        )
    )
    assert "reasoning_effort" not in sent and "prompt_cache_key" not in sent
    assert sent["system"] == [{"type": "text", "text": "s"}]


def test_a_fallback_pool_gets_a_body_shaped_by_its_own_backend() -> None:
    """The first pool strips markers, salts and continues a prefill; a plain OpenAI-style
    fallback must get none of its fields, only its own model."""
    prefill = {
        "model": "m",
        "messages": [
            {
                "role": "system",
                "content": [{"type": "text", "text": "s", "cache_control": EPHEMERAL}],
            },
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "The colour is"},
        ],
    }
    first = plan(prefill, cache_salt=True, continue_final_message=True)
    fallback = BackendConfig.model_validate(
        {
            "name": "spare",
            "model": "gpt-x",
            "forward_cache_control": True,
            "replicas": [{"id": "s0", "url": "http://127.0.0.1:2"}],
        }
    )
    outgoing = Outgoing(prefill, orjson.dumps(prefill), CHAT_FROM_MESSAGES)
    primary = orjson.loads(outgoing.payload(first))
    assert primary["continue_final_message"] is True and "cache_salt" in primary
    spare = orjson.loads(outgoing.payload(first.on(Pool(fallback, []))))
    assert spare["model"] == "gpt-x"
    assert "continue_final_message" not in spare and "cache_salt" not in spare
    assert spare["messages"] == prefill["messages"]  # forward_cache_control: markers kept


def test_a_prefill_is_text_to_continue_not_a_tool_call() -> None:
    calls = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "w", "arguments": "{}"}}
                ],
            },
        ],
    }
    sent = orjson.loads(
        upstream_body(calls, None, plan(calls, continue_final_message=True), CHAT_FROM_MESSAGES)
    )
    assert "continue_final_message" not in sent
