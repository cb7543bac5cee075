"""Endpoints about the router itself: models, liveness, readiness, metrics."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from router.balancer import Replica
from router.errors import NotFound
from router.keys import BALANCER, CONFIG, METRICS, SESSION

_STARTED = int(time.time())
_PROBE_TIMEOUT = aiohttp.ClientTimeout(total=2.0)


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
    """200 when every routed backend has at least one replica answering ``GET /models``."""
    config = request.app[CONFIG]
    pools = request.app[BALANCER].pools
    routed = {config.routes.backend_for(t) for t in ("text", "code", "json", "vision")}
    replicas = [r for name in sorted(routed) for r in pools[name].replicas]
    answers = await asyncio.gather(*(_probe(request.app, r) for r in replicas))
    backends: dict[str, dict[str, bool]] = {}
    for replica, ok in zip(replicas, answers, strict=True):
        backends.setdefault(replica.backend.name, {})[replica.id] = ok
    is_ready = all(any(states.values()) for states in backends.values())
    return web.json_response(
        {"status": "ready" if is_ready else "unavailable", "backends": backends},
        status=200 if is_ready else 503,
    )


async def _probe(app: web.Application, replica: Replica) -> bool:
    try:
        async with app[SESSION].get(
            replica.url + "/models", headers=replica.headers, timeout=_PROBE_TIMEOUT
        ) as response:
            return response.status < 500
    except (aiohttp.ClientError, TimeoutError):
        return False


async def metrics(request: web.Request) -> web.Response:
    pools = request.app[BALANCER].pools
    in_flight = [(p.backend.name, r.id, r.in_flight) for p in pools.values() for r in p.replicas]
    body = request.app[METRICS].render(in_flight)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
