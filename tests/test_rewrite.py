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
from router.rewrite import CHAT, MESSAGES, RESPONSES, Shape, upstream_body

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
        body.get("model"),
        cache_salt="salt" if config.cache_salt else None,
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
    assert sent["cache_salt"] == "salt"
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
