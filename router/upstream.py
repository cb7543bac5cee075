"""The one place that talks HTTP to backends.

``send`` opens a request to one replica and returns the live response once its headers are in;
an error status is read, and raised as ``UpstreamError`` carrying the backend's own status and
message (scrubbed of the replica's URL, host and key). ``iter_sse_events`` frames an upstream
event stream into whole events; ``read_body`` reads a JSON answer, capped in size.

What the upstream is not trusted with: redirects are not followed (a 3xx is a 502: following
one would re-POST the whole prompt, key included, to another address); a 200 whose body is not
a JSON object, or an event stream with lines that are not SSE fields, is a 502 rather than a
success; a body larger than ``upstream.max_body_size`` is a 502.

How an attempt failed decides whether it may be repeated elsewhere (``router/retry.py``):
``Unreachable`` (nothing was processed: no connection, or a pooled keep-alive connection the
server had already closed) and ``UpstreamTimeout`` from ``send`` may; ``Disconnected`` (a new
connection dropped after the request went out: the replica may be generating) may not.
"""

from __future__ import annotations

import asyncio
import os
import re
import weakref
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Any
from urllib.parse import SplitResult, urlsplit

import aiohttp
import orjson
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection
from aiohttp.tracing import Trace

from router.balancer import Replica
from router.config import UpstreamPoolConfig
from router.errors import UpstreamError, UpstreamTimeout

_MAX_ERROR_BODY = 64 << 10
_MAX_MESSAGE = 2000  # characters of an upstream error message passed on
DEFAULT_MAX_BODY = 64 << 20
# The lines an event stream may hold (https://html.spec.whatwg.org/#event-stream-interpretation).
_SSE_FIELD_PREFIXES = (b"data:", b":", b"event:", b"id:", b"retry:")
_SSE_BARE_FIELDS = frozenset({b"data", b"event", b"id", b"retry"})
# Credentials an upstream may echo in an error text, whatever the replica.
_CREDENTIALS = re.compile(r"(?i)\bbearer\s+[^\s\"']+|\bsk-[\w-]{8,}")
_MAX_EVENT = 16 << 20  # one SSE event larger than this is a broken upstream, not an answer
# Upstream headers a client needs to act on an error (the SDK honours Retry-After on 429).
_ERROR_HEADERS = ("Retry-After", "retry-after-ms")
# The top-level "model" key of a JSON object, its value in group 1; an escaped key inside a
# string cannot match. The string's loop is unrolled: twice as fast as (?:[^"\\]|\\.)*.
_MODEL_FIELD = re.compile(rb'"model"\s*:\s*("[^"\\]*(?:\\.[^"\\]*)*")')
_MODEL_KEY = b'"model":'
# Whether the current task's latest upstream connection came from the pool (see Unreachable).
_reused: ContextVar[bool] = ContextVar("upstream_reused", default=False)


class Unreachable(UpstreamError):
    """The replica could not be connected to: safe to retry elsewhere, nothing was sent.

    ``stale`` marks a pooled keep-alive connection the server had closed while idle: the
    replica is fine, only the connection was old.
    """

    def __init__(self, message: str, *, stale: bool = False) -> None:
        super().__init__(message)
        self.stale = stale


class Disconnected(UpstreamError):
    """A fresh connection dropped after the request was sent: the replica may have started on
    it, so it is not repeated elsewhere (that could generate, and bill, twice)."""

    default_code = "upstream_disconnected"


class MalformedStream(aiohttp.ClientPayloadError):
    """An event stream carrying lines that are not SSE: whatever it is, it is not an answer.

    A transport-level error, so every stream reader treats it as a broken stream."""


class _PoolAwareConnector(aiohttp.TCPConnector):
    """Tells ``send`` whether its request went out on a reused keep-alive connection (see
    Unreachable), in ``_reused``. A trace config could tell as well, but its events (start,
    headers, chunks, end: an object and an await each) cost every request ~20 us."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._handed_out: weakref.WeakSet[ResponseHandler] = weakref.WeakSet()

    async def connect(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 (aiohttp's signature)
    ) -> Connection:
        connection = await super().connect(req, traces, timeout)
        protocol = connection.protocol
        reused = protocol in self._handed_out
        if not reused and protocol is not None:
            self._handed_out.add(protocol)
        # Set in the task that awaits the request (connect runs in it), so ``send`` reads
        # its own attempt's answer.
        _reused.set(reused)
        return connection


def new_session(pool: UpstreamPoolConfig) -> aiohttp.ClientSession:
    """The process's one upstream session: explicit limits, no total timeout (LLM answers are
    long); per-request connect and read timeouts come from each backend's config."""
    connector = _PoolAwareConnector(
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
    _reused.set(False)  # until the connector says otherwise for this attempt
    try:
        response = await session.post(
            replica.url + path,
            data=body,
            headers={**replica.headers, **headers},
            timeout=replica.timeout,
            allow_redirects=False,
        )
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        raise Unreachable(f"The {describe(replica)} is unreachable ({_reason(exc)}).") from None
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        # On a reused keep-alive connection this is the server having closed it while idle
        # (nothing was processed); on a new one, the request had gone out. Only these errors
        # come after a connection was made, so _reused is this attempt's.
        if _reused.get():
            raise Unreachable(
                f"The {describe(replica)} closed an idle connection.", stale=True
            ) from None
        raise Disconnected(
            f"The {describe(replica)} dropped the connection before answering ({_reason(exc)})."
        ) from None
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise UpstreamTimeout(f"The {describe(replica)} did not answer in time.") from None
    except aiohttp.ClientError as exc:
        raise UpstreamError(f"The {describe(replica)} failed: {_reason(exc)}.") from None
    if 300 <= response.status < 400:
        response.close()
        raise UpstreamError(
            f"The {describe(replica)} answered with a redirect (HTTP {response.status}), which "
            "the router does not follow; point the replica URL at the server itself.",
            code="upstream_redirect",
        )
    if response.status >= 400:
        async with response:
            raise await _status_error(response, replica)
    return response


def describe(replica: Replica) -> str:
    """How errors name a replica: by ids, never by URL."""
    return f"backend {replica.backend.name!r} replica {replica.id!r}"


async def read_body(
    response: aiohttp.ClientResponse, where: str, limit: int = DEFAULT_MAX_BODY
) -> bytes:
    """The whole JSON-object body of a non-streaming answer, at most ``limit`` bytes.

    Read failures map to 502/504; a body that is not a JSON object (empty, plain text, an HTML
    page from a proxy) or is over the limit is a 502, never relayed as a success.
    """
    try:
        async with response:
            if (response.content_length or 0) > limit:
                raise _too_large(where, limit)
            data = await _read_capped(response, limit + 1)
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise UpstreamTimeout(f"The {where} stopped answering.") from None
    except aiohttp.ClientError as exc:
        raise UpstreamError(f"The {where} broke off its answer ({_reason(exc)}).") from None
    if len(data) > limit:
        raise _too_large(where, limit)
    if not _is_json_object(data):
        raise UpstreamError(
            f"The {where} answered HTTP {response.status} with a body that is not a JSON object.",
            code="upstream_bad_response",
        )
    return data


def _too_large(where: str, limit: int) -> UpstreamError:
    return UpstreamError(
        f"The {where} answered with a body over the limit of {limit} bytes.",
        code="upstream_body_too_large",
    )


def _is_json_object(data: bytes) -> bool:
    if data.lstrip()[:1] != b"{":
        return False
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


def check_sse_event(event: bytes) -> None:
    """Raise ``MalformedStream`` unless every line of ``event`` is an SSE field or comment."""
    for line in event.split(b"\n"):
        if not line.startswith(_SSE_FIELD_PREFIXES) and line not in _SSE_BARE_FIELDS:
            raise MalformedStream("the upstream stream holds lines that are not server-sent events")


def rewrite_model(data: bytes, model_field: bytes) -> bytes:
    """Replace the first ``"model": "..."`` in a JSON document with ``model_field``; the
    document as is when it already names that model (the upstream echoes the client's id)."""
    at = data.find(b'"model"')
    if at < 0 or data.startswith(model_field, at):
        return data  # no model, or the compact echo: no pattern to run (once per SSE event)
    found = _MODEL_FIELD.search(data, at)
    if found is None or found.group(1) == model_field[len(_MODEL_KEY) :]:
        return data
    return data[: found.start()] + model_field + data[found.end() :]


def model_field(model: str) -> bytes:
    return _MODEL_KEY + orjson.dumps(model)


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
        events = [e.strip(b"\n") for e in events if e.strip(b"\n")]
        for event in events:
            check_sse_event(event)
        yield events
    # The body ended without a blank line: pass the last event on only if it is whole (a
    # final "data: [DONE]" often is); half an event would only break the client's parser.
    tail = buffer.strip()
    if tail:
        check_sse_event(tail)
        if _is_whole_event(tail):
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


async def _status_error(response: aiohttp.ClientResponse, replica: Replica) -> UpstreamError:
    where = describe(replica)
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
    message = scrub(message, replica)[:_MAX_MESSAGE]
    if not message:
        message = f"The {where} answered HTTP {response.status}."
    error = UpstreamError(
        message,
        upstream_status=response.status,
        error_type=scrub(error_type, replica) if error_type else None,
        param=scrub(param, replica) if param else None,
        code=scrub(code, replica) if code else None,
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


def scrub(text: str, replica: Replica) -> str:
    """``text`` without the replica's URL, origin, host:port, host name, port or upstream key
    (nor any run of ``KEY_FRAGMENT`` characters of the key, in any case: an error may quote
    it masked, cut or lower-cased), and without anything shaped like a bearer token or an
    OpenAI-style key: an upstream error message may quote them, and it is about to reach a
    client."""
    secrets = [replica.url]
    parts = urlsplit(replica.url)
    if parts.netloc:
        secrets += [f"{parts.scheme}://{parts.netloc}", parts.netloc]
    if parts.hostname:
        secrets.append(parts.hostname)
    key = replica.backend.api_key
    if key is not None:
        secrets.append(key.get_secret_value())
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "[redacted]")
    if key is not None:
        text = _without_fragments(text, key.get_secret_value())
    port = _port(parts)
    if port is not None:
        text = re.sub(rf"(?i)(:|%3a|\bport\W{{0,3}}){port}(?!\d)", r"\1[redacted]", text)
    return _CREDENTIALS.sub("[redacted]", text)


KEY_FRAGMENT = 8  # characters of the upstream key that are never passed on together


def _without_fragments(text: str, secret: str) -> str:
    """``text`` with every run of ``KEY_FRAGMENT`` or more characters of ``secret`` (in any
    case) replaced. Linear in ``text``: one set lookup per position."""
    least = KEY_FRAGMENT
    if len(secret) < least or len(text) < least:
        return text
    folded = secret.casefold()
    grams = {folded[i : i + least] for i in range(len(folded) - least + 1)}
    lower = text.casefold()
    if len(lower) != len(text):
        # A character whose folding is longer (ß, İ): fold the others one by one, so that
        # positions still match the text's.
        lower = "".join(c if len(f := c.casefold()) != 1 else f for c in text)
    covered = [False] * len(text)
    found = False
    for i in range(len(text) - least + 1):
        if lower[i : i + least] in grams:
            covered[i : i + least] = [True] * least
            found = True
    if not found:
        return text
    out: list[str] = []
    for i, char in enumerate(text):
        if not covered[i]:
            out.append(char)
        elif i == 0 or not covered[i - 1]:
            out.append("[redacted]")
    return "".join(out)


def _port(parts: SplitResult) -> int | None:
    try:
        return parts.port
    except ValueError:
        return None


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _reason(exc: BaseException) -> str:
    # aiohttp's messages name host and port; keep only the OS reason.
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, OSError) and os_error.errno:
        return os.strerror(os_error.errno).lower()
    return type(exc).__name__
