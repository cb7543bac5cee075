"""What every proxy endpoint shares: reading the body, relaying JSON and SSE answers."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from router.context import RequestContext
from router.dispatch import Routed
from router.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType, UpstreamError
from router.keys import CONFIG, CONTEXT
from router.placement import cached_tokens_in
from router.upstream import (
    MalformedStream,
    describe,
    iter_sse_events,
    model_field,
    read_body,
    rewrite_model,
)
from router.usage import usage_from_bytes

log = logging.getLogger(__name__)

DONE = b"data: [DONE]"
SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # tell nginx-style proxies not to buffer the stream
}


async def read_json(request: web.Request) -> tuple[dict[str, Any], bytes]:
    """The request's JSON object and its raw bytes; 415, 413 or 400 otherwise."""
    content_type = request.headers.get("Content-Type", "application/json")
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, not {media or 'empty'!r}."
        )
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[CONFIG].server.max_body_size
        raise PayloadTooLarge(
            f"The request body exceeds the limit of {limit} bytes.", param=None
        ) from None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest(
            "We could not parse the JSON body of your request. Send a JSON object."
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = body.get("model")
    if isinstance(model, str):
        context(request).model = model
    return body, raw


def context(request: web.Request) -> RequestContext:
    return request[CONTEXT]


def where(routed: Routed) -> str:
    return describe(routed.replica)


async def relay_json(
    routed: Routed, ctx: RequestContext, client_model: str
) -> tuple[web.Response, bytes]:
    """The upstream's JSON answer with the client's model id; also returns the bytes sent."""
    data = await read_body(routed.response, where(routed), routed.body_limit)
    routed.cached_tokens = cached_tokens_in(data)
    data = rewrite_model(data, model_field(client_model))
    ctx.usage = usage_from_bytes(data)
    response = web.Response(body=data, content_type="application/json", headers=ctx.headers)
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
    seen = _Seen(ends)
    try:
        async for events in _chain(first, upstream):
            out = []
            for event in events:
                if (cached := seen.event(event)) is not None:
                    routed.cached_tokens = cached
                if on_event is not None:
                    on_event(event)
                out.append(rewrite_model(event, field))
            if not await write_or_gone(response, b"\n\n".join(out) + b"\n\n", ctx):
                return response
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
    ctx.usage = usage_from_bytes(seen.last) if seen.last else None
    if not seen.done:
        routed.broken = True
        if seen.failed:
            ctx.error = "the backend reported an error mid-stream"
            await write_error_tail(response, ctx, None, None)
        else:
            message = f"The {where(routed)} ended the stream early."
            await write_error_tail(response, ctx, message, "upstream_error")
    return response


class _Seen:
    """What the relay learns from the events it passes: the end, an error, the last event."""

    __slots__ = ("done", "ends", "failed", "last")

    def __init__(self, ends: Callable[[bytes], bool]) -> None:
        self.ends = ends
        self.done = self.failed = False
        self.last = b""  # the last data event: where include_usage (or a terminal event) puts usage

    def event(self, event: bytes) -> int | None:
        """Note ``event``; return the cached-token count it reports, if any."""
        if self.ends(event):
            self.done = True
            if not event.startswith((b"data: [DONE]", b"data:[DONE]")):
                self.last = event  # a terminal typed event carries the usage itself
        elif event.startswith((b'data: {"error"', b'data:{"error"')):
            self.failed = True
        else:
            self.last = event
            return cached_tokens_in(event)
        return None


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


async def _chain(
    first: list[bytes], rest: AsyncIterator[list[bytes]]
) -> AsyncIterator[list[bytes]]:
    yield first
    async for events in rest:
        yield events


async def write_or_gone(response: web.StreamResponse, data: bytes, ctx: RequestContext) -> bool:
    """Write to the client; False when it has gone away (the caller stops relaying)."""
    try:
        await response.write(data)
        ctx.first_byte()
    except ConnectionResetError:
        log.info("request %s: client went away mid-stream", ctx.request_id)
        return False
    return True


async def write_error_tail(
    response: web.StreamResponse, ctx: RequestContext, message: str | None, code: str | None
) -> None:
    """End a started stream with an OpenAI error event (when ``message``) and ``[DONE]``."""
    tail = b""
    if message is not None:
        ctx.error = message
        log.warning("request %s: %s", ctx.request_id, message)
        error = UpstreamError(message, code=code)
        tail = b"data: " + error.body() + b"\n\n"
    await write_or_gone(response, tail + DONE + b"\n\n", ctx)
