"""Replica choice inside a backend pool: prefix affinity weighed against load and health.

Load is ``Replica.load()``: what the replica reports (router/load.py) or, without fresh figures,
this process's in-flight count. Health is ``Replica.usable()`` (the breaker, router/health.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from zlib import crc32

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
    prefixes: int = 0  # new prefixes this process placed here (a proxy for its cache's share)
    # Backend truth (router/health.py, router/load.py); router/watch.attach sets them from the
    # config and keeps them current.
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
        """Reported running + waiting + sent since the last scrape when fresh, else in flight."""
        return self.gauge.load(time.monotonic() if now is None else now, self.in_flight)

    def usable(self, now: float) -> bool:
        """The circuit breaker lets a request through now."""
        return self.health.usable(now)

    def accepts_new_prefixes(self, now: float | None = None) -> bool:
        """False while the replica reports its KV cache (nearly) full."""
        return not self.gauge.kv_full(time.monotonic() if now is None else now)


@dataclass(eq=False, slots=True)
class Pool:
    backend: BackendConfig
    replicas: list[Replica]
    turn: int = field(default=0)


@dataclass(frozen=True, slots=True)
class Choice:
    replica: Replica
    affinity: bool  # True when the request went to the replica holding its prefix


class Balancer:
    def __init__(self, config: RouterConfig, *, clock: Callable[[], float] = time.monotonic):
        self._routing: RoutingConfig = config.routing
        self._clock = clock
        self.pools: dict[str, Pool] = {
            b.name: Pool(b, [Replica(r.id, r.url, b) for r in b.replicas]) for b in config.backends
        }

    def pick(
        self,
        pool: Pool,
        *,
        warm: str | None = None,
        tie_key: str | None = None,
        exclude: Sequence[Replica] = (),
    ) -> Choice:
        """Choose a replica; ``warm`` is the id of the replica holding the request's prefix."""
        candidates = self._available(pool, exclude)
        policy = self._routing.policy
        if policy == "round_robin":
            pool.turn += 1
            return Choice(candidates[pool.turn % len(candidates)], False)
        now = self._clock()
        loads = {r.id: r.load(now) for r in candidates}
        least = min(loads.values())
        if policy == "prefix_affinity" and warm is not None:
            held = next((r for r in candidates if r.id == warm), None)
            if held is not None and not self._overloaded(loads[held.id], least):
                return Choice(held, True)
        if tie_key is not None and policy == "prefix_affinity":
            return Choice(self._place(candidates, loads, least, tie_key, now), False)
        idle = [r for r in candidates if loads[r.id] == least]
        if tie_key is not None:
            # Equal loads: spread distinct prefixes evenly, the same prefix always the same way.
            return Choice(idle[crc32(tie_key.encode()) % len(idle)], False)
        pool.turn += 1
        return Choice(idle[pool.turn % len(idle)], False)

    def _place(
        self, candidates: list[Replica], loads: dict[str, float], least: float, key: str, now: float
    ) -> Replica:
        """Where a prefix no replica holds goes: among replicas not overloaded and with room in
        their KV cache, the one that was given the fewest prefixes (as SGLang's cache-aware
        policy picks the smallest tree), then the least loaded, then by the key. Placing by
        load alone pins a burst of new prefixes onto whichever replica happened to be idle."""
        fit = [r for r in candidates if not self._overloaded(loads[r.id], least)]
        roomy = [r for r in fit if r.accepts_new_prefixes(now)] or fit
        fewest = min((r.prefixes, loads[r.id]) for r in roomy)
        best = [r for r in roomy if (r.prefixes, loads[r.id]) == fewest]
        chosen = best[crc32(key.encode()) % len(best)]
        chosen.prefixes += 1
        return chosen

    def mark_failed(self, replica: Replica) -> None:
        replica.down_until = self._clock() + self._routing.replica_cooldown

    def mark_ok(self, replica: Replica) -> None:
        replica.down_until = 0.0

    def _available(self, pool: Pool, exclude: Sequence[Replica]) -> list[Replica]:
        now = self._clock()
        fresh = [r for r in pool.replicas if r not in exclude] if exclude else pool.replicas
        healthy = [r for r in fresh if r.down_until <= now and r.usable(now)]
        return healthy or fresh or pool.replicas

    def _overloaded(self, load: float, least: float) -> bool:
        return (
            load - least > self._routing.balance_abs_threshold
            and load > least * self._routing.balance_rel_threshold
        )
