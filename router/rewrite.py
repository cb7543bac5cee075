"""The body sent upstream: the client's own bytes, changed only where the backend's settings say.

One rewriter serves every surface (Chat Completions, and Responses and Messages bodies passed
through to a backend speaking that API); a ``Shape`` says where a surface keeps what the router
may change. The changes, each only when configured: the backend's ``model``; ``cache_control``
stripped (unless ``forward_cache_control``); OpenAI's ``prompt_cache_key`` set to the request's
placement key; vLLM's ``cache_salt`` set to the tenant's (always the router's, never the
client's, so tenants never share KV); the effort level in the surface's own field; and, for a
Messages request ending in an assistant prefill sent to a chat backend, vLLM's
``continue_final_message``. A body that needs none of these goes upstream as the very bytes the
client sent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from router.anthropic import strip_markers
from router.effort import backend_value
from router.prefix import Markers, strip_cache_control

if TYPE_CHECKING:
    from router.dispatch import Plan

Body = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Shape:
    """Where one surface's body keeps the fields the router may change."""

    # A copy without cache_control; ``Markers`` (found on the chat body) may narrow the copy.
    strip: Callable[[Body, Markers], Body]
    # The body with the backend's effort level set; None: the surface has no field for it.
    set_effort: Callable[[Body, str], Body] | None
    prompt_cache_key: bool  # the surface's API takes OpenAI's prompt_cache_key
    # A final assistant turn is text to continue (a chat body translated from Messages).
    continues_prefill: bool = False


def _set_reasoning_effort(body: Body, level: str) -> Body:
    return body if body.get("reasoning_effort") == level else {**body, "reasoning_effort": level}


def _set_nested_effort(body: Body, level: str) -> Body:
    reasoning = body.get("reasoning")
    reasoning = reasoning if isinstance(reasoning, dict) else {}
    if reasoning.get("effort") == level:
        return body
    return {**body, "reasoning": {**reasoning, "effort": level}}


def _strip_messages(body: Body, _markers: Markers) -> Body:
    """A Messages body keeps its markers on system, tools and blocks (Anthropic's places)."""
    return strip_markers(body)


def _strip_input(body: Body, _markers: Markers) -> Body:
    """Responses input items have the shape of chat messages: markers sit where they would
    in chat (the markers found on the translated chat body do not index the items)."""
    items = body.get("input")
    stripped = strip_cache_control({**body, "messages": items if isinstance(items, list) else []})
    if isinstance(items, list):
        stripped["input"] = stripped["messages"]
    del stripped["messages"]
    return stripped


CHAT = Shape(strip_cache_control, _set_reasoning_effort, prompt_cache_key=True)
RESPONSES = Shape(_strip_input, _set_nested_effort, prompt_cache_key=True)
# Anthropic's effort levels are not OpenAI's reasoning_effort values: a Messages body keeps
# the client's own setting.
MESSAGES = Shape(_strip_messages, None, prompt_cache_key=False)
# A legacy completion: no markers to strip (a top-level one is refused), and no
# prompt_cache_key (OpenAI's legacy completions take none).
COMPLETIONS = Shape(strip_cache_control, _set_reasoning_effort, prompt_cache_key=False)
# The chat body translated from a Messages request, for a chat backend.
CHAT_FROM_MESSAGES = Shape(
    strip_cache_control, _set_reasoning_effort, prompt_cache_key=True, continues_prefill=True
)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A request body on its way upstream: the bytes are made per pool, by its backend's
    settings (a fallback pool's may differ from the first one's)."""

    body: Body
    raw: bytes | None = None  # the client's bytes, when ``body`` is what the client sent
    shape: Shape = CHAT

    def payload(self, plan: Plan) -> bytes:
        return upstream_body(self.body, self.raw, plan, self.shape)


def upstream_body(body: Body, raw: bytes | None, plan: Plan, shape: Shape = CHAT) -> bytes:
    """The bytes to send: ``raw`` when nothing changes, else ``body`` re-encoded, changed."""
    backend = plan.backend
    out = body
    if backend.model and body.get("model") != backend.model:
        out = {**out, "model": backend.model}
    key = plan.prompt_cache_key
    if (
        shape.prompt_cache_key
        and backend.prompt_cache_key
        and key
        and "prompt_cache_key" not in body
    ):
        out = {**out, "prompt_cache_key": key}
    salt = plan.cache_salt
    if salt is not None:
        out = {**out, "cache_salt": salt}
    level = backend_value(plan.effort, backend.reasoning_efforts)
    if level is not None and shape.set_effort is not None:
        out = shape.set_effort(out, level)
    if plan.markers is not None and not backend.forward_cache_control:
        out = shape.strip(out, plan.markers)
    if shape.continues_prefill and backend.continue_final_message and _ends_with_prefill(out):
        # vLLM refuses continue_final_message beside its default add_generation_prompt.
        out = {**out, "continue_final_message": True, "add_generation_prompt": False}
    if out is body and raw is not None:
        return raw
    return orjson.dumps(out)


def _ends_with_prefill(body: Body) -> bool:
    """The last turn is the assistant's own text (a turn of tool calls has none to continue)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return False
    last = messages[-1]
    return (
        last.get("role") == "assistant"
        and isinstance(last.get("content"), str | list)
        and not last.get("tool_calls")
    )
