"""``POST /v1/chat/completions``: classify, route, relay (JSON or SSE)."""

from __future__ import annotations

import orjson
from aiohttp import web

from router import effort
from router.handlers.common import context, read_json, relay_json, relay_sse
from router.handlers.stored_chat import StreamAssembler, save, tell_stream
from router.keys import DISPATCHER, OBJECTS
from router.rewrite import Outgoing
from router.validate import check_chat


async def create_chat_completion(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    body, raw = await read_json(request)
    check_chat(body, ctx.survey)
    ctx.effort = effort.resolve(request.headers, request.query, body)
    dispatcher = request.app[DISPATCHER]
    plan = dispatcher.plan(body, ctx, raw)
    store = body.get("store") is True
    assembler = StreamAssembler() if store and body.get("stream") else None
    data = b""
    outgoing = Outgoing(body, raw)
    async with dispatcher.dispatch(ctx, plan, "/chat/completions", outgoing) as routed:
        if body.get("stream"):
            response = await relay_sse(
                request, routed, ctx, body["model"], assembler.feed if assembler else None
            )
        else:
            response, data = await relay_json(routed, ctx, body["model"])
    # Stored after the upstream connection is released. A stream the client cut off is not
    # stored at all: nobody saw the whole answer, and a partial one would pass for complete.
    if assembler is not None and assembler.head and not ctx.client_gone:
        await save(request.app[OBJECTS], ctx, body, assembler.completion())
        await tell_stream(response, ctx)
    elif store and data:
        await save(request.app[OBJECTS], ctx, body, orjson.loads(data))
    return response
