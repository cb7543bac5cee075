"""Two router PROCESSES, one redis-server, one simulated fleet: they agree on placement."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from redis.asyncio import Redis

from router.sim import SimFleet, start_fleet

from .conftest import FAST, LoopThread, RedisServer
from .routers import RouterProcess, pool_config
from .test_prompt_cache import system_prompt

EPHEMERAL = {"type": "ephemeral"}


@pytest.fixture
def fleet() -> Iterator[list[tuple[str, str]]]:
    thread = LoopThread()
    running: SimFleet = thread.run(start_fleet(FAST, replicas=4, name="sim"))
    yield [(r.id, r.url) for r in running.replicas]
    thread.run(running.close())
    thread.stop()


@pytest.fixture
def routers(
    fleet: list[tuple[str, str]], redis_server: RedisServer, tmp_path: Path
) -> Iterator[list[RouterProcess]]:
    started: list[RouterProcess] = []
    try:
        for name in ("a", "b"):
            config = pool_config(fleet, redis_url=redis_server.url)
            started.append(RouterProcess(config, tmp_path, name).start())
        yield started
    finally:
        for process in started:
            process.stop()


@pytest.fixture
async def pair(routers: list[RouterProcess]) -> AsyncIterator[list[openai.AsyncOpenAI]]:
    """One SDK client per router, closed after the test even when an assertion failed."""
    made = [openai.AsyncOpenAI(base_url=r.base_url, api_key="x", max_retries=0) for r in routers]
    yield made
    for client in made:
        await client.close()


def marked(salt: str, question: str) -> list[Any]:
    return [
        {
            "role": "system",
            "content": [
                {"type": "text", "text": system_prompt(salt=salt), "cache_control": EPHEMERAL}
            ],
        },
        {"role": "user", "content": question},
    ]


async def replicas_of(
    pair: list[openai.AsyncOpenAI], messages: list[list[Any]], *, together: bool
) -> list[str]:
    """Send each of ``messages`` through the two routers in turn; the replicas they reached."""
    return [seen.split()[0] for seen in await placements_of(pair, messages, together=together)]


async def placements_of(
    pair: list[openai.AsyncOpenAI], messages: list[list[Any]], *, together: bool
) -> list[str]:
    """Like ``replicas_of``, each with its ``X-DI-Cache`` (for a failure's message)."""

    async def one(i: int) -> str:
        raw = await pair[i % 2].chat.completions.with_raw_response.create(
            model="m", messages=messages[i], max_tokens=2
        )
        raw.parse()
        return f"{raw.headers['X-DI-Replica']} {raw.headers['X-DI-Cache']}"

    if together:
        return list(await asyncio.gather(*(one(i) for i in range(len(messages)))))
    return [await one(i) for i in range(len(messages))]


async def test_a_burst_of_first_requests_split_across_routers_lands_on_one_replica(
    pair: list[openai.AsyncOpenAI],
) -> None:
    for salt in ("burst-1", "burst-2", "burst-3"):
        placed = await placements_of(
            pair, [marked(salt, f"question {i}") for i in range(16)], together=True
        )
        assert len({seen.split()[0] for seen in placed}) == 1, placed


async def test_unmarked_requests_sharing_a_system_prompt_stick_across_routers(
    pair: list[openai.AsyncOpenAI],
) -> None:
    for salt in ("shared-1", "shared-2"):
        messages = [
            [
                {"role": "system", "content": system_prompt(salt=salt)},
                {"role": "user", "content": f"question {i}"},
            ]
            for i in range(8)
        ]
        assert len(set(await replicas_of(pair, messages, together=False))) == 1


async def test_redis_killed_a_placed_prefix_keeps_its_replica_and_nothing_fails(
    pair: list[openai.AsyncOpenAI], redis_server: RedisServer
) -> None:
    # Placed through router a only: router b knows it from Redis, or from rendezvous.
    placed = await replicas_of([pair[0], pair[0]], [marked("outage", "first")] * 2, together=False)
    redis_server.stop()
    during = await replicas_of(
        pair, [marked("outage", f"during {i}") for i in range(8)], together=False
    )
    assert set(during) == {placed[0]}
    # A prefix first seen during the outage is placed alike by both routers.
    fresh = await replicas_of(
        pair, [marked("outage-new", f"q {i}") for i in range(8)], together=True
    )
    assert len(set(fresh)) == 1


async def test_redis_restarted_empty_placed_prefixes_keep_their_replicas(
    pair: list[openai.AsyncOpenAI], redis_server: RedisServer
) -> None:
    """Redis comes back without its data: the routers that knew the prefixes keep them
    where they are (and put them back), instead of placing them afresh on cold replicas."""
    salts = [f"restart-{i}" for i in range(6)]
    before = {}
    for salt in salts:  # each placed through a, then seen through b
        placed = await placements_of(
            pair, [marked(salt, "first"), marked(salt, "second")], together=False
        )
        assert placed[1].endswith("hit"), placed
        before[salt] = placed[0].split()[0]
    assert len(set(before.values())) > 1  # spread over the fleet
    redis_server.stop()
    redis_server.start()  # same port, empty
    for salt in salts:
        after = await placements_of(
            pair, [marked(salt, "after a"), marked(salt, "after b")], together=False
        )
        assert [seen.split()[0] for seen in after] == [before[salt]] * 2, (salt, after)
        assert all(seen.endswith("hit") for seen in after), after
    # ...and put back: a router that knew nothing would find them in Redis.
    redis = Redis.from_url(redis_server.url)
    try:
        for _ in range(100):  # the writes go out off the requests' path: until they landed
            if len(await redis.keys("di:px:*")) >= len(salts):
                break
            await asyncio.sleep(0.02)
        holders = [await redis.smembers(key) for key in await redis.keys("di:px:*")]
        assert len(holders) >= len(salts)
        named = {m.decode() if isinstance(m, bytes) else m for found in holders for m in found}
        assert named <= set(before.values())
    finally:
        await redis.aclose()
