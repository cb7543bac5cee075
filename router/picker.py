"""Ranking a pool's replicas for one request: holders, load, health, rendezvous.

The picker returns candidates best first; dispatch tries them in that order before the first
byte. It reads a replica only through ``load()``, ``usable(now)`` and
``accepts_new_prefixes()``. Under ``prefix_affinity``:

1. Replicas that are not usable are left out (unless none is usable: then all are tried).
2. A replica is *overloaded* when its load exceeds the least-loaded replica's by more than
   ``balance_abs_threshold`` and is more than ``balance_rel_threshold`` times it.
3. If the request's longest known prefix has holders, the least-loaded holder that is not
   overloaded comes first (ties by rendezvous, so every router breaks them alike).
4. Otherwise the prefix is placed by rendezvous (highest-random-weight) hashing of its key
   over the replicas that are not overloaded and accept new prefixes, skipping those whose
   load exceeds the lightest one's by more than ``placement_slack``: router processes that
   keep no counts (below) put the same new prefix on the same replica while they see the
   same loads, the prefixes of a busy fleet spread by load, and when all holders of a hot
   prefix are overloaded the next replica in its rendezvous order takes it (and joins its
   holders). An index that counts each replica's new prefixes (shared by every router, or
   of one process) decides when it claims the prefix (``Proposal.pick``): before that rule,
   it keeps, of the replicas within ``placement_count_slack`` of the lightest, those given
   the fewest; exact ties go to the one given a new prefix longest ago.
5. A request without prefixes goes to the least-loaded replica (round robin among equals).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from hashlib import blake2b

from router.balancer import Pool, Replica
from router.config import RoutingConfig
from router.store import Proposal


@dataclass(frozen=True, slots=True)
class Ranking:
    candidates: list[Replica]  # best first, never empty
    holders: frozenset[str]  # ids of the replicas known to hold the matched prefix
    # How the first was chosen when it places a new prefix (for the index to claim it).
    proposal: Proposal | None = None

    def led_by(self, replica_id: str) -> Ranking:
        """The same candidates with ``replica_id`` first (the index picked it)."""
        if self.candidates[0].id == replica_id:
            return self
        first = [r for r in self.candidates if r.id == replica_id]
        rest = [r for r in self.candidates if r.id != replica_id]
        return Ranking(first + rest, self.holders, self.proposal)


def rendezvous(key: str, replica: Replica) -> int:
    """The replica's weight for ``key``: a stable hash, the same in every process."""
    digest = blake2b(f"{key}\x00{replica.id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class Picker:
    def __init__(self, routing: RoutingConfig, *, clock: Callable[[], float] = time.monotonic):
        self._routing = routing
        self._clock = clock

    def rank(self, pool: Pool, *, holders: Sequence[str] = (), key: str | None = None) -> Ranking:
        """Candidates for a request whose matched prefix is held by ``holders`` and whose
        placement key (for a prefix nobody holds) is ``key``."""
        now = self._clock()
        usable = [r for r in pool.replicas if r.usable(now)] or list(pool.replicas)
        held = frozenset(holders)
        policy = self._routing.policy
        if policy == "round_robin":
            pool.turn += 1
            start = pool.turn % len(usable)
            return Ranking(usable[start:] + usable[:start], held)
        if policy == "least_loaded" or key is None:
            return Ranking(self._least_loaded(pool, usable), held)
        return self._affinity(pool, usable, held, key)

    def _least_loaded(self, pool: Pool, usable: list[Replica]) -> list[Replica]:
        if len(usable) == 1:
            return usable
        pool.turn += 1
        start = pool.turn % len(usable)
        rotated = usable[start:] + usable[:start]
        return sorted(rotated, key=lambda r: r.load())  # stable: equals keep their rotation

    def _affinity(
        self, pool: Pool, usable: list[Replica], held: frozenset[str], key: str
    ) -> Ranking:
        loads = {r.id: r.load() for r in usable}
        least = min(loads.values())
        by_weight = sorted(usable, key=lambda r: rendezvous(key, r), reverse=True)
        fit = [r for r in by_weight if not self._overloaded(loads[r.id], least)]
        warm = sorted((r for r in fit if r.id in held), key=lambda r: loads[r.id])
        proposal = None
        if warm:
            first = warm[0]
        else:
            roomy = [r for r in fit if r.accepts_new_prefixes()] or fit or by_weight
            choices = [(r.id, loads[r.id]) for r in roomy]
            routing = self._routing
            proposal = Proposal(choices, routing.placement_slack, routing.placement_count_slack)
            chosen = proposal.pick()
            first = next(r for r in roomy if r.id == chosen)
        rest = [r for r in warm if r is not first]
        rest += [r for r in fit if r is not first and r.id not in held]
        rest += [r for r in by_weight if r is not first and r not in rest]
        return Ranking([first, *rest], held, proposal)

    def _overloaded(self, load: float, least: float) -> bool:
        return (
            load - least > self._routing.balance_abs_threshold
            and load > least * self._routing.balance_rel_threshold
        )
