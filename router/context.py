"""What the router learns about one request as it passes through, and the headers that say so."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiohttp import web

EXPOSED_HEADERS = (
    "X-DI-Request-Type",
    "X-DI-Backend",
    "X-DI-Replica",
    "X-DI-Cache",
    "X-Request-Id",
    "Server-Timing",
)


@dataclass(slots=True)
class RequestContext:
    request_id: str
    # Response headers known so far; every response of this request carries them, errors too.
    headers: dict[str, str]
    started: float = field(default_factory=time.perf_counter)
    router_ms: float = 0.0  # the router's own work before the upstream call
    upstream_ms: float = 0.0  # upstream call until its response headers
    stream: web.StreamResponse | None = None  # set once SSE headers are sent

    @classmethod
    def start(cls, request_id: str, base_headers: dict[str, str]) -> RequestContext:
        """A context whose headers begin with ``base_headers`` (CORS) and the request id."""
        return cls(request_id, {**base_headers, "X-Request-Id": request_id})

    def server_timing(self) -> str:
        return f"router;dur={self.router_ms:.2f}, upstream;dur={self.upstream_ms:.2f}"
