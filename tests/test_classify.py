"""Classification rules and every precedence pair.

document > vision > long > code > json > text; document and long only when routed.
"""

from __future__ import annotations

from typing import Any

import pytest

from router.classify import RequestType, classify, estimate_input_tokens

USER = {"role": "user", "content": "hi"}
IMAGE = {
    "role": "user",
    "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
    ],
}
INPUT_IMAGE = {"role": "user", "content": [{"type": "input_image", "image_url": "data:x"}]}
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
SCHEMA = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}


def body(messages: list[Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": messages or [USER], **extra}


@pytest.mark.parametrize(
    ("request_body", "expected"),
    [
        (body(), RequestType.TEXT),
        (body(response_format={"type": "text"}), RequestType.TEXT),
        (body(response_format={"type": "json_object"}), RequestType.JSON),
        (body(response_format=SCHEMA), RequestType.JSON),
        (body(tools=TOOLS), RequestType.CODE),
        (body(tools=[]), RequestType.TEXT),
        (body(functions=[{"name": "f"}]), RequestType.CODE),
        (body(tool_choice="required"), RequestType.CODE),
        (body(tool_choice={"type": "function", "function": {"name": "f"}}), RequestType.CODE),
        (body(tool_choice="auto"), RequestType.TEXT),
        (body(tool_choice="none"), RequestType.TEXT),
        (body(function_call={"name": "f"}), RequestType.CODE),
        (body(function_call="auto"), RequestType.TEXT),
        (body([USER, {"role": "tool", "tool_call_id": "c", "content": "42"}]), RequestType.CODE),
        (body([USER, {"role": "function", "name": "f", "content": "42"}]), RequestType.CODE),
        (
            body([USER, {"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]}]),
            RequestType.CODE,
        ),
        (body([USER, {"role": "assistant", "function_call": {"name": "f"}}]), RequestType.CODE),
        (body([IMAGE]), RequestType.VISION),
        (body([INPUT_IMAGE]), RequestType.VISION),
        (body([{"role": "user", "content": [{"type": "text", "text": "x"}]}]), RequestType.TEXT),
    ],
)
def test_each_rule(request_body: dict[str, Any], expected: RequestType) -> None:
    assert classify(request_body) == expected


@pytest.mark.parametrize(
    ("request_body", "expected"),
    [
        (body([IMAGE], tools=TOOLS), RequestType.VISION),
        (body([IMAGE], response_format=SCHEMA), RequestType.VISION),
        (body([IMAGE], tools=TOOLS, response_format=SCHEMA), RequestType.VISION),
        (body([USER, IMAGE, {"role": "tool", "content": "x"}]), RequestType.VISION),
        (body(tools=TOOLS, response_format=SCHEMA), RequestType.CODE),
        (body([{"role": "tool", "content": "x"}], response_format=SCHEMA), RequestType.CODE),
        (body(response_format={"type": "json_object"}, tool_choice="auto"), RequestType.JSON),
    ],
)
def test_precedence(request_body: dict[str, Any], expected: RequestType) -> None:
    assert classify(request_body) == expected


def test_image_in_an_earlier_turn_still_needs_vision() -> None:
    later = {"role": "assistant", "content": "a cat"}
    assert classify(body([IMAGE, later, USER])) == RequestType.VISION


FILE = {"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}
INPUT_FILE = {"role": "user", "content": [{"type": "input_file", "file_data": "data:x"}]}
DOCUMENT = {"role": "user", "content": [{"type": "document", "source": {}}]}
LONG = {"role": "user", "content": "x" * 4004}  # 1,001 estimated tokens


@pytest.mark.parametrize(
    ("request_body", "expected"),
    [
        (body([FILE]), RequestType.DOCUMENT),
        (body([INPUT_FILE]), RequestType.DOCUMENT),
        (body([DOCUMENT]), RequestType.DOCUMENT),
        (body([FILE, IMAGE]), RequestType.DOCUMENT),
        (body([FILE, LONG], tools=TOOLS), RequestType.DOCUMENT),
        (body([IMAGE, LONG]), RequestType.VISION),
        (body([LONG], tools=TOOLS), RequestType.LONG),
        (body([LONG], response_format=SCHEMA), RequestType.LONG),
        (body([USER], tools=TOOLS), RequestType.CODE),
        (body([{"role": "user", "content": "x" * 4000}]), RequestType.TEXT),  # at, not over
    ],
)
def test_six_type_precedence(request_body: dict[str, Any], expected: RequestType) -> None:
    assert classify(request_body, documents=True, long_threshold=1000) == expected


def test_document_and_long_only_when_enabled() -> None:
    assert classify(body([FILE])) == RequestType.TEXT
    assert classify(body([FILE, IMAGE])) == RequestType.VISION
    assert classify(body([LONG], tools=TOOLS)) == RequestType.CODE
    assert classify(body([LONG]), long_threshold=1000) == RequestType.LONG
    assert classify(body([FILE]), long_threshold=1000) == RequestType.TEXT


def test_long_estimate_counts_parts_tool_calls_and_tools() -> None:
    calls = [{"id": "c", "function": {"name": "f", "arguments": "y" * 2000}}]
    parts = {"role": "user", "content": [{"type": "text", "text": "z" * 2000}]}
    assistant = {"role": "assistant", "content": None, "tool_calls": calls}
    assert estimate_input_tokens(body([parts, assistant])) == 1000
    assert estimate_input_tokens(body(tools=TOOLS)) > 10
