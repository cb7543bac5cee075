"""Throughput of ``di-router serve --workers N``: 1 worker against 2, same simulator, same load.

A simulator (one process, no delays, short answers) and a router in front of it, each a
separate process on loopback; a closed-loop load generator (``--concurrency`` requests in
flight over as many keep-alive connections, which the kernel spreads over the workers) runs
for ``--seconds`` after a warm-up. The two router setups take turns ``--rounds`` times, so
drift and neighbours on the machine hit both alike; the figure is requests per second, each
round's and the median, and the ratio of the medians.

On a machine with few cores the simulator and the load generator compete with the router for
them: the ratio is what this machine gives, not the router's ceiling.

    python benchmarks/workers.py [--workers 1 2] [--rounds 3] [--seconds 5] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

# Run as a script, so this directory is on sys.path.
from _procs import Children

_SIM_READY = re.compile(r"^\S+ (http://\S+/v1)$", re.MULTILINE)
_ROUTER_READY = re.compile(r"base_url=(http://\S+/v1)")
_BODY = orjson.dumps(
    {"model": "m", "messages": [{"role": "user", "content": "Name three uses for a paperclip."}]}
)
_HEADERS = {"Content-Type": "application/json"}


async def _load(url: str, concurrency: int, seconds: float, warmup: float) -> float:
    """Requests per second over ``seconds``, after ``warmup`` seconds of the same load."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        counting = False
        done = 0
        deadline = time.perf_counter() + warmup + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                async with session.post(url, data=_BODY, headers=_HEADERS) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"HTTP {response.status}")
                if counting:
                    done += 1

        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        await asyncio.sleep(warmup)  # the warm-up is a duration of load, not a synchronisation
        counting = True
        started = time.perf_counter()
        await asyncio.gather(*tasks)
        return done / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    results: dict[int, list[float]] = {n: [] for n in args.workers}
    with tempfile.TemporaryDirectory() as tmp, Children(Path(tmp)) as children:
        sim_argv = [sys.executable, "-m", "router", "sim", "--port", "0", "--replicas", "1"]
        sim_argv += ["--ttft-ms", "0", "--itl-ms", "0", "--prefill-ms-per-token", "0"]
        sim_argv += ["--output-tokens", "16", "--log-level", "warning"]
        sim = children.start("sim", sim_argv, _SIM_READY)
        config = Path(tmp) / "router.yaml"
        config.write_bytes(
            orjson.dumps(
                {
                    "server": {"host": "127.0.0.1", "port": 0},
                    "backends": [
                        {"name": "up", "replicas": [{"id": "up-0", "url": sim.announced}]}
                    ],
                    "routes": {"text": "up", "code": "up", "json": "up", "vision": "up"},
                }
            )
        )
        for round_number in range(args.rounds):
            for workers in args.workers:
                argv = [sys.executable, "-m", "router", "serve", "--config", str(config)]
                argv += ["--workers", str(workers), "--log-level", "warning"]
                router = children.start(f"router-{workers}-{round_number}", argv, _ROUTER_READY)
                url = router.announced + "/chat/completions"
                rate = asyncio.run(_load(url, args.concurrency, args.seconds, args.warmup))
                children.stop(router)
                results[workers].append(rate)
                print(
                    f"round {round_number + 1}: {workers} worker(s): {rate:,.0f} req/s", flush=True
                )
    print(f"\nmachine: {os.cpu_count()} cores; concurrency {args.concurrency}; {args.seconds:g} s")
    medians = {n: statistics.median(rates) for n, rates in results.items()}
    for workers, median in medians.items():
        print(f"{workers} worker(s): median {median:,.0f} req/s")
    base = medians[args.workers[0]]
    for workers in args.workers[1:]:
        print(f"ratio {workers}/{args.workers[0]}: {medians[workers] / base:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
