"""The TTFT benchmark: workloads, load, timing at the first content token, summaries, compare."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from router.app import create_app
from router.bench import cli
from router.bench.client import ChatClient, ClientSettings, RequestResult, new_session
from router.bench.compare import SETUPS, check_targets
from router.bench.fleet import router_config, running_fleet
from router.bench.load import TIME_LIMIT_ERROR, LoadPlan, run_load
from router.bench.metrics import OUR_KEYS, PER_REQUEST_KEYS, VLLM_KEYS, percentile
from router.bench.progress import Progress
from router.bench.report import format_comparison, format_summary, write_plot
from router.bench.runner import RunSettings, run_benchmark
from router.bench.workloads import (
    CACHE_CONTROL,
    KINDS,
    BenchRequest,
    WorkloadSpec,
    build,
    oracle_cached_share,
    oracle_hit_rate,
)
from router.config import RouterConfig
from router.sim import SimSettings, start_fleet

ZERO = SimSettings(ttft_ms=0, prefill_ms_per_token=0, itl_ms=0)
SMALL = {
    "shared-prefix": WorkloadSpec(
        num_groups=2, prompts_per_group=3, system_prompt_len=64, question_len=4, output_len=3
    ),
    "multi-turn": WorkloadSpec(
        kind="multi-turn", num_conversations=2, turns=3, system_prompt_len=40, question_len=4,
        output_len=3,
    ),
    "random": WorkloadSpec(kind="random", num_requests=5, input_len=20, output_len=3),
}  # fmt: skip
SEQUENTIAL = LoadPlan(concurrency=1, time_limit_s=30)


@asynccontextmanager
async def routed(
    sim: SimSettings = ZERO, replicas: int = 2, policy: str = "prefix_affinity"
) -> AsyncIterator[str]:
    """Sim replicas and the router on loopback in this test's loop; yields the base URL."""
    async with await start_fleet(sim, replicas=replicas) as fleet:
        pairs = [(r.id, r.url) for r in fleet.replicas]
        config = RouterConfig.model_validate(router_config(pairs, policy))
        runner = web.AppRunner(create_app(config), handler_cancellation=True, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
        finally:
            await runner.cleanup()


def settings(base_url: str, load: LoadPlan = SEQUENTIAL, **client: Any) -> RunSettings:
    return RunSettings(
        client=ClientSettings(base_url=base_url, model="m", **client),
        load=load,
        progress=False,
        replicas=2,
    )


# Workloads


def test_workloads_are_deterministic_and_breakpoints_do_not_change_the_text() -> None:
    for kind in KINDS:
        spec = SMALL[kind]
        assert build(spec, 7) == build(spec, 7)
        assert build(spec, 7) != build(spec, 8)
        plain = build(replace(spec, cache_control=False), 7)
        assert orjson.dumps([r.messages for r in plain]) == orjson.dumps(
            [r.messages for r in build(spec, 7)]
        ).replace(b',"cache_control":' + orjson.dumps(CACHE_CONTROL), b"")


def test_shared_prefix_groups_share_a_marked_system_prompt_of_the_given_length() -> None:
    requests = build(SMALL["shared-prefix"], 0)
    assert len(requests) == 6
    assert oracle_hit_rate(requests) == pytest.approx(4 / 6)
    for request in requests:
        system = request.messages[0]["content"][0]
        assert system["cache_control"] == CACHE_CONTROL
        assert len(system["text"].split()) == 64
    by_group: dict[str | None, set[str]] = {}
    for request in requests:
        by_group.setdefault(request.prefix, set()).add(request.messages[0]["content"][0]["text"])
    assert len(by_group) == 2 and all(len(texts) == 1 for texts in by_group.values())


def test_multi_turn_marks_the_last_two_user_turns_and_sends_turns_in_order() -> None:
    requests = build(SMALL["multi-turn"], 0)
    turns = [int(r.label.rsplit(" ", 1)[1]) for r in requests]
    assert turns == sorted(turns)
    last = requests[-1].messages
    marked = [
        i for i, m in enumerate(last) if m["role"] == "user" and "cache_control" in m["content"][0]
    ]
    users = [i for i, m in enumerate(last) if m["role"] == "user"]
    assert marked == users[-2:]
    assert oracle_hit_rate(requests) == pytest.approx(4 / 6)


@pytest.mark.parametrize("kind", ["shared-prefix", "multi-turn"])
def test_marking_styles(kind: str) -> None:
    def marked_users(request: Any) -> list[int]:
        users = [m for m in request.messages if m["role"] == "user"]
        return [
            i
            for i, m in enumerate(users)
            if isinstance(m["content"], list) and "cache_control" in m["content"][0]
        ]

    top = build(replace(SMALL[kind], marking="top-level"), 0)
    assert all(r.top_level and r.body("m")["cache_control"] == CACHE_CONTROL for r in top)
    assert "cache_control" not in orjson.dumps([r.messages for r in top]).decode()
    for request in build(replace(SMALL[kind], marking="newest"), 0):
        users = [m for m in request.messages if m["role"] == "user"]
        assert marked_users(request) == [len(users) - 1]
    none = build(replace(SMALL[kind], marking="none"), 0)
    assert "cache_control" not in orjson.dumps([r.body("m") for r in none]).decode()
    assert oracle_cached_share(none) > 0


def test_random_prompts_share_nothing() -> None:
    requests = build(SMALL["random"], 0)
    assert len({r.messages[0]["content"] for r in requests}) == 5
    assert oracle_hit_rate(requests) == 0
    assert "cache_control" not in orjson.dumps([r.messages for r in requests]).decode()


# Runs through the router


@pytest.mark.parametrize("kind", KINDS)
async def test_each_workload_reports_every_field_and_counts_add_up(kind: str) -> None:
    spec = SMALL[kind]
    requests = build(spec, 0)
    async with routed() as base_url:
        summary = await run_benchmark(kind, requests, settings(base_url))
    for key in (*VLLM_KEYS, *OUR_KEYS, *PER_REQUEST_KEYS):
        assert key in summary, key
    assert summary["completed"] + summary["errors"] == summary["sent"] == len(requests)
    assert summary["errors"] == 0
    assert summary["total_output_tokens"] == len(requests) * spec.output_len
    assert summary["total_input_tokens"] == sum(summary["input_lens"])
    assert sum(summary["replica_counts"].values()) == len(requests)
    # Sent one at a time, the router hits exactly where a prefix was seen before.
    oracle = oracle_hit_rate(requests)
    assert summary["oracle_hit_rate"] == oracle
    assert summary["usage_hit_rate"] == pytest.approx(oracle)
    assert summary["di_cache_hit_rate"] == pytest.approx(oracle)
    if kind == "random":
        assert summary["di_cache_counts"] == {"none": len(requests)}


async def test_failed_requests_are_counted_not_raised() -> None:
    requests = build(SMALL["shared-prefix"], 0)
    async with routed() as base_url, new_session(4) as session:
        good = ChatClient(ClientSettings(base_url=base_url, model="m"), session)
        faults = [{"status": 500}, {"error_after_chunks": 1}, {"disconnect_after_chunks": 1}]
        bad = [
            ChatClient(
                ClientSettings(base_url=base_url, model="m", extra_body={"sim_fault": fault}),
                session,
            )
            for fault in faults
        ]

        async def send(request: BenchRequest, result: RequestResult) -> None:
            chosen = bad[result.index // 2] if result.index % 2 else good
            await chosen.send(request, result)

        run = await run_load(requests, send, LoadPlan(max_concurrency=2))
    sent = [r for r in run.results if r.sent]
    assert len(sent) == 6
    assert [r.ok for r in run.results] == [True, False] * 3
    assert run.results[1].error.startswith("HTTP 5")
    assert "stream error" in run.results[3].error
    assert run.results[5].error  # the router closes a broken stream with an error event


async def test_ttft_is_taken_at_the_first_content_token_not_at_the_headers(
    aiohttp_server: AiohttpServer,
) -> None:
    """The server holds the first content token until the client has the headers (and the
    role-only chunk); the measured TTFT must end after the token was written."""
    release = asyncio.Event()
    written: list[float] = []

    async def chat(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        role = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
        await response.write(b": keep-alive\n\ndata: " + orjson.dumps(role) + b"\n\n")
        await release.wait()
        for word in ("one", " two", " three"):
            chunk = {"choices": [{"index": 0, "delta": {"content": word}}]}
            written.append(time.perf_counter())
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        usage = {
            "choices": [],
            "usage": {
                "prompt_tokens": 9,
                "completion_tokens": 3,
                "prompt_tokens_details": {"cached_tokens": 4},
            },
        }
        await response.write(b"data: " + orjson.dumps(usage) + b"\n\ndata: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    server = await aiohttp_server(app)

    headers_in = asyncio.Event()

    async def on_request_end(*_: Any) -> None:
        headers_in.set()  # aiohttp signals this once the response headers are parsed

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_request_end)
    request = build(SMALL["random"], 0)[0]
    result = RequestResult(0, request.label)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        client = ChatClient(
            ClientSettings(base_url=str(server.make_url("/v1")), model="m"), session
        )
        sending = asyncio.create_task(client.send(request, result))
        await asyncio.wait_for(headers_in.wait(), 10)
        released = time.perf_counter()
        release.set()
        await asyncio.wait_for(sending, 10)
    assert result.ok, result.error
    assert result.start is not None and result.headers_at is not None
    assert result.headers_at <= released <= written[0] <= result.token_times[0]
    assert result.ttft == result.token_times[0] - result.start
    assert len(result.token_times) == 3  # neither the comment nor the role chunk counts
    assert (result.prompt_tokens, result.completion_tokens, result.cached_tokens) == (9, 3, 4)


async def test_ttft_and_decode_time_follow_the_sims_token_clock() -> None:
    """The sim sends headers at admission and token k at `ttft_ms + k * itl_ms` or later."""
    sim = SimSettings(ttft_ms=40, prefill_ms_per_token=0, itl_ms=20)
    requests = build(replace(SMALL["random"], num_requests=2), 0)
    async with routed(sim) as base_url:
        summary = await run_benchmark("timed", requests, settings(base_url))
    assert summary["completed"] == 2
    for ttft, itls in zip(summary["ttfts"], summary["itls"], strict=True):
        assert ttft >= 0.040
        assert ttft + sum(itls) >= 0.040 + 2 * 0.020  # the last of 3 tokens, from the send
    assert summary["median_ttft_ms"] < summary["median_e2el_ms"]


# Load


async def test_closed_loop_never_exceeds_its_clients() -> None:
    in_flight = peak = 0
    full = asyncio.Event()  # set once three are in flight; a fourth would have started by then

    async def send(request: BenchRequest, result: RequestResult) -> None:
        nonlocal in_flight, peak
        result.start = time.perf_counter()
        in_flight += 1
        peak = max(peak, in_flight)
        if in_flight == 3:
            full.set()
        await full.wait()
        in_flight -= 1
        result.end = time.perf_counter()

    requests = build(SMALL["random"], 0) * 4
    run = await run_load(requests, send, LoadPlan(concurrency=3))
    assert peak == 3
    assert all(r.ok for r in run.results)


async def test_poisson_arrivals_send_every_request_once_in_order() -> None:
    order: list[int] = []

    async def send(request: BenchRequest, result: RequestResult) -> None:
        result.start = result.end = time.perf_counter()
        order.append(result.index)

    requests = build(SMALL["random"], 0)
    run = await run_load(requests, send, LoadPlan(request_rate=1e6, seed=3))
    assert order == list(range(len(requests)))
    assert not run.timed_out


async def test_the_time_limit_cancels_requests_in_flight_and_counts_them() -> None:
    never = asyncio.Event()

    async def send(request: BenchRequest, result: RequestResult) -> None:
        result.start = time.perf_counter()
        await never.wait()

    requests = build(SMALL["random"], 0)
    plan = LoadPlan(max_concurrency=2, time_limit_s=0.05)
    run = await run_load(requests, send, plan)
    assert run.timed_out
    sent = [r for r in run.results if r.sent]
    assert len(sent) == 2
    assert all(r.error == TIME_LIMIT_ERROR for r in sent)


def test_load_plan_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="request_rate"):
        LoadPlan(request_rate=0)
    with pytest.raises(ValueError, match="concurrency"):
        LoadPlan(concurrency=0)
    assert LoadPlan().in_flight_bound(10) == 10
    assert LoadPlan(max_concurrency=3).in_flight_bound(10) == 3


# Metrics and reports


def test_percentiles_interpolate_linearly() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([float(v) for v in range(11)], 90) == 9.0
    assert percentile([5.0], 99) == 5.0


def test_progress_draws_on_its_stream_only_when_enabled() -> None:
    class Stream(SimpleNamespace):
        text = ""

        def write(self, chunk: str) -> None:
            self.text += chunk

        def flush(self) -> None:
            pass

    shown, hidden = Stream(), Stream()
    for stream, enabled in ((shown, True), (hidden, False)):
        bar = Progress("run", 2, enabled=enabled, stream=stream)  # type: ignore[arg-type]
        for index in range(2):
            result = RequestResult(index, "x", start=0.0, end=1.0)
            bar.update(result)
        bar.close()
    assert "2/2" in shown.text and shown.text.endswith("\n")
    assert hidden.text == ""


async def test_reports_render_a_run(tmp_path: Path) -> None:
    requests = build(SMALL["shared-prefix"], 0)
    async with routed() as base_url:
        summary = await run_benchmark("run", requests, settings(base_url))
    slower = {**summary, "median_ttft_ms": summary["median_ttft_ms"] * 6}
    assert "Mean TTFT (ms):" in format_summary(summary)
    table = format_comparison({"affinity": summary, "other": slower}, "affinity")
    assert "(6.00x)" in table
    targets = check_targets({"affinity": summary, "cache-blind": slower, "round-robin": summary})
    assert [t.met for t in targets[:2]] == [True, False]
    write_plot(tmp_path / "ttft.png", {"affinity": summary, "other": slower})
    assert (tmp_path / "ttft.png").read_bytes().startswith(b"\x89PNG")


# Compare mode's processes


async def test_fleet_processes_serve_and_are_stopped(tmp_path: Path) -> None:
    async with running_fleet(ZERO, 2, tmp_path) as fleet:
        base_url = await fleet.start_router("round_robin")
        requests = build(SMALL["shared-prefix"], 0)
        summary = await run_benchmark("fleet", requests, settings(base_url))
        stats = await fleet.sim_stats()
        processes = [fleet.sims.process]
        assert fleet.router is not None
        processes.append(fleet.router.process)
        await fleet.reset_sims()
    assert summary["completed"] == 6
    assert summary["replica_counts"] == {"sim-0": 3, "sim-1": 3}  # round robin
    assert sum(s["requests"] for s in stats.values()) == 6
    assert all(p.returncode is not None for p in processes)


def test_compare_cli_writes_json_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        [
            "--compare", "--replicas", "2", "--num-groups", "2", "--prompts-per-group", "3",
            "--system-prompt-len", "64", "--question-len", "4", "--output-len", "2",
            "--sim-ttft-ms", "0", "--sim-prefill-ms-per-token", "0", "--sim-itl-ms", "0",
            "--warmup", "1", "--no-progress", "--out-dir", str(tmp_path), "--routers", "2",
        ]
    )  # fmt: skip
    assert code == 0
    payload = orjson.loads((tmp_path / "ttft-compare.json").read_bytes())
    assert list(payload["configs"]) == [*(s.name for s in SETUPS), "affinity-x2"]
    assert len(payload["configs"]["affinity-x2"]["base_urls"]) == 2
    # Requests alternate between the two routers and still share one replica per group.
    assert payload["configs"]["affinity-x2"]["replica_spread"] <= 2.0
    for summary in payload["configs"].values():
        assert summary["completed"] + summary["errors"] == summary["sent"] == 6
        assert summary["warmup_sent"] == 1
    # Least loaded: the prefixes are computed but not placed by.
    assert payload["configs"]["cache-blind"]["di_cache_counts"] == {"miss": 6}
    assert payload["configs"]["round-robin"]["replica_spread"] == 1.0
    assert len(payload["targets"]) == 8
    assert (tmp_path / "ttft-compare.png").read_bytes().startswith(b"\x89PNG")
    assert "TTFT p50 (ms)" in capsys.readouterr().out
