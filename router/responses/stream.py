"""Chat Completions stream chunks -> Responses API server-sent events.

A chat stream only says "more text" or "more of tool call n", and only the finish reason says
an item is over. So every output item stays open until `finish()`, which closes them all in
output order: a tool call's arguments may still grow while a later one streams, and events for
an item must not follow its `output_item.done`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from router.responses import objects


@dataclass
class _Part:
    """One content part of the assistant message: `output_text` or `refusal`."""

    kind: str
    chunks: list[str] = field(default_factory=list)

    def render(self) -> dict[str, Any]:
        text = "".join(self.chunks)
        return objects.text_part(text) if self.kind == "output_text" else objects.refusal_part(text)


@dataclass
class _Message:
    output_index: int
    id: str
    parts: list[_Part] = field(default_factory=list)

    def render(self, status: str) -> dict[str, Any]:
        return objects.message_item(self.id, [part.render() for part in self.parts], status)


@dataclass
class _Call:
    output_index: int
    id: str
    call_id: str
    name: str
    arguments: list[str] = field(default_factory=list)

    def render(self, status: str) -> dict[str, Any]:
        return objects.function_call_item(
            self.id,
            call_id=self.call_id,
            name=self.name,
            arguments="".join(self.arguments),
            status=status,
        )


# Delta and done event types per content part kind, and the done event's full-text field.
_PART_EVENTS = {
    "output_text": ("response.output_text.delta", "response.output_text.done", "text"),
    "refusal": ("response.refusal.delta", "response.refusal.done", "refusal"),
}


class ChatToResponseEvents:
    """Turns one chat completion stream (choice 0) into the events of one Response.

    Call `start()` once, `feed()` per parsed chunk, then `finish()` when the chat stream ended,
    or `fail()` when it broke. Each returns whole SSE frames to write. `response` is the
    Response so far, and the final one (for storage) after `finish()` or `fail()`.
    """

    def __init__(self, *, request: dict[str, Any], response_id: str, created_at: int) -> None:
        self._request = request
        self._response_id = response_id
        self._created_at = created_at
        self._sequence = 0
        self._items: list[_Message | _Call] = []
        self._message: _Message | None = None
        self._calls: dict[int, _Call] = {}
        self._finish_reason: str | None = None
        self._usage: dict[str, Any] | None = None
        self._final: dict[str, Any] | None = None

    @property
    def response(self) -> dict[str, Any]:
        if self._final is not None:
            return self._final
        return self._build("in_progress", "in_progress")

    def start(self) -> list[bytes]:
        snapshot = self._build("in_progress", "in_progress")
        return [
            self._frame("response.created", response=snapshot),
            self._frame("response.in_progress", response=snapshot),
        ]

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        self._check_open()
        frames: list[bytes] = []
        # With `include_usage` the last chunk has usage and no choices.
        if chunk.get("usage"):
            self._usage = objects.usage_from_chat(chunk["usage"])
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            for kind, key in (("output_text", "content"), ("refusal", "refusal")):
                if isinstance(delta.get(key), str) and delta[key]:
                    frames += self._part_delta(kind, delta[key])
            for call_delta in delta.get("tool_calls") or []:
                frames += self._call_delta(call_delta)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        return frames

    def finish(self) -> list[bytes]:
        self._check_open()
        incomplete = objects.incomplete_details(self._finish_reason)
        status = "completed" if incomplete is None else "incomplete"
        frames: list[bytes] = []
        for item in self._items:
            frames += self._close(item, status)
        self._final = self._build(status, status, incomplete=incomplete)
        kind = "response.completed" if incomplete is None else "response.incomplete"
        frames.append(self._frame(kind, response=self._final))
        return frames

    def fail(self, message: str, code: str | None = None) -> list[bytes]:
        """The `response.failed` frame; output streamed so far is kept, marked incomplete."""
        self._check_open()
        error = objects.response_error(message, code)
        self._final = self._build("failed", "incomplete", error=error)
        return [self._frame("response.failed", response=self._final)]

    # --- internals ---------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._final is not None:
            raise RuntimeError("the response stream has already ended")

    def _frame(self, kind: str, **fields: Any) -> bytes:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"

    def _build(
        self,
        status: str,
        item_status: str,
        *,
        incomplete: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return objects.build_response(
            self._request,
            response_id=self._response_id,
            created_at=self._created_at,
            status=status,
            output=[item.render(item_status) for item in self._items],
            usage=self._usage,
            incomplete=incomplete,
            error=error,
        )

    def _part_delta(self, kind: str, delta: str) -> list[bytes]:
        frames: list[bytes] = []
        message = self._message
        if message is None:
            index = len(self._items)
            message = _Message(index, objects.item_id("msg", self._response_id, index))
            self._message = message
            self._items.append(message)
            frames.append(self._item_frame("response.output_item.added", message, "in_progress"))
        if not message.parts or message.parts[-1].kind != kind:
            message.parts.append(_Part(kind))
            # The added part is announced empty; its text follows as deltas.
            added = self._part_frame(
                "response.content_part.added", message, len(message.parts) - 1, _Part(kind)
            )
            frames.append(added)
        message.parts[-1].chunks.append(delta)
        ref = self._part_ref(message, len(message.parts) - 1)
        extra: dict[str, Any] = {"logprobs": []} if kind == "output_text" else {}
        frames.append(self._frame(_PART_EVENTS[kind][0], **ref, delta=delta, **extra))
        return frames

    def _call_delta(self, delta: dict[str, Any]) -> list[bytes]:
        frames: list[bytes] = []
        function = delta.get("function") or {}
        position = delta.get("index", 0)
        call = self._calls.get(position)
        if call is None:
            index = len(self._items)
            call = _Call(
                index,
                objects.item_id("fc", self._response_id, index),
                call_id=delta.get("id") or objects.item_id("call", self._response_id, position),
                name=function.get("name") or "",
            )
            self._calls[position] = call
            self._items.append(call)
            frames.append(self._item_frame("response.output_item.added", call, "in_progress"))
        elif function.get("name") and not call.name:
            call.name = function["name"]
        if function.get("arguments"):
            call.arguments.append(function["arguments"])
            frames.append(
                self._frame(
                    "response.function_call_arguments.delta",
                    item_id=call.id,
                    output_index=call.output_index,
                    delta=function["arguments"],
                )
            )
        return frames

    def _close(self, item: _Message | _Call, status: str) -> list[bytes]:
        frames: list[bytes] = []
        if isinstance(item, _Message):
            for content_index, part in enumerate(item.parts):
                _, done, key = _PART_EVENTS[part.kind]
                rendered = part.render()
                extra: dict[str, Any] = {"logprobs": []} if part.kind == "output_text" else {}
                ref = self._part_ref(item, content_index)
                frames.append(self._frame(done, **ref, **{key: rendered[key]}, **extra))
                frames.append(
                    self._part_frame("response.content_part.done", item, content_index, part)
                )
        else:
            frames.append(
                self._frame(
                    "response.function_call_arguments.done",
                    item_id=item.id,
                    output_index=item.output_index,
                    arguments="".join(item.arguments),
                )
            )
        frames.append(self._item_frame("response.output_item.done", item, status))
        return frames

    def _item_frame(self, kind: str, item: _Message | _Call, status: str) -> bytes:
        return self._frame(kind, output_index=item.output_index, item=item.render(status))

    def _part_ref(self, message: _Message, content_index: int) -> dict[str, Any]:
        return {
            "item_id": message.id,
            "output_index": message.output_index,
            "content_index": content_index,
        }

    def _part_frame(self, kind: str, message: _Message, content_index: int, part: _Part) -> bytes:
        return self._frame(kind, **self._part_ref(message, content_index), part=part.render())
