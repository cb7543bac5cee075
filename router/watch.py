"""The background truth about replicas: metrics scrapes and liveness probes.

``attach`` gives every replica its breaker and load gauge from the config; ``Watcher`` runs, for
the application's lifetime, one scrape loop per replica that publishes metrics (every
``load.interval`` seconds, backing off while scrapes fail) and one probe loop that asks
``GET <replica>/models`` of every replica whose figures are not fresh or whose breaker waits for
an answer (every ``health.probe_interval`` seconds). Requests never wait on any of it: they read
the numbers these loops leave on the replicas. Scrapes and probes use their own small session,
so a saturated upstream pool cannot starve them (and they cannot take its connections).

``readiness`` and ``snapshot`` are what ``GET /ready`` and ``GET /health/backends`` show.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from router.balancer import Balancer, Replica
from router.config import RouterConfig
from router.health import Failure, ReplicaHealth
from router.load import LoadGauge, NotMetrics, parse_report

log = logging.getLogger(__name__)

_MAX_PAGE = 8 << 20  # a metrics page larger than this is not one we want to parse
_MAX_BACKOFF = 5.0  # seconds between scrapes of a replica whose scrapes keep failing


def attach(balancer: Balancer, config: RouterConfig) -> None:
    """Give each replica its breaker and load gauge, configured."""
    for pool in balancer.pools.values():
        settings = {r.id: r for r in pool.backend.replicas}
        for replica in pool.replicas:
            url = pool.backend.metrics_url(settings[replica.id])
            replica.health = ReplicaHealth(config.health, config.routing.replica_cooldown)
            replica.gauge = LoadGauge(config.load, url)


class Watcher:
    """Scrape and probe loops for every replica; ``start`` and ``close`` bound their life."""

    def __init__(
        self,
        config: RouterConfig,
        balancer: Balancer,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._replicas = [r for p in balancer.pools.values() for r in p.replicas]
        self._clock = clock
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=64, limit_per_host=2, keepalive_timeout=30)
        self._session = aiohttp.ClientSession(connector=connector)
        for replica in self._replicas:
            if replica.gauge.url is not None:
                self._tasks.append(asyncio.create_task(self._scrape_loop(replica)))
        self._tasks.append(asyncio.create_task(self._probe_loop()))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()

    async def _scrape_loop(self, replica: Replica) -> None:
        interval = self._config.load.interval
        failures = 0
        while True:
            try:
                ok = await self.scrape(replica)
            except Exception:
                # A bug here must not end the loop: the replica would fall back to local
                # load for good, silently.
                log.exception("replica %s: metrics scrape failed unexpectedly", replica.id)
                ok = False
            if ok:
                failures = 0
                await asyncio.sleep(interval)
            else:
                failures += 1
                await asyncio.sleep(min(interval * 2 ** min(failures, 16), _MAX_BACKOFF))

    async def scrape(self, replica: Replica) -> bool:
        """One scrape of ``replica``'s metrics into its gauge; True when it worked."""
        gauge = replica.gauge
        url = gauge.url
        assert self._session is not None and url is not None
        started = gauge.scrape_started()
        timeout = aiohttp.ClientTimeout(total=self._config.load.timeout)
        try:
            async with self._session.get(url, timeout=timeout, allow_redirects=False) as response:
                if response.status != 200:
                    gauge.failed(f"HTTP {response.status}")
                    return False
                page = await response.content.read(_MAX_PAGE)
            report = parse_report(page)
        except (aiohttp.ClientError, TimeoutError) as exc:
            gauge.failed(type(exc).__name__)
            return False
        except NotMetrics as exc:
            gauge.failed(str(exc))
            return False
        now = self._clock()
        gauge.update(report, now, started)
        replica.health.answered(now)
        return True

    async def _probe_loop(self) -> None:
        # First wait a period: by then the scrapes have made most replicas fresh, and a router
        # starting up does not open a burst of connections to every replica at once.
        while True:
            await asyncio.sleep(self._config.health.probe_interval)
            try:
                await self.probe_due()
            except Exception:
                log.exception("health probes failed unexpectedly")

    async def probe_due(self) -> None:
        """Probe every replica whose metrics are not fresh or whose breaker awaits an answer."""
        now = self._clock()
        due = [r for r in self._replicas if r.health.needs_answer or not r.gauge.fresh(now)]
        await asyncio.gather(*(self._probe(r) for r in due))

    async def _probe(self, replica: Replica) -> None:
        assert self._session is not None
        timeout = aiohttp.ClientTimeout(total=self._config.health.probe_timeout)
        try:
            # With the upstream key: hosted APIs answer /models only to a known key. The URL is
            # the replica's own, so the key goes nowhere it would not go anyway.
            async with self._session.get(
                replica.url + "/models",
                headers=replica.headers,
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                ok = response.status < 500
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        now = self._clock()
        if ok:
            replica.health.answered(now)
        else:
            replica.health.failed(Failure.PROBE, now)
            log.warning("replica %s: health probe failed", replica.id)


def readiness(config: RouterConfig, balancer: Balancer, now: float) -> dict[str, Any]:
    """Which routed pools can serve, and which pool each route (type, or type@effort) would
    use now."""
    routes = config.routes.routed()
    routed = {name for names in routes.values() for name in names}
    pools = {
        name: any(r.health.serviceable(now) for r in balancer.pools[name].replicas)
        for name in sorted(routed)
    }
    types = {
        key: next((name for name in names if pools[name]), None) for key, names in routes.items()
    }
    return {"ready": any(pools.values()), "pools": pools, "types": types}


def snapshot(balancer: Balancer, now: float) -> dict[str, Any]:
    """Every replica's breaker, load and metrics figures, by backend (ids only, no URLs)."""
    backends: dict[str, Any] = {}
    for name, pool in balancer.pools.items():
        replicas = {}
        for replica in pool.replicas:
            gauge = replica.gauge
            report = gauge.report
            fresh = gauge.fresh(now)
            replicas[replica.id] = {
                **replica.health.snapshot(now),
                "in_flight": replica.in_flight,
                "load": replica.load(now),
                "load_source": "metrics" if fresh else "local",
                "accepts_new_prefixes": replica.accepts_new_prefixes(now),
                "metrics": None
                if report is None or gauge.url is None
                else {
                    "running": report.running,
                    "waiting": report.waiting,
                    "kv_usage": report.kv_usage,
                    "sent_since_scrape": gauge.sent_since,
                    "age_s": round(now - gauge.reported_at, 3),
                    "fresh": fresh,
                },
                "metrics_error": gauge.last_error if gauge.url is not None else None,
            }
        healthy = any(r.health.serviceable(now) for r in pool.replicas)
        backends[name] = {"healthy": healthy, "replicas": replicas}
    return {"backends": backends}
