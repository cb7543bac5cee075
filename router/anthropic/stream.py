"""Chat Completions stream chunks -> Anthropic Messages stream events.

Anthropic streams one content block at a time: ``content_block_start``, its deltas
(``text_delta``, or ``input_json_delta`` for a tool call's arguments), ``content_block_stop``.
A chat stream says "more text" or "more of tool call n"; a change of kind or of call closes the
open block and starts the next. The usage chunk (asked for with ``include_usage``) arrives just
before ``[DONE]``, so ``message_delta`` carries the whole usage, as Anthropic's final counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from router.anthropic.reply import message_shell, stop_reason, usage_from_chat
from router.errors import anthropic_envelope


@dataclass
class _Block:
    index: int
    kind: str  # text | tool_use
    position: int = -1  # the chat tool call index, for tool_use blocks


class ChatToMessageEvents:
    """Turns one chat completion stream (choice 0) into the events of one Message.

    ``start()`` once, ``feed()`` per parsed chunk, then ``finish()`` at ``[DONE]`` or
    ``fail()`` when the stream broke; each returns whole SSE frames to write.
    """

    def __init__(self, *, message_id: str, model: str, stop_sequences: Sequence[str] = ()) -> None:
        self._message_id = message_id
        self._model = model
        self._stops = stop_sequences
        self._blocks: list[_Block] = []
        self._open: _Block | None = None
        self._choice: dict[str, Any] = {}
        self._usage: Any = None
        self.ended = False

    def start(self) -> list[bytes]:
        message = message_shell(self._message_id, self._model)
        return [
            _frame("message_start", {"type": "message_start", "message": message}),
            _frame("ping", {"type": "ping"}),
        ]

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        frames: list[bytes] = []
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                frames += self._text(text)
            for call in delta.get("tool_calls") or []:
                frames += self._call(call)
            if choice.get("finish_reason"):
                self._choice = choice
        return frames

    def finish(self) -> list[bytes]:
        self.ended = True
        frames = self._close()
        reason, sequence = stop_reason(self._choice, self._stops)
        delta = {"stop_reason": reason, "stop_sequence": sequence}
        usage = usage_from_chat(self._usage)
        frames.append(
            _frame("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
        )
        frames.append(_frame("message_stop", {"type": "message_stop"}))
        return frames

    def fail(self, message: str, status: int = 502) -> list[bytes]:
        """Anthropic ends a broken stream with an ``error`` event and nothing after it."""
        self.ended = True
        return [_frame("error", anthropic_envelope(message, status))]

    # --- internals ---------------------------------------------------------------------

    def _text(self, text: str) -> list[bytes]:
        frames: list[bytes] = []
        if self._open is None or self._open.kind != "text":
            frames += self._begin(_Block(len(self._blocks), "text"), {"type": "text", "text": ""})
        assert self._open is not None
        delta = {"type": "text_delta", "text": text}
        frames.append(self._delta(self._open, delta))
        return frames

    def _call(self, call: dict[str, Any]) -> list[bytes]:
        frames: list[bytes] = []
        function = call.get("function") or {}
        position = call.get("index", 0)
        block = next(
            (b for b in self._blocks if b.kind == "tool_use" and b.position == position), None
        )
        if block is None:
            block = _Block(len(self._blocks), "tool_use", position)
            tool_id = call.get("id") or f"toolu_{self._message_id.removeprefix('msg_')}_{position}"
            start: dict[str, Any] = {
                "type": "tool_use",
                "id": tool_id,
                "name": function.get("name") or "",
                "input": {},
            }
            frames += self._begin(block, start)
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            # A late fragment of an earlier call (rare: servers stream calls one by one) still
            # names its own block's index, which is how clients accumulate it.
            frames.append(
                self._delta(block, {"type": "input_json_delta", "partial_json": arguments})
            )
        return frames

    def _begin(self, block: _Block, content_block: dict[str, Any]) -> list[bytes]:
        frames = self._close()
        self._blocks.append(block)
        self._open = block
        event = {
            "type": "content_block_start",
            "index": block.index,
            "content_block": content_block,
        }
        frames.append(_frame("content_block_start", event))
        return frames

    def _close(self) -> list[bytes]:
        if self._open is None:
            return []
        index = self._open.index
        self._open = None
        return [_frame("content_block_stop", {"type": "content_block_stop", "index": index})]

    def _delta(self, block: _Block, delta: dict[str, Any]) -> bytes:
        event = {"type": "content_block_delta", "index": block.index, "delta": delta}
        return _frame("content_block_delta", event)


def _frame(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
