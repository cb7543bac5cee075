"""One benchmark run against one base URL: the warm-up, the measured load, its summary."""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from router.bench.client import ChatClient, ClientSettings, new_session
from router.bench.load import LoadPlan, run_load
from router.bench.metrics import summarize
from router.bench.progress import Progress
from router.bench.workloads import BenchRequest, oracle_cached_share, oracle_hit_rate


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    client: ClientSettings
    load: LoadPlan
    progress: bool = True
    replicas: int | None = None  # the pool's size, so idle replicas count in the spread
    block_size: int = 16  # the replicas' KV block size, for the oracle's cached share


async def run_benchmark(
    label: str,
    requests: Sequence[BenchRequest],
    settings: RunSettings,
    *,
    warmup: Sequence[BenchRequest] = (),
    session: aiohttp.ClientSession | None = None,
) -> dict[str, Any]:
    """Send `warmup` (not measured), then `requests`; return the summary with run metadata.

    Warm-up requests go out `in_flight_bound` at a time, which opens the connections the
    measured run will reuse, so connection setup does not land in the first TTFTs.
    """
    bound = settings.load.in_flight_bound(max(len(requests), len(warmup)))
    owned = session is None
    active = new_session(bound) if session is None else session
    try:
        client = ChatClient(settings.client, active)
        warmed = None
        if warmup:
            plan = LoadPlan(concurrency=bound, time_limit_s=settings.load.time_limit_s)
            warmed = await run_load(warmup, client.send, plan)
        progress = Progress.for_tty(label, len(requests), wanted=settings.progress)
        try:
            run = await run_load(requests, client.send, settings.load, progress.update)
        finally:
            progress.close()
    finally:
        if owned:
            await active.close()
    summary = _meta(label, settings)
    summary["warmup_sent"] = 0 if warmed is None else sum(r.sent for r in warmed.results)
    summary["warmup_errors"] = (
        0 if warmed is None else sum(r.sent and not r.ok for r in warmed.results)
    )
    summary |= summarize(run, oracle_hit_rate=oracle_hit_rate(requests), replicas=settings.replicas)
    summary["oracle_cached_share"] = oracle_cached_share(requests, settings.block_size)
    return summary


def _meta(label: str, settings: RunSettings) -> dict[str, Any]:
    load = settings.load
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S"),
        "label": label,
        "backend": "openai-chat",
        "base_url": settings.client.base_url,
        "base_urls": list(settings.client.base_urls),
        "model_id": settings.client.model,
        "load": load.describe(),
        # vLLM writes "inf" for an unbounded rate; JSON has no infinity.
        "request_rate": "inf" if math.isinf(load.request_rate) else load.request_rate,
        "max_concurrency": load.max_concurrency,
        "concurrency": load.concurrency,
        "seed": load.seed,
    }
