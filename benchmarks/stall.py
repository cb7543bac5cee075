"""How long one maximal request stalls every other request on a router process.

Starts a simulator process and ``di-router serve`` in front of it (default settings but for
``max_body_size``) from a source tree, measures ``GET /health`` on the idle router, then sends,
one at a time, the worst bodies the limit allows (each filled up to ``--size``) while a prober
keeps calling ``/health``; it reports per body: the big request's status and time, the router's
CPU seconds (its worker processes included) and peak RSS, and the longest wait of a probe
meanwhile, also as a ratio to the idle p50. The simulator runs in its own process so that only
the router's work is measured.

    python benchmarks/stall.py --size 8MiB                       # this tree
    python benchmarks/stall.py --source OLD_TREE --size 32MiB    # e.g. an older commit, unpacked

Bodies (each padded to the size):
  messages  tiny chat messages and one cache_control breakpoint (the report that started this)
  keys      one object of tiny distinct keys (orjson's slowest input per byte)
  lists     an array of empty arrays (the most containers per byte)
  string    one long user message (a legitimate maximal body, served by the simulator)
  marked    a 4 MiB message with a cache_control breakpoint, padded with text to the size
  deep      1,000 nested arrays (orjson's limit is 1,024; it encodes only 254)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil

ROOT = Path(__file__).resolve().parent.parent
BIG_TIMEOUT = 180.0


def parse_size(text: str) -> int:
    units = {"KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30}
    for unit, factor in units.items():
        if text.upper().endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def _fill(head: bytes, item: bytes, tail: bytes, size: int) -> bytes:
    count = max(1, (size - len(head) - len(tail)) // (len(item) + 1))
    return head + b",".join([item] * count) + tail


def body(kind: str, size: int) -> bytes:
    budget = size - 64  # stay under the limit
    if kind == "messages":
        head = b'{"model": "m", "messages": ['
        marked = b'{"role": "user", "content": [{"type": "text", "text": "x", '
        marked += b'"cache_control": {"type": "ephemeral"}}]}]}'
        return _fill(head, b'{"role":"user","content":"x"}', b"," + marked, budget)
    if kind == "keys":
        head = b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "x": {'
        count = budget // 12
        keys = b",".join(b'"%x":0' % i for i in range(count))
        return head + keys[: budget - len(head) - 2].rpartition(b",")[0] + b"}}"
    if kind == "lists":
        head = b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "x": ['
        return _fill(head, b"[]", b"]}", budget)
    if kind == "string":
        text = "y " * ((budget - 200) // 2)
        return orjson.dumps({"model": "m", "messages": [{"role": "user", "content": text}]})
    if kind == "marked":
        marker = {"type": "ephemeral"}
        first = {"type": "text", "text": "z" * ((4 << 20) - 64), "cache_control": marker}
        rest = {"type": "text", "text": "y" * max(0, budget - (4 << 20) - 300)}
        content = [first, rest]
        return orjson.dumps({"model": "m", "messages": [{"role": "user", "content": content}]})
    if kind == "deep":
        return b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "x": ' + (
            b"[" * 1000 + b"]" * 1000 + b"}"
        )
    raise ValueError(kind)


def start_stack(source: Path, workdir: Path, size: int) -> list[subprocess.Popen[bytes]]:
    """A one-replica simulator and a router in front of it, both from ``source``."""
    env = {**os.environ, "PYTHONPATH": str(source)}
    sim_port, port = _free_port(), _free_port()
    sim_args = ["sim", "--port", str(sim_port), "--ttft-ms", "0", "--itl-ms", "0"]
    sim_args += ["--prefill-ms-per-token", "0", "--output-tokens", "4", "--log-level", "error"]
    url = f"http://127.0.0.1:{sim_port}/v1"
    config = {
        "server": {"host": "127.0.0.1", "port": port, "max_body_size": size},
        "backends": [{"name": "sim", "replicas": [{"id": "sim-0", "url": url}]}],
        "routes": {t: "sim" for t in ("text", "code", "json", "vision")},
    }
    path = workdir / "router.yaml"
    path.write_bytes(orjson.dumps(config))  # JSON is YAML
    procs = []
    for args, ready in (
        (sim_args, b"sim-0"),
        (["serve", "--config", str(path), "--log-level", "error"], b"listening"),
    ):
        proc = subprocess.Popen(
            [sys.executable, "-m", "router", *args], cwd=source, env=env, stdout=subprocess.PIPE
        )
        procs.append(proc)
        assert proc.stdout is not None
        for line in proc.stdout:
            if ready in line:
                break
        else:
            raise RuntimeError(f"{args[0]} did not start")
    return procs


async def small_request(session: aiohttp.ClientSession, url: str) -> float:
    started = time.perf_counter()
    async with session.get(url) as response:
        await response.read()
        assert response.status == 200, response.status
    return time.perf_counter() - started


def _cpu(proc: psutil.Process) -> float:
    """User+system seconds of the router and its worker processes."""
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += sum(p.cpu_times()[:2])
    return total


def _rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


async def measure(
    session: aiohttp.ClientSession,
    url: str,
    health: str,
    proc: psutil.Process,
    data: bytes,
    idle: float,
) -> dict[str, Any]:
    done = asyncio.Event()
    waits: list[float] = []
    peak_rss = _rss(proc)
    cpu_before = _cpu(proc)

    async def probe() -> None:
        nonlocal peak_rss
        while not done.is_set():
            waits.append(await small_request(session, health))
            peak_rss = max(peak_rss, _rss(proc))

    async def big() -> tuple[int, float]:
        started = time.perf_counter()
        try:
            async with session.post(
                url,
                data=io.BytesIO(data),  # streamed, so the client's own loop stays free
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=BIG_TIMEOUT),
            ) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError):
            status = 0
        finally:
            done.set()
        return status, time.perf_counter() - started

    prober = asyncio.create_task(probe())
    status, seconds = await big()
    await prober
    cpu = _cpu(proc) - cpu_before
    worst = max(waits) if waits else 0.0
    return {
        "bytes": len(data),
        "status": status,
        "big_request_s": round(seconds, 3),
        "router_cpu_s": round(cpu, 3),
        "peak_rss_mib": round(peak_rss / 2**20),
        "probes": len(waits),
        "worst_small_wait_ms": round(worst * 1000, 1),
        "stall_ratio_vs_idle_p50": round(worst / idle, 1),
    }


async def run(source: Path, size: int, kinds: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="di-stall-") as workdir:
        procs = start_stack(source, Path(workdir), size)
        try:
            return await _measure_all(procs[1], size, kinds)
        finally:
            for proc in reversed(procs):
                proc.terminate()
                proc.wait(60)


async def _measure_all(router: subprocess.Popen[bytes], size: int, kinds: list[str]) -> Any:
    proc = psutil.Process(router.pid)
    port = next(c.laddr.port for c in proc.net_connections() if c.status == "LISTEN")
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    health = f"http://127.0.0.1:{port}/health"
    results: dict[str, Any] = {"size": size}
    async with aiohttp.ClientSession() as session:
        for _ in range(50):
            await small_request(session, health)  # warm up
        idle = statistics.median([await small_request(session, health) for _ in range(200)])
        results["idle_p50_ms"] = round(idle * 1000, 3)
        results["rss_idle_mib"] = round(_rss(proc) / 2**20)
        for kind in kinds:
            data = body(kind, size)
            results[kind] = await measure(session, url, health, proc, data, idle)
            print(kind, results[kind], flush=True)
    return results


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=ROOT, help="the router's source tree")
    parser.add_argument("--size", default="8MiB", help="body size (the default limit)")
    parser.add_argument("--kinds", default="messages,keys,lists,string,marked,deep")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    results = asyncio.run(run(args.source.resolve(), parse_size(args.size), args.kinds.split(",")))
    print(f"idle p50 {results['idle_p50_ms']} ms, idle RSS {results['rss_idle_mib']} MiB")
    if args.json:
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
