"""The sim's HTTP endpoints: OpenAI shapes, usage, prefix cache, tools, JSON and errors."""

from __future__ import annotations

from typing import Any

import jsonschema  # type: ignore[import-untyped]
import orjson
import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from router.sim import SimSettings, create_sim_app
from router.sim.tokenizer import tokenize

ZERO = SimSettings(ttft_ms=0, prefill_ms_per_token=0, itl_ms=0)
Client = TestClient[Any, Any]

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "minLength": 2},
                "unit": {"type": "string", "enum": ["c", "f"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
ORDER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "place_order",
        "parameters": {
            "$defs": {
                "line": {
                    "type": "object",
                    "properties": {
                        "sku": {"type": "string", "maxLength": 8},
                        "qty": {"type": "integer", "minimum": 1},
                        "gift": {"anyOf": [{"type": "boolean"}, {"type": "null"}]},
                    },
                    "required": ["sku", "qty", "gift"],
                }
            },
            "type": "object",
            "properties": {
                "lines": {"type": "array", "items": {"$ref": "#/$defs/line"}, "minItems": 2},
                "priority": {"enum": ["low", "high"]},
                "address": {
                    "type": "object",
                    "properties": {"street": {"type": "string"}, "zip": {"type": "string"}},
                    "required": ["street", "zip"],
                },
            },
            "required": ["lines", "priority", "address"],
        },
    },
}
NO_PARAMS_TOOL: dict[str, Any] = {"type": "function", "function": {"name": "ping"}}


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(create_sim_app(ZERO, replica_id="r-test"))


def chat_body(content: Any = "Hello there", **fields: Any) -> dict[str, Any]:
    return {"model": "any-model", "messages": [{"role": "user", "content": content}], **fields}


async def post(client: Client, body: Any, path: str = "/v1/chat/completions") -> Any:
    response = await client.post(path, data=orjson.dumps(body))
    assert response.status == 200, await response.text()
    return orjson.loads(await response.read())


def sse(body: bytes) -> list[Any]:
    """Parse an SSE body into JSON payloads and the literal "[DONE]"."""
    events: list[Any] = []
    for block in body.decode().split("\n\n"):
        if block:
            assert block.startswith("data: "), block
            data = block.removeprefix("data: ")
            events.append(data if data == "[DONE]" else orjson.loads(data))
    return events


async def test_chat_completion_shape_and_usage(client: Client) -> None:
    reply = await post(client, chat_body("one two three", max_tokens=5))
    assert reply["object"] == "chat.completion"
    assert reply["id"].startswith("chatcmpl-")
    assert isinstance(reply["created"], int)
    assert reply["model"] == "any-model"
    (choice,) = reply["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "length"
    assert choice["message"]["role"] == "assistant"
    assert len(tokenize(choice["message"]["content"])) == 5
    assert reply["usage"] == {
        "prompt_tokens": 4,  # <|user|> one two three
        "completion_tokens": 5,
        "total_tokens": 9,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


async def test_repeated_long_prompt_hits_the_cache(client: Client) -> None:
    prompt = " ".join(f"w{i}" for i in range(1999))  # 2000 tokens with the role marker
    first = await post(client, chat_body(prompt))
    second = await post(client, chat_body(prompt))
    assert first["usage"]["prompt_tokens"] == 2000
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] == 2000
    stats = await (await client.get("/sim/stats")).json()
    assert stats["prompt_tokens"] == 4000
    assert stats["cached_tokens"] == 2000
    assert stats["cache_blocks_used"] == 125


async def test_shared_prefix_partially_hits(client: Client) -> None:
    system = {"role": "system", "content": " ".join(f"s{i}" for i in range(63))}
    for question in ("what is one", "what is two"):
        body = {"model": "m", "messages": [system, {"role": "user", "content": question}]}
        reply = await post(client, body)
    assert reply["usage"]["prompt_tokens_details"]["cached_tokens"] == 64


async def test_lru_eviction_with_a_tiny_cache(aiohttp_client: AiohttpClient) -> None:
    settings = SimSettings(
        ttft_ms=0, prefill_ms_per_token=0, itl_ms=0, block_size=4, cache_blocks=2
    )
    client = await aiohttp_client(create_sim_app(settings))
    a, b = chat_body("a a a a a a a"), chat_body("b b b b b b b")  # two blocks each

    async def cached(body: dict[str, Any]) -> int:
        reply = await post(client, body)
        return int(reply["usage"]["prompt_tokens_details"]["cached_tokens"])

    assert await cached(a) == 0
    assert await cached(a) == 8
    assert await cached(b) == 0  # evicts a
    assert await cached(a) == 0
    stats = await (await client.get("/sim/stats")).json()
    assert stats["cache_blocks_used"] == 2


async def test_n_gives_distinct_indexed_choices(client: Client) -> None:
    reply = await post(client, chat_body(n=2, max_tokens=6))
    assert [c["index"] for c in reply["choices"]] == [0, 1]
    texts = [c["message"]["content"] for c in reply["choices"]]
    assert texts[0] != texts[1]
    assert reply["usage"]["completion_tokens"] == 12


async def test_output_is_deterministic(client: Client) -> None:
    first = await post(client, chat_body())
    second = await post(client, chat_body())
    assert first["choices"][0]["message"] == second["choices"][0]["message"]
    assert first["usage"]["completion_tokens"] == ZERO.output_tokens
    assert first["choices"][0]["finish_reason"] == "stop"


async def test_stop_string_cuts_before_it(client: Client) -> None:
    full = (await post(client, chat_body()))["choices"][0]["message"]["content"]
    stop = full.split()[4]
    reply = await post(client, chat_body(stop=["NEVER", stop]))
    (choice,) = reply["choices"]
    assert choice["message"]["content"] == full[: full.index(stop)]
    assert choice["finish_reason"] == "stop"


@pytest.mark.parametrize("tool", [WEATHER_TOOL, ORDER_TOOL, NO_PARAMS_TOOL])
async def test_forced_tool_call_arguments_validate(client: Client, tool: dict[str, Any]) -> None:
    name = tool["function"]["name"]
    tools = [WEATHER_TOOL, ORDER_TOOL, NO_PARAMS_TOOL]
    for question in ("first", "second", "third"):
        body = chat_body(
            question, tools=tools, tool_choice={"type": "function", "function": {"name": name}}
        )
        (choice,) = (await post(client, body))["choices"]
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["content"] is None
        (call,) = choice["message"]["tool_calls"]
        assert call["id"].startswith("call_")
        assert call["type"] == "function"
        assert call["function"]["name"] == name
        arguments = orjson.loads(call["function"]["arguments"])
        assert isinstance(arguments, dict)
        jsonschema.validate(arguments, tool["function"].get("parameters", {}))


async def test_auto_tool_choice_picks_some_tool_with_valid_arguments(client: Client) -> None:
    tools = [WEATHER_TOOL, ORDER_TOOL]
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    names = set()
    for i in range(12):
        reply = await post(client, chat_body(f"question {i}", tools=tools))
        (call,) = reply["choices"][0]["message"]["tool_calls"]
        names.add(call["function"]["name"])
        jsonschema.validate(
            orjson.loads(call["function"]["arguments"]), schemas[call["function"]["name"]]
        )
    assert names == set(schemas)


async def test_tool_result_or_tool_choice_none_gets_text(client: Client) -> None:
    none = await post(client, chat_body(tools=[WEATHER_TOOL], tool_choice="none"))
    assert none["choices"][0]["finish_reason"] == "stop"
    assert none["choices"][0]["message"]["content"]
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo","unit":"c"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    body = {"model": "m", "messages": messages, "tools": [WEATHER_TOOL]}
    (choice,) = (await post(client, body))["choices"]
    assert choice["finish_reason"] == "stop"
    assert "tool_calls" not in choice["message"]
    assert choice["message"]["content"]


async def test_json_schema_response_validates(client: Client) -> None:
    schema = ORDER_TOOL["function"]["parameters"]
    response_format = {"type": "json_schema", "json_schema": {"name": "order", "schema": schema}}
    reply = await post(client, chat_body(response_format=response_format, n=3))
    for choice in reply["choices"]:
        assert choice["finish_reason"] == "stop"
        jsonschema.validate(orjson.loads(choice["message"]["content"]), schema)


async def test_json_object_response_is_an_object(client: Client) -> None:
    reply = await post(client, chat_body(response_format={"type": "json_object"}))
    assert isinstance(orjson.loads(reply["choices"][0]["message"]["content"]), dict)


async def test_images_are_counted_and_mentioned(client: Client) -> None:
    content = [
        {"type": "text", "text": "Compare"},
        {"type": "image_url", "image_url": {"url": "https://x/a.png"}},
        {"type": "image_url", "image_url": {"url": "https://x/b.png"}, "cache_control": {}},
    ]
    reply = await post(client, chat_body(content))
    assert reply["choices"][0]["message"]["content"].startswith("I see 2 images.")
    assert reply["usage"]["prompt_tokens"] == 2 + 2 * ZERO.image_tokens


async def test_legacy_completions_index_prompts_times_n(client: Client) -> None:
    body = {"model": "m", "prompt": ["one", "two words"], "n": 2, "max_tokens": 3}
    reply = await post(client, body, "/v1/completions")
    assert reply["object"] == "text_completion"
    assert reply["id"].startswith("cmpl-")
    assert [c["index"] for c in reply["choices"]] == [0, 1, 2, 3]
    assert all(c["finish_reason"] == "length" for c in reply["choices"])
    assert reply["usage"]["prompt_tokens"] == 3
    assert reply["usage"]["completion_tokens"] == 12


async def test_legacy_completion_of_token_ids(client: Client) -> None:
    reply = await post(client, {"model": "m", "prompt": [1, 2, 3]}, "/v1/completions")
    assert len(reply["choices"]) == 1
    assert reply["usage"]["prompt_tokens"] == 3


async def test_chat_stream_wire_shape(client: Client) -> None:
    body = chat_body(stream=True, max_tokens=3, stream_options={"include_usage": True})
    response = await client.post("/v1/chat/completions", data=orjson.dumps(body))
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    raw = await response.read()
    assert raw.endswith(b"data: [DONE]\n\n")
    events = sse(raw)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    contents = [c["choices"][0]["delta"]["content"] for c in chunks[1:4]]
    assert len(contents) == 3
    assert chunks[4]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "length",
    }
    assert chunks[5]["choices"] == []
    assert chunks[5]["usage"]["completion_tokens"] == 3
    assert len(chunks) == 6
    plain = await post(client, chat_body(max_tokens=3))
    assert "".join(contents) == plain["choices"][0]["message"]["content"]


async def test_stream_without_include_usage_has_no_usage_chunk(client: Client) -> None:
    response = await client.post("/v1/chat/completions", data=orjson.dumps(chat_body(stream=True)))
    events = sse(await response.read())
    assert events[-1] == "[DONE]"
    assert all(event["choices"] for event in events[:-1])


async def test_stream_of_n_choices(client: Client) -> None:
    body = chat_body(stream=True, n=2, max_tokens=4)
    events = sse(await (await client.post("/v1/chat/completions", data=orjson.dumps(body))).read())
    texts = {0: "", 1: ""}
    finishes = {}
    for event in events[:-1]:
        (choice,) = event["choices"]
        texts[choice["index"]] += choice["delta"].get("content", "")
        if choice["finish_reason"]:
            finishes[choice["index"]] = choice["finish_reason"]
    plain = await post(client, chat_body(n=2, max_tokens=4))
    assert texts == {c["index"]: c["message"]["content"] for c in plain["choices"]}
    assert finishes == {0: "length", 1: "length"}


async def test_streamed_tool_call_reassembles(client: Client) -> None:
    body = chat_body(stream=True, tools=[ORDER_TOOL], tool_choice="required")
    events = sse(await (await client.post("/v1/chat/completions", data=orjson.dumps(body))).read())
    deltas = [e["choices"][0]["delta"] for e in events[:-1]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    (header,) = deltas[1]["tool_calls"]
    assert header["index"] == 0
    assert header["id"].startswith("call_")
    assert header["function"] == {"name": "place_order", "arguments": ""}
    arguments = "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas[2:-1])
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"
    jsonschema.validate(orjson.loads(arguments), ORDER_TOOL["function"]["parameters"])
    plain = await post(client, chat_body(tools=[ORDER_TOOL], tool_choice="required"))
    assert plain["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == arguments


async def test_streamed_legacy_completion(client: Client) -> None:
    body = {
        "model": "m",
        "prompt": ["a", "b"],
        "max_tokens": 2,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = sse(await (await client.post("/v1/completions", data=orjson.dumps(body))).read())
    assert events[-1] == "[DONE]"
    assert {e["object"] for e in events[:-1]} == {"text_completion"}
    finishes = [e["choices"][0] for e in events[:-2] if e["choices"][0]["finish_reason"]]
    assert sorted(c["index"] for c in finishes) == [0, 1]
    assert events[-2]["usage"]["completion_tokens"] == 4


async def test_models_health_stats_and_reset(client: Client) -> None:
    models = await (await client.get("/v1/models")).json()
    assert models["object"] == "list"
    (model,) = models["data"]
    assert model["id"] == ZERO.model
    assert model["object"] == "model"
    assert model["owned_by"] == "di-router-sim"
    assert isinstance(model["created"], int)
    health = await client.get("/health")
    assert (health.status, await health.json()) == (200, {"status": "ok"})
    await post(client, chat_body())
    stats = await (await client.get("/sim/stats")).json()
    assert stats["replica"] == "r-test"
    assert (stats["requests"], stats["completed"], stats["in_flight"]) == (1, 1, 0)
    assert stats["cache_blocks_used"] == 0  # 3 tokens: no full block
    reset = await client.post("/sim/reset")
    assert reset.status == 200
    stats = await (await client.get("/sim/stats")).json()
    assert stats == {
        "replica": "r-test",
        "requests": 0,
        "in_flight": 0,
        "completed": 0,
        "cancelled": 0,
        "failed": 0,
        "prompt_tokens": 0,
        "cached_tokens": 0,
        "cache_blocks_used": 0,
    }


async def test_responses_name_the_replica(client: Client) -> None:
    response = await client.get("/health")
    assert response.headers["X-Sim-Replica"] == "r-test"


async def _error(client: Client, method: str, path: str, data: bytes = b"") -> tuple[int, Any]:
    response = await client.request(method, path, data=data)
    return response.status, orjson.loads(await response.read())


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", b"{not json", None),
        ("/v1/chat/completions", b"[1, 2]", None),
        ("/v1/chat/completions", orjson.dumps({"model": "m"}), "messages"),
        ("/v1/chat/completions", orjson.dumps({"messages": [{"role": "user"}]}), "model"),
        ("/v1/chat/completions", orjson.dumps(chat_body(n=0)), "n"),
        # vLLM's prefill continuation: never beside add_generation_prompt, only after the
        # assistant's own turn.
        ("/v1/chat/completions", orjson.dumps(chat_body(continue_final_message=True)), None),
        (
            "/v1/chat/completions",
            orjson.dumps(
                {
                    "model": "m",
                    "messages": [{"role": "user", "content": "hi"}],
                    "continue_final_message": True,
                    "add_generation_prompt": False,
                }
            ),
            None,
        ),
        ("/v1/completions", orjson.dumps({"model": "m"}), "prompt"),
    ],
)
async def test_bad_requests_get_a_400_envelope(
    client: Client, path: str, body: bytes, param: str | None
) -> None:
    status, payload = await _error(client, "POST", path, body)
    assert status == 400
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    assert payload["error"]["type"] == "invalid_request_error"
    assert payload["error"]["param"] == param
    stats = await (await client.get("/sim/stats")).json()
    assert (stats["failed"], stats["in_flight"]) == (1, 0)


async def test_unknown_path_is_a_404_envelope(client: Client) -> None:
    status, payload = await _error(client, "GET", "/v1/nothing")
    assert status == 404
    assert payload["error"]["type"] == "not_found_error"
    assert "/v1/nothing" in payload["error"]["message"]


async def test_wrong_method_is_a_405_envelope(client: Client) -> None:
    status, payload = await _error(client, "GET", "/v1/chat/completions")
    assert status == 405
    assert payload["error"]["type"] == "invalid_request_error"


async def test_legacy_completion_of_one_string(client: Client) -> None:
    body = {"model": "m", "prompt": "Say this is a test", "stop": "\n"}
    reply = await post(client, body, "/v1/completions")
    (choice,) = reply["choices"]
    assert choice["finish_reason"] == "stop"
    assert reply["usage"]["prompt_tokens"] == 5
    assert reply["usage"]["completion_tokens"] == ZERO.output_tokens


async def test_odd_content_shapes_are_tokenized_not_rejected(client: Client) -> None:
    messages = [
        {"role": "user", "content": ["bare string part", {"type": "input_image", "file_id": "f1"}]},
        {"role": "user", "content": {"unexpected": "object"}},
    ]
    reply = await post(client, {"model": "m", "messages": messages})
    assert reply["choices"][0]["message"]["content"].startswith("I see 1 image.")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"max_tokens": 18446744073709551615}),
        ("/v1/chat/completions", {"max_completion_tokens": 40}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "word " * 64}]}),
        ("/v1/completions", {"prompt": "x", "max_tokens": 18446744073709551615}),
    ],
)
async def test_requests_beyond_the_context_are_400(
    aiohttp_client: AiohttpClient, path: str, body: dict[str, Any]
) -> None:
    """Like a real server's context limit: the sim never generates without end."""
    settings = SimSettings(ttft_ms=0, prefill_ms_per_token=0, itl_ms=0, max_model_len=32)
    small = await aiohttp_client(create_sim_app(settings))
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    if path == "/v1/completions":
        base = {"model": "m"}
    response = await small.post(path, json={**base, **body})
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == "context_length_exceeded"
    assert "maximum context length is 32 tokens" in error["message"]
