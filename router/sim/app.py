"""The sim replica's aiohttp application: OpenAI endpoints plus /sim test controls.

Serve it with `handler_cancellation=True` (as `start_fleet` and aiohttp's test server do) so
a client that disconnects before its first token cancels the wait; mid-stream disconnects
are seen on the next write either way.
"""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from router.sim.engine import SIM_ENGINE, Admission, SimEngine, sleep_until
from router.sim.errors import SimError, error_middleware
from router.sim.generate import Choice, chat_choices, completion_choices
from router.sim.metrics import render_metrics
from router.sim.request import ChatRequest, CompletionRequest, SimFault, parse, read_body
from router.sim.settings import SimSettings
from router.sim.stream import StreamPlan, chat_steps, stream, text_steps
from router.sim.tokenizer import chat_prompt, completion_prompt
from router.sim.wire import Meta, chat_completion, text_completion, usage_chunk

# Long prompts and base64 images exceed aiohttp's 1 MiB default body limit.
MAX_BODY_BYTES = 64 * 1024 * 1024
REPLICA_HEADER = "X-Sim-Replica"


def _json(payload: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


async def _apply_fault(fault: SimFault | None) -> None:
    """Injected faults that act before the response starts: a delay, then an error status."""
    if fault is None:
        return
    if fault.delay_ms > 0:
        await asyncio.sleep(fault.delay_ms / 1000)
    if fault.status is not None:
        raise SimError(fault.message, status=fault.status, code="sim_fault")


async def _wait_for_last_token(
    engine: SimEngine, admission: Admission, choices: list[Choice]
) -> None:
    steps = max(1, max(choice.tokens for choice in choices))
    await sleep_until(engine.token_time(admission, steps - 1))


async def chat_completions(request: web.Request) -> web.StreamResponse:
    engine = request.app[SIM_ENGINE]
    with engine.track() as tracked:
        chat = parse(ChatRequest, await read_body(request))
        prompt = chat_prompt(chat.messages, chat.tools, image_count=engine.settings.image_tokens)
        choices = chat_choices(chat, prompt, engine.settings)
        await _apply_fault(chat.sim_fault)
        admission = engine.admit([prompt], tracked)
        meta = Meta.new("chatcmpl", chat.model)
        if chat.stream:
            usage = (
                usage_chunk(meta, "chat.completion.chunk", admission, choices)
                if chat.include_usage
                else None
            )
            plan = StreamPlan(admission, chat_steps(meta, choices), usage, chat.sim_fault)
            return await stream(request, engine, plan, tracked)
        await _wait_for_last_token(engine, admission, choices)
        return _json(chat_completion(meta, admission, choices))


async def completions(request: web.Request) -> web.StreamResponse:
    engine = request.app[SIM_ENGINE]
    with engine.track() as tracked:
        legacy = parse(CompletionRequest, await read_body(request))
        prompts = [completion_prompt(prompt) for prompt in legacy.prompts]
        choices = [
            choice
            for number, prompt in enumerate(prompts)
            for choice in completion_choices(
                legacy, prompt, engine.settings, first_index=number * legacy.n
            )
        ]
        await _apply_fault(legacy.sim_fault)
        admission = engine.admit(prompts, tracked)
        meta = Meta.new("cmpl", legacy.model)
        if legacy.stream:
            usage = (
                usage_chunk(meta, "text_completion", admission, choices)
                if legacy.include_usage
                else None
            )
            plan = StreamPlan(admission, text_steps(meta, choices), usage, legacy.sim_fault)
            return await stream(request, engine, plan, tracked)
        await _wait_for_last_token(engine, admission, choices)
        return _json(text_completion(meta, admission, choices))


async def models(request: web.Request) -> web.Response:
    engine = request.app[SIM_ENGINE]
    model = {
        "id": engine.settings.model,
        "object": "model",
        "created": engine.created,
        "owned_by": "di-router-sim",
    }
    return _json({"object": "list", "data": [model]})


async def health(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def stats(request: web.Request) -> web.Response:
    return _json(request.app[SIM_ENGINE].snapshot())


async def reset(request: web.Request) -> web.Response:
    engine = request.app[SIM_ENGINE]
    engine.reset()
    return _json(engine.snapshot())


async def metrics(request: web.Request) -> web.Response:
    """The replica's state in vLLM's Prometheus names, as a router's scraper reads them."""
    body, content_type = render_metrics(request.app[SIM_ENGINE])
    return web.Response(body=body, headers={"Content-Type": content_type})


async def _tag_replica(request: web.Request, response: web.StreamResponse) -> None:
    """Name the replica on every response, so router tests can see where a request went."""
    response.headers[REPLICA_HEADER] = request.app[SIM_ENGINE].replica_id


def create_sim_app(settings: SimSettings, *, replica_id: str = "sim-0") -> web.Application:
    """One simulated OpenAI-compatible replica; does no I/O."""
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY_BYTES)
    app[SIM_ENGINE] = SimEngine(settings, replica_id)
    app.on_response_prepare.append(_tag_replica)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/sim/stats", stats)
    app.router.add_post("/sim/reset", reset)
    return app
