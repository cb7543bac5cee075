"""Chat completions -> Anthropic Message objects: content, stop reason, usage (pure).

Shared by the JSON path (``chat_to_message``) and the stream (``stream.ChatToMessageEvents``),
so the two cannot drift apart. The model is the client's own id, whatever served it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import orjson

# Chat finish reasons as Anthropic stop reasons.
_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_WORD = re.compile(r"\w+|[^\w\s]")
_IMAGE_TOKENS = 85


def message_shell(message_id: str, model: str) -> dict[str, Any]:
    """A Message with no content yet (``message_start``'s, and the JSON answer's start)."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage_from_chat(None),
    }


def usage_from_chat(usage: Any) -> dict[str, Any]:
    """Anthropic usage from a chat ``usage``: input tokens exclude the cached ones.

    ``cache_read_input_tokens`` is the backend's ``cached_tokens``; ``cache_creation_input_tokens``
    its ``cache_write_tokens`` when it reports one (vLLM and SGLang do not: then 0). The router
    never invents a count.
    """
    usage = usage if isinstance(usage, dict) else {}
    details = usage.get("prompt_tokens_details")
    details = details if isinstance(details, dict) else {}
    prompt = _int(usage.get("prompt_tokens"))
    cached = _int(details.get("cached_tokens"))
    written = _int(details.get("cache_write_tokens"))
    return {
        "input_tokens": max(prompt - cached - written, 0),
        "output_tokens": _int(usage.get("completion_tokens")),
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached,
    }


def stop_reason(choice: dict[str, Any], stop_sequences: Sequence[str]) -> tuple[str, str | None]:
    """Anthropic's ``stop_reason`` and ``stop_sequence`` for a chat choice.

    vLLM and SGLang name the stop string that ended the text in ``stop_reason``; without it a
    stop is ``end_turn``.
    """
    finish = choice.get("finish_reason")
    matched = choice.get("stop_reason")
    if finish == "stop" and isinstance(matched, str) and matched in stop_sequences:
        return "stop_sequence", matched
    return _STOP_REASONS.get(finish or "stop", "end_turn"), None


def tool_input(arguments: str) -> dict[str, Any]:
    """A tool call's arguments as Anthropic's ``input`` object.

    A model that produced something other than a JSON object still gets its text through,
    under ``arguments``, rather than silently losing it.
    """
    if not arguments.strip():
        return {}
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {"arguments": arguments}
    return parsed if isinstance(parsed, dict) else {"arguments": parsed}


def chat_to_message(
    chat: dict[str, Any], *, message_id: str, model: str, stop_sequences: Sequence[str] = ()
) -> dict[str, Any]:
    """The Message for a ``chat.completion`` (choice 0)."""
    choices = chat.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    result = message_shell(message_id, model)
    content = message.get("content")
    if isinstance(content, list):  # some backends answer with text parts
        content = "".join(p.get("text") or "" for p in content if isinstance(p, dict))
    if isinstance(content, str) and content:
        result["content"].append({"type": "text", "text": content})
    for index, call in enumerate(message.get("tool_calls") or []):
        function = call.get("function") or {}
        result["content"].append(
            {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{message_id.removeprefix('msg_')}_{index}",
                "name": function.get("name") or "",
                "input": tool_input(function.get("arguments") or ""),
            }
        )
    result["stop_reason"], result["stop_sequence"] = stop_reason(choice, stop_sequences)
    result["usage"] = usage_from_chat(chat.get("usage"))
    return result


def estimate_input_tokens(chat: dict[str, Any]) -> int:
    """An estimate of a translated request's input tokens, for ``/v1/messages/count_tokens``.

    Not the backend tokenizer's count: words and punctuation marks count one each, an image
    85, a file its text or a quarter of its bytes, each message one for its role, tool
    definitions the words of their JSON.
    """
    tokens = 0
    for message in chat["messages"]:
        tokens += 1 + _content_tokens(message.get("content"))
        for call in message.get("tool_calls") or []:
            tokens += len(
                _WORD.findall(call["function"]["name"] + " " + call["function"]["arguments"])
            )
    if "tools" in chat:
        tokens += len(_WORD.findall(orjson.dumps(chat["tools"]).decode()))
    return tokens


def _content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return len(_WORD.findall(content))
    tokens = 0
    for part in content or []:
        kind = part.get("type")
        if kind == "image_url":
            tokens += _IMAGE_TOKENS
        elif kind == "file":
            data = part["file"].get("file_data") or ""
            tokens += max(1, len(data) // 4)
        else:
            tokens += len(_WORD.findall(part.get("text") or ""))
    return tokens


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
