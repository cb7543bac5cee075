"""From a validated request to an open upstream response: classify, place, send, report.

This is the request's path through the router's pieces, in order; each piece lives in its own
module. ``plan`` is pure (classify, prefix chain); ``dispatch`` costs one prefix-index round
trip (``router.placement``) and the upstream call, tries the ranked candidates in order while
a replica cannot be connected to (nothing was sent, so it is safe), and reports each attempt's
outcome at one point, ``_report``, which placement and replica health learn from.
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
from router.chain import NO_PREFIX, PrefixChain, build_chain
from router.classify import RequestType, classify
from router.config import BackendConfig, RouterConfig
from router.context import RequestContext
from router.errors import UpstreamError, UpstreamTimeout
from router.picker import Picker
from router.placement import Outcome, Placement, Placer
from router.prefix import Markers, find_markers, strip_cache_control
from router.store import PrefixStore
from router.upstream import Unreachable, send

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Plan:
    """Where a request is meant to go, decided from its body alone."""

    request_type: RequestType
    pool: Pool
    chain: PrefixChain
    markers: Markers | None = None  # where the body's cache_control keys are, if any

    @property
    def backend(self) -> BackendConfig:
        return self.pool.backend

    @property
    def marked(self) -> bool:
        """The body carries cache_control markers (to strip before forwarding)."""
        return self.chain.marked

    @property
    def prompt_cache_key(self) -> str | None:
        """OpenAI's ``prompt_cache_key`` for backends that take one: the request's first
        prefix key, the one its neighbours share."""
        return self.chain.placement_key


@dataclass(slots=True)
class Routed:
    """An upstream response in flight, where it came from, and what its answer said."""

    response: aiohttp.ClientResponse
    replica: Replica
    cache: str
    cached_tokens: int | None = None  # usage.prompt_tokens_details.cached_tokens, when seen
    broken: bool = False  # the answer broke off after its headers


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
        self._session = session
        self._routes = {t: balancer.pools[config.routes.backend_for(t)] for t in RequestType}
        self._cache = config.cache
        self.placer = Placer(
            store,
            Picker(config.routing),
            affinity=config.routing.policy == "prefix_affinity",
        )

    def plan(
        self, chat_body: dict[str, Any], ctx: RequestContext, raw: bytes | None = None
    ) -> Plan:
        """Classify a chat-shaped body and compute its prefix chain; raises InvalidRequest.

        ``raw``, the body's bytes when it came as is, lets unmarked requests skip the marker
        walk when automatic prefixes are off: without the key's bytes there is no marker.
        """
        request_type = classify(chat_body)
        ctx.request_type = request_type.value
        pool = self._routes[request_type]
        backend = pool.backend
        ctx.backend = backend.name
        automatic = self._cache.automatic
        if not automatic and raw is not None and b'"cache_control"' not in raw:
            return Plan(request_type, pool, NO_PREFIX)
        markers = find_markers(chat_body)
        chain = build_chain(
            chat_body,
            self._namespace(backend, chat_body),
            min_tokens=backend.cache.min_tokens,
            automatic=automatic,
            automatic_min_tokens=self._cache.automatic_min_tokens,
            markers=markers,
        )
        return Plan(request_type, pool, chain, markers if markers.keys else None)

    @staticmethod
    def _namespace(backend: BackendConfig, chat_body: dict[str, Any]) -> str:
        """Prefix keys of one pool and upstream model never meet another's."""
        return f"{backend.name}\x00{backend.model or chat_body.get('model')}"

    def payload(self, body: dict[str, Any], raw: bytes | None, plan: Plan) -> bytes:
        """The bytes to send upstream: the client's body, changed only where the backend says."""
        backend = plan.backend
        changed = body
        if backend.model and body.get("model") != backend.model:
            changed = {**changed, "model": backend.model}
        strip = plan.markers is not None and not backend.forward_cache_control
        key = plan.prompt_cache_key
        if backend.prompt_cache_key and key and "prompt_cache_key" not in body:
            changed = {**changed, "prompt_cache_key": key}
        if changed is body and raw is not None and not strip:
            return raw
        if strip:
            changed = strip_cache_control(changed)
        return orjson.dumps(changed)

    @asynccontextmanager
    async def dispatch(
        self, ctx: RequestContext, plan: Plan, path: str, payload: bytes
    ) -> AsyncIterator[Routed]:
        """Open the upstream request; the replica counts it in flight until the block exits."""
        placement = await self.placer.place(plan.pool, plan.chain)
        routed = await self._send(ctx, placement, path, payload)
        outcome = Outcome.ABANDONED
        try:
            yield routed
            outcome = Outcome.BROKEN if routed.broken else Outcome.OK
        except UpstreamTimeout:
            outcome = Outcome.TIMEOUT
            raise
        except UpstreamError:
            outcome = Outcome.BROKEN
            raise
        finally:
            routed.replica.in_flight -= 1
            routed.response.close()
            self._report(placement, routed.replica, outcome, routed.cached_tokens)

    async def _send(
        self, ctx: RequestContext, placement: Placement, path: str, payload: bytes
    ) -> Routed:
        """Try the ranked candidates while one cannot be connected to, up to the retries."""
        candidates = placement.ranking.candidates
        attempts = min(len(candidates), self._config.routing.retries + 1)
        for number, replica in enumerate(candidates[:attempts], start=1):
            cache = placement.cache(replica)
            ctx.replica = replica.id
            ctx.cache = cache
            ctx.prefix_tokens = placement.prefix_tokens(replica)
            self.placer.dispatched(placement, replica)
            replica.in_flight += 1
            sent = time.perf_counter()
            ctx.router_ms = (sent - ctx.started) * 1000
            try:
                response = await send(
                    self._session(), replica, path, payload, {"X-Request-Id": ctx.request_id}
                )
            except Unreachable:
                replica.in_flight -= 1
                self._report(placement, replica, Outcome.REFUSED)
                if number == attempts:
                    raise
                log.warning(
                    "request %s: replica %s unreachable, retrying elsewhere",
                    ctx.request_id,
                    replica.id,
                )
                continue
            except UpstreamError as exc:
                replica.in_flight -= 1
                self._report(placement, replica, _outcome_of(exc))
                raise
            except BaseException:
                replica.in_flight -= 1
                self._report(placement, replica, Outcome.ABANDONED)
                raise
            ctx.upstream_ms = (time.perf_counter() - sent) * 1000
            return Routed(response, replica, cache)
        raise AssertionError("unreachable: the picker never returns an empty ranking")

    def _report(
        self,
        placement: Placement,
        replica: Replica,
        outcome: Outcome,
        cached_tokens: int | None = None,
    ) -> None:
        """The one place each attempt's outcome is reported (placement and health)."""
        # metrics: attempt outcome per replica (issue 12)
        if outcome.replica_fault:
            self._balancer.mark_failed(replica)
        elif outcome is Outcome.OK and replica.down_until:
            self._balancer.mark_ok(replica)
        self.placer.report(placement, replica, outcome, cached_tokens)


def _outcome_of(exc: UpstreamError) -> Outcome:
    if isinstance(exc, UpstreamTimeout):
        return Outcome.TIMEOUT
    status = exc.upstream_status
    if status is None or status >= 500:
        return Outcome.ERROR
    return Outcome.BUSY if status == 429 else Outcome.REJECTED
