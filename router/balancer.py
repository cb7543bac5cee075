"""Backend pools and their replicas: what the picker may know about each replica.

The picker (``router.picker``) reads a replica only through ``load()``, ``usable(now)`` and
``accepts_new_prefixes()``, so where those figures come from can change without touching it.
Today load is the number of requests this process has in flight to the replica, and a replica
whose answer was a fault (refused connection, timeout, 5xx) rests for ``replica_cooldown``
seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from router.config import BackendConfig, RouterConfig, RoutingConfig


@dataclass(eq=False, slots=True)
class Replica:
    id: str
    url: str
    backend: BackendConfig
    in_flight: int = 0
    down_until: float = 0.0
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

    def load(self) -> float:
        """How busy the replica is: requests this process has in flight to it."""
        return float(self.in_flight)

    def usable(self, now: float) -> bool:
        """Whether requests may be sent to it now (not resting after a fault)."""
        return self.down_until <= now

    def accepts_new_prefixes(self) -> bool:
        """Whether its KV cache has room for prefixes it does not hold yet."""
        return True


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
