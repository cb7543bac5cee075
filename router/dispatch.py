"""From a validated request to an open upstream response: classify, look up, pick, send.

This is the request's path through the router's pieces, in order; each piece lives in its own
module. ``plan`` is pure; ``dispatch`` costs one prefix-store round trip and the upstream call,
and retries another replica when one cannot be connected to (nothing was sent, so it is safe).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from router.balancer import Balancer, Pool, Replica
from router.classify import RequestType, classify
from router.config import BackendConfig, RouterConfig
from router.context import RequestContext
from router.prefix import Breakpoint, find_breakpoints, strip_cache_control
from router.store import PrefixHit, PrefixStore, StoreUnavailable
from router.upstream import Unreachable, send

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Plan:
    """Where a request is meant to go, decided from its body alone."""

    request_type: RequestType
    pool: Pool
    breakpoints: list[Breakpoint]  # shortest first; only those long enough to be cached
    marked: bool  # the body carries cache_control markers (to strip before forwarding)

    @property
    def backend(self) -> BackendConfig:
        return self.pool.backend


@dataclass(slots=True)
class Routed:
    """An upstream response in flight, and where it came from."""

    response: aiohttp.ClientResponse
    replica: Replica
    cache: str


class Dispatcher:
    def __init__(
        self,
        config: RouterConfig,
        balancer: Balancer,
        store: PrefixStore,
        session: Callable[[], aiohttp.ClientSession],
    ) -> None:
        self._config = config
        self._balancer = balancer
        self._store = store
        self._session = session
        self._routes = {t: balancer.pools[config.routes.backend_for(t)] for t in RequestType}
        self._affinity = config.routing.policy == "prefix_affinity"

    def plan(
        self, chat_body: dict[str, Any], ctx: RequestContext, raw: bytes | None = None
    ) -> Plan:
        """Classify a chat-shaped body and compute its prefix keys; raises InvalidRequest.

        ``raw``, the body's bytes when it came as is, lets most requests skip the breakpoint
        walk: without the key's bytes anywhere there can be no marker.
        """
        request_type = classify(chat_body)
        ctx.request_type = request_type.value
        pool = self._routes[request_type]
        backend = pool.backend
        ctx.backend = backend.name
        if raw is not None and b'"cache_control"' not in raw:
            return Plan(request_type, pool, [], marked=False)
        namespace = f"{backend.name}\x00{backend.model or chat_body.get('model')}"
        found = find_breakpoints(chat_body, namespace)
        minimum = backend.cache.min_tokens
        breakpoints = [bp for bp in found if bp.tokens >= minimum] if minimum else found
        return Plan(request_type, pool, breakpoints, marked=bool(found))

    def payload(self, body: dict[str, Any], raw: bytes | None, plan: Plan) -> bytes:
        """The bytes to send upstream: the client's body, changed only where the backend says."""
        backend = plan.backend
        changed = body
        if backend.model and body.get("model") != backend.model:
            changed = {**changed, "model": backend.model}
        if plan.marked and not backend.forward_cache_control:
            changed = strip_cache_control(changed)
        if backend.prompt_cache_key and plan.breakpoints and "prompt_cache_key" not in body:
            changed = {**changed, "prompt_cache_key": plan.breakpoints[-1].key}
        if changed is body and raw is not None:
            return raw
        return orjson.dumps(changed)

    @asynccontextmanager
    async def dispatch(
        self, ctx: RequestContext, plan: Plan, path: str, payload: bytes
    ) -> AsyncIterator[Routed]:
        """Open the upstream request; the replica counts it in flight until the block exits."""
        hit, cache = await self._lookup(plan)
        tie_key = plan.breakpoints[-1].key if plan.breakpoints else None
        choice = self._balancer.pick(plan.pool, warm=hit.replica if hit else None, tie_key=tie_key)
        if choice.affinity:
            cache = "hit"
        # A hit on the longest prefix is refreshed by the lookup itself; anything else is new.
        if not (choice.affinity and hit is not None and hit.index == len(plan.breakpoints) - 1):
            self._remember(plan, choice.replica, cache)
        routed = await self._send(ctx, plan, choice.replica, cache, path, payload, tie_key)
        try:
            yield routed
        finally:
            routed.replica.in_flight -= 1
            routed.response.close()

    def _remember(self, plan: Plan, replica: Replica, cache: str) -> None:
        # Recorded at dispatch, not on completion, so a burst of first requests for one new
        # prefix converges on this replica instead of scattering.
        if cache != "bypass" and self._affinity and plan.breakpoints:
            self._store.record(plan.breakpoints, replica.id)

    async def _send(
        self,
        ctx: RequestContext,
        plan: Plan,
        replica: Replica,
        cache: str,
        path: str,
        payload: bytes,
        tie_key: str | None,
    ) -> Routed:
        """Send to ``replica``; one that cannot be connected to is rested and another tried."""
        tried: list[Replica] = []
        while True:
            ctx.replica = replica.id
            ctx.cache = cache
            replica.in_flight += 1
            sent = time.perf_counter()
            ctx.router_ms = (sent - ctx.started) * 1000
            try:
                response = await send(
                    self._session(), replica, path, payload, ctx.upstream_headers()
                )
            except Unreachable:
                replica.in_flight -= 1
                self._balancer.mark_failed(replica)
                tried.append(replica)
                retries = self._config.routing.retries
                if len(tried) > retries or len(tried) >= len(plan.pool.replicas):
                    raise
                log.warning(
                    "request %s: replica %s unreachable, retrying elsewhere",
                    ctx.request_id,
                    replica.id,
                )
                replica = self._balancer.pick(plan.pool, tie_key=tie_key, exclude=tried).replica
                self._remember(plan, replica, cache)
                cache = "miss" if cache == "hit" else cache
                continue
            except BaseException:
                replica.in_flight -= 1
                raise
            if replica.down_until:
                self._balancer.mark_ok(replica)
            ctx.upstream_ms = (time.perf_counter() - sent) * 1000
            return Routed(response, replica, cache)

    async def _lookup(self, plan: Plan) -> tuple[PrefixHit | None, str]:
        if not plan.breakpoints:
            return None, "none"
        if not self._affinity:
            return None, "miss"
        try:
            return await self._store.lookup(plan.breakpoints), "miss"
        except StoreUnavailable:
            return None, "bypass"
