"""What every proxy endpoint shares: reading the body, relaying JSON and SSE answers."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from router.context import RequestContext
from router.dispatch import Routed
from router.errors import (
    InvalidRequest,
    PayloadTooLarge,
    RequestTimeout,
    ServiceUnavailable,
    UnsupportedMediaType,
    UpstreamError,
)
from router.keys import BODY_PARSER, CONFIG, CONTEXT
from router.upstream import (
    MalformedStream,
    describe,
    iter_sse_events,
    model_field,
    read_body,
    rewrite_model,
    scrub,
)
from router.usage import note_body, note_event

log = logging.getLogger(__name__)

DONE = b"data: [DONE]"
# Request body encodings aiohttp decodes (br only with a brotli package installed).
_ENCODINGS = frozenset({"identity", "gzip", "x-gzip", "deflate"})
SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # tell nginx-style proxies not to buffer the stream
}


async def read_json(request: web.Request) -> tuple[dict[str, Any], bytes]:
    """The request's JSON object and its raw bytes, within the limits; 4xx otherwise."""
    content_type = request.headers.get("Content-Type", "application/json")
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, not {media or 'empty'!r}."
        )
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in _ENCODINGS:
        # aiohttp would pass an encoding it does not know through as if it were plain.
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding[:40]!r} is not supported; use gzip, deflate or none."
        )
    raw = await read_body_bytes(request)
    try:
        body, found = await request.app[BODY_PARSER].parse(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest(
            "We could not parse the JSON body of your request. Send a JSON object."
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    ctx = context(request)
    ctx.survey = found
    model = body.get("model")
    if isinstance(model, str):
        ctx.model = model
    return body, raw


async def read_body_bytes(request: web.Request) -> bytes:
    """The whole body within ``server.body_timeout`` and ``server.max_body_size``."""
    server = request.app[CONFIG].server
    encoded = request.headers.get("Content-Encoding", "identity").lower() != "identity"
    try:
        if not encoded and request.content.is_eof():
            # The whole body came with the headers (nearly every request): it is in memory
            # already, so there is nothing to wait for and no large-body slot to hold.
            return await request.read()
        return await _read_arriving(request, encoded)
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(
            f"The request body exceeds the limit of {server.max_body_size} bytes "
            "(server.max_body_size).",
            param=None,
        ) from None
    except RequestPayloadError as exc:
        # aiohttp wraps what the payload parser found: a bad Content-Encoding body, a broken
        # chunked encoding, a body cut short.
        raise InvalidRequest(f"The request body could not be read: {_cause(exc)}.") from None


async def _read_arriving(request: web.Request, encoded: bool) -> bytes:
    """A body still arriving (or compressed, and so of unknown size until decoded): read
    within the deadline, holding a large-body slot when it is large."""
    server = request.app[CONFIG].server
    slot = request.app[BODY_PARSER].slot(request.content_length, encoded)
    try:
        async with asyncio.timeout(server.body_timeout), slot:
            return await request.read()
    except TimeoutError:
        if not slot.held:
            raise ServiceUnavailable(
                "Too many large request bodies are being read "
                "(server.limits.max_large_bodies); retry shortly.",
                code="too_many_large_bodies",
            ) from None
        raise RequestTimeout(
            f"The request body did not arrive within {server.body_timeout:g} s "
            "(server.body_timeout)."
        ) from None


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__ or exc
    text = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    return text.rstrip(".")[:200]


def context(request: web.Request) -> RequestContext:
    return request[CONTEXT]


def where(routed: Routed) -> str:
    return describe(routed.replica)


async def relay_json(
    routed: Routed, ctx: RequestContext, client_model: str
) -> tuple[web.Response, bytes]:
    """The upstream's JSON answer with the client's model id; also returns the bytes sent."""
    data = await read_body(routed.response, where(routed), routed.body_limit)
    note_body(ctx, data)
    data = rewrite_model(data, model_field(client_model))
    # No headers from the context yet: request_middleware adds them once the handler is done
    # (with what it learned after this point, such as a stored completion's X-DI-Store).
    response = web.Response(body=data, content_type="application/json")
    ctx.first_byte()  # the whole answer is in hand and goes out at once
    return response, data


def chat_stream_end(event: bytes) -> bool:
    """Chat and legacy completion streams end with ``data: [DONE]``."""
    return event.startswith((b"data: [DONE]", b"data:[DONE]"))


_RESPONSE_END = re.compile(rb'response\.(?:completed|failed|incomplete)"?\s*(?:$|\n|,)')


def responses_stream_end(event: bytes) -> bool:
    """Responses API streams end with a terminal typed event and no ``[DONE]``."""
    return _RESPONSE_END.search(event, 0, 256) is not None or chat_stream_end(event)


async def open_stream(request: web.Request, ctx: RequestContext) -> web.StreamResponse:
    """Send the SSE headers; from here on errors must travel inside the stream."""
    response = web.StreamResponse(headers={**ctx.headers, **SSE_HEADERS})
    await response.prepare(request)
    ctx.stream = response
    return response


async def relay_sse(
    request: web.Request,
    routed: Routed,
    ctx: RequestContext,
    client_model: str,
    on_event: Callable[[bytes], None] | None = None,
    *,
    ends: Callable[[bytes], bool] = chat_stream_end,
) -> web.StreamResponse:
    """Stream the upstream's SSE events through as they come, each with the client's model id.

    A stream that breaks or ends before its final event (``ends``) is closed with an
    OpenAI-shaped error event and ``[DONE]``, so the client sees a failure rather than a
    silently short answer. A client that goes away ends the relay; the caller's context closes
    the upstream connection. ``on_event`` sees each data event (to keep a copy of the answer).

    The client's headers wait for the upstream's first events: an answer that is not an event
    stream at all (another content type, lines that are not SSE) is then still a plain 502.
    """
    upstream = iter_sse_events(routed.response)
    first = await _first_events(routed, upstream)
    response = await open_stream(request, ctx)
    field = model_field(client_model)
    done = failed = False
    events: list[bytes] | None = first
    try:
        # anext rather than `async for` over a generator chaining `first` to the rest: one
        # async generator less to pass through per batch of events.
        while events is not None:
            out = []
            for event in events:
                if ends(event):
                    done = True
                elif event.startswith((b'data: {"error"', b'data:{"error"')):
                    failed = True
                    # Its text may quote the replica's URL or key, like an error status's body.
                    event = scrub(event.decode("utf-8", "replace"), routed.replica).encode()
                note_event(ctx, event)
                if on_event is not None:
                    on_event(event)
                out.append(rewrite_model(event, field))
            if not await write_or_gone(response, b"\n\n".join(out) + b"\n\n", ctx):
                return response
            events = await anext(upstream, None)
    except (aiohttp.ClientError, TimeoutError) as exc:
        # Only the upstream side raises here: writes to the client are guarded apart.
        routed.broken = True
        if isinstance(exc, MalformedStream):
            message, code = f"The {where(routed)}: {exc}.", "upstream_bad_response"
        else:
            message = f"The {where(routed)} broke off the stream ({type(exc).__name__})."
            code = "upstream_error"
        await write_error_tail(response, ctx, message, code)
        return response
    if not done:
        routed.broken = True
        if failed:
            ctx.error = "the backend reported an error mid-stream"
            await write_error_tail(response, ctx, None, None)
        else:
            message = f"The {where(routed)} ended the stream early."
            await write_error_tail(response, ctx, message, "upstream_error")
    return response


async def _first_events(routed: Routed, upstream: AsyncIterator[list[bytes]]) -> list[bytes]:
    """The stream's first batch of events, or a 502 if what came is not an event stream."""
    media = routed.response.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if media != "text/event-stream":
        routed.response.close()
        raise UpstreamError(
            f"The {where(routed)} answered a streaming request with {media or 'no'!r} content "
            "instead of an event stream.",
            code="upstream_bad_response",
        )
    try:
        first = await anext(upstream, None)
    except MalformedStream as exc:
        raise UpstreamError(f"The {where(routed)}: {exc}.", code="upstream_bad_response") from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise UpstreamError(
            f"The {where(routed)} broke off the stream ({type(exc).__name__})."
        ) from None
    if first is None:
        raise UpstreamError(
            f"The {where(routed)} ended the stream before any event.",
            code="upstream_bad_response",
        )
    return first


async def write_or_gone(response: web.StreamResponse, data: bytes, ctx: RequestContext) -> bool:
    """Write to the client; False when it has gone away (the caller stops relaying)."""
    try:
        await response.write(data)
        ctx.first_byte()
    except ConnectionResetError:
        log.info("request %s: client went away mid-stream", ctx.request_id)
        ctx.client_gone = True
        return False
    return True


async def write_error_tail(
    response: web.StreamResponse, ctx: RequestContext, message: str | None, code: str | None
) -> None:
    """End a started stream with an error event (when ``message``) and ``[DONE]``.

    On the Anthropic surface the event is ``event: error`` in its envelope, and there is no
    ``[DONE]`` (Messages streams end with their last event).
    """
    if ctx.surface == "anthropic":
        if message is not None:
            ctx.error = message
            log.warning("request %s: %s", ctx.request_id, message)
            body = UpstreamError(message, code=code).render("anthropic")
            await write_or_gone(response, b"event: error\ndata: " + body + b"\n\n", ctx)
        return
    tail = b""
    if message is not None:
        ctx.error = message
        log.warning("request %s: %s", ctx.request_id, message.replace("\n", "\\n"))
        error = UpstreamError(message, code=code)
        tail = b"data: " + error.body() + b"\n\n"
    await write_or_gone(response, tail + DONE + b"\n\n", ctx)
