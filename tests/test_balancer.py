"""Replica choice: affinity against load, placement of new prefixes, policies, cool-down."""

from __future__ import annotations

from typing import Any

from router.balancer import Balancer, Pool
from router.config import RouterConfig


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(replicas: int = 3, **routing: Any) -> tuple[Balancer, Pool, Clock]:
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
    return balancer, balancer.pools["pool"], clock


def loads(pool: Pool, *in_flight: int) -> None:
    for replica, count in zip(pool.replicas, in_flight, strict=True):
        replica.in_flight = count


def test_warm_replica_wins_until_overloaded() -> None:
    balancer, pool, _ = make(balance_abs_threshold=4, balance_rel_threshold=2.0)
    loads(pool, 4, 0, 1)
    assert balancer.pick(pool, warm="r0", tie_key="k").replica.id == "r0"
    loads(pool, 5, 1, 3)  # 5 - 1 is not above the absolute threshold of 4
    choice = balancer.pick(pool, warm="r0", tie_key="k")
    assert (choice.replica.id, choice.affinity) == ("r0", True)
    loads(pool, 6, 1, 3)  # 6 - 1 > 4 and 6 > 2 x 1: overloaded
    choice = balancer.pick(pool, warm="r0", tie_key="k")
    assert choice.affinity is False and choice.replica.id != "r0"


def test_new_prefixes_spread_over_the_pool() -> None:
    balancer, pool, _ = make(replicas=4)
    placed = [balancer.pick(pool, tie_key=f"prefix-{i}").replica.id for i in range(8)]
    assert sorted(placed) == ["r0", "r0", "r1", "r1", "r2", "r2", "r3", "r3"]


def test_placement_avoids_overloaded_replicas() -> None:
    balancer, pool, _ = make(replicas=2, balance_abs_threshold=2, balance_rel_threshold=1.0)
    pool.replicas[1].prefixes = 5
    loads(pool, 10, 0)  # r0 owns fewer prefixes but is overloaded
    assert balancer.pick(pool, tie_key="new").replica.id == "r1"


def test_requests_without_a_prefix_go_to_the_least_loaded() -> None:
    balancer, pool, _ = make()
    loads(pool, 3, 1, 2)
    assert balancer.pick(pool).replica.id == "r1"


def test_round_robin_ignores_affinity() -> None:
    balancer, pool, _ = make(policy="round_robin")
    ids = [balancer.pick(pool, warm="r0", tie_key="k").replica.id for _ in range(6)]
    assert sorted(set(ids)) == ["r0", "r1", "r2"]
    assert ids[:3] != ["r0", "r0", "r0"]


def test_failed_replica_rests_then_returns() -> None:
    balancer, pool, clock = make(replicas=2, replica_cooldown=5)
    balancer.mark_failed(pool.replicas[0])
    assert {balancer.pick(pool).replica.id for _ in range(4)} == {"r1"}
    clock.now += 6
    assert "r0" in {balancer.pick(pool).replica.id for _ in range(4)}


def test_all_resting_are_tried_anyway_and_exclusions_hold() -> None:
    balancer, pool, _ = make(replicas=2)
    for replica in pool.replicas:
        balancer.mark_failed(replica)
    assert balancer.pick(pool).replica in pool.replicas
    assert balancer.pick(pool, exclude=[pool.replicas[0]]).replica.id == "r1"
