"""Request classification: which backend pool a chat request belongs to.

Precedence is vision > code > json > text. An image is the hardest requirement (a text-only
model cannot serve it at all), a tool loop needs a model good at calling functions, a JSON
format only needs constrained decoding, which every pool can do.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

IMAGE_PART_TYPES = frozenset({"image_url", "input_image"})
TOOL_ROLES = frozenset({"tool", "function"})
JSON_FORMATS = frozenset({"json_object", "json_schema"})


class RequestType(StrEnum):
    VISION = "vision"
    CODE = "code"
    JSON = "json"
    TEXT = "text"


def classify(body: dict[str, Any]) -> RequestType:
    """Classify a (validated) Chat Completions body."""
    messages = body.get("messages") or ()
    if any(_has_image(m) for m in messages):
        return RequestType.VISION
    if _uses_tools(body) or any(_is_tool_turn(m) for m in messages):
        return RequestType.CODE
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") in JSON_FORMATS:
        return RequestType.JSON
    return RequestType.TEXT


def _has_image(message: Any) -> bool:
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list):
        return False
    return any(isinstance(p, dict) and p.get("type") in IMAGE_PART_TYPES for p in content)


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
