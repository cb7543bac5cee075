"""A simulator fleet and a router as child processes on loopback, for compare mode.

Separate processes, as in production: the benchmark client, the router and the replicas do
not share an event loop, so none of them delays another's timers. Each child is this Python
running this checkout's `router` package, listens on ports the OS picks (`--port 0`,
`server.port: 0`) and announces its URLs on stdout; that line, not a guessed port, is what we
wait for, so concurrent runs never race for a port. Its stderr goes to a log file in the
output directory (a chatty child can never block on a full pipe) and the rest of its stdout
is read and dropped.

Children get their own session, so a Ctrl-C in the terminal reaches only the benchmark, which
then stops each child it started: terminate, wait, kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp
import yaml

import router
from router.sim import SimSettings

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10, sock_connect=5)
REQUEST_TYPES = ("text", "code", "json", "vision")
POOL = "pool"
_BASE_URL = re.compile(r"base_url=(\S+)")


class FleetError(Exception):
    """A child process that did not start, or a replica that would not reset."""


@dataclass(slots=True)
class Child:
    name: str
    process: asyncio.subprocess.Process
    log: Path
    drain: asyncio.Task[None] | None = None

    async def stop(self) -> None:
        """Terminate, then kill if it has not exited in time; safe to call twice."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        if self.drain is not None:
            # The pipe reaches EOF once the child is gone; reading it to the end (rather than
            # cancelling) lets asyncio close the pipe's transport.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.drain, STOP_TIMEOUT_S)


def _open_log(path: Path) -> IO[bytes]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("ab")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


async def _drop(stream: asyncio.StreamReader) -> None:
    while await stream.read(1 << 16):
        pass


async def start_child(
    name: str, argv: list[str], log: Path, ready: Callable[[list[str]], bool]
) -> tuple[Child, list[str]]:
    """Start `argv`; return once `ready` holds for the stdout lines read so far."""
    env = {**os.environ, "PYTHONPATH": _checkout() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    errors = _open_log(log)
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=errors,
            env=env,
            start_new_session=True,
        )
    finally:
        errors.close()  # the child has its own descriptor
    child = Child(name, process, log)
    lines: list[str] = []
    assert process.stdout is not None
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            while not ready(lines):
                raw = await process.stdout.readline()
                if not raw:
                    code = await process.wait()
                    raise FleetError(f"{name} exited ({code}) before it was ready:\n{_tail(log)}")
                lines.append(raw.decode(errors="replace").strip())
    except TimeoutError:
        await child.stop()
        raise FleetError(f"{name} was not ready in {READY_TIMEOUT_S:g}s:\n{_tail(log)}") from None
    except BaseException:
        await child.stop()
        raise
    child.drain = asyncio.create_task(_drop(process.stdout))
    return child, lines


def _checkout() -> str:
    """The directory holding the `router` package this benchmark runs from."""
    return str(Path(router.__file__).resolve().parent.parent)


def router_config(
    replicas: list[tuple[str, str]],
    policy: str,
    routing: dict[str, Any] | None = None,
    redis_url: str | None = None,
) -> dict[str, Any]:
    """One pool of all replicas serving every request type, on a free loopback port."""
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0},
        "backends": [{"name": POOL, "replicas": [{"id": i, "url": u} for i, u in replicas]}],
        "routes": dict.fromkeys(REQUEST_TYPES, POOL),
        "routing": {**(routing or {}), "policy": policy},
    }
    if redis_url is not None:
        config["cache"] = {"redis_url": redis_url}
    return config


def _free_port() -> int:
    # redis-server cannot take port 0 (it means "no TCP"): pick one, release it, pass it on.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write_config(path: Path, config: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


class Fleet:
    """A running sim process of `replicas` replicas, and at most one router in front of it."""

    def __init__(self, sims: Child, replicas: list[tuple[str, str]], out_dir: Path) -> None:
        self.sims = sims
        self.replicas = replicas  # (id, base URL)
        self.out_dir = out_dir
        self.routers: list[Child] = []
        self.redis: Child | None = None
        self.redis_url = ""
        self.base_url = ""
        # Control requests only (/sim/reset, /sim/stats), one at a time.
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=4, limit_per_host=1), timeout=HTTP_TIMEOUT
        )

    @property
    def router(self) -> Child | None:
        return self.routers[0] if self.routers else None

    async def start_router(self, policy: str, routing: dict[str, Any] | None = None) -> str:
        """(Re)start one router with `policy`: a fresh prefix index and balancer."""
        return (await self.start_routers(policy, routing, 1))[0]

    async def start_routers(
        self, policy: str, routing: dict[str, Any] | None = None, count: int = 1
    ) -> list[str]:
        """(Re)start `count` routers; more than one share a Redis started (empty) for them."""
        await self.stop_router()
        redis_url = await self._start_redis() if count > 1 else None
        config = self.out_dir / f"router-{policy}.yaml"
        _write_config(config, router_config(self.replicas, policy, routing, redis_url))
        argv = [sys.executable, "-m", "router", "serve", "--config", str(config)]
        argv += ["--log-level", "warning"]
        urls = []
        for number in range(count):
            name = f"router-{policy}" + (f"-{number}" if count > 1 else "")
            child, lines = await start_child(
                f"router ({policy})",
                argv,
                self.out_dir / f"{name}.log",
                lambda seen: any(_BASE_URL.search(line) for line in seen),
            )
            self.routers.append(child)
            found = next(m for line in lines if (m := _BASE_URL.search(line)))
            urls.append(found.group(1))
        self.base_url = urls[0]
        return urls

    async def _start_redis(self) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FleetError("--routers needs redis-server on PATH")
        port = _free_port()
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(self.out_dir)]
        self.redis, _ = await start_child(
            "redis-server",
            argv,
            self.out_dir / "redis.log",
            lambda seen: any("Ready to accept connections" in line for line in seen),
        )
        return f"redis://127.0.0.1:{port}/0"

    async def stop_router(self) -> None:
        routers, self.routers = self.routers, []
        for child in routers:
            await child.stop()
        redis, self.redis = self.redis, None
        if redis is not None:
            await redis.stop()

    async def reset_sims(self) -> None:
        """Empty every replica's cache and counters, so the next run starts cold."""
        for replica_id, url in self.replicas:
            async with self._http.post(url.removesuffix("/v1") + "/sim/reset") as response:
                response.raise_for_status()
                stats = await response.json()
            if stats.get("in_flight") or stats.get("cache_blocks_used"):
                raise FleetError(f"replica {replica_id} is not idle after a reset: {stats}")

    async def sim_stats(self) -> dict[str, Any]:
        """Each replica's /sim/stats: the server-side view of where requests went."""
        out = {}
        for replica_id, url in self.replicas:
            async with self._http.get(url.removesuffix("/v1") + "/sim/stats") as response:
                response.raise_for_status()
                out[replica_id] = await response.json()
        return out

    async def close(self) -> None:
        try:
            await self.stop_router()
        finally:
            try:
                await self.sims.stop()
            finally:
                await self._http.close()


def sim_argv(settings: SimSettings, replicas: int) -> list[str]:
    argv = [sys.executable, "-m", "router", "sim", "--host", "127.0.0.1", "--port", "0"]
    argv += ["--replicas", str(replicas), "--model", settings.model, "--log-level", "warning"]
    flags = {
        "--ttft-ms": settings.ttft_ms,
        "--prefill-ms-per-token": settings.prefill_ms_per_token,
        "--itl-ms": settings.itl_ms,
        "--output-tokens": settings.output_tokens,
        "--cache-blocks": settings.cache_blocks,
        "--block-size": settings.block_size,
    }
    for flag, value in flags.items():
        argv += [flag, str(value)]
    return argv


@asynccontextmanager
async def running_fleet(
    settings: SimSettings, replicas: int, out_dir: Path
) -> AsyncIterator[Fleet]:
    """Start the sim process; everything started is stopped on the way out."""
    sims, lines = await start_child(
        "sim", sim_argv(settings, replicas), out_dir / "sim.log", lambda seen: len(seen) >= replicas
    )
    try:
        pairs = [line.split(maxsplit=1) for line in lines]
        fleet = Fleet(sims, [(pair[0], pair[1]) for pair in pairs], out_dir)
    except BaseException:
        await sims.stop()
        raise
    try:
        yield fleet
    finally:
        await fleet.close()
