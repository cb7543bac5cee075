"""API keys kept in Redis, managed with ``di-router keys create|list|revoke``.

Only a key's SHA-256 digest is stored (a key is 256 random bits, so a fast hash is enough): the
key is printed once by ``create`` and cannot be recovered. Layout, every key built here from one
prefix:

    <prefix>apikey:<sha256 hex>   JSON {name, rpm, tpm, allowed_types, allowed_backends, created}
    <prefix>apikeys               hash: tenant name -> sha256 hex (for list and revoke by name)

These records have no TTL: they are durable, like stored objects, and live in the objects'
Redis (``objects.redis_url``, else ``cache.redis_url``); under ``volatile-lru`` keys without a
TTL are never evicted.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import time
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from router.store import redis_answer

KEY_PREFIX = "sk-di-"


@dataclass(frozen=True, slots=True)
class KeyRecord:
    name: str
    rpm: int | None = None
    tpm: int | None = None
    allowed_types: frozenset[str] | None = None
    allowed_backends: frozenset[str] | None = None
    created: int = 0

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "name": self.name,
                "rpm": self.rpm,
                "tpm": self.tpm,
                "allowed_types": _listed(self.allowed_types),
                "allowed_backends": _listed(self.allowed_backends),
                "created": self.created,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> KeyRecord:
        data: dict[str, Any] = orjson.loads(raw)
        return cls(
            name=str(data["name"]),
            rpm=data.get("rpm"),
            tpm=data.get("tpm"),
            allowed_types=_set(data.get("allowed_types")),
            allowed_backends=_set(data.get("allowed_backends")),
            created=int(data.get("created") or 0),
        )


def _listed(values: frozenset[str] | None) -> list[str] | None:
    return sorted(values) if values is not None else None


def _set(values: Any) -> frozenset[str] | None:
    return frozenset(str(v) for v in values) if isinstance(values, list) else None


def new_key() -> str:
    return KEY_PREFIX + base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


def key_digest(key: str) -> bytes:
    """How every key is known: configured keys, stored ones, and the one a request presents."""
    # A header may carry any byte; aiohttp hands non-ASCII ones over as surrogate escapes.
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class RedisKeyStore:
    def __init__(self, redis: Redis, *, key_prefix: str, timeout: float = 0.5) -> None:
        self.redis = redis
        self._prefix = key_prefix
        self._timeout = timeout

    def record_key(self, digest: str) -> str:
        return f"{self._prefix}apikey:{digest}"

    def names_key(self) -> str:
        return f"{self._prefix}apikeys"

    async def lookup(self, digest: str) -> KeyRecord | None:
        raw = await self._run(self.redis.get(self.record_key(digest)))
        return KeyRecord.from_json(raw) if raw is not None else None

    async def create(self, record: KeyRecord) -> str:
        """Store a new key for ``record.name`` and return it (the only time it is seen)."""
        key = new_key()
        digest = key_digest(key).hex()
        record = dataclasses.replace(record, created=int(time.time()))
        # HSETNX first: two concurrent creates of one name cannot both win.
        if not await self._run(self.redis.hsetnx(self.names_key(), record.name, digest)):
            raise ValueError(f"a key named {record.name!r} exists; revoke it first")
        await self._run(self.redis.set(self.record_key(digest), record.to_json()))
        return key

    async def list(self) -> list[KeyRecord]:
        names: dict[bytes, bytes] = await self._run(self.redis.hgetall(self.names_key()))
        if not names:
            return []
        digests = [d.decode() for d in names.values()]
        raws = await self._run(self.redis.mget([self.record_key(d) for d in digests]))
        records = [KeyRecord.from_json(r) for r in raws if r is not None]
        return sorted(records, key=lambda r: r.name)

    async def revoke(self, name: str) -> bool:
        digest = await self._run(self.redis.hget(self.names_key(), name))
        if digest is None:
            return False
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.record_key(digest.decode()))
        pipe.hdel(self.names_key(), name)
        await self._run(pipe.execute())
        return True

    async def _run(self, call: Any) -> Any:
        return await redis_answer(call, self._timeout)
