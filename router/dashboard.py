"""The live dashboard's figures: read from the metrics registry, so workers add up.

``GET /dashboard`` is one static page (``dashboard.html``, inline CSS and JS, no build step and
nothing fetched from elsewhere) that polls ``GET /dashboard/data``. The figures come from the
same registry a Prometheus scrape reads, summed over the workers when there are several;
replica health is this process's view, and recent errors are the last ones this process saw.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry

from router.balancer import Balancer
from router.context import RequestContext
from router.metrics import Metrics
from router.redis_store import RedisPrefixStore
from router.store import PrefixStore

MAX_ERRORS = 20


class RecentErrors:
    """The last requests that failed, newest first: ids, where they went and why."""

    def __init__(self, limit: int = MAX_ERRORS) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=limit)

    def add(self, ctx: RequestContext, path: str, status: int) -> None:
        self._entries.appendleft(
            {
                "time": time.time(),
                "request_id": ctx.request_id,
                "path": path,
                "status": status,
                "type": ctx.request_type,
                "backend": ctx.backend,
                "replica": ctx.replica,
                "message": (ctx.error or f"HTTP {status}")[:300],
            }
        )

    def list(self) -> list[dict[str, Any]]:
        return list(self._entries)


def refresh_gauges(metrics: Metrics, balancer: Balancer, store: PrefixStore, now: float) -> None:
    """Set the gauges read from live state (this process's view) just before a scrape."""
    for name, pool in balancer.pools.items():
        for replica in pool.replicas:
            metrics.replica_in_flight(name, replica.id, replica.in_flight)
            metrics.replica_load(name, replica.id, replica.load(now))
            replica.health.usable(now)  # moves a rested breaker to half-open: a current view
            metrics.breaker_state(name, replica.id, replica.health.state.value)
            metrics.breaker_openings(name, replica.id, replica.health.openings)
            gauge = replica.gauge
            if gauge.url is not None:
                metrics.replica_scrapes(name, replica.id, gauge.scrapes_ok, gauge.scrapes_failed)
                if gauge.reported_at > float("-inf"):
                    metrics.replica_metrics_age(name, replica.id, now - gauge.reported_at)
    if isinstance(store, RedisPrefixStore):
        metrics.redis_state(store.answering)


def dashboard_data(
    registry: CollectorRegistry,
    balancer: Balancer,
    errors: RecentErrors,
    *,
    redis_up: bool | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Everything the page shows, as one JSON-ready mapping. ``redis_up``: whether the
    shared prefix index answers (None: there is none, the index is in memory)."""
    samples = _samples(registry)
    requests = samples.get("di_requests_total", [])
    cache = _sum_by(requests, "cache", routed_only=True)
    tokens = _sum_by(samples.get("di_tokens_total", []), "token_type")
    looked_up = sum(cache.get(k, 0.0) for k in ("hit", "miss", "bypass"))
    return {
        "time": time.time(),
        "requests": {
            "total": sum(value for _, value in requests),
            "by_type": _sum_by(requests, "type", routed_only=True),
            "by_backend": _sum_by(requests, "backend", routed_only=True),
            "by_status": _sum_by(requests, "status"),
        },
        "cache": {
            "outcomes": cache,
            "hit_rate": cache.get("hit", 0.0) / looked_up if looked_up else None,
            "index": "memory" if redis_up is None else "redis" if redis_up else "redis down",
        },
        "tokens": {
            "input": tokens.get("input", 0.0),
            "output": tokens.get("output", 0.0),
            "cached_input": tokens.get("cached_input", 0.0),
            "cached_share": (
                tokens.get("cached_input", 0.0) / tokens["input"] if tokens.get("input") else None
            ),
        },
        "ttft_ms": _ttft(samples.get("gen_ai_server_time_to_first_token_seconds_bucket", [])),
        "replicas": _replicas(balancer, samples, clock()),
        "errors": errors.list(),
    }


Sample = tuple[dict[str, str], float]


def _samples(registry: CollectorRegistry) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for family in registry.collect():
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def _sum_by(
    samples: Iterable[Sample], label: str, *, routed_only: bool = False
) -> dict[str, float]:
    sums: dict[str, float] = {}
    for labels, value in samples:
        if routed_only and not labels.get("backend"):
            continue
        key = labels.get(label, "")
        sums[key] = sums.get(key, 0.0) + value
    return {k: v for k, v in sorted(sums.items()) if v}


def _ttft(buckets: list[Sample]) -> dict[str, Any]:
    """p50 and p90 of streamed answers (where the first byte is the first token; a JSON
    answer's first byte is its last), of all answers when none was streamed; interpolated in
    buckets as PromQL's ``histogram_quantile`` does."""
    streamed = [(labels, value) for labels, value in buckets if labels.get("stream") == "true"]
    chosen = (
        streamed if any(value for labels, value in streamed if labels["le"] == "+Inf") else buckets
    )
    cumulative: dict[float, float] = {}
    for labels, value in chosen:
        bound = float(labels["le"])
        cumulative[bound] = cumulative.get(bound, 0.0) + value
    bounds = sorted(cumulative)
    count = cumulative.get(math.inf, 0.0)
    result: dict[str, Any] = {"count": count, "streamed": chosen is streamed}
    for name, q in (("p50", 0.5), ("p90", 0.9)):
        result[name] = _quantile(q, bounds, cumulative, count)
    return result


def _quantile(
    q: float, bounds: list[float], cumulative: dict[float, float], count: float
) -> float | None:
    if not count:
        return None
    rank = q * count
    lower_bound = lower_count = 0.0
    for bound in bounds:
        seen = cumulative[bound]
        if seen >= rank:
            if math.isinf(bound):
                return lower_bound * 1000  # beyond the last finite bucket: its edge
            share = (rank - lower_count) / (seen - lower_count) if seen > lower_count else 1.0
            return (lower_bound + (bound - lower_bound) * share) * 1000
        lower_bound, lower_count = bound, seen
    return None


def _replicas(balancer: Balancer, samples: dict[str, list[Sample]], now: float) -> list[Any]:
    in_flight = {
        (labels["backend"], labels["replica"]): value
        for labels, value in samples.get("di_replica_in_flight", [])
    }
    load = {
        (labels["backend"], labels["replica"]): value
        for labels, value in samples.get("di_replica_load", [])
    }
    rows = []
    for name, pool in balancer.pools.items():
        for replica in pool.replicas:
            key = (name, replica.id)
            state = replica.health.state.value  # closed, half_open or open (the breaker)
            healthy = replica.usable(now)
            rows.append(
                {
                    "backend": name,
                    "id": replica.id,
                    "in_flight": in_flight.get(key, float(replica.in_flight)),
                    "load": load.get(key, replica.load(now)),
                    "healthy": healthy,
                    "state": {"closed": "up", "half_open": "trial", "open": "resting"}[state],
                }
            )
    return rows
