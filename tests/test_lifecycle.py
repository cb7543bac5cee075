"""Shutdown with a deadline: SIGTERM to a router process in the middle of two streams."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from router.keys import LIFECYCLE
from router.sim import SimSettings, start_fleet

from .conftest import LoopThread, Stack, free_port

ROOT = Path(__file__).resolve().parent.parent
GRACE = 2.0


@pytest.fixture
def slow_fleet_urls() -> Iterator[list[tuple[str, str]]]:
    thread = LoopThread()
    settings = SimSettings(ttft_ms=0, prefill_ms_per_token=0, itl_ms=20, output_tokens=8)
    fleet = thread.run(start_fleet(settings, replicas=1, name="slow"))
    yield [(r.id, r.url) for r in fleet.replicas]
    thread.run(fleet.close())
    thread.stop()


def start_router(config: dict[str, Any], workdir: Path) -> subprocess.Popen[bytes]:
    path = workdir / "router.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "router", "serve", "--config", str(path)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        if b"listening" in line:
            return proc
    raise RuntimeError("the router exited before listening")


async def open_stream(
    session: aiohttp.ClientSession, base_url: str, max_tokens: int
) -> aiohttp.ClientResponse:
    response = await session.post(
        base_url + "/chat/completions",
        json={
            "model": "m",
            "messages": [{"role": "user", "content": "go"}],
            "stream": True,
            "max_tokens": max_tokens,
        },
    )
    assert response.status == 200
    await response.content.readuntil(b"\n\n")  # the first event is through
    return response


async def events_of(response: aiohttp.ClientResponse) -> list[bytes]:
    data = await response.read()
    return [e for e in data.split(b"\n\n") if e]


@pytest.mark.timeout(90)
async def test_sigterm_lets_short_streams_finish_and_cuts_long_ones(
    slow_fleet_urls: list[tuple[str, str]], tmp_path: Path
) -> None:
    port = free_port()
    replicas = [{"id": rid, "url": url} for rid, url in slow_fleet_urls]
    config = {
        "server": {"host": "127.0.0.1", "port": port, "shutdown_grace": GRACE},
        "backends": [{"name": "slow", "replicas": replicas}],
        "routes": {t: "slow" for t in ("text", "code", "json", "vision")},
    }
    proc = start_router(config, tmp_path)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        async with aiohttp.ClientSession() as session:
            # ~0.4 s of tokens: ends within the grace. ~100 s: must be cut at the grace.
            short = await open_stream(session, base_url, max_tokens=20)
            long = await open_stream(session, base_url, max_tokens=5000)
            proc.send_signal(signal.SIGTERM)
            short_events = await events_of(short)
            long_events = await events_of(long)
            # It stopped accepting: a new connection is refused.
            with pytest.raises(aiohttp.ClientConnectionError):
                for _ in range(200):  # bounded poll until the listener is gone
                    async with session.get(f"http://127.0.0.1:{port}/health") as response:
                        await response.read()
                    await asyncio.sleep(0.02)
        returncode = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        output = proc.stdout.read() if proc.stdout else b""
        if proc.stdout is not None:
            proc.stdout.close()
    assert returncode == 0, output
    assert short_events[-1] == b"data: [DONE]"
    assert not any(b'"error"' in e for e in short_events)
    assert long_events[-1] == b"data: [DONE]"
    assert long_events[-2].startswith(b'data: {"error"')
    assert b"shutting down" in long_events[-2]
    assert b'"code":"shutting_down"' in long_events[-2]
    assert len(long_events) < 1000  # cut long before its 5000 tokens
    assert b"Traceback" not in output


async def test_ready_is_503_while_draining(stack: Stack) -> None:
    lifecycle = stack.app[LIFECYCLE]
    root = stack.base_url.removesuffix("/v1")
    lifecycle.draining = True
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(root + "/ready") as response,
        ):
            assert response.status == 503
            assert (await response.json())["status"] == "draining"
    finally:
        lifecycle.draining = False
