"""Per-key limits: the buckets, the SDK backing off by itself, and limits shared through Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from redis.asyncio import Redis

from router.keys import LIMITER, STORE
from router.ratelimit import MemoryRateLimiter, RedisRateLimiter, duration

from .conftest import Fake, RedisServer, Stack, free_port, with_replicas
from .test_cli import running
from .test_tenants import client, user, with_server

KEY = "sk-limited-0123456789"


def limited(**limits: Any) -> Any:
    def edit(config: Any) -> Any:
        return with_server(config, api_keys=[{"key": KEY, "name": "team-a", **limits}])

    return edit


async def test_memory_buckets_refill_at_their_rate() -> None:
    now = [0.0]
    limiter = MemoryRateLimiter(clock=lambda: now[0])
    first = await limiter.admit("t", 2, None)
    assert first.admitted and first.headers["x-ratelimit-remaining-requests"] == "1"
    assert (await limiter.admit("t", 2, None)).admitted
    refused = await limiter.admit("t", 2, None)
    assert not refused.admitted and refused.exceeded == "requests"
    assert refused.retry_after == pytest.approx(30.0)
    assert refused.headers["x-ratelimit-reset-requests"] == "1m0s"
    now[0] = 30.0  # half a minute refills one request of two
    assert (await limiter.admit("t", 2, None)).admitted
    assert not (await limiter.admit("other", None, 10)).headers.get("x-ratelimit-limit-requests")


async def test_memory_tokens_go_into_debt() -> None:
    now = [0.0]
    limiter = MemoryRateLimiter(clock=lambda: now[0])
    assert (await limiter.admit("t", None, 60)).admitted
    limiter.charge("t", 60, 90)  # one large answer: 30 tokens of debt
    refused = await limiter.admit("t", None, 60)
    assert not refused.admitted and refused.exceeded == "tokens"
    assert refused.retry_after == pytest.approx(31.0)  # back to one token at one a second
    assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
    now[0] = 31.0
    assert (await limiter.admit("t", None, 60)).admitted


def test_durations_read_like_openais() -> None:
    assert duration(0.12) == "120ms"
    assert duration(1.5) == "1.5s"
    assert duration(360) == "6m0s"
    assert duration(61.25) == "1m1.25s"


async def test_redis_buckets_match_memory_and_fail_open(
    redis_server: RedisServer, refused_port: Callable[[], int]
) -> None:
    redis = Redis.from_url(redis_server.url)
    limiter = RedisRateLimiter(redis, key_prefix="t:", timeout=1.0, retry_after=5.0)
    outcomes = [(await limiter.admit("t", 2, 100)).admitted for _ in range(3)]
    assert outcomes == [True, True, False]
    assert 0 < await redis.pttl("t:rl:t:req") <= 61_000  # the buckets expire once refilled
    limiter.charge("t", 100, 150)
    await limiter.flush()
    level = float(await redis.hget("t:rl:t:tok", "l") or 0)
    assert level < 0  # debt, as in memory
    await redis.aclose()
    dead = Redis.from_url(f"redis://127.0.0.1:{refused_port()}/0", socket_connect_timeout=0.2)
    down = RedisRateLimiter(dead, key_prefix="t:", timeout=0.5, retry_after=5.0)
    verdict = await down.admit("t", 1, None)
    assert verdict.admitted and verdict.bypassed
    assert (await down.admit("t", 1, None)).bypassed  # resting: no second connection attempt
    await dead.aclose()


def test_sdk_raises_rate_limit_error_with_openai_headers(make_stack: Any) -> None:
    live: Stack = make_stack(edit=limited(rpm=2))
    c = client(live, KEY)
    ok = c.chat.completions.with_raw_response.create(model="m", messages=user())
    assert ok.headers["x-ratelimit-limit-requests"] == "2"
    assert ok.headers["x-ratelimit-remaining-requests"] == "1"
    assert ok.headers["x-ratelimit-reset-requests"].endswith("s")
    c.chat.completions.create(model="m", messages=user())
    with pytest.raises(openai.RateLimitError) as caught:
        c.chat.completions.create(model="m", messages=user())
    headers = caught.value.response.headers
    assert caught.value.status_code == 429 and caught.value.code == "rate_limit_exceeded"
    assert 29 <= int(headers["Retry-After"]) <= 30
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert "team-a" in caught.value.message and KEY not in caught.value.message
    # Reading stored objects is not a model request: not limited.
    assert c.chat.completions.list().data == []


def test_the_limit_check_runs_beside_the_prefix_lookup(
    make_stack: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The limit check and the prefix lookup are awaited together: the check here holds until
    the lookup has started, which only happens if the two overlap (else the check times out
    and the request fails)."""
    live: Stack = make_stack(edit=limited(rpm=100))
    limiter, store = live.app[LIMITER], live.app[STORE]
    real_admit, real_lookup = limiter.admit, store.lookup
    state: dict[str, Any] = {}

    def looked_up() -> asyncio.Event:
        event: asyncio.Event = state.setdefault("looked_up", asyncio.Event())
        return event

    async def lookup(*args: Any) -> Any:
        looked_up().set()
        return await real_lookup(*args)

    async def admit(*args: Any) -> Any:
        async with asyncio.timeout(10):  # a guard against a hang, not a measurement
            await looked_up().wait()
        state["overlapped"] = True
        return await real_admit(*args)

    monkeypatch.setattr(store, "lookup", lookup)
    monkeypatch.setattr(limiter, "admit", admit)
    marked: Any = [
        {
            "role": "system",
            "content": [
                {"type": "text", "text": "a stable prompt", "cache_control": {"type": "ephemeral"}}
            ],
        },
        {"role": "user", "content": "hi"},
    ]
    raw = client(live, KEY).chat.completions.with_raw_response.create(model="m", messages=marked)
    assert raw.parse().choices and state.get("overlapped") is True
    assert raw.headers["x-ratelimit-remaining-requests"] == "99"


def test_sdk_waits_and_retries_by_itself(make_stack: Any) -> None:
    """600 tpm (10 a second): one answer of ~610 tokens leaves the key in debt for about a
    second; the SDK's next request is refused, waits ``retry-after-ms`` and gets through."""
    live: Stack = make_stack(edit=limited(tpm=600))
    first = client(live, KEY).chat.completions.create(model="m", messages=user("word " * 600))
    assert first.usage is not None and 600 < first.usage.total_tokens < 700
    patient = client(live, KEY).with_options(max_retries=3)
    raw = patient.chat.completions.with_raw_response.create(model="m", messages=user())
    assert raw.parse().choices
    assert raw.retries_taken >= 1  # refused at first, waited as told, then served


def test_token_limits_count_what_the_backend_reports(make_stack: Any, fake_upstream: Fake) -> None:
    # The fake reports 3 prompt + 1 completion tokens per answer: 8 tpm allow two answers.
    def edit(config: Any) -> Any:
        return limited(tpm=8)(with_replicas(config, "sim-text", [fake_upstream.url]))

    live: Stack = make_stack(edit=edit)
    c = client(live, KEY)
    first = c.chat.completions.with_raw_response.create(model="m", messages=user())
    assert first.headers["x-ratelimit-limit-tokens"] == "8"
    c.chat.completions.create(model="m", messages=user())
    with pytest.raises(openai.RateLimitError) as caught:
        c.chat.completions.create(model="m", messages=user())
    assert "tokens per minute" in caught.value.message
    assert len(fake_upstream.upstream.received) == 2


def _router_config(path: Path, upstream: str, redis_url: str, port: int, **limits: Any) -> Path:
    backend = {"name": "up", "replicas": [{"id": "up-0", "url": upstream}]}
    config = {
        "server": {"port": port, "api_keys": [{"key": KEY, "name": "team-a", **limits}]},
        "backends": [backend],
        "routes": {t: "up" for t in ("text", "code", "json", "vision")},
        "cache": {"redis_url": redis_url},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_two_router_processes_share_limits_through_redis(
    tmp_path: Path, redis_server: RedisServer, fake_upstream: Fake
) -> None:
    ports = [free_port(), free_port()]
    files = [
        _router_config(tmp_path / f"r{i}.yaml", fake_upstream.url, redis_server.url, p, rpm=3)
        for i, p in enumerate(ports)
    ]

    def serve(i: int) -> Any:
        args = ["serve", "--config", str(files[i]), "--log-level", "warning"]
        return running(*args, ready="listening")

    with serve(0), serve(1):
        clients = [
            openai.OpenAI(base_url=f"http://127.0.0.1:{p}/v1", api_key=KEY, max_retries=0)
            for p in ports
        ]
        try:
            remaining = []
            for c in (clients[0], clients[1], clients[0]):
                raw = c.chat.completions.with_raw_response.create(model="m", messages=user())
                remaining.append(raw.headers["x-ratelimit-remaining-requests"])
            assert remaining == ["2", "1", "0"]  # one allowance, counted by both processes
            with pytest.raises(openai.RateLimitError):
                clients[1].chat.completions.create(model="m", messages=user())
        finally:
            for c in clients:
                c.close()
    assert len(fake_upstream.upstream.received) == 3


def test_limits_fail_open_when_redis_is_down(
    tmp_path: Path, fake_upstream: Fake, refused_port: Callable[[], int]
) -> None:
    port = free_port()
    dead = f"redis://127.0.0.1:{refused_port()}/0"
    config = _router_config(tmp_path / "r.yaml", fake_upstream.url, dead, port, rpm=1)
    args = ["serve", "--config", str(config), "--log-level", "error"]
    base_url = f"http://127.0.0.1:{port}/v1"
    with (
        running(*args, ready="listening"),
        openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0) as c,
    ):
        for _ in range(3):  # more than the limit: served, and flagged
            raw = c.chat.completions.with_raw_response.create(model="m", messages=user())
            assert raw.headers["X-DI-RateLimit"] == "bypass"
            assert "x-ratelimit-remaining-requests" not in raw.headers


def test_several_memory_limiters_do_not_share() -> None:
    """Without Redis each router process has its own buckets (the README says so)."""

    async def run() -> list[bool]:
        a, b = MemoryRateLimiter(), MemoryRateLimiter()
        return [(await x.admit("t", 1, None)).admitted for x in (a, b)]

    assert asyncio.run(run()) == [True, True]
