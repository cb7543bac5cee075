"""Answers of a chat backend translated for another surface (Responses, Messages).

Both surfaces read a chat answer the same way: usage noted on the request's context, a body
that is not a chat completion is a 502, and a stream is parsed chunk by chunk into the
surface's own events. A stream that breaks, carries an error event or ends without ``[DONE]``
is closed with the surface's failure event and costs the replica (``routed.broken``), as a
passed-through stream does in ``relay_sse``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp
import orjson
from aiohttp import web

from router.context import RequestContext
from router.dispatch import Routed
from router.errors import UpstreamError
from router.handlers.common import open_stream, where, write_or_gone
from router.upstream import iter_sse_events, read_body, scrub
from router.usage import note_body, note_event

log = logging.getLogger(__name__)

# What a chunk that is not the chat stream it claims to be raises in a translator.
_NOT_CHAT = (ValueError, TypeError, KeyError, AttributeError)


class SurfaceEvents(Protocol):
    """A chat stream's translator: each call returns whole SSE frames to write."""

    def start(self) -> list[bytes]: ...

    def feed(self, chunk: dict[str, Any]) -> list[bytes]: ...

    def finish(self) -> list[bytes]: ...

    def fail(self, message: str) -> list[bytes]: ...


async def translate_answer(
    routed: Routed, ctx: RequestContext, translate: Callable[[Any], dict[str, Any]]
) -> dict[str, Any]:
    """A non-streaming chat answer, translated; a 502 when it is not a chat completion."""
    data = await read_body(routed.response, where(routed), routed.body_limit)
    note_body(ctx, data)
    try:
        return translate(orjson.loads(data))
    except _NOT_CHAT:
        raise UpstreamError(
            f"The {where(routed)} answered with something that is not a chat completion."
        ) from None


async def relay_translated(
    request: web.Request, routed: Routed, ctx: RequestContext, events: SurfaceEvents
) -> web.StreamResponse:
    """Relay a chat stream as the surface's events; a failure ends it with its failure event."""
    reply = await open_stream(request, ctx)
    if not await write_or_gone(reply, b"".join(events.start()), ctx):
        return reply
    relay = _Relay(routed, ctx, events)
    try:
        closing = await relay.run(reply)
    except (aiohttp.ClientError, TimeoutError, *_NOT_CHAT) as exc:
        if relay.ended:
            return reply  # the answer was whole; only reading past its end failed
        routed.broken = True
        message = f"The {where(routed)} broke off the stream ({type(exc).__name__})."
        log.warning("request %s: %s", ctx.request_id, message)
        closing = events.fail(message)
    if closing:
        await write_or_gone(reply, b"".join(closing), ctx)
    return reply


class _Relay:
    def __init__(self, routed: Routed, ctx: RequestContext, events: SurfaceEvents) -> None:
        self._routed = routed
        self._ctx = ctx
        self._events = events
        self.ended = False  # finish() or fail() was called: nothing more may be fed

    async def run(self, reply: web.StreamResponse) -> list[bytes]:
        """Translate chunks as they come; returns the closing frames still to write."""
        async for batch in iter_sse_events(self._routed.response):
            if self.ended:
                continue  # read to the end, so the upstream connection can be reused
            frames = self._translate(batch)
            if frames and not await write_or_gone(reply, b"".join(frames), self._ctx):
                return []
        if self.ended:
            return []
        self._routed.broken = True
        return self._end(self._events.fail(f"The {where(self._routed)} ended the stream early."))

    def _translate(self, batch: list[bytes]) -> list[bytes]:
        frames: list[bytes] = []
        for event in batch:
            note_event(self._ctx, event)
            if not event.startswith(b"data:"):
                continue
            data = event[5:].strip()
            if data == b"[DONE]":
                return frames + self._end(self._events.finish())
            chunk = orjson.loads(data)
            if "error" in chunk:
                self._routed.broken = True
                error = chunk["error"] if isinstance(chunk["error"], dict) else {}
                # Like an error status's body, its text may quote the replica's URL or key.
                text = str(error.get("message") or "upstream error")
                message = scrub(text, self._routed.replica)
                return frames + self._end(self._events.fail(message))
            frames += self._events.feed(chunk)
        return frames

    def _end(self, frames: list[bytes]) -> list[bytes]:
        self.ended = True
        return frames
