"""The prefix index in Redis, shared by every router process; Redis as an accelerator.

Keys are built by ``RedisPrefixStore.key`` alone: ``<key_prefix>px:<prefix hash>``, a set of
replica ids, always with the prefix's TTL. A lookup is one Lua script (longest prefix first,
TTLs refreshed; when nothing is found, the request's claim is recorded by the same script),
so the request waits one round trip; records (a script with ``SET NX`` semantics when
``first``) and forgets are written off the request's path, in order, by one writer.

Redis is an accelerator, not a dependency:

* every record also lands in an in-process index at once, so a burst converges inside a
  process before the write reaches Redis, and what this process placed or saw survives an
  outage (with rendezvous placement of new prefixes, which needs no shared state);
* a slow or failed command counts as a fault; only ``failure_threshold`` faults in a row
  mark Redis down, for ``retry_after`` seconds, and one success clears the count;
* every router pings Redis every second (``watch``), so one without traffic still knows
  whether Redis answers;
* a prefix Redis lacks and this process knows (Redis lost it: a restart without
  persistence, an eviction, a write let go) keeps its replica and is put back, unless a
  router removed that replica from its holders since (a ``GONE`` set, kept for the
  prefix's TTL), rather than being placed afresh on a cold replica;
* each lookup (and each batch of writes) runs in its own task, awaited through
  ``asyncio.shield``: a client that goes away, or the lookup deadline, abandons the wait,
  never the command, so its connection goes back to the pool whole instead of being dropped
  halfway through a reply.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, NamedTuple, TypeVar

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, NoScriptError, RedisError

from router.chain import Prefix
from router.store import (
    CLAIM_TTL,
    PLACEMENT_KEPT,
    RECENCY_TTL,
    TURN,
    Claim,
    Found,
    Lookup,
    MemoryPrefixStore,
    PrefixStore,
    placement_name,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
Write = Callable[[Pipeline], object]  # adds one write's commands to a pipeline

# After a prefix's key name: the set of replicas some router removed from its holders (a
# fault, an eviction), kept for the prefix's TTL, so that a router refilling an index Redis
# lost does not put them back (``lookup``).
GONE = "|gone"

# The lookup, and the claim of a prefix new to every router.
# KEYS[1..n]: the looked-up prefixes, shortest first; KEYS[n+1..n+m]: the prefixes to record
# (m = 0: no claim); KEYS[n+m+1]: the pool's recent claims, one hash: per replica, a count
# (field: the replica) and each router's own share of it (field: replica|router);
# KEYS[n+m+2]: the pool's placement order, one hash: per replica, the sequence number of its
# last new prefix (field: the replica), and the last number given (field: '', never an id).
# ARGV[1]: n; ARGV[2]: m; ARGV[3]: the start of the names of the pool's per-replica sorted
# sets of placements (the name is that and the replica id; '' only without a claim: none
# renewed), whose members name placements (``placement_name`` of a ``Claim.tree``'s key as
# KEYS name the looked-up prefixes) and whose scores are the times they stop counting;
# ARGV[4]: the member naming this request's placement; ARGV[5]: its whole TTL; ARGV[6]: its
# TTL as a claim; ARGV[7]: PLACEMENT_KEPT; ARGV[8]: '1' when an earlier turn's placement
# (named by a looked-up key and ``TURN``, put in for $TURN below) is carried over to this
# one (``Claim.carries``), else ''; ARGV[9..8+n]:
# the looked-up keys' TTLs; ARGV[9+n..8+n+m]: the claim's TTLs; ARGV[9+n+m]: the slack;
# ARGV[10+n+m]: the recent counts' window in seconds; ARGV[11+n+m]: the proposing router's
# id; ARGV[12+n+m]: the placement order's TTL; ARGV[13+n+m]: the count slack; then pairs of
# (replica, load as that router sees it, its own recent claims included), in rendezvous
# order. The sorted sets' names are built here, not passed as keys: one per holder, and the
# holders are known only here (the store does not support Redis Cluster).
# Longest prefix first; refreshes the TTL of the hit and of every shorter prefix it holds,
# and renews the placement on the holders it was placed on, or carries an earlier turn's
# over (as _Trees.renew and _PoolPlacements.renew): {index, holders}. When none has holders
# and there is a claim, picks as Proposal.pick does (with ``trees``: the placements
# counting, as _Trees.count), the other routers' recent claims added to the loads, counts
# the pick, and records it: {0, {replica}}.
_LOOKUP_LUA = """
local n = tonumber(ARGV[1])
local m = tonumber(ARGV[2])
local trees = ARGV[3]
local kept = tonumber(ARGV[7])
local function clock()
  local time = redis.call('TIME')
  return tonumber(time[1]) + tonumber(time[2]) / 1000000
end
local function keep(tree)
  local ttl = tonumber(ARGV[5]) + kept
  if redis.call('TTL', tree) < ttl then redis.call('EXPIRE', tree, ttl) end
end
for i = n, 1, -1 do
  local holders = redis.call('SMEMBERS', KEYS[i])
  if #holders > 0 then
    for j = i, 1, -1 do redis.call('EXPIRE', KEYS[j], ARGV[j + 8]) end
    if trees ~= '' then
      local ttl = tonumber(ARGV[5])
      local now = clock()
      local function held(tree, member)
        local at = tonumber(redis.call('ZSCORE', tree, member))
        if at and at > now - kept then return at end
        return nil
      end
      -- Carry an earlier turn's placement over only to a tree beyond the shorter prefixes.
      local carries = ARGV[8] == '1'
      for j = 1, i - 1 do
        if carries and KEYS[j] .. '$TURN' == ARGV[4] then carries = false end
      end
      for _, holder in ipairs(holders) do
        local tree = trees .. holder
        local until_ = held(tree, ARGV[4])
        if until_ == nil and carries then
          for j = i, 1, -1 do
            local earlier = KEYS[j] .. '$TURN'
            if earlier ~= ARGV[4] then
              until_ = held(tree, earlier)
              if until_ then
                redis.call('ZREM', tree, earlier)
                if until_ >= now + ttl / 2 then
                  redis.call('ZADD', tree, until_, ARGV[4])
                  keep(tree)
                end
                break
              end
            end
          end
        end
        if until_ and until_ < now + ttl / 2 then
          redis.call('ZADD', tree, now + ttl, ARGV[4])
          keep(tree)
        end
      end
    end
    return {i, holders}
  end
end
if m == 0 then return false end
local recent = KEYS[n + m + 1]
local order = KEYS[n + m + 2]
local me = '|' .. ARGV[n + m + 11]
local now = clock()
local names, scores, held, lightest = {}, {}, {}, nil
for j = n + m + 14, #ARGV, 2 do
  local k = #names + 1
  local counts = redis.call('HMGET', recent, ARGV[j], ARGV[j] .. me)
  local others = (tonumber(counts[1]) or 0) - (tonumber(counts[2]) or 0)
  local score = tonumber(ARGV[j + 1]) + others
  names[k] = ARGV[j]
  scores[k] = score
  redis.call('ZREMRANGEBYSCORE', trees .. ARGV[j], '-inf', now - kept)
  held[k] = redis.call('ZCOUNT', trees .. ARGV[j], string.format('(%.17g', now), '+inf')
  if lightest == nil or score < lightest then lightest = score end
end
local slack = tonumber(ARGV[n + m + 9])
local limit = lightest + math.max(tonumber(ARGV[n + m + 13]), slack)
local fewest = nil
for k = 1, #names do
  if scores[k] <= limit and (fewest == nil or held[k] < fewest) then fewest = held[k] end
end
local candidates, floor = {}, nil
for k = 1, #names do
  if scores[k] <= limit and held[k] == fewest then
    candidates[#candidates + 1] = k
    if floor == nil or scores[k] < floor then floor = scores[k] end
  end
end
local level = nil
for _, k in ipairs(candidates) do
  if scores[k] <= floor + slack then level = scores[k] break end
end
local tied = {}
for _, k in ipairs(candidates) do
  if scores[k] == level then tied[#tied + 1] = names[k] end
end
local chosen = tied[1]
if #tied > 1 then
  local lasts = redis.call('HMGET', order, unpack(tied))
  local oldest = tonumber(lasts[1]) or 0
  for k = 2, #tied do
    local at = tonumber(lasts[k]) or 0
    if at < oldest then chosen, oldest = tied[k], at end
  end
end
redis.call('HSET', order, chosen, redis.call('HINCRBY', order, '', 1))
redis.call('EXPIRE', order, ARGV[n + m + 12])
redis.call('ZADD', trees .. chosen, now + tonumber(ARGV[6]), ARGV[4])
keep(trees .. chosen)
redis.call('HINCRBY', recent, chosen, 1)
redis.call('HINCRBY', recent, chosen .. me, 1)
if redis.call('TTL', recent) < 0 then redis.call('EXPIRE', recent, ARGV[n + m + 10]) end
for i = n + 1, n + m do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    redis.call('SADD', KEYS[i], chosen)
    redis.call('EXPIRE', KEYS[i], ARGV[i + 8])
  end
end
return {0, {chosen}}
""".replace("$TURN", TURN)
# ARGV[1]: the replica; ARGV[2]: '1' = only where no replica holds the prefix yet (first
# placement wins); ARGV[3]: '' or the replica's sorted set of placements
# in the pool where this one counts (a claim passed over for this replica), ARGV[4]: its
# member, ARGV[5]: the seconds it counts, ARGV[6]: the seconds the set is kept at least;
# ARGV[7..]: each key's TTL. A first placement that finds the replica already there (its
# own claim, whose answer was lost) confirms it: the TTL is set all the same.
_RECORD_LUA = """
for i = 1, #KEYS do
  if ARGV[2] ~= '1' or redis.call('EXISTS', KEYS[i]) == 0 then
    redis.call('SADD', KEYS[i], ARGV[1])
    redis.call('EXPIRE', KEYS[i], ARGV[i + 6])
    redis.call('SREM', KEYS[i] .. '$GONE', ARGV[1])  -- it holds the prefix again
  elseif redis.call('SISMEMBER', KEYS[i], ARGV[1]) == 1 then
    redis.call('EXPIRE', KEYS[i], ARGV[i + 6])
    redis.call('SREM', KEYS[i] .. '$GONE', ARGV[1])
  end
end
if ARGV[3] ~= '' then
  local time = redis.call('TIME')
  local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
  redis.call('ZADD', ARGV[3], now + tonumber(ARGV[5]), ARGV[4])
  if redis.call('TTL', ARGV[3]) < tonumber(ARGV[6]) then
    redis.call('EXPIRE', ARGV[3], ARGV[6])
  end
end
return #KEYS
""".replace("$GONE", GONE)
# KEYS[1]: a prefix's key, which Redis lost and a router still knows; ARGV[1]: its TTL;
# ARGV[2..]: the holders that router knows. Put back only while the key is missing (a
# router that placed the prefix since decides), without the holders some router removed
# since (GONE).
_REFILL_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local gone = KEYS[1] .. '$GONE'
local added = 0
for i = 2, #ARGV do
  if redis.call('SISMEMBER', gone, ARGV[i]) == 0 then
    redis.call('SADD', KEYS[1], ARGV[i])
    added = added + 1
  end
end
if added > 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return added
""".replace("$GONE", GONE)
_WRITE_SCRIPTS = (_RECORD_LUA, _REFILL_LUA)
# Seconds between two refills of one prefix by one router: a refill that Redis turned down
# (every holder removed) is not sent again with every request.
_REFILL_EVERY = 10.0
_FAULTS = (RedisError, OSError, TimeoutError)
_MAX_QUEUED = 10_000  # writes waiting for Redis at most
# Seconds a pool's recent-placement counts last (a tumbling window): longer than a scrape
# takes to show a new request in a replica's load figures.
RECENT_WINDOW = 1
_MAX_BATCH = 256  # writes per pipeline: a batch stays well inside the write deadline
# (prefix, replica) removals remembered, to settle late claims; and late claims remembered
_FORGOTTEN = 4_096


class _LateClaim(NamedTuple):
    claimant: str  # the replica the lookup script claimed the prefixes for
    pool: str
    deadline: float  # when the claim lapses (this process's clock)
    sent: bool  # its request was sent already (to the claimant, or it failed there)


def reconnect_once() -> Retry:
    """A Redis client's retry policy: a command that finds its pooled connection closed by
    Redis (a restart, an idle timeout) is sent again at once on a new one, once."""
    return Retry(NoBackoff(), 1, supported_errors=(ConnectionError,))


class RedisPrefixStore(PrefixStore):
    def __init__(
        self,
        redis: Redis,
        *,
        key_prefix: str = "di:",
        timeout: float = 0.05,
        retry_after: float = 1.0,
        failure_threshold: int = 3,
        local_entries: int = 100_000,
        recent_window: int = RECENT_WINDOW,
        max_queued: int = _MAX_QUEUED,
        on_drop: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self._key_prefix = key_prefix
        self._timeout = timeout
        self._retry_after = retry_after
        self._threshold = max(1, failure_threshold)
        self._clock = clock
        self.local = MemoryPrefixStore(local_entries, ordered=False, clock=clock)
        self._lookup_script = redis.register_script(_LOOKUP_LUA)
        self._record_script = redis.register_script(_RECORD_LUA)
        self._refill_script = redis.register_script(_REFILL_LUA)
        self._refilled: OrderedDict[str, float] = OrderedDict()  # prefix key -> when
        self._failures = 0
        self._down_until = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._queue: deque[Write] = deque(maxlen=max_queued)  # writes waiting, oldest first
        self.dropped_writes = 0  # writes the full queue let go
        self._on_drop = on_drop  # told of each (the metrics), as it happens
        self._writer: asyncio.Task[None] | None = None
        # The replica each prefix last lost here (it failed): a late claim for it is withdrawn.
        self._forgotten: OrderedDict[str, str] = OrderedDict()
        # The claims, by the keys of their prefixes, whose answer came after their request
        # stopped waiting, and that the first placement of those prefixes settles (``record``).
        self._late_claims: OrderedDict[tuple[str, ...], _LateClaim] = OrderedDict()
        # This process among the routers, for the recent-claim counts: its own claims are in
        # its loads already, so the lookup script adds only the others'.
        self._router_id = secrets.token_hex(6)
        self._recent_window = recent_window

    @classmethod
    def from_url(cls, url: str, *, max_connections: int = 1024, **kwargs: Any) -> RedisPrefixStore:
        """A store on its own client; ``max_connections`` should match the upstream pool, so a
        burst of requests never finds the Redis pool exhausted before the upstream one."""
        timeout = kwargs.get("timeout", 0.05)
        client = Redis.from_url(
            url,
            socket_timeout=max(timeout * 4, 0.5),
            socket_connect_timeout=max(timeout * 4, 0.5),
            max_connections=max_connections,
            # No CLIENT SETINFO on connect: a new connection costs two round trips less.
            driver_info=None,
            # Else the first lookup on a connection Redis closed counts as a fault and
            # bypasses the index. Timeouts are not retried: a lookup's deadline is short.
            retry=reconnect_once(),
        )
        return cls(client, **kwargs)

    def key(self, prefix_key: str) -> str:
        return f"{self._key_prefix}px:{prefix_key}"

    def _trees(self, pool: str) -> str:
        """The start of the names of ``pool``'s per-replica sets of placements. The pool's
        name goes with its length: names may hold ':', and pool ``a:b`` with replica ``c``
        must not share a set with pool ``a`` and replica ``b:c``."""
        return f"{self._key_prefix}trees:{len(pool)}:{pool}:"

    @property
    def down(self) -> bool:
        return self._clock() < self._down_until

    @property
    def answering(self) -> bool:
        """Whether the last command (or ``check``) was answered: False from the first fault
        on, not only while Redis rests after ``failure_threshold`` of them."""
        return self._failures == 0

    def _answered(self) -> None:
        self._failures = 0

    async def check(self) -> bool:
        """Ping Redis, counting the outcome as a command's. A rest is not cut short: a Redis
        slow enough to have caused it may still answer one small command in time."""
        try:
            await self._shielded(self.redis.ping, self._timeout * 4)
        except _FAULTS as exc:
            self._fault(exc)
            return False
        self._answered()
        return True

    async def watch(self, interval: float = 1.0) -> None:
        """Run ``check`` every ``interval`` seconds: a router without traffic still knows,
        and reports (``di_redis_up``), whether Redis answers."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.check()
            except Exception:  # a bug, not Redis: say so, and keep watching
                log.exception("redis prefix store: checking redis failed")

    async def lookup(self, prefixes: Sequence[Prefix], claim: Claim | None = None) -> Lookup:
        if self.down:
            self._known(prefixes)  # drops a holder this process forgot, if a stale answer left it
            return replace(self.local.claim_or_get(prefixes, claim), degraded=True)
        keys, args, claim = self._lookup_call(prefixes, claim)
        task = self._track(
            asyncio.get_running_loop().create_task(self._lookup_script(keys=keys, args=args))
        )
        try:
            answer = await asyncio.wait_for(asyncio.shield(task), self._timeout)
        except _FAULTS as exc:
            self._fault(exc)
            if not task.done():
                # Too late for this request, not for the next ones: learn from the answer.
                task.add_done_callback(lambda done: self._learn(done, prefixes, claim))
            return Lookup(self._known(prefixes), degraded=True)
        self._answered()
        if (claimant := _claimant(answer)) is not None:
            assert claim is not None
            for record in claim.records:
                self.local.replace(record, (claimant,), ttl=claim.ttl(record))
            return Lookup(None, claimant=claimant)
        remote = _found(answer)
        # Where Redis holds as long a prefix as this process knows, Redis decides: another
        # router may have removed a holder that failed. Read after the answer, so records
        # made meanwhile count too.
        known = self._known(prefixes)
        if known is not None and (remote is None or known.index > remote.index):
            # Redis lacks a longer prefix this process knows: a record of this process still
            # on its way, or Redis lost it (a restart without persistence, an eviction, a
            # write let go). The request keeps the replica this process knows, and the prefix
            # is put back, except where a router removed that replica since (``GONE``): a
            # holder one router saw fail costs the others that still know it one failed
            # attempt each, and is not brought back for all.
            self._refill(prefixes[known.index], known.holders)
            return Lookup(known)
        if remote is not None:
            prefix = prefixes[remote.index]
            self.local.replace(prefix, self._unforgotten(prefix, remote.holders))
        return Lookup(remote)

    def _unforgotten(self, prefix: Prefix, holders: Sequence[str]) -> tuple[str, ...]:
        """``holders`` without the one this process last forgot for ``prefix``: an answer
        Redis gave before that forget reached it still names it."""
        lost = self._forgotten.get(prefix.key)
        return tuple(h for h in holders if h != lost)

    def _known(self, prefixes: Sequence[Prefix]) -> Found | None:
        """The longest of ``prefixes`` the local index knows, without a holder this process
        forgot itself: an answer Redis sent before that forget may have put it back here."""
        found = self.local.get(prefixes)
        forgotten = self._forgotten
        while found is not None and forgotten:
            prefix = prefixes[found.index]
            lost = forgotten.get(prefix.key)
            if lost is None or lost not in found.holders:
                return found
            self.local.forget([prefix], lost)
            found = self.local.get(prefixes)
        return found

    def _lookup_call(
        self, prefixes: Sequence[Prefix], claim: Claim | None
    ) -> tuple[list[str], list[Any], Claim | None]:
        """The lookup script's keys and arguments, and the claim it carries (None: none).

        Claim only prefixes this process knows nothing of: a known one is not new (and one
        it recorded so recently that the write may still be on its way is put back by
        ``lookup``). A known prefix also spares the request a second ranking."""
        keys = [self.key(p.key) for p in prefixes]
        args: list[Any] = [len(prefixes), 0, "", "", 0, 0, PLACEMENT_KEPT, ""]
        args += [p.ttl for p in prefixes]
        if claim is None:
            return keys, args, None
        tree = claim.tree
        member = placement_name(self.key(tree.key), tree)
        args[2:6] = [self._trees(claim.pool), member, tree.ttl, claim.ttl(tree)]
        if claim.carries:
            args[7] = "1"
        if self.local.get(prefixes) is not None:
            return keys, args, None
        proposal = claim.propose()
        if not proposal.choices:
            return keys, args, None
        records = claim.records
        keys += [self.key(p.key) for p in records]
        keys.append(f"{self._key_prefix}placed:{claim.pool}")
        keys.append(f"{self._key_prefix}order:{claim.pool}")
        args[1] = len(records)
        args += [claim.ttl(p) for p in records]
        args += [proposal.slack, self._recent_window, self._router_id, RECENCY_TTL]
        args.append(proposal.count_slack)
        for replica, load in proposal.choices:
            args += [replica, load]
        return keys, args, claim

    def _learn(
        self,
        task: asyncio.Task[Any],
        prefixes: Sequence[Prefix],
        claim: Claim | None,
    ) -> None:
        """A lookup answered after its request stopped waiting: keep what is news, and
        settle a claim the request could not see land."""
        if task.cancelled() or task.exception() is not None:
            return
        answer = task.result()
        if (claimant := _claimant(answer)) is not None:
            assert claim is not None
            records = list(claim.records)
            holders = self.local.holders(records[-1])
            if claimant in holders:
                # The request went there: confirm the claim for the prefixes' whole TTL. Its
                # attempt there may yet fail: the retry's record elsewhere takes the claim over.
                self._write(self._record_call(records, claimant, first=False))
                self._late_claim_stands(claim, claimant, sent=True)
            elif holders or self._forgotten.get(records[-1].key) == claimant:
                # It went elsewhere, or the replica failed and was forgotten meanwhile: a late
                # claim must not bring it back. Where it went holds the prefixes instead (its
                # own first-placement record found the claim there and did nothing), and the
                # first of those counts the placement.
                self._remove(records, claimant, claim.pool)
                for n, holder in enumerate(holders):
                    counted_in = claim.pool if n == 0 else None
                    self._write(
                        self._record_call(records, holder, first=False, counted_in=counted_in)
                    )
                if not holders:  # a retry not yet sent takes the claim over
                    self._late_claim_stands(claim, claimant, sent=True)
            else:
                # The request has not been sent yet (it waits for its rate limit, or the
                # answer came just before its dispatch): its dispatch confirms the claim, or
                # takes it over if it goes elsewhere (``record``), or the claim lapses.
                self._late_claim_stands(claim, claimant, sent=False)
        elif (remote := _found(answer)) is not None:
            prefix = prefixes[remote.index]
            # What this process learnt since is newer, and a holder it forgot since stays so.
            holders = self._unforgotten(prefix, remote.holders)
            if holders and not self.local.holders(prefix):
                self.local.replace(prefix, holders)

    def _late_claim_stands(self, claim: Claim, claimant: str, *, sent: bool) -> None:
        """Until the claim's time is up, the first placement of exactly its prefixes (its
        request's dispatch, or, ``sent`` already, a retry's) settles it (``record``)."""
        late = self._late_claims
        records = claim.records
        keys = tuple(p.key for p in records)
        deadline = self._clock() + claim.ttl(records[-1])
        late[keys] = _LateClaim(claimant, claim.pool, deadline, sent)
        late.move_to_end(keys)
        if len(late) > _FORGOTTEN:
            late.popitem(last=False)

    def record(
        self,
        prefixes: Sequence[Prefix],
        replica: str,
        *,
        first: bool,
        counted_in: str | None = None,
    ) -> None:
        self.local.record(prefixes, replica, first=first)
        forgotten = self._forgotten
        if forgotten:  # the replica holds them again: no longer the one they were lost from
            for prefix in prefixes:
                if forgotten.get(prefix.key) == replica:
                    del forgotten[prefix.key]
        late = self._late_claim(prefixes) if first and self._late_claims else None
        if late is not None:
            # The first placement of exactly the prefixes a claim of this process was made
            # for, whose answer came after its request stopped waiting: that request, placed
            # now. Elsewhere, this replica holds the prefixes, and counts them, instead of
            # the claimed one.
            if late.claimant != replica and not self.down:
                self._remove(prefixes, late.claimant, late.pool)
                counted_in = late.pool
            first = False
        if prefixes and not self.down:
            self._write(self._record_call(prefixes, replica, first=first, counted_in=counted_in))

    def _late_claim(self, prefixes: Sequence[Prefix]) -> _LateClaim | None:
        """The late claim made for exactly ``prefixes`` that still stands and that their
        first placement settles, taken out. One whose request was sent already is settled
        only by a retry: once its replica failed here (another request's first placement of
        the same prefixes must not take it from a replica that holds them)."""
        late, now = self._late_claims, self._clock()
        while late and next(iter(late.values())).deadline <= now:  # the oldest first: lapsed
            late.popitem(last=False)
        keys = tuple(p.key for p in prefixes)
        found = late.get(keys)
        if found is None or (
            found.sent and self._forgotten.get(prefixes[-1].key) != found.claimant
        ):
            return None
        del late[keys]
        return found

    def forget(
        self, prefixes: Sequence[Prefix], replica: str, *, counted_in: str | None = None
    ) -> None:
        self.local.forget(prefixes, replica)
        forgotten = self._forgotten
        for prefix in prefixes:
            forgotten[prefix.key] = replica
            forgotten.move_to_end(prefix.key)
        while len(forgotten) > _FORGOTTEN:
            forgotten.popitem(last=False)
        if prefixes and not self.down:
            self._remove(prefixes, replica, counted_in)

    def _remove(self, prefixes: Sequence[Prefix], replica: str, counted_in: str | None) -> None:
        """Take ``replica`` out of the prefixes' holders in Redis (not in process), and
        (``counted_in``: a pool) the placements they name out of its counts there."""
        keys = [self.key(p.key) for p in prefixes]
        ttls = [p.ttl for p in prefixes]
        trees = None if counted_in is None else self._trees(counted_in) + replica

        def remove(pipe: Pipeline) -> None:
            for key, ttl in zip(keys, ttls, strict=True):
                pipe.srem(key, replica)
                pipe.sadd(key + GONE, replica)  # not refilled by a router that still knew it
                pipe.expire(key + GONE, ttl)
            if trees is not None:
                pipe.zrem(trees, *keys, *(key + TURN for key in keys))

        self._write(remove)

    def _record_call(
        self,
        prefixes: Sequence[Prefix],
        replica: str,
        *,
        first: bool,
        counted_in: str | None = None,
    ) -> Write:
        keys = [self.key(p.key) for p in prefixes]
        args: list[Any] = [replica, "1" if first else "0", "", "", 0, 0]
        if counted_in is not None:
            tree = prefixes[0]
            trees = self._trees(counted_in) + replica
            member = placement_name(keys[0], tree)
            args[2:6] = [trees, member, min(tree.ttl, CLAIM_TTL), tree.ttl + PLACEMENT_KEPT]
        args += [p.ttl for p in prefixes]
        sha = self._record_script.sha
        return lambda pipe: pipe.evalsha(sha, len(keys), *keys, *args)

    def _refill(self, prefix: Prefix, holders: Sequence[str]) -> None:
        """Put ``prefix`` back in Redis with ``holders`` (``_REFILL_LUA``), at most once every
        ``_REFILL_EVERY`` seconds."""
        now = self._clock()
        refilled = self._refilled
        if now - refilled.get(prefix.key, float("-inf")) < _REFILL_EVERY:
            return
        refilled[prefix.key] = now
        refilled.move_to_end(prefix.key)
        if len(refilled) > _FORGOTTEN:
            refilled.popitem(last=False)
        key = self.key(prefix.key)
        args: list[Any] = [prefix.ttl, *holders]
        sha = self._refill_script.sha
        self._write(lambda pipe: pipe.evalsha(sha, 1, key, *args))

    def _write(self, write: Write) -> None:
        """Queue a write; one writer sends the queue in order, a pipeline per round trip.

        In order, because a process's writes to one prefix must land as it made them: a
        record, then the forget of a replica that failed at once, must not arrive the other
        way round. When Redis is too slow for the queue, its oldest writes are dropped (the
        in-process index still has them, and a lookup that finds them missing puts them back)."""
        if len(self._queue) == self._queue.maxlen:
            self.dropped_writes += 1  # the oldest goes
            if self._on_drop is not None:
                self._on_drop()
        self._queue.append(write)
        if self._writer is None:
            self._writer = self._track(asyncio.get_running_loop().create_task(self._drain()))

    async def _drain(self) -> None:
        queue = self._queue
        try:
            while queue:
                batch = [queue.popleft() for _ in range(min(len(queue), _MAX_BATCH))]
                sent = self._track(asyncio.get_running_loop().create_task(self._send(batch)))
                try:
                    await asyncio.wait_for(asyncio.shield(sent), self._timeout * 4)
                except _FAULTS as exc:
                    self._fault(exc)
                    if not sent.done():
                        await asyncio.wait({sent})  # the next batch goes after this one
                except Exception:
                    # A bug, not Redis: say so, and keep the writer going for the next batch.
                    log.exception("redis prefix store: a batch of writes failed")
                else:
                    self._answered()
        finally:
            self._writer = None

    async def _send(self, batch: list[Write]) -> None:
        for attempt in (1, 2):
            pipe = self.redis.pipeline(transaction=False)
            for write in batch:
                try:
                    write(pipe)
                except Exception:
                    # A bug, not Redis: say so, and send the batch's other writes.
                    log.exception("redis prefix store: a write could not be made")
            try:
                await pipe.execute()
                return
            except NoScriptError:
                if attempt == 2:
                    raise
                # Redis restarted and lost its scripts. The batch is sent again whole: a
                # record or a removal applied twice in the same order ends the same.
                for script in _WRITE_SCRIPTS:
                    await self.redis.script_load(script)

    async def _shielded(self, call: Callable[[], Awaitable[T]], wait: float) -> T:
        """Run ``call`` in its own task; stop waiting after ``wait`` seconds, never cancel it."""

        async def run() -> T:
            return await call()

        task = self._track(asyncio.get_running_loop().create_task(run()))
        return await asyncio.wait_for(asyncio.shield(task), wait)

    def _track(self, task: asyncio.Task[T]) -> asyncio.Task[T]:
        self._tasks.add(task)
        task.add_done_callback(self._settled)
        return task

    def _settled(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: an abandoned command's fault was counted already

    def _fault(self, exc: BaseException) -> None:
        # metrics: Redis faults and down periods (issue 12)
        self._failures += 1
        if self._failures < self._threshold:
            return
        if not self.down:
            log.warning(
                "redis prefix store: %d faults in a row (%s); local index only for %.1fs",
                self._failures,
                type(exc).__name__,
                self._retry_after,
            )
        self._down_until = self._clock() + self._retry_after

    async def ping(self) -> bool:
        try:
            return bool(await self._shielded(self.redis.ping, self._timeout * 4))
        except _FAULTS:
            return False

    async def prepare(self, connections: int = 16) -> None:
        """Load the scripts so the first request pays one round trip, not two, and open some
        connections, so the first burst does not pay for handshakes inside its deadline."""
        try:
            async with asyncio.timeout(max(self._timeout * 20, 1.0)):
                for script in (_LOOKUP_LUA, *_WRITE_SCRIPTS):
                    await self.redis.script_load(script)
                await asyncio.gather(*(self.redis.ping() for _ in range(connections)))
        except _FAULTS as exc:
            log.warning(
                "redis not reachable at start-up (%s); local index only", type(exc).__name__
            )

    async def flush(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=1.0)

    async def aclose(self) -> None:
        await self.flush()
        await self.redis.aclose()


def _claimant(answer: Any) -> str | None:
    """The replica the lookup script claimed the prefixes for (its answer is {0, {replica}})."""
    if answer and int(answer[0]) == 0:
        return bytes(answer[1][0]).decode()
    return None


def _found(answer: Any) -> Found | None:
    """The lookup script's answer: false, or {1-based index, holders}."""
    if not answer or int(answer[0]) == 0:
        return None
    return Found(int(answer[0]) - 1, tuple(bytes(h).decode() for h in answer[1]))
