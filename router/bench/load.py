"""When requests are sent: an open loop of Poisson arrivals, or a closed loop of clients.

Open loop, as `vllm bench serve` runs it: the first request goes at once and each next one
after an exponential gap of mean `1 / request_rate` (all at once when the rate is infinite);
`max_concurrency` holds a due request back until one in flight ends. A request's clock starts
when it is actually sent, so time held back is the client's queue, not the server's latency.
Closed loop: `concurrency` clients each send their next request when their last one ends.

Every run is bounded twice: it sends each request of the workload at most once, and it stops
at `time_limit_s`; requests then in flight are cancelled and counted as errors, requests not
yet sent stay unsent.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from router.bench.client import RequestResult
from router.bench.workloads import BenchRequest

Send = Callable[[BenchRequest, RequestResult], Awaitable[None]]
OnDone = Callable[[RequestResult], None]

TIME_LIMIT_ERROR = "cancelled: the run reached its time limit"


@dataclass(frozen=True, kw_only=True)
class LoadPlan:
    request_rate: float = math.inf  # requests per second (open loop)
    max_concurrency: int | None = None  # open loop: most requests in flight
    concurrency: int | None = None  # closed loop with this many clients, when set
    seed: int = 0  # of the arrival times
    time_limit_s: float = 600.0

    def __post_init__(self) -> None:
        if not self.request_rate > 0:
            raise ValueError("request_rate must be > 0 (inf: all at once)")
        for name in ("max_concurrency", "concurrency"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1")
        if not self.time_limit_s > 0:
            raise ValueError("time_limit_s must be > 0")

    def in_flight_bound(self, requests: int) -> int:
        """The most requests this plan can have in flight at once."""
        bound = self.concurrency or self.max_concurrency or requests
        return max(1, min(bound, requests))

    def describe(self) -> str:
        if self.concurrency is not None:
            return f"closed loop, {self.concurrency} clients"
        rate = "inf" if math.isinf(self.request_rate) else f"{self.request_rate:g}/s"
        bound = f", max concurrency {self.max_concurrency}" if self.max_concurrency else ""
        return f"Poisson, rate {rate}{bound}"


@dataclass(frozen=True, slots=True)
class LoadRun:
    """Every request of the workload, in send order; `start` is None for those never sent."""

    results: list[RequestResult]
    started: float  # perf_counter
    finished: float
    timed_out: bool

    @property
    def duration(self) -> float:
        return self.finished - self.started


async def run_load(
    requests: Sequence[BenchRequest], send: Send, plan: LoadPlan, on_done: OnDone | None = None
) -> LoadRun:
    """Send `requests` as `plan` says; returns once all have ended or the time limit passed."""
    results = [RequestResult(index, request.label) for index, request in enumerate(requests)]
    pairs = list(zip(requests, results, strict=True))
    tasks: list[asyncio.Task[None]] = []
    started = time.perf_counter()
    deadline = asyncio.get_running_loop().time() + plan.time_limit_s
    try:
        async with asyncio.timeout_at(deadline) as limit:
            if plan.concurrency is not None:
                await _closed_loop(pairs, send, plan.concurrency, on_done)
            else:
                await _open_loop(pairs, send, plan, on_done, tasks)
                await asyncio.gather(*tasks)
    except TimeoutError:
        if not limit.expired():
            raise
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return LoadRun(results, started, time.perf_counter(), limit.expired())


async def _open_loop(
    pairs: list[tuple[BenchRequest, RequestResult]],
    send: Send,
    plan: LoadPlan,
    on_done: OnDone | None,
    tasks: list[asyncio.Task[None]],
) -> None:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(plan.max_concurrency) if plan.max_concurrency else None
    arrivals = random.Random(plan.seed)
    due = loop.time()
    for number, (request, result) in enumerate(pairs):
        if number and math.isfinite(plan.request_rate):
            # Due times are absolute, so the time spent starting requests does not drift them.
            due += arrivals.expovariate(plan.request_rate)
            await asyncio.sleep(max(0.0, due - loop.time()))
        tasks.append(asyncio.create_task(_gated(gate, send, request, result, on_done)))


async def _closed_loop(
    pairs: list[tuple[BenchRequest, RequestResult]],
    send: Send,
    concurrency: int,
    on_done: OnDone | None,
) -> None:
    queue = iter(pairs)  # shared: each client takes the next request not yet taken

    async def client() -> None:
        for request, result in queue:
            await _send(send, request, result, on_done)

    await asyncio.gather(*(client() for _ in range(min(concurrency, len(pairs)))))


async def _gated(
    gate: asyncio.Semaphore | None,
    send: Send,
    request: BenchRequest,
    result: RequestResult,
    on_done: OnDone | None,
) -> None:
    if gate is None:
        await _send(send, request, result, on_done)
        return
    async with gate:
        await _send(send, request, result, on_done)


async def _send(
    send: Send, request: BenchRequest, result: RequestResult, on_done: OnDone | None
) -> None:
    try:
        await send(request, result)
    except asyncio.CancelledError:
        if result.sent and result.end is None:
            result.fail(TIME_LIMIT_ERROR)
            result.end = time.perf_counter()
        raise
    if on_done is not None:
        on_done(result)
