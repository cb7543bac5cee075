"""Token usage: read from what the backend reports, and counted per tenant for ``/metrics``.

Usage comes from the backend's own ``usage`` object (chat and legacy completions, the
``include_usage`` chunk of a stream, a Responses object). A stream without usage is estimated:
its prompt at 4 bytes a token of the request body, its completion at one token per data event
(vLLM and SGLang send about one token per chunk). The per-tenant counters are kept apart from
``metrics.py`` (issue 12 owns it) and rendered in the Prometheus text format beside it.
"""

from __future__ import annotations

import re
from collections import Counter

from router.context import RequestContext

_TITLE = re.compile(r"[^\w .:/@-]")
MAX_TITLES = 100  # distinct X-Title labels per process; more become "other" (cardinality)


_FIGURE = re.compile(
    rb'"(prompt_tokens|completion_tokens|input_tokens|output_tokens|cached_tokens)"\s*:\s*(\d+)'
)
_USAGE_SPAN = 1024  # a usage object with its details fits well within this


def note_body(ctx: RequestContext, data: bytes) -> None:
    """Usage from a whole JSON answer, read from its ``usage`` object alone (no full parse).

    A ``"usage"`` key can only be the key itself: inside a JSON string its quotes are escaped.
    """
    at = data.rfind(b'"usage"')
    if at < 0 or data.startswith(b"null", _value_at(data, at)):
        return
    figures = {m[1]: int(m[2]) for m in _FIGURE.finditer(data, at, at + _USAGE_SPAN)}
    if not figures:
        return
    ctx.prompt_tokens = figures.get(b"prompt_tokens", figures.get(b"input_tokens", 0))
    ctx.completion_tokens = figures.get(b"completion_tokens", figures.get(b"output_tokens", 0))
    ctx.cached_tokens = figures.get(b"cached_tokens")  # None: the backend reports none
    ctx.usage_reported = True


def note_event(ctx: RequestContext, event: bytes) -> None:
    """Count a relayed SSE data event; read its usage when it carries one."""
    if not event.startswith(b"data:"):
        return
    ctx.streamed_events += 1
    note_body(ctx, event)


def _value_at(data: bytes, at: int) -> int:
    colon = data.find(b":", at + 7)
    if colon < 0:
        return len(data)
    rest = data[colon + 1 : colon + 8].lstrip()
    return colon + 1 + (len(data[colon + 1 : colon + 8]) - len(rest))


def tokens_used(ctx: RequestContext, body_size: int) -> int:
    """What a request cost, for token limits: reported, else estimated."""
    if ctx.usage_reported:
        return ctx.prompt_tokens + ctx.completion_tokens
    if not ctx.upstream_ms:
        return 0  # never reached a backend
    return body_size // 4 + ctx.streamed_events


def app_label(title: str | None) -> str:
    """``X-Title`` as a metric label: cleaned and bounded."""
    if not title:
        return ""
    return _TITLE.sub("", title)[:64]


class TenantCounters:
    """Requests and tokens per tenant (and app, from ``X-Title``); rate-limit outcomes."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str, str]] = Counter()
        self.tokens: Counter[tuple[str, str, str]] = Counter()
        self.limited: Counter[tuple[str, str]] = Counter()
        self.bypassed = 0
        self._titles: set[str] = set()

    def observe(self, ctx: RequestContext, title: str | None, status: int) -> None:
        tenant = ctx.tenant or "anonymous"
        app = self._app(app_label(title))
        self.requests[(tenant, app, str(status))] += 1
        for kind, count in (
            ("prompt", ctx.prompt_tokens),
            ("completion", ctx.completion_tokens),
            ("cached", ctx.cached_tokens or 0),
        ):
            if count:
                self.tokens[(tenant, app, kind)] += count

    def rejected(self, tenant: str, limit: str) -> None:
        self.limited[(tenant, limit)] += 1

    def _app(self, label: str) -> str:
        if not label or label in self._titles:
            return label
        if len(self._titles) >= MAX_TITLES:
            return "other"
        self._titles.add(label)
        return label

    def render(self) -> str:
        requests = {
            f'tenant="{_esc(tenant)}",app="{_esc(app)}",status="{status}"': n
            for (tenant, app, status), n in sorted(self.requests.items())
        }
        tokens = {
            f'tenant="{_esc(tenant)}",app="{_esc(app)}",kind="{kind}"': n
            for (tenant, app, kind), n in sorted(self.tokens.items())
        }
        limited = {
            f'tenant="{_esc(tenant)}",limit="{limit}"': n
            for (tenant, limit), n in sorted(self.limited.items())
        }
        lines = [
            *_counter(
                "di_tenant_requests_total", "Requests per tenant and app (X-Title).", requests
            ),
            *_counter(
                "di_tenant_tokens_total",
                "Tokens per tenant and app, as the backends report.",
                tokens,
            ),
            *_counter(
                "di_ratelimit_rejected_total",
                "Requests refused with 429, by tenant and limit.",
                limited,
            ),
            *_counter(
                "di_ratelimit_bypass_total",
                "Limited requests served unchecked (Redis down).",
                {"": self.bypassed},
            ),
        ]
        return "\n".join(lines) + "\n"


def _counter(name: str, help_text: str, samples: dict[str, int]) -> list[str]:
    """One counter family in the Prometheus text format; ``samples`` maps labels to values."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
    for labels, value in samples.items():
        lines.append(f"{name}{{{labels}}} {value}" if labels else f"{name} {value}")
    return lines


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
