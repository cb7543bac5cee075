"""Prompt caching end to end: breakpoints sent through the openai SDK, affinity, cached usage."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import openai
import pytest
from redis.asyncio import Redis

from router.config import RouterConfig
from router.keys import STORE
from router.redis_store import RedisPrefixStore
from router.sim import SimSettings

from .conftest import Fake, RedisServer, Stack, with_replicas

# Prefill dominates: a 2,000-token miss costs ~200 ms, a hit a few ms (a modelled gap of ~40x).
TIMED = SimSettings(ttft_ms=2, prefill_ms_per_token=0.1, itl_ms=0, output_tokens=4)
# For the one timed comparison: a 2,000-token miss is modelled at ~2 s, a hit at a few ms, so the
# modelled gap (several hundred x) dwarfs what a loaded CI box adds to each request.
SLOW_PREFILL = SimSettings(ttft_ms=2, prefill_ms_per_token=1.0, itl_ms=0, output_tokens=4)
HELD = SimSettings(ttft_ms=0, prefill_ms_per_token=0, itl_ms=100, output_tokens=50)
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
]


def system_prompt(tokens: int = 2000, salt: str = "") -> str:
    return salt + " " + " ".join(WORDS[i % len(WORDS)] for i in range(tokens))


def cached_messages(question: str, salt: str = "", ttl: str | None = None) -> Any:
    marker: dict[str, str] = {"type": "ephemeral"}
    if ttl:
        marker["ttl"] = ttl
    return [
        {
            "role": "system",
            "content": [
                {"type": "text", "text": system_prompt(salt=salt), "cache_control": marker}
            ],
        },
        {"role": "user", "content": question},
    ]


def ttft(client: openai.OpenAI, messages: list[Any]) -> tuple[float, dict[str, str], Any]:
    """Time to the first content token of a streamed request, its headers, its usage."""
    started = time.perf_counter()
    first = None
    usage = None
    with client.chat.completions.with_streaming_response.create(
        model="m", messages=messages, stream=True, stream_options={"include_usage": True}
    ) as raw:
        for chunk in raw.parse():
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - started
            if chunk.usage is not None:
                usage = chunk.usage
        headers = dict(raw.headers)
    assert first is not None
    return first, {k.lower(): v for k, v in headers.items()}, usage


def test_repeat_hits_the_warm_replica_faster_with_cached_tokens(make_stack: Any) -> None:
    live = make_stack(sim=SLOW_PREFILL)
    client = live.client()
    miss_time, miss, miss_usage = ttft(client, cached_messages("first question"))
    hit_time, hit, hit_usage = ttft(client, cached_messages("second question"))
    assert miss["x-di-cache"] == "miss"
    assert hit["x-di-cache"] == "hit"
    assert hit["x-di-replica"] == miss["x-di-replica"]
    assert miss_usage.prompt_tokens_details.cached_tokens == 0
    assert hit_usage.prompt_tokens_details.cached_tokens >= 1900
    assert hit_time * 5 < miss_time  # modelled: ~2 s against a few ms
    # Non-streaming bodies carry the cached tokens too.
    completion = client.chat.completions.create(model="m", messages=cached_messages("third"))
    assert completion.usage is not None and completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens >= 1900


def test_no_breakpoint_is_none_and_bad_breakpoints_are_400(stack: Stack) -> None:
    client = stack.client()
    raw = client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["X-DI-Cache"] == "none"
    bad = cached_messages("q")
    bad[0]["content"][0]["cache_control"] = {"type": "ephemeral", "ttl": "10m"}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="m", messages=bad)
    assert caught.value.body["param"] == "messages[0].content[0].cache_control.ttl"  # type: ignore[index]


def test_a_marker_where_none_is_read_is_400_not_forwarded(stack: Stack) -> None:
    """A ``cache_control`` the router does not read would reach the backend unread, and the
    client would believe its prompt cached: it is a 400 naming the place."""
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    tool["function"]["cache_control"] = {"type": "ephemeral"}  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:
        stack.client().chat.completions.create(
            model="m",
            messages=cached_messages("q"),
            tools=[tool],  # type: ignore[list-item]
        )
    assert caught.value.body["param"] == "tools[0].function.cache_control"  # type: ignore[index]
    assert "not read here" in caught.value.message


async def test_concurrent_first_requests_converge_on_one_replica(make_stack: Any) -> None:
    live = make_stack(sim=TIMED, replicas=4)
    async with live.aclient() as client:

        async def one(i: int) -> str:
            raw = await client.chat.completions.with_raw_response.create(
                model="m", messages=cached_messages(f"question {i}", salt="burst")
            )
            return str(raw.headers["X-DI-Replica"])

        replicas = await asyncio.gather(*(one(i) for i in range(20)))
        assert len(set(replicas)) == 1


def test_distinct_prefixes_spread_over_an_idle_pool(make_stack: Any) -> None:
    live = make_stack(replicas=2)
    client = live.client()
    replicas = [
        client.chat.completions.with_raw_response.create(
            model="m", messages=cached_messages("q", salt=f"tenant-{i}")
        ).headers["X-DI-Replica"]
        for i in range(12)
    ]
    assert set(replicas) == {"sim-text-0", "sim-text-1"}


async def test_overloaded_warm_replica_is_bypassed(make_stack: Any) -> None:
    def tight(config: RouterConfig) -> RouterConfig:
        routing = config.routing.model_copy(
            update={"balance_abs_threshold": 1, "balance_rel_threshold": 1.0}
        )
        return config.model_copy(update={"routing": routing})

    live = make_stack(sim=HELD, edit=tight)
    async with live.aclient() as client:
        first = await client.chat.completions.with_raw_response.create(
            model="m", messages=cached_messages("warm up", salt="busy"), max_tokens=1
        )
        warm = first.headers["X-DI-Replica"]
        held = []
        seen = []
        try:
            for i in range(3):
                stream = client.chat.completions.with_streaming_response.create(
                    model="m", messages=cached_messages(f"q{i}", salt="busy"), stream=True
                )
                response = await stream.__aenter__()
                held.append(stream)
                seen.append((response.headers["X-DI-Replica"], response.headers["X-DI-Cache"]))
        finally:
            for stream in held:
                await stream.__aexit__(None, None, None)
        assert seen[0] == (warm, "hit")
        assert seen[1] == (warm, "hit")
        assert seen[2][0] != warm and seen[2][1] == "miss"


def test_cache_control_is_stripped_unless_forwarded(make_stack: Any, fake_upstream: Fake) -> None:
    live = make_stack(edit=lambda c: with_replicas(c, "sim-text", [fake_upstream.url]))
    live.client().chat.completions.create(model="m", messages=cached_messages("q"))
    assert "cache_control" not in str(fake_upstream.upstream.received[-1].body)

    forwarding = make_stack(
        edit=lambda c: with_replicas(
            c,
            "sim-text",
            [fake_upstream.url],
            forward_cache_control=True,
            prompt_cache_key=True,
        )
    )
    forwarding.client().chat.completions.create(model="m", messages=cached_messages("q"))
    sent = fake_upstream.upstream.received[-1].body
    assert sent["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert len(sent["prompt_cache_key"]) == 32


def test_prefixes_below_min_tokens_are_not_cached(make_stack: Any) -> None:
    live = make_stack(
        edit=lambda c: with_replicas(
            c,
            "sim-text",
            [r.url for r in c.backend("sim-text").replicas],
            cache={"min_tokens": 50_000},
        )
    )
    client = live.client()
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(
            model="m", messages=cached_messages("q")
        )
        assert raw.headers["X-DI-Cache"] == "none"


async def flush(live: Stack) -> None:
    await live.app[STORE].flush()


def redis_stack(
    make_stack: Any, server: RedisServer, *, timeout: float = 10.0, **kwargs: Any
) -> Stack:
    # A generous lookup deadline: these tests are about what Redis holds, and a round trip that
    # outlasts a short deadline on a loaded box is (rightly) a bypass. A stopped redis-server
    # refuses connections at once, so the outage test needs no short deadline either.
    store = RedisPrefixStore(
        Redis.from_url(server.url, socket_timeout=max(0.5, timeout), socket_connect_timeout=0.5),
        timeout=timeout,
        retry_after=0.05,
    )
    stack: Stack = make_stack(store=store, **kwargs)
    return stack


async def _reset(admin: Redis) -> None:
    await admin.config_resetstat()


async def command_calls(url: str) -> dict[str, int]:
    admin = Redis.from_url(url)
    try:
        stats = await admin.info("commandstats")
    finally:
        await admin.aclose()
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def test_one_redis_round_trip_per_request(make_stack: Any, redis_server: RedisServer) -> None:
    live = redis_stack(make_stack, redis_server)
    client = live.client()
    client.chat.completions.create(model="m", messages=cached_messages("warm"))
    live.run(flush(live))
    admin = Redis.from_url(redis_server.url)
    live.run(_reset(admin))
    live.run(admin.aclose())
    for i in range(5):
        client.chat.completions.create(model="m", messages=cached_messages(f"q{i}"))
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    live.run(flush(live))
    calls = live.run(command_calls(redis_server.url))
    assert calls.pop("evalsha") == 5  # one script call per request with breakpoints
    # What remains ran inside the script (SMEMBERS, EXPIRE; TIME, ZSCORE, ZADD, TTL renew
    # the count of the prefix's placement) or is the admin's own connection; hits refresh
    # TTLs in the script, so no record writes either.
    assert set(calls) <= {
        "smembers",
        "expire",
        "time",
        "zscore",
        "zadd",
        "ttl",
        "hello",
        "info",
        "config|resetstat",
        "client|setinfo",
    }


def test_redis_outage_keeps_affinity_then_recovers(
    make_stack: Any, redis_server: RedisServer
) -> None:
    live = redis_stack(make_stack, redis_server)
    client = live.client()

    def cache_header(question: str, salt: str = "outage") -> str:
        raw = client.chat.completions.with_raw_response.create(
            model="m", messages=cached_messages(question, salt=salt)
        )
        assert raw.parse().choices[0].message.content
        return str(raw.headers["X-DI-Cache"])

    assert cache_header("a") == "miss"
    assert cache_header("b") == "hit"
    redis_server.stop()
    # The process's own index keeps what it placed; nothing fails.
    assert [cache_header(f"down {i}") for i in range(5)] == ["hit"] * 5
    # A new prefix is placed without the shared index (bypass), then known locally.
    assert cache_header("new", salt="during") == "bypass"
    assert cache_header("again", salt="during") == "hit"
    redis_server.start()
    outcomes = []
    for i in range(100):  # bounded: the store retries Redis after its short rest
        outcomes.append(cache_header(f"back {i}", salt="after"))
        if outcomes[-1] == "hit":
            break
    assert outcomes[-1] == "hit"
    assert set(outcomes) <= {"bypass", "miss", "hit"}


async def test_concurrent_first_requests_converge_with_redis(
    make_stack: Any, redis_server: RedisServer
) -> None:
    live = redis_stack(make_stack, redis_server, sim=TIMED, replicas=4)
    async with live.aclient() as client:
        raws = await asyncio.gather(
            *(
                client.chat.completions.with_raw_response.create(
                    model="m", messages=cached_messages(f"question {i}", salt="redis-burst")
                )
                for i in range(20)
            )
        )
        assert len({raw.headers["X-DI-Replica"] for raw in raws}) == 1
        assert sorted(raw.headers["X-DI-Cache"] for raw in raws).count("hit") == 19


def test_prefix_known_locally_is_written_back_after_redis_loses_it(
    make_stack: Any, redis_server: RedisServer
) -> None:
    live = redis_stack(make_stack, redis_server)
    client = live.client()
    client.chat.completions.create(model="m", messages=cached_messages("a", salt="lost"))
    live.run(flush(live))

    async def keys() -> list[Any]:
        admin = Redis.from_url(redis_server.url)
        try:
            found: list[Any] = await admin.keys("di:px:*")
            if not found:
                return found
            await admin.flushall()
            return found
        finally:
            await admin.aclose()

    assert live.run(keys())  # recorded, then wiped (as a Redis restart would)
    raw = client.chat.completions.with_raw_response.create(
        model="m", messages=cached_messages("b", salt="lost")
    )
    assert raw.headers["X-DI-Cache"] == "hit"  # this process still knows
    live.run(flush(live))
    assert live.run(keys())  # and put it back for the other routers
