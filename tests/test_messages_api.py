"""The Messages surface through the official anthropic SDK, against a live router and simulators."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from router.config import RouterConfig

from .conftest import Stack

TOOLS: Any = [
    {
        "name": "get_weather",
        "description": "Get the current weather for a city.",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
]
# A 1x1 PNG.
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kg"
    "AAAABJRU5ErkJggg=="
)
USER: Any = [{"role": "user", "content": "Name three uses for a paperclip."}]


def base(stack: Stack) -> str:
    return stack.base_url.removesuffix("/v1")


@pytest.fixture
def client(stack: Stack) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=base(stack), api_key="test", max_retries=0) as live:
        yield live


def long_system(salt: str, words: int = 600) -> str:
    return salt + " " + " ".join(f"rule{i % 37}" for i in range(words))


def test_create_answers_a_message_with_headers(client: anthropic.Anthropic) -> None:
    raw = client.messages.with_raw_response.create(
        model="claude-sonnet-4-5", max_tokens=20, messages=USER, system="Be brief."
    )
    assert raw.headers["X-DI-Request-Type"] == "text"
    assert raw.headers["X-DI-Backend"] == "sim-text"
    assert raw.headers["X-DI-Replica"].startswith("sim-text")
    assert raw.headers["X-Request-Id"] == raw.headers["request-id"]
    message = raw.parse()
    assert message._request_id == raw.headers["X-Request-Id"]
    assert message.model == "claude-sonnet-4-5"
    assert message.role == "assistant" and message.type == "message"
    assert message.id.startswith("msg_")
    text = message.content[0]
    assert text.type == "text" and text.text
    assert message.stop_reason == "max_tokens"  # the sim runs to max_tokens when given
    assert message.usage.output_tokens == 20
    assert message.usage.input_tokens > 0


def test_sampling_fields_and_stop_sequences(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model="m",
        max_tokens=30,
        messages=USER,
        metadata={"user_id": "u-1"},
        stop_sequences=["zzz-never"],
        # This SDK version no longer types the sampling fields; the API still takes them.
        extra_body={"temperature": 0.2, "top_p": 0.9, "top_k": 5},
    )
    assert message.content and message.stop_reason in ("max_tokens", "end_turn")


async def test_async_client(stack: Stack) -> None:
    async with anthropic.AsyncAnthropic(base_url=base(stack), api_key="t", max_retries=0) as c:
        messages = await asyncio.gather(
            *(c.messages.create(model="m", max_tokens=8, messages=USER) for _ in range(3))
        )
    assert all(m.content[0].type == "text" for m in messages)


def test_stream_helper_gives_text_and_final_message(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model="my-claude", max_tokens=12, messages=USER) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].type == "text" and final.content[0].text == text
    assert final.model == "my-claude"
    assert final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 12 and final.usage.input_tokens > 0


def test_raw_stream_events_in_order(client: anthropic.Anthropic) -> None:
    events = list(client.messages.create(model="m", max_tokens=5, messages=USER, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:3] == ["message_start", "content_block_start", "content_block_delta"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert kinds.count("content_block_delta") == 5


def test_stream_wire_has_event_lines_and_ping(stack: Stack) -> None:
    async def fetch() -> bytes:
        body = {"model": "m", "max_tokens": 3, "messages": USER, "stream": True}
        async with (
            aiohttp.ClientSession() as session,
            session.post(base(stack) + "/v1/messages", json=body) as r,
        ):
            assert r.headers["Content-Type"].startswith("text/event-stream")
            assert r.headers["X-DI-Request-Type"] == "text"
            return await r.read()

    wire = stack.run(fetch())
    assert wire.startswith(b"event: message_start\ndata: {")
    assert b"event: ping\ndata: " in wire
    assert wire.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    assert b"[DONE]" not in wire


def test_tools_round_trip(client: anthropic.Anthropic) -> None:
    raw = client.messages.with_raw_response.create(
        model="m",
        max_tokens=100,
        tools=TOOLS,
        tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    )
    assert raw.headers["X-DI-Request-Type"] == "code"
    first = raw.parse()
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    assert call.name == "get_weather" and isinstance(call.input, dict) and "city" in call.input
    second = client.messages.create(
        model="m",
        max_tokens=30,
        tools=TOOLS,
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": first.content},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "21 C"}],
            },
        ],
    )
    assert second.stop_reason != "tool_use"
    assert second.content[0].type == "text"


def test_forced_tool_choice_and_streamed_tool_input(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model="m",
        max_tokens=100,
        tools=TOOLS,
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": "Weather?"}],
    ) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    assert "input_json" in kinds
    call = final.content[-1]
    assert call.type == "tool_use" and "city" in call.input
    assert final.stop_reason == "tool_use"


def test_tool_choice_none_answers_in_text(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model="m", max_tokens=5, tools=TOOLS, tool_choice={"type": "none"}, messages=USER
    )
    assert [b.type for b in message.content] == ["text"]


@pytest.mark.parametrize(
    "source",
    [
        {"type": "base64", "media_type": "image/png", "data": PNG},
        {"type": "url", "url": "https://example.com/cat.png"},
    ],
)
def test_image_routes_to_vision(client: anthropic.Anthropic, source: Any) -> None:
    raw = client.messages.with_raw_response.create(
        model="m",
        max_tokens=10,
        messages=[
            {
                "role": "user",
                "content": [{"type": "image", "source": source}, {"type": "text", "text": "What?"}],
            }
        ],
    )
    assert raw.headers["X-DI-Request-Type"] == "vision"
    text = raw.parse().content[0]
    assert text.type == "text" and text.text.startswith("I see 1 image")


def test_second_call_reads_the_cache(client: anthropic.Anthropic) -> None:
    system: Any = [
        {"type": "text", "text": long_system("cache"), "cache_control": {"type": "ephemeral"}}
    ]
    first = client.messages.with_raw_response.create(
        model="m", max_tokens=4, system=system, messages=USER
    )
    second = client.messages.with_raw_response.create(
        model="m",
        max_tokens=4,
        system=system,
        messages=[{"role": "user", "content": "And a fourth?"}],
    )
    assert first.headers["X-DI-Cache"] == "miss"
    assert second.headers["X-DI-Cache"] == "hit"
    assert second.headers["X-DI-Replica"] == first.headers["X-DI-Replica"]
    usage = second.parse().usage
    assert usage.cache_read_input_tokens is not None and usage.cache_read_input_tokens > 500
    # input_tokens excludes what was read from the cache, as Anthropic counts it.
    assert usage.input_tokens < 50
    assert usage.cache_creation_input_tokens == 0


def test_cache_read_reported_in_the_stream_too(client: anthropic.Anthropic) -> None:
    system: Any = [
        {
            "type": "text",
            "text": long_system("stream"),
            "cache_control": {"type": "ephemeral", "ttl": "1h"},
        }
    ]
    client.messages.create(model="m", max_tokens=4, system=system, messages=USER)
    with client.messages.stream(model="m", max_tokens=4, system=system, messages=USER) as stream:
        final = stream.get_final_message()
    assert final.usage.cache_read_input_tokens and final.usage.cache_read_input_tokens > 500


def test_a_conversation_keeps_its_replica_across_surfaces(stack: Stack) -> None:
    """The same prefix sent through chat then Messages keys the same: a hit on the same replica."""
    text = long_system("cross")
    marker: Any = {"type": "ephemeral"}
    system: Any = {
        "role": "system",
        "content": [{"type": "text", "text": text, "cache_control": marker}],
    }
    chat = stack.client().chat.completions.with_raw_response.create(
        model="m", messages=[system, {"role": "user", "content": "hi"}]
    )
    with anthropic.Anthropic(base_url=base(stack), api_key="t", max_retries=0) as client:
        message = client.messages.with_raw_response.create(
            model="m",
            max_tokens=4,
            system=[{"type": "text", "text": text, "cache_control": marker}],
            messages=[{"role": "user", "content": "hello"}],
        )
    assert chat.headers["X-DI-Cache"] == "miss"
    assert message.headers["X-DI-Cache"] == "hit"
    assert message.headers["X-DI-Replica"] == chat.headers["X-DI-Replica"]


def test_count_tokens(client: anthropic.Anthropic) -> None:
    short = client.messages.count_tokens(model="m", messages=USER)
    longer = client.messages.count_tokens(
        model="m", messages=USER, system=long_system("count"), tools=TOOLS
    )
    assert short.input_tokens > 0
    assert longer.input_tokens > short.input_tokens + 600


def test_x_api_key_and_anthropic_version_are_accepted(make_stack: Any) -> None:
    def keyed(config: RouterConfig) -> RouterConfig:
        server = config.server.model_copy(update={"api_keys": [anthropic_key()]})
        return config.model_copy(update={"server": server})

    stack = make_stack(edit=keyed)
    with anthropic.Anthropic(base_url=base(stack), api_key="sk-right", max_retries=0) as good:
        assert good.messages.create(model="m", max_tokens=3, messages=USER).content
    with (
        anthropic.Anthropic(base_url=base(stack), api_key="sk-wrong", max_retries=0) as bad,
        pytest.raises(anthropic.AuthenticationError) as caught,
    ):
        bad.messages.create(model="m", max_tokens=3, messages=USER)
    assert caught.value.status_code == 401
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "Incorrect API key provided."},
    }
    # The OpenAI surface takes the same key as a Bearer token, and keeps its own envelope.
    with openai.OpenAI(base_url=stack.base_url, api_key="sk-right", max_retries=0) as chat:
        assert chat.chat.completions.create(model="m", messages=USER).choices[0].message.content
        with pytest.raises(openai.AuthenticationError) as refused:
            chat.with_options(api_key="sk-wrong").chat.completions.create(model="m", messages=USER)
    assert refused.value.body == {
        "message": "Incorrect API key provided.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }


def anthropic_key() -> Any:
    from pydantic import SecretStr

    from router.config import ApiKeyConfig

    return ApiKeyConfig(key=SecretStr("sk-right"))


def test_structured_output_routes_to_json(client: anthropic.Anthropic) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    raw = client.messages.with_raw_response.create(
        model="m",
        max_tokens=200,
        messages=[{"role": "user", "content": "Ada is 36."}],
        output_config={"format": {"type": "json_schema", "schema": schema}},
    )
    assert raw.headers["X-DI-Request-Type"] == "json"
    block = raw.parse().content[0]
    assert block.type == "text"
    document = json.loads(block.text)
    assert isinstance(document["name"], str) and isinstance(document["age"], int)


@pytest.mark.parametrize("stream", [False, True])
def test_tokens_through_a_chat_backend_are_counted(stack: Stack, stream: bool) -> None:
    """Usage the chat backend reports reaches the per-tenant counters (and token limits)."""
    title = f"messages-usage-{stream}"
    with anthropic.Anthropic(
        base_url=base(stack), api_key="test", max_retries=0, default_headers={"X-Title": title}
    ) as titled:
        if stream:
            with titled.messages.stream(model="m", max_tokens=6, messages=USER) as events:
                events.get_final_message()
        else:
            titled.messages.create(model="m", max_tokens=6, messages=USER)

    async def metrics() -> str:
        async with aiohttp.ClientSession() as session, session.get(base(stack) + "/metrics") as r:
            return await r.text()

    tokens = {
        sample.labels["kind"]: sample.value
        for family in text_string_to_metric_families(stack.run(metrics()))
        if family.name == "di_tenant_tokens"
        for sample in family.samples
        if sample.name == "di_tenant_tokens_total" and sample.labels["app"] == title
    }
    assert tokens["completion"] == 6


PREFILL: Any = [
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "The colour is"},
]


def continuing(config: RouterConfig) -> RouterConfig:
    backends = [b.model_copy(update={"continue_final_message": True}) for b in config.backends]
    return config.model_copy(update={"backends": backends})


def test_a_prefill_is_continued_on_chat_backends_that_can(make_stack: Any) -> None:
    """The simulator checks the request as vLLM does: continuing needs the final message to
    be the assistant's and add_generation_prompt off, or it answers 400."""
    stack = make_stack(edit=continuing)
    with anthropic.Anthropic(base_url=base(stack), api_key="t", max_retries=0) as live:
        message = live.messages.create(model="m", max_tokens=8, messages=PREFILL)
        answer = live.messages.create(model="m", max_tokens=8, messages=USER)
    assert message.stop_reason in ("end_turn", "max_tokens") and message.content
    assert answer.content  # no prefill: nothing to continue, nothing added


def test_the_continuation_fields_go_only_where_configured(
    make_stack: Any, fake_upstream: Any
) -> None:
    from .conftest import with_replicas

    def edit(continues: bool) -> Any:
        return lambda config: with_replicas(
            config, "sim-text", [fake_upstream.url], continue_final_message=continues
        )

    stacks = {continues: make_stack(edit=edit(continues)) for continues in (True, False)}
    for continues, stack in stacks.items():
        with anthropic.Anthropic(base_url=base(stack), api_key="t", max_retries=0) as live:
            live.messages.create(model="m", max_tokens=8, messages=PREFILL)
        sent = fake_upstream.upstream.received[-1].body
        assert sent["messages"][-1] == {"role": "assistant", "content": "The colour is"}
        assert sent.get("continue_final_message") is (True if continues else None)
        assert sent.get("add_generation_prompt") is (False if continues else None)
    # A chat client's own trailing assistant turn is its business, even where continuing is on.
    stacks[True].client().chat.completions.create(model="m", messages=PREFILL)
    assert "continue_final_message" not in fake_upstream.upstream.received[-1].body
