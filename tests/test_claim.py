"""Claims: a lookup that finds nothing records where its router places the new prefix, so
routers that see different loads still agree on one replica for a burst's first requests."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from router.app import create_app
from router.balancer import Balancer, Pool
from router.chain import Prefix, PrefixChain
from router.config import RouterConfig
from router.keys import STORE
from router.picker import Picker, rendezvous
from router.placement import Outcome, Placer
from router.redis_store import RedisPrefixStore
from router.store import (
    CLAIM_TTL,
    RECENCY_TTL,
    Claim,
    MemoryPrefixStore,
    PrefixStore,
    Proposal,
)

from .conftest import RedisServer, free_port, redis_clients

WINDOW = 600  # seconds the tests' recent-claim counts last


@dataclass
class Router:
    """What one router process places with: its own view of the pool's loads, its store."""

    pool: Pool
    placer: Placer
    store: PrefixStore


def router(store: PrefixStore, *in_flight: int, slack: float = 0.0) -> Router:
    config = RouterConfig.model_validate(
        {
            "backends": [
                {
                    "name": "pool",
                    "replicas": [
                        {"id": f"r{i}", "url": f"http://127.0.0.1:{9000 + i}/v1"}
                        for i in range(len(in_flight))
                    ],
                }
            ],
            "routes": {t: "pool" for t in ("text", "code", "json", "vision")},
            "routing": {"placement_slack": slack},
        }
    )
    pool = Balancer(config).pools["pool"]
    for replica, count in zip(pool.replicas, in_flight, strict=True):
        replica.in_flight = count
    return Router(pool, Placer(store, Picker(config.routing)), store)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def chain(name: str) -> PrefixChain:
    system = Prefix(f"{name}-system", 300, 2000)
    turn = Prefix(f"{name}-turn", 300, 2100)
    return PrefixChain([system, turn], [system, turn], marked=True)


@pytest.fixture(params=["fakeredis", "redis"])
async def shared(request: pytest.FixtureRequest) -> AsyncIterator[list[RedisPrefixStore]]:
    """Two routers' stores on one Redis."""
    clients = redis_clients(request, 2)
    # Recent-claim counts that outlast any test: the tests do not race a one-second window.
    stores = [
        RedisPrefixStore(client, key_prefix="claim:", timeout=1.0, recent_window=WINDOW)
        for client in clients
    ]
    yield stores
    for store in stores:
        await store.aclose()


async def test_routers_that_see_different_loads_place_a_burst_on_one_replica(
    shared: list[RedisPrefixStore],
) -> None:
    # Each router thinks a different replica is the least loaded, so alone each would place a
    # new prefix on its own choice.
    a = router(shared[0], 0, 20, 20, 20)
    b = router(shared[1], 20, 20, 20, 0)
    for n in range(10):
        request = chain(f"burst-{n}")
        placements = await asyncio.gather(
            *(r.placer.place(r.pool, request) for r in (a, b, a, b, a, b))
        )
        firsts = {p.ranking.candidates[0].id for p in placements}
        assert len(firsts) == 1, firsts
        assert firsts <= {"r0", "r3"}  # the proposal of whichever router came first
        assert sum(p.claimed is not None for p in placements) == 1
        # Everyone else found the claim: a hit on the claimed replica.
        assert sum(p.found is not None for p in placements) == 5


def same_order(count: int, pool: Pool) -> list[str]:
    """``count`` chain names whose placement keys rank ``pool``'s replicas in one rendezvous
    order: without shared counts, routers that see the same loads place them alike."""
    names: list[str] = []
    order: list[str] | None = None
    for n in range(10_000):
        key = chain(f"same-{n}").placement_key
        assert key is not None
        ranked = [r.id for r in sorted(pool.replicas, key=lambda r: rendezvous(key, r))]
        if order is None:
            order = ranked
        if ranked == order:
            names.append(f"same-{n}")
            if len(names) == count:
                return names
    raise AssertionError("no such keys")


async def test_new_prefixes_from_several_routers_spread_before_any_scrape_shows_them(
    shared: list[RedisPrefixStore],
) -> None:
    """Two routers see an idle fleet and only their own requests in flight (no scrape has
    caught up). Four new prefixes that every router would rank alike, placed alternately:
    each router adds the other's recent claims, counted in Redis, to its own loads, so they
    land on four replicas; without the counts the routers would pair up on two."""
    a = router(shared[0], 0, 0, 0, 0)
    b = router(shared[1], 0, 0, 0, 0)
    placed = []
    for name, r in zip(same_order(4, a.pool), [a, b, a, b], strict=True):
        placement = await r.placer.place(r.pool, chain(name))
        chosen = placement.ranking.candidates[0]
        assert placement.claimed == chosen.id
        chosen.in_flight += 1  # sent: in this router's own load from now on
        placed.append(chosen.id)
    assert len(set(placed)) == 4, placed
    # The counts last one window.
    assert 0 < await shared[0].redis.ttl("claim:placed:pool") <= WINDOW


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_one_router_places_alike_with_redis_and_without(
    backend: str, shared: list[RedisPrefixStore]
) -> None:
    """A router's own claims are in its loads once sent; the shared counts must not add them
    again. With a slack of one request, two new prefixes that rank alike share a replica."""
    store: PrefixStore = MemoryPrefixStore() if backend == "memory" else shared[0]
    one = router(store, 0, 0, 0, 0, slack=1.0)
    placed = []
    for name in same_order(2, one.pool):
        placement = await one.placer.place(one.pool, chain(name))
        chosen = placement.ranking.candidates[0]
        chosen.in_flight += 1
        placed.append(chosen.id)
    assert placed[0] == placed[1], placed


async def tie_placements(stores: list[PrefixStore]) -> list[str]:
    """Eight new prefixes placed on an idle fleet of four, by ``stores``' routers in turn."""
    fleet = [router(store, 0, 0, 0, 0) for store in stores]
    placed = []
    for n in range(8):
        one = fleet[n % len(fleet)]
        placement = await one.placer.place(one.pool, chain(f"turn-{n}"))
        chosen = placement.ranking.candidates[0].id
        assert placement.claimed == chosen
        placed.append(chosen)
    return placed


async def test_replicas_that_tie_take_new_prefixes_in_turn() -> None:
    """On an idle fleet every replica ties: new prefixes go to the replica given one longest
    ago, not by their hashes (which would put some on one replica and none on another)."""
    placed = await tie_placements([MemoryPrefixStore()])
    assert sorted(placed[:4]) == ["r0", "r1", "r2", "r3"], placed
    assert placed[4:] == placed[:4], placed


async def test_two_routers_over_redis_take_tied_replicas_in_turn_as_one_router_does(
    shared: list[RedisPrefixStore],
) -> None:
    placed = await tie_placements(list(shared))
    assert placed == await tie_placements([MemoryPrefixStore()])
    assert 0 < await shared[0].redis.ttl("claim:order:pool") <= RECENCY_TTL


async def test_routers_cut_off_from_redis_break_ties_by_rendezvous_alike() -> None:
    """Without Redis the routers cannot share the placement order: each places a new prefix
    by rendezvous, so they still agree."""
    nobody = f"redis://127.0.0.1:{free_port()}"  # nothing listens there
    stores = [
        RedisPrefixStore(
            Redis.from_url(nobody, socket_connect_timeout=0.5), failure_threshold=1, timeout=0.5
        )
        for _ in range(2)
    ]
    try:
        for store in stores:
            assert (await store.lookup([Prefix("warm", 300, 2000)])).degraded
        a, b = (router(store, 0, 0, 0, 0) for store in stores)
        names = [f"cut-off-{n}" for n in range(6)]
        for name in ("only-a-0", "only-a-1"):  # a's placement order now differs from b's
            await a.placer.place(a.pool, chain(name))
        seen = [
            [(await r.placer.place(r.pool, chain(name))).claimed for name in names] for r in (a, b)
        ]
        expected = []
        for name in names:
            key = chain(name).placement_key
            assert key is not None
            expected.append(max(a.pool.replicas, key=lambda r: rendezvous(key, r)).id)
        assert seen[0] == seen[1] == expected
    finally:
        for store in stores:
            await store.aclose()


def fixed(proposal: Proposal) -> Callable[[], Proposal]:
    return lambda: proposal


@pytest.mark.parametrize("slack", [0.0, 0.5, 2.0])
async def test_the_lookup_script_picks_as_proposal_pick_does(
    slack: float, shared: list[RedisPrefixStore]
) -> None:
    """The rule lives twice (Python for one process, Lua for Redis): they agree, with the
    other routers' recent claims, ties broken by the placement order, and slack."""
    draw = random.Random(f"pick-{slack}")
    store, other = shared
    try:
        for case in range(60):
            replicas = [f"r{i}" for i in range(draw.randint(1, 5))]
            loads = [(r, float(draw.choice([0, 0.5, 1, 2, 2.5, 4]))) for r in replicas]
            proposal = Proposal(f"pool-{case}", loads, slack)
            # Another router's recent claims on this pool, in a random order.
            theirs = {r: draw.randint(0, 2) for r in replicas}
            seeds = [r for r, count in theirs.items() for _ in range(count)]
            draw.shuffle(seeds)
            last: dict[str, int] = {}
            for n, r in enumerate(seeds, 1):
                seed = chain(f"seed-{case}-{n}")
                only = Proposal(f"pool-{case}", [(r, 0.0)], 0.0)
                await other.lookup(seed.lookups, Claim(seed.records, fixed(only)))
                last[r] = n
            request = chain(f"case-{case}")
            result = await store.lookup(request.lookups, Claim(request.records, fixed(proposal)))
            expected = proposal.pick(theirs, last)
            assert result.claimant == expected, (loads, theirs, last, slack)
    finally:
        await store.aclose()
        await other.aclose()


async def test_one_router_keeps_the_same_placement_order_in_process_and_in_redis(
    shared: list[RedisPrefixStore],
) -> None:
    """The order one router keeps in process and the one Redis keeps for it are the same,
    whether or not a claim was a tie (every claim counts in the order)."""
    draw = random.Random("order")
    memory = MemoryPrefixStore()
    for n in range(80):
        loads = [(f"r{i}", float(draw.choice([0, 0, 1, 2]))) for i in range(4)]
        proposal = Proposal("pool", loads, 0.0)
        request = chain(f"order-{n}")
        here = await memory.lookup(request.lookups, Claim(request.records, fixed(proposal)))
        there = await shared[0].lookup(request.lookups, Claim(request.records, fixed(proposal)))
        assert here.claimant == there.claimant, (n, loads)


async def test_the_placement_order_is_forgotten_after_the_pools_last_claim() -> None:
    clock = Clock()
    store = MemoryPrefixStore(clock=clock)
    tied = Proposal("pool", [("r0", 0.0), ("r1", 0.0)], 0.0)

    async def claim(name: str, proposal: Proposal = tied) -> str | None:
        request = chain(name)
        return (
            await store.lookup(request.lookups, Claim(request.records, fixed(proposal)))
        ).claimant

    assert await claim("kept-0") == "r0"
    clock.now += RECENCY_TTL - 1
    assert await claim("kept-1") == "r1"  # r1 was never given one
    clock.now += RECENCY_TTL - 1  # within the window of the last claim
    assert await claim("kept-2") == "r0"  # r0's was the older
    clock.now += RECENCY_TTL  # forgotten: rendezvous order again, not r1's turn
    assert await claim("forgotten-0") == "r0"
    # Forgotten whole: r1 counts as never given one again, so it goes before r2.
    three = Proposal("pool", [("r0", 0.0), ("r1", 0.0), ("r2", 0.0)], 0.0)
    assert await claim("forgotten-1", three) == "r1"


async def test_each_claim_renews_the_placement_order_in_redis(
    shared: list[RedisPrefixStore],
) -> None:
    tied = Proposal("pool", [("r0", 0.0), ("r1", 0.0)], 0.0)
    for n in range(2):
        request = chain(f"renewed-{n}")
        await shared[0].lookup(request.lookups, Claim(request.records, fixed(tied)))
        await shared[0].redis.expire("claim:order:pool", 2)  # as if it were about to go
    request = chain("renewed-2")
    await shared[0].lookup(request.lookups, Claim(request.records, fixed(tied)))
    assert await shared[0].redis.ttl("claim:order:pool") > 2


async def test_a_claim_is_only_made_for_prefixes_nobody_holds(
    shared: list[RedisPrefixStore],
) -> None:
    request = chain("held")
    shared[0].record(request.records, "r2", first=True)
    await shared[0].flush()
    proposed: list[str] = []

    def propose() -> Proposal:
        proposed.append("r1")
        return Proposal("pool", [("r1", 0.0)], 0.0)

    result = await shared[1].lookup(request.lookups, Claim(request.records, propose))
    assert not result.claimed
    assert result.found is not None and result.found.holders == ("r2",)
    assert (await shared[0].lookup(request.lookups)).found.holders == ("r2",)  # type: ignore[union-attr]


async def test_a_claimed_replica_that_fails_is_forgotten_and_the_prefix_placed_afresh(
    shared: list[RedisPrefixStore],
) -> None:
    a = router(shared[0], 0, 5, 5)
    b = router(shared[1], 5, 5, 0)
    request = chain("fails")
    placed = await a.placer.place(a.pool, request)
    assert placed.claimed == "r0"
    refused = a.pool.replicas[0]
    a.placer.dispatched(placed, refused)
    a.placer.report(placed, refused, Outcome.REFUSED)
    await shared[0].flush()
    again = await b.placer.place(b.pool, request)
    assert again.claimed == "r2" and again.ranking.candidates[0].id == "r2"


async def test_in_one_process_a_claim_holds_across_a_wait_before_the_dispatch() -> None:
    """Between a lookup and its dispatch a request may wait (a rate-limit check): a second
    request looked up meanwhile still finds the first one's replica."""
    store = MemoryPrefixStore()
    one = router(store, 0, 0, 0)
    request = chain("waits")
    first = await one.placer.place(one.pool, request)
    chosen = first.ranking.candidates[0]
    chosen.in_flight += 3  # as the first request is sent, the picker would now look elsewhere
    second = await one.placer.place(one.pool, request)
    assert second.found is not None and second.ranking.candidates[0] is chosen
    assert second.cache(chosen) == "hit"


async def test_with_redis_down_the_claim_is_kept_in_process() -> None:
    nobody = f"redis://127.0.0.1:{free_port()}"  # nothing listens there
    store = RedisPrefixStore(
        Redis.from_url(nobody, socket_connect_timeout=0.5), failure_threshold=1, timeout=0.5
    )
    try:
        assert (await store.lookup([Prefix("warm", 300, 2000)])).degraded
        assert store.down
        one = router(store, 0, 0, 0)
        request = chain("outage")
        first = await one.placer.place(one.pool, request)
        assert first.degraded and first.claimed is not None
        claimed = next(r for r in one.pool.replicas if r.id == first.claimed)
        claimed.in_flight += 3
        second = await one.placer.place(one.pool, request)
        assert second.ranking.candidates[0] is claimed
    finally:
        await store.aclose()


async def holders_in_redis(store: RedisPrefixStore, prefix: Prefix) -> set[str]:
    await store.flush()
    members = await store.redis.smembers(store.key(prefix.key))
    return {m.decode() if isinstance(m, bytes) else m for m in members}


async def test_an_unconfirmed_claim_lapses_soon_and_the_dispatch_confirms_it(
    shared: list[RedisPrefixStore],
) -> None:
    a = router(shared[0], 0, 5, 5)
    request = chain("confirm")
    system = request.records[0]
    placed = await a.placer.place(a.pool, request)
    assert placed.claimed == "r0"
    # A request turned away after its lookup (its rate limit, its client gone) is never sent:
    # its claim lapses within CLAIM_TTL, not the prefix's TTL.
    assert 0 < await shared[0].redis.ttl(shared[0].key(system.key)) <= CLAIM_TTL
    a.placer.dispatched(placed, a.pool.replicas[0])
    await shared[0].flush()
    assert await shared[0].redis.ttl(shared[0].key(system.key)) > CLAIM_TTL
    assert await holders_in_redis(shared[0], system) == {"r0"}


async def test_a_claimed_replica_passed_over_gives_way_to_the_one_used(
    shared: list[RedisPrefixStore],
) -> None:
    a = router(shared[0], 0, 5, 5)
    request = chain("passed-over")
    placed = await a.placer.place(a.pool, request)
    assert placed.claimed == "r0"
    a.placer.dispatched(placed, a.pool.replicas[1])  # r0's breaker opened meanwhile
    assert await holders_in_redis(shared[0], request.records[-1]) == {"r1"}
    found = (await shared[1].lookup(request.lookups)).found
    assert found is not None and found.holders == ("r1",)


class Gate:
    """A Redis reply that comes too late: holds a store's lookup script until opened, either
    before it runs (``runs_late``) or after (it ran, its answer is late)."""

    def __init__(self, store: RedisPrefixStore, *, runs_late: bool) -> None:
        self.open = asyncio.Event()
        self._runs_late = runs_late
        self._script = store._lookup_script
        store._lookup_script = self  # type: ignore[assignment]

    async def __call__(self, *, keys: Any, args: Any) -> Any:
        if self._runs_late:
            await self.open.wait()
            return await self._script(keys=keys, args=args)
        answer = await self._script(keys=keys, args=args)
        await self.open.wait()
        return answer


@pytest.mark.parametrize(
    ("then", "runs_late"),
    [("sent", False), ("sent elsewhere", False), ("refused", True), ("waiting", True)],
)
async def test_a_claim_whose_answer_came_after_its_lookup_gave_up_is_settled(
    then: str, runs_late: bool, redis_server: RedisServer
) -> None:
    store = RedisPrefixStore(Redis.from_url(redis_server.url), key_prefix="late:", timeout=0.05)
    try:
        gate = Gate(store, runs_late=runs_late)
        a = router(store, 0, 5, 5)
        request = chain(f"late-{then}")
        last = request.records[-1]
        placed = await a.placer.place(a.pool, request)
        assert placed.degraded and placed.claimed is None
        proposed = placed.ranking.candidates[0]
        assert proposed.id == "r0"  # the claim carries the same pick (no other router)
        sent = a.pool.replicas[1] if then == "sent elsewhere" else proposed
        if then != "waiting":  # "waiting": still held by its rate-limit check
            a.placer.dispatched(placed, sent)  # elsewhere: r0's breaker opened meanwhile
        if then == "refused":
            a.placer.report(placed, sent, Outcome.REFUSED)
        gate.open.set()
        await store.flush()
        await store.flush()  # the settling write the late answer started
        held = await holders_in_redis(store, last)
        ttl = await store.redis.ttl(store.key(last.key))
        if then == "sent":
            assert held == {"r0"} and ttl > CLAIM_TTL  # confirmed
        elif then == "sent elsewhere":
            assert held == {"r1"} and ttl > CLAIM_TTL  # where the request went
        elif then == "refused":
            # The late claim must not bring back the replica that failed.
            assert held == set() and store.local.holders(last) == ()
        else:
            assert held == {"r0"} and 0 < ttl <= CLAIM_TTL  # it stands, for now
            a.placer.dispatched(placed, sent)
            await store.flush()
            assert await store.redis.ttl(store.key(last.key)) > CLAIM_TTL
    finally:
        await store.aclose()


async def test_a_claim_whose_answer_was_lost_is_confirmed_by_the_dispatch(
    shared: list[RedisPrefixStore],
) -> None:
    """Redis ran the claim but its answer never came back: the request's first-placement
    record finds its own replica there and confirms it."""
    request = chain("lost-answer")
    last = request.records[-1]
    only_r0 = Proposal("pool", [("r0", 0.0)], 0.0)
    await shared[1].lookup(request.lookups, Claim(request.records, lambda: only_r0))
    assert 0 < await shared[1].redis.ttl(shared[1].key(last.key)) <= CLAIM_TTL
    shared[0].record(request.records, "r0", first=True)  # the dispatch, unaware of the claim
    await shared[0].flush()
    assert await shared[0].redis.ttl(shared[0].key(last.key)) > CLAIM_TTL
    shared[0].record(request.records, "r1", first=True)  # another replica: still first wins
    assert await holders_in_redis(shared[0], last) == {"r0"}


async def test_a_prefix_known_in_process_is_not_claimed(shared: list[RedisPrefixStore]) -> None:
    """What this process learnt from Redis is no new prefix: no claim, no second ranking."""
    request = chain("known")
    shared[0].record(request.records, "r2", first=True)
    await shared[0].flush()
    assert (await shared[1].lookup(request.lookups)).found is not None  # router b learns it
    await shared[0].redis.delete(*(shared[0].key(p.key) for p in request.lookups))  # evicted
    asked: list[str] = []

    def propose() -> Proposal:
        asked.append("r1")
        return Proposal("pool", [("r1", 0.0)], 0.0)

    result = await shared[1].lookup(request.lookups, Claim(request.records, propose))
    assert asked == [] and not result.claimed
    assert await holders_in_redis(shared[1], request.records[-1]) == set()


@pytest.mark.parametrize("worker", [False, True])
async def test_workers_without_redis_break_ties_by_rendezvous(worker: bool) -> None:
    """The workers of one router (``serve --workers N``) keep an index each and cannot share
    a placement order: as routers cut off from Redis do, they place by rendezvous alone. A
    router of one process keeps the order."""
    config = RouterConfig.model_validate(
        {
            "backends": [
                {"name": "pool", "replicas": [{"id": "r0", "url": "http://127.0.0.1:9/v1"}]}
            ],
            "routes": {t: "pool" for t in ("text", "code", "json", "vision")},
        }
    )
    app = create_app(config, worker=worker)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        store = app[STORE]
        assert isinstance(store, MemoryPrefixStore)
        assert store.ordered is not worker
    finally:
        await server.close()
