"""Compare mode: one workload and seed through the router under several routing setups.

(a) `affinity`: prefix-affinity routing (the router's default), the workload as built;
(b) `cache-blind`: the router restarted with `policy: least_loaded` (least in flight only);
(c) `round-robin`: the router restarted with `policy: round_robin`;
(d) with `--routers N`: `affinity-xN`, N affinity routers sharing a Redis started for them,
    the requests spread over them in turn.

Each setup gets freshly started routers and freshly reset replicas, so every one starts cold:
an empty prefix index, empty KV caches, idle prefill queues. The targets are checked against
(a): its TTFT p50 at least 5x lower than (b)'s and (c)'s, its hit rate at least 95% of the
oracle's, its cached-token share at least 90% of the oracle's, its replica spread at most 1.3;
and (d) within 1.2x of (a) on TTFT p90 and cached-token share.
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
CACHED_SHARE_TARGET = 0.9  # of the oracle's
SPREAD_TARGET = 1.3
ROUTERS_TARGET = 1.2  # N routers against one: p90 and cached share within this factor


@dataclass(frozen=True, slots=True)
class Setup:
    name: str
    policy: str
    description: str
    routers: int = 1


SETUPS = (
    Setup("affinity", "prefix_affinity", "(a) prefix affinity"),
    Setup("cache-blind", "least_loaded", "(b) least loaded: cache-blind"),
    Setup("round-robin", "round_robin", "(c) round robin"),
)
BASELINE = SETUPS[0].name


def setups(routers: int = 1) -> tuple[Setup, ...]:
    """The setups of a run; with ``routers`` > 1, the affinity setup again on that many."""
    if routers <= 1:
        return SETUPS
    name = f"affinity-x{routers}"
    return (*SETUPS, Setup(name, "prefix_affinity", f"(d) {routers} affinity routers", routers))


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
    routers: int = 1


async def run_compare(settings: CompareSettings) -> dict[str, Summary]:
    """Run every setup; the summaries by setup name, each with the replicas' own stats."""
    summaries: dict[str, Summary] = {}
    spec = settings.spec
    requests = build(spec, settings.seed)
    # Other prefixes than the measured ones: warm the processes, not the caches.
    warmup = build(spec, f"warmup-{settings.seed}")[: settings.warmup]
    async with running_fleet(settings.sim, settings.replicas, settings.out_dir) as fleet:
        for setup in setups(settings.routers):
            await fleet.reset_sims()
            urls = await fleet.start_routers(setup.policy, settings.routing, setup.routers)
            try:
                client = replace(settings.run.client, base_url=urls[0], base_urls=tuple(urls))
                run = replace(
                    settings.run,
                    client=client,
                    replicas=settings.replicas,
                    block_size=settings.sim.block_size,
                )
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
    share = ratio(base["cached_token_share"], base["oracle_cached_share"])
    targets.append(
        Target(
            f"{BASELINE} cached_token_share / oracle_cached_share",
            share,
            f">= {CACHED_SHARE_TARGET:g}",
            share is not None and share >= CACHED_SHARE_TARGET,
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
    for name, summary in summaries.items():
        if name.startswith(f"{BASELINE}-x"):
            targets += _routers_targets(name, summary, base)
    return targets


def _routers_targets(name: str, summary: Summary, base: Summary) -> list[Target]:
    p90 = ratio(summary["p90_ttft_ms"], base["p90_ttft_ms"])
    share = ratio(base["cached_token_share"], summary["cached_token_share"])
    goal = f"<= {ROUTERS_TARGET:g}"
    return [
        Target(
            f"TTFT p90 {name} / {BASELINE}", p90, goal, p90 is not None and p90 <= ROUTERS_TARGET
        ),
        Target(
            f"cached share {BASELINE} / {name}",
            share,
            goal,
            share is not None and share <= ROUTERS_TARGET,
        ),
    ]


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
