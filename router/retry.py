"""Trying replicas, then fallback pools, until one answers with response headers.

What is retried on another replica (and, when a pool is used up, on the next pool of the
route), always before any byte reached the client:

- ``Unreachable``: the connection was refused or not made within ``timeout.connect``, or a
  pooled keep-alive connection turned out closed by the server: nothing was processed;
- HTTP 429, 502, 503 and 504: the replica said it did not serve the request;
- ``UpstreamTimeout`` before response headers (``timeout.read``): the router closes the
  connection, which makes vLLM and SGLang abort the request.

What is not: a new connection that dropped after the request was sent (``Disconnected``: the
replica may be generating, and a replay would generate and bill twice); any other status (500
included: the same request likely fails the same way; 4xx are the client's); anything once
response headers are in. Every attempt's outcome is reported once, by the caller's
``failed`` (at once) or when the answer ends (see ``router.dispatch``), and feeds the
replica's breaker there.
``routing.retries`` bounds the extra attempts per pool, ``routing.deadline`` all attempts
together; replicas whose breaker is open are not attempted at all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import aiohttp

from router.balancer import Pool, Replica
from router.config import RoutingConfig
from router.context import RequestContext
from router.errors import ServiceUnavailable, UpstreamError, UpstreamTimeout
from router.health import Failure, parse_retry_after
from router.upstream import Disconnected, Unreachable, send

log = logging.getLogger(__name__)

RETRIED_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class Verdict:
    """How one failed attempt counts: against the replica's health, and for a retry."""

    failure: Failure | None  # None: the replica is not to blame
    retry: bool
    retry_after: float | None = None
    answered: bool = False  # the replica answered properly (a 4xx): it counts as healthy


def judge(exc: UpstreamError) -> Verdict:
    """Classify a failed attempt (see the module docstring for the rules)."""
    if isinstance(exc, Unreachable):
        return Verdict(None if exc.stale else Failure.CONNECT, retry=True)
    if isinstance(exc, Disconnected):
        return Verdict(Failure.DISCONNECT, retry=False)
    if isinstance(exc, UpstreamTimeout):
        return Verdict(Failure.TIMEOUT, retry=True)
    status = exc.upstream_status
    if status is None:
        # Redirects and broken answers come from the replica; a refused upstream key does not.
        blamed = exc.code != "upstream_auth_failed"
        return Verdict(Failure.STATUS if blamed else None, retry=False)
    retry_after = _retry_after(exc.headers)
    if status == 429:
        return Verdict(Failure.THROTTLED, retry=True, retry_after=retry_after)
    if status >= 500:
        return Verdict(Failure.STATUS, retry=status in RETRIED_STATUSES, retry_after=retry_after)
    return Verdict(None, retry=False, answered=True)


def _retry_after(headers: dict[str, str]) -> float | None:
    for name, value in headers.items():
        if name.lower() == "retry-after-ms":
            ms = parse_retry_after(value)
            return None if ms is None else ms / 1000
    return parse_retry_after(
        next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    )


P = TypeVar("P")


@dataclass(slots=True)
class Route(Generic[P]):
    """One pool of a request's route: its ranked candidates and the payload it takes.
    ``placement`` is the caller's own record of how the candidates were chosen."""

    pool: Pool
    candidates: Sequence[Replica]
    payload: bytes
    placement: P


@dataclass(slots=True)
class Opened(Generic[P]):
    response: aiohttp.ClientResponse
    replica: Replica
    route: Route[P]
    token: int  # the replica's load gauge token: pass it to ``end`` when the answer is over


def end(replica: Replica, token: int) -> None:
    """A request to ``replica`` is over: out of its in-flight count and its load gauge."""
    replica.in_flight -= 1
    replica.gauge.ended(token)


class Attempts:
    """The attempt loop: the route's pools in order, each pool's candidates in rank order."""

    def __init__(
        self,
        routing: RoutingConfig,
        session: Callable[[], aiohttp.ClientSession],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._routing = routing
        self._session = session
        self._clock = clock

    def now(self) -> float:
        return self._clock()

    @staticmethod
    def judge(exc: UpstreamError) -> Verdict:
        return judge(exc)

    async def open(
        self,
        ctx: RequestContext,
        pools: Sequence[Pool],
        prepare: Callable[[Pool], Awaitable[Route[P]]],
        path: str,
        *,
        sending: Callable[[Route[P], Replica], None],
        failed: Callable[[Route[P], Replica, UpstreamError], Verdict],
    ) -> Opened[P]:
        """The first response with acceptable headers. ``prepare`` ranks a pool (called only
        for the pools reached), ``sending`` sees each attempt start, ``failed`` reports a
        failed attempt and returns its verdict. Raises the last failure, or
        ``ServiceUnavailable`` when no replica of any pool may be tried now."""
        deadline = self._clock() + self._routing.deadline
        last: UpstreamError | None = None
        for index, pool in enumerate(pools):
            route = await prepare(pool)
            tries = 0
            for replica in route.candidates:
                if tries > self._routing.retries:
                    break
                now = self._clock()
                if not replica.usable(now):
                    continue
                if now >= deadline:
                    raise last or UpstreamTimeout("No replica answered before the deadline.")
                tries += 1
                ctx.backend = pool.backend.name
                ctx.fallback = pool.backend.name if index else None  # metrics: fallback used
                sending(route, replica)
                try:
                    response, token = await self._attempt(
                        ctx, replica, path, route.payload, deadline
                    )
                except UpstreamError as exc:
                    verdict = failed(route, replica, exc)
                    self._log(ctx, replica, verdict)
                    if not verdict.retry:
                        raise
                    reason = verdict.failure.value if verdict.failure else "other"
                    ctx.retried.append((pool.backend.name, reason))
                    # metrics: retry by reason and pool (issue 12)
                    last = exc
                    continue
                return Opened(response, replica, route, token)
        if last is not None:
            raise last
        raise _nothing_usable(pools, self._clock())

    async def _attempt(
        self, ctx: RequestContext, replica: Replica, path: str, payload: bytes, deadline: float
    ) -> tuple[aiohttp.ClientResponse, int]:
        """One attempt; on success the replica counts it in flight (the caller ends it with
        ``end``), on failure it is already ended."""
        ctx.attempts += 1
        ctx.replica = replica.id
        replica.in_flight += 1
        token = replica.gauge.sent()
        replica.health.begin(self._clock())
        sent = time.perf_counter()
        if ctx.attempts == 1:
            ctx.router_ms = (sent - ctx.started) * 1000
        try:
            async with asyncio.timeout(deadline - self._clock()):
                response = await send(
                    self._session(), replica, path, payload, ctx.upstream_headers()
                )
        except TimeoutError:
            end(replica, token)
            raise UpstreamTimeout(
                f"No answer from backend {replica.backend.name!r} replica {replica.id!r} "
                "before the request's deadline."
            ) from None
        except UpstreamError:
            end(replica, token)
            raise
        except BaseException:
            end(replica, token)
            replica.health.abandoned()
            raise
        ctx.upstream_ms = (time.perf_counter() - sent) * 1000
        return response, token

    @staticmethod
    def _log(ctx: RequestContext, replica: Replica, verdict: Verdict) -> None:
        log.warning(
            "request %s: attempt %d on replica %s failed (%s)%s",
            ctx.request_id,
            ctx.attempts,
            replica.id,
            verdict.failure.value if verdict.failure else "not the replica's fault",
            ", trying another" if verdict.retry else "",
        )


def _nothing_usable(pools: Sequence[Pool], now: float) -> ServiceUnavailable:
    """Every replica rests: say so at once, with the soonest time one may be back."""
    rests = [
        r.health.open_until - now
        for p in pools
        for r in p.replicas
        if not r.health.needs_answer and r.health.open_until > now
    ]
    wait = max(1, round(min(rests))) if rests else 5
    names = ", ".join(repr(p.backend.name) for p in pools)
    return ServiceUnavailable(
        f"No replica of backend {names} is available right now; retry shortly.",
        code="no_healthy_replica",
        headers={"Retry-After": str(wait)},
    )
