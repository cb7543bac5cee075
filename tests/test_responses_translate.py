"""Tests for router.responses.translate: Responses request <-> Chat Completions."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai.types.responses import (
    Response,
    ResponseFunctionToolCallItem,
    ResponseInputMessageItem,
    ResponseItem,
    ResponseOutputMessage,
)
from openai.types.responses.response_function_tool_call_output_item import (
    ResponseFunctionToolCallOutputItem,
)
from pydantic import TypeAdapter

from router.responses.translate import (
    ResponsesInputError,
    chat_to_response,
    count_input_tokens,
    input_items,
    request_to_chat,
    response_to_history,
)

RESPONSE_ITEM: TypeAdapter[Any] = TypeAdapter(ResponseItem)

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": True,
}


def chat_completion(
    content: str | None = "Hello there.",
    *,
    tool_calls: list[dict[str, Any]] | None = None,
    finish_reason: str = "stop",
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "backend-model-q4",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": usage
        or {
            "prompt_tokens": 12,
            "completion_tokens": 3,
            "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 8},
        },
    }


def tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def to_response(chat: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    return chat_to_response(chat, request=request, response_id="resp_abc", created_at=1700000001)


# --- request_to_chat: input shapes ------------------------------------------------------


def test_string_input_is_one_user_message() -> None:
    chat = request_to_chat({"model": "m", "input": "Hi"})
    assert chat == {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "stream": False}


def test_message_items_with_and_without_type() -> None:
    chat = request_to_chat(
        {
            "input": [
                {"role": "system", "content": "Be brief."},
                {"type": "message", "role": "developer", "content": "Use metric."},
                {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
                {
                    "type": "message",
                    "role": "assistant",
                    "id": "msg_prev",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": "Hello", "annotations": []}],
                },
            ]
        }
    )
    assert chat["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Use metric."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
    ]


def test_input_image_parts() -> None:
    chat = request_to_chat(
        {
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_image", "image_url": "https://x/a.png", "detail": "low"},
                        {"type": "input_image", "image_url": "data:image/png;base64,AA=="},
                        {
                            "type": "input_image",
                            "image_url": "https://x/b.png",
                            "detail": "original",
                        },
                    ],
                }
            ]
        }
    )
    assert chat["messages"][0]["content"] == [
        {"type": "image_url", "image_url": {"url": "https://x/a.png", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA==", "detail": "auto"}},
        {"type": "image_url", "image_url": {"url": "https://x/b.png", "detail": "high"}},
    ]


def test_function_calls_merge_into_one_assistant_message() -> None:
    chat = request_to_chat(
        {
            "input": [
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "function_call", "call_id": "call_1", "name": "w", "arguments": "{}"},
                {"type": "function_call", "call_id": "call_2", "name": "w", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
                {
                    "type": "function_call_output",
                    "call_id": "call_2",
                    "output": [{"type": "input_text", "text": "rain"}],
                },
            ]
        }
    )
    assert chat["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{}"}},
                {"id": "call_2", "type": "function", "function": {"name": "w", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "rain"}]},
    ]


def test_function_call_joins_the_preceding_assistant_message() -> None:
    chat = request_to_chat(
        {
            "input": [
                {"role": "assistant", "content": "Let me check."},
                {"type": "function_call", "call_id": "call_1", "name": "w", "arguments": "{}"},
            ]
        }
    )
    assert chat["messages"] == [
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{}"}}
            ],
        }
    ]


def test_cache_control_is_carried_over() -> None:
    mark = {"type": "ephemeral"}
    chat = request_to_chat(
        {
            "input": [
                {"role": "system", "content": "Long rules.", "cache_control": mark},
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "Doc", "cache_control": mark},
                        {
                            "type": "input_image",
                            "image_url": "https://x/a.png",
                            "cache_control": mark,
                        },
                        {"type": "input_text", "text": "Question"},
                    ],
                },
                {
                    "type": "function_call_output",
                    "call_id": "c",
                    "output": "x",
                    "cache_control": mark,
                },
            ]
        }
    )
    system, user, tool = chat["messages"]
    assert system == {"role": "system", "content": "Long rules.", "cache_control": mark}
    assert user["content"][0] == {"type": "text", "text": "Doc", "cache_control": mark}
    assert user["content"][1]["cache_control"] == mark
    assert "cache_control" not in user["content"][2]
    assert "cache_control" not in user
    assert tool["cache_control"] == mark


def test_cache_control_on_tools_function_calls_and_body() -> None:
    mark = {"type": "ephemeral", "ttl": "1h"}
    chat = request_to_chat(
        {
            "cache_control": mark,
            "tools": [{**WEATHER_TOOL, "cache_control": mark}],
            "input": [
                {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
                {
                    "type": "function_call",
                    "call_id": "d",
                    "name": "f",
                    "arguments": "{}",
                    "cache_control": mark,
                },
            ],
        }
    )
    assert chat["cache_control"] == mark
    assert chat["tools"][0]["cache_control"] == mark
    assert "cache_control" not in chat["tools"][0]["function"]
    (assistant,) = chat["messages"]
    assert assistant["cache_control"] == mark
    assert len(assistant["tool_calls"]) == 2


def test_instructions_and_history() -> None:
    history = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
    ]
    chat = request_to_chat(
        {"instructions": "Answer in French.", "input": "What is my name?"}, history
    )
    assert chat["messages"] == [
        {"role": "system", "content": "Answer in French."},
        *history,
        {"role": "user", "content": "What is my name?"},
    ]
    assert len(history) == 2


# --- request_to_chat: options -----------------------------------------------------------


def test_tools_tool_choice_and_options() -> None:
    chat = request_to_chat(
        {
            "model": "llama",
            "input": "hi",
            "tools": [WEATHER_TOOL, {"type": "function", "name": "noop"}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "parallel_tool_calls": False,
            "max_output_tokens": 64,
            "temperature": 0.2,
            "top_p": 1,
            "user": "u1",
            "seed": 7,
            "stop": ["\n"],
            "top_logprobs": 2,
            "metadata": {"k": "v"},
            "store": True,
            "previous_response_id": "resp_old",
            "include": ["message.output_text.logprobs"],
            "truncation": "auto",
            "reasoning": {"effort": "low"},
            "background": False,
            "instructions": "x",
        }
    )
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": WEATHER_TOOL["parameters"],
                "strict": True,
            },
        },
        {"type": "function", "function": {"name": "noop"}},
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    expected = {
        "model": "llama",
        "parallel_tool_calls": False,
        "max_completion_tokens": 64,
        "temperature": 0.2,
        "top_p": 1,
        "user": "u1",
        "seed": 7,
        "stop": ["\n"],
        "top_logprobs": 2,
        "logprobs": True,
        "stream": False,
    }
    assert {k: v for k, v in chat.items() if k not in ("tools", "tool_choice", "messages")} == (
        expected
    )


@pytest.mark.parametrize("choice", ["auto", "none", "required"])
def test_tool_choice_strings_pass(choice: str) -> None:
    assert request_to_chat({"input": "x", "tool_choice": choice})["tool_choice"] == choice


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ({"type": "text"}, None),
        ({"type": "json_object"}, {"type": "json_object"}),
        (
            {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": True},
            {
                "type": "json_schema",
                "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": True},
            },
        ),
    ],
)
def test_text_format(fmt: dict[str, Any], expected: dict[str, Any] | None) -> None:
    chat = request_to_chat({"input": "x", "text": {"format": fmt}})
    assert chat.get("response_format") == expected


def test_text_without_format_adds_nothing() -> None:
    assert "response_format" not in request_to_chat({"input": "x", "text": {"verbosity": "low"}})


def test_assistant_refusal_parts() -> None:
    body = {
        "input": [
            {"role": "user", "content": "Do the bad thing."},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]},
        ]
    }
    assert request_to_chat(body)["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "refusal", "refusal": "No."}],
    }
    listed = input_items(body)[1]
    assert isinstance(RESPONSE_ITEM.validate_python(listed), ResponseOutputMessage)
    assert listed["content"] == [{"type": "refusal", "refusal": "No."}]


def test_stream_asks_for_usage() -> None:
    chat = request_to_chat({"input": "x", "stream": True})
    assert chat["stream"] is True
    assert chat["stream_options"] == {"include_usage": True}


# --- request_to_chat: errors ------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m"}, "input"),
        ({"input": 3}, "input"),
        ({"input": []}, "input"),
        ({"input": ["hi"]}, "input[0]"),
        (
            {"input": [{"role": "user", "content": "a"}, {"type": "item_reference"}]},
            "input[1].type",
        ),
        ({"input": [{"role": "tool", "content": "a"}]}, "input[0].role"),
        ({"input": [{"role": "user", "content": 5}]}, "input[0].content"),
        ({"input": [{"role": "user", "content": ["hi"]}]}, "input[0].content[0]"),
        (
            {"input": [{"role": "assistant", "content": [{"type": "refusal"}]}]},
            "input[0].content[0].refusal",
        ),
        ({"input": [{"role": "user", "content": [{"type": "audio"}]}]}, "input[0].content[0].type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "filename": "f"}]}]},
            "input[0].content[0].file_data",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": 1}]}]},
            "input[0].content[0].text",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input[0].content[0].file_id",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image"}]}]},
            "input[0].content[0].image_url",
        ),
        (
            {
                "input": [
                    {
                        "role": "user",
                        "content": [{"type": "input_image", "image_url": "u", "detail": "max"}],
                    }
                ]
            },
            "input[0].content[0].detail",
        ),
        (
            {
                "input": [
                    {"role": "assistant", "content": [{"type": "input_image", "image_url": "u"}]}
                ]
            },
            "input[0].content[0].type",
        ),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f"}]}, "input[0].arguments"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        ({"input": [{"type": "function_call_output", "call_id": "c"}]}, "input[0].output"),
        ({"input": "x", "instructions": ["a"]}, "instructions"),
        ({"input": "x", "tools": {}}, "tools"),
        ({"input": "x", "tools": ["f"]}, "tools[0]"),
        ({"input": "x", "tools": [WEATHER_TOOL, {"type": "web_search"}]}, "tools[1].type"),
        ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"input": "x", "tool_choice": "any"}, "tool_choice"),
        ({"input": "x", "tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
        ({"input": "x", "tool_choice": {"type": "function"}}, "tool_choice.name"),
        ({"input": "x", "text": "json"}, "text"),
        ({"input": "x", "text": {"format": "json"}}, "text.format"),
        ({"input": "x", "text": {"format": {"type": "grammar"}}}, "text.format.type"),
        (
            {"input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}},
            "text.format.schema",
        ),
        (
            {"input": "x", "text": {"format": {"type": "json_schema", "schema": {}}}},
            "text.format.name",
        ),
        ({"input": "x", "max_output_tokens": "10"}, "max_output_tokens"),
        ({"input": "x", "max_output_tokens": True}, "max_output_tokens"),
        ({"input": "x", "temperature": "hot"}, "temperature"),
        ({"input": "x", "seed": 1.5}, "seed"),
        ({"input": "x", "parallel_tool_calls": 1}, "parallel_tool_calls"),
        ({"input": "x", "model": 4}, "model"),
        ({"input": "x", "stream": "yes"}, "stream"),
    ],
)
def test_invalid_requests_name_the_param(body: dict[str, Any], param: str) -> None:
    with pytest.raises(ResponsesInputError) as caught:
        request_to_chat(body)
    assert caught.value.param == param
    assert isinstance(caught.value, ValueError)
    assert caught.value.message


def test_non_object_body() -> None:
    with pytest.raises(ResponsesInputError) as caught:
        request_to_chat([])  # type: ignore[arg-type]
    assert caught.value.param is None


# --- chat_to_response -------------------------------------------------------------------


def test_text_completion_validates_as_response() -> None:
    request = {"model": "gpt-4o", "input": "Hi", "instructions": "Be nice", "temperature": 0.5}
    obj = to_response(chat_completion(), request)
    response = Response.model_validate(obj)
    assert response.output_text == "Hello there."
    assert response.model == "gpt-4o"
    assert response.status == "completed"
    assert response.instructions == "Be nice"
    assert response.temperature == 0.5
    assert response.tool_choice == "auto"
    assert response.parallel_tool_calls is True
    assert response.text is not None and response.text.format is not None
    assert response.text.format.type == "text"
    assert obj["output"][0]["id"].startswith("msg_")
    assert obj["output"][0]["status"] == "completed"
    assert obj["usage"] == {
        "input_tokens": 12,
        "input_tokens_details": {"cached_tokens": 8, "cache_write_tokens": 0},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 15,
    }
    assert obj["error"] is None and obj["incomplete_details"] is None


def test_tool_calls_become_function_call_items() -> None:
    request = {
        "model": "m",
        "input": "Weather?",
        "tools": [WEATHER_TOOL],
        "tool_choice": "required",
    }
    chat = chat_completion(
        "Checking.",
        tool_calls=[
            tool_call("call_a", "get_weather", '{"city":"Paris"}'),
            tool_call("call_b", "get_weather", '{"city":"Rome"}'),
        ],
        finish_reason="tool_calls",
    )
    obj = to_response(chat, request)
    response = Response.model_validate(obj)
    assert [item.type for item in response.output] == ["message", "function_call", "function_call"]
    calls = [item for item in obj["output"] if item["type"] == "function_call"]
    assert [(c["call_id"], c["name"], c["arguments"]) for c in calls] == [
        ("call_a", "get_weather", '{"city":"Paris"}'),
        ("call_b", "get_weather", '{"city":"Rome"}'),
    ]
    assert all(c["id"].startswith("fc_") and c["status"] == "completed" for c in calls)
    assert len({item["id"] for item in obj["output"]}) == 3
    assert response.tools[0].type == "function"


def test_tool_calls_without_content_have_no_message_item() -> None:
    chat = chat_completion(None, tool_calls=[tool_call("call_a", "f", "{}")])
    obj = to_response(chat, {"model": "m", "input": "x"})
    assert [item["type"] for item in obj["output"]] == ["function_call"]
    assert Response.model_validate(obj).output_text == ""


def test_length_finish_is_incomplete() -> None:
    obj = to_response(chat_completion("Once upon", finish_reason="length"), {"input": "x"})
    response = Response.model_validate(obj)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "Once upon"


def test_refusal_and_missing_usage() -> None:
    chat = chat_completion(None)
    chat["choices"][0]["message"]["refusal"] = "I can't help with that."
    del chat["usage"]
    obj = to_response(chat, {"model": "m", "input": "x"})
    response = Response.model_validate(obj)
    assert obj["output"][0]["content"] == [
        {"type": "refusal", "refusal": "I can't help with that."}
    ]
    assert response.usage is None


def test_content_as_a_list_of_parts() -> None:
    chat = chat_completion(None)
    chat["choices"][0]["message"]["content"] = [
        {"type": "text", "text": "Hel"},
        {"type": "text", "text": "lo"},
    ]
    assert Response.model_validate(to_response(chat, {"input": "x"})).output_text == "Hello"


def test_echoes_text_format_and_request_settings() -> None:
    fmt = {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": True}
    request = {
        "model": "m",
        "input": "x",
        "text": {"format": fmt},
        "max_output_tokens": 10,
        "metadata": {"a": "b"},
        "previous_response_id": "resp_prev",
        "store": False,
        "parallel_tool_calls": False,
    }
    response = Response.model_validate(to_response(chat_completion('{"a":1}'), request))
    assert response.text is not None and response.text.format is not None
    assert response.text.format.type == "json_schema"
    assert response.max_output_tokens == 10
    assert response.metadata == {"a": "b"}
    assert response.previous_response_id == "resp_prev"
    assert response.parallel_tool_calls is False
    assert response.to_dict()["store"] is False


# --- response_to_history ----------------------------------------------------------------


def test_history_drops_instructions_and_appends_output() -> None:
    request = {"model": "m", "instructions": "Be terse.", "input": "Weather?"}
    chat = request_to_chat(request)
    completion = chat_completion("Checking.", tool_calls=[tool_call("call_a", "w", "{}")])
    history = response_to_history(chat["messages"], to_response(completion, request))
    assert history == [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "w", "arguments": "{}"}}
            ],
        },
    ]
    follow_up = {
        "instructions": "Be verbose.",
        "input": [{"type": "function_call_output", "call_id": "call_a", "output": "sun"}],
    }
    assert request_to_chat(follow_up, history)["messages"] == [
        {"role": "system", "content": "Be verbose."},
        *history,
        {"role": "tool", "tool_call_id": "call_a", "content": "sun"},
    ]


def test_history_keeps_a_refusal() -> None:
    chat = chat_completion(None)
    chat["choices"][0]["message"]["refusal"] = "No."
    history = response_to_history([{"role": "user", "content": "Q"}], to_response(chat, {}))
    assert history[-1] == {"role": "assistant", "content": "", "refusal": "No."}


def test_history_keeps_a_system_message_from_input() -> None:
    request = {"input": [{"role": "system", "content": "Rules."}, {"role": "user", "content": "Q"}]}
    chat = request_to_chat(request)
    history = response_to_history(chat["messages"], to_response(chat_completion(""), request))
    assert history == [
        {"role": "system", "content": "Rules."},
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": ""},
    ]


# --- input_items ------------------------------------------------------------------------


def test_input_items_for_string_input() -> None:
    items = input_items({"input": "Hi"})
    assert len(items) == 1
    item = RESPONSE_ITEM.validate_python(items[0])
    assert isinstance(item, ResponseInputMessageItem)
    assert items[0]["content"] == [{"type": "input_text", "text": "Hi"}]
    assert items[0]["id"].startswith("msg_")
    assert items == input_items({"input": "Hi"})


def test_input_items_for_each_item_type() -> None:
    body = {
        "input": [
            {"role": "developer", "content": "Rules."},
            {
                "type": "message",
                "id": "msg_given",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Look"},
                    {"type": "input_image", "image_url": "https://x/a.png"},
                ],
            },
            {"role": "assistant", "content": "Ok."},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "done"},
        ]
    }
    items = input_items(body)
    kinds = [type(RESPONSE_ITEM.validate_python(item)) for item in items]
    assert kinds == [
        ResponseInputMessageItem,
        ResponseInputMessageItem,
        ResponseOutputMessage,
        ResponseFunctionToolCallItem,
        ResponseFunctionToolCallOutputItem,
    ]
    assert items[1]["id"] == "msg_given"
    assert items[1]["content"][1] == {
        "type": "input_image",
        "image_url": "https://x/a.png",
        "detail": "auto",
    }
    assert items[0]["role"] == "developer"
    assert [item["id"][:3] for item in items] == ["msg", "msg", "msg", "fc_", "fco"]
    assert len({item["id"] for item in items}) == len(items)


def test_input_items_rejects_what_request_to_chat_rejects() -> None:
    with pytest.raises(ResponsesInputError) as caught:
        input_items({"input": [{"type": "web_search_call"}]})
    assert caught.value.param == "input[0].type"


# --- count_input_tokens -----------------------------------------------------------------


def test_count_input_tokens_estimate() -> None:
    body = {
        "instructions": "Be brief.",  # 3 words/marks + 1 role
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What's this?"},  # What ' s this ? = 5
                    {"type": "input_image", "image_url": "https://x/a.png"},  # 85
                ],
            },  # + 1 role
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},  # 1 + 2 + 1
            {"type": "function_call_output", "call_id": "c", "output": "ok"},  # 1 + 1
        ],
    }
    assert count_input_tokens(body) == 4 + 91 + 4 + 2
    with_tool = {**body, "tools": [{"type": "function", "name": "f"}]}
    # [{"type":"function","function":{"name":"f"}}]: 4 words, 21 marks
    assert count_input_tokens(with_tool) == 101 + 25


@given(st.text())
def test_count_input_tokens_grows_with_text(text: str) -> None:
    base = count_input_tokens({"input": text})
    assert base >= 1
    assert count_input_tokens({"input": text + " more"}) == base + 1


# --- any JSON body: translated or rejected, never a crash -------------------------------

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
WORDS = st.sampled_from(
    [
        "message", "user", "assistant", "developer", "system", "input_text", "output_text",
        "input_image", "refusal", "function_call", "function_call_output", "reasoning",
        "function", "auto", "low", "original", "json_schema", "json_object", "text",
    ]
)  # fmt: skip
KEYS = st.sampled_from(
    [
        "type", "role", "content", "text", "image_url", "detail", "file_id", "call_id", "name",
        "arguments", "output", "refusal", "id", "cache_control", "format", "schema", "strict",
    ]
)  # fmt: skip
PARTS = st.dictionaries(KEYS, WORDS | JSON_VALUES, max_size=5)
ITEMS = st.dictionaries(KEYS, WORDS | JSON_VALUES | st.lists(PARTS, max_size=3), max_size=6)
BODIES = st.fixed_dictionaries(
    {},
    optional={
        "input": st.text() | st.lists(ITEMS, max_size=4) | JSON_VALUES,
        "instructions": st.text() | JSON_VALUES,
        "tools": st.lists(ITEMS, max_size=2) | JSON_VALUES,
        "tool_choice": WORDS | ITEMS,
        "text": st.fixed_dictionaries({"format": ITEMS}) | JSON_VALUES,
        "max_output_tokens": JSON_VALUES,
        "temperature": JSON_VALUES,
        "stream": JSON_VALUES,
    },
)


@given(BODIES)
def test_any_body_is_translated_or_rejected(body: dict[str, Any]) -> None:
    try:
        chat = request_to_chat(body)
    except ResponsesInputError as error:
        root = (error.param or "input").split("[")[0].split(".")[0]
        assert root in body or root == "input"
        return
    assert chat["messages"]
    for item in input_items(body):
        RESPONSE_ITEM.validate_python(item)
    assert count_input_tokens(body) >= len(chat["messages"])
