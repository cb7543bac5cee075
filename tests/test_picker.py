"""Ranking: holders against load, rendezvous placement, policies, resting replicas."""

from __future__ import annotations

from typing import Any

from router.balancer import Balancer, Pool
from router.config import RouterConfig
from router.picker import Picker, rendezvous


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(replicas: int = 3, **routing: Any) -> tuple[Balancer, Picker, Pool, Clock]:
    config = RouterConfig.model_validate(
        {
            "backends": [
                {
                    "name": "pool",
                    "replicas": [
                        {"id": f"r{i}", "url": f"http://127.0.0.1:{9000 + i}/v1"}
                        for i in range(replicas)
                    ],
                }
            ],
            "routes": {t: "pool" for t in ("text", "code", "json", "vision")},
            "routing": routing,
        }
    )
    clock = Clock()
    balancer = Balancer(config, clock=clock)
    return balancer, Picker(config.routing, clock=clock), balancer.pools["pool"], clock


def loads(pool: Pool, *in_flight: int) -> None:
    for replica, count in zip(pool.replicas, in_flight, strict=True):
        replica.in_flight = count


def first(picker: Picker, pool: Pool, **kwargs: Any) -> str:
    return picker.rank(pool, **kwargs).candidates[0].id


def test_a_holder_wins_until_overloaded() -> None:
    _, picker, pool, _ = make(balance_abs_threshold=4, balance_rel_threshold=2.0)
    loads(pool, 4, 0, 1)
    assert first(picker, pool, holders=["r0"], key="k") == "r0"
    loads(pool, 5, 1, 3)  # 5 - 1 is not above the absolute threshold of 4
    assert first(picker, pool, holders=["r0"], key="k") == "r0"
    loads(pool, 6, 1, 3)  # 6 - 1 > 4 and 6 > 2 x 1: overloaded
    assert first(picker, pool, holders=["r0"], key="k") != "r0"


def test_the_least_loaded_holder_wins() -> None:
    _, picker, pool, _ = make()
    loads(pool, 0, 3, 1)
    assert first(picker, pool, holders=["r1", "r2"], key="k") == "r2"


def test_new_prefixes_are_placed_by_rendezvous_the_same_in_every_process() -> None:
    _, picker, pool, _ = make(replicas=4)
    _, other, other_pool, _ = make(replicas=4)
    for i in range(20):
        key = f"prefix-{i}"
        best = max(pool.replicas, key=lambda r: rendezvous(key, r)).id
        assert first(picker, pool, key=key) == best == first(other, other_pool, key=key)
    placed = {first(picker, pool, key=f"prefix-{i}") for i in range(40)}
    assert placed == {"r0", "r1", "r2", "r3"}


def test_placement_skips_overloaded_replicas_and_spills_in_rendezvous_order() -> None:
    _, picker, pool, _ = make(replicas=3, balance_abs_threshold=2, balance_rel_threshold=1.0)
    ranking = picker.rank(pool, key="hot")
    top, second = ranking.candidates[0], ranking.candidates[1]
    top.in_flight = 10
    spilled = picker.rank(pool, holders=[top.id], key="hot")
    assert spilled.candidates[0] is second
    assert top in spilled.candidates  # still tried, last
    second.in_flight = 10
    # Both holders busy: the third replica is next.
    third = picker.rank(pool, holders=[top.id, second.id], key="hot").candidates[0]
    assert third not in (top, second)


def test_requests_without_a_prefix_go_to_the_least_loaded() -> None:
    _, picker, pool, _ = make()
    loads(pool, 3, 1, 2)
    assert first(picker, pool) == "r1"


def test_round_robin_ignores_affinity() -> None:
    _, picker, pool, _ = make(policy="round_robin")
    ids = [first(picker, pool, holders=["r0"], key="k") for _ in range(6)]
    assert sorted(set(ids)) == ["r0", "r1", "r2"]


def test_failed_replica_rests_then_returns() -> None:
    balancer, picker, pool, clock = make(replicas=2, replica_cooldown=5)
    balancer.mark_failed(pool.replicas[0])
    assert {first(picker, pool) for _ in range(4)} == {"r1"}
    assert first(picker, pool, holders=["r0"], key="k") == "r1"
    clock.now += 6
    assert "r0" in {first(picker, pool) for _ in range(4)}


def test_all_resting_are_tried_anyway() -> None:
    balancer, picker, pool, _ = make(replicas=2)
    for replica in pool.replicas:
        balancer.mark_failed(replica)
    assert len(picker.rank(pool, key="k").candidates) == 2
