"""Logging setup and the per-request access line, as text or as one JSON object a line.

The access line (logger ``router.access``, level INFO) carries what the router learned about
the request from its ``RequestContext``: ids, where it went, how it ended, its times and the
backend's token counts. Never the prompt or the answer, and never a replica's URL or a key.
With ``--log-format json`` every log line, access or not, is a JSON object, ready for Loki,
Elasticsearch or CloudWatch without a parsing rule.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from router.context import RequestContext
from router.edge import loggable

ACCESS = logging.getLogger("router.access")
LogFormat = Literal["text", "json"]
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# LogRecord's own attributes: anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and the ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


@dataclass(frozen=True, slots=True)
class LogSettings:
    """How a process logs; handed to worker processes so they log alike."""

    level: str = "info"
    format: LogFormat = "text"

    def apply(self) -> None:
        configure_logging(self.level, self.format)


def configure_logging(level: str, log_format: LogFormat = "text") -> None:
    """Root logging for the CLI: ``level`` (debug, info, ...) in the given format.

    Like ``logging.basicConfig``, a root logger that already has handlers (an embedding
    application's, a test runner's) is left as it is.
    """
    root = logging.getLogger()
    if root.handlers:
        return
    root.setLevel(level.upper())
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(_TEXT_FORMAT)
    )
    root.addHandler(handler)


def access_fields(
    ctx: RequestContext, method: str, path: str, status: int, duration_ms: float
) -> dict[str, Any]:
    """The access line's fields; ``None`` where the request never got that far."""
    usage = ctx.usage
    return {
        "request_id": ctx.request_id,
        "tenant": getattr(ctx, "tenant", None),  # set by tenancy, when configured
        "method": method,
        "path": path,
        "status": status,
        "type": ctx.request_type,
        "backend": ctx.backend,
        "replica": ctx.replica,
        "cache": ctx.cache,
        "ttft_ms": None if ctx.ttft_ms is None else round(ctx.ttft_ms, 2),
        "duration_ms": round(duration_ms, 2),
        "router_ms": round(ctx.router_ms, 3) if ctx.upstream_ms else None,
        "upstream_ms": round(ctx.upstream_ms, 2) if ctx.upstream_ms else None,
        "prompt_tokens": usage.prompt_tokens if usage else None,
        "completion_tokens": usage.completion_tokens if usage else None,
        "cached_tokens": usage.cached_tokens if usage else None,
    }


def log_access(
    ctx: RequestContext, method: str, raw_path: str, status: int, duration_ms: float
) -> None:
    """The access line; ``raw_path`` as the client sent it (escaped here, when logged)."""
    if not ACCESS.isEnabledFor(logging.INFO):
        return
    path = loggable(raw_path)
    fields = access_fields(ctx, method, path, status, duration_ms)
    ACCESS.info(
        "%s %s %s %d type=%s backend=%s replica=%s cache=%s ttft=%s %.1fms tokens=%s/%s/%s",
        ctx.request_id,
        method,
        path,
        status,
        fields["type"],
        fields["backend"],
        fields["replica"],
        fields["cache"],
        "-" if fields["ttft_ms"] is None else f"{fields['ttft_ms']:.1f}ms",
        duration_ms,
        fields["prompt_tokens"],
        fields["completion_tokens"],
        fields["cached_tokens"],
        extra=fields,
    )


def _iso(created: float) -> str:
    millis = int(created * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{millis:03d}Z"
