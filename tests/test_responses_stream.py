"""Tests for router.responses.stream: chat chunks -> Responses API SSE events."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from router.responses.stream import ChatToResponseEvents
from router.responses.translate import chat_to_response

STREAM_EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
REQUEST = {"model": "gpt-4o", "input": "Hi", "stream": True}
USAGE = {
    "prompt_tokens": 20,
    "completion_tokens": 5,
    "total_tokens": 25,
    "prompt_tokens_details": {"cached_tokens": 16},
}


def chunk(
    delta: dict[str, Any] | None = None, finish_reason: str | None = None, index: int = 0
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "backend-model-q4",
        "choices": [{"index": index, "delta": delta or {}, "finish_reason": finish_reason}],
    }


def usage_chunk(usage: dict[str, Any] = USAGE) -> dict[str, Any]:
    return {**chunk(), "choices": [], "usage": usage}


def call_delta(
    position: int, arguments: str, *, call_id: str | None = None, name: str | None = None
) -> dict[str, Any]:
    delta: dict[str, Any] = {"index": position, "function": {"arguments": arguments}}
    if call_id is not None:
        delta.update(id=call_id, type="function")
        delta["function"]["name"] = name
    return {"tool_calls": [delta]}


def text_chunks(*pieces: str, finish_reason: str = "stop") -> list[dict[str, Any]]:
    return [
        chunk({"role": "assistant", "content": ""}),
        *(chunk({"content": piece}) for piece in pieces),
        chunk({}, finish_reason),
        usage_chunk(),
    ]


def tool_chunks() -> list[dict[str, Any]]:
    return [
        chunk({"role": "assistant", "content": None}),
        chunk(call_delta(0, "", call_id="call_a", name="get_weather")),
        chunk(call_delta(0, '{"city":')),
        chunk(call_delta(0, '"Paris"}')),
        chunk(call_delta(1, '{"city":"Rome"}', call_id="call_b", name="get_weather")),
        chunk({}, "tool_calls"),
        usage_chunk(),
    ]


def run(
    chunks: list[dict[str, Any]], request: dict[str, Any] = REQUEST
) -> tuple[ChatToResponseEvents, list[bytes]]:
    events = ChatToResponseEvents(request=request, response_id="resp_s1", created_at=1700000001)
    frames = events.start()
    for item in chunks:
        frames += events.feed(item)
    frames += events.finish()
    return events, frames


def parse(frames: list[bytes]) -> list[dict[str, Any]]:
    """Each frame's payload, after checking the wire format and the SDK's event types."""
    parsed = []
    for frame in frames:
        head, _, rest = frame.partition(b"\n")
        assert head.startswith(b"event: ")
        assert rest.startswith(b"data: ") and rest.endswith(b"\n\n")
        assert rest.count(b"\n") == 2
        event = orjson.loads(rest[len(b"data: ") :])
        assert head == b"event: " + event["type"].encode()
        assert STREAM_EVENT.validate_python(event).type == event["type"]
        parsed.append(event)
    assert [event["sequence_number"] for event in parsed] == list(range(len(parsed)))
    return parsed


def types(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


def test_frame_wire_format() -> None:
    events = ChatToResponseEvents(request=REQUEST, response_id="resp_s1", created_at=1)
    frame = events.start()[0]
    assert frame.startswith(b'event: response.created\ndata: {"type":"response.created",')
    assert frame.endswith(b"}\n\n")


def test_text_stream_events_in_order() -> None:
    _, frames = run(text_chunks("Hel", "lo", " world"))
    events = parse(frames)
    assert types(events) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    created, added, part_added = events[0], events[2], events[3]
    assert created["response"]["status"] == "in_progress"
    assert created["response"]["output"] == []
    assert added["item"]["status"] == "in_progress" and added["item"]["content"] == []
    assert part_added["part"] == {
        "type": "output_text",
        "text": "",
        "annotations": [],
        "logprobs": [],
    }
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert all(
        (e["item_id"], e["output_index"], e["content_index"], e["logprobs"])
        == (added["item"]["id"], 0, 0, [])
        for e in deltas
    )
    assert "".join(e["delta"] for e in deltas) == "Hello world"
    assert events[7]["text"] == "Hello world"
    assert events[9]["item"]["status"] == "completed"
    completed = Response.model_validate(events[-1]["response"])
    assert completed.status == "completed"
    assert completed.output_text == "Hello world"


def test_usage_and_model_in_final_response() -> None:
    events, frames = run(text_chunks("Hi"))
    final = parse(frames)[-1]["response"]
    assert final["model"] == "gpt-4o"
    assert all(e["response"]["model"] == "gpt-4o" for e in parse(frames) if "response" in e)
    assert final["usage"] == {
        "input_tokens": 20,
        "input_tokens_details": {"cached_tokens": 16, "cache_write_tokens": 0},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 25,
    }
    assert events.response == final


def test_tool_call_stream() -> None:
    request = {**REQUEST, "tools": [{"type": "function", "name": "get_weather"}]}
    _, frames = run(tool_chunks(), request)
    events = parse(frames)
    assert types(events) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    first, second = events[2]["item"], events[5]["item"]
    assert (first["type"], first["call_id"], first["name"], first["arguments"]) == (
        "function_call",
        "call_a",
        "get_weather",
        "",
    )
    assert (events[2]["output_index"], events[5]["output_index"]) == (0, 1)
    by_item: dict[str, str] = {}
    for event in events:
        if event["type"] == "response.function_call_arguments.delta":
            by_item[event["item_id"]] = by_item.get(event["item_id"], "") + event["delta"]
    assert by_item == {first["id"]: '{"city":"Paris"}', second["id"]: '{"city":"Rome"}'}
    assert events[7]["arguments"] == '{"city":"Paris"}'
    assert events[8]["item"]["arguments"] == '{"city":"Paris"}'
    assert events[10]["item"]["call_id"] == "call_b"
    final = Response.model_validate(events[-1]["response"])
    assert [(item.type, getattr(item, "call_id", None)) for item in final.output] == [
        ("function_call", "call_a"),
        ("function_call", "call_b"),
    ]


def test_text_then_tool_call_get_separate_output_indexes() -> None:
    chunks = [
        chunk({"role": "assistant", "content": "Let me check."}),
        chunk(call_delta(0, "{}", call_id="call_a", name="lookup")),
        chunk({}, "tool_calls"),
    ]
    _, frames = run(chunks)
    events = parse(frames)
    added = [e for e in events if e["type"] == "response.output_item.added"]
    assert [(e["output_index"], e["item"]["type"]) for e in added] == [
        (0, "message"),
        (1, "function_call"),
    ]
    final = events[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["message", "function_call"]
    assert final["usage"] is None


def test_length_finish_is_incomplete() -> None:
    _, frames = run(text_chunks("Once", " upon", finish_reason="length"))
    events = parse(frames)
    assert events[-1]["type"] == "response.incomplete"
    final = Response.model_validate(events[-1]["response"])
    assert final.status == "incomplete"
    assert final.incomplete_details is not None
    assert final.incomplete_details.reason == "max_output_tokens"
    assert final.output_text == "Once upon"
    assert events[-2]["item"]["status"] == "incomplete"


def test_fail_keeps_partial_output() -> None:
    events = ChatToResponseEvents(request=REQUEST, response_id="resp_s1", created_at=1)
    frames = events.start() + events.feed(chunk({"content": "Par"}))
    frames += events.fail("backend went away", "server_error")
    parsed = parse(frames)
    assert parsed[-1]["type"] == "response.failed"
    failed = Response.model_validate(parsed[-1]["response"])
    assert failed.status == "failed"
    assert failed.error is not None
    assert (failed.error.code, failed.error.message) == ("server_error", "backend went away")
    assert failed.output_text == "Par"
    assert events.response["status"] == "failed"
    with pytest.raises(RuntimeError):
        events.feed(chunk({"content": "is"}))
    with pytest.raises(RuntimeError):
        events.finish()


def test_fail_with_code_outside_the_sdk_enum() -> None:
    events = ChatToResponseEvents(request=REQUEST, response_id="resp_s1", created_at=1)
    (frame,) = events.fail("upstream timed out", "upstream_timeout")
    (event,) = parse([frame])
    assert event["response"]["error"] == {"code": "server_error", "message": "upstream timed out"}


def test_refusal_stream() -> None:
    chunks = [chunk({"role": "assistant", "refusal": "I can't"}), chunk({"refusal": " help."})]
    _, frames = run([*chunks, chunk({}, "stop")])
    events = parse(frames)
    assert types(events)[2:] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.refusal.delta",
        "response.refusal.delta",
        "response.refusal.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[6]["refusal"] == "I can't help."
    assert events[-1]["response"]["output"][0]["content"] == [
        {"type": "refusal", "refusal": "I can't help."}
    ]


def test_tool_name_arriving_after_the_id() -> None:
    first = {"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {}}]}
    second = {"tool_calls": [{"index": 0, "function": {"name": "lookup", "arguments": "{}"}}]}
    events, frames = run([chunk(first), chunk(second), chunk({}, "tool_calls")])
    parse(frames)
    (item,) = events.response["output"]
    assert (item["call_id"], item["name"], item["arguments"]) == ("call_a", "lookup", "{}")


def test_other_choices_are_ignored() -> None:
    _, frames = run([chunk({"content": "A"}), chunk({"content": "B"}, index=1)])
    events = parse(frames)
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "A"


def test_in_progress_response_snapshot() -> None:
    events = ChatToResponseEvents(request=REQUEST, response_id="resp_s1", created_at=1)
    events.start()
    events.feed(chunk({"content": "Hi"}))
    snapshot = Response.model_validate(events.response)
    assert snapshot.status == "in_progress"
    assert snapshot.output_text == "Hi"


def test_stream_and_non_stream_give_the_same_response() -> None:
    events, _ = run(tool_chunks())
    completion = {
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        },
                        {
                            "id": "call_b",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                        },
                    ],
                },
            }
        ],
        "usage": USAGE,
    }
    expected = chat_to_response(
        completion, request=REQUEST, response_id="resp_s1", created_at=1700000001
    )
    assert events.response == expected


@given(st.lists(st.text(min_size=1), max_size=8))
def test_any_split_reassembles(pieces: list[str]) -> None:
    events, frames = run(text_chunks(*pieces))
    parsed = parse(frames)
    deltas = "".join(e["delta"] for e in parsed if e["type"] == "response.output_text.delta")
    assert deltas == "".join(pieces)
    assert Response.model_validate(events.response).output_text == "".join(pieces)


# --- the official SDK consuming the stream over HTTP ------------------------------------


def sdk_client(frames: list[bytes]) -> openai.OpenAI:
    def reply(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            200, headers={"content-type": "text/event-stream"}, content=b"".join(frames)
        )

    transport = httpx2.MockTransport(reply)
    return openai.OpenAI(
        api_key="test", base_url="http://router/v1", http_client=httpx2.Client(transport=transport)
    )


def test_sdk_stream_helper_accumulates_text() -> None:
    _, frames = run(text_chunks("Hello", " there"))
    with (
        sdk_client(frames) as client,
        client.responses.stream(model="gpt-4o", input="Hi") as stream,
    ):
        text_deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(text_deltas) == "Hello there"
    assert final.output_text == "Hello there"
    assert final.usage is not None
    assert final.usage.input_tokens_details.cached_tokens == 16


def test_sdk_stream_helper_accumulates_tool_calls() -> None:
    _, frames = run(tool_chunks())
    with (
        sdk_client(frames) as client,
        client.responses.stream(model="gpt-4o", input="Hi") as stream,
    ):
        final = stream.get_final_response()
    calls = [item for item in final.output if item.type == "function_call"]
    assert [(c.call_id, c.arguments) for c in calls] == [
        ("call_a", '{"city":"Paris"}'),
        ("call_b", '{"city":"Rome"}'),
    ]


DELTAS = st.lists(
    st.one_of(
        st.tuples(st.just("content"), st.text(min_size=1)),
        st.tuples(st.just("refusal"), st.text(min_size=1)),
        st.tuples(st.integers(min_value=0, max_value=2), st.text()),
    ),
    max_size=12,
)


@pytest.fixture(scope="module")
def replay() -> Iterator[tuple[openai.OpenAI, list[bytes]]]:
    """One SDK client for every example (building one is slow): it replays the frames last put
    in the list, and is closed after the module."""
    frames: list[bytes] = []

    def reply(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            200, headers={"content-type": "text/event-stream"}, content=b"".join(frames)
        )

    transport = httpx2.MockTransport(reply)
    with openai.OpenAI(
        api_key="test", base_url="http://router/v1", http_client=httpx2.Client(transport=transport)
    ) as client:
        yield client, frames


# The first SDK client a process builds is slow: no per-example deadline.
@settings(deadline=None)
@given(DELTAS, st.sampled_from(["stop", "length", "tool_calls"]))
def test_any_mix_of_deltas_streams_valid_events(
    replay: tuple[openai.OpenAI, list[bytes]],
    deltas: list[tuple[str | int, str]],
    finish_reason: str,
) -> None:
    chunks = []
    arguments: dict[str, str] = {}
    for key, value in deltas:
        if isinstance(key, int):
            call_id = f"call_{key}"
            first = call_id not in arguments
            arguments[call_id] = arguments.get(call_id, "") + value
            delta = call_delta(key, value, call_id=call_id if first else None, name="f")
            chunks.append(chunk(delta))
        else:
            chunks.append(chunk({key: value}))
    _, frames = run([*chunks, chunk({}, finish_reason), usage_chunk()])
    last = parse(frames)[-1]
    if finish_reason == "length":
        # The SDK's stream helper only returns a final response on `response.completed`.
        assert last["type"] == "response.incomplete"
        final = Response.model_validate(last["response"])
    else:
        client, replayed = replay
        replayed[:] = frames
        with client.responses.stream(model="m", input="x") as stream:
            final = stream.get_final_response()
    calls = {item.call_id: item.arguments for item in final.output if item.type == "function_call"}
    assert calls == arguments
    assert final.output_text == "".join(value for key, value in deltas if key == "content")
