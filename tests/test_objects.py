"""The stored-object contract, against memory, fakeredis and a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import fakeredis
import orjson
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from router.config import RouterConfig
from router.objects import MemoryObjectStore, ObjectStore, RedisObjectStore, StoreFull
from router.store import StoreUnavailable
from router.tenants import ANONYMOUS

from .conftest import RedisServer


@pytest.fixture(params=["memory", "fakeredis", "redis"])
async def objects(request: pytest.FixtureRequest) -> AsyncIterator[ObjectStore]:
    if request.param == "memory":
        yield MemoryObjectStore(ttl=60)
        return
    if request.param == "fakeredis":
        client: Any = fakeredis.FakeAsyncRedis()
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        client = Redis.from_url(server.url)
    yield RedisObjectStore(client, key_prefix="t:", ttl=60)
    await client.aclose()


async def test_put_get_delete(objects: ObjectStore) -> None:
    await objects.put("t1", "chat", "a", {"x": 1})
    assert await objects.get("t1", "chat", "a") == {"x": 1}
    assert await objects.get("t1", "response", "a") is None
    assert await objects.delete("t1", "chat", "a")
    assert not await objects.delete("t1", "chat", "a")
    assert await objects.get("t1", "chat", "a") is None


async def test_pages_keep_first_stored_order(objects: ObjectStore) -> None:
    for name in ("a", "b", "c", "d"):
        await objects.put("t1", "chat", name, {"id": name, "even": name in "bd"})
    await objects.put("t1", "chat", "a", {"id": "a", "even": False, "updated": True})
    first = await objects.page("t1", "chat", limit=2)
    assert [d["id"] for d in first.items] == ["a", "b"] and first.has_more
    rest = await objects.page("t1", "chat", after="b", limit=2)
    assert [d["id"] for d in rest.items] == ["c", "d"] and not rest.has_more
    newest = await objects.page("t1", "chat", newest_first=True, keep=lambda d: bool(d["even"]))
    assert [d["id"] for d in newest.items] == ["d", "b"]


async def test_memory_objects_expire() -> None:
    now = [0.0]
    store = MemoryObjectStore(ttl=10, clock=lambda: now[0])
    await store.put("t1", "chat", "a", {})
    now[0] = 11
    assert await store.get("t1", "chat", "a") is None
    assert (await store.page("t1", "chat")).items == []


async def test_redis_objects_fail_as_unavailable(refused_port: Callable[[], int]) -> None:
    client = Redis.from_url(f"redis://127.0.0.1:{refused_port()}/0", socket_connect_timeout=0.2)
    store = RedisObjectStore(client, key_prefix="t:", ttl=60)
    with pytest.raises(StoreUnavailable):
        await store.get("t1", "chat", "a")
    await client.aclose()


async def test_objects_belong_to_their_owner(objects: ObjectStore) -> None:
    await objects.put("alice", "chat", "a", {"id": "a"})
    assert await objects.get("bob", "chat", "a") is None
    assert not await objects.delete("bob", "chat", "a")
    assert (await objects.page("bob", "chat")).items == []
    # The same id under another owner is another object.
    await objects.put("bob", "chat", "a", {"id": "a", "bob": True})
    assert await objects.get("alice", "chat", "a") == {"id": "a"}
    assert [d["id"] for d in (await objects.page("alice", "chat")).items] == ["a"]


async def test_page_after_an_unknown_cursor_is_empty(objects: ObjectStore) -> None:
    await objects.put("t1", "chat", "a", {"id": "a"})
    assert (await objects.page("t1", "chat", after="nope")).items == []


async def test_memory_store_refuses_past_its_bound_and_never_drops() -> None:
    now = [0.0]
    store = MemoryObjectStore(ttl=10, max_objects=2, clock=lambda: now[0])
    await store.put("t", "chat", "a", {})
    await store.put("t", "chat", "b", {})
    with pytest.raises(StoreFull, match="memory_max_objects"):
        await store.put("t", "chat", "c", {})
    await store.put("t", "chat", "a", {"updated": True})  # an update is not a new object
    assert await store.get("t", "chat", "a") == {"updated": True}
    assert await store.get("t", "chat", "b") == {}
    now[0] = 11  # expired objects make room
    await store.put("t", "chat", "c", {})
    assert len(store) == 1


async def test_redis_update_keeps_expiry_and_place(redis_server: RedisServer) -> None:
    client = Redis.from_url(redis_server.url)
    store = RedisObjectStore(client, key_prefix="t:", ttl=60)
    await store.put("t", "chat", "a", {"v": 1})
    await client.expire(store.key("t", "chat", "a"), 5)
    await store.put("t", "chat", "b", {"v": 1})
    await store.put("t", "chat", "a", {"v": 2})
    assert 0 < await client.ttl(store.key("t", "chat", "a")) <= 5
    assert [d["v"] for d in (await store.page("t", "chat")).items] == [2, 1]
    await client.aclose()


async def test_redis_listing_trims_expired_ids(redis_server: RedisServer) -> None:
    client = Redis.from_url(redis_server.url)
    store = RedisObjectStore(client, key_prefix="t:", ttl=60)
    for i in range(5):
        await store.put("t", "chat", f"o{i}", {"id": f"o{i}"})
    await client.delete(store.key("t", "chat", "o1"), store.key("t", "chat", "o2"))
    page = await store.page("t", "chat", limit=2)
    assert [d["id"] for d in page.items] == ["o0", "o3"] and page.has_more
    assert await client.zcard(store.index_key("t", "chat")) == 3
    rest = await store.page("t", "chat", after="o3", limit=2)
    assert [d["id"] for d in rest.items] == ["o4"] and not rest.has_more
    await client.aclose()


async def _lookups(client: Redis) -> int:
    stats = await client.info("stats")
    return int(stats["keyspace_hits"]) + int(stats["keyspace_misses"])


async def test_listing_cost_does_not_grow_with_the_store(redis_server: RedisServer) -> None:
    """A page reads the index around the cursor and the page's documents, nothing else:
    the keys Redis looks up per page are the same with 30 objects or 3,000."""
    client = Redis.from_url(redis_server.url)
    store = RedisObjectStore(client, key_prefix="t:", ttl=600)
    costs = []
    for total in (30, 3000):
        kind = f"chat{total}"
        pipe = client.pipeline(transaction=False)
        now = 1_000_000
        for i in range(total):  # bulk-load the index and documents as put() lays them out
            pipe.set(store.key("t", kind, f"o{i:05}"), b'{"id": "o%05d"}' % i, ex=600)
            pipe.zadd(store.index_key("t", kind), {f"o{i:05}": now + i})
        await pipe.execute()
        await store.page("t", kind, limit=10)  # loads the scripts
        before = await _lookups(client)
        first = await store.page("t", kind, limit=10)
        middle = await store.page("t", kind, after=f"o{total // 2:05}", limit=10)
        newest = await store.page("t", kind, limit=10, newest_first=True)
        costs.append(await _lookups(client) - before)
        assert first.has_more and middle.has_more and newest.has_more
        assert middle.items[0]["id"] == f"o{total // 2 + 1:05}"
        assert newest.items[0]["id"] == f"o{total - 1:05}"
    assert costs[0] == costs[1]
    await client.aclose()


async def test_concurrent_lists_of_a_large_store_all_answer(
    make_stack: Any, redis_server: RedisServer
) -> None:
    """20 concurrent SDK lists over 3,000 stored completions: every one answers its page."""
    client = Redis.from_url(redis_server.url)
    layout = RedisObjectStore(client, key_prefix="di:", ttl=600)  # only for the key names
    pipe = client.pipeline(transaction=False)
    for i in range(3000):
        completion = {"id": f"c{i:05}", "object": "chat.completion", "model": "m", "created": 1}
        doc = {"completion": {**completion, "choices": [], "metadata": {}}, "messages": []}
        pipe.set(layout.key(ANONYMOUS, "chat", f"c{i:05}"), orjson.dumps(doc), ex=600)
        pipe.zadd(layout.index_key(ANONYMOUS, "chat"), {f"c{i:05}": 1_000_000 + i})
    await pipe.execute()
    await client.aclose()

    def edit(config: RouterConfig) -> RouterConfig:
        objects = config.objects.model_copy(update={"redis_url": SecretStr(redis_server.url)})
        return config.model_copy(update={"objects": objects})

    live = make_stack(edit=edit)
    async with live.aclient() as sdk:
        pages = await asyncio.gather(
            *(sdk.chat.completions.list(limit=50, order="desc") for _ in range(20))
        )
        assert all(p.data[0].id == "c02999" and len(p.data) == 50 and p.has_more for p in pages)
