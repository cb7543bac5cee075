"""Request classification: which backend pool a chat request belongs to.

Precedence is document > vision > long > code > json > text. A file or an image is the hardest
requirement (a text-only model cannot serve it at all), an input beyond a standard context window
needs a long-context model whatever else it asks, a tool loop needs a model good at calling
functions, a JSON format only needs constrained decoding, which every pool can do. ``document``
and ``long`` exist only when routed: without them the four-type rules are unchanged.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import orjson

from router.survey import Survey, survey_of

IMAGE_PART_TYPES = frozenset({"image_url", "input_image"})
# Chat ``file`` parts, Responses ``input_file`` and Anthropic ``document`` blocks.
DOCUMENT_PART_TYPES = frozenset({"file", "input_file", "document"})
TOOL_ROLES = frozenset({"tool", "function"})
JSON_FORMATS = frozenset({"json_object", "json_schema"})
BYTES_PER_TOKEN = 4  # the estimate prefix.py uses too; the router has no tokenizer


class RequestType(StrEnum):
    DOCUMENT = "document"
    VISION = "vision"
    LONG = "long"
    CODE = "code"
    JSON = "json"
    TEXT = "text"


def classify(
    body: dict[str, Any],
    *,
    documents: bool = False,
    long_threshold: int | None = None,
    surveyed: Survey | None = None,
) -> RequestType:
    """Classify a (validated) Chat Completions body.

    ``documents`` enables the ``document`` type; ``long_threshold`` (estimated input tokens)
    enables ``long``. ``surveyed``: the survey of the messages, if at hand.
    """
    # A plain turn has no parts and is not a tool turn: only the others can say otherwise.
    document, image, tool_turn = _scan(survey_of(body, surveyed).other_messages())
    if documents and document:
        return RequestType.DOCUMENT
    if image:
        return RequestType.VISION
    if long_threshold is not None and estimate_input_tokens(body) > long_threshold:
        return RequestType.LONG
    if _uses_tools(body) or tool_turn:
        return RequestType.CODE
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") in JSON_FORMATS:
        return RequestType.JSON
    return RequestType.TEXT


def estimate_input_tokens(body: dict[str, Any]) -> int:
    """About how many tokens the prompt's text holds: its characters over four.

    Text content, tool calls and tool definitions count; images and files do not (their bytes
    say nothing about their tokens, and those types outrank ``long`` anyway).
    """
    size = 0
    tools = body.get("tools")
    if isinstance(tools, list):
        size += len(orjson.dumps(tools))
    for message in body.get("messages") or ():
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            size += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    size += len(part["text"])
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                size += len(str(function.get("arguments") or ""))
    return size // BYTES_PER_TOKEN


def _scan(messages: Any) -> tuple[bool, bool, bool]:
    """Whether any message has a document part, an image part, or is a tool turn: one pass
    over the messages (a long conversation is read once, not once per question)."""
    document = image = tool_turn = False
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict):
                    kind = part.get("type")
                    if kind in IMAGE_PART_TYPES:
                        image = True
                    elif kind in DOCUMENT_PART_TYPES:
                        document = True
        if not tool_turn:
            tool_turn = _is_tool_turn(message)
    return document, image, tool_turn


def _uses_tools(body: dict[str, Any]) -> bool:
    if body.get("tools") or body.get("functions"):
        return True
    return _forces_tool(body.get("tool_choice")) or _forces_tool(body.get("function_call"))


def _forces_tool(choice: Any) -> bool:
    # "required" and {"type": "function", ...} / {"name": ...} force a call; "auto"/"none" do not.
    return choice == "required" or isinstance(choice, dict)


def _is_tool_turn(message: Any) -> bool:
    if not isinstance(message, dict):
        return False
    return (
        message.get("role") in TOOL_ROLES
        or bool(message.get("tool_calls"))
        or bool(message.get("function_call"))
    )
