"""The tenancy middleware: key -> tenant, per-key limits, usage accounting; CORS for objects.

It runs inside ``app.request_middleware``, which renders its errors (401, 403, 429, 503) as the
OpenAI envelope with the request's headers. Limits apply to the generation endpoints only
(stored-object reads are not model requests, as with OpenAI's own limits).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from router.context import RequestContext
from router.errors import RateLimited, RouterError
from router.keys import CONFIG, CONTEXT, KEYRING, LIMITER, METRICS, OBJECTS, STORE
from router.keystore import RedisKeyStore
from router.metrics import TenantCounters
from router.objects import RedisObjectStore
from router.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter, Verdict
from router.redis_store import RedisPrefixStore
from router.tenants import KeyRing, Tenant
from router.usage import tokens_used

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PUBLIC_PATHS = frozenset(
    {"/health", "/health/backends", "/ready", "/metrics", "/dashboard", "/dashboard/data"}
)
GENERATION_PATHS = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages"}
)
_OBJECT_PREFIXES = ("/v1/chat/completions/", "/v1/responses/")
_NOT_OBJECTS = frozenset({"/v1/responses/input_tokens", "/v1/messages/count_tokens"})


def is_object_route(path: str, method: str) -> bool:
    """Routes that read or change stored objects (a browser must not reach them by default)."""
    if path in _NOT_OBJECTS:
        return False
    if path.startswith(_OBJECT_PREFIXES):
        return True
    return path == "/v1/chat/completions" and method == "GET"


_VARY_ORIGIN = {"Vary": "Origin"}


def base_headers(request: web.Request, headers: dict[str, str]) -> dict[str, str]:
    """The app's CORS headers for a browser's request, or none on object routes unless
    ``server.cors_objects``.

    Browsers send ``Origin`` on every cross-origin request (preflights included), and CORS
    headers mean nothing to any other client: a request without one gets only ``Vary:
    Origin`` (a cache must not hand its answer to a browser), which spares SDK and
    server-to-server traffic the long ``Access-Control-Expose-Headers``.
    """
    if not request.app[CONFIG].server.cors_objects:
        method = request.method
        if method == "OPTIONS":  # a preflight asks about the method to come
            method = request.headers.get("Access-Control-Request-Method", method)
        if is_object_route(request.path, method.upper()):
            return {}
    return headers if "Origin" in request.headers else _VARY_ORIGIN


@web.middleware
async def tenancy_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS:
        return await handler(request)
    app = request.app
    ctx = request[CONTEXT]
    keyring = app[KEYRING]
    tenant = None
    if keyring.required:  # else one anonymous tenant: no key to read
        tenant = await keyring.authenticate(
            request.headers.get("Authorization", ""), request.headers.get("x-api-key", "")
        )
    if tenant is not None:
        ctx.tenant = tenant.name
        ctx.allowed_types = tenant.allowed_types
        ctx.allowed_backends = tenant.allowed_backends
    generation = request.method == "POST" and request.path in GENERATION_PATHS
    counters = app[METRICS].tenants
    status = 500
    if generation and tenant is not None and tenant.limited:
        # Checked while the body is read and planned; dispatch awaits the verdict together
        # with the prefix lookup, so a limited key costs no extra round trip of latency.
        admission = asyncio.ensure_future(_admit(app[LIMITER], counters, ctx, tenant))
        admission.add_done_callback(_retrieved)  # a request that never dispatches drops it
        ctx.admission = admission
    try:
        response = await handler(request)
        status = response.status
        return response
    except RouterError as exc:
        status = exc.http_status
        raise
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away (nginx's convention)
        raise
    finally:
        if generation:
            counters.observe(ctx, request.headers.get("X-Title"), status)
            if tenant is not None and tenant.tpm:
                used = tokens_used(ctx, request.content_length or 0)
                app[LIMITER].charge(tenant.name, tenant.tpm, used)


def _retrieved(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a 429 nobody awaited is not an unhandled error


async def _admit(
    limiter: RateLimiter, counters: TenantCounters, ctx: RequestContext, tenant: Tenant
) -> None:
    verdict: Verdict = await limiter.admit(tenant.name, tenant.rpm, tenant.tpm)
    ctx.rate_limit = verdict
    if verdict.bypassed:
        counters.bypass()
        return
    if verdict.admitted:
        return
    limit = verdict.exceeded or "requests"
    counters.rejected(tenant.name, limit)
    wait = verdict.retry_after
    unit = "rpm" if limit == "requests" else "tpm"
    cap = tenant.rpm if limit == "requests" else tenant.tpm
    raise RateLimited(
        f"Rate limit reached for {tenant.name} on {limit} per minute ({unit}): limit {cap}. "
        f"Please try again in {wait:.3g}s.",
        code="rate_limit_exceeded",
        headers={
            "Retry-After": str(max(1, math.ceil(wait))),
            "retry-after-ms": str(max(1, math.ceil(wait * 1000))),
        },
    )


async def tenancy_ctx(app: web.Application) -> AsyncIterator[None]:
    """The key ring (with Redis keys when enabled) and the limiter."""
    config = app[CONFIG]
    redis_keys = None
    if config.server.redis_keys:
        objects = app[OBJECTS]
        if not isinstance(objects, RedisObjectStore):
            raise RuntimeError("server.redis_keys needs objects.redis_url or cache.redis_url")
        redis_keys = RedisKeyStore(objects.redis, key_prefix=config.cache.key_prefix)
    app[KEYRING] = KeyRing(config, redis_keys)
    store = app[STORE]
    limiter: RateLimiter
    if LIMITER in app:
        limiter = app[LIMITER]
    elif isinstance(store, RedisPrefixStore):
        limiter = RedisRateLimiter(
            store.redis,
            key_prefix=config.cache.key_prefix,
            timeout=config.cache.timeout_ms / 1000,
            retry_after=config.cache.retry_after,
        )
    else:
        limiter = MemoryRateLimiter()
    app[LIMITER] = limiter
    yield
    await limiter.flush()
