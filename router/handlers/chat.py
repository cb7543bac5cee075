"""``POST /v1/chat/completions``: classify, route, relay (JSON or SSE)."""

from __future__ import annotations

from aiohttp import web

from router.handlers.common import context, read_json, relay_json, relay_sse
from router.keys import DISPATCHER
from router.validate import check_chat


async def create_chat_completion(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    body, raw = await read_json(request)
    check_chat(body)
    dispatcher = request.app[DISPATCHER]
    plan = dispatcher.plan(body, ctx)
    payload = dispatcher.payload(body, raw, plan)
    async with dispatcher.dispatch(ctx, plan, "/chat/completions", payload) as routed:
        if body.get("stream"):
            return await relay_sse(request, routed, ctx, body["model"])
        response, _ = await relay_json(routed, ctx, body["model"])
        return response
