"""`di-router bench` (and `python benchmarks/ttft.py`): a TTFT benchmark, or `--compare`.

One run drives any OpenAI-compatible `--base-url`. `--compare` starts a simulator fleet and the
router itself and runs the same workload under three routing setups (see `compare`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import shlex
import signal
import sys
from collections.abc import Coroutine, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson

from router.bench.client import ClientSettings
from router.bench.compare import (
    BASELINE,
    CompareSettings,
    check_targets,
    compare_payload,
    run_compare,
    setups,
)
from router.bench.fleet import FleetError
from router.bench.load import LoadPlan
from router.bench.report import format_comparison, format_summary, write_json, write_plot
from router.bench.runner import RunSettings, run_benchmark
from router.bench.workloads import KINDS, MARKINGS, WorkloadSpec, build
from router.sim import SimSettings

T = TypeVar("T")

# Compare mode's load: Poisson arrivals at 64 requests/s, 128 requests in about 3 s with some
# 60 streams in flight. The cache-blind setups then need more prefill than four replicas have
# while their caches fill, the affinity setup does not. At 32/s and below every setup's TTFT
# median is a cache hit and they differ only from p90 up (benchmarks/RESULTS-ttft.md).
COMPARE_REQUEST_RATE = 64.0
COMPARE_MAX_CONCURRENCY = 128
DEFAULT_OUT_DIR = Path("benchmarks/out")


def _rate(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be > 0, or inf")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="di-router bench",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    target = p.add_argument_group("target")
    mode = target.add_mutually_exclusive_group(required=True)
    mode.add_argument("--base-url", help="an OpenAI-compatible base URL, ending in /v1")
    mode.add_argument("--compare", action="store_true", help="start sims + router, compare")
    target.add_argument("--model", help="model id (default: the first of GET /models)")
    target.add_argument("--api-key", help="sent as a bearer token")
    target.add_argument("--extra-body", type=_json_object, default={}, help="JSON merged in")
    target.add_argument("--request-timeout", type=float, default=300.0, help="seconds")

    work = p.add_argument_group("workload")
    work.add_argument("--workload", choices=KINDS, default="shared-prefix")
    work.add_argument("--seed", type=int, default=0, help="of the prompts and arrival times")
    work.add_argument("--num-groups", type=_positive, default=8, help="shared-prefix")
    work.add_argument("--prompts-per-group", type=_positive, default=16, help="shared-prefix")
    work.add_argument("--system-prompt-len", type=_count, default=2000, help="tokens")
    work.add_argument("--question-len", type=_positive, default=128, help="tokens")
    work.add_argument("--output-len", type=_positive, default=64, help="tokens")
    work.add_argument("--num-conversations", type=_positive, default=16, help="multi-turn")
    work.add_argument("--turns", type=_positive, default=6, help="multi-turn")
    work.add_argument("--input-len", type=_positive, default=1024, help="random: tokens")
    work.add_argument("--num-requests", type=_positive, help="random: count; others: a cap")
    work.add_argument("--no-cache-control", action="store_true", help="send no breakpoints")
    work.add_argument(
        "--marking",
        choices=MARKINGS,
        default="default",
        help="where requests carry cache_control: the workload's own places (shared-prefix: "
        "system prompt; multi-turn: last two user turns), top-level, newest user message, none",
    )

    load = p.add_argument_group("load")
    load.add_argument(
        "--request-rate",
        type=_rate,
        help=f"Poisson arrivals per second, inf for all at once "
        f"(default: inf; {COMPARE_REQUEST_RATE:g} with --compare)",
    )
    load.add_argument("--max-concurrency", type=_positive, help="open loop: most in flight")
    load.add_argument("--concurrency", type=_positive, help="closed loop with N clients instead")
    load.add_argument("--warmup", type=_count, default=4, help="unmeasured requests first")
    load.add_argument("--time-limit", type=float, default=600.0, help="seconds per run")

    out = p.add_argument_group("output")
    out.add_argument("--output-json", type=Path, help="write the results here")
    out.add_argument("--plot", type=Path, help="write a PNG of the TTFT distributions here")
    out.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    sim = p.add_argument_group("compare mode's fleet (sim flags as in `di-router sim`)")
    sim.add_argument("--replicas", type=_positive, default=4)
    sim.add_argument(
        "--routers",
        type=_positive,
        default=1,
        help="also run affinity on N routers sharing a Redis the benchmark starts",
    )
    defaults = SimSettings()
    sim.add_argument("--sim-ttft-ms", type=float, default=defaults.ttft_ms)
    sim.add_argument(
        "--sim-prefill-ms-per-token", type=float, default=defaults.prefill_ms_per_token
    )
    sim.add_argument("--sim-itl-ms", type=float, default=defaults.itl_ms)
    sim.add_argument("--sim-cache-blocks", type=_count, default=defaults.cache_blocks)
    sim.add_argument("--sim-block-size", type=_positive, default=defaults.block_size)
    sim.add_argument(
        "--routing",
        type=_json_object,
        default={},
        help='merged into the router\'s routing settings, e.g. {"balance_abs_threshold": 8}',
    )
    sim.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="logs, JSON, PNG")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(given)
    args.bench_args = shlex.join(given)
    try:
        if args.compare:
            return _run(_compare(args))
        return _run(_single(args))
    except (aiohttp.ClientError, OSError, RuntimeError, FleetError) as exc:
        print(f"di-router bench: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except asyncio.CancelledError:  # SIGTERM, once every child process was stopped
        return 143


def _run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main`; SIGTERM cancels it like Ctrl-C does, so child processes are stopped."""

    async def guarded() -> T:
        task = asyncio.current_task()
        assert task is not None
        with contextlib.suppress(NotImplementedError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await main

    return asyncio.run(guarded())


def _spec(args: argparse.Namespace) -> WorkloadSpec:
    return WorkloadSpec(
        kind=args.workload,
        num_groups=args.num_groups,
        prompts_per_group=args.prompts_per_group,
        system_prompt_len=args.system_prompt_len,
        question_len=args.question_len,
        output_len=args.output_len,
        num_conversations=args.num_conversations,
        turns=args.turns,
        input_len=args.input_len,
        num_requests=args.num_requests,
        cache_control=not args.no_cache_control,
        marking=args.marking,
    )


def _settings(
    args: argparse.Namespace,
    base_url: str,
    model: str,
    rate: float,
    max_concurrency: int | None = None,
) -> RunSettings:
    client = ClientSettings(
        base_url=base_url,
        model=model,
        api_key=args.api_key,
        extra_body=args.extra_body,
        request_timeout_s=args.request_timeout,
    )
    load = LoadPlan(
        request_rate=rate,
        max_concurrency=args.max_concurrency or max_concurrency,
        concurrency=args.concurrency,
        seed=args.seed,
        time_limit_s=args.time_limit,
    )
    return RunSettings(client=client, load=load, progress=not args.no_progress)


def _meta(args: argparse.Namespace, spec: WorkloadSpec) -> dict[str, Any]:
    return {
        "bench_args": args.bench_args,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "workload": {**asdict(spec), "seed": args.seed},
    }


async def _model(args: argparse.Namespace) -> str:
    """The --model given, else the first model the server lists (as vLLM's bench does)."""
    if args.model:
        return str(args.model)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    timeout = aiohttp.ClientTimeout(total=30, sock_connect=10)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(args.base_url.rstrip("/") + "/models", headers=headers) as response,
    ):
        response.raise_for_status()
        listed = await response.json()
    models = listed.get("data") if isinstance(listed, dict) else None
    if not models:
        raise RuntimeError("the server lists no models; pass --model")
    return str(models[0]["id"])


async def _single(args: argparse.Namespace) -> int:
    spec = _spec(args)
    rate = math.inf if args.request_rate is None else args.request_rate
    settings = _settings(args, args.base_url, await _model(args), rate)
    requests = build(spec, args.seed)
    warmup = build(spec, f"warmup-{args.seed}")[: args.warmup]
    summary = await run_benchmark(args.workload, requests, settings, warmup=warmup)
    print(format_summary(summary))
    if args.output_json:
        write_json(args.output_json, {**_meta(args, spec), **summary})
        print(f"results: {args.output_json}")
    if args.plot:
        write_plot(args.plot, {args.workload: summary}, f"{args.workload} against {args.base_url}")
        print(f"plot: {args.plot}")
    return 0 if summary["completed"] else 1


async def _compare(args: argparse.Namespace) -> int:
    spec = _spec(args)
    rate = COMPARE_REQUEST_RATE if args.request_rate is None else args.request_rate
    settings = _settings(args, "", args.model or "sim-model", rate, COMPARE_MAX_CONCURRENCY)
    sim = SimSettings(
        ttft_ms=args.sim_ttft_ms,
        prefill_ms_per_token=args.sim_prefill_ms_per_token,
        itl_ms=args.sim_itl_ms,
        cache_blocks=args.sim_cache_blocks,
        block_size=args.sim_block_size,
    )
    compare = CompareSettings(
        spec=spec,
        seed=args.seed,
        run=settings,
        warmup=args.warmup,
        sim=sim,
        replicas=args.replicas,
        routing=args.routing,
        out_dir=args.out_dir,
        routers=args.routers,
    )
    print(f"compare: {', '.join(s.description for s in setups(args.routers))}", file=sys.stderr)
    summaries = await run_compare(compare)
    targets = check_targets(summaries)
    print(
        f"{spec.kind} (marking: {spec.style}), {settings.load.describe()}, "
        f"{args.replicas} replicas, {args.sim_cache_blocks} KV blocks each, seed {args.seed}"
    )
    print(format_comparison(summaries, BASELINE))
    print()
    for target in targets:
        print(target.line())
    meta = {
        **_meta(args, spec),
        "sim": asdict(sim),
        "replicas": args.replicas,
        "routers": args.routers,
        "routing": args.routing,
    }
    json_path = args.output_json or args.out_dir / "ttft-compare.json"
    write_json(json_path, compare_payload(summaries, targets, meta))
    plot_path = args.plot or args.out_dir / "ttft-compare.png"
    title = (
        f"{spec.kind}: {spec.num_groups}x{spec.prompts_per_group}, "
        f"{settings.load.describe()}, {args.replicas} sim replicas"
        if spec.kind == "shared-prefix"
        else f"{spec.kind}, {settings.load.describe()}, {args.replicas} sim replicas"
    )
    write_plot(plot_path, summaries, title)
    print(f"results: {json_path}\nplot: {plot_path}")
    return 0
