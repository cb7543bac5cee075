"""The stored-object contract, against memory, fakeredis and a real redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import pytest
from redis.asyncio import Redis

from router.objects import MemoryObjectStore, ObjectStore, RedisObjectStore
from router.store import StoreUnavailable

from .conftest import RedisServer, free_port


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
    await objects.put("chat", "a", {"x": 1})
    assert await objects.get("chat", "a") == {"x": 1}
    assert await objects.get("response", "a") is None
    assert await objects.delete("chat", "a")
    assert not await objects.delete("chat", "a")
    assert await objects.get("chat", "a") is None


async def test_pages_keep_first_stored_order(objects: ObjectStore) -> None:
    for name in ("a", "b", "c", "d"):
        await objects.put("chat", name, {"id": name, "even": name in "bd"})
    await objects.put("chat", "a", {"id": "a", "even": False, "updated": True})
    first = await objects.page("chat", limit=2)
    assert [d["id"] for d in first.items] == ["a", "b"] and first.has_more
    rest = await objects.page("chat", after="b", limit=2)
    assert [d["id"] for d in rest.items] == ["c", "d"] and not rest.has_more
    newest = await objects.page("chat", newest_first=True, keep=lambda d: bool(d["even"]))
    assert [d["id"] for d in newest.items] == ["d", "b"]


async def test_memory_objects_expire() -> None:
    now = [0.0]
    store = MemoryObjectStore(ttl=10, clock=lambda: now[0])
    await store.put("chat", "a", {})
    now[0] = 11
    assert await store.get("chat", "a") is None
    assert (await store.page("chat")).items == []


async def test_redis_objects_fail_as_unavailable() -> None:
    client = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2)
    store = RedisObjectStore(client, key_prefix="t:", ttl=60)
    with pytest.raises(StoreUnavailable):
        await store.get("chat", "a")
    await client.aclose()
