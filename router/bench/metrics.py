"""A run's summary: `vllm bench serve`'s metric names and definitions, plus routing metrics.

As in vLLM: TTFT is to the first output token; TPOT is `(e2el - ttft) / (output tokens - 1)`
per request with more than one token; ITL is every gap between output chunks of every
request; E2EL is send to end of stream. Each is given in ms as mean, median, std (population)
and percentiles (linear interpolation, numpy's default). Throughputs divide by the run's
duration, first send to last end. Latencies count completed requests only.

Ours: `sent` and `errors` (completed + errors = sent; vLLM's list of messages is our
`error_messages`), `cached_token_share` (prompt tokens the backends report as cached),
`usage_hit_rate` (completed requests with any cached tokens), `di_cache_hit_rate` (the router's
`X-DI-Cache: hit` among responses carrying the header), `replica_spread` (most requests on one
replica over the mean, from `X-DI-Replica`) and `oracle_hit_rate` (see `workloads`).
Statistics with nothing to measure are None (JSON null).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

from router.bench.client import RequestResult
from router.bench.load import LoadRun

LATENCIES = ("ttft", "tpot", "itl", "e2el")
PERCENTILES = (90, 99)
VLLM_KEYS: tuple[str, ...] = (
    "duration",
    "completed",
    "failed",
    "total_input_tokens",
    "total_output_tokens",
    "request_throughput",
    "output_throughput",
    "total_token_throughput",
    *(
        f"{stat}_{metric}_ms"
        for metric in LATENCIES
        for stat in ("mean", "median", "std", *(f"p{p}" for p in PERCENTILES))
    ),
)
OUR_KEYS: tuple[str, ...] = (
    "num_prompts",
    "sent",
    "errors",
    "timed_out",
    "cached_tokens",
    "cached_token_share",
    "usage_hit_rate",
    "di_cache_hit_rate",
    "di_cache_counts",
    "replica_counts",
    "replica_spread",
    "oracle_hit_rate",
)
PER_REQUEST_KEYS: tuple[str, ...] = (
    "input_lens",
    "output_lens",
    "ttfts",
    "itls",
    "start_times",
    "replicas",
    "di_caches",
    "labels",
    "error_messages",
)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile of non-empty `values`, interpolated linearly between ranks."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_stats(name: str, seconds: Sequence[float]) -> dict[str, float | None]:
    """mean/median/std/pXX of `seconds`, in ms, under vLLM's key names."""
    keys = ["mean", "median", "std", *(f"p{p}" for p in PERCENTILES)]
    if not seconds:
        return {f"{key}_{name}_ms": None for key in keys}
    ms = [value * 1000 for value in seconds]
    values = [
        statistics.fmean(ms),
        statistics.median(ms),
        statistics.pstdev(ms),
        *(percentile(ms, p) for p in PERCENTILES),
    ]
    return {f"{key}_{name}_ms": value for key, value in zip(keys, values, strict=True)}


def summarize(
    run: LoadRun, *, oracle_hit_rate: float, replicas: int | None = None
) -> dict[str, Any]:
    """The run's metrics; `replicas` is the pool size, so idle replicas count in the spread."""
    sent = [r for r in run.results if r.sent]
    done = [r for r in sent if r.ok]
    duration = run.duration
    input_tokens = sum(r.prompt_tokens or 0 for r in done)
    output_tokens = sum(r.output_tokens for r in done)
    summary: dict[str, Any] = {
        "duration": duration,
        "completed": len(done),
        "failed": len(sent) - len(done),
        "total_input_tokens": input_tokens,
        "total_output_tokens": output_tokens,
        "request_throughput": _rate(len(done), duration),
        "output_throughput": _rate(output_tokens, duration),
        "total_token_throughput": _rate(input_tokens + output_tokens, duration),
    }
    summary |= latency_stats("ttft", [t for r in done if (t := r.ttft) is not None])
    summary |= latency_stats("tpot", _tpots(done))
    summary |= latency_stats("itl", [gap for r in done for gap in _gaps(r.token_times)])
    summary |= latency_stats("e2el", [t for r in done if (t := r.e2el) is not None])
    summary |= _ours(run, sent, done, oracle_hit_rate, replicas)
    summary |= _per_request(run)
    return summary


def _ours(
    run: LoadRun,
    sent: list[RequestResult],
    done: list[RequestResult],
    oracle_hit_rate: float,
    replicas: int | None,
) -> dict[str, Any]:
    with_usage = [r for r in done if r.prompt_tokens is not None]
    prompt_tokens = sum(r.prompt_tokens or 0 for r in with_usage)
    cached = sum(r.cached_tokens or 0 for r in with_usage)
    labelled = Counter(r.di_cache for r in sent if r.di_cache is not None)
    placed = Counter(r.replica for r in sent if r.replica is not None)
    return {
        "num_prompts": len(run.results),
        "sent": len(sent),
        "errors": len(sent) - len(done),
        "timed_out": run.timed_out,
        "cached_tokens": cached,
        "cached_token_share": cached / prompt_tokens if prompt_tokens else None,
        "usage_hit_rate": (
            sum(1 for r in with_usage if r.cached_tokens) / len(with_usage) if with_usage else None
        ),
        "di_cache_hit_rate": labelled["hit"] / labelled.total() if labelled else None,
        "di_cache_counts": dict(sorted(labelled.items())),
        "replica_counts": dict(sorted(placed.items())),
        "replica_spread": _spread(placed, replicas),
        "oracle_hit_rate": oracle_hit_rate,
    }


def _per_request(run: LoadRun) -> dict[str, Any]:
    """Per-request values in send order (None where a request has none), for plots."""
    results = run.results
    return {
        "input_lens": [r.prompt_tokens for r in results],
        "output_lens": [r.output_tokens if r.ok else None for r in results],
        "ttfts": [r.ttft if r.ok else None for r in results],
        "itls": [_gaps(r.token_times) if r.ok else [] for r in results],
        "start_times": [None if r.start is None else r.start - run.started for r in results],
        "replicas": [r.replica for r in results],
        "di_caches": [r.di_cache for r in results],
        "labels": [r.label for r in results],
        "error_messages": [r.error for r in results],
    }


def _tpots(done: Sequence[RequestResult]) -> list[float]:
    out = []
    for result in done:
        ttft, e2el, tokens = result.ttft, result.e2el, result.output_tokens
        if ttft is not None and e2el is not None and tokens > 1:
            out.append((e2el - ttft) / (tokens - 1))
    return out


def _gaps(times: Sequence[float]) -> list[float]:
    return [later - earlier for earlier, later in pairwise(times)]


def _spread(placed: Counter[str], replicas: int | None) -> float | None:
    total = placed.total()
    pool = max(replicas or 0, len(placed))
    if not total or not pool:
        return None
    return max(placed.values()) / (total / pool)


def _rate(count: float, duration: float) -> float:
    return count / duration if duration > 0 else 0.0
