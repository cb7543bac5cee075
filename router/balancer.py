"""Backend pools and their replicas: what the picker may know about each replica.

The picker (``router.picker``) reads a replica only through ``load()``, ``usable(now)`` and
``accepts_new_prefixes()``, so where those figures come from can change without touching it.
Load is what the replica itself reports at ``/metrics`` plus what this router sent it since,
or this process's in-flight count without fresh figures (``router.load``); usable is its
circuit breaker (``router.health``); new prefixes stay off a replica reporting its KV cache
nearly full. ``router.watch.attach`` configures both per replica and keeps them current.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from router.config import BackendConfig, HealthConfig, LoadConfig, RouterConfig, RoutingConfig
from router.health import ReplicaHealth
from router.load import LoadGauge


@dataclass(eq=False, slots=True)
class Replica:
    id: str
    url: str
    backend: BackendConfig
    in_flight: int = 0
    down_until: float = 0.0
    health: ReplicaHealth = field(default_factory=lambda: ReplicaHealth(HealthConfig(), 5.0))
    gauge: LoadGauge = field(default_factory=lambda: LoadGauge(LoadConfig()))
    # Built once, not per request: the backend's timeouts and upstream auth header.
    timeout: aiohttp.ClientTimeout = field(init=False)
    headers: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        limits = self.backend.timeout
        self.timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=limits.connect, sock_read=limits.read
        )
        self.headers = {"Content-Type": "application/json"}
        if self.backend.api_key is not None:
            self.headers["Authorization"] = f"Bearer {self.backend.api_key.get_secret_value()}"

    def load(self, now: float | None = None) -> float:
        """How busy the replica is: reported running + waiting + sent since the last scrape,
        when fresh; else the requests this process has in flight to it."""
        return self.gauge.load(time.monotonic() if now is None else now, self.in_flight)

    def usable(self, now: float) -> bool:
        """Whether requests may be sent to it now: its circuit breaker lets them through."""
        return self.down_until <= now and self.health.usable(now)

    def accepts_new_prefixes(self, now: float | None = None) -> bool:
        """Whether to place prefixes it does not hold yet here: not while it reports KV usage
        at or above ``load.kv_full``, nor while its last attempt failed (a prefix it just lost
        by failing should not be placed straight back on it)."""
        if self.health.failures:
            return False
        return not self.gauge.kv_full(time.monotonic() if now is None else now)


@dataclass(eq=False, slots=True)
class Pool:
    backend: BackendConfig
    replicas: list[Replica]
    turn: int = field(default=0)


class Balancer:
    """The pools of replicas, and their health as this process sees it."""

    def __init__(self, config: RouterConfig, *, clock: Callable[[], float] = time.monotonic):
        self._routing: RoutingConfig = config.routing
        self._clock = clock
        self.pools: dict[str, Pool] = {
            b.name: Pool(b, [Replica(r.id, r.url, b) for r in b.replicas]) for b in config.backends
        }

    def mark_failed(self, replica: Replica) -> None:
        replica.down_until = self._clock() + self._routing.replica_cooldown

    def mark_ok(self, replica: Replica) -> None:
        replica.down_until = 0.0
