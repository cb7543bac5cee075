"""Prometheus metrics: histograms, token counters and hooks, scraped from a live router."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from router import app as app_module
from router.balancer import Balancer
from router.config import RouterConfig
from router.context import RequestContext
from router.dashboard import refresh_gauges
from router.keys import BALANCER, METRICS
from router.metrics import Children, Metrics
from router.redis_store import RedisPrefixStore
from router.sim import SimSettings
from router.usage import Usage

from .conftest import Stack, free_port, with_replicas


def scrape(stack: Stack) -> dict[str, list[tuple[dict[str, str], float]]]:
    async def fetch() -> str:
        async with (
            aiohttp.ClientSession() as session,
            session.get(stack.base_url.removesuffix("/v1") + "/metrics") as response,
        ):
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            return await response.text()

    return parse(stack.run(fetch()))


def parse(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    return sum(
        value
        for have, value in samples.get(name, [])
        if all(have.get(k) == v for k, v in labels.items())
    )


def test_requests_feed_histograms_and_token_counters(make_stack: Any) -> None:
    stack = make_stack()
    client = stack.client()
    before = scrape(stack)
    assert total(before, "gen_ai_server_request_duration_seconds_count") == 0
    answer = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "count my tokens"}]
    )
    assert answer.usage is not None
    chunks = list(
        client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "and these, streamed"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = chunks[-1].usage
    assert streamed is not None
    after = scrape(stack)
    labels = {"type": "text", "backend": "sim-text"}
    assert total(after, "di_requests_total", status="200", **labels) == 2
    assert total(after, "gen_ai_server_request_duration_seconds_count", **labels) == 2
    assert total(after, "gen_ai_server_time_to_first_token_seconds_count", stream="true") == 1
    assert total(after, "gen_ai_server_time_to_first_token_seconds_count", stream="false") == 1
    assert total(after, "di_upstream_time_to_headers_seconds_count", **labels) == 2
    assert total(after, "di_router_overhead_seconds_count", cache="none") == 2
    prompt = answer.usage.prompt_tokens + streamed.prompt_tokens
    completion = answer.usage.completion_tokens + streamed.completion_tokens
    assert total(after, "di_tokens_total", token_type="input", **labels) == prompt
    assert total(after, "di_tokens_total", token_type="output", **labels) == completion
    assert total(after, "gen_ai_client_token_usage_sum", gen_ai_token_type="input") == prompt
    assert total(after, "gen_ai_client_token_usage_count", gen_ai_token_type="output") == 2
    replicas = {labels["replica"] for labels, _ in after["di_replica_in_flight"]}
    assert replicas == {
        "sim-text-0",
        "sim-text-1",
        "sim-code-0",
        "sim-code-1",
        "sim-json-0",
        "sim-json-1",
        "sim-vision-0",
        "sim-vision-1",
    }
    assert total(after, "di_replica_in_flight") == 0
    assert "process_cpu_seconds_total" in after


def test_cached_tokens_are_counted_from_the_backend(make_stack: Any) -> None:
    stack = make_stack()
    client = stack.client()
    system = "You are a careful assistant. " * 60
    messages: Any = [
        {
            "role": "system",
            "content": [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}],
        },
        {"role": "user", "content": "hello"},
    ]
    cached = 0
    for _ in range(3):
        usage = client.chat.completions.create(model="m", messages=messages).usage
        assert usage is not None and usage.prompt_tokens_details is not None
        cached += usage.prompt_tokens_details.cached_tokens or 0
    assert cached > 0
    after = scrape(stack)
    assert total(after, "di_tokens_total", token_type="cached_input") == cached
    assert total(after, "di_requests_total", cache="hit") == 2
    assert total(after, "gen_ai_server_request_duration_seconds_count", cache="miss") == 1


def test_errors_are_counted_by_status(make_stack: Any) -> None:
    stack = make_stack()

    async def bad() -> int:
        async with (
            aiohttp.ClientSession() as session,
            session.post(stack.base_url + "/chat/completions", json={"model": "m"}) as response,
        ):
            return response.status

    assert stack.run(bad()) == 400
    assert total(scrape(stack), "di_requests_total", status="400") == 1


def test_each_app_has_its_own_registry() -> None:
    one, two = Metrics(), Metrics()
    ctx = RequestContext.start("r", {})
    ctx.request_type, ctx.backend, ctx.replica, ctx.cache = "text", "b", "r1", "none"
    ctx.usage = Usage(10, 5, 4)
    one.observe(ctx, "/v1/chat/completions", 200, 0.5)
    assert total(parse(one.render().decode()), "di_tokens_total", token_type="cached_input") == 4
    assert total(parse(two.render().decode()), "di_requests_total") == 0


async def test_redis_up_is_0_from_the_first_fault_before_redis_counts_as_down() -> None:
    """``di_redis_up`` says whether Redis answered last, not whether it rests after
    ``failure_threshold`` faults (an operator would see 1 through most of an outage)."""
    config = RouterConfig.model_validate(
        {
            "backends": [
                {"name": "pool", "replicas": [{"id": "r", "url": "http://127.0.0.1:9/v1"}]}
            ],
            "routes": dict.fromkeys(("text", "code", "json", "vision"), "pool"),
        }
    )
    store = RedisPrefixStore.from_url(f"redis://127.0.0.1:{free_port()}/0", failure_threshold=3)
    metrics = Metrics()
    try:
        assert not await store.check()  # nothing listens there
        assert not store.down
        refresh_gauges(metrics, Balancer(config), store, 0.0)
        assert total(parse(metrics.render([]).decode()), "di_redis_up") == 0
    finally:
        await store.aclose()


def test_hooks_for_placement_and_health() -> None:
    metrics = Metrics()
    metrics.retry("pool", "connect")
    metrics.retry("pool", "connect")
    metrics.fallback("text", "pool", "spare")
    metrics.breaker_state("pool", "r1", "open")
    metrics.redis_state(False)
    metrics.prefix_lookup("redis", "hit", 0.002)
    metrics.replica_load("pool", "r1", 7.5)
    samples = parse(metrics.render([("pool", "r1", 3)]).decode())
    assert total(samples, "di_retries_total", backend="pool", reason="connect") == 2
    assert total(samples, "di_fallbacks_total", from_backend="pool", to_backend="spare") == 1
    assert total(samples, "di_replica_breaker_state", replica="r1") == 2
    assert total(samples, "di_redis_up") == 0
    assert total(samples, "di_prefix_lookup_seconds_count", store="redis", outcome="hit") == 1
    assert total(samples, "di_replica_load", replica="r1") == 7.5
    assert total(samples, "di_replica_in_flight", replica="r1") == 3


def test_counts_kept_by_components_reach_the_counters_once() -> None:
    metrics = Metrics()
    for _ in range(2):  # two scrapes of /metrics seeing the same counts add nothing twice
        metrics.replica_scrapes("pool", "r1", ok=5, failed=2)
        metrics.breaker_openings("pool", "r1", {"connect": 1})
    metrics.replica_scrapes("pool", "r1", ok=7, failed=2)
    metrics.breaker_openings("pool", "r1", {"connect": 1, "status": 3})
    metrics.replica_metrics_age("pool", "r1", 0.5)
    samples = parse(metrics.render().decode())
    assert total(samples, "di_replica_scrapes_total", replica="r1", outcome="ok") == 7
    assert total(samples, "di_replica_scrapes_total", replica="r1", outcome="failed") == 2
    assert total(samples, "di_replica_breaker_openings_total", kind="connect") == 1
    assert total(samples, "di_replica_breaker_openings_total", kind="status") == 3
    assert total(samples, "di_replica_metrics_age_seconds", replica="r1") == 0.5


def test_label_children_are_memoised_within_a_bound() -> None:
    registry = CollectorRegistry()
    counter = Counter("c", "A counter.", ("x",), registry=registry)
    children = Children(limit=2)
    first = children(counter, ("a",))
    assert children(counter, ("a",)) is first
    children(counter, ("b",))
    children(counter, ("c",))  # past the bound: the memo starts over
    assert len(children) == 1
    children(counter, ("a",)).inc()  # looked up afresh, it is still the same series
    first.inc()
    assert registry.get_sample_value("c_total", {"x": "a"}) == 2


def test_tenant_counters_count_every_request() -> None:
    metrics = Metrics()
    ctx = RequestContext.start("r", {})
    ctx.tenant, ctx.usage = "team-a", Usage(10, 5, None)
    for status in (200, 200, 429):
        metrics.tenants.observe(ctx, "Docs bot", status)
    samples = parse(metrics.render().decode())
    bot = {"tenant": "team-a", "app": "Docs bot"}
    assert total(samples, "di_tenant_requests_total", **bot, status="200") == 2
    assert total(samples, "di_tenant_requests_total", **bot, status="429") == 1
    assert total(samples, "di_tenant_tokens_total", **bot, kind="prompt") == 30
    assert total(samples, "di_tenant_tokens_total", **bot, kind="cached") == 0


def test_ttft_is_taken_at_the_first_byte_not_the_last(make_stack: Any) -> None:
    # 20 tokens 15 ms apart: the last byte comes >= 285 ms after the first, which comes after
    # a 10 ms first token; the modelled gap between the two figures is well over 5x.
    stack = make_stack(
        sim=SimSettings(ttft_ms=10, prefill_ms_per_token=0, itl_ms=15, output_tokens=20)
    )
    list(
        stack.client().chat.completions.create(
            model="m", messages=[{"role": "user", "content": "stream"}], stream=True
        )
    )
    samples = scrape(stack)
    ttft = total(samples, "gen_ai_server_time_to_first_token_seconds_sum", stream="true")
    duration = total(samples, "gen_ai_server_request_duration_seconds_sum", type="text")
    assert ttft > 0 and duration > 5 * ttft


def test_prefix_lookups_are_timed_by_outcome(make_stack: Any) -> None:
    stack = make_stack()
    client = stack.client()
    system = "A long and stable system prompt. " * 80
    messages: Any = [
        {
            "role": "system",
            "content": [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}],
        },
        {"role": "user", "content": "hello"},
    ]
    for _ in range(2):
        client.chat.completions.create(model="m", messages=messages)
    samples = scrape(stack)
    assert total(samples, "di_prefix_lookup_seconds_count", store="memory", outcome="miss") == 1
    assert total(samples, "di_prefix_lookup_seconds_count", store="memory", outcome="hit") == 1
    breaker = {labels["replica"]: value for labels, value in samples["di_replica_breaker_state"]}
    assert breaker["sim-text-0"] == 0 and len(breaker) == 8


def test_retries_and_fallbacks_are_counted(
    make_stack: Any, refused_port: Callable[[], int]
) -> None:
    dead = [f"http://127.0.0.1:{refused_port()}/v1", f"http://127.0.0.1:{refused_port()}/v1"]

    def edit(config: RouterConfig) -> RouterConfig:
        config = with_replicas(config, "sim-text", dead)
        routes = config.routes.model_copy(update={"text": ["sim-text", "sim-json"]})
        return config.model_copy(update={"routes": routes})

    stack = make_stack(edit=edit)
    raw = stack.client().chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["X-DI-Fallback"] == "sim-json"
    samples = scrape(stack)
    assert total(samples, "di_retries_total", backend="sim-text", reason="connect") >= 1
    # A refused connection opens the replica's breaker at once.
    assert total(samples, "di_replica_breaker_openings_total", kind="connect") >= 1
    assert (
        total(
            samples,
            "di_fallbacks_total",
            type="text",
            from_backend="sim-text",
            to_backend="sim-json",
        )
        == 1
    )
    assert total(samples, "di_requests_total", backend="sim-json", type="text") == 1


@pytest.mark.parametrize("worker", [True, False])
async def test_a_worker_keeps_its_figures_current_between_scrapes(
    worker: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``serve --workers N`` a scrape reaches one worker and sums every worker's figures:
    each worker refreshes its own meanwhile. A router of one process refreshes at its scrape."""
    refreshed = asyncio.Event()

    def counted(*args: Any) -> None:
        refresh_gauges(*args)
        refreshed.set()

    monkeypatch.setattr("router.app.refresh_gauges", counted)
    monkeypatch.setattr(app_module, "WORKER_REFRESH", 0.01)
    config = RouterConfig.model_validate(
        {
            "backends": [
                {"name": "pool", "replicas": [{"id": "r0", "url": "http://127.0.0.1:9/v1"}]}
            ],
            "routes": {t: "pool" for t in ("text", "code", "json", "vision")},
        }
    )
    app = app_module.create_app(config, worker=worker)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        app[BALANCER].pools["pool"].replicas[0].in_flight = 3
        if worker:
            await asyncio.wait_for(refreshed.wait(), 10)
            assert total(parse(app[METRICS].render().decode()), "di_replica_in_flight") == 3
        else:
            assert not refreshed.is_set()  # nothing in the background
    finally:
        await server.close()
