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
    PLACEMENT_KEPT,
    RECENCY_TTL,
    TURN,
    Claim,
    MemoryPrefixStore,
    PrefixStore,
    Proposal,
    _PoolPlacements,
    _Trees,
    placement_name,
)

from .conftest import RedisServer, redis_clients

WINDOW = 600  # seconds the tests' recent-claim counts last


@dataclass
class Router:
    """What one router process places with: its own view of the pool's loads, its store."""

    pool: Pool
    placer: Placer
    store: PrefixStore


def router(
    store: PrefixStore, *in_flight: int, slack: float = 0.0, count_slack: float | None = 0.0
) -> Router:
    """A router placing on ``len(in_flight)`` replicas with those requests in flight to each;
    ``count_slack`` None: the configured default."""
    routing: dict[str, float] = {"placement_slack": slack}
    if count_slack is not None:
        routing["placement_count_slack"] = count_slack
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
            "routing": routing,
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


def chain(name: str, ttl: int = 300, *, turns: bool = False) -> PrefixChain:
    """A request marked on its system prompt and its latest turn; ``turns``: on its two
    latest turns (its placement is then a conversation's, named ``...|turn``)."""
    system = Prefix(f"{name}-system", ttl, 2000)
    turn = Prefix(f"{name}-turn", ttl, 2100)
    records = [Prefix(system.key, ttl, 2000, turn=turns), Prefix(turn.key, ttl, 2100, turn=True)]
    return PrefixChain([system, turn], records, marked=True)


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
    land on four replicas; without the counts the routers would pair up on two. (The counts
    of the prefixes each replica holds would spread them too: they are cleared, to test the
    recent claims alone.)"""
    a = router(shared[0], 0, 0, 0, 0)
    b = router(shared[1], 0, 0, 0, 0)
    placed = []
    for name, r in zip(same_order(4, a.pool), [a, b, a, b], strict=True):
        placement = await r.placer.place(r.pool, chain(name))
        chosen = placement.ranking.candidates[0]
        assert placement.claimed == chosen.id
        chosen.in_flight += 1  # sent: in this router's own load from now on
        placed.append(chosen.id)
        await shared[0].redis.delete(*(f"claim:trees:4:pool:r{i}" for i in range(4)))
    assert len(set(placed)) == 4, placed
    # The counts last one window.
    assert 0 < await shared[0].redis.ttl("claim:placed:pool") <= WINDOW


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_one_router_places_alike_with_redis_and_without(
    backend: str, shared: list[RedisPrefixStore]
) -> None:
    """A router's own claims are in its loads once sent; the shared counts must not add them
    again, or a replica it just gave a prefix would look busier than it is."""
    store: PrefixStore = MemoryPrefixStore() if backend == "memory" else shared[0]
    one = router(store, 0, 0)
    first = (await one.placer.place(one.pool, chain("alike-0"))).ranking.candidates[0]
    first.in_flight += 1  # the request is on its way
    other = next(r for r in one.pool.replicas if r is not first)
    other.in_flight = 2  # busy with other work
    # Counted twice, the first replica's claim would make the two tie at 2, and the other
    # (given no new prefix yet) would take the next one.
    second = (await one.placer.place(one.pool, chain("alike-1"))).ranking.candidates[0]
    assert second is first


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


async def test_routers_cut_off_from_redis_break_ties_by_rendezvous_alike(
    refused_port: Callable[[], int],
) -> None:
    """Without Redis the routers cannot share the placement order: each places a new prefix
    by rendezvous, so they still agree."""
    nobody = f"redis://127.0.0.1:{refused_port()}"  # nothing listens there
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
    other routers' recent claims, the new prefixes each replica holds, ties broken by the
    placement order, and slack."""
    draw = random.Random(f"pick-{slack}")
    store, other = shared
    try:
        for case in range(60):
            replicas = [f"r{i}" for i in range(draw.randint(1, 5))]
            loads = [(r, float(draw.choice([0, 0.5, 1, 2, 2.5, 4]))) for r in replicas]
            proposal = Proposal(loads, slack, draw.choice([0.0, 0.5, 2.0, 8.0]))
            # Another router's recent claims on this pool, in a random order.
            theirs = {r: draw.randint(0, 2) for r in replicas}
            seeds = [r for r, count in theirs.items() for _ in range(count)]
            draw.shuffle(seeds)
            last: dict[str, int] = {}
            for n, r in enumerate(seeds, 1):
                seed = chain(f"seed-{case}-{n}")
                only = Proposal([(r, 0.0)], 0.0)
                await other.lookup(seed.lookups, Claim(f"pool-{case}", seed.records, fixed(only)))
                last[r] = n
            # Each claim also gave its replica a new prefix; the recent counts may have
            # lapsed meanwhile while those prefixes have not.
            recent: dict[str, int] = dict(theirs)
            if draw.random() < 0.5:
                await store.redis.delete(f"claim:placed:pool-{case}")
                recent = {}
            request = chain(f"case-{case}")
            result = await store.lookup(
                request.lookups, Claim(f"pool-{case}", request.records, fixed(proposal))
            )
            expected = proposal.pick(recent, last, trees=theirs)
            assert result.claimant == expected, (proposal, recent, last, theirs)
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
        proposal = Proposal(loads, 0.0)
        request = chain(f"order-{n}")
        here = await memory.lookup(request.lookups, Claim("pool", request.records, fixed(proposal)))
        there = await shared[0].lookup(
            request.lookups, Claim("pool", request.records, fixed(proposal))
        )
        assert here.claimant == there.claimant, (n, loads)


async def test_the_placement_order_is_forgotten_after_the_pools_last_claim() -> None:
    clock = Clock()
    store = MemoryPrefixStore(clock=clock)
    tied = Proposal([("r0", 0.0), ("r1", 0.0)], 0.0)

    async def claim(name: str, proposal: Proposal = tied) -> str | None:
        # Prefixes that lapse before the next claim: only the order tells the replicas apart.
        request = chain(name, ttl=RECENCY_TTL // 2)
        return (
            await store.lookup(request.lookups, Claim("pool", request.records, fixed(proposal)))
        ).claimant

    assert await claim("kept-0") == "r0"
    clock.now += RECENCY_TTL - 1
    assert await claim("kept-1") == "r1"  # r1 was never given one
    clock.now += RECENCY_TTL - 1  # within the window of the last claim
    assert await claim("kept-2") == "r0"  # r0's was the older
    clock.now += RECENCY_TTL  # forgotten: rendezvous order again, not r1's turn
    assert await claim("forgotten-0") == "r0"
    # Forgotten whole: r1 counts as never given one again, so it goes before r2 (r0 holds
    # the prefix it was just given).
    three = Proposal([("r0", 0.0), ("r1", 0.0), ("r2", 0.0)], 0.0)
    assert await claim("forgotten-1", three) == "r1"


async def give(store: PrefixStore, replica: str, *names: str, turns: bool = False) -> None:
    """Claims that give ``replica`` a new prefix each, as a router placing them would."""
    only = Proposal([(replica, 0.0)], 0.0)
    for name in names:
        request = chain(name, turns=turns)
        claim = Claim("pool", request.records, fixed(only))
        assert (await store.lookup(request.lookups, claim)).claimant


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_within_the_slack_a_new_prefix_goes_where_fewest_were_placed(
    backend: str, shared: list[RedisPrefixStore]
) -> None:
    """A replica that holds more of the working set is passed over for one that holds less
    while their loads are within the count slack (8 by default); beyond it, load decides.
    With Redis the counts are shared: one router's placements steer another's."""
    giving: PrefixStore
    placing: PrefixStore
    if backend == "memory":
        placing = giving = MemoryPrefixStore()
    else:
        giving, placing = shared
    await give(giving, "r0", "held-0", "held-1", "held-2", "held-3")
    await give(giving, "r1", "held-4")
    if backend == "redis":  # long since sent: the loads show them, not the recent claims
        await shared[0].redis.delete("claim:placed:pool")
    for count_slack, expected in ((None, "r1"), (2.0, "r1"), (0.0, "r0")):
        one = router(placing, 0, 1, count_slack=count_slack)  # r0 is the lighter
        placement = await one.placer.place(one.pool, chain(f"new-{count_slack}"))
        assert placement.claimed == expected, count_slack


async def test_a_placement_counts_while_its_prefix_is_in_use() -> None:
    """A new prefix counts against its replica for as long as a claim stands, and for its
    whole TTL from each lookup that finds it again, as the index keeps the prefix itself: a
    prefix placed and never asked for again soon stops counting."""
    clock = Clock()
    store = MemoryPrefixStore(clock=clock)
    await give(store, "r0", "used-0", "used-1", "once-0")
    await give(store, "r1", "used-2", "used-3")
    one = router(store, 0, 1, count_slack=2.0)  # r0 is the lighter
    for name in ("used-0", "used-1", "used-2", "used-3"):  # found again
        assert (await one.placer.place(one.pool, chain(name))).found is not None
    clock.now += CLAIM_TTL + 1  # "once-0" no longer counts; the four in use do
    assert (await one.placer.place(one.pool, chain("soon"))).claimed == "r0"  # 2 and 2
    clock.now += 300  # every placement has lapsed: r0's three would keep it out
    assert (await one.placer.place(one.pool, chain("later"))).claimed == "r0"


async def test_a_replicas_placements_are_bounded_by_the_index_size() -> None:
    """However many new prefixes a flood of distinct conversations brings, each replica's
    placements are kept to ``memory_max_entries``: the ones kept uncounted go first, then
    the oldest; the newest claims still count."""
    clock = Clock()
    store = MemoryPrefixStore(4, clock=clock)
    await give(store, "r0", "old-0", "old-1")
    clock.now += CLAIM_TTL + 1  # those two stop counting, kept for renewal
    await give(store, "r0", *(f"new-{i}" for i in range(4)))
    trees = store._pools["pool"].trees["r0"]  # type: ignore[index]
    assert list(trees.expires) == [f"new-{i}-system" for i in range(4)]
    assert trees.count(clock.now) == 4
    await give(store, "r0", *(f"flood-{i}" for i in range(50)))
    assert list(trees.expires) == [f"flood-{i}-system" for i in range(46, 50)]
    assert trees.count(clock.now) == 4
    assert len(trees.heap) + len(trees.dropping) <= 2 * 4 + 64


def test_renewals_do_not_grow_a_replicas_placements_without_bound() -> None:
    """A placement renewed again and again leaves stale heap entries behind; they are swept
    once they outnumber the live ones by the margin, not kept until their time comes."""
    trees = _Trees(limit=2)
    now = 0.0
    for _ in range(500):
        trees.set("hot", now + 300, now)
        now += 1
    assert trees.count(now) == 1
    assert len(trees.heap) + len(trees.dropping) <= 2 * 2 + 64
    now += 300  # it stops counting once, as set last
    assert trees.count(now) == 0
    assert "hot" in trees.expires  # kept for renewal


def test_past_the_limit_placements_that_stopped_counting_go_first() -> None:
    """One kept only for renewal goes before an older one that still counts."""
    trees = _Trees(limit=3)
    trees.set("confirmed", 1000, 0)
    trees.set("claim", 5, 0)
    trees.set("next", 1000, 6)  # "claim" has stopped counting by now: kept for renewal
    trees.set("latest", 1000, 6)
    assert list(trees.expires) == ["confirmed", "next", "latest"]
    assert trees.count(6) == 3


def test_a_renewed_placement_outlives_those_set_since_it_was_first() -> None:
    """Past the limit the placement set longest ago goes: a renewal counts as set anew."""
    trees = _Trees(limit=3)
    for key in ("a", "b", "c"):
        trees.set(key, 10, 0)
    trees.set("a", 20, 1)  # found again: renewed
    trees.set("d", 10, 2)
    assert list(trees.expires) == ["c", "a", "d"]
    assert trees.count(2) == 3


@pytest.mark.parametrize("counted_in", [None, "pool"])
async def test_a_placement_made_twice_at_one_instant_stops_counting_once(
    counted_in: str | None,
) -> None:
    """Claimed, forgotten (its count dropped with it, or not) and claimed again within one
    clock reading: when its time is up it stops counting once, and the replica's later
    placements count as they should."""
    clock = Clock()
    store = MemoryPrefixStore(clock=clock)
    await give(store, "r0", "twice")
    store.forget(chain("twice").records, "r0", counted_in=counted_in)
    await give(store, "r0", "twice")
    clock.now += CLAIM_TTL + 1
    await give(store, "r0", "later-0")
    await give(store, "r1", "later-1")
    one = router(store, 1, 0, count_slack=2.0)  # r1 is the lighter: one placement each
    assert (await one.placer.place(one.pool, chain("next"))).claimed == "r1"


async def test_redis_renews_a_placement_for_a_while_after_it_stopped_counting(
    shared: list[RedisPrefixStore],
) -> None:
    store = shared[0]
    redis = store.redis
    one = router(store, 0, 0)
    now = float((await redis.time())[0])
    for name, stopped in (("paused", now - 20), ("long-gone", now - PLACEMENT_KEPT - 20)):
        request = chain(name)
        await give(store, "r0", name)
        store.record(request.records, "r0", first=False)  # sent: confirmed
        await store.flush()
        member = store.key(request.records[0].key)
        await redis.zadd("claim:trees:4:pool:r0", {member: stopped})
        assert (await one.placer.place(one.pool, request)).found is not None
        score = await redis.zscore("claim:trees:4:pool:r0", member)
        assert score is not None
        renewed = score > now + 290
        assert renewed == (name == "paused"), (name, score - now)


async def test_a_late_claim_stands_no_longer_than_a_claim(redis_server: RedisServer) -> None:
    """A request whose claim answered late and that was never sent leaves nothing behind
    once the claim's time is up: a later first placement of the prefixes is an ordinary one
    (first placement wins), not a takeover that removes the claimed replica."""
    clock = Clock()
    store = RedisPrefixStore(
        Redis.from_url(redis_server.url), key_prefix="stale:", timeout=0.05, clock=clock
    )
    try:
        gate = Gate(store, runs_late=True)
        a = router(store, 0, 5, 5)
        request = chain("stale")
        await a.placer.place(a.pool, request)  # gave up waiting; never sent
        gate.open.set()
        await store.flush()
        await store.flush()
        clock.now += CLAIM_TTL + 1
        store.record(request.records, "r1", first=True)
        await store.flush()
        assert await holders_in_redis(store, request.records[-1]) == {"r0"}
    finally:
        await store.aclose()


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_prefix_claimed_again_counts_once(
    backend: str, shared: list[RedisPrefixStore]
) -> None:
    store: PrefixStore = MemoryPrefixStore() if backend == "memory" else shared[0]
    await give(store, "r1", "other")
    await give(store, "r0", "again")
    store.forget(chain("again").records, "r0")  # it failed there: placed afresh, on r0 again
    await store.flush()
    await give(store, "r0", "again")
    one = router(store, 0, 1, count_slack=2.0)
    # Counted twice, r0 would hold more than r1 and be passed over although lighter.
    assert (await one.placer.place(one.pool, chain("new"))).claimed == "r0"


@pytest.mark.parametrize("turns", [False, True])
@pytest.mark.parametrize("outcome", [Outcome.ERROR, Outcome.OK])
@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_replica_that_loses_a_prefix_stops_counting_its_placement(
    backend: str, outcome: Outcome, turns: bool, shared: list[RedisPrefixStore]
) -> None:
    """A replica that answers with an error, or reports a prefix evicted (a "hit" with no
    cached tokens), loses it from the index and from its count at once: the replica does
    not hold it, so it must not be passed over for new prefixes as if it did. (``turns``:
    the lost placement is a conversation's.)"""
    store: PrefixStore = MemoryPrefixStore() if backend == "memory" else shared[0]
    await give(store, "r0", "kept")
    await give(store, "r0", "lost", turns=turns)
    await give(store, "r1", "other")
    one = router(store, 0, 1, count_slack=2.0)  # r0 is the lighter, but holds two
    lost = await one.placer.place(one.pool, chain("lost", turns=turns))
    assert lost.found is not None and lost.ranking.candidates[0].id == "r0"
    r0 = one.pool.replicas[0]
    one.placer.dispatched(lost, r0)
    one.placer.report(lost, r0, outcome, cached_tokens=0)
    await store.flush()
    assert (await one.placer.place(one.pool, chain("new"))).claimed == "r0"  # one each


@pytest.mark.parametrize("turns", [False, True])
@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_placement_passed_over_counts_where_it_went(
    backend: str, turns: bool, shared: list[RedisPrefixStore]
) -> None:
    """A claim whose replica was passed over at the dispatch (its breaker opened meanwhile)
    counts where the request went instead, and is renewed there when found again.
    (``turns``: the placement is a conversation's.)"""
    clock = Clock()
    store: PrefixStore = MemoryPrefixStore(clock=clock) if backend == "memory" else shared[0]
    one = router(store, 1, 0, count_slack=2.0)  # r1 is the lighter
    moved = chain("moved", turns=turns)
    placed = await one.placer.place(one.pool, moved)
    assert placed.claimed == "r1"
    one.placer.dispatched(placed, one.pool.replicas[0])
    await store.flush()
    one.pool.replicas[0].in_flight, one.pool.replicas[1].in_flight = 0, 1
    # r0 holds it, r1 none. Were it still counted on r1 (a tie), or not on r0, r0 (the
    # lighter) would take the next new prefix.
    assert (await one.placer.place(one.pool, chain("next"))).claimed == "r1"
    if backend == "memory":
        clock.now += CLAIM_TTL + 1
    else:  # as if the claim's 10 s were up in Redis too
        redis = shared[0].redis
        then = float((await redis.time())[0]) - 1
        for replica, member in (
            ("r0", placement_name(shared[0].key(moved.records[0].key), moved.records[0])),
            ("r1", shared[0].key(chain("next").records[0].key)),
        ):
            assert await redis.zadd(f"claim:trees:4:pool:{replica}", {member: then}, xx=True) == 0
            assert await redis.zscore(f"claim:trees:4:pool:{replica}", member) == then
    again = await one.placer.place(one.pool, moved)
    assert again.found is not None and again.found.holders == ("r0",)
    # Renewed on r0, which holds one to r1's none: not renewed, r0 (the lighter) would take it.
    assert (await one.placer.place(one.pool, chain("after"))).claimed == "r1"


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_pools_and_replicas_named_with_colons_keep_their_counts_apart(
    backend: str, shared: list[RedisPrefixStore]
) -> None:
    """Pool ``a:b`` with replica ``c`` and pool ``a`` with replica ``b:c``: names may hold
    ':', and one's placements must not count against the other."""
    store: PrefixStore = MemoryPrefixStore() if backend == "memory" else shared[0]
    only_c = Proposal([("c", 0.0)], 0.0)
    for name in ("colon-0", "colon-1"):
        request = chain(name)
        placed = await store.lookup(request.lookups, Claim("a:b", request.records, fixed(only_c)))
        assert placed.claimant == "c"
    either = Proposal([("b:c", 0.0), ("x", 0.0)], 0.0, count_slack=8.0)
    request = chain("colon-new")
    claimed = await store.lookup(request.lookups, Claim("a", request.records, fixed(either)))
    assert claimed.claimant == "b:c"  # both hold none: the first of equals


async def test_redis_counts_each_placement_until_it_expires(
    shared: list[RedisPrefixStore],
) -> None:
    store, other = shared
    redis = store.redis
    trees = "claim:trees:4:pool:r0"
    await give(store, "r0", "kept-0")
    member = store.key(chain("kept-0").records[0].key)
    now = float((await redis.time())[0])

    async def expiry() -> float:
        score = await redis.zscore(trees, member)
        assert score is not None
        return float(score)

    assert now + CLAIM_TTL - 2 < await expiry() <= now + CLAIM_TTL + 1
    # The set outlives the placements it holds, and those kept for renewal after them.
    assert 590 < await redis.ttl(trees) <= 300 + PLACEMENT_KEPT
    # Another router finds the prefix: the placement counts for its whole TTL from now.
    one = router(other, 0, 0)
    assert (await one.placer.place(one.pool, chain("kept-0"))).found is not None
    assert now + 290 < await expiry() <= now + 302
    # A placement whose time is up no longer counts; it is kept for renewal a while, then
    # dropped at a claim.
    lapsed = now - 1
    gone = now - PLACEMENT_KEPT - 1
    await redis.zadd("claim:trees:4:pool:r1", {"lapsed": lapsed, "gone-0": gone, "gone-1": gone})
    placed = router(store, 0, 0, count_slack=2.0)
    assert (await placed.placer.place(placed.pool, chain("next"))).claimed == "r1"
    assert await redis.zrange("claim:trees:4:pool:r1", 0, -1) == [
        b"lapsed",
        store.key(chain("next").records[0].key).encode(),
    ]


async def test_a_placement_that_stopped_counting_is_renewed_when_found_again(
    shared: list[RedisPrefixStore],
) -> None:
    """A conversation's next turn after a pause: its placement no longer counted (the claim's
    10 s were up, and a claim on the pool came in between), yet the lookup that finds it
    renews it, in process as in Redis."""
    clock = Clock()
    memory = MemoryPrefixStore(clock=clock)
    redis = shared[0].redis
    names = ("paused-0", "paused-1")
    paused = [chain(name) for name in names]
    for store in (memory, shared[0]):
        await give(store, "r0", *names)
        for request in paused:
            store.record(request.records, "r0", first=False)  # sent: confirmed
        await store.flush()
    clock.now += 30
    # As if 30 s had passed in Redis too: the claims' counts are up.
    for request in paused:
        then = float((await redis.time())[0]) - 20
        await redis.zadd("claim:trees:4:pool:r0", {shared[0].key(request.records[0].key): then})
    for store in (memory, shared[0]):
        await give(store, "r1", "in-between")  # a claim on the pool meanwhile
        one = router(store, 0, 1, count_slack=2.0)
        for request in paused:
            assert (await one.placer.place(one.pool, request)).found is not None
        # r0 holds two in use again, r1 one: not renewed, r0 would count none and take it.
        assert (await one.placer.place(one.pool, chain("after"))).claimed == "r1"


def conversation_turn(name: str, k: int, *, marks: int = 1) -> PrefixChain:
    """Turn ``k`` of a conversation whose client marks its ``marks`` newest user messages
    (Anthropic's recipe marks one or two): it looks up every earlier turn's prefix and
    records the marked ones, turns all."""
    prefixes = [Prefix(f"{name}-{n}", 300, 2000 + 100 * n) for n in range(1, k + 1)]
    marked = [Prefix(p.key, p.ttl, p.tokens, turn=True) for p in prefixes[-marks:]]
    return PrefixChain(prefixes, marked, marked=True)


@pytest.mark.parametrize("marks", [1, 2])
@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_conversation_marked_anew_each_turn_keeps_its_placement_counted(
    backend: str, marks: int, shared: list[RedisPrefixStore]
) -> None:
    """Each turn records a prefix of its own, so the placement is named by turn 1's prefix
    when a lookup first finds the conversation again: it is carried over to each turn's,
    renewed as it goes, and counts once."""
    clock = Clock()
    store: PrefixStore = MemoryPrefixStore(clock=clock) if backend == "memory" else shared[0]
    one = router(store, 0, 1, count_slack=2.0)  # r0 is the lighter
    r0 = one.pool.replicas[0]

    def turn(name: str, k: int) -> PrefixChain:
        return conversation_turn(name, k, marks=marks)

    first = await one.placer.place(one.pool, turn("talk", 1))
    assert first.claimed == "r0"
    one.placer.dispatched(first, r0)
    await store.flush()
    # The claim's 10 s are up before turn 2.
    if backend == "memory":
        clock.now += CLAIM_TTL + 1
    else:
        redis = shared[0].redis
        then = float((await redis.time())[0]) - 1
        member = shared[0].key(turn("talk", 1).records[0].key) + TURN
        assert await redis.zadd("claim:trees:4:pool:r0", {member: then}, xx=True) == 0
        assert await redis.zscore("claim:trees:4:pool:r0", member) == then
    for k in (2, 3, 4):
        placed = await one.placer.place(one.pool, turn("talk", k))
        assert placed.found is not None and placed.found.holders == ("r0",)
        one.placer.dispatched(placed, r0)
        await store.flush()
    # r0 holds the conversation: not carried over, it would count none and take this one.
    assert (await one.placer.place(one.pool, chain("new-a"))).claimed == "r1"
    # One each now: counted twice (turn 1's and turn 4's), r0 would be passed over again.
    assert (await one.placer.place(one.pool, chain("new-b"))).claimed == "r0"
    if backend == "redis":
        now = float((await shared[0].redis.time())[0])
        counting = await shared[0].redis.zrangebyscore("claim:trees:4:pool:r0", now, "+inf")
        talk = (shared[0].key(turn("talk", 4).records[0].key) + TURN).encode()
        assert sorted(counting) == sorted([talk, shared[0].key("new-b-system").encode()])


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_conversation_leaves_a_shared_system_prompts_placement_alone(
    backend: str, shared: list[RedisPrefixStore]
) -> None:
    """One client marks only a system prompt its requests share; another marks the latest
    turn of a conversation that starts with it. The conversation finds the system prompt,
    but does not take its placement over: that stays the system prompt's, for the requests
    that share it to renew."""
    store: PrefixStore = MemoryPrefixStore() if backend == "memory" else shared[0]
    one = router(store, 0, 1)
    r0 = one.pool.replicas[0]
    system = Prefix("shared-system", 300, 2000)
    question = await one.placer.place(one.pool, PrefixChain([system], [system], marked=True))
    assert question.claimed == "r0"
    one.placer.dispatched(question, r0)
    latest = Prefix("conversation-1", 300, 2100)
    talk = PrefixChain([system, latest], [Prefix(latest.key, 300, 2100, turn=True)], marked=True)
    found = await one.placer.place(one.pool, talk)
    assert found.found is not None and found.found.holders == ("r0",)
    one.placer.dispatched(found, r0)
    await store.flush()
    if isinstance(store, MemoryPrefixStore):
        held = set(store._pools["pool"].trees["r0"].expires)  # type: ignore[index]
    else:
        named: list[bytes] = await shared[0].redis.zrange("claim:trees:4:pool:r0", 0, -1)  # type: ignore[assignment]
        held = {member.decode().removeprefix("claim:px:") for member in named}
    assert held == {"shared-system"}


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_conversations_placement_is_carried_over_to_turns_only(
    backend: str, shared: list[RedisPrefixStore]
) -> None:
    """A request whose first breakpoint, after an earlier turn, is on a system message (one
    in the middle of the conversation) names its placement by that system prompt: the
    conversation's placement is not carried over to it, where it could not be carried on."""
    store: PrefixStore = MemoryPrefixStore() if backend == "memory" else shared[0]
    one = router(store, 0, 1)
    r0 = one.pool.replicas[0]
    earlier = conversation_turn("middle", 1)
    first = await one.placer.place(one.pool, earlier)
    assert first.claimed == "r0"
    one.placer.dispatched(first, r0)
    system = Prefix("middle-system", 300, 2200)
    latest = Prefix("middle-latest", 300, 2300)
    later = PrefixChain(
        [*earlier.lookups, system, latest],
        [system, Prefix(latest.key, 300, 2300, turn=True)],
        marked=True,
    )
    found = await one.placer.place(one.pool, later)
    assert found.found is not None and found.found.holders == ("r0",)
    await store.flush()
    if isinstance(store, MemoryPrefixStore):
        held = set(store._pools["pool"].trees["r0"].expires)  # type: ignore[index]
    else:
        named: list[bytes] = await shared[0].redis.zrange("claim:trees:4:pool:r0", 0, -1)  # type: ignore[assignment]
        held = {member.decode().removeprefix("claim:px:") for member in named}
    assert held == {"middle-1" + TURN}


async def test_the_lookup_script_renews_as_the_index_in_process_does(
    shared: list[RedisPrefixStore],
) -> None:
    """Renewal lives twice too: random placements (counting with more or less than half
    their TTL left, stopped but kept, gone; named by a turn or not)
    under the request's tree, its looked-up prefixes or neither, on random holders, for
    requests that carry an earlier turn's placement over or not; both stores leave the same
    placements behind."""
    draw = random.Random("renew")
    store = shared[0]
    redis = store.redis
    offsets = (250.0, 100.0, -10.0, -PLACEMENT_KEPT - 10.0)
    for case in range(400):
        name = f"renew-{case}"
        lookups = [Prefix(f"{name}-{j}", 300, 1000 + j) for j in range(draw.randint(1, 5))]
        found_at = draw.randrange(len(lookups))
        tree_at = draw.randrange(len(lookups) + 1)
        key = lookups[tree_at].key if tree_at < len(lookups) else f"{name}-new"
        carries = draw.random() < 0.7
        if draw.random() < 0.5:  # marked on its latest turn (or its system prompt only)
            records = [Prefix(key, 300, 9000, turn=carries)]
        else:  # marked on its last two turns (or its system prompt and its latest turn)
            last = Prefix(f"{name}-last", 300, 9500, turn=True)
            records = [Prefix(key, 300, 9000, turn=carries), last]
        keys = {p.key for p in lookups} | {key, f"{name}-other"}
        names = sorted(keys | {k + TURN for k in keys})
        state = {
            holder: {
                key: draw.choice(offsets)
                for key in draw.sample(names, draw.randint(0, min(4, len(names))))
            }
            for holder in draw.sample(["r0", "r1", "r2"], draw.randint(1, 3))
        }
        claim = Claim("pool", records, fixed(Proposal([("r0", 0.0)], 0.0)))

        clock = Clock()
        memory = MemoryPrefixStore(clock=clock)
        placements = memory._pools["pool"] = _PoolPlacements()  # type: ignore[index]
        for holder, held in state.items():
            memory.record([lookups[found_at]], holder, first=False)
            trees = placements.trees[holder] = _Trees()
            for key, offset in held.items():
                trees.set(key, clock.now + offset, clock.now)
        assert (await memory.lookup(lookups, claim)).found is not None
        in_process = {}
        for holder in state:
            trees = placements.trees[holder]
            trees.count(clock.now)
            in_process[holder] = {k: at - clock.now for k, at in trees.expires.items()}

        seconds, micros = await redis.time()
        now = seconds + micros / 1e6
        for holder, held in state.items():
            await redis.sadd(store.key(lookups[found_at].key), holder)
            if held:
                members = {store.key(k): now + offset for k, offset in held.items()}
                await redis.zadd(f"claim:trees:4:pool:{holder}", members)
        await redis.expire(store.key(lookups[found_at].key), 300)
        assert (await store.lookup(lookups, claim)).found is not None
        in_redis = {}
        for holder in state:
            scored: list[tuple[bytes, float]] = await redis.zrange(  # type: ignore[assignment]
                f"claim:trees:4:pool:{holder}", 0, -1, withscores=True
            )
            await redis.delete(f"claim:trees:4:pool:{holder}")
            in_redis[holder] = {
                member.decode().removeprefix("claim:px:"): at - now
                for member, at in scored
                if at > now - PLACEMENT_KEPT
            }
        assert in_redis.keys() == in_process.keys(), case
        for holder, held in in_process.items():
            assert in_redis[holder].keys() == held.keys(), (case, holder, state)
            for key, offset in held.items():
                assert abs(in_redis[holder][key] - offset) < 2, (case, holder, key, state)


async def test_each_claim_renews_the_placement_order_in_redis(
    shared: list[RedisPrefixStore],
) -> None:
    tied = Proposal([("r0", 0.0), ("r1", 0.0)], 0.0)
    for n in range(2):
        request = chain(f"renewed-{n}")
        await shared[0].lookup(request.lookups, Claim("pool", request.records, fixed(tied)))
        await shared[0].redis.expire("claim:order:pool", 2)  # as if it were about to go
    request = chain("renewed-2")
    await shared[0].lookup(request.lookups, Claim("pool", request.records, fixed(tied)))
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
        return Proposal([("r1", 0.0)], 0.0)

    result = await shared[1].lookup(request.lookups, Claim("pool", request.records, propose))
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


async def test_with_redis_down_the_claim_is_kept_in_process(
    refused_port: Callable[[], int],
) -> None:
    nobody = f"redis://127.0.0.1:{refused_port()}"  # nothing listens there
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
    [
        ("sent", False),
        ("sent, then placed by another request", False),
        ("sent elsewhere", False),
        ("refused", True),
        ("refused, then retried elsewhere", True),
        ("failed after the answer, then retried elsewhere", False),
        ("waiting", True),
        ("waiting, then sent elsewhere", True),
    ],
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
        if not then.startswith("waiting"):  # "waiting": still held by its rate-limit check
            a.placer.dispatched(placed, sent)  # elsewhere: r0's breaker opened meanwhile
        if then.startswith("refused"):
            a.placer.report(placed, sent, Outcome.REFUSED)
        gate.open.set()
        await store.flush()
        await store.flush()  # the settling write the late answer started
        if then.endswith("another request"):
            # Another request for the same prefixes, its lookup unanswered and its index
            # without them: its first placement elsewhere must not take the claim over.
            store.record(request.records, "r1", first=True)
            await store.flush()
        if then.endswith("retried elsewhere"):
            if then.startswith("failed"):  # the attempt fails after the late answer came
                a.placer.report(placed, sent, Outcome.ERROR)
            a.placer.dispatched(placed, a.pool.replicas[1])  # the retry
            await store.flush()
        held = await holders_in_redis(store, last)
        ttl = await store.redis.ttl(store.key(last.key))
        if then.startswith("sent") and not then.endswith("elsewhere"):
            assert held == {"r0"} and ttl > CLAIM_TTL  # confirmed
        elif then.endswith("elsewhere") and not then.startswith("waiting"):
            assert held == {"r1"} and ttl > CLAIM_TTL  # where the request went
        elif then == "refused":
            # The late claim must not bring back the replica that failed.
            assert held == set() and store.local.holders(last) == ()
        else:
            assert held == {"r0"} and 0 < ttl <= CLAIM_TTL  # it stands, for now
            if then == "waiting":
                a.placer.dispatched(placed, sent)
            else:  # r0's breaker opened meanwhile: the request goes to r1
                a.placer.dispatched(placed, a.pool.replicas[1])
            await store.flush()
            assert await store.redis.ttl(store.key(last.key)) > CLAIM_TTL
            expected = {"r0"} if then == "waiting" else {"r1"}
            assert await holders_in_redis(store, last) == expected
        # The placement counts where the request went, and nowhere else.
        member = store.key(request.records[0].key)
        counted = {
            replica
            for replica in ("r0", "r1", "r2")
            if await store.redis.zscore(f"late:trees:4:pool:{replica}", member)
        }
        if then == "refused":
            assert counted == set()
        else:
            assert counted == ({"r1"} if then.endswith("elsewhere") else {"r0"}), then
    finally:
        await store.aclose()


async def test_a_late_claim_taken_elsewhere_counts_once(redis_server: RedisServer) -> None:
    """The claim's replica was passed over, and another request spilled the prefix onto a
    third replica, before the claim's answer came: the placement counts once, where its
    request went."""
    store = RedisPrefixStore(Redis.from_url(redis_server.url), key_prefix="once:", timeout=0.05)
    try:
        gate = Gate(store, runs_late=False)
        a = router(store, 0, 5, 5)
        request = chain("late-once")
        placed = await a.placer.place(a.pool, request)
        assert placed.degraded and placed.ranking.candidates[0].id == "r0"
        a.placer.dispatched(placed, a.pool.replicas[1])  # r0's breaker opened meanwhile
        store.record(request.records, "r2", first=False)  # another request spilled there
        gate.open.set()
        await store.flush()
        await store.flush()
        assert await holders_in_redis(store, request.records[-1]) == {"r1", "r2"}
        member = store.key(request.records[0].key)
        counted = {
            replica
            for replica in ("r0", "r1", "r2")
            if await store.redis.zscore(f"once:trees:4:pool:{replica}", member)
        }
        assert counted == {"r1"}
    finally:
        await store.aclose()


async def test_a_late_claim_is_settled_by_its_own_request_only(
    redis_server: RedisServer,
) -> None:
    """While a request whose claim answered late waits to be sent, another request for the
    prefix spills off the (now busy) claimed replica: that spill must not take the claim
    over, and the waiting request, sent to the claimed replica after all, keeps it."""
    store = RedisPrefixStore(Redis.from_url(redis_server.url), key_prefix="spill:", timeout=0.05)
    try:
        gate = Gate(store, runs_late=True)
        a = router(store, 0, 5, 5)
        request = chain("late-spill")
        last = request.records[-1]
        waiting = await a.placer.place(a.pool, request)  # gave up; held by its rate limit
        assert waiting.degraded and waiting.claimed is None
        gate.open.set()
        await store.flush()
        await store.flush()
        assert await holders_in_redis(store, last) == {"r0"}
        store._lookup_script = gate._script  # answering in time again
        a.pool.replicas[0].in_flight = 100  # r0 overloaded: the next request spills
        spilled = await a.placer.place(a.pool, request)
        assert spilled.found is not None and spilled.found.holders == ("r0",)
        to = spilled.ranking.candidates[0]
        assert to.id != "r0"
        a.placer.dispatched(spilled, to)
        a.placer.dispatched(waiting, a.pool.replicas[0])
        await store.flush()
        assert await holders_in_redis(store, last) == {"r0", to.id}
    finally:
        await store.aclose()


async def test_a_claim_whose_answer_was_lost_is_confirmed_by_the_dispatch(
    shared: list[RedisPrefixStore],
) -> None:
    """Redis ran the claim but its answer never came back: the request's first-placement
    record finds its own replica there and confirms it."""
    request = chain("lost-answer")
    last = request.records[-1]
    only_r0 = Proposal([("r0", 0.0)], 0.0)
    await shared[1].lookup(request.lookups, Claim("pool", request.records, lambda: only_r0))
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
        return Proposal([("r1", 0.0)], 0.0)

    result = await shared[1].lookup(request.lookups, Claim("pool", request.records, propose))
    assert asked == [] and not result.claimed
    # What Redis lost this process still knows: it keeps it, and puts it back for the others.
    assert result.found is not None and result.found.holders == ("r2",)
    await shared[1].flush()
    assert await holders_in_redis(shared[1], request.lookups[-1]) == {"r2"}


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
