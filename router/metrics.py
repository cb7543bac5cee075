"""The router's Prometheus metrics, served at ``GET /metrics``, built on ``prometheus_client``.

Each application owns a ``CollectorRegistry`` (never the library's global one), so several
routers in one process, as in the tests, keep apart. With ``PROMETHEUS_MULTIPROC_DIR`` set
(``di-router serve --workers N`` sets it before starting its workers), ``prometheus_client``
keeps every value in files of that directory and a scrape sums them over the workers, so
whichever worker answers ``/metrics`` reports the whole router.

Names follow the OpenTelemetry GenAI semantic conventions where one exists (the
``gen_ai.server.*`` and ``gen_ai.client.token.usage`` instruments, with their recommended
buckets), converted to Prometheus as the OpenTelemetry exporter does (dots to underscores, the
unit as a suffix); the rest are ``di_*``.

Everything a metric records comes from the typed fields of ``RequestContext`` at the end of a
request (``observe``), or from hook methods the components call when something happens
(``retry``, ``fallback``, ``breaker_state``, ``redis_state``, ``prefix_lookup``,
``replica_load``), or, for what a component counts on its own hot path (scrapes, breaker
openings), from those counts as a scrape finds them (``replica_scrapes``,
``breaker_openings``): components never touch ``prometheus_client`` themselves.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from router.context import RequestContext

_TITLE = re.compile(r"[^\w .:/@-]")
MAX_TITLES = 100  # distinct X-Title labels per process; more become "other" (cardinality)
# Memoised label children per registry: a bound, not an expected size (see ``Children``).
MAX_CHILDREN = 10_000

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# The OpenTelemetry GenAI conventions' explicit bucket boundaries.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0)  # fmt: skip
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                    40.96, 81.92)  # fmt: skip
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
# The router's own time is sub-millisecond when all is well; Redis lookups a few ms.
FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0)  # fmt: skip

_BY = ("type", "backend", "cache")
_REQUEST_LABELS = ("endpoint", "type", "backend", "replica", "cache", "status")
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    """The router's instruments in one registry; ``render`` is the scrape."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._child = Children()
        self._multiprocess = multiprocess_dir()
        r = self.registry
        self.requests = Counter(
            "di_requests", "Requests answered, by outcome.", _REQUEST_LABELS, registry=r
        )
        self.ttft = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Time from the request's arrival to the first body byte relayed to the client.",
            (*_BY, "stream"),
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "gen_ai_server_request_duration_seconds",
            "Time from the request's arrival to its last byte.",
            (*_BY, "status"),
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.upstream = Histogram(
            "di_upstream_time_to_headers_seconds",
            "Upstream call until the backend's response headers.",
            _BY,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.router_time = Histogram(
            "di_router_overhead_seconds",
            "The router's own work before the upstream call (parse, classify, lookup, pick).",
            _BY,
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Tokens per request as the backend reported them (input or output).",
            ("type", "backend", "gen_ai_token_type"),
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "di_tokens",
            "Tokens as the backends reported them: input, output, and cached input.",
            ("type", "backend", "token_type"),
            registry=r,
        )
        self.in_flight = Gauge(
            "di_replica_in_flight",
            "Requests in flight per replica (summed over the router's workers).",
            ("backend", "replica"),
            registry=r,
            multiprocess_mode="livesum",
        )
        self.load = Gauge(
            "di_replica_load",
            "Load per replica as the placement sees it (scraped from the backend when fresh).",
            ("backend", "replica"),
            registry=r,
            multiprocess_mode="livemax",
        )
        self.breaker = Gauge(
            "di_replica_breaker_state",
            "Circuit breaker per replica: 0 closed, 1 half-open, 2 open.",
            ("backend", "replica"),
            registry=r,
            multiprocess_mode="livemax",
        )
        self.retries = Counter(
            "di_retries",
            "Attempts retried on another replica, by reason.",
            ("backend", "reason"),
            registry=r,
        )
        self.fallbacks = Counter(
            "di_fallbacks",
            "Requests served by a fallback pool instead of the routed one.",
            ("type", "from_backend", "to_backend"),
            registry=r,
        )
        self.redis_up = Gauge(
            "di_redis_up",
            "1 while the shared prefix index (Redis) answers, 0 from a fault until it answers.",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.dropped_writes = Counter(
            "di_prefix_index_writes_dropped",
            "Writes to the shared prefix index (Redis) let go because too many were waiting "
            "for it; the in-process index still holds them.",
            registry=r,
        )
        self.lookup = Histogram(
            "di_prefix_lookup_seconds",
            "Prefix index lookups, by store and outcome (hit, miss, error).",
            ("store", "outcome"),
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.scrapes = Counter(
            "di_replica_scrapes",
            "Scrapes of each replica's own metrics page, by outcome (ok, failed).",
            ("backend", "replica", "outcome"),
            registry=r,
        )
        self.scrape_age = Gauge(
            "di_replica_metrics_age_seconds",
            "Age of the replica figures placement reads (absent before the first good scrape).",
            ("backend", "replica"),
            registry=r,
            multiprocess_mode="livemax",  # with workers: the stalest view shows
        )
        self.openings = Counter(
            "di_replica_breaker_openings",
            "Times a replica's circuit breaker opened, by the failure that opened it.",
            ("backend", "replica", "kind"),
            registry=r,
        )
        # Counts the components keep themselves, as last carried into the counters above.
        self._carried: dict[tuple[int, tuple[str, ...]], int] = {}
        self.tenants = TenantCounters(r, self._child)
        if self._multiprocess is None:
            ProcessCollector(registry=r)

    @property
    def shared(self) -> bool:
        """Values live in files that a scrape sums over worker processes (``--workers N``)."""
        return self._multiprocess is not None

    # -- per request -------------------------------------------------------------------------

    def observe(
        self,
        ctx: RequestContext,
        endpoint: str,
        status: int,
        duration_s: float,
        primary: str | None = None,
    ) -> None:
        """Everything one finished request tells, read from its context; ``primary`` is the
        first pool of the request's route (a fallback is counted against it)."""
        request_type = ctx.request_type or ""
        backend = ctx.backend or ""
        cache = ctx.cache or ""
        status_text = str(status)
        child = self._child
        child(self.requests, (endpoint, request_type, backend, ctx.replica or "", cache,
                              status_text)).inc()  # fmt: skip
        for retried_backend, reason in ctx.retried:
            child(self.retries, (retried_backend, reason)).inc()
        if not backend:
            return  # not a routed request: models, health, an early 4xx
        by = (request_type, backend, cache)
        if ctx.fallback is not None and primary is not None:
            child(self.fallbacks, (request_type, primary, ctx.fallback)).inc()
        child(self.duration, (*by, status_text)).observe(duration_s)
        if ctx.upstream_ms:
            child(self.upstream, by).observe(ctx.upstream_ms / 1000)
            child(self.router_time, by).observe(ctx.router_ms / 1000)
        if ctx.ttft_ms is not None and status < 400:
            stream = "true" if ctx.stream is not None else "false"
            child(self.ttft, (*by, stream)).observe(ctx.ttft_ms / 1000)
        usage = ctx.usage
        if usage is not None:
            child(self.token_usage, (request_type, backend, "input")).observe(usage.prompt_tokens)
            child(self.token_usage, (request_type, backend, "output")).observe(
                usage.completion_tokens
            )
            child(self.tokens, (request_type, backend, "input")).inc(usage.prompt_tokens)
            child(self.tokens, (request_type, backend, "output")).inc(usage.completion_tokens)
            if usage.cached_tokens:
                child(self.tokens, (request_type, backend, "cached_input")).inc(usage.cached_tokens)

    # -- hooks for placement and backend health ----------------------------------------------

    def replica_in_flight(self, backend: str, replica: str, count: int) -> None:
        self._child(self.in_flight, (backend, replica)).set(count)  # after every request

    def replica_load(self, backend: str, replica: str, load: float) -> None:
        """The load the picker reads for a replica (scraped figures when fresh)."""
        self.load.labels(backend, replica).set(load)

    def breaker_state(self, backend: str, replica: str, state: str) -> None:
        """``closed``, ``half_open`` or ``open``."""
        self.breaker.labels(backend, replica).set(BREAKER_STATES[state])

    def replica_scrapes(self, backend: str, replica: str, ok: int, failed: int) -> None:
        """The replica's scrape counts so far (``load.LoadGauge``)."""
        self._carry(self.scrapes, (backend, replica, "ok"), ok)
        self._carry(self.scrapes, (backend, replica, "failed"), failed)

    def replica_metrics_age(self, backend: str, replica: str, seconds: float) -> None:
        self.scrape_age.labels(backend, replica).set(seconds)

    def breaker_openings(self, backend: str, replica: str, openings: dict[str, int]) -> None:
        """The breaker's openings so far, by failure kind (``health.ReplicaHealth``)."""
        for kind, count in openings.items():
            self._carry(self.openings, (backend, replica, kind), count)

    def _carry(self, counter: Counter, labels: tuple[str, ...], total: int) -> None:
        """Raise ``counter`` to a component's own running ``total``: the component counts on
        its hot path without touching Prometheus, and a scrape brings the counter up to date."""
        key = (id(counter), labels)
        gained = total - self._carried.get(key, 0)
        if gained > 0:
            self._carried[key] = total
            self._child(counter, labels).inc(gained)

    def retry(self, backend: str, reason: str) -> None:
        """An attempt that failed before the first byte and was retried elsewhere."""
        self.retries.labels(backend, reason).inc()

    def fallback(self, request_type: str, from_backend: str, to_backend: str) -> None:
        self.fallbacks.labels(request_type, from_backend, to_backend).inc()

    def redis_state(self, up: bool) -> None:
        self.redis_up.set(1 if up else 0)

    def index_write_dropped(self) -> None:
        """A write to the shared index let go (rare): counted at once, so every worker's
        drops show whichever worker answers the scrape."""
        self.dropped_writes.inc()

    def prefix_lookup(self, store: str, outcome: str, seconds: float) -> None:
        self._child(self.lookup, (store, outcome)).observe(seconds)  # per prefix lookup

    # -- the scrape ------------------------------------------------------------------------------

    def scrape_registry(self) -> CollectorRegistry:
        """The registry a scrape reads: this one, or every worker's files summed."""
        if self._multiprocess is None:
            return self.registry
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self._multiprocess)  # type: ignore[no-untyped-call]
        # Process figures cannot be summed across processes: the answering worker's own.
        ProcessCollector(registry=registry)
        return registry

    def render(self, in_flight: Iterable[tuple[str, str, int]] = ()) -> bytes:
        """The Prometheus text exposition; ``in_flight`` refreshes the per-replica gauge."""
        for backend, replica, count in in_flight:
            self.replica_in_flight(backend, replica, count)
        return generate_latest(self.scrape_registry())


class Children:
    """``metric.labels(*labels)``, memoised: ``labels()`` validates and locks on every call,
    which costs more than the observation itself.

    Most label values come from the config and a few fixed sets, but tenant names (keys in
    Redis) and ``X-Title`` apps grow with use: past ``limit`` entries the memo starts over, so
    it stays bounded whatever arrives (the children themselves stay in their metrics).
    """

    def __init__(self, limit: int = MAX_CHILDREN) -> None:
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._limit = limit

    def __call__(self, metric: Any, labels: tuple[str, ...]) -> Any:
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            if len(self._children) >= self._limit:
                self._children.clear()
            found = self._children[key] = metric.labels(*labels)
        return found

    def __len__(self) -> int:
        return len(self._children)


class TenantCounters:
    """Requests and tokens per tenant and app (``X-Title``); rate-limit outcomes."""

    def __init__(self, registry: CollectorRegistry, child: Children | None = None) -> None:
        self._child = child if child is not None else Children()
        self.requests = Counter(
            "di_tenant_requests",
            "Requests per tenant and app (X-Title).",
            ("tenant", "app", "status"),
            registry=registry,
        )
        self.tokens = Counter(
            "di_tenant_tokens",
            "Tokens per tenant and app, as the backends report them.",
            ("tenant", "app", "kind"),
            registry=registry,
        )
        self.limited = Counter(
            "di_ratelimit_rejected",
            "Requests refused with 429, by tenant and limit.",
            ("tenant", "limit"),
            registry=registry,
        )
        self.bypassed = Counter(
            "di_ratelimit_bypass",
            "Limited requests served unchecked (the limit store was down).",
            registry=registry,
        )
        self._titles: set[str] = set()

    def observe(self, ctx: RequestContext, title: str | None, status: int) -> None:
        tenant = ctx.tenant or "anonymous"
        app = self._app(app_label(title))
        child = self._child
        child(self.requests, (tenant, app, str(status))).inc()
        usage = ctx.usage
        if usage is None:
            return
        for kind, count in (
            ("prompt", usage.prompt_tokens),
            ("completion", usage.completion_tokens),
            ("cached", usage.cached_tokens or 0),
        ):
            if count:
                child(self.tokens, (tenant, app, kind)).inc(count)

    def rejected(self, tenant: str, limit: str) -> None:
        self.limited.labels(tenant, limit).inc()

    def bypass(self) -> None:
        self.bypassed.inc()

    def _app(self, label: str) -> str:
        if not label or label in self._titles:
            return label
        if len(self._titles) >= MAX_TITLES:
            return "other"
        self._titles.add(label)
        return label


def app_label(title: str | None) -> str:
    """``X-Title`` as a metric label: cleaned and bounded."""
    if not title:
        return ""
    return _TITLE.sub("", title)[:64]
