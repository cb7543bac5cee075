"""router/retry.py: retries before the first byte, the breaker in the loop, fallback pools.

Scripted replicas (tests/scripted.py) answer with chosen statuses, hang like a stopped process,
or drop the connection; the router runs for real on a loopback port.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import aiohttp
import openai
import pytest

from router.config import RouterConfig
from router.errors import UpstreamError, UpstreamTimeout
from router.health import Failure
from router.keys import BALANCER
from router.retry import judge
from router.upstream import Disconnected, Unreachable

from .conftest import Stack, with_replicas
from .scripted import Replicas


def user(text: str = "hi") -> Any:
    return [{"role": "user", "content": text}]


def tune(config: RouterConfig, **sections: dict[str, Any]) -> RouterConfig:
    """``config`` with some keys of some sections changed."""
    update = {
        name: getattr(config, name).model_copy(update=values) for name, values in sections.items()
    }
    return config.model_copy(update=update)


def text_pool(urls: list[str], **fields: Any) -> Any:
    """An edit pointing the text pool at ``urls``; round robin so both replicas get turns."""

    def edit(config: RouterConfig) -> RouterConfig:
        config = with_replicas(config, "sim-text", urls, **fields)
        return tune(config, routing={"policy": "round_robin"}, health={"probe_interval": 60})

    return edit


def create(live: Stack, text: str = "hi") -> Any:
    return live.client().chat.completions.with_raw_response.create(model="m", messages=user(text))


def replica_state(live: Stack, replica_id: str) -> dict[str, Any]:
    for pool in live.app[BALANCER].pools.values():
        for replica in pool.replicas:
            if replica.id == replica_id:
                return replica.health.snapshot(time.monotonic())
    raise KeyError(replica_id)


def test_every_routed_response_says_how_many_attempts(stack: Stack) -> None:
    raw = create(stack)
    assert raw.headers["X-DI-Attempts"] == "1"
    assert "X-DI-Fallback" not in raw.headers
    with stack.client().chat.completions.with_streaming_response.create(
        model="m", messages=user(), stream=True, extra_headers={"Origin": "https://app.example"}
    ) as streamed:
        assert streamed.headers["X-DI-Attempts"] == "1"
        assert "X-DI-Attempts" in streamed.headers["Access-Control-Expose-Headers"]


def test_a_503_replica_is_retried_around_then_skipped(make_stack: Any, scripted: Replicas) -> None:
    bad, good = scripted.new("bad", mode="status", status=503), scripted.new("good")
    live = make_stack(edit=text_pool([bad.url, good.url]))
    raws = [create(live, str(i)) for i in range(8)]
    assert all(raw.parse().model == "m" for raw in raws)  # every request answered, by good
    assert {raw.headers["X-DI-Replica"] for raw in raws} == {"sim-text-f1"}
    # The breaker opens after failure_threshold (3) consecutive failures: no more tries after.
    assert bad.posts == 3
    assert sum(int(raw.headers["X-DI-Attempts"]) for raw in raws) == 8 + 3
    assert replica_state(live, "sim-text-f0")["state"] == "open"


def test_500_is_not_retried_but_counts_against_the_replica(
    make_stack: Any, scripted: Replicas
) -> None:
    bad = scripted.new("bad", mode="status", status=500)
    live = make_stack(edit=text_pool([bad.url]))
    with pytest.raises(openai.InternalServerError) as caught:
        create(live)
    assert caught.value.status_code == 500
    assert caught.value.response.headers["X-DI-Attempts"] == "1"
    assert bad.posts == 1
    assert replica_state(live, "sim-text-f0")["consecutive_failures"] == 1


def test_a_frozen_replica_is_avoided_after_its_first_timeout(
    make_stack: Any, scripted: Replicas
) -> None:
    frozen, good = scripted.new("frozen", mode="frozen"), scripted.new("good")
    live = make_stack(
        edit=text_pool([frozen.url, good.url], timeout={"connect": 1, "read": 0.3}, metrics="off")
    )
    raws = [create(live, str(i)) for i in range(6)]
    assert {raw.headers["X-DI-Replica"] for raw in raws} == {"sim-text-f1"}
    assert frozen.posts == 1  # one client paid the timeout (and still got its answer)
    assert sorted(raw.headers["X-DI-Attempts"] for raw in raws) == ["1"] * 5 + ["2"]
    state = replica_state(live, "sim-text-f0")
    assert state["state"] == "open" and state["waiting_for_answer"]


def test_429_retry_after_rests_the_replica_that_long(make_stack: Any, scripted: Replicas) -> None:
    throttled = scripted.new(
        "throttled", mode="status", status=429, error_headers={"Retry-After": "30"}
    )
    good = scripted.new("good")
    live = make_stack(edit=text_pool([throttled.url, good.url]))
    raws = [create(live, str(i)) for i in range(4)]
    assert {raw.headers["X-DI-Replica"] for raw in raws} == {"sim-text-f1"}
    assert throttled.posts == 1
    assert replica_state(live, "sim-text-f0")["rest_remaining_s"] > 20


def test_a_connection_dropped_after_sending_is_not_replayed(
    make_stack: Any, scripted: Replicas
) -> None:
    dropping, good = scripted.new("drop", mode="drop"), scripted.new("good")
    live = make_stack(edit=text_pool([dropping.url, good.url]))
    failures: list[openai.APIStatusError] = []
    for i in range(4):
        try:
            create(live, str(i))
        except openai.APIStatusError as caught:
            failures.append(caught)
    # Whoever met the dropping replica got a 502 after one attempt: no second generation.
    assert len(failures) == dropping.posts >= 1
    for failure in failures:
        assert failure.status_code == 502
        assert failure.body["code"] == "upstream_disconnected"  # type: ignore[index]
        assert failure.response.headers["X-DI-Attempts"] == "1"
    assert good.posts == 4 - len(failures)


def test_a_pooled_connection_closed_by_the_replica_is_retried(
    make_stack: Any, scripted: Replicas
) -> None:
    flaky, good = scripted.new("flaky"), scripted.new("good")
    live = make_stack(edit=text_pool([flaky.url, good.url]))
    assert [create(live, str(i)).headers["X-DI-Attempts"] for i in range(2)] == ["1", "1"]
    # flaky now closes connections as requests arrive: the next one to reach it comes on the
    # kept-alive connection of its first answer, which is a stale connection, not a replica
    # that may be generating: it is retried elsewhere, and not held against flaky.
    scripted.set(flaky, mode="drop")
    raws = [create(live, str(i)) for i in range(2, 4)]
    assert sorted(raw.headers["X-DI-Attempts"] for raw in raws) == ["1", "2"]
    assert flaky.posts == 2
    assert replica_state(live, "sim-text-f0")["consecutive_failures"] == 0


def test_fallback_pool_serves_when_the_first_is_dead(
    make_stack: Any, refused_port: Callable[[], int]
) -> None:
    dead = [f"http://127.0.0.1:{refused_port()}/v1" for _ in range(2)]

    def edit(config: RouterConfig) -> RouterConfig:
        config = with_replicas(config, "sim-text", dead)
        routes = config.routes.model_validate(
            {**config.routes.model_dump(), "text": ["sim-text", "sim-json"]}
        )
        return config.model_copy(update={"routes": routes})

    live = make_stack(edit=edit)
    raw = create(live)
    assert raw.headers["X-DI-Request-Type"] == "text"  # the request keeps its type
    assert raw.headers["X-DI-Backend"] == "sim-json"
    assert raw.headers["X-DI-Fallback"] == "sim-json"
    assert raw.headers["X-DI-Attempts"] == "3"  # both dead replicas, then the fallback
    again = create(live, "again")
    # The dead replicas rest: straight to the fallback pool.
    assert again.headers["X-DI-Attempts"] == "1" and again.headers["X-DI-Fallback"] == "sim-json"


def test_nothing_usable_is_503_at_once_with_retry_after(make_stack: Any, dead_url: str) -> None:
    live = make_stack(edit=text_pool([dead_url]))
    with pytest.raises(openai.APIStatusError) as first:
        create(live)
    assert first.value.status_code == 502
    with pytest.raises(openai.APIStatusError) as second:
        create(live)
    assert second.value.status_code == 503
    assert second.value.body["code"] == "no_healthy_replica"  # type: ignore[index]
    assert int(second.value.response.headers["Retry-After"]) >= 1
    assert second.value.response.headers["X-DI-Attempts"] == "0"


async def test_the_deadline_bounds_all_attempts(make_stack: Any, scripted: Replicas) -> None:
    a, b = scripted.new("a", mode="frozen"), scripted.new("b", mode="frozen")

    def edit(config: RouterConfig) -> RouterConfig:
        config = text_pool([a.url, b.url], metrics="off")(config)
        return tune(config, routing={"deadline": 0.3, "policy": "round_robin"})

    live = make_stack(edit=edit)
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            live.base_url + "/chat/completions", json={"model": "m", "messages": user()}
        )
        body = await response.json()
    assert response.status == 504
    assert body["error"]["code"] == "upstream_timeout"
    assert response.headers["X-DI-Attempts"] == "1"  # the deadline left no time for another


def test_judge_classifies_failures() -> None:
    assert judge(Unreachable("x")).failure is Failure.CONNECT and judge(Unreachable("x")).retry
    stale = judge(Unreachable("x", stale=True))
    assert stale.failure is None and stale.retry
    assert not judge(Disconnected("x")).retry
    assert judge(UpstreamTimeout("x")).failure is Failure.TIMEOUT
    for status in (502, 503, 504, 429):
        assert judge(UpstreamError("x", upstream_status=status)).retry
    assert not judge(UpstreamError("x", upstream_status=500)).retry
    client_error = judge(UpstreamError("x", upstream_status=400))
    assert client_error.answered and client_error.failure is None
    throttled = UpstreamError("x", upstream_status=429)
    throttled.headers = {"retry-after-ms": "1500"}
    assert judge(throttled).retry_after == 1.5
    assert judge(UpstreamError("x", code="upstream_auth_failed")).failure is None


def test_a_timed_out_replica_comes_back_once_it_answers_a_probe(
    make_stack: Any, scripted: Replicas
) -> None:
    from router.keys import WATCHER

    frozen, good = scripted.new("frozen", mode="frozen"), scripted.new("good")

    def edit(config: RouterConfig) -> RouterConfig:
        config = text_pool([frozen.url, good.url], timeout={"connect": 1, "read": 0.3})(config)
        return tune(config, routing={"policy": "round_robin", "replica_cooldown": 0})

    live = make_stack(edit=edit)
    for i in range(3):
        create(live, str(i))
    assert frozen.posts == 1
    assert replica_state(live, "sim-text-f0")["waiting_for_answer"]
    live.run(live.app[WATCHER].probe_due())  # a probe while it is still frozen: no answer
    assert replica_state(live, "sim-text-f0")["state"] == "open"
    scripted.set(frozen, mode="ok")
    scripted.release(frozen)
    live.run(live.app[WATCHER].probe_due())  # it answers now
    raws = [create(live, f"after {i}") for i in range(4)]
    assert "sim-text-f0" in {raw.headers["X-DI-Replica"] for raw in raws}
    assert replica_state(live, "sim-text-f0")["state"] == "closed"
