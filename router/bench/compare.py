"""Compare mode: one workload and seed through the router under three routing setups.

(a) `affinity`: prefix-affinity routing, requests carry `cache_control` breakpoints;
(b) `cache-blind`: the same router and requests without breakpoints, which the router can only
    balance by load (least in flight);
(c) `round-robin`: the router restarted with `policy: round_robin`, requests as in (a).

Each setup gets a freshly started router and freshly reset replicas, so every one starts cold:
an empty prefix index, empty KV caches, idle prefill queues. The targets are checked against
(a): its TTFT p50 at least 5x lower than (b)'s and (c)'s, its hit rate at least 95% of the
oracle's, its replica spread at most 1.3.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from router.bench.fleet import running_fleet
from router.bench.report import Summary, ratio
from router.bench.runner import RunSettings, run_benchmark
from router.bench.workloads import WorkloadSpec, build
from router.sim import SimSettings

TTFT_RATIO_TARGET = 5.0
HIT_RATE_TARGET = 0.95  # of the oracle's
SPREAD_TARGET = 1.3


@dataclass(frozen=True, slots=True)
class Setup:
    name: str
    policy: str
    cache_control: bool
    description: str


SETUPS = (
    Setup("affinity", "prefix_affinity", True, "(a) prefix affinity, with breakpoints"),
    Setup("cache-blind", "prefix_affinity", False, "(b) no breakpoints: least-loaded"),
    Setup("round-robin", "round_robin", True, "(c) round robin, with breakpoints"),
)
BASELINE = SETUPS[0].name


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    value: float | None
    goal: str
    met: bool

    def line(self) -> str:
        shown = "-" if self.value is None else f"{self.value:.3g}"
        return f"{'met   ' if self.met else 'MISSED'}  {self.name} = {shown} (target {self.goal})"


@dataclass(frozen=True, kw_only=True)
class CompareSettings:
    spec: WorkloadSpec
    seed: int
    run: RunSettings  # its client base URL is replaced by each router's
    warmup: int
    sim: SimSettings
    replicas: int
    routing: dict[str, Any] = field(default_factory=dict)  # overrides for every setup
    out_dir: Path


async def run_compare(settings: CompareSettings) -> dict[str, Summary]:
    """Run every setup; the summaries by setup name, each with the replicas' own stats."""
    summaries: dict[str, Summary] = {}
    async with running_fleet(settings.sim, settings.replicas, settings.out_dir) as fleet:
        for setup in SETUPS:
            spec = replace(settings.spec, cache_control=setup.cache_control)
            requests = build(spec, settings.seed)
            # Other prefixes than the measured ones: warm the processes, not the caches.
            warmup = build(spec, f"warmup-{settings.seed}")[: settings.warmup]
            await fleet.reset_sims()
            base_url = await fleet.start_router(setup.policy, settings.routing)
            try:
                client = replace(settings.run.client, base_url=base_url)
                run = replace(settings.run, client=client, replicas=settings.replicas)
                summary = await run_benchmark(setup.name, requests, run, warmup=warmup)
                summary["setup"] = setup.description
                summary["policy"] = setup.policy
                summary["sim_stats"] = await fleet.sim_stats()
            finally:
                await fleet.stop_router()
            summaries[setup.name] = summary
    return summaries


def check_targets(summaries: Mapping[str, Summary]) -> list[Target]:
    """The issue's targets, each against the baseline (a)."""
    base = summaries[BASELINE]
    targets = []
    for other in (s.name for s in SETUPS[1:]):
        times = ratio(summaries[other]["median_ttft_ms"], base["median_ttft_ms"])
        targets.append(
            Target(
                f"TTFT p50 {other} / {BASELINE}",
                times,
                f">= {TTFT_RATIO_TARGET:g}x",
                times is not None and times >= TTFT_RATIO_TARGET,
            )
        )
    oracle = base["oracle_hit_rate"]
    for key in ("di_cache_hit_rate", "usage_hit_rate"):
        share = ratio(base[key], oracle)
        targets.append(
            Target(
                f"{BASELINE} {key} / oracle_hit_rate",
                share,
                f">= {HIT_RATE_TARGET:g}",
                share is not None and share >= HIT_RATE_TARGET,
            )
        )
    spread = base["replica_spread"]
    targets.append(
        Target(
            f"{BASELINE} replica_spread",
            spread,
            f"<= {SPREAD_TARGET:g}",
            spread is not None and spread <= SPREAD_TARGET,
        )
    )
    return targets


def compare_payload(
    summaries: Mapping[str, Summary], targets: Sequence[Target], meta: Mapping[str, Any]
) -> dict[str, Any]:
    """The JSON of a compare run: metadata, each setup's summary, the ratios, the targets."""
    base = summaries[BASELINE]
    ratios = {
        name: {
            key: ratio(summary[key], base[key])
            for key in ("mean_ttft_ms", "median_ttft_ms", "p90_ttft_ms", "p99_ttft_ms")
        }
        for name, summary in summaries.items()
    }
    return {
        **meta,
        "baseline": BASELINE,
        "configs": dict(summaries),
        "ratios_to_baseline": ratios,
        "targets": [
            {"name": t.name, "value": t.value, "goal": t.goal, "met": t.met} for t in targets
        ],
    }
