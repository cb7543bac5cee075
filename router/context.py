"""What the router learns about one request as it passes through, and the headers that say so.

Everything is kept in typed fields as it is learned; the response headers are derived from
them in one place (``response_headers``), so metrics, logs and traces read the same fields
instead of parsing a header dict back.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from router.survey import Survey
from router.usage import Usage

if TYPE_CHECKING:
    from router.ratelimit import Verdict

EXPOSED_HEADERS = (
    "X-DI-Request-Type",
    "X-DI-Backend",
    "X-DI-Replica",
    "X-DI-Cache",
    "X-DI-Effort",
    "X-DI-Prefix-Tokens",
    "X-DI-Attempts",
    "X-DI-Fallback",
    "X-Request-Id",
    "Server-Timing",
    "X-DI-Tenant",
    "X-DI-RateLimit",
    "X-DI-Store",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "Retry-After",
    "request-id",
)


@dataclass(slots=True)
class RequestContext:
    request_id: str
    base_headers: dict[str, str]  # CORS, built once per app; none without an Origin
    started: float = field(default_factory=time.perf_counter)
    request_type: str | None = None  # classify's verdict
    backend: str | None = None  # the pool that serves (or was meant to serve) the request
    replica: str | None = None  # the replica id the request was sent to
    cache: str | None = None  # hit | miss | none | bypass
    prefix_tokens: int | None = None  # estimated tokens of the matched prefix (0: none held)
    effort: str | None = None  # the effort level applied (router/effort.py), if any was asked
    # Which API family the path belongs to: its errors use that family's envelope.
    surface: str = "openai"  # openai | anthropic
    router_ms: float = 0.0  # the router's own work before the upstream call
    upstream_ms: float = 0.0  # upstream call until its response headers
    attempts: int = 0  # upstream attempts made (retries and fallback pools included)
    fallback: str | None = None  # the answering pool, when it is not the route's first
    # The key's holder; None when no keys are configured (one anonymous tenant).
    tenant: str | None = None
    allowed_types: frozenset[str] | None = None  # None: every type
    allowed_backends: frozenset[str] | None = None  # None: every backend
    # The per-key limit check under way (governance); dispatch awaits it before sending.
    admission: asyncio.Future[None] | None = None
    streamed_events: int = 0  # data events relayed: the token estimate when no usage came
    client_gone: bool = False  # the client went away mid-stream
    stored: str | None = None  # store: true outcome, "stored" | "failed"
    # The key's rate-limit decision (its buckets become OpenAI's x-ratelimit-* headers).
    rate_limit: Verdict | None = None
    stream: web.StreamResponse | None = None  # set once SSE headers are sent
    # What operations (metrics, access log, traces) read; never parsed back from headers.
    model: str | None = None  # the model id the client asked for
    # The body parser's survey of the request's messages (router.survey): validation,
    # classification and the marker search read only the turns it did not find plain.
    survey: Survey | None = None
    ttft_ms: float | None = None  # until the first body byte was handed to the client
    usage: Usage | None = None  # the backend's own token counts, when it reported them
    error: str | None = None  # what went wrong, for the dashboard's recent errors (no secrets)
    trace_headers: dict[str, str] = field(default_factory=dict)  # traceparent, sent upstream
    span: object | None = None  # the request's trace span, when tracing is on
    retried: list[tuple[str, str]] = field(default_factory=list)  # (backend, why) per retry

    @classmethod
    def start(cls, request_id: str, base_headers: dict[str, str]) -> RequestContext:
        """A context whose headers begin with ``base_headers`` (CORS) and the request id."""
        return cls(request_id, base_headers)

    def first_byte(self) -> None:
        """Mark the first body byte relayed to the client (time to first token, as seen)."""
        if self.ttft_ms is None:
            self.ttft_ms = (time.perf_counter() - self.started) * 1000

    def upstream_headers(self) -> dict[str, str]:
        """Headers every upstream call carries: the request id and the trace context."""
        if self.trace_headers:
            return {"X-Request-Id": self.request_id, **self.trace_headers}
        return {"X-Request-Id": self.request_id}

    def server_timing(self) -> str:
        return f"router;dur={self.router_ms:.2f}, upstream;dur={self.upstream_ms:.2f}"

    @property
    def headers(self) -> dict[str, str]:
        """The response headers for what is known so far (errors carry them too)."""
        headers = {**self.base_headers, "X-Request-Id": self.request_id}
        if self.surface == "anthropic":
            headers["request-id"] = self.request_id  # where Anthropic's SDKs read it
        if self.request_type is not None:
            headers["X-DI-Request-Type"] = self.request_type
        if self.backend is not None:
            self._routing_headers(headers)
        if self.effort is not None:
            headers["X-DI-Effort"] = self.effort
        if self.tenant is not None:
            headers["X-DI-Tenant"] = self.tenant
        if self.stored is not None:
            headers["X-DI-Store"] = self.stored
        if self.upstream_ms:
            headers["Server-Timing"] = self.server_timing()
        if self.rate_limit is not None:
            headers.update(self.rate_limit.headers)
        return headers

    def _routing_headers(self, headers: dict[str, str]) -> None:
        """Pool, replica, cache outcome and attempts: known once a pool was chosen."""
        assert self.backend is not None
        headers["X-DI-Backend"] = self.backend
        headers["X-DI-Attempts"] = str(self.attempts)
        if self.replica is not None:
            headers["X-DI-Replica"] = self.replica
        if self.cache is not None:
            headers["X-DI-Cache"] = self.cache
            if self.cache != "none" and self.prefix_tokens is not None:
                headers["X-DI-Prefix-Tokens"] = str(self.prefix_tokens)
        if self.fallback is not None:
            headers["X-DI-Fallback"] = self.fallback
