"""The OpenAI wire objects the sim sends: completions, chunks and usage."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from router.sim.engine import Admission
from router.sim.generate import Choice
from router.sim.logprobs import chat_logprobs, completion_logprobs

SYSTEM_FINGERPRINT = "fp_di_router_sim"


@dataclass(frozen=True, slots=True)
class Meta:
    """The fields every object of one response shares."""

    id: str
    model: str
    created: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def new(cls, prefix: str, model: str) -> Meta:
        return cls(id=f"{prefix}-{uuid.uuid4().hex}", model=model)


def usage(admission: Admission, choices: Sequence[Choice]) -> dict[str, Any]:
    completion_tokens = sum(choice.tokens for choice in choices)
    return {
        "prompt_tokens": admission.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": admission.prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": admission.cached_tokens},
    }


def _message(choice: Choice) -> dict[str, Any]:
    if choice.tool_call is None:
        return {"role": "assistant", "content": choice.text}
    call = choice.tool_call
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
        ],
    }


def chat_completion(meta: Meta, admission: Admission, choices: Sequence[Choice]) -> dict[str, Any]:
    return {
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [
            {
                "index": choice.index,
                "message": _message(choice),
                "logprobs": chat_logprobs(choice.logprobs),
                "finish_reason": choice.finish_reason,
            }
            for choice in choices
        ],
        "usage": usage(admission, choices),
    }


def text_completion(meta: Meta, admission: Admission, choices: Sequence[Choice]) -> dict[str, Any]:
    return {
        "id": meta.id,
        "object": "text_completion",
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [
            {
                "index": choice.index,
                "text": choice.text,
                "logprobs": (
                    None if choice.logprobs is None else completion_logprobs(choice.logprobs)
                ),
                "finish_reason": choice.finish_reason,
            }
            for choice in choices
        ],
        "usage": usage(admission, choices),
    }


def chat_chunk(
    meta: Meta,
    index: int,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": meta.id,
        "object": "chat.completion.chunk",
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [
            {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        ],
    }


def text_chunk(
    meta: Meta,
    index: int,
    text: str,
    finish_reason: str | None = None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": meta.id,
        "object": "text_completion",
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [
            {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
        ],
    }


def usage_chunk(
    meta: Meta, object_name: str, admission: Admission, choices: Sequence[Choice]
) -> dict[str, Any]:
    return {
        "id": meta.id,
        "object": object_name,
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [],
        "usage": usage(admission, choices),
    }


def chat_deltas(choice: Choice) -> list[dict[str, Any]]:
    """The deltas after the role delta, one token each: content, or a tool call's parts."""
    call = choice.tool_call
    if call is None:
        return [{"content": piece} for piece in choice.pieces]
    # Like OpenAI: the first tool-call delta names the call, the rest append arguments.
    header = {
        "tool_calls": [
            {
                "index": 0,
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
        ]
    }
    return [
        header,
        *(
            {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
            for piece in choice.pieces
        ),
    ]
