"""Application assembly: routes, the request middleware, and the resources' lifetimes.

``create_app`` does no I/O; the upstream session, the prefix store and the dispatcher are made
in ``cleanup_ctx`` generators when the application starts and closed when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from redis.asyncio import Redis

from router import edge
from router.balancer import Balancer
from router.config import RouterConfig
from router.context import EXPOSED_HEADERS, RequestContext
from router.dashboard import RecentErrors, refresh_gauges
from router.dispatch import Dispatcher
from router.errors import (
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RouterError,
    ServiceUnavailable,
)
from router.governance import base_headers, tenancy_ctx, tenancy_middleware
from router.handlers import chat, completions, dashboard, messages, meta, responses, stored_chat
from router.handlers.common import write_error_tail
from router.keys import (
    BALANCER,
    BASE_HEADERS,
    BODY_PARSER,
    CONFIG,
    CONTEXT,
    DISPATCHER,
    LIFECYCLE,
    METRICS,
    OBJECTS,
    RECENT_ERRORS,
    SESSION,
    STORE,
    TRACER,
    WATCHER,
    WORKER,
)
from router.lifecycle import Lifecycle
from router.limits import BodyParser
from router.logs import log_access
from router.metrics import Metrics
from router.objects import MemoryObjectStore, ObjectStore, RedisObjectStore
from router.redis_store import RedisPrefixStore, reconnect_once
from router.store import MemoryPrefixStore, PrefixStore
from router.store_metrics import TimedStore
from router.tracing import RequestTracer
from router.upstream import new_session
from router.watch import Watcher, attach

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Paths of Anthropic's API: their errors use its envelope.
_ANTHROPIC_PATHS = ("/v1/messages",)
_REQUEST_ID = re.compile(r"^[\w.:@/+=-]{1,128}$")


def create_app(
    config: RouterConfig,
    *,
    store: PrefixStore | None = None,
    objects: ObjectStore | None = None,
    tracer: RequestTracer | None = None,
    worker: bool = False,
) -> web.Application:
    """The router's application; ``worker``: one of the processes of ``serve --workers N``."""
    app = web.Application(
        client_max_size=config.server.max_body_size,
        middlewares=[request_middleware, tenancy_middleware],
        handler_args={"max_field_size": 32 << 10},
    )
    app[CONFIG] = config
    app[WORKER] = worker
    app[BALANCER] = Balancer(config)
    attach(app[BALANCER], config)
    app[METRICS] = Metrics()
    app[RECENT_ERRORS] = RecentErrors()
    if tracer is None and config.tracing.otlp_endpoint:
        # Imported only when configured: tracing off costs no opentelemetry import at all.
        tracer = RequestTracer.from_config(config.tracing)
    if tracer is not None:
        app[TRACER] = tracer
        app.cleanup_ctx.append(tracer_ctx)
    app[BASE_HEADERS] = {
        "Access-Control-Allow-Origin": config.server.cors_allow_origin,
        "Access-Control-Expose-Headers": ", ".join(EXPOSED_HEADERS),
        "Vary": "Origin",
    }
    if store is not None:
        app[STORE] = store
    if objects is not None:
        app[OBJECTS] = objects
    app.cleanup_ctx.extend(
        [
            session_ctx,
            store_ctx,
            objects_ctx,
            tenancy_ctx,
            dispatcher_ctx,
            body_parser_ctx,
            lifecycle_ctx,
            watch_ctx,
            worker_figures_ctx,
        ]
    )
    app.on_response_prepare.append(edge.hide_server_banner)
    _add_routes(app)
    return app


def _add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat.create_chat_completion)
    app.router.add_get("/v1/chat/completions", stored_chat.list_completions)
    one = "/v1/chat/completions/{completion_id}"
    app.router.add_get(one, stored_chat.retrieve_completion)
    app.router.add_post(one, stored_chat.update_completion)
    app.router.add_delete(one, stored_chat.delete_completion)
    app.router.add_get(one + "/messages", stored_chat.list_messages)
    app.router.add_post("/v1/completions", completions.create_completion)
    app.router.add_post("/v1/responses", responses.create_response)
    app.router.add_post("/v1/responses/input_tokens", responses.count_tokens)
    response = "/v1/responses/{response_id}"
    app.router.add_get(response, responses.retrieve_response)
    app.router.add_delete(response, responses.delete_response)
    app.router.add_post(response + "/cancel", responses.cancel_response)
    app.router.add_get(response + "/input_items", responses.list_input_items)
    app.router.add_post("/v1/messages", messages.create_message)
    app.router.add_post("/v1/messages/count_tokens", messages.count_tokens)
    app.router.add_get("/v1/models", meta.list_models)
    app.router.add_get("/v1/models/{model:.+}", meta.retrieve_model)
    app.router.add_get("/health", meta.health)
    app.router.add_get("/health/backends", meta.health_backends)
    app.router.add_get("/ready", meta.ready)
    app.router.add_get("/metrics", meta.metrics)
    app.router.add_get("/dashboard", dashboard.page)
    app.router.add_get("/dashboard/data", dashboard.data)


async def session_ctx(app: web.Application) -> AsyncIterator[None]:
    app[SESSION] = new_session(app[CONFIG].upstream)
    yield
    await app[SESSION].close()


async def store_ctx(app: web.Application) -> AsyncIterator[None]:
    cache = app[CONFIG].cache
    owned = STORE not in app
    if owned:
        if cache.redis_url is not None:
            redis_store = RedisPrefixStore.from_url(
                cache.redis_url.get_secret_value(),
                key_prefix=cache.key_prefix,
                timeout=cache.timeout_ms / 1000,
                retry_after=cache.retry_after,
                failure_threshold=cache.failure_threshold,
                max_connections=app[CONFIG].upstream.connection_limit,
                on_drop=app[METRICS].index_write_dropped,
            )
            await redis_store.prepare()
            app[STORE] = redis_store
        else:
            # Workers of one router cannot share the counts and order of new prefixes: they
            # place without the counts and break ties by rendezvous alone, and so alike.
            app[STORE] = MemoryPrefixStore(cache.memory_max_entries, ordered=not app[WORKER])
    store = app[STORE]
    watch = None
    # A store handed in (tests) is watched by its owner, if at all.
    if owned and isinstance(store, RedisPrefixStore):
        watch = asyncio.create_task(store.watch())
    yield
    if watch is not None:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
    if owned:
        await store.aclose()


async def objects_ctx(app: web.Application) -> AsyncIterator[None]:
    """Stored API objects: in their own Redis (objects.redis_url), else beside the prefix
    index (the same Redis, if any), else in memory up to objects.memory_max_objects."""
    if OBJECTS in app:
        yield
        return
    config = app[CONFIG]
    ttl, prefix = config.cache.responses_ttl, config.cache.key_prefix
    timeout = config.objects.timeout_ms / 1000
    own: Redis | None = None
    store = app[STORE]
    if config.objects.redis_url is not None:
        own = Redis.from_url(config.objects.redis_url.get_secret_value(), retry=reconnect_once())
        app[OBJECTS] = RedisObjectStore(own, key_prefix=prefix, ttl=ttl, timeout=timeout)
    elif isinstance(store, RedisPrefixStore):
        app[OBJECTS] = RedisObjectStore(store.redis, key_prefix=prefix, ttl=ttl, timeout=timeout)
    else:
        app[OBJECTS] = MemoryObjectStore(ttl, config.objects.memory_max_objects)
    yield
    if own is not None:
        await own.aclose()


async def body_parser_ctx(app: web.Application) -> AsyncIterator[None]:
    app[BODY_PARSER] = BodyParser(app[CONFIG].server.limits)
    yield
    app[BODY_PARSER].close()


async def lifecycle_ctx(app: web.Application) -> AsyncIterator[None]:
    app[LIFECYCLE] = Lifecycle()
    yield


async def tracer_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    # Flushing the last spans may block on the exporter: not on the loop.
    await asyncio.to_thread(app[TRACER].shutdown)


async def dispatcher_ctx(app: web.Application) -> AsyncIterator[None]:
    store = TimedStore(app[STORE], app[METRICS])  # lookups timed for di_prefix_lookup_seconds
    app[DISPATCHER] = Dispatcher(app[CONFIG], app[BALANCER], store, lambda: app[SESSION])
    yield


async def watch_ctx(app: web.Application) -> AsyncIterator[None]:
    """Metrics scrapes and health probes of every replica, in the background."""
    watcher = Watcher(app[CONFIG], app[BALANCER])
    await watcher.start()
    app[WATCHER] = watcher
    yield
    await watcher.close()


# Seconds between a worker's own refreshes of its figures (``serve --workers N``).
WORKER_REFRESH = 1.0


async def worker_figures_ctx(app: web.Application) -> AsyncIterator[None]:
    """A worker keeps its share of the figures a scrape sums current on its own.

    A scrape reaches one worker, which refreshes its gauges and carried counters before it
    answers; without this the others' would stay as they were at their own last scrape (a
    worker that once saw Redis down would hold ``di_redis_up`` at 0 long after it recovered).
    """
    if not app[WORKER]:
        yield
        return

    async def refresh() -> None:
        while True:
            await asyncio.sleep(WORKER_REFRESH)
            try:
                refresh_gauges(app[METRICS], app[BALANCER], app[STORE], time.monotonic())
            except Exception:  # a bug: say so, and keep the figures coming
                log.exception("refreshing this worker's metrics failed")

    task = asyncio.create_task(refresh())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _start_context(request: web.Request) -> RequestContext:
    """The request's context: its id (the client's, when safe), surface and trace span."""
    given = request.headers.get("X-Request-Id", "")
    request_id = given if given and _REQUEST_ID.match(given) else os.urandom(16).hex()
    ctx = RequestContext.start(request_id, base_headers(request, request.app[BASE_HEADERS]))
    if request.path.startswith(_ANTHROPIC_PATHS):
        ctx.surface = "anthropic"
    request[CONTEXT] = ctx
    tracer = request.app.get(TRACER)
    if tracer is not None:
        ctx.span = tracer.start(request.headers, request.method, request.path, ctx)
    return ctx


@web.middleware
async def request_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, CORS, auth, and every error as an OpenAI envelope; one log line each."""
    ctx = _start_context(request)
    lifecycle = request.app[LIFECYCLE]
    try:
        with lifecycle.track():
            if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
                response: web.StreamResponse = _preflight(request)
            else:
                response = await handler(request)  # tenancy_middleware authenticates
    except RouterError as exc:
        ctx.error = exc.message
        if ctx.stream is not None:
            return await _fail_in_stream(request, ctx, exc.message)
        response = _error_response(exc, ctx)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _error_response(_from_http(exc), ctx)
    except asyncio.CancelledError:
        if not lifecycle.ending:
            log.info("request %s: cancelled (client went away)", ctx.request_id)
            raise
        return await _cut_by_shutdown(request, ctx)
    except Exception:
        log.exception("request %s: internal error", ctx.request_id)
        ctx.error = "internal error"
        if ctx.stream is not None:
            message = f"The router failed mid-stream (request id {ctx.request_id})."
            return await _fail_in_stream(request, ctx, message)
        failure = RouterError(f"The router failed on this request (request id {ctx.request_id}).")
        response = _error_response(failure, ctx)
    if not response.prepared:
        response.headers.update(ctx.headers)
    _account(request, ctx, response)
    return response


async def _fail_in_stream(
    request: web.Request, ctx: RequestContext, message: str, code: str = "internal_error"
) -> web.StreamResponse:
    """Headers are out: the failure can only travel inside the stream."""
    assert ctx.stream is not None
    await write_error_tail(ctx.stream, ctx, message, code)
    _account(request, ctx, ctx.stream)
    return ctx.stream


async def _cut_by_shutdown(request: web.Request, ctx: RequestContext) -> web.StreamResponse:
    """The shutdown grace is over: tell the client, in the stream or as a 503."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()  # the cancellation was ours, and is answered here
    message = "The router is shutting down; retry the request."
    if ctx.stream is not None:
        return await _fail_in_stream(request, ctx, message, "shutting_down")
    response = _error_response(ServiceUnavailable(message, code="shutting_down"), ctx)
    response.force_close()
    response.headers.update(ctx.headers)
    _account(request, ctx, response)
    return response


def _preflight(request: web.Request) -> web.Response:
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
            "Access-Control-Allow-Headers": request.headers.get(
                "Access-Control-Request-Headers", "Authorization, Content-Type"
            ),
            "Access-Control-Max-Age": "600",
        },
    )


def _from_http(exc: web.HTTPException) -> RouterError:
    if exc.status == 404:
        return NotFound("Unknown path: no such endpoint on this router.", code="unknown_url")
    if exc.status == 405:
        allowed = ", ".join(sorted(getattr(exc, "allowed_methods", ()) or ()))
        headers = {"Allow": allowed} if allowed else {}
        return MethodNotAllowed(f"Method not allowed here; use {allowed}.", headers=headers)
    if exc.status == 413:
        return PayloadTooLarge("The request body is too large (server.max_body_size).")
    return RouterError(exc.reason, status=exc.status)


def _error_response(exc: RouterError, ctx: RequestContext) -> web.Response:
    response = web.Response(
        body=exc.render(ctx.surface), status=exc.http_status, content_type="application/json"
    )
    response.headers.update(exc.headers)
    if exc.http_status in (408, 413):
        # The rest of that body is not wanted: close rather than linger reading it.
        response.force_close()
    if exc.http_status >= 500:
        log.warning(
            "request %s: %s %s", ctx.request_id, exc.http_status, edge.loggable(exc.message)
        )
    return response


def _account(request: web.Request, ctx: RequestContext, response: web.StreamResponse) -> None:
    """Metrics, the access line, recent errors and the span: all read from the context."""
    resource = request.match_info.route.resource
    endpoint = resource.canonical if resource is not None else "unmatched"
    status = response.status
    duration_ms = (time.perf_counter() - ctx.started) * 1000
    app = request.app
    metrics = app[METRICS]
    primary = None
    if ctx.fallback is not None and ctx.request_type is not None:
        primary = app[CONFIG].routes.pools_for(ctx.request_type, ctx.effort)[0]
    metrics.observe(ctx, endpoint, status, duration_ms / 1000, primary)
    if metrics.shared and ctx.replica is not None and ctx.backend is not None:
        pool = app[BALANCER].pools.get(ctx.backend)
        # This worker's count after the request ended: the gauge is summed over workers, and
        # a scrape answered by another worker reads it from this one's file. (One process
        # sets it from the live counts before each scrape: refresh_gauges.)
        for replica in pool.replicas if pool is not None else ():
            if replica.id == ctx.replica:
                metrics.replica_in_flight(ctx.backend, replica.id, replica.in_flight)
    if status >= 400 or ctx.error is not None:
        app[RECENT_ERRORS].add(ctx, request.path, status)
    log_access(ctx, request.method, request.raw_path, status, duration_ms)
    tracer = app.get(TRACER)
    if tracer is not None and ctx.span is not None:
        tracer.finish(ctx.span, ctx, status, request.path)
