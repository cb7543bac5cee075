"""Per-key limits: requests and tokens per minute, as two token buckets per tenant.

A bucket holds up to a minute's allowance and refills continuously (``rpm / 60`` a second), so a
key may burst up to its per-minute limit and then runs at its rate. A request is admitted when
its tenant's request bucket holds a whole request and its token bucket holds at least one token;
the tokens the backend reports afterwards are taken from the token bucket, which may go into
debt (a large answer delays the next requests, as the per-minute average demands).

With Redis (``cache.redis_url``) the buckets are Redis hashes updated by one Lua script, atomic
and on Redis's clock, so every router process shares them: one round trip per limited request,
none for keys without limits. Keys: ``<prefix>rl:<tenant>:req`` and ``:tok``, TTL = time to refill.
Without Redis each process keeps its own buckets: N routers behind a load balancer then admit up
to N times the limit. When Redis fails or is slow the limiter fails OPEN (the request is served,
``X-DI-RateLimit: bypass``) and rests Redis for ``cache.retry_after`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

WINDOW_MS = 60_000

# KEYS: request bucket, token bucket. ARGV: rpm (0 = unlimited), tpm (0 = unlimited).
# Returns {admitted, request level x1000, token level x1000}: Lua numbers come back as integers.
_ADMIT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function level(key, cap)
  local v = redis.call('HMGET', key, 'l', 't')
  local l = tonumber(v[1])
  if not l then return cap end
  return math.min(cap, l + (now - tonumber(v[2])) * cap / 60000)
end
local function save(key, l, cap)
  redis.call('HSET', key, 'l', l, 't', now)
  redis.call('PEXPIRE', key, math.ceil((cap - l) * 60000 / cap) + 1000)
end
local rpm = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])
local req = rpm > 0 and level(KEYS[1], rpm) or 0
local tok = tpm > 0 and level(KEYS[2], tpm) or 0
local ok = (rpm == 0 or req >= 1) and (tpm == 0 or tok >= 1)
if ok and rpm > 0 then
  req = req - 1
  save(KEYS[1], req, rpm)
end
return {ok and 1 or 0, math.floor(req * 1000), math.floor(tok * 1000)}
"""

# KEYS: token bucket. ARGV: tpm, tokens used.
_CHARGE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cap = tonumber(ARGV[1])
local v = redis.call('HMGET', KEYS[1], 'l', 't')
local l = tonumber(v[1])
if l then l = math.min(cap, l + (now - tonumber(v[2])) * cap / 60000) else l = cap end
l = l - tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'l', l, 't', now)
redis.call('PEXPIRE', KEYS[1], math.ceil((cap - l) * 60000 / cap) + 1000)
return 1
"""


@dataclass(frozen=True, slots=True)
class Bucket:
    """One limited bucket of a tenant, as the decision left it."""

    kind: str  # "requests" | "tokens"
    limit: int  # per minute
    remaining: int
    reset_seconds: float  # until the bucket is full again


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a request may go, and the buckets that say why."""

    admitted: bool
    buckets: tuple[Bucket, ...] = ()
    retry_after: float = 0.0  # seconds until a request would be admitted
    exceeded: str | None = None  # "requests" | "tokens"
    bypassed: bool = False  # the counters could not be read: failed open

    @property
    def headers(self) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers, or ``X-DI-RateLimit: bypass``."""
        if self.bypassed:
            return {"X-DI-RateLimit": "bypass"}
        headers: dict[str, str] = {}
        for bucket in self.buckets:
            headers[f"x-ratelimit-limit-{bucket.kind}"] = str(bucket.limit)
            headers[f"x-ratelimit-remaining-{bucket.kind}"] = str(bucket.remaining)
            headers[f"x-ratelimit-reset-{bucket.kind}"] = duration(bucket.reset_seconds)
        return headers


def verdict(rpm: int | None, tpm: int | None, admitted: bool, req: float, tok: float) -> Verdict:
    """The buckets and the wait from their levels after the decision."""
    buckets: list[Bucket] = []
    waits: dict[str, float] = {}
    for kind, cap, level in (("requests", rpm, req), ("tokens", tpm, tok)):
        if not cap:
            continue
        reset = max(0.0, cap - level) * 60 / cap
        buckets.append(Bucket(kind, cap, max(0, math.floor(level)), reset))
        if level < 1:
            waits[kind] = (1 - level) * 60 / cap
    if admitted:
        return Verdict(True, tuple(buckets))
    exceeded = max(waits, key=lambda k: waits[k]) if waits else "requests"
    return Verdict(False, tuple(buckets), waits.get(exceeded, 1.0), exceeded)


def duration(seconds: float) -> str:
    """OpenAI's reset format: ``120ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


class RateLimiter(ABC):
    @abstractmethod
    async def admit(self, tenant: str, rpm: int | None, tpm: int | None) -> Verdict:
        """Take one request from the tenant's allowance, if its buckets allow it."""

    @abstractmethod
    def charge(self, tenant: str, tpm: int, tokens: int) -> None:
        """Take the tokens a finished request used; never makes the request wait."""

    async def flush(self) -> None:  # noqa: B027 - optional hook
        """Wait for charges still on their way (shutdown, tests)."""


class MemoryRateLimiter(RateLimiter):
    """This process's own buckets (one router, or limits per router process)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}
        self._clock = clock

    def _level(self, key: tuple[str, str], cap: int, now: float) -> float:
        held = self._buckets.get(key)
        if held is None:
            return float(cap)
        level, at = held
        return min(float(cap), level + (now - at) * cap / 60)

    async def admit(self, tenant: str, rpm: int | None, tpm: int | None) -> Verdict:
        now = self._clock()
        req = self._level((tenant, "req"), rpm, now) if rpm else 0.0
        tok = self._level((tenant, "tok"), tpm, now) if tpm else 0.0
        admitted = (not rpm or req >= 1) and (not tpm or tok >= 1)
        if admitted and rpm:
            req -= 1
            self._buckets[(tenant, "req")] = (req, now)
        return verdict(rpm, tpm, admitted, req, tok)

    def charge(self, tenant: str, tpm: int, tokens: int) -> None:
        now = self._clock()
        level = self._level((tenant, "tok"), tpm, now)
        self._buckets[(tenant, "tok")] = (level - tokens, now)


class RedisRateLimiter(RateLimiter):
    def __init__(
        self, redis: Redis, *, key_prefix: str, timeout: float, retry_after: float
    ) -> None:
        self.redis = redis
        self._prefix = key_prefix
        self._timeout = timeout
        self._retry_after = retry_after
        self._down_until = 0.0
        self._admit = redis.register_script(_ADMIT_LUA)
        self._charge = redis.register_script(_CHARGE_LUA)
        self._pending: set[asyncio.Task[None]] = set()

    def key(self, tenant: str, kind: str) -> str:
        return f"{self._prefix}rl:{tenant}:{kind}"

    async def admit(self, tenant: str, rpm: int | None, tpm: int | None) -> Verdict:
        if time.monotonic() < self._down_until:
            return Verdict(True, bypassed=True)
        keys = [self.key(tenant, "req"), self.key(tenant, "tok")]
        try:
            async with asyncio.timeout(self._timeout):
                ok, req, tok = await self._admit(keys=keys, args=[rpm or 0, tpm or 0])
        except (RedisError, OSError, TimeoutError) as exc:
            self._mark_down(exc)
            return Verdict(True, bypassed=True)
        return verdict(rpm, tpm, bool(ok), int(req) / 1000, int(tok) / 1000)

    def charge(self, tenant: str, tpm: int, tokens: int) -> None:
        if tokens <= 0 or time.monotonic() < self._down_until:
            return
        task = asyncio.ensure_future(self._write(tenant, tpm, tokens))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write(self, tenant: str, tpm: int, tokens: int) -> None:
        try:
            async with asyncio.timeout(max(self._timeout, 1.0)):
                await self._charge(keys=[self.key(tenant, "tok")], args=[tpm, tokens])
        except (RedisError, OSError, TimeoutError) as exc:
            self._mark_down(exc)

    async def flush(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    def _mark_down(self, exc: BaseException) -> None:
        if time.monotonic() >= self._down_until:
            log.warning(
                "rate limits: Redis unavailable (%s); failing open for %.1fs",
                type(exc).__name__,
                self._retry_after,
            )
        # metrics: di_ratelimit_redis_errors_total (issue 12 wires it; /metrics counts bypasses)
        self._down_until = time.monotonic() + self._retry_after
