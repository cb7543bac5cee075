"""Backend truth: what scraped load and the circuit breaker buy, measured in one run each.

Part 1, two routers sharing a fleet (``--part load``). Three simulated replicas (in this
process) sit behind two di-router processes. Every request shares one hot, marked system
prompt and adds its own uncached question; clients are spread evenly over both routers. Each
router sees only half of the fleet's load in its own in-flight counts, so with local-only load
its overload guard (``balance_abs_threshold``) never fires and the hot prefix stays on one
replica, whose prefill queue grows. With ``metrics: auto`` both routers read the replicas' own
running + waiting counts and spill the hot prefix to more replicas. Reported: TTFT p50/p90 and
how the requests spread over the replicas, for ``metrics: off`` and ``metrics: auto``.

Part 2, a failing replica (``--part breaker``). One router process, three replicas: two
simulated, one that answers 503 after a delay (an overloaded replica whose load balancer gives
up). Every request that is ranked onto it first pays that delay before the retry succeeds
elsewhere. Reported: request latency p50/p90/p99/mean with the breaker (default
``failure_threshold: 3``) and without it (threshold out of reach), against a baseline fleet
without the failing replica.

Bounded: a fixed number of requests per variant, every process stopped at the end.
    python benchmarks/backend_truth.py [--part load|breaker|all] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

sys.path.insert(0, str(Path(__file__).parent))
from _procs import _PROXY_READY, Children

from router.sim import SimSettings, start_fleet

HOT_PROMPT = "You are the support assistant of a large retailer. " + "Policy clause. " * 1500


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def start_router(children: Children, workdir: Path, name: str, config: dict[str, Any]) -> str:
    path = workdir / f"{name}.yaml"
    path.write_bytes(orjson.dumps(config))  # JSON is YAML
    argv = [sys.executable, "-m", "router", "serve", "--config", str(path)]
    argv += ["--port", "0", "--log-level", "error"]
    return children.start(name, argv, _PROXY_READY).announced


async def ttft_of(session: aiohttp.ClientSession, base: str, question: str) -> tuple[float, str]:
    body = {
        "model": "m",
        "stream": True,
        "max_tokens": 4,
        "messages": [
            {
                "role": "system",
                "content": [
                    {"type": "text", "text": HOT_PROMPT, "cache_control": {"type": "ephemeral"}}
                ],
            },
            {"role": "user", "content": question},
        ],
    }
    started = time.perf_counter()
    async with session.post(base + "/chat/completions", json=body) as response:
        assert response.status == 200, await response.text()
        replica = response.headers["X-DI-Replica"]
        async for _ in response.content.iter_any():
            return (time.perf_counter() - started) * 1000, replica
    raise RuntimeError("empty stream")


async def drive_two_routers(
    bases: list[str], requests: int, concurrency: int
) -> tuple[list[float], Counter[str]]:
    ttfts: list[float] = []
    spread: Counter[str] = Counter()
    queue = list(range(requests))
    # Each question carries ~1,000 tokens of its own: ~100 ms of uncached prefill on a replica.
    filler = " ".join(f"detail{i}" for i in range(500))

    async with aiohttp.ClientSession() as session:

        async def worker(index: int) -> None:
            base = bases[index % len(bases)]
            while queue:
                number = queue.pop()
                ms, replica = await ttft_of(session, base, f"Question {number}: {filler}")
                ttfts.append(ms)
                spread[replica] += 1

        await ttft_of(session, bases[0], "warm-up")  # the hot prefix's first placement
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return ttfts, spread


async def part_load(children: Children, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for metrics in ("off", "auto"):
        settings = SimSettings(ttft_ms=15, prefill_ms_per_token=0.1, itl_ms=5, output_tokens=4)
        async with await start_fleet(settings, replicas=3, name="sim") as fleet:
            config = {
                "server": {"host": "127.0.0.1", "port": 0},
                "backends": [
                    {
                        "name": "fleet",
                        "metrics": metrics,
                        "replicas": [{"id": r.id, "url": r.url} for r in fleet.replicas],
                    }
                ],
                "routes": {t: "fleet" for t in ("text", "code", "json", "vision")},
                "routing": {"balance_abs_threshold": args.abs_threshold},
            }
            bases = [
                start_router(children, workdir, f"router-{metrics}-{i}", config) for i in range(2)
            ]
            ttfts, spread = await drive_two_routers(bases, args.requests, args.concurrency)
            children.stop_all()
        results[metrics] = {
            "ttft_p50_ms": round(percentile(ttfts, 0.5), 1),
            "ttft_p90_ms": round(percentile(ttfts, 0.9), 1),
            "spread": dict(sorted(spread.items())),
        }
        print(f"load metrics={metrics}: {results[metrics]}", flush=True)
    return results


async def failing_replica(delay_s: float) -> web.AppRunner:
    """A replica answering 503 after ``delay_s`` to every generation request."""

    async def overloaded(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(delay_s)
        return web.json_response(
            {"error": {"message": "overloaded", "type": "server_error"}}, status=503
        )

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", overloaded)
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.2)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


async def drive_latency(base: str, requests: int, concurrency: int) -> tuple[list[float], int]:
    """Request latencies, and how many requests needed more than one attempt."""
    latencies: list[float] = []
    retried = 0
    queue = list(range(requests))
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            while queue:
                number = queue.pop()
                body = {"model": "m", "messages": [{"role": "user", "content": f"q {number}"}]}
                started = time.perf_counter()
                async with session.post(base + "/chat/completions", json=body) as response:
                    await response.read()
                    assert response.status == 200, response.status
                    attempts = int(response.headers["X-DI-Attempts"])
                latencies.append((time.perf_counter() - started) * 1000)
                if attempts > 1:
                    nonlocal retried
                    retried += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, retried


async def part_breaker(
    children: Children, workdir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    settings = SimSettings(ttft_ms=10, prefill_ms_per_token=0, itl_ms=2, output_tokens=8)
    failing = await failing_replica(args.fail_delay_ms / 1000)
    bad_url = f"http://127.0.0.1:{failing.addresses[0][1]}/v1"
    try:
        async with await start_fleet(settings, replicas=2, name="sim") as fleet:
            good = [{"id": r.id, "url": r.url} for r in fleet.replicas]
            variants = {
                "baseline (no failing replica)": (good, 3),
                "failing replica, breaker": ([*good, {"id": "bad", "url": bad_url}], 3),
                "failing replica, no breaker": (
                    [*good, {"id": "bad", "url": bad_url}],
                    1_000_000,
                ),
            }
            for name, (replicas, threshold) in variants.items():
                config = {
                    "server": {"host": "127.0.0.1", "port": 0},
                    "backends": [{"name": "fleet", "metrics": "off", "replicas": replicas}],
                    "routes": {t: "fleet" for t in ("text", "code", "json", "vision")},
                    "routing": {"policy": "least_loaded"},
                    "health": {"failure_threshold": threshold},
                }
                base = start_router(children, workdir, f"router-{len(results)}", config)
                latencies, retried = await drive_latency(base, args.requests, 4)
                children.stop_all()
                results[name] = {
                    "p50_ms": round(percentile(latencies, 0.5), 1),
                    "p90_ms": round(percentile(latencies, 0.9), 1),
                    "p99_ms": round(percentile(latencies, 0.99), 1),
                    "mean_ms": round(statistics.fmean(latencies), 1),
                    "retried_requests": retried,
                }
                print(f"breaker {name}: {results[name]}", flush=True)
    finally:
        await failing.cleanup()
    return results


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, Children(Path(tmp)) as children:
        if args.part in ("load", "all"):
            out["load"] = await part_load(children, Path(tmp), args)
        if args.part in ("breaker", "all"):
            out["breaker"] = await part_breaker(children, Path(tmp), args)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["load", "breaker", "all"], default="all")
    parser.add_argument("--requests", type=int, default=160, help="per variant")
    parser.add_argument("--concurrency", type=int, default=16, help="part 1, both routers")
    parser.add_argument("--abs-threshold", type=int, default=8, help="part 1 overload guard")
    parser.add_argument("--fail-delay-ms", type=float, default=200.0, help="part 2")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    out = asyncio.run(main_async(args))
    if args.json:
        args.json.write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
