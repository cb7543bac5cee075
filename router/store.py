"""The prefix index: prefix key -> the set of replicas whose KV cache holds that prefix.

One small interface, two implementations: in memory (one process, the default) and Redis
(``router.redis_store``: many router processes and machines). ``lookup`` costs at most one
round trip and finds the longest known prefix among the request's candidates; ``record``,
``forget`` never make the request wait.

``record(..., first=True)`` has ``SET NX`` semantics: it adds the replica only to prefixes no
replica holds yet, so when two routers place one new prefix at once the first placement wins.
``first=False`` adds a holder (a hot prefix spilling onto another replica, or a replica that
served a request for it anyway).

A lookup may carry a ``Claim``: where this router would place the request's prefixes if no
replica holds any of them yet. When none does, the store records the claim in the same step
as the lookup (in Redis, the same script), so of several routers placing one new prefix at
once exactly one decides, and the others' lookups find its choice, whatever loads each of
them saw. The Redis store also counts each replica's recent claims, shared by every router,
and adds the other routers' to the proposing router's loads when it picks (``Proposal.pick``):
a router cannot see another's placements in its load figures until the next scrape, and
without the counts a burst of new prefixes from several routers piles onto the replica each
thinks is the lightest. Among the replicas loaded within the count slack of the lightest,
those given the fewest new prefixes still in use take the next, so the working set is shared
out by what each replica's cache is asked to hold, not only by the loads of the moment.
Replicas that tie are told apart by their last new prefix: the one given a new prefix
longest ago takes the next (its cold prefill, if any, is the furthest along), so new
prefixes arriving together pair up with the oldest ones rather than by their hashes.
(Recording only after the dispatch left a window of one round trip in which two routers
could each place a burst's first request on a different replica.) A
claim stands for ``CLAIM_TTL`` seconds only: the dispatch confirms it (``record(first=False)``
with the full TTL), or a lookup that finds it refreshes it, so the claim of a request that
was never sent (turned away by its rate limit, its client gone) soon lapses.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from router.chain import Prefix

# Seconds a claim stands before its request's dispatch confirms it: far longer than the wait
# between a lookup and the dispatch, far shorter than a prefix's TTL.
CLAIM_TTL = 10
# Seconds a pool remembers the order in which its replicas were last given a new prefix
# (renewed by each claim): longer than a cold prefill takes.
RECENCY_TTL = 10
# Seconds a placement that stopped counting against its replica is kept for a lookup that
# finds its prefix again to renew (a claim counts for CLAIM_TTL only until then).
PLACEMENT_KEPT = 300
# The end of a placement's name when the prefix naming it is a conversation's turn
# (``Prefix.turn``). A later turn of the conversation, which names its placement by a longer
# prefix of its own, carries such a placement over (``_Trees.renew``), and never one named by
# a system prompt or tools that other requests share and extend.
TURN = "|turn"


def placement_name(name: str, tree: Prefix) -> str:
    """The name of the placement named by ``tree``, from ``name`` (its key, or its key in
    a Redis store)."""
    return name + TURN if tree.turn else name


class StoreUnavailable(Exception):
    """A shared store could not answer in time."""


async def redis_answer(call: Any, seconds: float) -> Any:
    """The answer to one Redis command or pipeline, within ``seconds``.

    Any fault becomes ``StoreUnavailable`` named by its type only: a Redis error's text can
    carry the server's address.
    """
    try:
        async with asyncio.timeout(seconds):
            return await call
    except (RedisError, OSError, TimeoutError) as exc:
        raise StoreUnavailable(type(exc).__name__) from None


@dataclass(frozen=True, slots=True)
class Found:
    """The longest known prefix of a request, and the replicas that hold it."""

    index: int  # position in the looked-up prefixes
    holders: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Lookup:
    found: Found | None
    degraded: bool = False  # the shared index did not answer; this is local knowledge only
    claimant: str | None = None  # nothing was found: the claim was recorded for this replica

    @property
    def claimed(self) -> bool:
        return self.claimant is not None


@dataclass(frozen=True, slots=True)
class Proposal:
    """Where this router would place a new prefix: the replicas it may go to, in rendezvous
    order, with the loads it sees; ``routing.placement_slack`` and
    ``routing.placement_count_slack``."""

    choices: Sequence[tuple[str, float]]  # (replica id, load); never empty
    slack: float
    count_slack: float = 0.0

    def pick(
        self,
        recent: Mapping[str, float] | None = None,
        last: Mapping[str, int] | None = None,
        trees: Mapping[str, int] | None = None,
    ) -> str:
        """The replica to place a new prefix on.

        A replica's score is its load plus its ``recent`` placements (other routers' claims
        of new prefixes, which this router's load figures may not show yet; its own are in
        them). An index that counts each replica's new prefixes still in use (``trees``
        given: shared by every router that places on this pool, or of one process) first
        keeps, of the replicas scored within the count slack of the lightest, those given
        the fewest, so the working set is shared out evenly. Of what is left, the first in
        rendezvous order scored within the slack of the lightest sets the level (slack 0:
        the lightest); of the replicas scored exactly at that level, the one ``last`` given
        a new prefix longest ago (a sequence number; never: 0) is taken, and equals keep
        their rendezvous order. The Redis store's lookup script applies the same rule."""
        recent = recent or {}
        scores = [(replica, load + recent.get(replica, 0)) for replica, load in self.choices]
        if trees is not None:
            # Never narrower than the slack: equal counts leave the rule below as it was.
            limit = min(score for _, score in scores) + max(self.count_slack, self.slack)
            within = [(replica, score) for replica, score in scores if score <= limit]
            fewest = min(trees.get(replica, 0) for replica, _ in within)
            scores = [(r, score) for r, score in within if trees.get(r, 0) == fewest]
        limit = min(score for _, score in scores) + self.slack
        level = next(score for _, score in scores if score <= limit)
        tied = [replica for replica, score in scores if score == level]
        if last is None or len(tied) == 1:
            return tied[0]
        return min(tied, key=lambda replica: last.get(replica, 0))  # the first of equals


@dataclass(frozen=True, slots=True)
class Claim:
    """Where to place a request's new prefixes: ``records``, on the replica of ``pool``
    picked from ``propose()``. ``propose`` is called at most once, and only when the store
    may need it. A lookup that finds the prefixes renews the count of their placement."""

    pool: str
    records: Sequence[Prefix]
    propose: Callable[[], Proposal]

    def ttl(self, prefix: Prefix) -> int:
        """How long the claim on ``prefix`` stands unconfirmed."""
        return min(prefix.ttl, CLAIM_TTL)

    @property
    def tree(self) -> Prefix:
        """The prefix that names a placement among its replica's new prefixes: the shortest,
        which the later requests that extend it share (``PrefixChain.placement_key``). It
        counts for ``ttl`` once placed, and is renewed for its whole TTL by a lookup that
        finds the prefixes again with less than half of that left. A conversation marked
        anew each turn has a new one each turn: the lookup carries the placement over from
        the earlier turn's (``carries``)."""
        return self.records[0]

    @property
    def carries(self) -> bool:
        """Whether a lookup that finds an earlier turn of the request's conversation, and
        its placement, carries that placement over to ``tree``: the tree is a turn (a client
        marking its latest turns, or the top level). Only placements named by a turn
        (``TURN``) are carried over, and only to a tree beyond the shorter prefixes found,
        so a shared system prompt's placement stays its own."""
        return self.tree.turn


class PrefixStore(ABC):
    @abstractmethod
    async def lookup(self, prefixes: Sequence[Prefix], claim: Claim | None = None) -> Lookup:
        """The longest of ``prefixes`` (shortest first) with holders; refreshes its TTL and
        those of the shorter ones. With ``claim``, when none has holders, records the claim
        (as ``record(first=True)``) before any other lookup can look."""

    @abstractmethod
    def record(
        self,
        prefixes: Sequence[Prefix],
        replica: str,
        *,
        first: bool,
        counted_in: str | None = None,
    ) -> None:
        """Note that ``replica`` holds these prefixes (``first``: only where none does).
        ``counted_in``: a pool where this is the placement of new prefixes (a claim whose
        replica was passed over for this one), counted against ``replica`` as a claim is,
        named by the first of ``prefixes`` (``Claim.tree``)."""

    @abstractmethod
    def forget(
        self, prefixes: Sequence[Prefix], replica: str, *, counted_in: str | None = None
    ) -> None:
        """``replica`` does not (or no longer) hold these prefixes; ``counted_in``: the pool
        where the placements they name stop counting against it at once."""

    async def ping(self) -> bool:
        return True

    async def flush(self) -> None:  # noqa: B027 - optional hook
        """Wait for writes still on their way (shutdown, tests)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        pass


class _Entry:
    __slots__ = ("expires", "holders")

    def __init__(self, holders: dict[str, None], expires: float) -> None:
        self.holders = holders  # insertion-ordered: the first placement first
        self.expires = expires


class _Recency:
    """The order in which one pool's replicas were last given a new prefix."""

    __slots__ = ("expires", "last", "seq")

    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        self.seq = 0
        self.expires = 0.0

    def note(self, replica: str, now: float) -> None:
        if now >= self.expires:  # forgotten, as the Redis hash expires
            self.last.clear()
            self.seq = 0
        self.seq += 1
        self.last[replica] = self.seq
        self.expires = now + RECENCY_TTL

    def order(self, now: float) -> dict[str, int]:
        return self.last if now < self.expires else {}


class _Trees:
    """The new prefixes one replica was given, by key, with the time each stops counting.
    One that stopped is kept ``PLACEMENT_KEPT`` seconds more, uncounted, so that a lookup
    finding its prefix again (a conversation's next turn after a pause) renews it.

    At most ``limit`` keys are kept (the index's ``memory_max_entries``): time alone bounds
    them by the rate of new prefixes only, which a flood of distinct conversations makes
    large."""

    __slots__ = ("counting", "dropping", "expires", "heap", "limit")

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        # By when each was last set, oldest first (``_shed``).
        self.expires: OrderedDict[str, float] = OrderedDict()
        self.counting: set[str] = set()  # the keys whose time is not up
        # (expiry, key): when each stops counting, soonest first; an entry whose key has
        # since been given another expiry, or has stopped already, is stale and skipped.
        self.heap: list[tuple[float, str]] = []
        self.dropping: list[tuple[float, str]] = []  # (expiry, key) of those that stopped

    def count(self, now: float) -> int:
        heap, expires, counting, dropping = self.heap, self.expires, self.counting, self.dropping
        while heap and heap[0][0] <= now:
            at, key = heapq.heappop(heap)
            if expires.get(key) == at and key in counting:
                counting.discard(key)
                heapq.heappush(dropping, (at, key))
        while dropping and dropping[0][0] + PLACEMENT_KEPT <= now:
            at, key = heapq.heappop(dropping)
            if expires.get(key) == at and key not in counting:
                del expires[key]
        return len(counting)

    def set(self, key: str, expires: float, now: float) -> None:
        self.count(now)
        self.expires[key] = expires
        self.expires.move_to_end(key)
        self.counting.add(key)
        heapq.heappush(self.heap, (expires, key))
        if len(self.expires) > self.limit:
            self._shed()
        if len(self.heap) + len(self.dropping) > 2 * self.limit + 64:
            self._compact()

    def _shed(self) -> None:
        """Down to ``limit`` keys: the kept ones first, then the longest since set (a fresh
        claim, which counts for seconds only, must not be the first to go)."""
        expires, counting, dropping = self.expires, self.counting, self.dropping
        while len(expires) > self.limit and dropping:
            at, key = heapq.heappop(dropping)
            if expires.get(key) == at and key not in counting:
                del expires[key]
        while len(expires) > self.limit:
            key, _ = expires.popitem(last=False)
            counting.discard(key)

    def _compact(self) -> None:
        """Rebuild both heaps from the live keys: renewals and drops leave stale entries
        behind, which would otherwise wait for their time to be popped."""
        counting = self.counting
        live = self.expires.items()
        self.heap = [(at, key) for key, at in live if key in counting]
        self.dropping = [(at, key) for key, at in live if key not in counting]
        heapq.heapify(self.heap)
        heapq.heapify(self.dropping)

    def drop(self, key: str) -> None:
        """``key`` is no longer held: it stops counting, and is not kept for renewal. Its
        heap entries go stale."""
        self.expires.pop(key, None)
        self.counting.discard(key)

    def renew(self, key: str, ttl: float, now: float, earlier: Sequence[str] = ()) -> None:
        """Count ``key``, if held, for ``ttl`` from now; not while more than half of that
        is left, so a hot prefix does not add an entry per hit. A placement not held under
        ``key`` but under one of ``earlier`` (an earlier turn's, longest first) is carried
        over to ``key`` first, as it stands, so that the next turn, which extends this one,
        finds it."""
        self.count(now)
        old = self.expires.get(key)
        if old is None:
            carried = next((k for k in earlier if k in self.expires), None)
            if carried is None:
                return
            old = self.expires[carried]
            self.drop(carried)
            if old >= now + ttl / 2:
                self.set(key, old, now)
                return
        if old < now + ttl / 2:
            self.set(key, now + ttl, now)


class _PoolPlacements:
    """What one pool's placements of new prefixes left behind: their order, and which ones
    each replica holds (as a Redis store keeps them in ``order:`` and ``trees:`` keys)."""

    __slots__ = ("limit", "order", "trees")

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit  # of each replica's placements kept (``_Trees``)
        self.order = _Recency()
        self.trees: dict[str, _Trees] = {}

    def pick(self, proposal: Proposal, claim: Claim, now: float) -> str:
        trees = self.trees
        counts = {r: trees[r].count(now) for r, _ in proposal.choices if r in trees}
        replica = proposal.pick(last=self.order.order(now), trees=counts)
        self.order.note(replica, now)
        self.count(replica, claim.tree, now)
        return replica

    def count(self, replica: str, tree: Prefix, now: float) -> None:
        """Count the placement named by ``tree`` against ``replica`` as a claim does."""
        if (held := self.trees.get(replica)) is None:
            held = self.trees[replica] = _Trees(self.limit)
        held.set(placement_name(tree.key, tree), now + min(tree.ttl, CLAIM_TTL), now)

    def renew(
        self, holders: Sequence[str], claim: Claim, found: Sequence[Prefix], now: float
    ) -> None:
        """The prefixes of ``claim`` were found again on ``holders`` (``found``: the
        looked-up prefixes up to the one found): its placement is renewed on those of them
        it was placed on, or an earlier turn's carried over (``Claim.carries``)."""
        tree = claim.tree
        name = placement_name(tree.key, tree)
        earlier: list[str] = []
        if claim.carries and all(p.key != tree.key for p in found[:-1]):
            earlier = [p.key + TURN for p in reversed(found) if p.key != tree.key]
        for holder in holders:
            if (held := self.trees.get(holder)) is not None:
                held.renew(name, tree.ttl, now, earlier)


class MemoryPrefixStore(PrefixStore):
    """A bounded LRU of holder sets with per-entry TTL, for one router process.

    ``ordered``: claims weigh how many new prefixes each replica was given and break ties by
    the pool's placement order (``Proposal.pick``). Where several processes cannot share
    those (the Redis store's fallback index, the workers of one router without Redis), the
    index is not ordered: rendezvous alone keeps them placing a new prefix alike.
    """

    def __init__(
        self,
        max_entries: int = 100_000,
        *,
        ordered: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._max_entries = max_entries
        self._clock = clock
        self._pools: dict[str, _PoolPlacements] | None = {} if ordered else None

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def ordered(self) -> bool:
        return self._pools is not None

    def get(self, prefixes: Sequence[Prefix]) -> Found | None:
        """The synchronous lookup behind ``lookup``."""
        now = self._clock()
        entries = self._entries
        for index in range(len(prefixes) - 1, -1, -1):
            key = prefixes[index].key
            entry = entries.get(key)
            if entry is None:
                continue
            if entry.expires <= now or not entry.holders:
                del entries[key]
                continue
            for shorter in prefixes[: index + 1]:
                if (held := entries.get(shorter.key)) is not None:
                    held.expires = max(held.expires, now + shorter.ttl)
                    entries.move_to_end(shorter.key)
            return Found(index, tuple(entry.holders))
        return None

    async def lookup(self, prefixes: Sequence[Prefix], claim: Claim | None = None) -> Lookup:
        return self.claim_or_get(prefixes, claim)

    def claim_or_get(self, prefixes: Sequence[Prefix], claim: Claim | None) -> Lookup:
        """``lookup`` without a suspension point: no other request runs in between."""
        found = self.get(prefixes)
        if claim is None:
            return Lookup(found)
        if found is not None:
            pools = self._pools
            if pools is not None and (placements := pools.get(claim.pool)) is not None:
                looked = prefixes[: found.index + 1]
                placements.renew(found.holders, claim, looked, self._clock())
            return Lookup(found)
        # One process sees its own placements in its loads at once: no recent counts needed.
        proposal = claim.propose()
        if self._pools is None:
            replica = proposal.pick()
        else:
            if (pool := self._pools.get(claim.pool)) is None:
                pool = self._pools[claim.pool] = _PoolPlacements(self._max_entries)
            replica = pool.pick(proposal, claim, self._clock())
        for prefix in claim.records:
            self._put(prefix, replica, first=True, ttl=claim.ttl(prefix))
        return Lookup(None, claimant=replica)

    def holders(self, prefix: Prefix) -> tuple[str, ...]:
        """The replicas this index says hold ``prefix``; no TTL is refreshed."""
        entry = self._entries.get(prefix.key)
        if entry is None or entry.expires <= self._clock():
            return ()
        return tuple(entry.holders)

    def record(
        self,
        prefixes: Sequence[Prefix],
        replica: str,
        *,
        first: bool,
        counted_in: str | None = None,
    ) -> None:
        for prefix in prefixes:
            self._put(prefix, replica, first=first, ttl=prefix.ttl)
        if counted_in is not None and prefixes and self._pools is not None:
            if (pool := self._pools.get(counted_in)) is None:
                pool = self._pools[counted_in] = _PoolPlacements(self._max_entries)
            pool.count(replica, prefixes[0], self._clock())

    def _put(self, prefix: Prefix, replica: str, *, first: bool, ttl: int) -> None:
        now = self._clock()
        entries = self._entries
        entry = entries.get(prefix.key)
        if entry is None or entry.expires <= now or not entry.holders:
            entries[prefix.key] = _Entry({replica: None}, now + ttl)
        elif not first:
            entry.holders[replica] = None
            entry.expires = max(entry.expires, now + ttl)
        entries.move_to_end(prefix.key)
        self._bound()

    def _bound(self) -> None:
        entries = self._entries
        while len(entries) > self._max_entries:
            entries.popitem(last=False)

    def replace(self, prefix: Prefix, holders: Sequence[str], *, ttl: int | None = None) -> None:
        """Set ``prefix``'s holders to what the shared index says (another router's news, or
        a claim this process made there), for ``ttl`` or the prefix's own TTL."""
        if holders:
            now = self._clock()
            expires = now + (prefix.ttl if ttl is None else ttl)
            self._entries[prefix.key] = _Entry(dict.fromkeys(holders), expires)
            self._entries.move_to_end(prefix.key)
            self._bound()

    def forget(
        self, prefixes: Sequence[Prefix], replica: str, *, counted_in: str | None = None
    ) -> None:
        for prefix in prefixes:
            entry = self._entries.get(prefix.key)
            if entry is not None:
                entry.holders.pop(replica, None)
                if not entry.holders:
                    del self._entries[prefix.key]
        if (held := self._trees(counted_in, replica)) is not None:
            for prefix in prefixes:
                held.drop(prefix.key)
                held.drop(prefix.key + TURN)

    def _trees(self, pool: str | None, replica: str) -> _Trees | None:
        """The placements counted against ``replica`` in ``pool``, if this index keeps any."""
        pools = self._pools
        if pool is None or pools is None or (placements := pools.get(pool)) is None:
            return None
        return placements.trees.get(replica)
