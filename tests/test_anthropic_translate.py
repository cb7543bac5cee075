"""Pure Messages <-> chat translation: request shapes, prefix-key parity, replies and events."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from router.anthropic import (
    ChatToMessageEvents,
    MessagesInputError,
    chat_to_message,
    estimate_input_tokens,
    request_to_chat,
    strip_markers,
)
from router.chain import build_chain
from router.classify import RequestType, classify

MARK = {"type": "ephemeral"}
SCHEMA = {"type": "object", "properties": {"q": {"type": "string"}}}


def messages_body(**fields: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
        **fields,
    }


def test_system_blocks_tools_and_options() -> None:
    chat = request_to_chat(
        messages_body(
            system=[
                {
                    "type": "text",
                    "text": "Be terse.",
                    "cache_control": {**MARK, "ttl": "1h", "scope": "x"},
                }
            ],
            tools=[
                {"name": "f", "description": "d", "input_schema": SCHEMA, "cache_control": MARK}
            ],
            tool_choice={"type": "any", "disable_parallel_tool_use": True},
            stop_sequences=["END"],
            temperature=0.5,
            top_k=3,
            metadata={"user_id": "u"},
            stream=True,
            thinking={"type": "enabled", "budget_tokens": 2048},
        )
    )
    assert chat["messages"][0] == {
        "role": "system",
        # ttl is kept (it sets the index lifetime); scope stops here.
        "content": [{"type": "text", "text": "Be terse.", "cache_control": {**MARK, "ttl": "1h"}}],
    }
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {"name": "f", "parameters": SCHEMA, "description": "d"},
            "cache_control": MARK,
        }
    ]
    assert chat["tool_choice"] == "required" and chat["parallel_tool_calls"] is False
    assert chat["stop"] == ["END"] and chat["temperature"] == 0.5 and chat["top_k"] == 3
    assert chat["user"] == "u" and chat["max_completion_tokens"] == 10
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}
    assert "thinking" not in chat


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "f"}, {"type": "function", "function": {"name": "f"}}),
    ],
)
def test_tool_choices(choice: Any, expected: Any) -> None:
    assert request_to_chat(messages_body(tool_choice=choice))["tool_choice"] == expected


def test_tool_loop_blocks() -> None:
    chat = request_to_chat(
        messages_body(
            messages=[
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hmm", "signature": "s"},
                        {"type": "text", "text": "Let me look."},
                        {"type": "tool_use", "id": "t1", "name": "f", "input": {"q": "x"}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "content": "sunny",
                            "cache_control": MARK,
                        },
                        {
                            "type": "tool_result",
                            "tool_use_id": "t2",
                            "content": [{"type": "text", "text": "no"}],
                            "is_error": True,
                        },
                        {"type": "text", "text": "thanks"},
                    ],
                },
            ]
        )
    )
    assert chat["messages"][1:] == [
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "Let me look."}],
            "tool_calls": [
                {
                    "id": "t1",
                    "type": "function",
                    "function": {"name": "f", "arguments": '{"q":"x"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "t1", "content": "sunny", "cache_control": MARK},
        {
            "role": "tool",
            "tool_call_id": "t2",
            "content": [{"type": "text", "text": "Error:"}, {"type": "text", "text": "no"}],
        },
        {"role": "user", "content": [{"type": "text", "text": "thanks"}]},
    ]
    assert classify(chat) == RequestType.CODE


def test_images_and_documents() -> None:
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}},
        {"type": "image", "source": {"type": "url", "url": "https://x/a.png"}},
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
            "title": "a.pdf",
        },
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "hi"}},
        {"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}},
    ]
    chat = request_to_chat(messages_body(messages=[{"role": "user", "content": content}]))
    parts = chat["messages"][0]["content"]
    assert parts[0] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}}
    assert parts[1] == {"type": "image_url", "image_url": {"url": "https://x/a.png"}}
    assert parts[2] == {
        "type": "file",
        "file": {"file_data": "data:application/pdf;base64,JVBE", "filename": "a.pdf"},
    }
    assert parts[3] == {"type": "file", "file": {"file_data": "data:text/plain;base64,aGk="}}
    assert parts[4] == {"type": "file", "file": {"file_url": "https://x/a.pdf"}}
    assert classify(chat) == RequestType.VISION
    assert classify(chat, documents=True) == RequestType.DOCUMENT


def test_prefix_keys_equal_the_chat_conversations() -> None:
    """The same conversation spelled in chat and in Messages has the same prefix keys."""
    system = "You are a helpful assistant. " * 20
    chat_body = {
        "model": "m",
        "tools": [
            {
                "type": "function",
                "function": {"name": "f", "description": "d", "parameters": SCHEMA},
                "cache_control": MARK,
            }
        ],
        "messages": [
            {
                "role": "system",
                "content": [{"type": "text", "text": system, "cache_control": MARK}],
            },
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "second", "cache_control": MARK}],
            },
        ],
    }
    anthropic_body = messages_body(
        tools=[{"name": "f", "description": "d", "input_schema": SCHEMA, "cache_control": MARK}],
        system=[{"type": "text", "text": system, "cache_control": MARK}],
        messages=[
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": [{"type": "text", "text": "first answer"}]},
            {
                "role": "user",
                "content": [{"type": "text", "text": "second", "cache_control": MARK}],
            },
        ],
    )
    translated = request_to_chat(anthropic_body)
    ours, theirs = build_chain(translated, "ns"), build_chain(chat_body, "ns")
    assert [p.key for p in ours.records] == [p.key for p in theirs.records]
    assert len(theirs.records) == 3


def test_strip_markers_leaves_everything_else() -> None:
    body = messages_body(
        cache_control=MARK,
        system=[{"type": "text", "text": "s", "cache_control": MARK}],
        tools=[
            {
                "name": "f",
                "input_schema": {"properties": {"cache_control": {}}},
                "cache_control": MARK,
            }
        ],
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t",
                        "cache_control": MARK,
                        "content": [{"type": "text", "text": "x", "cache_control": MARK}],
                    }
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "t", "name": "f", "input": {"cache_control": 1}}
                ],
            },
        ],
    )
    before = orjson.dumps(body)
    stripped = strip_markers(body)
    assert orjson.dumps(body) == before  # the input is not modified
    assert "cache_control" not in stripped
    assert stripped["system"] == [{"type": "text", "text": "s"}]
    assert stripped["tools"][0] == {
        "name": "f",
        "input_schema": {"properties": {"cache_control": {}}},
    }
    result = stripped["messages"][0]["content"][0]
    assert result == {
        "type": "tool_result",
        "tool_use_id": "t",
        "content": [{"type": "text", "text": "x"}],
    }
    assert stripped["messages"][1]["content"][0]["input"] == {"cache_control": 1}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_tokens": None}, "max_tokens"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}],
                    }
                ]
            },
            "messages.0.content.0.source.type",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "tool_use", "id": "x", "name": "f", "input": {}}],
                    }
                ]
            },
            "messages.0.content.0.type",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "x", "name": "f", "input": []}],
                    }
                ]
            },
            "messages.0.content.0.input",
        ),
        ({"output_config": {"format": {"type": "json_schema"}}}, "output_config.format.schema"),
        ({"metadata": {"user_id": 5}}, "metadata.user_id"),
    ],
)
def test_bad_requests_name_the_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(MessagesInputError) as caught:
        request_to_chat(messages_body(**fields))
    assert caught.value.param == param
    assert caught.value.message.startswith(param + ": ")


def test_output_format_is_json() -> None:
    chat = request_to_chat(
        messages_body(output_config={"format": {"type": "json_schema", "schema": SCHEMA}})
    )
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": SCHEMA},
    }
    assert classify(chat) == RequestType.JSON


def completion(message: dict[str, Any], finish: str, **choice: Any) -> dict[str, Any]:
    return {
        "choices": [{"index": 0, "message": message, "finish_reason": finish, **choice}],
        "usage": {
            "prompt_tokens": 100,
            "completion_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": 64, "cache_write_tokens": 16},
        },
    }


def test_reply_usage_excludes_cached_tokens() -> None:
    message = chat_to_message(
        completion({"content": "hello"}, "stop"), message_id="msg_1", model="c"
    )
    assert message == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "c",
        "content": [{"type": "text", "text": "hello"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 20,
            "output_tokens": 7,
            "cache_creation_input_tokens": 16,
            "cache_read_input_tokens": 64,
        },
    }


@pytest.mark.parametrize(
    ("finish", "extra", "reason", "sequence"),
    [
        ("length", {}, "max_tokens", None),
        ("tool_calls", {}, "tool_use", None),
        ("content_filter", {}, "refusal", None),
        ("stop", {"stop_reason": "END"}, "stop_sequence", "END"),
        ("stop", {"stop_reason": 2}, "end_turn", None),  # a stop token id, not a sequence
    ],
)
def test_stop_reasons(
    finish: str, extra: dict[str, Any], reason: str, sequence: str | None
) -> None:
    message = chat_to_message(
        completion({"content": "x"}, finish, **extra),
        message_id="msg_1",
        model="c",
        stop_sequences=["END"],
    )
    assert (message["stop_reason"], message["stop_sequence"]) == (reason, sequence)


def test_reply_tool_calls_become_tool_use_blocks() -> None:
    calls = [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"q": "x"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "not json"}},
    ]
    message = chat_to_message(
        completion({"content": None, "tool_calls": calls}, "tool_calls"),
        message_id="msg_1",
        model="c",
    )
    assert message["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "f", "input": {"q": "x"}},
        {"type": "tool_use", "id": "call_2", "name": "g", "input": {"arguments": "not json"}},
    ]


def events_of(frames: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for frame in frames:
        head, _, data = frame.partition(b"\ndata: ")
        assert frame.endswith(b"\n\n")
        out.append((head.removeprefix(b"event: ").decode(), orjson.loads(data)))
    return out


def chunk(delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        out = {"choices": [], "usage": usage}
    return out


def test_stream_events_text_then_tool_calls() -> None:
    events = ChatToMessageEvents(message_id="msg_1", model="c")
    frames = events.start()
    frames += events.feed(chunk({"role": "assistant", "content": ""}))
    frames += events.feed(chunk({"content": "Hel"}))
    frames += events.feed(chunk({"content": "lo"}))
    frames += events.feed(
        chunk(
            {
                "tool_calls": [
                    {"index": 0, "id": "call_a", "function": {"name": "f", "arguments": '{"q"'}}
                ]
            }
        )
    )
    frames += events.feed(
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": ': "x"}'}}]})
    )
    frames += events.feed(
        chunk(
            {
                "tool_calls": [
                    {"index": 1, "id": "call_b", "function": {"name": "g", "arguments": "{}"}}
                ]
            }
        )
    )
    frames += events.feed(chunk({}, "tool_calls"))
    frames += events.feed(
        chunk(
            {},
            usage={
                "prompt_tokens": 10,
                "completion_tokens": 5,
                "prompt_tokens_details": {"cached_tokens": 4},
            },
        )
    )
    frames += events.finish()
    got = events_of(frames)
    assert [kind for kind, _ in got] == [
        "message_start", "ping",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]  # fmt: skip
    assert all(kind == data["type"] for kind, data in got)
    assert got[0][1]["message"]["model"] == "c" and got[0][1]["message"]["content"] == []
    assert got[2][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert got[4][1]["delta"] == {"type": "text_delta", "text": "lo"}
    assert got[6][1]["content_block"] == {
        "type": "tool_use",
        "id": "call_a",
        "name": "f",
        "input": {},
    }
    assert got[8][1] == {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": ': "x"}'},
    }
    assert got[10][1]["index"] == 2
    assert got[13][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {
            "input_tokens": 6,
            "output_tokens": 5,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 4,
        },
    }


def test_stream_failure_is_one_error_event() -> None:
    events = ChatToMessageEvents(message_id="msg_1", model="c")
    events.start()
    events.feed(chunk({"content": "x"}))
    got = events_of(events.fail("broke"))
    assert got == [("error", {"type": "error", "error": {"type": "api_error", "message": "broke"}})]
    assert events.ended


def test_token_estimate_counts_text_tools_and_images() -> None:
    plain = estimate_input_tokens(request_to_chat(messages_body()))
    assert plain == 2  # the role marker and "hi"
    image = {"type": "image", "source": {"type": "url", "url": "https://x/a.png"}}
    with_image = request_to_chat(messages_body(messages=[{"role": "user", "content": [image]}]))
    assert estimate_input_tokens(with_image) == 1 + 85
    tools = [{"name": "f", "input_schema": SCHEMA}]
    assert estimate_input_tokens(request_to_chat(messages_body(tools=tools))) > plain
