"""What the router learns about one request as it passes through, and the headers that say so."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

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
    started: float = field(default_factory=time.perf_counter)
    # Response headers known so far; every response of this request carries them, errors too.
    headers: dict[str, str] = field(default_factory=dict)
    router_ms: float = 0.0  # the router's own work before the upstream call
    upstream_ms: float = 0.0  # upstream call until its response headers

    def __post_init__(self) -> None:
        self.headers["X-Request-Id"] = self.request_id

    def server_timing(self) -> str:
        return f"router;dur={self.router_ms:.2f}, upstream;dur={self.upstream_ms:.2f}"
