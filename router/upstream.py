"""The one place that talks HTTP to backends.

``send`` opens a request to one replica and returns the live response once its headers are in;
an error status is read, and raised as ``UpstreamError`` carrying the backend's own status and
message (never its URL or key). ``relay_sse`` frames an upstream event stream into whole events
and rewrites the ``model`` field so the client sees the id it asked for.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from router.balancer import Replica
from router.config import UpstreamPoolConfig
from router.errors import UpstreamError, UpstreamTimeout

_MAX_ERROR_BODY = 64 << 10
_MAX_EVENT = 16 << 20  # one SSE event larger than this is a broken upstream, not an answer
# Upstream headers a client needs to act on an error (the SDK honours Retry-After on 429).
_ERROR_HEADERS = ("Retry-After", "retry-after-ms")
# The top-level "model" key of a JSON object; an escaped key inside a string cannot match.
_MODEL_FIELD = re.compile(rb'"model"\s*:\s*"(?:[^"\\]|\\.)*"')


class Unreachable(UpstreamError):
    """The replica could not be connected to: safe to retry elsewhere, nothing was sent."""


def new_session(pool: UpstreamPoolConfig) -> aiohttp.ClientSession:
    """The process's one upstream session: explicit limits, no total timeout (LLM answers are
    long); per-request connect and read timeouts come from each backend's config."""
    connector = aiohttp.TCPConnector(
        limit=pool.connection_limit,
        limit_per_host=pool.connection_limit_per_host,
        keepalive_timeout=30,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300),
        json_serialize=lambda obj: orjson.dumps(obj).decode(),
        auto_decompress=True,
        skip_auto_headers=("User-Agent",),
    )


async def send(
    session: aiohttp.ClientSession,
    replica: Replica,
    path: str,
    body: bytes,
    headers: dict[str, str],
) -> aiohttp.ClientResponse:
    """POST ``body`` to ``replica``; return the response with a success status, headers read."""
    try:
        response = await session.post(
            replica.url + path,
            data=body,
            headers={**replica.headers, **headers},
            timeout=replica.timeout,
        )
    except (
        aiohttp.ClientConnectorError,
        aiohttp.ConnectionTimeoutError,
        aiohttp.ClientConnectionResetError,
        # A pooled keep-alive connection the server had already closed: nothing was processed.
        aiohttp.ServerDisconnectedError,
    ) as exc:
        raise Unreachable(f"The {describe(replica)} is unreachable ({_reason(exc)}).") from None
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise UpstreamTimeout(f"The {describe(replica)} did not answer in time.") from None
    except aiohttp.ClientError as exc:
        raise UpstreamError(f"The {describe(replica)} failed: {_reason(exc)}.") from None
    if response.status >= 400:
        async with response:
            raise await _status_error(response, describe(replica))
    return response


def describe(replica: Replica) -> str:
    """How errors name a replica: by ids, never by URL."""
    return f"backend {replica.backend.name!r} replica {replica.id!r}"


async def read_body(response: aiohttp.ClientResponse, where: str) -> bytes:
    """The whole body of a non-streaming answer, with read failures mapped to 502/504."""
    try:
        async with response:
            return await response.read()
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise UpstreamTimeout(f"The {where} stopped answering.") from None
    except aiohttp.ClientError as exc:
        raise UpstreamError(f"The {where} broke off its answer ({_reason(exc)}).") from None


def rewrite_model(data: bytes, model_field: bytes) -> bytes:
    """Replace the first ``"model": "..."`` in a JSON document with ``model_field``."""
    return _MODEL_FIELD.sub(lambda _: model_field, data, count=1)


def model_field(model: str) -> bytes:
    return b'"model":' + orjson.dumps(model)


async def iter_sse_events(response: aiohttp.ClientResponse) -> AsyncIterator[list[bytes]]:
    """Whole SSE events (without their blank-line terminator), in batches as bytes arrive.

    Raises the transport's exceptions (``aiohttp.ClientError``, ``TimeoutError``) as they come;
    the caller decides what a broken stream means to its client.
    """
    buffer = b""
    async for data in response.content.iter_any():
        buffer += data
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        if b"\n\n" not in buffer:
            if len(buffer) > _MAX_EVENT:
                raise aiohttp.ClientPayloadError("an SSE event exceeded 16 MiB")
            continue
        *events, buffer = buffer.split(b"\n\n")
        yield [e for e in events if e]
    # The body ended without a blank line: pass the last event on only if it is whole (a
    # final "data: [DONE]" often is); half an event would only break the client's parser.
    tail = buffer.strip()
    if tail and _is_whole_event(tail):
        yield [tail]


def _is_whole_event(event: bytes) -> bool:
    data = event.rpartition(b"data:")[2].strip()
    if data == b"[DONE]":
        return True
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


async def _status_error(response: aiohttp.ClientResponse, where: str) -> UpstreamError:
    try:
        raw = await asyncio.wait_for(_read_capped(response, _MAX_ERROR_BODY), timeout=5)
    except (TimeoutError, aiohttp.ClientError):
        raw = b""
    message, error_type, param, code = _parse_error(raw)
    if response.status in (401, 403):
        # The backend refused the router's own upstream key: not the client's fault, and its
        # message may quote part of that key.
        return UpstreamError(
            f"The {where} refused the router's upstream credentials (HTTP {response.status}).",
            code="upstream_auth_failed",
        )
    if not message:
        message = f"The {where} answered HTTP {response.status}."
    error = UpstreamError(
        message,
        upstream_status=response.status,
        error_type=error_type,
        param=param,
        code=code,
    )
    error.headers = {h: response.headers[h] for h in _ERROR_HEADERS if h in response.headers}
    return error


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """Up to ``limit`` bytes of the body, however many reads it arrives in."""
    parts: list[bytes] = []
    size = 0
    while size < limit:
        part = await response.content.read(limit - size)
        if not part:
            break
        parts.append(part)
        size += len(part)
    return b"".join(parts)


def _parse_error(raw: bytes) -> tuple[str, str | None, str | None, str | None]:
    """Pull message/type/param/code from the error shapes servers use (OpenAI, vLLM, FastAPI)."""
    try:
        data: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "", None, None, None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        err = data["error"]
        code = err.get("code")
        return (
            str(err.get("message") or ""),
            _str_or_none(err.get("type")),
            _str_or_none(err.get("param")),
            None if code is None else str(code),
        )
    if isinstance(data, dict):
        for field in ("message", "detail", "error"):
            if isinstance(data.get(field), str):
                return data[field], None, None, None
    return "", None, None, None


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _reason(exc: BaseException) -> str:
    # aiohttp's messages name host and port; keep only the OS reason.
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, OSError) and os_error.errno:
        return os.strerror(os_error.errno).lower()
    return type(exc).__name__
