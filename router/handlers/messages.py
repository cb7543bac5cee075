"""Anthropic's Messages API: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``.

A request is translated to Chat Completions first, always: that chat body is what
classification, effort routing and prefix keys read, so a conversation routes and caches the
same on either surface. A ``chat`` backend then gets the chat body and its answer is translated
back (JSON, or Messages events); a ``messages`` backend gets the client's body as it came.
Errors on these paths use Anthropic's envelope (the middleware picks it by path).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from router import effort
from router.anthropic import (
    ChatToMessageEvents,
    MessagesInputError,
    chat_to_message,
    estimate_input_tokens,
    request_to_chat,
    strip_markers,
)
from router.context import RequestContext
from router.dispatch import Plan, Routed
from router.errors import InvalidRequest, UpstreamError
from router.handlers.common import (
    context,
    open_stream,
    read_json,
    relay_json,
    relay_sse,
    where,
    write_or_gone,
)
from router.keys import DISPATCHER
from router.upstream import iter_sse_events, read_body

log = logging.getLogger(__name__)


async def create_message(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    body, raw = await read_json(request)
    chat = _to_chat(body, require_max_tokens=True)
    ctx.effort = effort.resolve(request.headers, request.query, body)
    plan = request.app[DISPATCHER].plan(chat, ctx)
    # metrics: requests by effort level (ctx.effort), as the middleware counts them by type.
    if plan.backend.api == "messages":
        return await _via_messages_backend(request, ctx, body, raw, plan)
    return await _via_chat_backend(request, ctx, body, chat, plan)


async def count_tokens(request: web.Request) -> web.Response:
    """An estimate of the input tokens (the router has no tokenizer); ``max_tokens`` optional."""
    ctx = context(request)
    body, _ = await read_json(request)
    chat = _to_chat(body, require_max_tokens=False)
    return web.json_response({"input_tokens": estimate_input_tokens(chat)}, headers=ctx.headers)


def _to_chat(body: dict[str, Any], *, require_max_tokens: bool) -> dict[str, Any]:
    try:
        return request_to_chat(body, require_max_tokens=require_max_tokens)
    except MessagesInputError as exc:
        raise InvalidRequest(exc.message, param=exc.param) from None


def messages_stream_end(event: bytes) -> bool:
    """A Messages stream ends with ``message_stop``, or with an ``error`` event."""
    kind = event.partition(b"\n")[0] if event.startswith(b"event:") else b""
    if kind:
        return kind[6:].strip() in (b"message_stop", b"error")
    # A server that sends data lines only: the type is the data's first key.
    return event.startswith((b'data: {"type":"message_stop"', b'data: {"type": "message_stop"'))


async def _via_messages_backend(
    request: web.Request, ctx: RequestContext, body: dict[str, Any], raw: bytes, plan: Plan
) -> web.StreamResponse:
    """The backend speaks Messages itself: pass the client's body through."""
    dispatcher = request.app[DISPATCHER]
    async with dispatcher.dispatch(ctx, plan, "/messages", _passthrough(body, raw, plan)) as routed:
        if body.get("stream"):
            return await relay_sse(request, routed, ctx, body["model"], ends=messages_stream_end)
        response, _ = await relay_json(routed, ctx, body["model"])
        return response


def _passthrough(body: dict[str, Any], raw: bytes, plan: Plan) -> bytes:
    """The client's bytes, unless the backend's model name or cache_control setting differs."""
    backend = plan.backend
    out = body
    if backend.model and body.get("model") != backend.model:
        out = {**out, "model": backend.model}
    if plan.marked and not backend.forward_cache_control:
        out = strip_markers(out)
    return raw if out is body else orjson.dumps(out)


async def _via_chat_backend(
    request: web.Request,
    ctx: RequestContext,
    body: dict[str, Any],
    chat: dict[str, Any],
    plan: Plan,
) -> web.StreamResponse:
    """The backend speaks Chat Completions: send the translation, translate the answer back."""
    dispatcher = request.app[DISPATCHER]
    message_id = f"msg_{uuid.uuid4().hex}"
    stops = chat.get("stop") or ()
    payload = dispatcher.payload(chat, None, plan)
    async with dispatcher.dispatch(ctx, plan, "/chat/completions", payload) as routed:
        if body.get("stream"):
            events = ChatToMessageEvents(
                message_id=message_id, model=body["model"], stop_sequences=stops
            )
            return await _stream(request, routed, ctx, events)
        data = await read_body(routed.response, where(routed), routed.body_limit)
    try:
        result = chat_to_message(
            orjson.loads(data), message_id=message_id, model=body["model"], stop_sequences=stops
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        raise UpstreamError(
            f"The {where(routed)} answered with something that is not a chat completion."
        ) from None
    return web.Response(
        body=orjson.dumps(result), content_type="application/json", headers=ctx.headers
    )


async def _stream(
    request: web.Request, routed: Routed, ctx: RequestContext, events: ChatToMessageEvents
) -> web.StreamResponse:
    """Relay a chat stream as Messages events; a failure ends it with an ``error`` event."""
    reply = await open_stream(request, ctx)
    if not await write_or_gone(reply, b"".join(events.start()), ctx):
        return reply
    try:
        closing = await _relay(reply, routed, ctx, events)
    except (aiohttp.ClientError, TimeoutError, ValueError, TypeError, AttributeError) as exc:
        # A broken transport, or chunks that are not the chat stream they claim to be.
        message = f"The {where(routed)} broke off the stream ({type(exc).__name__})."
        log.warning("request %s: %s", ctx.request_id, message)
        closing = [] if events.ended else events.fail(message)
    if closing:
        await write_or_gone(reply, b"".join(closing), ctx)
    return reply


async def _relay(
    reply: web.StreamResponse, routed: Routed, ctx: RequestContext, events: ChatToMessageEvents
) -> list[bytes]:
    """Translate chunks as they come; returns the closing frames still to write."""
    async for batch in iter_sse_events(routed.response):
        if events.ended:
            continue  # read to the end, so the upstream connection can be reused
        frames: list[bytes] = []
        for event in batch:
            data = event[5:].strip() if event.startswith(b"data:") else None
            if data is None:
                continue
            if data == b"[DONE]":
                frames += events.finish()
                break
            chunk = orjson.loads(data)
            if "error" in chunk:
                error = chunk["error"] if isinstance(chunk["error"], dict) else {}
                frames += events.fail(str(error.get("message") or "upstream error"))
                break
            frames += events.feed(chunk)
        if frames and not await write_or_gone(reply, b"".join(frames), ctx):
            return []
    if not events.ended:
        return events.fail(f"The {where(routed)} ended the stream early.")
    return []
