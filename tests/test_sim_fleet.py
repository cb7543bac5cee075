"""Sim fleets: real servers per replica, separate caches, and the official OpenAI client."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jsonschema  # type: ignore[import-untyped]
import orjson
import pytest
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageFunctionToolCall

from router.sim import SimFleet, SimSettings, serve_fleet_forever, start_fleet

ZERO = SimSettings(ttft_ms=0, prefill_ms_per_token=0, itl_ms=0)
LONG_PROMPT = " ".join(f"w{i}" for i in range(1999))  # 2000 tokens with the role marker


@pytest.fixture
async def fleet() -> AsyncIterator[SimFleet]:
    fleet = await start_fleet(ZERO, replicas=2)
    yield fleet
    await fleet.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _chat(session: aiohttp.ClientSession, url: str, content: str) -> Any:
    body = {"model": "m", "messages": [{"role": "user", "content": content}]}
    async with session.post(f"{url}/chat/completions", json=body) as response:
        assert response.status == 200
        return await response.json()


def _root(url: str) -> str:
    return url.removesuffix("/v1")


async def test_replicas_are_separate_servers(
    fleet: SimFleet, session: aiohttp.ClientSession
) -> None:
    assert [r.id for r in fleet.replicas] == ["sim-0", "sim-1"]
    assert len({r.port for r in fleet.replicas}) == 2
    for replica in fleet.replicas:
        assert replica.url == f"http://127.0.0.1:{replica.port}/v1"
        async with session.get(f"{_root(replica.url)}/sim/stats") as response:
            assert (await response.json())["replica"] == replica.id


async def test_each_replica_has_its_own_cache(
    fleet: SimFleet, session: aiohttp.ClientSession
) -> None:
    first, second = (replica.url for replica in fleet.replicas)
    cached = []
    for url in (first, first, second):
        reply = await _chat(session, url, LONG_PROMPT)
        cached.append(reply["usage"]["prompt_tokens_details"]["cached_tokens"])
    assert cached == [0, 2000, 0]


def _free_port_pair() -> int:
    """A port p with p and p + 1 both free right now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        with contextlib.suppress(OSError), socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", port))
            b.bind(("127.0.0.1", port + 1))
            return port
    raise AssertionError("no free port pair")


async def test_explicit_port_and_name(session: aiohttp.ClientSession) -> None:
    port = _free_port_pair()
    fleet = await start_fleet(ZERO, port=port, replicas=2, name="gpu")
    try:
        assert [(r.id, r.port) for r in fleet.replicas] == [("gpu-0", port), ("gpu-1", port + 1)]
    finally:
        await fleet.close()
    with pytest.raises(aiohttp.ClientConnectionError):
        await session.get(f"http://127.0.0.1:{port}/health")


async def test_openai_client_talks_to_a_replica(fleet: SimFleet) -> None:
    url = fleet.replicas[0].url
    async with AsyncOpenAI(base_url=url, api_key="sim", max_retries=0) as client:
        models = await client.models.list()
        assert [m.id for m in models.data] == [ZERO.model]

        messages: Any = [{"role": "user", "content": LONG_PROMPT}]
        reply = await client.chat.completions.create(model="m", messages=messages, max_tokens=8)
        assert reply.choices[0].finish_reason == "length"
        assert reply.usage is not None
        assert reply.usage.completion_tokens == 8
        again = await client.chat.completions.create(model="m", messages=messages, max_tokens=8)
        assert again.usage is not None
        assert again.usage.prompt_tokens_details is not None
        assert again.usage.prompt_tokens_details.cached_tokens == 2000

        stream = await client.chat.completions.create(
            model="m",
            messages=messages,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
        text = ""
        usage = None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            usage = chunk.usage or usage
        assert text == reply.choices[0].message.content
        assert usage is not None
        assert usage.completion_tokens == 8

        parameters = {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
            "required": ["city", "days"],
        }
        tools: Any = [
            {"type": "function", "function": {"name": "weather", "parameters": parameters}}
        ]
        called = await client.chat.completions.create(model="m", messages=messages, tools=tools)
        assert called.choices[0].finish_reason == "tool_calls"
        calls = called.choices[0].message.tool_calls
        assert calls is not None
        assert isinstance(calls[0], ChatCompletionMessageFunctionToolCall)
        function = calls[0].function
        assert function.name == "weather"
        jsonschema.validate(orjson.loads(function.arguments), parameters)

        legacy = await client.completions.create(model="m", prompt=["a", "b"], max_tokens=2)
        assert [c.index for c in legacy.choices] == [0, 1]


async def test_serve_fleet_forever_prints_replicas_and_closes_on_cancel(
    capsys: pytest.CaptureFixture[str], session: aiohttp.ClientSession
) -> None:
    server = asyncio.create_task(
        serve_fleet_forever(ZERO, host="127.0.0.1", port=0, replicas=2, name="cli")
    )
    output = ""
    for _ in range(500):
        output += capsys.readouterr().out
        if output.count("\n") >= 2:
            break
        await asyncio.sleep(0.01)
    lines = [line.split() for line in output.splitlines()]
    assert [line[0] for line in lines] == ["cli-0", "cli-1"]
    for _, url in lines:
        async with session.get(f"{_root(url)}/health") as response:
            assert response.status == 200
    server.cancel()
    with pytest.raises(asyncio.CancelledError):
        await server
    with pytest.raises(aiohttp.ClientConnectionError):
        await session.get(f"{_root(lines[0][1])}/health")


async def test_fleet_as_a_context_manager_closes_twice_safely() -> None:
    async with await start_fleet(ZERO, name="ctx") as fleet:
        assert [r.id for r in fleet.replicas] == ["ctx-0"]
    assert fleet.replicas == []
    await fleet.close()


async def test_a_fleet_needs_a_replica() -> None:
    with pytest.raises(ValueError, match="at least one"):
        await start_fleet(ZERO, replicas=0)


async def test_a_taken_port_fails_cleanly() -> None:
    async with await start_fleet(ZERO) as taken:
        with pytest.raises(OSError):
            await start_fleet(ZERO, port=taken.replicas[0].port)
