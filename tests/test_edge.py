"""Slow and greedy clients: header, body and keep-alive timeouts, and the connection cap."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from router.config import RouterConfig
from router.context import RequestContext
from router.edge import connection_cap, loggable
from router.logs import log_access

from .conftest import Stack, free_port

ROOT = Path(__file__).resolve().parent.parent
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def server_settings(**fields: Any) -> Any:
    def edit(config: RouterConfig) -> RouterConfig:
        server = config.server.model_validate({**config.server.model_dump(), **fields})
        return config.model_copy(update={"server": server})

    return edit


def port_of(stack: Stack) -> int:
    return int(stack.base_url.rsplit(":", 1)[1].split("/", 1)[0])


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of one response."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
    return status, orjson.loads(await reader.readexactly(length))


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of one response, then the connection must be closed."""
    answer = await read_response(reader)
    assert await reader.read() == b""  # closed by the router
    return answer


async def chat_ok(base_url: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(base_url + "/chat/completions", json=CHAT) as response,
    ):
        assert response.status == 200
        assert (await response.json())["choices"]


async def test_headers_sent_too_slowly_get_408(make_stack: Any) -> None:
    live = make_stack(edit=server_settings(header_timeout=0.3))
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(live))
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # never finished
    status, body = await read_answer(reader)
    writer.close()
    assert status == 408
    assert body["error"]["code"] == "request_timeout"
    assert "server.header_timeout" in body["error"]["message"]
    await chat_ok(live.base_url)


async def test_a_connection_that_sends_nothing_is_closed(make_stack: Any) -> None:
    live = make_stack(edit=server_settings(header_timeout=0.3))
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(live))
    status, _ = await read_answer(reader)
    writer.close()
    assert status == 408


async def test_a_stalled_body_gets_408(make_stack: Any) -> None:
    live = make_stack(edit=server_settings(body_timeout=0.3))
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(live))
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\nConnection: close\r\n\r\n{"model": '
    )
    head = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    assert head.startswith(b"HTTP/1.1 408")
    await chat_ok(live.base_url)


async def test_large_bodies_read_at_once_are_bounded(make_stack: Any) -> None:
    def edit(config: RouterConfig) -> RouterConfig:
        limits = config.server.limits.model_copy(
            update={"max_large_bodies": 1, "large_body_wait": 0.3}
        )
        server = config.server.model_copy(update={"limits": limits, "body_timeout": 30})
        return config.model_copy(update={"server": server})

    live = make_stack(edit=edit)
    # A valid chat body of exactly 1 MiB: sent in two parts, it stalls after the first.
    size = 1 << 20
    prefix = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "user": "'
    body = prefix + b"x" * (size - len(prefix) - 2) + b'"}'
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % size
    )
    connections = [await asyncio.open_connection("127.0.0.1", port_of(live)) for _ in range(2)]
    answers: list[asyncio.Future[tuple[int, dict[str, Any]]]] = []
    try:
        for _, writer in connections:
            writer.write(head + body[:1])  # both stall: one holds the only slot, one waits
            await writer.drain()
        answers += [asyncio.ensure_future(read_response(reader)) for reader, _ in connections]
        # The holder keeps its slot for its 30 s body_timeout; the other gives up waiting after
        # large_body_wait (0.3 s) with a 503, whichever of the two the router took up first.
        done, _ = await asyncio.wait(answers, return_when=asyncio.FIRST_COMPLETED)
        shed = answers.index(done.pop())
        status, error = answers[shed].result()
        assert (status, error["error"]["code"]) == (503, "too_many_large_bodies")
        assert "server.limits.max_large_bodies" in error["error"]["message"]
        # The rest of its body is drained and the connection closed (unsent, the router would
        # linger for it before closing).
        connections[shed][1].write(body[1:])
        assert await connections[shed][0].read() == b""
        holder = connections[1 - shed][1]
        holder.write(body[1:])  # the holder's body completes, within its own deadline
        await holder.drain()
        status, completion = await answers[1 - shed]
        assert await connections[1 - shed][0].read() == b""
        assert status == 200 and completion["choices"]
        # The slot is free again: the next large body is read and served.
        connections.append(await asyncio.open_connection("127.0.0.1", port_of(live)))
        connections[-1][1].write(head + body)
        status, completion = await read_answer(connections[-1][0])
        assert status == 200 and completion["choices"]
    finally:
        for answer in answers:
            answer.cancel()
        for _, writer in connections:
            writer.close()
    await chat_ok(live.base_url)  # small bodies never needed a slot


async def test_idle_keep_alive_connections_are_closed(make_stack: Any) -> None:
    live = make_stack(edit=server_settings(keepalive_timeout=0.3))
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(live))
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Server: di-router\r\n" in head
    length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
    await reader.readexactly(length)
    assert await reader.read() == b""  # the idle connection was closed by the router
    writer.close()


async def test_over_the_cap_the_oldest_idle_connection_makes_room(make_stack: Any) -> None:
    live = make_stack(edit=server_settings(max_connections=4, header_timeout=30))
    idle = [await asyncio.open_connection("127.0.0.1", port_of(live)) for _ in range(4)]
    await chat_ok(live.base_url)  # a fifth connection: the oldest idle one is closed for it
    assert await idle[0][0].read() == b""
    for _, writer in idle:
        writer.close()


async def test_over_the_cap_with_every_connection_busy_is_503(make_stack: Any) -> None:
    live = make_stack(edit=server_settings(max_connections=2))
    slow = {**CHAT, "sim_fault": {"delay_ms": 3000}}
    async with aiohttp.ClientSession() as session:

        async def hold() -> int:
            async with session.post(live.base_url + "/chat/completions", json=slow) as r:
                return r.status

        held = [asyncio.create_task(hold()) for _ in range(2)]
        await until_in_flight(live, 2)
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(live))
        status, body = await read_answer(reader)
        writer.close()
        assert status == 503
        assert body["error"]["code"] == "too_many_connections"
        assert "server.max_connections" in body["error"]["message"]
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)


async def until_in_flight(live: Stack, count: int) -> None:
    """Poll the simulators until ``count`` requests reached them (bounded)."""
    for _ in range(500):
        if sum(s["in_flight"] for s in live.sim_stats("sim-text").values()) >= count:
            return
        await asyncio.sleep(0.01)  # a poll interval, not a wait for the state itself
    raise AssertionError(f"{count} requests never reached the upstream")


def test_the_cap_fits_the_open_file_limit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert connection_cap(10) == 10
    assert connection_cap(10**9) <= soft // 2


def test_loggable_escapes_control_characters() -> None:
    assert (
        loggable("/v1/x\n2026 INFO forged\r\x1b[31m") == "/v1/x\\x0a2026 INFO forged\\x0d\\x1b[31m"
    )


def test_the_access_line_escapes_the_path(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="router.access")
    log_access(RequestContext.start("r", {}), "GET", "/v1/x\n2026 INFO forged", 404, 1.0)
    (record,) = caplog.records
    assert "\n" not in record.getMessage()
    assert record.__dict__["path"] == "/v1/x\\x0a2026 INFO forged"  # an extra field


@contextlib.contextmanager
def router_process(nofile: int) -> Iterator[int]:
    """``di-router serve`` (embedded simulators) in a child limited to ``nofile`` files."""
    port = free_port()

    def limit() -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "router", "serve", "--port", str(port), "--log-level", "error"]
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, preexec_fn=limit, env=env
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if b"listening" in line:
                break
        else:
            raise RuntimeError("the router exited before listening")
        yield port
    finally:
        proc.terminate()
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.timeout(120)
async def test_1100_half_open_connections_do_not_stop_the_router() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    with router_process(nofile=1024) as port:
        base_url = f"http://127.0.0.1:{port}/v1"
        await chat_ok(base_url)
        sockets: list[socket.socket] = []
        try:
            for _ in range(1100):
                sock = socket.socket()
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    sock.connect(("127.0.0.1", port))
                sockets.append(sock)
            for sock in sockets[::2]:
                with contextlib.suppress(OSError):
                    sock.send(b"POST /v1/chat/completions HTTP/1.1\r\n")  # and never more
            # Others are still answered, while those connections are held open.
            for _ in range(5):
                await chat_ok(base_url)
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/health") as response,
            ):
                assert response.status == 200
        finally:
            for sock in sockets:
                sock.close()
