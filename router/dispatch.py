"""From a validated request to an open upstream response: classify, place, send, report.

This is the request's path through the router's pieces, in order; each piece lives in its own
module. ``plan`` is pure (classify, prefix chain); ``dispatch`` costs one prefix-index round
trip (``router.placement``) and the upstream call. ``router.retry`` tries the ranked candidates
of the route's pools in order before the first byte (what is retried, and what is not, is
written there); each attempt's outcome is reported at one point, ``_report``, which placement
(prefix holders) and replica health (the circuit breaker) learn from.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import aiohttp

from router.balancer import Balancer, Pool, Replica
from router.chain import NO_PREFIX, PrefixChain, build_chain, prompt_chain
from router.classify import RequestType, classify
from router.config import BackendConfig, RouterConfig
from router.context import RequestContext
from router.errors import UpstreamError, UpstreamTimeout
from router.health import Failure
from router.picker import Picker
from router.placement import Outcome, Placement, Placer
from router.prefix import Markers, check_marker_places, find_markers
from router.retry import Attempts, Route, Verdict, end
from router.rewrite import Outgoing
from router.store import PrefixStore
from router.survey import survey_of
from router.tenants import cache_salt, cache_scope, check_route, scoped_namespace
from router.upstream import DEFAULT_MAX_BODY, Disconnected, Unreachable

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Plan:
    """Where a request is meant to go, decided from its body alone."""

    request_type: RequestType
    pool: Pool
    chain: PrefixChain
    markers: Markers | None = None  # where the body's cache_control keys are, if any
    fallbacks: tuple[Pool, ...] = ()  # the route's other pools, tried in order
    scope: str | None = None  # the tenant whose KV the request may share (tenants.cache_scope)
    effort: str | None = None  # the request's effort level, for the backend's reasoning_effort

    @property
    def backend(self) -> BackendConfig:
        return self.pool.backend

    @property
    def cache_salt(self) -> str | None:
        """vLLM's ``cache_salt`` for the tenant, when this pool's backend takes one."""
        return cache_salt(self.scope) if self.backend.cache_salt else None

    def on(self, pool: Pool) -> Plan:
        """This plan for a fallback ``pool``: its backend's settings shape the body."""
        return replace(self, pool=pool)

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
    broken: bool = False  # the answer broke off after its headers
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
        self._session = session
        routes = config.routes
        self._documents = routes.enabled("document")
        self._long = config.classify.long_threshold if routes.enabled("long") else None
        self._attempts = Attempts(config.routing, session)
        self._routes: dict[tuple[RequestType, str | None], list[Pool]] = {}
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
        surveyed = survey_of(chat_body, ctx.survey)
        request_type = classify(
            chat_body, documents=self._documents, long_threshold=self._long, surveyed=surveyed
        )
        ctx.request_type = request_type.value
        # The pools for (type, effort): `code@high` when configured, else `code`; then fallbacks.
        pool, *fallbacks = self._pools(request_type, ctx.effort)
        backend = pool.backend
        ctx.backend = backend.name
        check_route(ctx, request_type.value, backend.name)  # 403 for a key without the right
        scope = cache_scope(self._config, ctx)
        automatic = self._cache.automatic
        chain, markers = NO_PREFIX, None
        if automatic or raw is None or b'"cache_control"' in raw:
            found = find_markers(chat_body, surveyed)
            check_marker_places(chat_body, surveyed)
            markers = found if found.keys else None
            chain = build_chain(
                chat_body,
                scoped_namespace(self._namespace(backend, chat_body), scope),
                min_tokens=backend.cache.min_tokens,
                automatic=automatic,
                automatic_min_tokens=self._cache.automatic_min_tokens,
                markers=found,
            )
        return Plan(
            request_type,
            pool,
            chain,
            markers,
            fallbacks=tuple(fallbacks),
            scope=scope,
            effort=ctx.effort,
        )

    def plan_completion(self, body: dict[str, Any], ctx: RequestContext) -> Plan:
        """A legacy completion: always ``text`` (a prompt string carries no messages, tools
        or formats), with automatic prefixes at fixed boundaries of its prompt
        (``chain.prompt_chain``) while automatic prefixes are on."""
        plan = self.plan({"model": body["model"]}, ctx)
        if not self._cache.automatic:
            return plan
        backend = plan.backend
        namespace = scoped_namespace(self._namespace(backend, body), plan.scope)
        least = max(backend.cache.min_tokens, self._cache.automatic_min_tokens)
        return replace(plan, chain=prompt_chain(body.get("prompt"), namespace, least))

    def _pools(self, request_type: RequestType, effort: str | None) -> list[Pool]:
        key = (request_type, effort)
        pools = self._routes.get(key)
        if pools is None:
            # Types and effort levels are a few fixed values: the table stays small.
            by_name = self._balancer.pools
            names = self._config.routes.pools_for(request_type, effort)
            pools = self._routes[key] = [by_name[name] for name in names]
        return pools

    @staticmethod
    def _namespace(backend: BackendConfig, chat_body: dict[str, Any]) -> str:
        """Prefix keys of one pool and upstream model never meet another's."""
        return f"{backend.name}\x00{backend.model or chat_body.get('model')}"

    @asynccontextmanager
    async def dispatch(
        self, ctx: RequestContext, plan: Plan, path: str, outgoing: Outgoing
    ) -> AsyncIterator[Routed]:
        """Open the upstream request; the replica counts it in flight until the block exits."""
        first = await self._admitted(ctx, plan)

        async def prepare(pool: Pool) -> Route[Placement]:
            if pool is plan.pool:
                placement = (
                    await first if first is not None else await self.placer.place(pool, plan.chain)
                )
                payload = outgoing.payload(plan)
                return Route(pool, placement.ranking.candidates, payload, placement)
            # A fallback pool: no affinity there (the index speaks for the first pool only),
            # and a body shaped by its own backend's settings.
            placement = await self.placer.place(pool, NO_PREFIX)
            payload = outgoing.payload(plan.on(pool))
            return Route(pool, placement.ranking.candidates, payload, placement)

        def sending(route: Route[Placement], replica: Replica) -> None:
            ctx.cache = route.placement.cache(replica)
            ctx.prefix_tokens = route.placement.prefix_tokens(replica)
            self.placer.dispatched(route.placement, replica)

        def failed(route: Route[Placement], replica: Replica, exc: UpstreamError) -> Verdict:
            return self._report(route.placement, replica, _outcome_of(exc), error=exc)

        pools = [plan.pool, *plan.fallbacks]
        opened = await self._attempts.open(
            ctx, pools, prepare, path, sending=sending, failed=failed
        )
        placement = opened.route.placement
        routed = Routed(
            opened.response,
            opened.replica,
            ctx.cache or "none",
            body_limit=self._config.upstream.max_body_size,
        )
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
            end(routed.replica, opened.token)
            routed.response.close()
            self._report(
                placement, routed.replica, outcome, ctx.usage.cached_tokens if ctx.usage else None
            )

    async def _admitted(self, ctx: RequestContext, plan: Plan) -> asyncio.Future[Placement] | None:
        """Wait for the key's limit check, if one is under way, while the primary pool's
        prefix lookup runs beside it (one round trip of latency for both); a 429 is raised
        here, before anything is sent. Returns the lookup under way, if any."""
        admission, ctx.admission = ctx.admission, None
        if admission is None:
            return None
        lookup = asyncio.ensure_future(self.placer.place(plan.pool, plan.chain))
        try:
            await admission
        except BaseException:
            lookup.add_done_callback(_retrieved)  # the lookup ends on its own; nobody waits
            raise
        return lookup

    def _report(
        self,
        placement: Placement,
        replica: Replica,
        outcome: Outcome,
        cached_tokens: int | None = None,
        *,
        error: UpstreamError | None = None,
    ) -> Verdict:
        """The one place each attempt's outcome is reported: placement (prefix holders) and
        health (the breaker). ``error`` is the failure of an attempt that got no headers."""
        # metrics: attempt outcome per replica (issue 12)
        verdict = self._attempts.judge(error) if error is not None else _verdict_of(outcome)
        health = replica.health
        if verdict.answered:
            health.succeeded()
        elif verdict.failure is None:
            health.abandoned()
        else:
            health.failed(verdict.failure, self._attempts.now(), verdict.retry_after)
        self.placer.report(placement, replica, outcome, cached_tokens)
        return verdict


def _retrieved(task: asyncio.Future[Placement]) -> None:
    if not task.cancelled():
        task.exception()


def _verdict_of(outcome: Outcome) -> Verdict:
    """How an answered attempt ends counts for the breaker: a stream that broke off after its
    headers is a failure (never retried: bytes may have reached the client)."""
    if outcome is Outcome.OK:
        return Verdict(None, retry=False, answered=True)
    if outcome in (Outcome.BROKEN, Outcome.TIMEOUT):
        return Verdict(Failure.DISCONNECT, retry=False)
    return Verdict(None, retry=False)


def _outcome_of(exc: UpstreamError) -> Outcome:
    if isinstance(exc, Unreachable):
        return Outcome.ABANDONED if exc.stale else Outcome.REFUSED
    if isinstance(exc, Disconnected):
        return Outcome.BROKEN
    if isinstance(exc, UpstreamTimeout):
        return Outcome.TIMEOUT
    status = exc.upstream_status
    if status is None or status >= 500:
        return Outcome.ERROR
    return Outcome.BUSY if status == 429 else Outcome.REJECTED
