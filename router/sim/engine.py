"""One replica's engine state: its prefix cache, its prefill queue and its counters.

Timing model. A replica has one prefill engine, so prefills run one after another: a
request's prefill starts when the engine is free (`start = max(now, busy_until)`) and takes
`uncached_tokens * prefill_ms_per_token`; the first token follows `ttft_ms` after the
prefill ends. A burst of long uncached prompts therefore queues, as on a real server.
Decoding is continuous-batched and not contended: each further token takes `itl_ms`.
A request cancelled while queued keeps its slot in the queue (its prefill was "scheduled").
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web

from router.sim.kvcache import PrefixCache
from router.sim.settings import SimSettings
from router.sim.tokenizer import Prompt


class Outcome(enum.Enum):
    COMPLETED = "completed"
    CANCELLED = "cancelled"  # the client went away
    FAILED = "failed"  # an error response or an injected fault


@dataclass
class SimStats:
    """Counters exposed at /sim/stats; `in_flight` is a gauge and survives a reset."""

    requests: int = 0
    in_flight: int = 0
    completed: int = 0
    cancelled: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0


@dataclass(eq=False)
class Tracked:
    """How the request being tracked ended; handlers set it when no exception says so."""

    outcome: Outcome = Outcome.COMPLETED
    # Set on admission: when its prefill starts (loop time) and the KV blocks it occupies.
    prefill_start: float | None = None
    blocks: int = 0


@dataclass(frozen=True, slots=True)
class Occupancy:
    """What a replica is doing right now, in the terms vLLM's /metrics reports."""

    running: int  # admitted and scheduled: prefilling or decoding
    waiting: int  # queued behind other prefills
    blocks_in_use: int  # KV blocks held by requests in flight


@dataclass(frozen=True, slots=True)
class Admission:
    """A request's prompt accounting and when its first token is due (loop time)."""

    prompt_tokens: int
    cached_tokens: int
    first_token_at: float


class SimEngine:
    """The state behind one replica's endpoints."""

    def __init__(self, settings: SimSettings, replica_id: str) -> None:
        self.settings = settings
        self.replica_id = replica_id
        self.cache = PrefixCache(block_size=settings.block_size, capacity=settings.cache_blocks)
        self.stats = SimStats()
        self.created = int(time.time())  # the model's creation time in /v1/models
        self._busy_until = 0.0
        self._live: set[Tracked] = set()

    def admit(self, prompts: Sequence[Prompt], tracked: Tracked | None = None) -> Admission:
        """Run the prompts through the prefix cache and queue their prefill."""
        prompt_tokens = cached_tokens = 0
        for prompt in prompts:
            prompt_tokens += len(prompt.tokens)
            cached_tokens += self.cache.admit(prompt.tokens)
        self.stats.prompt_tokens += prompt_tokens
        self.stats.cached_tokens += cached_tokens
        now = asyncio.get_running_loop().time()
        prefill_s = (prompt_tokens - cached_tokens) * self.settings.prefill_ms_per_token / 1000
        start = max(now, self._busy_until)
        self._busy_until = start + prefill_s
        if tracked is not None:
            tracked.prefill_start = start
            block = self.settings.block_size
            tracked.blocks = sum(-(-len(p.tokens) // block) for p in prompts)
        first_token_at = self._busy_until + self.settings.ttft_ms / 1000
        return Admission(prompt_tokens, cached_tokens, first_token_at)

    def token_time(self, admission: Admission, step: int) -> float:
        """Loop time at which token `step` (0 = the first) of every choice is due."""
        return admission.first_token_at + step * self.settings.itl_ms / 1000

    @contextmanager
    def track(self) -> Iterator[Tracked]:
        """Count a generation request from arrival to its outcome."""
        self.stats.requests += 1
        self.stats.in_flight += 1
        tracked = Tracked()
        self._live.add(tracked)
        try:
            yield tracked
        except asyncio.CancelledError:
            tracked.outcome = Outcome.CANCELLED
            raise
        except BaseException:
            tracked.outcome = Outcome.FAILED
            raise
        finally:
            self._live.discard(tracked)
            self.stats.in_flight -= 1
            name = tracked.outcome.value
            setattr(self.stats, name, getattr(self.stats, name) + 1)

    def occupancy(self) -> Occupancy:
        """Requests queued for prefill count as waiting, all others in flight as running; the
        KV blocks in use are those of the requests in flight (as vLLM counts them: cached
        blocks no request holds are free to evict), capped at the cache's capacity."""
        now = asyncio.get_running_loop().time()
        waiting = sum(
            1 for t in self._live if t.prefill_start is not None and t.prefill_start > now
        )
        blocks = min(sum(t.blocks for t in self._live), self.settings.cache_blocks)
        return Occupancy(len(self._live) - waiting, waiting, blocks)

    def snapshot(self) -> dict[str, Any]:
        return {
            "replica": self.replica_id,
            **asdict(self.stats),
            "cache_blocks_used": len(self.cache),
        }

    def reset(self) -> None:
        """Forget the cache and the counters (not the requests still running)."""
        self.cache.clear()
        self.stats = SimStats(in_flight=self.stats.in_flight)
        self._busy_until = 0.0


async def sleep_until(deadline: float) -> None:
    """Sleep until loop time `deadline`; return at once, without yielding, if it has passed."""
    delay = deadline - asyncio.get_running_loop().time()
    if delay > 0:
        await asyncio.sleep(delay)


SIM_ENGINE = web.AppKey("sim_engine", SimEngine)
