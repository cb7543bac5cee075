"""Placement end to end through the openai SDK: conversations in every marking style, holders
that fail or evict, and a hot prefix spreading under load."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import openai
import pytest

from router.config import RouterConfig
from router.keys import BALANCER
from router.sim import SimSettings

from .conftest import Stack
from .test_prompt_cache import system_prompt

HELD = SimSettings(ttft_ms=0, prefill_ms_per_token=0, itl_ms=50, output_tokens=40)
EPHEMERAL = {"type": "ephemeral"}


def turn_messages(turns: int, style: str, salt: str) -> tuple[list[Any], dict[str, Any]]:
    """A conversation at its ``turns``-th user turn, marked in ``style``; extra body fields."""
    messages: list[Any] = [{"role": "system", "content": system_prompt(salt=salt)}]
    for turn in range(turns):
        question: dict[str, Any] = {"type": "text", "text": f"question {turn} of {salt}"}
        if style == "newest" and turn == turns - 1:
            question["cache_control"] = EPHEMERAL
        messages.append({"role": "user", "content": [question]})
        if turn < turns - 1:
            messages.append({"role": "assistant", "content": f"answer {turn} " * 30})
    extra = {"cache_control": EPHEMERAL} if style == "top-level" else {}
    return messages, extra


@pytest.mark.parametrize("style", ["top-level", "newest", "none"])
def test_a_conversation_stays_on_its_replica_in_every_marking_style(
    make_stack: Any, style: str
) -> None:
    live = make_stack(replicas=4)
    client = live.client()
    seen = []
    for turns in range(1, 5):
        messages, extra = turn_messages(turns, style, salt=f"conv-{style}")
        raw = client.chat.completions.with_raw_response.create(
            model="m", messages=messages, extra_body=extra
        )
        usage = raw.parse().usage
        assert usage is not None and usage.prompt_tokens_details is not None
        seen.append(
            (
                raw.headers["X-DI-Replica"],
                raw.headers["X-DI-Cache"],
                usage.prompt_tokens_details.cached_tokens or 0,
                int(raw.headers["X-DI-Prefix-Tokens"]),
            )
        )
    assert len({replica for replica, _, _, _ in seen}) == 1
    assert [cache for _, cache, _, _ in seen] == ["miss", "hit", "hit", "hit"]
    cached = [c for _, _, c, _ in seen]
    tokens = [t for _, _, _, t in seen]
    assert cached[0] == 0 and cached[1] < cached[2] < cached[3]
    assert tokens[0] == 0 and tokens[1] < tokens[2] < tokens[3]


def test_unmarked_requests_sharing_a_system_prompt_share_a_replica(make_stack: Any) -> None:
    live = make_stack(replicas=4)
    client = live.client()
    shared = system_prompt(salt="tenant")
    placed = set()
    for i in range(6):
        messages: list[Any] = [
            {"role": "system", "content": shared},
            {"role": "user", "content": f"a different question, number {i}"},
        ]
        raw = client.chat.completions.with_raw_response.create(model="m", messages=messages)
        placed.add(raw.headers["X-DI-Replica"])
        assert raw.headers["X-DI-Cache"] == ("miss" if i == 0 else "hit")
    assert len(placed) == 1
    short = client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "too short to cache"}]
    )
    assert short.headers["X-DI-Cache"] == "none"
    assert "X-DI-Prefix-Tokens" not in short.headers


def cached_request(client: openai.OpenAI, salt: str, **extra: Any) -> Any:
    messages: list[Any] = [
        {
            "role": "system",
            "content": [
                {"type": "text", "text": system_prompt(salt=salt), "cache_control": EPHEMERAL}
            ],
        },
        {"role": "user", "content": "q"},
    ]
    return client.chat.completions.with_raw_response.create(
        model="m", messages=messages, extra_body=extra or None
    )


def test_a_failing_replica_loses_its_prefixes_after_one_failure(make_stack: Any) -> None:
    live = make_stack(replicas=2)
    client = live.client()
    cached_request(client, "fails")
    holder = cached_request(client, "fails")
    assert holder.headers["X-DI-Cache"] == "hit"
    warm = holder.headers["X-DI-Replica"]
    with pytest.raises(openai.InternalServerError) as caught:
        cached_request(client, "fails", sim_fault={"status": 500})
    assert caught.value.response.headers["X-DI-Replica"] == warm
    after = cached_request(client, "fails")
    assert after.headers["X-DI-Replica"] != warm
    assert after.headers["X-DI-Cache"] == "miss"  # the failed replica is no holder any more
    again = cached_request(client, "fails")
    assert (again.headers["X-DI-Replica"], again.headers["X-DI-Cache"]) == (
        after.headers["X-DI-Replica"],
        "hit",
    )


def test_a_replica_that_evicted_the_prefix_is_demoted(make_stack: Any) -> None:
    live = make_stack(replicas=2)
    client = live.client()
    cached_request(client, "evicted")
    hit = cached_request(client, "evicted")
    assert hit.headers["X-DI-Cache"] == "hit"
    warm = hit.headers["X-DI-Replica"]
    sim = next(r for r in live.fleets["sim-text"].replicas if r.id == warm)

    async def reset() -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.post(sim.url.removesuffix("/v1") + "/sim/reset") as response,
        ):
            response.raise_for_status()

    live.run(reset())  # the replica evicts everything, the router does not know yet
    stale = cached_request(client, "evicted")
    usage = stale.parse().usage
    assert stale.headers["X-DI-Cache"] == "hit"
    assert usage.prompt_tokens_details.cached_tokens == 0
    # Its own usage gave it away: the next request is placed afresh.
    assert cached_request(client, "evicted").headers["X-DI-Cache"] == "miss"


def test_a_prefix_shorter_than_a_kv_block_keeps_its_replica(make_stack: Any) -> None:
    """A backend caches whole KV blocks: a marked prompt shorter than one reports no cached
    tokens where it is held, which must not read as an eviction on every hit."""
    live = make_stack(replicas=4)
    client = live.client()
    marked = [{"type": "text", "text": "Be terse.", "cache_control": EPHEMERAL}]
    seen = []
    for i in range(6):
        raw = client.chat.completions.with_raw_response.create(
            model="m",
            messages=[{"role": "system", "content": marked}, {"role": "user", "content": f"q{i}"}],
        )
        usage = raw.parse().usage
        assert usage is not None and usage.prompt_tokens_details is not None
        assert not usage.prompt_tokens_details.cached_tokens  # too short to be cached
        seen.append((raw.headers["X-DI-Replica"], raw.headers["X-DI-Cache"]))
    assert len({replica for replica, _ in seen}) == 1, seen
    assert [cache for _, cache in seen] == ["miss"] + ["hit"] * 5


def test_legacy_completions_sharing_a_prompt_start_share_a_replica(make_stack: Any) -> None:
    """``/v1/completions`` prompts get automatic prefixes at fixed boundaries: a shared
    preamble, a prompt that extends an earlier one, and token-id prompts land where their
    start is cached; a short prompt has none."""
    live = make_stack(replicas=4)
    client = live.client()
    preamble = system_prompt(salt="legacy")  # well over 1,024 estimated tokens

    def complete(prompt: Any) -> tuple[str, str, int]:
        raw = client.completions.with_raw_response.create(model="m", prompt=prompt, max_tokens=2)
        usage = raw.parse().usage
        details = usage.prompt_tokens_details if usage is not None else None
        cached = (details.cached_tokens or 0) if details is not None else 0
        return raw.headers["X-DI-Replica"], raw.headers["X-DI-Cache"], cached

    first = complete(preamble + "\nQ: one?")
    second = complete(preamble + "\nQ: two?")
    grown = complete(preamble + "\nQ: one?\nA: yes.\nQ: and then?")
    assert first[1] == "miss" and second[1] == "hit" and grown[1] == "hit"
    assert first[0] == second[0] == grown[0]
    assert second[2] > 1000 and grown[2] > 1000  # the replica had the start cached
    tokens = list(range(5000))
    assert [complete(tokens)[1], complete([*tokens, 7, 8, 9])[1]] == ["miss", "hit"]
    assert complete("Say hi")[1] == "none"
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(
            model="m", prompt=preamble, extra_body={"cache_control": {"type": "ephemeral"}}
        )
    assert caught.value.body["param"] == "cache_control"  # type: ignore[index]


async def wait_idle(live: Stack) -> None:
    """Until the router has closed every upstream request (bounded)."""
    replicas = [r for pool in live.app[BALANCER].pools.values() for r in pool.replicas]
    async with asyncio.timeout(10):
        # The router counts a stream in flight until the upstream closes it, which may be
        # just after the client saw [DONE]; nothing signals that moment, so poll (bounded).
        while any(r.in_flight for r in replicas):  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_a_hot_prefix_spreads_under_load_and_comes_back(make_stack: Any) -> None:
    def tight(config: RouterConfig) -> RouterConfig:
        routing = config.routing.model_copy(
            update={"balance_abs_threshold": 1, "balance_rel_threshold": 1.0}
        )
        return config.model_copy(update={"routing": routing})

    live: Stack = make_stack(sim=HELD, replicas=3, edit=tight)
    async with live.aclient() as client:
        messages: list[Any] = [
            {
                "role": "system",
                "content": [
                    {"type": "text", "text": system_prompt(salt="hot"), "cache_control": EPHEMERAL}
                ],
            },
            {"role": "user", "content": "q"},
        ]
        first = await client.chat.completions.with_raw_response.create(
            model="m", messages=messages, max_tokens=1
        )
        warm = first.headers["X-DI-Replica"]
        held = []
        seen = []
        try:
            for _ in range(4):
                stream = client.chat.completions.with_streaming_response.create(
                    model="m", messages=messages, stream=True
                )
                response = await stream.__aenter__()
                held.append((stream, response))
                seen.append((response.headers["X-DI-Replica"], response.headers["X-DI-Cache"]))
            for _, response in held:
                async for _ in response.iter_bytes():
                    pass
        finally:
            for stream, _ in held:
                await stream.__aexit__(None, None, None)
        live.run(wait_idle(live))
        # Two on the warm replica; the third finds it overloaded and spills onto another replica,
        # which joins the holders and takes the fourth as a hit.
        assert seen[0] == (warm, "hit") and seen[1] == (warm, "hit")
        spill = seen[2][0]
        assert spill != warm and seen[2][1] == "miss"
        assert seen[3] == (spill, "hit")
        # Load gone: the prefix comes back to its first replica.
        back = await client.chat.completions.with_raw_response.create(
            model="m", messages=messages, max_tokens=1
        )
        assert (back.headers["X-DI-Replica"], back.headers["X-DI-Cache"]) == (warm, "hit")


def test_a_stream_that_breaks_off_costs_the_replica_its_prefixes(make_stack: Any) -> None:
    live = make_stack(replicas=2)
    client = live.client()
    cached_request(client, "breaks")
    warm = cached_request(client, "breaks").headers["X-DI-Replica"]
    messages: list[Any] = [
        {
            "role": "system",
            "content": [
                {"type": "text", "text": system_prompt(salt="breaks"), "cache_control": EPHEMERAL}
            ],
        },
        {"role": "user", "content": "q"},
    ]
    with client.chat.completions.with_streaming_response.create(
        model="m",
        messages=messages,
        stream=True,
        extra_body={"sim_fault": {"disconnect_after_chunks": 1}},
    ) as raw:
        assert raw.headers["X-DI-Replica"] == warm
        body = b"".join(raw.iter_bytes())
    assert b'"error"' in body and body.rstrip().endswith(b"data: [DONE]")
    after = cached_request(client, "breaks")
    assert after.headers["X-DI-Cache"] == "miss"
    assert after.headers["X-DI-Replica"] != warm
