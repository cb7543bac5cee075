"""Bounded work per request: the limits, the worker-process pre-check, and the loop staying free."""

from __future__ import annotations

import asyncio
import io
import statistics
import time
from typing import Any

import aiohttp
import orjson
import pytest

from router.config import LimitsConfig, ServerConfig
from router.errors import InvalidRequest
from router.keys import CONFIG
from router.limits import BodyParser, Limits, check

from .conftest import Stack

LIMITS = Limits.of(LimitsConfig())


def nest(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "x"}], **extra}


def test_defaults_pass_a_large_ordinary_request() -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "x" * 100}]}] * 4000
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}] * 500
    assert check({"model": "m", "messages": messages, "tools": tools}, LIMITS, hashing=True) is None


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ({"model": "m", "messages": [{"role": "user", "content": "x"}] * 4097}, "max_messages"),
        ({"model": "m", "input": [{"role": "user", "content": "x"}] * 4097}, "max_messages"),
        (
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}] * 8193}]},
            "max_content_parts",
        ),
        (chat(tools=[{"type": "function"}] * 513), "max_tools"),
        (chat(functions=[{"name": "f"}] * 513), "max_tools"),
        (chat(x=nest(64)), "max_depth"),  # 64 levels here, plus the body object itself
        (chat(x=[0] * 70_000), "max_json_values"),
        (chat(x={str(i): 0 for i in range(40_000)}), "max_json_values"),
    ],
)
def test_each_limit_is_named(body: dict[str, Any], key: str) -> None:
    breach = check(body, LIMITS, hashing=False)
    assert breach is not None
    assert f"server.limits.{key}" in breach.message
    error = breach.error()
    assert error.http_status == 400
    assert error.code == "limit_exceeded"


def test_depth_just_within_the_limit_passes_and_reencodes() -> None:
    body = chat(x=nest(62))  # body, x's list... : 63 levels below the top, 64 in all
    assert check(body, LIMITS, hashing=False) is None
    orjson.dumps(body)  # every re-encoding of it is possible


def test_long_strings_only_matter_when_the_router_hashes() -> None:
    body = chat(x="y" * (LIMITS.max_hashed_string + 1))
    assert check(body, LIMITS, hashing=False) is None
    breach = check(body, LIMITS, hashing=True)
    assert breach is not None and "max_hashed_string" in breach.message


async def test_large_bodies_are_measured_in_the_worker_process() -> None:
    parser = BodyParser(LimitsConfig(), inline_bytes=1024)
    try:
        big_ok = orjson.dumps(chat(text="y" * 4096))
        assert (await parser.parse(big_ok)).body["text"] == "y" * 4096
        with pytest.raises(InvalidRequest) as caught:
            await parser.parse(orjson.dumps(chat(x=[0] * 70_000)))
        assert "max_json_values" in caught.value.message
        with pytest.raises(orjson.JSONDecodeError):
            await parser.parse(b"{" + b" " * 2048)
        assert (await parser.parse(b"[" + b"1," * 1024 + b"1]")).body == [1] * 1025
    finally:
        parser.close()


def test_the_default_body_size_is_bounded() -> None:
    assert ServerConfig().max_body_size <= 16 << 20


def _keys_body(size: int) -> bytes:
    """Tiny distinct keys: the input orjson parses slowest per byte."""
    head = b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "x": {'
    keys = b",".join(b'"%x":0' % i for i in range(size // 10))
    return head + keys[: size - len(head) - 2].rpartition(b",")[0] + b"}}"


@pytest.mark.timeout(120)
async def test_a_maximal_body_does_not_stall_other_requests(stack: Stack) -> None:
    """A small request's worst wait while a maximal body is handled, against an idle router.

    The old code parsed such a body on the event loop for seconds (over 1,000x the idle
    latency); now it is measured in a worker process. Two relative checks: the worst wait is
    within 500x the idle median, and under a fifth of the big request's own time.
    """
    root = stack.base_url.removesuffix("/v1")
    size = stack.app[CONFIG].server.max_body_size
    data = _keys_body(size)
    async with aiohttp.ClientSession() as session:

        async def probe() -> float:
            started = time.perf_counter()
            async with session.get(root + "/health") as response:
                await response.read()
                assert response.status == 200
            return time.perf_counter() - started

        for _ in range(20):
            await probe()
        idle = statistics.median([await probe() for _ in range(50)])
        waits: list[float] = []
        done = asyncio.Event()

        async def keep_probing() -> None:
            while not done.is_set():
                waits.append(await probe())

        prober = asyncio.create_task(keep_probing())
        started = time.perf_counter()
        async with session.post(
            stack.base_url + "/chat/completions",
            data=io.BytesIO(data),  # streamed: the client must not block this loop either
            headers={"Content-Type": "application/json"},
        ) as response:
            body = await response.json()
        big = time.perf_counter() - started
        done.set()
        await prober
    assert response.status == 400
    assert body["error"]["code"] == "limit_exceeded"
    worst = max(waits)
    assert worst < 500 * idle, (worst, idle)
    assert worst < big / 5, (worst, big)


async def test_a_copy_that_cannot_be_encoded_never_fails_the_answer() -> None:
    from router.context import RequestContext
    from router.handlers.stored_chat import save
    from router.objects import MemoryObjectStore
    from router.tenants import owner

    objects = MemoryObjectStore(60)
    ctx = RequestContext.start("r", {})
    completion = {"id": "chatcmpl-1", "choices": [], "x": nest(300)}  # orjson writes 254 levels
    await save(objects, ctx, chat(), completion)
    assert await objects.get(owner(ctx), "chat", "chatcmpl-1") is None
    assert ctx.stored == "failed"


def test_limits_and_timeouts_load_from_the_config_file(tmp_path: Any) -> None:
    from router.config import load_config

    path = tmp_path / "router.yaml"
    path.write_text(
        "server:\n"
        "  limits: {max_messages: 10, max_hashed_string: 1MiB}\n"
        "  header_timeout: 2\n"
        "  shutdown_grace: 5\n"
        "backends: [{name: b, replicas: [{id: r, url: 'http://h:1/v1'}]}]\n"
        "routes: {text: b, code: b, json: b, vision: b}\n"
    )
    server = load_config(path).server
    assert server.limits.max_messages == 10
    assert server.limits.max_hashed_string == 1 << 20
    assert server.limits.max_depth == 64
    assert (server.header_timeout, server.shutdown_grace) == (2, 5)
    assert (server.body_timeout, server.keepalive_timeout) == (60, 75)


@pytest.mark.parametrize(
    "raw",
    [
        orjson.dumps(chat(x=nest(64))),  # short, but one level too deep
        orjson.dumps(chat(x=nest(40), y=nest(40))),  # many brackets: walked, and fine
    ],
)
def test_the_size_shortcut_never_hides_a_breach(raw: bytes) -> None:
    body = orjson.loads(raw)
    assert check(body, LIMITS, hashing=False, raw=raw) == check(body, LIMITS, hashing=False)
