"""Request counters in the Prometheus text format, served at ``GET /metrics``.

Plain in-process counters: cheap enough for the hot path (a dict update per request) and enough
for an operator to see traffic per type, backend, replica and cache outcome.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

_LABELS = ("endpoint", "type", "backend", "replica", "cache", "status")


class Metrics:
    def __init__(self) -> None:
        self.requests: Counter[tuple[str, ...]] = Counter()
        self.router_seconds = 0.0
        self.upstream_seconds = 0.0
        self.timed = 0

    def observe(self, labels: tuple[str, ...], router_ms: float, upstream_ms: float) -> None:
        self.requests[labels] += 1
        if upstream_ms:
            self.router_seconds += router_ms / 1000
            self.upstream_seconds += upstream_ms / 1000
            self.timed += 1

    def render(self, in_flight: Iterable[tuple[str, str, int]]) -> str:
        lines = [
            "# HELP di_requests_total Requests answered, by outcome.",
            "# TYPE di_requests_total counter",
        ]
        for labels, count in sorted(self.requests.items()):
            pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in zip(_LABELS, labels, strict=True))
            lines.append(f"di_requests_total{{{pairs}}} {count}")
        lines += [
            "# HELP di_router_seconds Router time before the upstream call (sum over requests).",
            "# TYPE di_router_seconds summary",
            f"di_router_seconds_sum {self.router_seconds:.6f}",
            f"di_router_seconds_count {self.timed}",
            "# HELP di_upstream_header_seconds Upstream time to response headers.",
            "# TYPE di_upstream_header_seconds summary",
            f"di_upstream_header_seconds_sum {self.upstream_seconds:.6f}",
            f"di_upstream_header_seconds_count {self.timed}",
            "# HELP di_in_flight Requests in flight per replica.",
            "# TYPE di_in_flight gauge",
        ]
        for backend, replica, count in in_flight:
            lines.append(
                f'di_in_flight{{backend="{_escape(backend)}",replica="{_escape(replica)}"}} {count}'
            )
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
