"""Shared fixtures: live stacks (simulators + router on real loopback ports) and Redis servers.

A stack runs in its own thread and event loop, so tests can drive it with the official openai
SDK's sync client as well as its async one, exactly as a user would.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import openai
import pytest
from aiohttp import web
from hypothesis import HealthCheck, settings

from router.app import create_app
from router.config import REQUEST_TYPES, RouterConfig, embedded_config
from router.edge import make_runner
from router.objects import ObjectStore
from router.sim import SimFleet, SimSettings, start_fleet
from router.store import PrefixStore
from router.tracing import RequestTracer

T = TypeVar("T")

# Deterministic examples and no per-example deadline: the suite must not flake on a busy CI box.
settings.register_profile(
    "di", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("di")


@pytest.fixture(scope="session", autouse=True)
def _reap_forkserver() -> Iterator[None]:
    """Stop and reap multiprocessing's forkserver after the run.

    The body parser's worker pool starts it, and it outlives every pool: left alone it exits
    only when this process does, unreaped, so a run would leave a child process behind.
    """
    yield
    from multiprocessing import forkserver

    forkserver._forkserver._stop()  # type: ignore[attr-defined]


FAST = SimSettings(ttft_ms=0, prefill_ms_per_token=0, itl_ms=0, output_tokens=8)


class LoopThread:
    """An event loop running in a daemon thread; ``run`` executes a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@dataclass
class Stack:
    """Simulated backends and a router, started for real on loopback ports."""

    thread: LoopThread
    app: web.Application
    fleets: dict[str, SimFleet]
    base_url: str = ""
    _runner: web.AppRunner | None = None
    clients: list[openai.OpenAI] = field(default_factory=list)

    def client(self, **kwargs: Any) -> openai.OpenAI:
        client = openai.OpenAI(base_url=self.base_url, api_key="test", max_retries=0, **kwargs)
        self.clients.append(client)  # closed when the stack stops: no stray sockets
        return client

    def aclient(self, **kwargs: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key="test", max_retries=0, **kwargs)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return self.thread.run(coro, timeout)

    def sim_stats(self, backend: str) -> dict[str, dict[str, Any]]:
        """``/sim/stats`` of each replica of a simulated backend, by replica id."""

        async def fetch() -> dict[str, dict[str, Any]]:
            out = {}
            async with aiohttp.ClientSession() as session:
                for replica in self.fleets[backend].replicas:
                    base = replica.url.removesuffix("/v1")
                    async with session.get(base + "/sim/stats") as response:
                        out[replica.id] = await response.json()
            return out

        return self.run(fetch())


ConfigEdit = Callable[[RouterConfig], RouterConfig]


def start_stack(
    *,
    sim: SimSettings = FAST,
    replicas: int = 2,
    edit: ConfigEdit | None = None,
    store: PrefixStore | None = None,
    objects: ObjectStore | None = None,
    tracer: RequestTracer | None = None,
) -> Stack:
    thread = LoopThread()

    async def start() -> Stack:
        fleets = {}
        for request_type in REQUEST_TYPES:
            name = f"sim-{request_type}"
            fleets[name] = await start_fleet(sim, replicas=replicas, name=name)
        config = embedded_config(
            {n: [(r.id, r.url) for r in f.replicas] for n, f in fleets.items()}, port=0
        )
        if edit is not None:
            config = edit(config)
        app = create_app(config, store=store, objects=objects, tracer=tracer)
        runner = make_runner(app, config.server)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        stack = Stack(thread, app, fleets, f"http://127.0.0.1:{port}/v1", runner)
        return stack

    return thread.run(start())


def stop_stack(stack: Stack) -> None:
    for client in stack.clients:
        client.close()

    async def stop() -> None:
        if stack._runner is not None:
            await stack._runner.cleanup()
        for fleet in stack.fleets.values():
            await fleet.close()

    stack.run(stop())
    stack.thread.stop()


def _lenient_breakers(config: RouterConfig) -> RouterConfig:
    # The shared stack serves many tests that inject upstream faults on purpose (sim_fault):
    # its breakers must not carry one test's failures into the next.
    health = config.health.model_copy(update={"failure_threshold": 1_000_000})
    return config.model_copy(update={"health": health})


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """The default stack: zero-latency simulators, two replicas per type, in-memory store."""
    live = start_stack(edit=_lenient_breakers)
    yield live
    stop_stack(live)


@pytest.fixture
def make_stack() -> Iterator[Callable[..., Stack]]:
    made: list[Stack] = []

    def make(**kwargs: Any) -> Stack:
        live = start_stack(**kwargs)
        made.append(live)
        return live

    yield make
    for live in made:
        stop_stack(live)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def refused_port() -> Iterator[Callable[[], int]]:
    """Loopback ports that refuse connections for the whole test: each stays bound (and not
    listening), so no server the test starts can be given it, as a port picked free and
    released could be."""
    held: list[socket.socket] = []

    def take() -> int:
        sock = socket.socket()
        held.append(sock)
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

    yield take
    for sock in held:
        sock.close()


@pytest.fixture
def dead_url(refused_port: Callable[[], int]) -> str:
    """A base URL where nothing answers, for the whole test."""
    return f"http://127.0.0.1:{refused_port()}/v1"


@dataclass
class RedisServer:
    """A real ``redis-server`` on a free loopback port, owned by the test that started it."""

    port: int
    workdir: Path
    password: str | None = None
    process: subprocess.Popen[bytes] | None = None
    _drain: threading.Thread | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (.ci/run installs it)"
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(self.workdir)]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            if b"Ready to accept connections" in raw:
                break
        else:
            raise RuntimeError("redis-server exited before it was ready")
        # Keep draining its output so it never blocks on a full pipe.
        self._drain = threading.Thread(target=self.process.stdout.read, daemon=True)
        self._drain.start()

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        if self._drain is not None:
            self._drain.join(10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory() as workdir:
        server = RedisServer(free_port(), Path(workdir))
        server.start()
        yield server
        with contextlib.suppress(Exception):
            server.stop()


def redis_clients(request: pytest.FixtureRequest, count: int) -> list[Any]:
    """``count`` clients of one Redis: fakeredis, or a redis-server for the test, as the
    fixture's param (``"fakeredis"`` or ``"redis"``) says."""
    if request.param == "fakeredis":
        import fakeredis

        server = fakeredis.FakeServer()
        return [fakeredis.FakeAsyncRedis(server=server) for _ in range(count)]
    from redis.asyncio import Redis

    redis_server: RedisServer = request.getfixturevalue("redis_server")
    return [Redis.from_url(redis_server.url) for _ in range(count)]


def with_replicas(
    config: RouterConfig, backend: str, urls: list[str], **fields: Any
) -> RouterConfig:
    """``config`` with ``backend``'s replicas pointed at ``urls`` (ids ``<backend>-f<i>``)."""
    backends = []
    for b in config.backends:
        if b.name == backend:
            replicas = [{"id": f"{backend}-f{i}", "url": u} for i, u in enumerate(urls)]
            b = type(b).model_validate({**b.model_dump(), "replicas": replicas, **fields})
        backends.append(b)
    return config.model_copy(update={"backends": backends})


@dataclass
class Fake:
    """A FakeUpstream running on its own loop thread."""

    upstream: Any
    thread: LoopThread

    @property
    def url(self) -> str:
        return str(self.upstream.url)

    def release(self) -> None:
        self.thread.loop.call_soon_threadsafe(self.upstream.release.set)


@pytest.fixture
def fake_upstream() -> Iterator[Fake]:
    from .fakes import FakeUpstream

    thread = LoopThread()
    upstream = thread.run(FakeUpstream().start())
    yield Fake(upstream, thread)
    thread.run(upstream.close())
    thread.stop()


@pytest.fixture
def scripted() -> Iterator[Any]:
    """A factory of scripted fake replicas (tests/scripted.py), stopped after the test."""
    from .scripted import Replicas

    thread = LoopThread()
    replicas = Replicas(thread)
    yield replicas
    for replica in replicas.made:
        thread.run(replica.close())
    thread.stop()
