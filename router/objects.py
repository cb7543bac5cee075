"""Stored API objects: Responses (``store: true``) and chat completions (``store: true``).

Kept beside the prefix index, in memory or in the same Redis, with a TTL. Documents are JSON
(orjson) under ``<key_prefix>obj:<kind>:<id>``; each kind also has a sorted set
``<key_prefix>idx:<kind>`` (score = time first stored) for listing, pruned lazily of expired ids.
A store that cannot answer raises ``StoreUnavailable``; the handlers turn that into a 503 for
reads, and into a logged warning for writes (the answer itself is never lost to it).
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from router.store import StoreUnavailable


@dataclass(frozen=True, slots=True)
class Page:
    items: list[dict[str, Any]]
    has_more: bool


class ObjectStore(ABC):
    @abstractmethod
    async def put(self, kind: str, object_id: str, doc: dict[str, Any]) -> None:
        """Store (or replace) a document; it lives for the store's TTL from now and keeps its
        place in listings (first stored, first listed)."""

    @abstractmethod
    async def get(self, kind: str, object_id: str) -> dict[str, Any] | None: ...

    @abstractmethod
    async def delete(self, kind: str, object_id: str) -> bool: ...

    @abstractmethod
    async def ids(self, kind: str, *, newest_first: bool) -> list[str]:
        """Every stored id of a kind, by creation time."""

    async def page(
        self,
        kind: str,
        *,
        after: str | None = None,
        limit: int = 20,
        newest_first: bool = False,
        keep: Callable[[dict[str, Any]], bool] = lambda _: True,
    ) -> Page:
        """An OpenAI-style page: ``limit`` documents that ``keep`` accepts, after ``after``."""
        ids = await self.ids(kind, newest_first=newest_first)
        if after is not None:
            ids = ids[ids.index(after) + 1 :] if after in ids else []
        items: list[dict[str, Any]] = []
        for object_id in ids:
            doc = await self.get(kind, object_id)
            if doc is None or not keep(doc):
                continue
            if len(items) == limit:
                return Page(items, True)
            items.append(doc)
        return Page(items, False)

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        pass


class MemoryObjectStore(ObjectStore):
    def __init__(
        self, ttl: int, max_objects: int = 10_000, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._docs: OrderedDict[tuple[str, str], tuple[float, int, bytes]] = OrderedDict()
        self._sequence = 0
        self._ttl = ttl
        self._max = max_objects
        self._clock = clock

    async def put(self, kind: str, object_id: str, doc: dict[str, Any]) -> None:
        key = (kind, object_id)
        held = self._docs.get(key)
        if held is None:
            self._sequence += 1
        order = held[1] if held is not None else self._sequence
        self._docs[key] = (self._clock() + self._ttl, order, orjson.dumps(doc))
        self._docs.move_to_end(key)
        while len(self._docs) > self._max:
            self._docs.popitem(last=False)

    async def get(self, kind: str, object_id: str) -> dict[str, Any] | None:
        entry = self._docs.get((kind, object_id))
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._docs[(kind, object_id)]
            return None
        doc: dict[str, Any] = orjson.loads(entry[2])
        return doc

    async def delete(self, kind: str, object_id: str) -> bool:
        return self._docs.pop((kind, object_id), None) is not None

    async def ids(self, kind: str, *, newest_first: bool) -> list[str]:
        now = self._clock()
        found = [(v[1], k[1]) for k, v in self._docs.items() if k[0] == kind and v[0] > now]
        found.sort(reverse=newest_first)
        return [object_id for _, object_id in found]


class RedisObjectStore(ObjectStore):
    def __init__(self, redis: Redis, *, key_prefix: str, ttl: int, timeout: float = 0.5) -> None:
        self.redis = redis
        self._prefix = key_prefix
        self._ttl = ttl
        self._timeout = timeout

    def key(self, kind: str, object_id: str) -> str:
        return f"{self._prefix}obj:{kind}:{object_id}"

    def index_key(self, kind: str) -> str:
        return f"{self._prefix}idx:{kind}"

    async def put(self, kind: str, object_id: str, doc: dict[str, Any]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.key(kind, object_id), orjson.dumps(doc), ex=self._ttl)
        # NX: an update keeps the object's place in the listing.
        pipe.zadd(self.index_key(kind), {object_id: time.time()}, nx=True)
        pipe.expire(self.index_key(kind), self._ttl)
        await self._run(pipe.execute())

    async def get(self, kind: str, object_id: str) -> dict[str, Any] | None:
        raw = await self._run(self.redis.get(self.key(kind, object_id)))
        if raw is None:
            return None
        doc: dict[str, Any] = orjson.loads(raw)
        return doc

    async def delete(self, kind: str, object_id: str) -> bool:
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(self.key(kind, object_id))
        pipe.zrem(self.index_key(kind), object_id)
        deleted, _ = await self._run(pipe.execute())
        return bool(deleted)

    async def ids(self, kind: str, *, newest_first: bool) -> list[str]:
        index = self.index_key(kind)
        raw = await self._run(self.redis.zrange(index, 0, -1, desc=newest_first))
        ids = [r.decode() if isinstance(r, bytes) else str(r) for r in raw]
        if not ids:
            return []
        exists = await self._run(self.redis.mget([self.key(kind, i) for i in ids]))
        gone = [i for i, doc in zip(ids, exists, strict=True) if doc is None]
        if gone:
            await self._run(self.redis.zrem(index, *gone))
        return [i for i, doc in zip(ids, exists, strict=True) if doc is not None]

    async def _run(self, call: Any) -> Any:
        try:
            async with asyncio.timeout(self._timeout):
                return await call
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(type(exc).__name__) from None
