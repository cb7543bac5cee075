"""Builders for the Response object and its output items.

`translate.chat_to_response` (one chat completion) and `stream.ChatToResponseEvents` (a chat
stream) both end in the same Response shape; building it here keeps the two from drifting apart.
Everything is a plain dict ready for orjson: the OpenAI SDK's pydantic types are the contract,
checked in the tests, not imported at run time.
"""

from __future__ import annotations

from typing import Any

# Chat finish reasons that end a response early, as Responses `incomplete_details.reason`.
_INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}

# The SDK types `error.code` as a closed enum: any other code would make clients fail to parse
# the `response.failed` event, so those become `server_error` (the message keeps the detail).
_ERROR_CODES = frozenset({"server_error", "rate_limit_exceeded", "invalid_prompt"})


def item_id(prefix: str, response_id: str, output_index: int) -> str:
    """An output item id derived from its response, so the same output always gets the same id."""
    return f"{prefix}_{response_id.removeprefix('resp_')}_{output_index}"


def incomplete_details(finish_reason: str | None) -> dict[str, Any] | None:
    """`incomplete_details` for a chat finish reason, or None when the response is complete."""
    reason = _INCOMPLETE_REASONS.get(finish_reason or "")
    return None if reason is None else {"reason": reason}


def response_error(message: str, code: str | None) -> dict[str, Any]:
    """The `error` object of a failed response."""
    return {"code": code if code in _ERROR_CODES else "server_error", "message": message}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def refusal_part(refusal: str) -> dict[str, Any]:
    return {"type": "refusal", "refusal": refusal}


def message_item(id_: str, content: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {
        "id": id_,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": content,
    }


def function_call_item(
    id_: str, *, call_id: str, name: str, arguments: str, status: str
) -> dict[str, Any]:
    return {
        "id": id_,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def usage_from_chat(usage: Any) -> dict[str, Any] | None:
    """Responses `usage` from a chat `usage` object; None when the backend reported none."""
    if not isinstance(usage, dict):
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": int(prompt_details.get("cached_tokens") or 0),
            # Required by the SDK's type; chat backends that report cache writes use this name.
            "cache_write_tokens": int(prompt_details.get("cache_write_tokens") or 0),
        },
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": int(completion_details.get("reasoning_tokens") or 0),
        },
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
    }


def build_response(
    request: dict[str, Any],
    *,
    response_id: str,
    created_at: int,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    incomplete: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Response object echoing the request's settings, as OpenAI does.

    The model is the one the client asked for, even if the router served it elsewhere: clients
    compare it with what they sent. Settings the router does not implement (reasoning,
    background, service tier) are left out rather than echoed as if they had been honoured.
    """
    text = request.get("text")
    text_config = dict(text) if isinstance(text, dict) else {}
    text_config["format"] = text_config.get("format") or {"type": "text"}
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "error": error,
        "incomplete_details": incomplete,
        "model": request.get("model") or "",
        "output": output,
        "usage": usage,
        "instructions": request.get("instructions"),
        "tools": request.get("tools") or [],
        "tool_choice": request.get("tool_choice") or "auto",
        "parallel_tool_calls": request.get("parallel_tool_calls") is not False,
        "temperature": request.get("temperature"),
        "top_p": request.get("top_p"),
        "top_logprobs": request.get("top_logprobs"),
        "max_output_tokens": request.get("max_output_tokens"),
        "metadata": request.get("metadata") or {},
        "text": text_config,
        "previous_response_id": request.get("previous_response_id"),
        "store": request.get("store") is not False,
        "truncation": request.get("truncation") or "disabled",
        "user": request.get("user"),
    }
