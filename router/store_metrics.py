"""The prefix index as the dispatcher sees it, with each lookup timed for the metrics.

A thin ``PrefixStore`` around the real one: ``lookup`` is timed and counted by outcome (``hit``,
``miss``, ``degraded`` when the shared index did not answer), everything else passes through.
The application keeps the real store under ``STORE`` (the object store and shutdown use it);
only the dispatcher gets this view.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from router.chain import Prefix
from router.metrics import Metrics
from router.redis_store import RedisPrefixStore
from router.store import Claim, Lookup, PrefixStore


class TimedStore(PrefixStore):
    def __init__(self, store: PrefixStore, metrics: Metrics) -> None:
        self.inner = store
        self._metrics = metrics
        self._kind = "redis" if isinstance(store, RedisPrefixStore) else "memory"

    async def lookup(self, prefixes: Sequence[Prefix], claim: Claim | None = None) -> Lookup:
        started = time.perf_counter()
        result = await self.inner.lookup(prefixes, claim)
        found = "hit" if result.found is not None else "miss"
        outcome = "degraded" if result.degraded else found
        self._metrics.prefix_lookup(self._kind, outcome, time.perf_counter() - started)
        return result

    def record(
        self,
        prefixes: Sequence[Prefix],
        replica: str,
        *,
        first: bool,
        counted_in: str | None = None,
    ) -> None:
        self.inner.record(prefixes, replica, first=first, counted_in=counted_in)

    def forget(
        self, prefixes: Sequence[Prefix], replica: str, *, counted_in: str | None = None
    ) -> None:
        self.inner.forget(prefixes, replica, counted_in=counted_in)

    async def ping(self) -> bool:
        return await self.inner.ping()

    async def flush(self) -> None:
        await self.inner.flush()

    async def aclose(self) -> None:
        """The application closes the real store itself."""
