"""Anthropic's Messages API: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``.

A request is translated to Chat Completions first, always: that chat body is what
classification, effort routing and prefix keys read, so a conversation routes and caches the
same on either surface. A ``chat`` backend then gets the chat body and its answer is translated
back (JSON, or Messages events); a ``messages`` backend gets the client's body as it came.
Errors on these paths use Anthropic's envelope (the middleware picks it by path).
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from aiohttp import web

from router import effort
from router.anthropic import (
    ChatToMessageEvents,
    MessagesInputError,
    chat_to_message,
    estimate_input_tokens,
    request_to_chat,
)
from router.context import RequestContext
from router.dispatch import Plan
from router.errors import InvalidRequest
from router.handlers.common import (
    context,
    read_json,
    relay_json,
    relay_sse,
)
from router.handlers.translated import relay_translated, translate_answer
from router.keys import DISPATCHER
from router.prefix import find_markers, marked_ttls
from router.rewrite import CHAT_FROM_MESSAGES, MESSAGES, Outgoing


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
    body, _ = await read_json(request)
    chat = _to_chat(body, require_max_tokens=False)
    marked_ttls(find_markers(chat))  # the breakpoints /v1/messages would refuse, refused alike
    return web.json_response({"input_tokens": estimate_input_tokens(chat)})


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
    async with dispatcher.dispatch(ctx, plan, "/messages", Outgoing(body, raw, MESSAGES)) as routed:
        if body.get("stream"):
            return await relay_sse(request, routed, ctx, body["model"], ends=messages_stream_end)
        response, _ = await relay_json(routed, ctx, body["model"])
        return response


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
    outgoing = Outgoing(chat, shape=CHAT_FROM_MESSAGES)
    async with dispatcher.dispatch(ctx, plan, "/chat/completions", outgoing) as routed:
        if body.get("stream"):
            events = ChatToMessageEvents(
                message_id=message_id, model=body["model"], stop_sequences=stops
            )
            return await relay_translated(request, routed, ctx, events)
        result = await translate_answer(
            routed,
            ctx,
            lambda answer: chat_to_message(
                answer, message_id=message_id, model=body["model"], stop_sequences=stops
            ),
        )
    return web.Response(body=orjson.dumps(result), content_type="application/json")
