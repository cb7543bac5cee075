"""Chat completions through a live router with the official openai SDK, sync and async."""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

import aiohttp
import jsonschema  # type: ignore[import-untyped]
import openai
import pytest

from router.keys import BALANCER
from router.sim import SimSettings

from .conftest import FAST, Stack

TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["c", "f"]},
                    "days": {"type": "integer", "minimum": 1, "maximum": 7},
                },
                "required": ["city", "unit"],
                "additionalProperties": False,
            },
        },
    }
]
PERSON: Any = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


IMAGE_MESSAGE: Any = {
    "role": "user",
    "content": [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/photo.jpg"}},
    ],
}


def user(text: str) -> Any:
    return [{"role": "user", "content": text}]


def test_plain_text_echoes_the_model_id(stack: Stack) -> None:
    client = stack.client()
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-5.5-mini",
        messages=[
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "Name three uses for a paperclip."},
        ],
        temperature=0.7,
        max_tokens=300,
        extra_headers={"Origin": "https://app.example"},  # as a browser would
    )
    completion = raw.parse()
    assert completion.model == "gpt-5.5-mini"
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    assert raw.headers["X-DI-Request-Type"] == "text"
    assert raw.headers["X-DI-Backend"] == "sim-text"
    assert raw.headers["X-DI-Replica"] in {"sim-text-0", "sim-text-1"}
    assert raw.headers["X-DI-Cache"] == "none"
    timing = raw.headers["Server-Timing"]
    assert "router;dur=" in timing and "upstream;dur=" in timing
    exposed = raw.headers["Access-Control-Expose-Headers"]
    assert "X-DI-Request-Type" in exposed and "X-DI-Replica" in exposed


async def test_cors_headers_go_only_to_requests_with_an_origin(stack: Stack) -> None:
    # Browsers send Origin on every cross-origin request; SDKs and servers do not, and get
    # no CORS headers: on answers, streams and errors alike.
    url = stack.base_url + "/chat/completions"
    chat = {"model": "m", "messages": user("hi")}
    bodies = [chat, {**chat, "stream": True}, {"model": "m"}]
    async with aiohttp.ClientSession() as session:
        for body in bodies:
            async with session.post(url, json=body) as bare:
                await bare.read()
                assert bare.headers["X-Request-Id"]
                assert not [h for h in bare.headers if h.startswith("Access-Control-")]
                assert bare.headers["Vary"] == "Origin"  # a cache keeps the two answers apart
            origin = {"Origin": "https://app.example"}
            async with session.post(url, json=body, headers=origin) as browser:
                await browser.read()
                assert browser.headers["Access-Control-Allow-Origin"] == "*"
                assert "X-DI-Backend" in browser.headers["Access-Control-Expose-Headers"]
                assert browser.headers["Vary"] == "Origin"
        assert [bare.status, browser.status] == [400, 400]  # the last pair: an error


def test_client_request_id_is_kept_and_forwarded(stack: Stack) -> None:
    raw = stack.client().chat.completions.with_raw_response.create(
        model="m", messages=user("hi"), extra_headers={"X-Request-Id": "trace-42"}
    )
    assert raw.headers["X-Request-Id"] == "trace-42"
    generated = stack.client().chat.completions.with_raw_response.create(
        model="m", messages=user("hi")
    )
    assert len(generated.headers["X-Request-Id"]) >= 16


def test_streaming_with_usage_and_headers(stack: Stack) -> None:
    client = stack.client()
    with client.chat.completions.with_streaming_response.create(
        model="gpt-5.5-mini",
        messages=user("Stream a haiku about latency."),
        stream=True,
        stream_options={"include_usage": True},
    ) as raw:
        assert raw.headers["X-DI-Request-Type"] == "text"
        assert raw.headers["X-DI-Replica"].startswith("sim-text-")
        assert "upstream;dur=" in raw.headers["Server-Timing"]
        assert raw.headers["Content-Type"].startswith("text/event-stream")
        chunks = list(raw.parse())
    assert all(c.model == "gpt-5.5-mini" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == FAST.output_tokens


async def test_stream_wire_bytes_end_with_done(stack: Stack) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            stack.base_url + "/chat/completions",
            json={"model": "m", "messages": user("hi"), "stream": True},
        ) as response,
    ):
        data = await response.read()
    assert response.headers["X-Accel-Buffering"] == "no"
    events = data.split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    assert all(e.startswith(b"data: ") for e in events[:-1])
    assert b'"model":"m"' in events[0]


async def test_async_client_streams(stack: Stack) -> None:
    async with stack.aclient() as client:
        stream = await client.chat.completions.create(
            model="m", messages=user("hello"), stream=True
        )
        pieces = [c.choices[0].delta.content async for c in stream if c.choices]
        assert "".join(p or "" for p in pieces).strip()


def test_tools_route_to_code_and_arguments_validate(stack: Stack) -> None:
    raw = stack.client().chat.completions.with_raw_response.create(
        model="m", messages=user("What is the weather in Paris?"), tools=TOOLS
    )
    assert raw.headers["X-DI-Request-Type"] == "code"
    assert raw.headers["X-DI-Backend"] == "sim-code"
    calls: Any = raw.parse().choices[0].message.tool_calls or []
    assert len(calls) == 1
    assert calls[0].function.name == "get_weather"
    jsonschema.validate(json.loads(calls[0].function.arguments), TOOLS[0]["function"]["parameters"])


def test_tool_loop_is_code_and_ends_in_text(stack: Stack) -> None:
    client = stack.client()
    first = client.chat.completions.create(
        model="m", messages=user("weather?"), tools=TOOLS, tool_choice="required"
    )
    call: Any = (first.choices[0].message.tool_calls or [])[0]
    raw = client.chat.completions.with_raw_response.create(
        model="m",
        messages=[
            *user("weather?"),
            cast(Any, first.choices[0].message.model_dump(exclude_none=True)),
            {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'},
        ],
    )
    assert raw.headers["X-DI-Request-Type"] == "code"
    assert raw.parse().choices[0].message.content


def test_image_goes_to_vision(stack: Stack) -> None:
    raw = stack.client().chat.completions.with_raw_response.create(
        model="gpt-5.5-mini",
        messages=[IMAGE_MESSAGE],
    )
    assert raw.headers["X-DI-Request-Type"] == "vision"
    assert raw.headers["X-DI-Backend"] == "sim-vision"
    assert "1 image" in (raw.parse().choices[0].message.content or "")
    with_tools = stack.client().chat.completions.with_raw_response.create(
        model="m", messages=[IMAGE_MESSAGE], tools=TOOLS
    )
    assert with_tools.headers["X-DI-Request-Type"] == "vision"


def test_json_schema_reply_validates(stack: Stack) -> None:
    raw = stack.client().chat.completions.with_raw_response.create(
        model="m",
        messages=user("Extract the name and age from: Ada is 36."),
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "strict": True, "schema": PERSON},
        },
    )
    assert raw.headers["X-DI-Request-Type"] == "json"
    jsonschema.validate(json.loads(raw.parse().choices[0].message.content or ""), PERSON)


def test_json_object_mode(stack: Stack) -> None:
    raw = stack.client().chat.completions.with_raw_response.create(
        model="m", messages=user("Return a JSON object."), response_format={"type": "json_object"}
    )
    assert raw.headers["X-DI-Request-Type"] == "json"
    assert isinstance(json.loads(raw.parse().choices[0].message.content or ""), dict)


def test_n_choices(stack: Stack) -> None:
    completion = stack.client().chat.completions.create(model="m", messages=user("hi"), n=2)
    assert [c.index for c in completion.choices] == [0, 1]


def test_models_list_and_retrieve(stack: Stack) -> None:
    client = stack.client()
    ids = [m.id for m in client.models.list()]
    assert "sim-text" in ids and "sim-vision" in ids
    assert client.models.retrieve("sim-code").id == "sim-code"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


async def test_health_ready_metrics(stack: Stack) -> None:
    async with aiohttp.ClientSession() as session:
        root = stack.base_url.removesuffix("/v1")
        async with session.get(root + "/health") as response:
            assert response.status == 200
        async with session.get(root + "/ready") as response:
            body = await response.json()
            assert response.status == 200
            assert body["pools"] == dict.fromkeys(
                ["sim-code", "sim-json", "sim-text", "sim-vision"], True
            )
        async with session.get(root + "/metrics") as response:
            text = await response.text()
            assert "di_requests_total" in text and "di_replica_in_flight" in text


def test_incremental_streaming_is_not_buffered(make_stack: Any, fake_upstream: Any) -> None:
    from .conftest import with_replicas

    # The upstream sends one chunk, then holds the rest until the test has read that chunk: a
    # router that buffered the stream could never hand it over (the client's timeout would end
    # the test), whatever the machine's speed.
    fake_upstream.upstream.stream_style = "held"
    live = make_stack(edit=lambda c: with_replicas(c, "sim-text", [fake_upstream.url]))
    client = live.client(timeout=30)
    stream = client.chat.completions.create(model="m", messages=user("hi"), stream=True)
    chunks = iter(stream)
    first = next(chunks)
    assert first.choices and first.choices[0].delta.content == "o"
    assert len(fake_upstream.upstream.received) == 1  # the upstream is still held on chunk one
    fake_upstream.release()
    rest = list(chunks)
    assert [c.choices[0].delta.content for c in rest if c.choices] == ["k"]


def test_every_parameter_reaches_the_upstream(make_stack: Any, fake_upstream: Any) -> None:
    from .conftest import with_replicas

    live = make_stack(edit=lambda c: with_replicas(c, "sim-text", [fake_upstream.url]))
    params: dict[str, Any] = {
        "n": 2,
        "stop": ["\n\n", "END"],
        "temperature": 0.3,
        "top_p": 0.9,
        "logprobs": True,
        "top_logprobs": 2,
        "logit_bias": {"50256": -100},
        "seed": 7,
        "tool_choice": "none",
        "parallel_tool_calls": False,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "max_tokens": 12,
        "max_completion_tokens": 12,
        "user": "u-1",
        "metadata": {"team": "a"},
    }
    extra = {"top_k": 5, "repetition_penalty": 1.1, "chat_template_kwargs": {"x": 1}}
    completion = live.client().chat.completions.create(
        model="client-model", messages=user("hi"), extra_body=extra, **params
    )
    assert completion.model == "client-model"  # the upstream said "upstream-model"
    sent = fake_upstream.upstream.received[-1]
    assert sent.body == {"model": "client-model", "messages": user("hi"), **params, **extra}
    assert sent.headers["x-request-id"]
    assert "authorization" not in sent.headers  # the client's key is the router's, not upstream's


def test_backend_model_replaces_the_model_and_key_is_sent(
    make_stack: Any, fake_upstream: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from .conftest import with_replicas

    monkeypatch.setenv("UPSTREAM_KEY", "sk-upstream-secret")
    from router.config import BackendConfig

    def edit(config: Any) -> Any:
        config = with_replicas(config, "sim-text", [fake_upstream.url])
        patched = BackendConfig.model_validate(
            {
                **config.backend("sim-text").model_dump(),
                "model": "served-7b",
                "api_key": "env:UPSTREAM_KEY",
            }
        )
        return config.model_copy(
            update={"backends": [patched if b.name == "sim-text" else b for b in config.backends]}
        )

    live = make_stack(edit=edit)
    client = live.client()
    completion = client.chat.completions.create(model="my-alias", messages=user("hi"))
    assert completion.model == "my-alias"
    sent = fake_upstream.upstream.received[-1]
    assert sent.body["model"] == "served-7b"
    assert sent.headers["authorization"] == "Bearer sk-upstream-secret"
    chunks = list(
        client.chat.completions.create(model="my-alias", messages=user("hi"), stream=True)
    )
    assert [c.model for c in chunks] == ["my-alias", "my-alias"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "ok"


async def test_client_disconnect_cancels_the_upstream_request(make_stack: Any) -> None:
    slow = make_stack(
        sim=SimSettings(ttft_ms=0, prefill_ms_per_token=0, itl_ms=50, output_tokens=40)
    )
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            slow.base_url + "/chat/completions",
            json={"model": "m", "messages": user("hi"), "stream": True},
        )
        await response.content.readuntil(b"\n\n")
        response.close()  # the client goes away mid-stream
    for _ in range(200):  # bounded wait for the simulator to notice
        stats = list(slow.sim_stats("sim-text").values())
        if sum(s["cancelled"] for s in stats) == 1:
            break
        await asyncio.sleep(0.02)
    assert sum(s["cancelled"] for s in stats) == 1
    assert sum(s["in_flight"] for s in stats) == 0
    assert sum(s["completed"] for s in stats) == 0
    pools = slow.app[BALANCER].pools
    assert all(r.in_flight == 0 for p in pools.values() for r in p.replicas)
