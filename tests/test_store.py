"""The prefix-index contract (holder sets), run against memory, fakeredis and redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import fakeredis
import pytest
from redis.asyncio import Redis

from router.chain import Prefix
from router.metrics import Metrics
from router.redis_store import RedisPrefixStore
from router.store import MemoryPrefixStore, PrefixStore

from .conftest import RedisServer, redis_clients


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


def bp(key: str, tokens: int = 100, ttl: int = 300) -> Prefix:
    return Prefix(key, ttl, tokens)


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
    clients = redis_clients(request, 3)
    # A generous deadline: these tests are about the contract, not Redis latency (each test
    # has a fresh redis-server, whose first script calls take several round trips).
    redis_store = RedisPrefixStore(clients[0], key_prefix="t:", timeout=2.0)
    other = RedisPrefixStore(clients[1], key_prefix="t:", timeout=2.0)
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


async def found(store: PrefixStore, *prefixes: Prefix) -> tuple[int, tuple[str, ...]] | None:
    result = await store.lookup(prefixes)
    assert not result.degraded
    if result.found is None:
        return None
    return result.found.index, tuple(sorted(result.found.holders))


async def test_miss_on_an_empty_index(subject: Subject) -> None:
    assert await found(subject.store, bp("a")) is None


async def test_recorded_prefix_is_found_by_another_router(subject: Subject) -> None:
    subject.store.record([bp("a", 120)], "replica-1", first=True)
    await subject.store.flush()
    assert await found(subject.other, bp("a")) == (0, ("replica-1",))


async def test_longest_known_prefix_wins(subject: Subject) -> None:
    subject.store.record([bp("a", 100), bp("b", 200)], "r1", first=True)
    subject.store.record([bp("x", 50)], "r2", first=True)
    await subject.store.flush()
    assert await found(subject.other, bp("a"), bp("b"), bp("c")) == (1, ("r1",))


async def test_first_placement_wins_and_holders_can_be_added(subject: Subject) -> None:
    subject.store.record([bp("a")], "r1", first=True)
    await subject.store.flush()
    subject.other.record([bp("a"), bp("b")], "r2", first=True)  # a: already placed
    await subject.other.flush()
    assert await found(subject.store, bp("a")) == (0, ("r1",))
    assert await found(subject.store, bp("b")) == (0, ("r2",))
    subject.other.record([bp("a")], "r3", first=False)  # a hot prefix spills onto r3
    await subject.other.flush()
    assert await found(subject.store, bp("a")) == (0, ("r1", "r3"))


async def test_forget_removes_one_holder(subject: Subject) -> None:
    subject.store.record([bp("a"), bp("b")], "r1", first=True)
    subject.store.record([bp("a")], "r2", first=False)
    await subject.store.flush()
    subject.other.forget([bp("a"), bp("b")], "r1")
    await subject.other.flush()
    assert await found(subject.other, bp("a"), bp("b")) == (0, ("r2",))
    subject.other.forget([bp("a")], "r2")
    await subject.other.flush()
    assert await found(subject.other, bp("a"), bp("b")) is None


async def test_writes_land_in_the_order_they_were_made(subject: Subject) -> None:
    """A replica recorded and then forgotten at once (it refused the request) stays
    forgotten: the forget never overtakes the record on its way to Redis."""
    for i in range(30):
        subject.store.record([bp(f"o{i}")], "r1", first=True)
        subject.store.forget([bp(f"o{i}")], "r1")
        subject.store.record([bp(f"p{i}")], "r2", first=True)
    await subject.store.flush()
    for i in range(30):
        assert await found(subject.other, bp(f"o{i}")) is None
        assert await found(subject.other, bp(f"p{i}")) == (0, ("r2",))


async def test_ttl_is_set_and_refreshed_on_hit(subject: Subject) -> None:
    subject.store.record([bp("a", ttl=300), bp("b", ttl=300)], "r1", first=True)
    assert 290 <= await subject.ttl("a") <= 300
    await subject.other.lookup([bp("a", ttl=300), bp("b", ttl=3600)])
    assert await subject.ttl("b") > 3000
    assert await subject.ttl("a") > 290


async def test_expired_entries_miss(subject: Subject) -> None:
    subject.store.record([bp("a")], "r1", first=True)
    await subject.expire("a")
    assert await found(subject.other, bp("a")) is None


def test_memory_store_is_bounded_lru() -> None:
    store = MemoryPrefixStore(3)
    for key in "abc":
        store.record([bp(key)], "r", first=True)
    assert store.get([bp("a")]) is not None  # a is now the most recently used
    store.record([bp("d")], "r", first=True)
    assert len(store) == 3
    assert store.get([bp("b")]) is None
    assert store.get([bp("a")]) is not None


def test_memory_store_stays_bounded_when_filled_from_another_router() -> None:
    store = MemoryPrefixStore(max_entries=10)
    for i in range(200):
        store.replace(bp(f"news{i}"), ["r1"])  # what Redis said other routers placed
    assert len(store) == 10
    assert store.get([bp("news199")]) is not None and store.get([bp("news0")]) is None
    store.record([bp("own")], "r2", first=True)
    assert len(store) == 10


async def test_many_writes_and_a_broken_one_all_land(caplog: pytest.LogCaptureFixture) -> None:
    """Writes go out in batches; a write that fails for a reason other than Redis is logged
    and the writer goes on with the rest."""
    server = fakeredis.FakeServer()
    store = RedisPrefixStore(fakeredis.FakeAsyncRedis(server=server), timeout=2)
    other = RedisPrefixStore(fakeredis.FakeAsyncRedis(server=server), timeout=2)

    def broken(pipe: Any) -> None:
        raise ValueError("a bug")

    store._write(broken)
    for i in range(1000):
        store.record([bp(f"many{i}")], "r1", first=True)
    for _ in range(3):
        await store.flush()
    assert "a write could not be made" in caplog.text
    for i in (0, 500, 999):
        assert await found(other, bp(f"many{i}")) == (0, ("r1",))
    await store.aclose()
    await other.aclose()


async def test_writes_beyond_the_queue_drop_the_oldest_and_are_counted() -> None:
    """A Redis too slow for the writes: the queue keeps the newest, the in-process index keeps
    all of them, and the drops are counted for the metrics."""
    server = fakeredis.FakeServer()
    metrics = Metrics()
    store = RedisPrefixStore(
        fakeredis.FakeAsyncRedis(server=server),
        timeout=2,
        max_queued=4,
        on_drop=metrics.index_write_dropped,
    )
    other = RedisPrefixStore(fakeredis.FakeAsyncRedis(server=server), timeout=2)
    try:
        for i in range(7):  # all queued before the writer first runs
            store.record([bp(f"queued{i}")], "r1", first=True)
        assert store.dropped_writes == 3
        exposed = metrics.render().decode()
        assert "\ndi_prefix_index_writes_dropped_total 3.0\n" in exposed
        await store.flush()
        assert [await found(other, bp(f"queued{i}")) for i in range(7)] == [None] * 3 + [
            (0, ("r1",))
        ] * 4
        assert all(store.local.get([bp(f"queued{i}")]) is not None for i in range(7))
    finally:
        await store.aclose()
        await other.aclose()


async def test_redis_faults_count_to_a_threshold_and_the_local_index_answers(
    redis_server: RedisServer,
) -> None:
    clock = Clock()
    store = RedisPrefixStore(
        Redis.from_url(redis_server.url, socket_timeout=0.5, socket_connect_timeout=0.5),
        timeout=0.5,
        retry_after=1.0,
        failure_threshold=2,
        clock=clock,
    )
    try:
        store.record([bp("a")], "r1", first=True)
        await store.flush()
        redis_server.stop()
        first = await store.lookup([bp("a")])
        assert first.degraded and first.found is not None and first.found.holders == ("r1",)
        assert not store.down  # one fault is not an outage
        await store.lookup([bp("a")])
        assert store.down  # two in a row are
        redis_server.start()
        clock.now += 2
        store.record([bp("b")], "r2", first=True)
        await store.flush()
        back = await store.lookup([bp("b")])
        assert not back.degraded and back.found is not None
        assert not store.down
    finally:
        await store.aclose()


async def test_after_a_redis_restart_the_first_lookup_is_answered(
    redis_server: RedisServer,
) -> None:
    """The pooled connection Redis closed by restarting is replaced at once: the first lookup
    after the restart is answered, not counted as a fault and bypassed."""
    store = RedisPrefixStore.from_url(redis_server.url, timeout=1.0, failure_threshold=1)
    try:
        store.record([bp("kept")], "r1", first=True)
        await store.flush()
        assert (await store.lookup([bp("kept")])).found is not None  # the connection is pooled
        redis_server.stop()
        redis_server.start()  # same port; its data is gone, and so is every old connection
        first = await store.lookup([bp("kept")])
        assert not first.degraded and not store.down
        store.record([bp("after")], "r2", first=True)
        await store.flush()
        after = await store.lookup([bp("after")])
        assert not after.degraded and not store.down
        assert after.found is not None and after.found.holders == ("r2",)
    finally:
        await store.aclose()


async def test_prefixes_a_restarted_redis_lost_keep_their_replicas(
    redis_server: RedisServer,
) -> None:
    """Redis restarted empty: a router that knew where the prefixes were keeps them there,
    longer ones included, and puts them back, so a router that knew nothing finds them too.
    Where Redis holds as long a prefix, Redis decides."""
    clock = Clock()
    knows = RedisPrefixStore.from_url(redis_server.url, timeout=1.0, clock=clock)
    fresh = RedisPrefixStore.from_url(redis_server.url, timeout=1.0, clock=clock)
    system, conversation = bp("system"), bp("conversation", tokens=500)
    try:
        for name, replica in (("a", "r1"), ("b", "r2")):
            knows.record([bp(name)], replica, first=True)
        knows.record([system], "r3", first=True)
        knows.record([system, conversation], "r1", first=False)
        await knows.flush()
        redis_server.stop()
        redis_server.start()  # empty
        clock.now += 60  # long after the records were written
        fresh.record([bp("b")], "r3", first=True)  # placed anew by a router that knew nothing
        fresh.record([system], "r3", first=True)  # and the shared system prompt
        await fresh.flush()
        kept = await knows.lookup([bp("a")])
        assert not kept.degraded and kept.found is not None and kept.found.holders == ("r1",)
        longer = await knows.lookup([system, conversation])
        assert longer.found is not None and longer.found.index == 1
        assert longer.found.holders == ("r1",)
        await knows.flush()
        for prefixes, holders in (([bp("a")], ("r1",)), ([system, conversation], ("r1",))):
            learnt = await fresh.lookup(prefixes)
            assert learnt.found is not None and learnt.found.holders == holders
        redis_says = await knows.lookup([bp("b")])
        assert redis_says.found is not None and redis_says.found.holders == ("r3",)
    finally:
        await knows.aclose()
        await fresh.aclose()


async def test_a_holder_one_router_removed_is_not_put_back_by_another(
    redis_server: RedisServer,
) -> None:
    """r1 failed at one router, which removed it from the prefix's holders (the last one):
    a router that still knows r1 there tries it for its own request (and learns), but does
    not put it back in Redis for the others."""
    saw_it_fail = RedisPrefixStore.from_url(redis_server.url, timeout=1.0)
    still_knows = RedisPrefixStore.from_url(redis_server.url, timeout=1.0)
    third = RedisPrefixStore.from_url(redis_server.url, timeout=1.0)
    try:
        saw_it_fail.record([bp("p")], "r1", first=True)
        await saw_it_fail.flush()
        assert (await still_knows.lookup([bp("p")])).found is not None  # learns p -> r1
        saw_it_fail.forget([bp("p")], "r1")
        await saw_it_fail.flush()
        own = await still_knows.lookup([bp("p")])
        assert own.found is not None and own.found.holders == ("r1",)
        await still_knows.flush()
        assert (await third.lookup([bp("p")])).found is None
        assert await third.redis.smembers(third.key("p")) == set()
    finally:
        for store in (saw_it_fail, still_knows, third):
            await store.aclose()


async def test_refills_are_bounded_exact_and_per_replica(redis_server: RedisServer) -> None:
    """A refill puts back only holders no router removed, only while the key is missing,
    and is not sent again with every request when Redis turns it down; a replica recorded
    again is no longer 'removed'; a holder this process forgot itself is not brought back
    by an answer Redis sent before the forget."""
    a = RedisPrefixStore.from_url(redis_server.url, timeout=1.0)
    b = RedisPrefixStore.from_url(redis_server.url, timeout=1.0)
    try:
        # Per replica: r1 was removed by a, r2 was not.
        a.record([bp("two")], "r1", first=True)
        a.record([bp("two")], "r2", first=False)
        await a.flush()
        assert (await b.lookup([bp("two")])).found is not None  # b learns {r1, r2}
        a.forget([bp("two")], "r1")
        await a.flush()
        await a.redis.delete(a.key("two"))  # then Redis loses the prefix
        await b.lookup([bp("two")])
        await b.flush()
        assert await b.redis.smembers(b.key("two")) == {b"r2"}

        # Turned down (every holder removed): one write, not one per request.
        a.record([bp("gone")], "r1", first=True)
        await a.flush()
        await b.lookup([bp("gone")])
        a.forget([bp("gone")], "r1")
        await a.flush()
        sent = 0
        write = b._write

        def counted(call: Any) -> None:
            nonlocal sent
            sent += 1
            write(call)

        b._write = counted  # type: ignore[method-assign, assignment]
        for _ in range(20):
            found = (await b.lookup([bp("gone")])).found
            assert found is not None and found.holders == ("r1",)  # b tries it itself
        assert sent == 1
        b._write = write  # type: ignore[method-assign]
        await b.flush()
        assert await b.redis.smembers(b.key("gone")) == set()

        # Recorded again: no longer removed, so refilled after a loss.
        a.record([bp("gone")], "r1", first=True)
        await a.flush()
        await a.redis.delete(a.key("gone"))
        c = RedisPrefixStore.from_url(redis_server.url, timeout=1.0)
        try:
            c.local.record([bp("gone")], "r1", first=True)  # c knew it
            await c.lookup([bp("gone")])
            await c.flush()
            assert await c.redis.smembers(c.key("gone")) == {b"r1"}
        finally:
            await c.aclose()

        # Only while the key is missing: another router's placement since decides.
        a.record([bp("raced")], "r2", first=True)
        await a.flush()
        b._refill(bp("raced"), ["r1"])
        await b.flush()
        assert await b.redis.smembers(b.key("raced")) == {b"r2"}

        # This process forgot r1; a stale answer put it back in its index: not used.
        b.local.record([bp("stale")], "r1", first=True)
        b.forget([bp("stale")], "r1")
        b.local.record([bp("stale")], "r1", first=True)  # the stale answer, landing late
        assert (await b.lookup([bp("stale")])).found is None
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_late_answer_does_not_bring_back_a_holder_this_process_forgot(
    redis_server: RedisServer,
) -> None:
    """Redis answered p -> r1 after the lookup gave up, and r1 failed here meanwhile: the
    late answer does not put r1 back in the local index, which the degraded and down paths
    read."""
    clock = Clock()
    store = RedisPrefixStore.from_url(
        redis_server.url, timeout=1.0, failure_threshold=1, retry_after=60.0, clock=clock
    )
    try:
        store.local.record([bp("p")], "r1", first=True)
        store.forget([bp("p")], "r1")

        async def stale() -> list[Any]:
            return [1, [b"r1"]]  # {1-based index, holders}, as the lookup script answers

        late = asyncio.get_running_loop().create_task(stale())
        await late
        store._learn(late, [bp("p")], None)
        assert store.local.holders(bp("p")) == ()
        store.local.record([bp("p")], "r1", first=True)  # however it got back in
        redis_server.stop()
        assert not await store.check() and store.down
        assert (await store.lookup([bp("p")])).found is None
    finally:
        await store.aclose()


async def test_a_redis_check_tells_whether_redis_answers_and_rests_run_their_time(
    redis_server: RedisServer,
) -> None:
    """``answering`` (``di_redis_up``) is False from the first fault, before Redis counts as
    down; a check that is answered says so, but does not cut a rest short."""
    clock = Clock()
    store = RedisPrefixStore.from_url(
        redis_server.url, timeout=0.5, failure_threshold=2, retry_after=60.0, clock=clock
    )
    try:
        assert await store.check() and store.answering
        redis_server.stop()
        assert not await store.check()
        assert not store.answering and not store.down  # one fault: not down, not answering
        assert not await store.check()
        assert store.down
        redis_server.start()
        assert await store.check()
        assert store.answering and store.down
        clock.now += 61
        store.record([bp("back")], "r1", first=True)
        await store.flush()
        assert not (await store.lookup([bp("back")])).degraded
    finally:
        await store.aclose()


async def test_an_idle_router_notices_redis_going_and_coming_back(
    redis_server: RedisServer,
) -> None:
    store = RedisPrefixStore.from_url(redis_server.url, timeout=0.5)
    watch = asyncio.create_task(store.watch(interval=0.01))

    async def until(answering: bool) -> None:
        for _ in range(500):  # up to ~5 s
            if store.answering is answering:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"answering never became {answering}")

    try:
        await until(True)
        redis_server.stop()
        await until(False)
        redis_server.start()
        await until(True)
    finally:
        watch.cancel()
        await store.aclose()


async def test_an_abandoned_lookup_does_not_drop_its_connection(
    redis_server: RedisServer,
) -> None:
    """A client that leaves mid-lookup cancels the wait, not the Redis command."""
    store = RedisPrefixStore(Redis.from_url(redis_server.url, max_connections=1), timeout=5)
    try:
        await store.lookup([bp("warm")])
        pool = store.redis.connection_pool
        connection = next(iter(pool._available_connections))
        waiting = asyncio.ensure_future(store.lookup([bp("a")]))
        await asyncio.sleep(0)  # let the lookup send its command
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await store.flush()
        # The command finished in its own task; the same connection is back, still open.
        assert list(pool._available_connections) == [connection]
        assert connection.is_connected
        assert (await store.lookup([bp("a")])).degraded is False
    finally:
        await store.aclose()


async def test_redis_store_with_password(tmp_path: Any) -> None:
    from .conftest import free_port

    server = RedisServer(free_port(), tmp_path, password="s3cret")
    server.start()
    try:
        store = RedisPrefixStore.from_url(server.url)
        store.record([bp("a")], "r1", first=True)
        await store.flush()
        other = RedisPrefixStore.from_url(server.url)
        assert await found(other, bp("a")) == (0, ("r1",))
        assert await other.ping()
        wrong = RedisPrefixStore.from_url(server.url.replace("s3cret", "wrong"))
        assert (await wrong.lookup([bp("a")])).degraded
        for s in (store, other, wrong):
            await s.aclose()
    finally:
        server.stop()


async def test_concurrent_records_stay_consistent() -> None:
    server = fakeredis.FakeServer()
    store = RedisPrefixStore(fakeredis.FakeAsyncRedis(server=server), timeout=2)
    for i in range(50):
        store.record([bp(f"k{i}")], f"r{i % 3}", first=True)
    await store.flush()
    other = RedisPrefixStore(fakeredis.FakeAsyncRedis(server=server), timeout=2)
    hits = await asyncio.gather(*(other.lookup([bp(f"k{i}")]) for i in range(50)))
    assert [h.found.holders if h.found else None for h in hits] == [
        (f"r{i % 3}",) for i in range(50)
    ]
    await store.aclose()
    await other.aclose()


async def test_writes_survive_redis_losing_its_scripts(redis_server: RedisServer) -> None:
    """After a Redis restart the scripts are gone: the writer loads them again."""
    admin = Redis.from_url(redis_server.url)
    store = RedisPrefixStore(Redis.from_url(redis_server.url), timeout=2.0)
    other = RedisPrefixStore(Redis.from_url(redis_server.url), timeout=2.0)
    try:
        store.record([bp("before")], "r1", first=True)
        await store.flush()
        await admin.script_flush()
        store.record([bp("after")], "r2", first=True)
        await store.flush()
        assert await found(other, bp("after")) == (0, ("r2",))
    finally:
        for s in (store, other):
            await s.aclose()
        await admin.aclose()
