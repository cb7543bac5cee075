"""Endpoints about the router itself: models, liveness, readiness, metrics."""

from __future__ import annotations

import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from router.dashboard import refresh_gauges
from router.errors import NotFound
from router.keys import BALANCER, CONFIG, LIFECYCLE, METRICS, SESSION, STORE
from router.watch import readiness, snapshot

_STARTED = int(time.time())


def _models(request: web.Request) -> list[dict[str, object]]:
    """One entry per backend pool: any model id is accepted, these are the ones configured."""
    config = request.app[CONFIG]
    seen: dict[str, dict[str, object]] = {}
    for backend in config.backends:
        model_id = backend.model or backend.name
        seen.setdefault(
            model_id,
            {"id": model_id, "object": "model", "created": _STARTED, "owned_by": backend.name},
        )
    return list(seen.values())


async def list_models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": _models(request)})


async def retrieve_model(request: web.Request) -> web.Response:
    model_id = request.match_info["model"]
    for model in _models(request):
        if model["id"] == model_id:
            return web.json_response(model)
    raise NotFound(f"The model {model_id!r} does not exist.", param="model", code="model_not_found")


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """200 when this router can serve: config loaded, upstream session open, and at least one
    routed pool healthy per the background checker (router/watch.py). Nothing is probed per
    call, and a dead pool degrades only the types it serves (``types`` shows which pool each
    type would use now; null for a type nothing can serve)."""
    if request.app[LIFECYCLE].draining:
        return web.json_response({"status": "draining"}, status=503)
    session = request.app.get(SESSION)
    state = readiness(request.app[CONFIG], request.app[BALANCER], time.monotonic())
    is_ready = session is not None and not session.closed and state["ready"]
    return web.json_response(
        {
            "status": "ready" if is_ready else "unavailable",
            "pools": state["pools"],
            "types": state["types"],
        },
        status=200 if is_ready else 503,
    )


async def health_backends(request: web.Request) -> web.Response:
    """Every replica's breaker state, load and scraped figures (ids only, never URLs)."""
    return web.json_response(snapshot(request.app[BALANCER], time.monotonic()))


async def metrics(request: web.Request) -> web.Response:
    app = request.app
    refresh_gauges(app[METRICS], app[BALANCER], app[STORE], time.monotonic())
    body = app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
