"""router/watch.py: scraped load steering placement, /health/backends, /ready and /metrics.

The busy-replica claim is tested in one router and across two router processes sharing the
same scripted fleet: each process alone has nothing in flight, only the replicas' own metrics
say which one is busy.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml

from router.config import RouterConfig
from router.keys import BALANCER, WATCHER

from .conftest import Stack, free_port, with_replicas
from .scripted import Replicas, Scripted, vllm_metrics
from .test_retry import tune


def marked(prefix: str) -> Any:
    """A request with a new cache_control prefix (long enough to be worth placing)."""
    system = f"You are assistant {prefix}. " + "Follow the house rules carefully. " * 40
    return [
        {
            "role": "system",
            "content": [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}],
        },
        {"role": "user", "content": "hello"},
    ]


def scraped_pool(urls: list[str]) -> Callable[[RouterConfig], RouterConfig]:
    def edit(config: RouterConfig) -> RouterConfig:
        config = with_replicas(config, "sim-text", urls)
        return tune(config, load={"interval": 0.05}, health={"probe_interval": 60})

    return edit


def scrape_all(live: Stack) -> None:
    """One scrape of every scraped replica, now (the background loop keeps going too)."""

    async def scrape() -> None:
        watcher = live.app[WATCHER]
        for pool in live.app[BALANCER].pools.values():
            for replica in pool.replicas:
                if replica.gauge.url is not None:
                    assert await watcher.scrape(replica)

    live.run(scrape())


def placed(client: openai.OpenAI, salt: str, count: int) -> list[str]:
    return [
        client.chat.completions.with_raw_response.create(
            model="m", messages=marked(f"{salt}-{i}")
        ).headers["X-DI-Replica"]
        for i in range(count)
    ]


def test_busy_replica_gets_no_new_prefixes_while_an_idle_one_exists(
    make_stack: Any, scripted: Replicas
) -> None:
    busy = scripted.new("busy", metrics=vllm_metrics(running=60, waiting=20))
    idle = scripted.new("idle", metrics=vllm_metrics(running=0, waiting=0))
    live = make_stack(edit=scraped_pool([busy.url, idle.url]))
    scrape_all(live)
    assert set(placed(live.client(), "a", 10)) == {"sim-text-f1"}
    assert busy.posts == 0 and idle.posts == 10


def test_kv_cache_near_full_takes_no_new_prefixes(make_stack: Any, scripted: Replicas) -> None:
    full = scripted.new("full", metrics=vllm_metrics(running=1, waiting=0, kv=0.99))
    roomy = scripted.new("roomy", metrics=vllm_metrics(running=1, waiting=0, kv=0.30))
    live = make_stack(edit=scraped_pool([full.url, roomy.url]))
    scrape_all(live)
    assert set(placed(live.client(), "kv", 8)) == {"sim-text-f1"}


async def get_json(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


async def test_health_backends_shows_breakers_and_scraped_load(
    make_stack: Any, scripted: Replicas
) -> None:
    busy = scripted.new("busy", metrics=vllm_metrics(running=7, waiting=3, kv=0.5))
    bare = scripted.new("bare")  # no /metrics: local in-flight only
    live = make_stack(edit=scraped_pool([busy.url, bare.url]))
    live.run(live.app[WATCHER].scrape(live.app[BALANCER].pools["sim-text"].replicas[0]))
    status, body = await get_json(live.base_url.removesuffix("/v1") + "/health/backends")
    assert status == 200
    replicas = body["backends"]["sim-text"]["replicas"]
    first, second = replicas["sim-text-f0"], replicas["sim-text-f1"]
    assert first["state"] == "closed" and first["load_source"] == "metrics"
    assert first["load"] == 10 and first["metrics"]["kv_usage"] == 0.5
    assert second["load_source"] == "local" and second["metrics"] is None
    assert second["metrics_error"] is None or "HTTP 404" in second["metrics_error"]
    assert busy.url not in str(body) and "127.0.0.1" not in str(body)
    async with (
        aiohttp.ClientSession() as session,
        session.get(live.base_url.removesuffix("/v1") + "/metrics") as response,
    ):
        text = await response.text()
    assert 'di_replica_breaker_state{backend="sim-text",replica="sim-text-f0"} 0' in text
    assert 'di_replica_load{backend="sim-text",replica="sim-text-f0"} 10.0' in text


def dead_vision(url: str) -> Callable[[RouterConfig], RouterConfig]:
    def edit(config: RouterConfig) -> RouterConfig:
        config = with_replicas(config, "sim-vision", [url])
        return tune(config, health={"probe_interval": 60})

    return edit


async def test_ready_stays_200_with_one_pool_dead(make_stack: Any, dead_url: str) -> None:
    live = make_stack(edit=dead_vision(dead_url))
    live.run(live.app[WATCHER].probe_due())  # what the background checker does every period
    root = live.base_url.removesuffix("/v1")
    status, body = await get_json(root + "/ready")
    assert status == 200
    assert body["pools"]["sim-vision"] is False and body["pools"]["sim-text"] is True
    assert body["types"] == {
        "text": "sim-text",
        "code": "sim-code",
        "json": "sim-json",
        "vision": None,
    }
    # The dead pool degrades its own type only.
    async with live.aclient() as client:
        ok = await client.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
        assert ok.headers["X-DI-Backend"] == "sim-text"
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(
                model="m",
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
                            }
                        ],
                    }
                ],
            )
        assert caught.value.status_code == 503


async def test_ready_is_503_when_no_routed_pool_is_healthy(
    make_stack: Any, refused_port: Callable[[], int]
) -> None:
    def all_dead(config: RouterConfig) -> RouterConfig:
        for name in ("sim-text", "sim-code", "sim-json", "sim-vision"):
            config = with_replicas(config, name, [f"http://127.0.0.1:{refused_port()}/v1"])
        return tune(config, health={"probe_interval": 60})

    live = make_stack(edit=all_dead)
    live.run(live.app[WATCHER].probe_due())
    status, body = await get_json(live.base_url.removesuffix("/v1") + "/ready")
    assert status == 503 and body["status"] == "unavailable"
    assert not any(body["pools"].values())


async def test_ready_never_probes_per_call(make_stack: Any, scripted: Replicas) -> None:
    watched = scripted.new("watched")
    live = make_stack(edit=scraped_pool([watched.url]))
    before = watched.probes
    for _ in range(5):
        status, _ = await get_json(live.base_url.removesuffix("/v1") + "/ready")
        assert status == 200
    assert watched.probes == before


# Two router processes -------------------------------------------------------------------


class RouterProcess:
    """``python -m router serve --config FILE`` on a free port; output drained in a thread."""

    def __init__(self, config: Path) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "router", "serve", "--config", str(config), *self._flags()],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.output: list[str] = []
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            if "di-router listening" in line:
                break
        else:
            raise AssertionError("router exited before it listened:\n" + "".join(self.output))
        self._drain = threading.Thread(target=self._read, daemon=True)
        self._drain.start()

    def _flags(self) -> list[str]:
        return ["--port", str(self.port), "--log-level", "warning"]

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._drain.join(5)
            if self.process.stdout is not None:
                self.process.stdout.close()


@pytest.fixture
def two_routers(
    tmp_path: Path, scripted: Replicas
) -> Iterator[tuple[list[RouterProcess], list[Scripted]]]:
    fleet = [
        scripted.new("r0", metrics=vllm_metrics(running=60, waiting=20)),
        scripted.new("r1", metrics=vllm_metrics(running=0, waiting=0)),
    ]
    config = {
        "backends": [
            {
                "name": "fleet",
                "replicas": [{"id": f"r{i}", "url": r.url} for i, r in enumerate(fleet)],
                "timeout": {"connect": 2, "read": 10},
            }
        ],
        "routes": {"text": "fleet", "code": "fleet", "json": "fleet", "vision": "fleet"},
        "load": {"interval": 0.05},
    }
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(config))
    routers: list[RouterProcess] = []
    try:
        for _ in range(2):
            routers.append(RouterProcess(path))
        yield routers, fleet
    finally:
        for router in routers:
            router.stop()


def wait_for_loads(routers: list[RouterProcess], wanted: dict[str, float]) -> None:
    """Until every router's /health/backends shows ``wanted`` loads from metrics (bounded)."""
    import urllib.request

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        seen = []
        for router in routers:
            url = router.base_url.removesuffix("/v1") + "/health/backends"
            with urllib.request.urlopen(url, timeout=5) as response:
                body = yaml.safe_load(response.read())
            replicas = body["backends"]["fleet"]["replicas"]
            seen.append(
                all(
                    replicas[rid]["load_source"] == "metrics" and replicas[rid]["load"] == load
                    for rid, load in wanted.items()
                )
            )
        if all(seen):
            return
        time.sleep(0.05)  # polling a condition with a deadline, not timing a result
    raise AssertionError(f"routers never saw loads {wanted}")


def test_two_router_processes_keep_new_prefixes_off_the_busy_replica(
    two_routers: tuple[list[RouterProcess], list[Scripted]], scripted: Replicas
) -> None:
    routers, (r0, r1) = two_routers
    wait_for_loads(routers, {"r0": 80, "r1": 0})
    clients = [openai.OpenAI(base_url=r.base_url, api_key="x", max_retries=0) for r in routers]
    try:
        first = [placed(clients[i % 2], f"p{i}", 1)[0] for i in range(10)]
        assert set(first) == {"r1"}
        # The fleet's truth changes: r1 is now the busy one; both routers follow.
        scripted.set(r0, metrics=vllm_metrics(running=0, waiting=0))
        scripted.set(r1, metrics=vllm_metrics(running=60, waiting=20))
        wait_for_loads(routers, {"r0": 0, "r1": 80})
        second = [placed(clients[i % 2], f"q{i}", 1)[0] for i in range(10)]
        assert set(second) == {"r0"}
    finally:
        for client in clients:
            client.close()
