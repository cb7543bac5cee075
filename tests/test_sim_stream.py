"""Streaming under faults, client disconnects and the timing model."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from router.sim import SimSettings, create_sim_app
from router.sim.engine import SIM_ENGINE, SimEngine, sleep_until
from router.sim.tokenizer import Prompt

ZERO = SimSettings(ttft_ms=0, prefill_ms_per_token=0, itl_ms=0)
Client = TestClient[Any, Any]
CHAT = "/v1/chat/completions"


def chat_body(content: str = "Hello there", **fields: Any) -> bytes:
    body = {"model": "m", "messages": [{"role": "user", "content": content}], **fields}
    return orjson.dumps(body)


def sse(body: bytes) -> list[Any]:
    blocks = [b for b in body.decode().split("\n\n") if b]
    return [
        b[6:] if b == "data: [DONE]" else orjson.loads(b.removeprefix("data: ")) for b in blocks
    ]


async def wait_for_stats(client: Client, ready: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Poll /sim/stats until `ready` holds; fail after a bounded number of polls."""
    for _ in range(500):
        stats: dict[str, Any] = await (await client.get("/sim/stats")).json()
        if ready(stats):
            return stats
        await asyncio.sleep(0.01)
    raise AssertionError(f"stats never became ready: {stats}")


async def read_event(response: aiohttp.ClientResponse) -> Any:
    block = await response.content.readuntil(b"\n\n")
    return orjson.loads(block.removeprefix(b"data: "))


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(create_sim_app(ZERO))


@pytest.mark.parametrize(("status", "kind"), [(500, "server_error"), (429, "rate_limit_error")])
async def test_fault_status_returns_an_error_envelope(
    client: Client, status: int, kind: str
) -> None:
    fault = {"status": status, "message": "boom"}
    for stream in (False, True):
        response = await client.post(CHAT, data=chat_body(stream=stream, sim_fault=fault))
        assert response.status == status
        error = (await response.json())["error"]
        assert (error["message"], error["type"]) == ("boom", kind)
    stats = await (await client.get("/sim/stats")).json()
    assert (stats["failed"], stats["completed"], stats["prompt_tokens"]) == (2, 0, 0)


async def test_disconnect_after_chunks_drops_the_connection(client: Client) -> None:
    body = chat_body(stream=True, max_tokens=10, sim_fault={"disconnect_after_chunks": 2})
    response = await client.post(CHAT, data=body)
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async for data in response.content.iter_any():
            received += data
    events = sse(received)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len(events) == 3  # the role chunk and two content chunks, no [DONE]
    assert all("content" in e["choices"][0]["delta"] for e in events[1:])
    stats = await wait_for_stats(client, lambda s: s["in_flight"] == 0)
    assert (stats["failed"], stats["cancelled"]) == (1, 0)


@pytest.mark.parametrize(("after", "received"), [(0, 0), (3, 4)])
async def test_disconnect_edges(client: Client, after: int, received: int) -> None:
    # After 0 chunks nothing is sent; after exactly all 3 the finish chunk never comes.
    body = chat_body(stream=True, max_tokens=3, sim_fault={"disconnect_after_chunks": after})
    response = await client.post(CHAT, data=body)
    data = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async for part in response.content.iter_any():
            data += part
    assert len(sse(data)) == received
    stats = await wait_for_stats(client, lambda s: s["in_flight"] == 0)
    assert stats["failed"] == 1


async def test_fault_beyond_the_stream_length_never_fires(client: Client) -> None:
    body = chat_body(stream=True, max_tokens=3, sim_fault={"error_after_chunks": 4})
    events = sse(await (await client.post(CHAT, data=body)).read())
    assert events[-1] == "[DONE]"


async def test_error_after_chunks_sends_an_error_event_without_done(client: Client) -> None:
    body = chat_body(
        stream=True, max_tokens=10, sim_fault={"error_after_chunks": 1, "message": "oops"}
    )
    response = await client.post(CHAT, data=body)
    events = sse(await response.read())
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "content" in events[1]["choices"][0]["delta"]
    assert events[2] == {
        "error": {"message": "oops", "type": "server_error", "param": None, "code": 500}
    }
    assert len(events) == 3


async def test_delay_fault_holds_back_the_response_headers(client: Client) -> None:
    body = chat_body(stream=True, sim_fault={"delay_ms": 60_000})
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.post(CHAT, data=body), timeout=0.2)
    stats = await wait_for_stats(client, lambda s: s["in_flight"] == 0)
    assert stats["cancelled"] == 1


async def test_client_leaving_mid_stream_cancels_generation(aiohttp_client: AiohttpClient) -> None:
    settings = SimSettings(ttft_ms=0, prefill_ms_per_token=0, itl_ms=5, output_tokens=100_000)
    client = await aiohttp_client(create_sim_app(settings))
    response = await client.post(CHAT, data=chat_body(stream=True))
    await read_event(response)  # role
    assert "content" in (await read_event(response))["choices"][0]["delta"]
    response.close()
    stats = await wait_for_stats(client, lambda s: s["in_flight"] == 0)
    assert (stats["cancelled"], stats["completed"]) == (1, 0)


async def test_disconnect_is_seen_on_write_without_handler_cancellation() -> None:
    # Servers other than start_fleet's may not cancel handlers: the next write notices.
    settings = SimSettings(ttft_ms=0, prefill_ms_per_token=0, itl_ms=5, output_tokens=100_000)
    app = create_sim_app(settings)
    runner = web.AppRunner(app, handler_cancellation=False, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{runner.addresses[0][1]}") as session:
            response = await session.post(CHAT, data=chat_body(stream=True))
            await read_event(response)
            response.close()
            for _ in range(500):
                stats = app[SIM_ENGINE].stats
                if stats.in_flight == 0:
                    break
                await asyncio.sleep(0.01)
            assert (stats.cancelled, stats.in_flight) == (1, 0)
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("stream", [False, True])
async def test_client_leaving_before_the_first_token_is_counted(
    aiohttp_client: AiohttpClient, stream: bool
) -> None:
    client = await aiohttp_client(create_sim_app(SimSettings(ttft_ms=60_000)))
    if stream:
        # Headers come at once; the first token would come a minute later.
        response = await client.post(CHAT, data=chat_body(stream=True))
        assert response.status == 200
        response.close()
    else:
        request = asyncio.create_task(client.post(CHAT, data=chat_body()))
        await wait_for_stats(client, lambda s: s["in_flight"] == 1)
        request.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await request
    stats = await wait_for_stats(client, lambda s: s["in_flight"] == 0)
    assert (stats["cancelled"], stats["completed"]) == (1, 0)


async def _time_to_first_token(client: Client, content: str) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await client.post(CHAT, data=chat_body(content, stream=True, max_tokens=1))
    await read_event(response)  # the role chunk comes with the first token
    elapsed = loop.time() - started
    await response.read()
    return elapsed


def _long_prompt(tag: str) -> str:
    return " ".join(f"{tag}{i}" for i in range(1999))  # 2000 tokens with the role marker


async def test_cache_hit_has_a_much_shorter_ttft(aiohttp_client: AiohttpClient) -> None:
    settings = SimSettings(ttft_ms=1, prefill_ms_per_token=0.5, itl_ms=0)
    client = await aiohttp_client(create_sim_app(settings))
    miss = await _time_to_first_token(client, _long_prompt("w"))
    hit = await _time_to_first_token(client, _long_prompt("w"))
    assert miss >= 5 * hit


async def test_prefills_queue_on_one_replica(aiohttp_client: AiohttpClient) -> None:
    settings = SimSettings(ttft_ms=0, prefill_ms_per_token=0.1, itl_ms=0)
    client = await aiohttp_client(create_sim_app(settings))
    alone = await _time_to_first_token(client, _long_prompt("a"))
    await client.post("/sim/reset")
    first, second = await asyncio.gather(
        _time_to_first_token(client, _long_prompt("b")),
        _time_to_first_token(client, _long_prompt("c")),
    )
    # The later of two simultaneous prefills waits for the other one.
    assert max(first, second) >= 1.5 * alone


async def test_zero_latency_never_suspends() -> None:
    engine = SimEngine(ZERO, "z")
    admission = engine.admit([Prompt(tuple("abcdefghijklmnopqrstuvwxyz"))])
    deadline = engine.token_time(admission, 1000)
    assert deadline <= asyncio.get_running_loop().time()
    waiting = sleep_until(deadline)
    with pytest.raises(StopIteration):
        waiting.send(None)  # finishes without ever yielding to the loop
