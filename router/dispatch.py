"""From a validated request to an open upstream response: classify, look up, pick, send.

This is the request's path through the router's pieces, in order; each piece lives in its own
module. ``plan`` is pure; ``dispatch`` costs one prefix-store round trip and the upstream call;
what is retried where (other replicas, fallback pools) is ``router/retry.py``'s business.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
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
from router.retry import Attempts
from router.store import PrefixHit, PrefixStore, StoreUnavailable
from router.upstream import DEFAULT_MAX_BODY

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Plan:
    """Where a request is meant to go, decided from its body alone."""

    request_type: RequestType
    pool: Pool
    breakpoints: list[Breakpoint]  # shortest first; only those long enough to be cached
    marked: bool  # the body carries cache_control markers (to strip before forwarding)
    model: str | None = None  # the client's model id (a fallback pool may need it back)

    @property
    def backend(self) -> BackendConfig:
        return self.pool.backend


@dataclass(slots=True)
class Routed:
    """An upstream response in flight, and where it came from."""

    response: aiohttp.ClientResponse
    replica: Replica
    cache: str
    body_limit: int = DEFAULT_MAX_BODY  # upstream.max_body_size


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
        self._fallbacks = {
            t: [balancer.pools[name] for name in config.routes.pools_for(t)[1:]]
            for t in RequestType
        }
        self._attempts = Attempts(config.routing, session)
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
        model = chat_body.get("model")
        model = model if isinstance(model, str) else None
        if raw is not None and b'"cache_control"' not in raw:
            return Plan(request_type, pool, [], marked=False, model=model)
        namespace = f"{backend.name}\x00{backend.model or chat_body.get('model')}"
        found = find_breakpoints(chat_body, namespace)
        minimum = backend.cache.min_tokens
        breakpoints = [bp for bp in found if bp.tokens >= minimum] if minimum else found
        return Plan(request_type, pool, breakpoints, marked=bool(found), model=model)

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
        ctx.cache = cache

        def ranking(pool: Pool, tried: Sequence[Replica]) -> list[Replica]:
            if pool is plan.pool and not tried:
                return [choice.replica]
            replica = self._balancer.pick(pool, tie_key=tie_key, exclude=tried).replica
            if replica in tried:
                return []
            if pool is plan.pool:
                self._remember(plan, replica, ctx.cache or "none")
                ctx.cache = "miss" if ctx.cache == "hit" else ctx.cache
            return [replica]

        pools = [plan.pool, *self._fallbacks[plan.request_type]]
        opened = await self._attempts.open(
            ctx, pools, ranking, path, lambda pool: self._payload_for(pool, plan, payload)
        )
        if opened.pool is not plan.pool:
            ctx.cache = "none"  # the prefix index speaks for the first pool only
        routed = Routed(
            opened.response,
            opened.replica,
            ctx.cache or "none",
            self._config.upstream.max_body_size,
        )
        try:
            yield routed
        finally:
            routed.replica.in_flight -= 1
            routed.response.close()

    def _payload_for(self, pool: Pool, plan: Plan, payload: bytes) -> bytes:
        """A fallback pool's payload: the first pool's, with this backend's model name (or the
        client's, when this backend names none)."""
        if pool is plan.pool:
            return payload
        wanted = pool.backend.model or plan.model
        if wanted is None or wanted == (plan.backend.model or plan.model):
            return payload
        body = orjson.loads(payload)
        body["model"] = wanted
        return orjson.dumps(body)

    def _remember(self, plan: Plan, replica: Replica, cache: str) -> None:
        # Recorded at dispatch, not on completion, so a burst of first requests for one new
        # prefix converges on this replica instead of scattering.
        if cache != "bypass" and self._affinity and plan.breakpoints:
            self._store.record(plan.breakpoints, replica.id)

    async def _lookup(self, plan: Plan) -> tuple[PrefixHit | None, str]:
        if not plan.breakpoints:
            return None, "none"
        if not self._affinity:
            return None, "miss"
        try:
            return await self._store.lookup(plan.breakpoints), "miss"
        except StoreUnavailable:
            return None, "bypass"
