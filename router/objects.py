"""Stored API objects: Responses (``store: true``) and chat completions (``store: true``).

Every object belongs to a tenant (``owner``): one tenant can neither read, list, change nor
delete another's, since every key and index includes the owner. An object lives for the store's
TTL from its creation (an update keeps its expiry and its place in listings).

Redis layout (every key built here from one prefix):

    <prefix>obj:<owner>:<kind>:<id>   the JSON document, TTL = the store's TTL
    <prefix>idx:<owner>:<kind>        sorted set: id scored by creation time (ms)

Listing reads only the page asked for: one script finds the cursor's rank and returns the next
ids (O(log n + page)), then one MGET reads their documents; ids whose document has expired are
trimmed from the index as they are met, and every insert trims the index of ids older than the
TTL. Filters (model, metadata) scan at most ``MAX_SCAN`` ids per request, so a rare filter costs
a bounded amount and says ``has_more``. In memory the store holds at most ``max_objects``
objects: past that a write fails with ``StoreFull`` (the client is told), it never drops objects.
A store that cannot answer raises ``StoreUnavailable``; handlers turn that into a 503 for reads,
and into an ``X-DI-Store: failed`` header and a logged warning for writes.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from router.store import StoreUnavailable, redis_answer

MAX_SCAN = 1000  # ids a filtered listing may read per request

Keep = Callable[[dict[str, Any]], bool]


class StoreFull(StoreUnavailable):
    """The in-memory object store holds ``objects.memory_max_objects`` live objects."""


@dataclass(frozen=True, slots=True)
class Page:
    items: list[dict[str, Any]]
    has_more: bool


def _keep_all(_: dict[str, Any]) -> bool:
    return True


class ObjectStore(ABC):
    @abstractmethod
    async def put(self, owner: str, kind: str, object_id: str, doc: dict[str, Any]) -> None:
        """Store a new document, or replace one (keeping its expiry and place in listings)."""

    @abstractmethod
    async def get(self, owner: str, kind: str, object_id: str) -> dict[str, Any] | None: ...

    @abstractmethod
    async def delete(self, owner: str, kind: str, object_id: str) -> bool: ...

    @abstractmethod
    async def page(
        self,
        owner: str,
        kind: str,
        *,
        after: str | None = None,
        limit: int = 20,
        newest_first: bool = False,
        keep: Keep = _keep_all,
    ) -> Page:
        """An OpenAI-style page: ``limit`` documents that ``keep`` accepts, after ``after``."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        pass


@dataclass(slots=True)
class _Held:
    expires: float
    data: bytes


class MemoryObjectStore(ObjectStore):
    """One process's objects, bounded; oldest first in one ordered dict (creation order)."""

    def __init__(
        self, ttl: int, max_objects: int = 10_000, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._docs: OrderedDict[tuple[str, str, str], _Held] = OrderedDict()
        self._ttl = ttl
        self._max = max_objects
        self._clock = clock

    def __len__(self) -> int:
        return len(self._docs)

    def _trim(self, now: float) -> None:
        # Same TTL for all and creation order kept: the expired ones are at the front.
        while self._docs:
            key, held = next(iter(self._docs.items()))
            if held.expires > now:
                break
            del self._docs[key]

    async def put(self, owner: str, kind: str, object_id: str, doc: dict[str, Any]) -> None:
        now = self._clock()
        self._trim(now)
        key = (owner, kind, object_id)
        held = self._docs.get(key)
        if held is not None:
            held.data = orjson.dumps(doc)
            return
        if len(self._docs) >= self._max:
            raise StoreFull(
                f"the in-memory object store is full ({self._max} objects; raise "
                "objects.memory_max_objects or use Redis)"
            )
        self._docs[key] = _Held(now + self._ttl, orjson.dumps(doc))

    async def get(self, owner: str, kind: str, object_id: str) -> dict[str, Any] | None:
        held = self._docs.get((owner, kind, object_id))
        if held is None or held.expires <= self._clock():
            return None
        doc: dict[str, Any] = orjson.loads(held.data)
        return doc

    async def delete(self, owner: str, kind: str, object_id: str) -> bool:
        return self._docs.pop((owner, kind, object_id), None) is not None

    async def page(
        self,
        owner: str,
        kind: str,
        *,
        after: str | None = None,
        limit: int = 20,
        newest_first: bool = False,
        keep: Keep = _keep_all,
    ) -> Page:
        self._trim(self._clock())
        keys = reversed(self._docs) if newest_first else iter(self._docs)
        ids = [k[2] for k in keys if k[0] == owner and k[1] == kind]
        if after is not None:
            ids = ids[ids.index(after) + 1 :] if after in ids else []
        items: list[dict[str, Any]] = []
        for object_id in ids:
            doc = await self.get(owner, kind, object_id)
            if doc is None or not keep(doc):
                continue
            if len(items) == limit:
                return Page(items, True)
            items.append(doc)
        return Page(items, False)


# KEYS: document, index. ARGV: document, ttl seconds, now ms, id.
_PUT_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. (tonumber(ARGV[3]) - ARGV[2] * 1000))
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""

# KEYS: index. ARGV: cursor id ('' = from the start), count, '1' = newest first.
# Ranks, not scores, so ids created in the same millisecond are neither skipped nor repeated.
_PAGE_LUA = """
local desc = ARGV[3] == '1'
local start = 0
if ARGV[1] ~= '' then
  local rank
  if desc then rank = redis.call('ZREVRANK', KEYS[1], ARGV[1])
  else rank = redis.call('ZRANK', KEYS[1], ARGV[1]) end
  if not rank then return {} end
  start = rank + 1
end
local stop = start + tonumber(ARGV[2]) - 1
if desc then return redis.call('ZREVRANGE', KEYS[1], start, stop) end
return redis.call('ZRANGE', KEYS[1], start, stop)
"""


class RedisObjectStore(ObjectStore):
    def __init__(self, redis: Redis, *, key_prefix: str, ttl: int, timeout: float = 0.5) -> None:
        self.redis = redis
        self._prefix = key_prefix
        self._ttl = ttl
        self._timeout = timeout
        self._put = redis.register_script(_PUT_LUA)
        self._page = redis.register_script(_PAGE_LUA)

    def key(self, owner: str, kind: str, object_id: str) -> str:
        return f"{self._prefix}obj:{owner}:{kind}:{object_id}"

    def index_key(self, owner: str, kind: str) -> str:
        return f"{self._prefix}idx:{owner}:{kind}"

    async def put(self, owner: str, kind: str, object_id: str, doc: dict[str, Any]) -> None:
        keys = [self.key(owner, kind, object_id), self.index_key(owner, kind)]
        now_ms = int(time.time() * 1000)
        await self._run(
            self._put(keys=keys, args=[orjson.dumps(doc), self._ttl, now_ms, object_id])
        )

    async def get(self, owner: str, kind: str, object_id: str) -> dict[str, Any] | None:
        raw = await self._run(self.redis.get(self.key(owner, kind, object_id)))
        if raw is None:
            return None
        doc: dict[str, Any] = orjson.loads(raw)
        return doc

    async def delete(self, owner: str, kind: str, object_id: str) -> bool:
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(self.key(owner, kind, object_id))
        pipe.zrem(self.index_key(owner, kind), object_id)
        deleted, _ = await self._run(pipe.execute())
        return bool(deleted)

    async def page(
        self,
        owner: str,
        kind: str,
        *,
        after: str | None = None,
        limit: int = 20,
        newest_first: bool = False,
        keep: Keep = _keep_all,
    ) -> Page:
        index = self.index_key(owner, kind)
        items: list[dict[str, Any]] = []
        cursor = after or ""
        scanned = 0
        batch = limit + 1
        while scanned < MAX_SCAN:
            args: list[str | int] = [cursor, batch, "1" if newest_first else "0"]
            raw_ids = await self._run(self._page(keys=[index], args=args))
            if not raw_ids:
                return Page(items, False)
            ids = [r.decode() if isinstance(r, bytes) else str(r) for r in raw_ids]
            docs = await self._run(self.redis.mget([self.key(owner, kind, i) for i in ids]))
            gone = [i for i, raw in zip(ids, docs, strict=True) if raw is None]
            if gone:  # expired: trim the index as we meet them
                await self._run(self.redis.zrem(index, *gone))
            for object_id, raw in zip(ids, docs, strict=True):
                scanned += 1
                if raw is None:
                    continue  # trimmed above: not a usable cursor
                cursor = object_id
                doc: dict[str, Any] = orjson.loads(raw)
                if not keep(doc):
                    continue
                if len(items) == limit:
                    return Page(items, True)
                items.append(doc)
            if len(ids) < batch:
                return Page(items, False)
            # Filtered or trimmed ids left the page short: read on, in larger steps.
            batch = max(batch, 100)
        return Page(items, True)

    async def _run(self, call: Any) -> Any:
        return await redis_answer(call, self._timeout)
