"""The prefix-store contract, run against memory, fakeredis and a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import fakeredis
import pytest
from redis.asyncio import Redis

from router.prefix import Breakpoint
from router.store import MemoryPrefixStore, PrefixStore, RedisPrefixStore, StoreUnavailable

from .conftest import RedisServer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Subject:
    """A store under test, a second view of the same index (another router), and its TTLs."""

    store: PrefixStore
    other: PrefixStore
    ttl: Callable[[str], Any]  # remaining TTL of a prefix key, in seconds
    expire: Callable[[str], Any]  # make a prefix key expire now


def bp(key: str, tokens: int = 100, ttl: int = 300) -> Breakpoint:
    return Breakpoint(key, ttl, tokens)


@pytest.fixture(params=["memory", "fakeredis", "redis"])
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    if request.param == "memory":
        clock = Clock()
        store = MemoryPrefixStore(clock=clock)

        async def ttl(key: str) -> float:
            return store._entries[key].expires - clock.now

        async def expire(key: str) -> None:
            clock.now += 10_000

        yield Subject(store, store, ttl, expire)
        return
    if request.param == "fakeredis":
        server = fakeredis.FakeServer()
        clients: list[Any] = [fakeredis.FakeAsyncRedis(server=server) for _ in range(3)]
    else:
        redis_server: RedisServer = request.getfixturevalue("redis_server")
        clients = [Redis.from_url(redis_server.url) for _ in range(3)]
    redis_store = RedisPrefixStore(clients[0], key_prefix="t:")
    other = RedisPrefixStore(clients[1], key_prefix="t:")
    admin = clients[2]

    async def redis_ttl(key: str) -> float:
        await redis_store.flush()
        return float(await admin.ttl(redis_store.key(key)))

    async def redis_expire(key: str) -> None:
        await redis_store.flush()
        await admin.delete(redis_store.key(key))

    yield Subject(redis_store, other, redis_ttl, redis_expire)
    for client in (redis_store, other):
        await client.aclose()
    await admin.aclose()


async def test_miss_on_an_empty_index(subject: Subject) -> None:
    assert await subject.store.lookup([bp("a")]) is None


async def test_recorded_prefix_is_found_by_another_router(subject: Subject) -> None:
    subject.store.record([bp("a", 120)], "replica-1")
    await subject.store.flush()
    hit = await subject.other.lookup([bp("a")])
    assert hit is not None
    assert (hit.index, hit.replica, hit.tokens) == (0, "replica-1", 120)


async def test_longest_cached_prefix_wins(subject: Subject) -> None:
    subject.store.record([bp("a", 100), bp("b", 200)], "r1")
    subject.store.record([bp("x", 50)], "r2")
    await subject.store.flush()
    hit = await subject.other.lookup([bp("a"), bp("b"), bp("c")])
    assert hit is not None
    assert (hit.index, hit.replica, hit.tokens) == (1, "r1", 200)


async def test_ttl_is_set_and_refreshed_on_hit(subject: Subject) -> None:
    subject.store.record([bp("a", ttl=300), bp("b", ttl=300)], "r1")
    assert 290 <= await subject.ttl("a") <= 300
    subject.store.record([bp("b", ttl=5)], "r1")
    assert await subject.ttl("b") <= 5
    await subject.other.lookup([bp("a", ttl=300), bp("b", ttl=3600)])
    assert await subject.ttl("b") > 3000
    assert await subject.ttl("a") > 290


async def test_expired_entries_miss(subject: Subject) -> None:
    subject.store.record([bp("a")], "r1")
    await subject.expire("a")
    assert await subject.other.lookup([bp("a")]) is None


def test_memory_store_is_bounded_lru() -> None:
    store = MemoryPrefixStore(3)
    for key in "abc":
        store.record([bp(key)], "r")
    assert store.get([bp("a")]) is not None  # a is now the most recently used
    store.record([bp("d")], "r")
    assert len(store) == 3
    assert store.get([bp("b")]) is None
    assert store.get([bp("a")]) is not None


async def test_redis_store_fails_fast_then_recovers(redis_server: RedisServer) -> None:
    clock = Clock()
    store = RedisPrefixStore(
        Redis.from_url(redis_server.url), timeout=0.2, retry_after=1.0, clock=clock
    )
    try:
        assert await store.lookup([bp("a")]) is None
        redis_server.stop()
        with pytest.raises(StoreUnavailable):
            await store.lookup([bp("a")])
        # Marked down: the next lookup does not even try.
        with pytest.raises(StoreUnavailable, match="marked down"):
            await store.lookup([bp("a")])
        redis_server.start()
        clock.now += 2
        store.record([bp("a")], "r1")
        await store.flush()
        assert (await store.lookup([bp("a")])) is not None
    finally:
        await store.aclose()


async def test_redis_store_with_password(tmp_path: Any) -> None:
    from .conftest import free_port

    server = RedisServer(free_port(), tmp_path, password="s3cret")
    server.start()
    try:
        store = RedisPrefixStore.from_url(server.url)
        store.record([bp("a")], "r1")
        await store.flush()
        other = RedisPrefixStore.from_url(server.url)
        assert (await other.lookup([bp("a")])) is not None
        assert await other.ping()
        wrong = RedisPrefixStore.from_url(server.url.replace("s3cret", "wrong"))
        with pytest.raises(StoreUnavailable):
            await wrong.lookup([bp("a")])
        for s in (store, other, wrong):
            await s.aclose()
    finally:
        server.stop()


async def test_concurrent_records_stay_consistent() -> None:
    server = fakeredis.FakeServer()
    store = RedisPrefixStore(fakeredis.FakeAsyncRedis(server=server))
    for i in range(50):
        store.record([bp(f"k{i}")], f"r{i % 3}")
    await store.flush()
    other = RedisPrefixStore(fakeredis.FakeAsyncRedis(server=server))
    hits = await asyncio.gather(*(other.lookup([bp(f"k{i}")]) for i in range(50)))
    assert [h.replica if h else None for h in hits] == [f"r{i % 3}" for i in range(50)]
    await store.aclose()
    await other.aclose()
