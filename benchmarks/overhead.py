"""di-router's own cost: requests/s, latency, CPU per request and TTFT against a floor.

Three targets answer the same chat requests: the simulator directly, ``passthrough.py`` (an
aiohttp proxy that parses nothing: the floor for any Python gateway) and di-router, both in
front of the same simulator, each a separate process on loopback. The simulator adds no
latency, so what a proxy adds is all there is to see; CPU time per request is read from the OS
for every process. TTFT is measured on a second stack whose simulator waits 50 ms for the first
token, so that a proxy that buffered would show.

Closed loop: ``c`` workers share one aiohttp session. Each measurement follows a warm-up; the
targets take turns at each concurrency, and ``--rounds`` repeats the sweep and pools the
samples, so that drift and neighbours on the machine hit all targets alike. On a small machine
the load generator competes with the proxies for the cores: the output says how busy it was.

    python benchmarks/overhead.py [--quick] [--rounds N] [--json OUT] [--profile DIR]

``--profile`` then samples di-router and the pass-through with py-spy under the same load and
prints where the router's extra CPU goes, in microseconds per request.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import math
import os
import platform
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from time import perf_counter
from typing import Any, NamedTuple

import aiohttp
import orjson
import psutil
import uvloop

# Run as a script, so this directory is on sys.path.
from _procs import Children, Stack, read_py_spy, start_py_spy, start_stack

TARGETS = ("direct", "passthrough", "di-router")
LEVELS = (1, 16, 64)
STREAM_LEVELS = (1, 16)
PROFILE_CONCURRENCY = 16
OUTPUT_TOKENS = 16
STREAM_TTFT_MS = 50.0
TARGET_CPU_RATIO = 1.5
TARGET_ADDED_P50_MS = 1.0
TARGET_ADDED_TTFT_MS = 2.0
BACKGROUND_WARNING_CORES = 0.2

_JSON_HEADERS = {"Content-Type": "application/json"}
_MESSAGES = [
    {"role": "system", "content": "You are a terse assistant. Answer in one short sentence."},
    {"role": "user", "content": "Name three prime numbers and say why they are prime."},
]
CHAT = orjson.dumps({"model": "bench-model", "messages": _MESSAGES, "max_tokens": OUTPUT_TOKENS})
CHAT_STREAM = orjson.dumps(
    {"model": "bench-model", "messages": _MESSAGES, "max_tokens": OUTPUT_TOKENS, "stream": True}
)


@dataclass(slots=True)
class Samples:
    """What measurements of one target at one concurrency add up to, over the rounds."""

    latencies_ms: list[float] = field(default_factory=list)
    ttfts_ms: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0
    cpu_seconds: Counter[str] = field(default_factory=Counter)  # by role: sim, proxy, loadgen
    machine_busy_seconds: float = 0.0
    proxy_cpu_us_by_round: list[float] = field(default_factory=list)

    def add(self, other: Samples) -> None:
        if "proxy" in other.cpu_seconds:
            us = other.cpu_seconds["proxy"] / max(len(other.latencies_ms), 1) * 1e6
            self.proxy_cpu_us_by_round.append(us)
        self.latencies_ms += other.latencies_ms
        self.ttfts_ms += other.ttfts_ms
        self.errors += other.errors
        self.seconds += other.seconds
        self.cpu_seconds.update(other.cpu_seconds)
        self.machine_busy_seconds += other.machine_busy_seconds


@dataclass(frozen=True, slots=True)
class Point:
    """One target at one concurrency: the figures of the table and the JSON."""

    target: str
    concurrency: int
    stream: bool
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    cpu_us_per_request: dict[str, float]
    machine_cores_busy: float  # every process on the machine, CPU seconds per wall second
    proxy_cpu_us_by_round: list[float]

    @classmethod
    def of(cls, target: str, concurrency: int, stream: bool, s: Samples) -> Point:
        done = len(s.latencies_ms)
        latencies, ttfts = sorted(s.latencies_ms), sorted(s.ttfts_ms)
        cpu_us = {role: t / max(done, 1) * 1e6 for role, t in s.cpu_seconds.items()}
        return cls(
            *(target, concurrency, stream, done, s.errors, done / s.seconds if s.seconds else 0.0),
            *(percentile(latencies, 0.50), percentile(latencies, 0.99)),
            sum(latencies) / done if done else math.nan,
            *(percentile(ttfts, 0.50), percentile(ttfts, 0.99)),
            cpu_us,
            s.machine_busy_seconds / s.seconds if s.seconds else 0.0,
            s.proxy_cpu_us_by_round,
        )


@dataclass(frozen=True, slots=True)
class Plan:
    rounds: int
    requests: dict[int, int]  # per round, by concurrency
    stream_requests: dict[int, int]
    warmup: int
    max_seconds: float
    profile: Path | None
    profile_seconds: float


def percentile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks; NaN for no samples."""
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * q
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# -- load ----------------------------------------------------------------------------------


async def drive(
    session: aiohttp.ClientSession,
    url: str,
    payload: bytes,
    *,
    concurrency: int,
    requests: int,
    max_seconds: float,
) -> Samples:
    """``requests`` requests from ``concurrency`` closed-loop workers, or fewer at the deadline."""
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + max_seconds
    stream = payload is CHAT_STREAM
    samples = Samples()
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0 and loop.time() < stop_at:
            remaining -= 1
            await _one(session, url, payload, stream, samples)

    started = perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
    samples.seconds = perf_counter() - started
    return samples


async def _one(
    session: aiohttp.ClientSession, url: str, payload: bytes, stream: bool, samples: Samples
) -> None:
    started = perf_counter()
    ttft: float | None = None
    try:
        async with session.post(url, data=payload, headers=_JSON_HEADERS) as response:
            if stream:
                ttft = await _first_token_ms(response, started)
            else:
                await response.read()
            ok = response.status == 200 and (ttft is not None or not stream)
    except (aiohttp.ClientError, TimeoutError):
        ok = False
    if not ok:
        samples.errors += 1
        return
    samples.latencies_ms.append((perf_counter() - started) * 1000)
    if ttft is not None:
        samples.ttfts_ms.append(ttft)


async def _first_token_ms(response: aiohttp.ClientResponse, started: float) -> float | None:
    """Read a whole SSE stream; when its first content came, or None if it had none or no [DONE].

    The first token is the first ``data:`` event whose delta has non-empty content: servers
    send the assistant role in an empty first chunk, which is not a token.
    """
    first: float | None = None
    done = False
    async for line in response.content:
        if first is None and _has_content(line):
            first = (perf_counter() - started) * 1000
        elif line.startswith(b"data: [DONE]"):
            done = True
    return first if done else None


def _has_content(line: bytes) -> bool:
    if not line.startswith(b"data:"):
        return False
    try:
        return bool(orjson.loads(line[5:])["choices"][0]["delta"]["content"])
    except (orjson.JSONDecodeError, LookupError, TypeError):
        return False  # [DONE], and events without content: the role chunk, usage, errors


# -- measurement ---------------------------------------------------------------------------


def _cpu_seconds(processes: dict[str, psutil.Process]) -> Counter[str]:
    times = {role: p.cpu_times() for role, p in processes.items()}
    return Counter({role: float(t.user + t.system) for role, t in times.items()})


def _machine_busy_seconds() -> float:
    # Not idle, iowait or steal (another VM's time); guest time is already in user.
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0))


class Level(NamedTuple):
    concurrency: int
    requests: int
    stream: bool


async def measure(
    session: aiohttp.ClientSession, stack: Stack, target: str, level: Level, plan: Plan
) -> Samples:
    """A warm-up, then the level's requests, with the CPU they cost each process."""
    url, c = stack.url(target), level.concurrency
    payload = CHAT_STREAM if level.stream else CHAT
    warmup = min(plan.warmup, max(level.requests // 10, c))
    await drive(session, url, payload, concurrency=c, requests=warmup, max_seconds=10)
    pids = {**stack.pids(target), "loadgen": os.getpid()}
    processes = {role: psutil.Process(pid) for role, pid in pids.items()}
    cpu_before, busy_before = _cpu_seconds(processes), _machine_busy_seconds()
    samples = await drive(
        session, url, payload, concurrency=c, requests=level.requests, max_seconds=plan.max_seconds
    )
    samples.cpu_seconds = _cpu_seconds(processes)
    samples.cpu_seconds.subtract(cpu_before)
    samples.machine_busy_seconds = _machine_busy_seconds() - busy_before
    return samples


async def sweep(
    session: aiohttp.ClientSession, stack: Stack, plan: Plan, *, stream: bool
) -> list[Point]:
    """Every target at every concurrency, ``plan.rounds`` times over, the samples pooled."""
    counts = plan.stream_requests if stream else plan.requests
    pooled = {(c, t): Samples() for c in counts for t in TARGETS}
    for round_number in range(1, plan.rounds + 1):
        for c, requests in counts.items():
            for target in TARGETS:
                level = Level(c, requests, stream)
                pooled[c, target].add(await measure(session, stack, target, level, plan))
        print(f"  round {round_number}/{plan.rounds} done", flush=True)
    points = [Point.of(t, c, stream, s) for (c, t), s in pooled.items()]
    print(_header(stream))
    for point in points:
        print(_row(point))
    return points


async def check_stack(session: aiohttp.ClientSession, stack: Stack) -> None:
    """One request per target: all answer 200, and the router is the one adding X-DI-*."""
    for target in TARGETS:
        async with session.post(stack.url(target), data=CHAT, headers=_JSON_HEADERS) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"{target} answered HTTP {response.status}")
            if (target == "di-router") != ("X-DI-Backend" in response.headers):
                raise RuntimeError(f"{target}: unexpected X-DI-* headers {response.headers}")


# -- profile -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Profile:
    """py-spy's busy samples of one proxy, scaled to CPU microseconds per request."""

    samples: int
    cpu_us_per_request: float
    own: Counter[str]  # by innermost router/ function
    calls: Counter[str]  # by innermost router/ function -> the function it calls
    leaf: Counter[str]  # by innermost frame, any code: self time

    def us(self, count: int) -> float:
        return count / self.samples * self.cpu_us_per_request if self.samples else 0.0

    def top(self, counter: Counter[str], n: int = 12) -> list[tuple[str, float]]:
        return [(name, round(self.us(count), 2)) for name, count in counter.most_common(n)]


async def profile(
    session: aiohttp.ClientSession, children: Children, stack: Stack, plan: Plan
) -> dict[str, Profile]:
    """Sample each proxy with py-spy while it serves non-streaming load alone."""
    assert plan.profile is not None
    plan.profile.mkdir(parents=True, exist_ok=True)
    profiles = {}
    for target in ("passthrough", "di-router"):
        raw = plan.profile / f"{target}.txt"
        pid = stack.proxy(target).pid
        seconds = plan.profile_seconds
        window = seconds + 3  # outlasts warm-up and load
        spy = await asyncio.to_thread(start_py_spy, children, f"py-spy-{target}", pid, raw, window)
        level = Level(PROFILE_CONCURRENCY, 10**7, stream=False)
        samples = await measure(session, stack, target, level, replace(plan, max_seconds=seconds))
        await asyncio.to_thread(spy.proc.wait, window + 30)
        children.stop(spy)
        cpu_us = samples.cpu_seconds["proxy"] / max(len(samples.latencies_ms), 1) * 1e6
        profiles[target] = read_profile(raw, cpu_us)
    return profiles


def read_profile(path: Path, cpu_us_per_request: float) -> Profile:
    """Attribute py-spy's stacks to functions.

    A sample belongs to its innermost ``router/`` frame: the function's own code and the
    library calls it makes, not the router functions it calls. The entry point
    (``router/cli.py``) does not count: samples with nothing else of ours on the stack are
    aiohttp's and uvloop's own work.
    """
    total = 0
    own: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    for frames, count in read_py_spy(path):
        total += count
        leaf[frames[-1]] += count
        mine = [i for i, f in enumerate(frames) if f.startswith("router/") and not _entry(f)]
        if mine:
            own[frames[mine[-1]]] += count
            callee = frames[mine[-1] + 1] if mine[-1] + 1 < len(frames) else "(own code)"
            calls[f"{frames[mine[-1]]} -> {callee}"] += count
    return Profile(total, cpu_us_per_request, own, calls, leaf)


def _entry(frame: str) -> bool:
    return frame.startswith(("router/cli.py", "router/__main__.py"))


def profile_report(profiles: dict[str, Profile]) -> dict[str, Any]:
    router, floor = profiles["di-router"], profiles["passthrough"]
    keys = set(router.leaf) | set(floor.leaf)
    extra = {k: router.us(router.leaf[k]) - floor.us(floor.leaf[k]) for k in keys}
    return {
        "concurrency": PROFILE_CONCURRENCY,
        "cpu_us_per_request": {t: p.cpu_us_per_request for t, p in profiles.items()},
        "samples": {t: p.samples for t, p in profiles.items()},
        "router_own_us": router.top(router.own),
        "router_calls_us": router.top(router.calls),
        "in_router_functions_us": router.us(sum(router.own.values())),
        "self_time_extra_us": sorted(extra.items(), key=lambda kv: -abs(kv[1]))[:15],
    }


def print_profile(report: dict[str, Any]) -> None:
    cpu = report["cpu_us_per_request"]
    print(
        f"\nprofile at c={report['concurrency']}, non-streaming (py-spy, busy samples "
        f"{report['samples']}), in CPU us/request: di-router {cpu['di-router']:.0f}, "
        f"pass-through {cpu['passthrough']:.0f}; "
        f"{report['in_router_functions_us']:.0f} us under router/ functions"
    )
    for key, title in (
        ("router_own_us", "di-router, by innermost router/ function"),
        ("router_calls_us", "di-router, by innermost router/ function -> what it calls"),
        ("self_time_extra_us", "self time, di-router minus pass-through, by function"),
    ):
        print(f"  {title}:")
        for name, us in report[key]:
            print(f"    {us:+7.1f}  {name}")


def _header(stream: bool) -> str:
    latency = "TTFT p50  TTFT p99    p50 ms" if stream else "  p50 ms    p99 ms   mean ms"
    return (
        f"target         c requests   req/s  {latency}  CPU us/req: proxy    sim  loadgen "
        "cores busy errors"
    )


def _row(p: Point) -> str:
    cpu = p.cpu_us_per_request
    proxy = f"{cpu['proxy']:.0f}" if "proxy" in cpu else "-"
    figures = (
        (p.ttft_p50_ms, p.ttft_p99_ms, p.p50_ms) if p.stream else (p.p50_ms, p.p99_ms, p.mean_ms)
    )
    first, second, third = figures
    return (
        f"{p.target:<12} {p.concurrency:>3} {p.requests:>8} {p.rps:>7.0f} {first:>9.2f} "
        f"{second:>9.2f} {third:>9.2f} {proxy:>18} {cpu['sim']:>6.0f} {cpu['loadgen']:>8.0f} "
        f"{p.machine_cores_busy:>10.2f} {p.errors:>6}"
    )


def ratios(points: list[Point]) -> dict[str, Any]:
    """The figures the targets are about, each beside its target."""
    at = {(p.target, p.concurrency, p.stream): p for p in points}

    def cpu(c: int, stream: bool) -> float:
        router = at["di-router", c, stream].cpu_us_per_request["proxy"]
        return router / at["passthrough", c, stream].cpu_us_per_request["proxy"]

    def cpu_by_round(c: int) -> list[float]:
        router, floor = (
            at[t, c, False].proxy_cpu_us_by_round for t in ("di-router", "passthrough")
        )
        return [r / f for r, f in zip(router, floor, strict=True)]

    def added(stream: bool) -> dict[str, float]:
        ms = {
            t: at[t, 1, stream].ttft_p50_ms if stream else at[t, 1, stream].p50_ms for t in TARGETS
        }
        return {t: ms[t] - ms["direct"] for t in ("di-router", "passthrough")}

    return {
        "cpu_per_request_vs_passthrough": {
            "target": TARGET_CPU_RATIO,
            "by_concurrency": {c: cpu(c, False) for c in LEVELS},
            "by_concurrency_and_round": {c: cpu_by_round(c) for c in LEVELS},
            "streaming_by_concurrency": {c: cpu(c, True) for c in STREAM_LEVELS},
        },
        "added_p50_ms_c1": {"target": TARGET_ADDED_P50_MS, **added(False)},
        "added_ttft_p50_ms_c1": {"target": TARGET_ADDED_TTFT_MS, **added(True)},
    }


def print_ratios(r: dict[str, Any]) -> None:
    cpu = r["cpu_per_request_vs_passthrough"]
    met = all(v <= cpu["target"] for v in cpu["by_concurrency"].values())
    spread = {c: f"{min(r):.2f}-{max(r):.2f}" for c, r in cpu["by_concurrency_and_round"].items()}
    by_c = ", ".join(f"c={c} {v:.2f}x ({spread[c]})" for c, v in cpu["by_concurrency"].items())
    streaming = ", ".join(f"c={c} {v:.2f}x" for c, v in cpu["streaming_by_concurrency"].items())
    print(f"di-router CPU/request vs pass-through: {by_c} (target <= {cpu['target']}x): ", end="")
    print(f"{'met' if met else 'MISSED'}\n  (in brackets: lowest-highest of the rounds)")
    print(f"  streaming, for reference: {streaming}")
    for key, label in (
        ("added_p50_ms_c1", "added p50 latency at c=1 vs direct"),
        ("added_ttft_p50_ms_c1", "added TTFT p50 at c=1 vs direct"),
    ):
        item = r[key]
        verdict = "met" if item["di-router"] <= item["target"] else "MISSED"
        print(
            f"di-router {label}: {item['di-router']:+.3f} ms (target <= {item['target']} ms): "
            f"{verdict}; pass-through adds {item['passthrough']:+.3f} ms"
        )


def background_cores(seconds: float = 1.0) -> float:
    """How many cores other processes keep busy, sampled before anything starts."""
    before = _machine_busy_seconds()
    time.sleep(seconds)  # a measurement window, not a wait for anything
    return (_machine_busy_seconds() - before) / seconds


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "?")
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "aiohttp": aiohttp.__version__,
        "uvloop": importlib.metadata.version("uvloop"),
    }


async def run(plan: Plan, children: Children, workdir: Path) -> dict[str, Any]:
    task = asyncio.current_task()
    assert task is not None
    # SIGTERM unwinds like Ctrl-C, so the children are stopped on the way out.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    info = machine()
    info["background_cores_busy"] = await asyncio.to_thread(background_cores)
    print(
        f"machine: {info['nproc']} cores ({info['cpu_model']}), Python {info['python']}. "
        "The load generator, the proxy and the simulator share these cores: from c=16 on the "
        "machine is saturated, and every figure includes that contention."
    )
    print(f"busy before the start (other processes): {info['background_cores_busy']:.2f} cores")
    if info["background_cores_busy"] > BACKGROUND_WARNING_CORES:
        print("WARNING: other processes are using the CPU; the figures will be noisy.")
    connector = aiohttp.TCPConnector(limit=4 * max(LEVELS), limit_per_host=2 * max(LEVELS))
    timeout = aiohttp.ClientTimeout(total=60, sock_connect=10)
    profiles = None
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        stack = await asyncio.to_thread(start_stack, children, workdir, "zero", 0.0, OUTPUT_TOKENS)
        await check_stack(session, stack)
        print(f"\nnon-streaming, simulator without latency ({OUTPUT_TOKENS} output tokens)")
        plain = await sweep(session, stack, plan, stream=False)
        if plan.profile:
            profiles = profile_report(await profile(session, children, stack, plan))
        await asyncio.to_thread(children.stop_all)

        stack = await asyncio.to_thread(
            start_stack, children, workdir, "ttft", STREAM_TTFT_MS, OUTPUT_TOKENS
        )
        await check_stack(session, stack)
        print(f"\nstreaming, simulator TTFT {STREAM_TTFT_MS:.0f} ms, no inter-token delay")
        streamed = await sweep(session, stack, plan, stream=True)
    summary = ratios(plain + streamed)
    print()
    print_ratios(summary)
    if profiles is not None:
        print_profile(profiles)
    return {
        "machine": info,
        "command": [Path(sys.executable).name, *sys.argv],
        "plan": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(plan).items()},
        "non_streaming": [asdict(p) for p in plain],
        "streaming": [asdict(p) for p in streamed],
        "ratios": summary,
        "profile": profiles,
    }


def _plan(args: argparse.Namespace) -> Plan:
    requests = 200 if args.quick else args.requests
    stream_requests = 64 if args.quick else args.stream_requests
    return Plan(
        rounds=1 if args.quick else args.rounds,
        # c=1 takes longest per request; at under 1 ms each, half the count is plenty.
        requests={c: requests // 2 if c == 1 else requests for c in LEVELS},
        # 50 ms to the first token: at c=1 a quarter of the count keeps it to seconds.
        stream_requests={
            c: stream_requests // 4 if c == 1 else stream_requests for c in STREAM_LEVELS
        },
        warmup=20 if args.quick else 200,
        max_seconds=args.max_seconds,
        profile=args.profile,
        profile_seconds=4.0 if args.quick else args.profile_seconds,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="di-router overhead vs direct and pass-through")
    add = parser.add_argument
    add("--rounds", type=int, default=3, help="sweeps to pool (default 3)")
    add("--requests", type=int, default=4000, help="per round, target, level; c=1: half")
    add("--stream-requests", type=int, default=600, help="same, streaming; c=1: a quarter")
    add("--max-seconds", type=float, default=60.0, help="cut a measurement off after this long")
    add("--quick", action="store_true", help="one round of small counts, for a smoke run")
    add("--json", type=Path, help="write every figure to this file")
    add("--profile", type=Path, help="profile both proxies with py-spy; raw stacks go here")
    add("--profile-seconds", type=float, default=15.0)
    args = parser.parse_args(argv)
    plan = _plan(args)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="di-overhead-") as workdir,
            Children(Path(workdir)) as children,
            asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
        ):
            report = runner.run(run(plan, children, Path(workdir)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted; every process started was stopped", file=sys.stderr)
        return 130
    if args.json:
        options = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
        args.json.write_bytes(orjson.dumps(report, option=options))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
