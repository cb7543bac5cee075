"""The prefix index: prefix key -> the replica whose KV cache holds that prefix.

One small interface, two implementations: in memory (one process, the default) and Redis (many
router processes and machines). ``lookup`` costs at most one round trip; ``record`` never makes
the request wait. Redis is an accelerator, not a dependency: after a fault or a slow answer the
Redis store raises ``StoreUnavailable`` at once for ``retry_after`` seconds, so a Redis outage
costs each request nothing but its affinity.

Redis keys are built by ``RedisPrefixStore.key`` alone: ``<key_prefix>px:<prefix hash>``, a
string value ``<replica id>\\t<prefix tokens>``, always with the breakpoint's TTL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from router.prefix import Breakpoint

log = logging.getLogger(__name__)

# Longest prefix first; refreshes the TTL of the hit and of every shorter prefix it holds.
_LOOKUP_LUA = """
for i = #KEYS, 1, -1 do
  local value = redis.call('GET', KEYS[i])
  if value then
    for j = i, 1, -1 do redis.call('EXPIRE', KEYS[j], ARGV[j]) end
    return {i, value}
  end
end
return false
"""


class StoreUnavailable(Exception):
    """The index could not answer in time; the request is routed without affinity."""


@dataclass(frozen=True, slots=True)
class PrefixHit:
    """The longest cached prefix of a request: which breakpoint, on which replica."""

    index: int  # position in the looked-up breakpoints (the longest that hit)
    replica: str
    tokens: int


class PrefixStore(ABC):
    @abstractmethod
    async def lookup(self, breakpoints: Sequence[Breakpoint]) -> PrefixHit | None:
        """The longest of ``breakpoints`` (shortest first) that is cached; refreshes its TTL."""

    @abstractmethod
    def record(self, breakpoints: Sequence[Breakpoint], replica: str) -> None:
        """Note that ``replica`` now holds these prefixes. Never blocks the request."""

    async def ping(self) -> bool:
        return True

    async def flush(self) -> None:  # noqa: B027 - optional hook
        """Wait for records still on their way (shutdown, tests)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        pass


class _Entry:
    __slots__ = ("expires", "replica", "tokens")

    def __init__(self, replica: str, tokens: int, expires: float) -> None:
        self.replica = replica
        self.tokens = tokens
        self.expires = expires


class MemoryPrefixStore(PrefixStore):
    """A bounded LRU with per-entry TTL, for one router process."""

    def __init__(self, max_entries: int = 100_000, *, clock: Callable[[], float] = time.monotonic):
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._max_entries = max_entries
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, breakpoints: Sequence[Breakpoint]) -> PrefixHit | None:
        """The synchronous lookup behind ``lookup``."""
        now = self._clock()
        for index in range(len(breakpoints) - 1, -1, -1):
            bp = breakpoints[index]
            entry = self._entries.get(bp.key)
            if entry is None:
                continue
            if entry.expires <= now:
                del self._entries[bp.key]
                continue
            for shorter in breakpoints[: index + 1]:
                if (held := self._entries.get(shorter.key)) is not None:
                    held.expires = now + shorter.ttl
                    self._entries.move_to_end(shorter.key)
            return PrefixHit(index, entry.replica, entry.tokens)
        return None

    async def lookup(self, breakpoints: Sequence[Breakpoint]) -> PrefixHit | None:
        return self.get(breakpoints)

    def record(self, breakpoints: Sequence[Breakpoint], replica: str) -> None:
        now = self._clock()
        for bp in breakpoints:
            self._entries[bp.key] = _Entry(replica, bp.tokens, now + bp.ttl)
            self._entries.move_to_end(bp.key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)


class RedisPrefixStore(PrefixStore):
    """The index in Redis, shared by every router process.

    Records also go to a small in-process index first, synchronously: a burst of concurrent
    first requests for one new prefix then converges on one replica inside this process even
    before the pipelined write reaches Redis.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        key_prefix: str = "di:",
        timeout: float = 0.05,
        retry_after: float = 1.0,
        local_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self._key_prefix = key_prefix
        self._timeout = timeout
        self._retry_after = retry_after
        self._clock = clock
        self._local = MemoryPrefixStore(local_entries, clock=clock)
        self._script = redis.register_script(_LOOKUP_LUA)
        self._down_until = 0.0
        self._writes: set[asyncio.Task[None]] = set()

    @classmethod
    def from_url(cls, url: str, *, max_connections: int = 1024, **kwargs: Any) -> RedisPrefixStore:
        """A store on its own client; ``max_connections`` should match the upstream pool, so a
        burst of requests never finds the Redis pool exhausted before the upstream one."""
        timeout = kwargs.get("timeout", 0.05)
        client = Redis.from_url(
            url,
            socket_timeout=max(timeout * 4, 0.5),
            socket_connect_timeout=max(timeout * 4, 0.5),
            max_connections=max_connections,
        )
        return cls(client, **kwargs)

    def key(self, prefix_key: str) -> str:
        return f"{self._key_prefix}px:{prefix_key}"

    async def lookup(self, breakpoints: Sequence[Breakpoint]) -> PrefixHit | None:
        self._check_available()
        keys = [self.key(bp.key) for bp in breakpoints]
        try:
            async with asyncio.timeout(self._timeout):
                found = await self._script(keys=keys, args=[bp.ttl for bp in breakpoints])
        except (RedisError, OSError, TimeoutError) as exc:
            self._mark_down(exc)
            raise StoreUnavailable(str(exc) or type(exc).__name__) from None
        remote = None
        if found:
            index = int(found[0]) - 1
            replica, _, tokens = bytes(found[1]).decode().partition("\t")
            remote = PrefixHit(index, replica, int(tokens or 0))
        local = self._local.get(breakpoints)
        if local is not None and (remote is None or local.index > remote.index):
            # Redis lost what this process knows (a restart, eviction): put it back.
            self._schedule_write(breakpoints[: local.index + 1], local.replica)
            return local
        return remote

    def record(self, breakpoints: Sequence[Breakpoint], replica: str) -> None:
        self._local.record(breakpoints, replica)
        if self._clock() >= self._down_until:
            self._schedule_write(breakpoints, replica)

    def _schedule_write(self, breakpoints: Sequence[Breakpoint], replica: str) -> None:
        task = asyncio.get_running_loop().create_task(self._write(breakpoints, replica))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, breakpoints: Sequence[Breakpoint], replica: str) -> None:
        try:
            async with asyncio.timeout(self._timeout * 4):
                pipe = self.redis.pipeline(transaction=False)
                for bp in breakpoints:
                    pipe.set(self.key(bp.key), f"{replica}\t{bp.tokens}", ex=bp.ttl)
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._mark_down(exc)

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout * 4):
                return bool(await self.redis.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    async def prepare(self) -> None:
        """Load the lookup script so the first request pays one round trip, not two."""
        try:
            async with asyncio.timeout(max(self._timeout * 20, 1.0)):
                await self.redis.script_load(_LOOKUP_LUA)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("redis not reachable at start-up (%s); routing without affinity", exc)

    async def flush(self) -> None:
        if self._writes:
            await asyncio.wait(self._writes, timeout=1.0)

    async def aclose(self) -> None:
        await self.flush()
        await self.redis.aclose()

    def _check_available(self) -> None:
        if self._clock() < self._down_until:
            raise StoreUnavailable("redis marked down after a recent fault")

    def _mark_down(self, exc: BaseException) -> None:
        if self._clock() >= self._down_until:
            log.warning(
                "redis prefix store fault (%s); bypassing it for %.1fs",
                type(exc).__name__,
                self._retry_after,
            )
        self._down_until = self._clock() + self._retry_after
