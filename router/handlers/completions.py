"""``POST /v1/completions``: the legacy text-completion API, always of type ``text``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from router import effort
from router.errors import InvalidRequest
from router.handlers.common import context, read_json, relay_json, relay_sse
from router.keys import DISPATCHER
from router.rewrite import COMPLETIONS, Outgoing
from router.validate import check_model, check_sampling


async def create_completion(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    body, raw = await read_json(request)
    check_model(body)
    _check_prompt(body.get("prompt"))
    check_sampling(body)
    if body.get("cache_control") is not None:
        # Nothing marks where a prompt string's prefix ends: its prefixes are automatic.
        raise InvalidRequest(
            "cache_control is not read on /v1/completions: prompts get automatic prefixes.",
            param="cache_control",
        )
    ctx.effort = effort.resolve(request.headers, request.query, body)
    dispatcher = request.app[DISPATCHER]
    plan = dispatcher.plan_completion(body, ctx)
    outgoing = Outgoing(body, raw, COMPLETIONS)
    async with dispatcher.dispatch(ctx, plan, "/completions", outgoing) as routed:
        if body.get("stream"):
            return await relay_sse(request, routed, ctx, body["model"])
        response, _ = await relay_json(routed, ctx, body["model"])
        return response


def _check_prompt(prompt: Any) -> None:
    if prompt is None:
        raise InvalidRequest("Missing required parameter: 'prompt'.", param="prompt")
    if isinstance(prompt, str):
        return
    if (
        isinstance(prompt, list)
        and prompt
        and (
            all(isinstance(p, str) for p in prompt)
            or all(isinstance(t, int) for t in prompt)
            or all(isinstance(p, list) and all(isinstance(t, int) for t in p) for p in prompt)
        )
    ):
        return
    raise InvalidRequest(
        "'prompt' must be a string, an array of strings, or an array of token arrays.",
        param="prompt",
    )
