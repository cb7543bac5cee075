"""Placement: where a request's prefixes are, where it goes, and what its answer teaches.

``place`` looks the request's prefix chain up in the index (one round trip) and has the
picker rank the pool. A lookup that finds nothing records, in the same step, the replica the
picker proposes for the new prefixes (a ``Claim``), so of several routers placing one new
prefix at once the first decides for all. ``dispatched`` records the prefixes for the replica
a request is sent to otherwise, before the answer, so a burst of first requests converges.
``report`` is fed once per attempt with what happened, and trusts only that:

* a fault (refused connection, timeout, 5xx, a stream that broke) removes the replica from
  the holders of the request's prefixes at once, and their placement from its count of new
  prefixes (``Proposal.pick``);
* a hit whose ``usage.prompt_tokens_details.cached_tokens`` is far below the matched prefix
  (under ``DEMOTE_SHARE`` of its estimated tokens, from ``DEMOTE_MIN_TOKENS`` up) means the
  replica evicted it: it is removed from the holders of the prefixes it lost, so the next
  request places them afresh.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from router.balancer import Pool, Replica
from router.chain import Prefix, PrefixChain
from router.picker import Picker, Ranking
from router.store import Claim, Found, PrefixStore, Proposal

log = logging.getLogger(__name__)

# Estimated tokens (4 bytes each) overshoot real ones for prose by up to ~1.5x; a replica
# that still held the prefix reports well above a quarter of the estimate.
DEMOTE_SHARE = 0.25
# Backends cache whole KV blocks (vLLM: 16 tokens by default, up to 64 as configured): a
# shorter prefix reports no cached tokens even where it is held, and would be demoted on
# every hit. From this many estimated tokens up, a held prefix shows.
DEMOTE_MIN_TOKENS = 128


class Outcome(enum.Enum):
    """What one attempt on one replica came to."""

    OK = "ok"
    REFUSED = "refused"  # no connection: nothing was sent
    TIMEOUT = "timeout"
    ERROR = "error"  # a 5xx answer
    BROKEN = "broken"  # the answer broke off after its headers
    BUSY = "busy"  # 429: alive, but turning work away
    REJECTED = "rejected"  # another 4xx: the request's fault, not the replica's
    ABANDONED = "abandoned"  # the client went away first: says nothing about the replica

    @property
    def replica_fault(self) -> bool:
        return self in _REPLICA_FAULTS


_REPLICA_FAULTS = frozenset({Outcome.REFUSED, Outcome.TIMEOUT, Outcome.ERROR, Outcome.BROKEN})


@dataclass(slots=True)
class Placement:
    """One request's placement: its chain, what the index knew, the ranked candidates."""

    pool_name: str  # the backend's: where its new prefixes count (``Claim.pool``)
    chain: PrefixChain
    found: Found | None
    ranking: Ranking
    degraded: bool  # the shared index did not answer
    claimed: str | None = None  # the lookup recorded the new prefixes for this replica

    @property
    def matched(self) -> Prefix | None:
        return None if self.found is None else self.chain.lookups[self.found.index]

    def cache(self, replica: Replica) -> str:
        """``X-DI-Cache`` for sending to ``replica``."""
        if not self.chain.lookups:
            return "none"
        if replica.id in self.ranking.holders:
            return "hit"
        return "bypass" if self.degraded else "miss"

    def prefix_tokens(self, replica: Replica) -> int:
        """Estimated tokens of the prefix ``replica`` is known to hold (0 on a miss)."""
        matched = self.matched
        return matched.tokens if matched and replica.id in self.ranking.holders else 0


class Placer:
    def __init__(self, store: PrefixStore, picker: Picker, *, affinity: bool = True) -> None:
        self._store = store
        self._picker = picker
        self._affinity = affinity  # the policy uses the index (prefix_affinity)

    async def place(self, pool: Pool, chain: PrefixChain) -> Placement:
        if not chain.lookups or not self._affinity:
            return Placement(pool.backend.name, chain, None, self._picker.rank(pool), False)
        key = chain.placement_key
        proposals: list[Ranking] = []

        def propose() -> Proposal:
            ranking = self._picker.rank(pool, key=key)
            proposals.append(ranking)
            first = ranking.candidates[0]
            # Under prefix affinity a ranking without holders always carries its proposal.
            return ranking.proposal or Proposal([(first.id, 0.0)], 0.0)

        claim = Claim(pool.backend.name, chain.records, propose) if chain.records else None
        result = await self._store.lookup(chain.lookups, claim)
        found = result.found
        claimant = result.claimant
        if found is None and proposals:
            # Keep to the proposal (led by the index's pick) even when the index did not
            # answer in time: the claim may still land there.
            ranking = proposals[0] if claimant is None else proposals[0].led_by(claimant)
        else:
            holders = found.holders if found else ()
            ranking = self._picker.rank(pool, holders=holders, key=key)
        return Placement(pool.backend.name, chain, found, ranking, result.degraded, claimant)

    def dispatched(self, placement: Placement, replica: Replica) -> None:
        """Record the request's prefixes for ``replica`` as it is sent."""
        chain = placement.chain
        if not chain.records or not self._affinity:
            return
        found = placement.found
        known = found is not None and replica.id in placement.ranking.holders
        matched = placement.matched
        longest = matched.tokens if found is not None and matched is not None else -1
        # Prefixes no longer than the match were refreshed by the lookup (if held there).
        beyond = [p for p in chain.records if p.tokens > longest] if known else []
        if known:
            if beyond:
                self._store.record(beyond, replica.id, first=True)
            return
        if found is None or matched is None:
            claimed = placement.claimed
            if claimed is None:
                # A new prefix: the first placement wins if another router placed it meanwhile.
                self._store.record(chain.records, replica.id, first=True)
                return
            if claimed == replica.id:
                # Confirm the claim for the prefixes' whole TTL.
                self._store.record(chain.records, replica.id, first=False)
                return
            # The claimed replica was passed over (it failed, or its breaker opened since the
            # lookup): this one holds the prefixes instead, and their placement counts here.
            self._store.forget(chain.records, claimed, counted_in=placement.pool_name)
            self._store.record(
                chain.records, replica.id, first=False, counted_in=placement.pool_name
            )
            return
        # The holders were overloaded or out of use: this replica joins them.
        within = [p for p in chain.records if p.tokens <= longest and p.key != matched.key]
        self._store.record([*within, matched], replica.id, first=False)
        later = [p for p in chain.records if p.tokens > longest]
        if later:
            self._store.record(later, replica.id, first=True)

    def report(
        self,
        placement: Placement,
        replica: Replica,
        outcome: Outcome,
        cached_tokens: int | None = None,
    ) -> None:
        """What one attempt came to; see the module docstring."""
        chain = placement.chain
        if not chain.lookups or not self._affinity:
            return
        matched = placement.matched
        if outcome.replica_fault:
            held = {p.key: p for p in chain.records}
            if matched is not None:
                held[matched.key] = matched
            self._store.forget(list(held.values()), replica.id, counted_in=placement.pool_name)
            return
        if (
            outcome is Outcome.OK
            and cached_tokens is not None
            and matched is not None
            and replica.id in placement.ranking.holders
            and matched.tokens >= DEMOTE_MIN_TOKENS
            and cached_tokens < matched.tokens * DEMOTE_SHARE
        ):
            # Every looked-up prefix up to the match that the replica no longer fully holds.
            lost = [
                p
                for p in chain.lookups
                if p.tokens <= matched.tokens and cached_tokens < p.tokens * DEMOTE_SHARE
            ]
            log.info(
                "replica %s reported %d cached tokens for a ~%d-token prefix: demoted",
                replica.id,
                cached_tokens,
                matched.tokens,
            )
            self._store.forget(lost, replica.id, counted_in=placement.pool_name)
