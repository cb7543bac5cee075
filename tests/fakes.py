"""A scriptable fake upstream: a real aiohttp server that records what it receives.

For behaviour the simulator does not model (a hang, a slow header, an odd error body) and for
checking the exact body the router forwarded.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Self

import orjson
from aiohttp import web


@dataclass(kw_only=True)
class ServedFake:
    """A fake upstream on a free 127.0.0.1 port, its base URL ending in ``/v1``.

    ``release`` holds handlers that wait on purpose; ``close`` sets it first, so no handler
    keeps the server's shutdown waiting.
    """

    release: asyncio.Event = field(default_factory=asyncio.Event)
    runner: web.AppRunner | None = None
    url: str = ""

    def add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self) -> Self:
        app = web.Application()
        self.add_routes(app)
        self.runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.2)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/v1"
        return self

    async def close(self) -> None:
        self.release.set()
        if self.runner is not None:
            await self.runner.cleanup()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeUpstream(ServedFake):
    """Answers each POST per ``mode``: ``echo`` (a chat.completion), ``hang``, ``status``."""

    mode: str = "echo"
    # or "nospace_done", "truncated", "malformed", "error", "held" (the rest waits for release)
    stream_style: str = "split"
    status: int = 500
    error_body: bytes = b'{"error": {"message": "upstream says no", "type": "server_error"}}'
    model: str = "upstream-model"
    error_headers: dict[str, str] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/{tail:.*}", self._handle)
        app.router.add_get("/v1/models", self._models)

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.received.append(
            Received(request.path, {k.lower(): v for k, v in request.headers.items()}, body)
        )
        if self.mode == "hang":
            await self.release.wait()
        if self.mode == "status":
            return await self._error(request)
        if request.path.endswith("/responses"):
            return await self._responses(request, body)
        if request.path.endswith("/messages"):
            return await self._messages(request, body)
        if body.get("stream"):
            return await self._stream(request)
        return web.json_response(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": 1,
                "model": self.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "ok"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": 3,
                    "completion_tokens": 1,
                    "total_tokens": 4,
                    "prompt_tokens_details": {"cached_tokens": 2},
                },
            }
        )

    async def _error(self, request: web.Request) -> web.StreamResponse:
        # The error body arrives in two writes: the router must read it whole.
        response = web.StreamResponse(
            status=self.status, headers={"Content-Type": "application/json", **self.error_headers}
        )
        await response.prepare(request)
        half = len(self.error_body) // 2
        await response.write(self.error_body[:half])
        await response.write(self.error_body[half:])
        return response

    async def _responses(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        """A Responses API backend: one Response object, or its typed events (no [DONE])."""
        from router.responses import chat_to_response

        chat = {
            "choices": [{"index": 0, "message": {"content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }
        done = chat_to_response(chat, request=body, response_id="resp_upstream", created_at=1)
        done["model"] = self.model
        if not body.get("stream"):
            return web.json_response(done)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        events: list[dict[str, Any]] = [
            {"type": "response.created", "sequence_number": 0, "response": {**done, "output": []}},
            {"type": "response.completed", "sequence_number": 1, "response": done},
        ]
        for event in events:
            await response.write(
                b"event: "
                + str(event["type"]).encode()
                + b"\ndata: "
                + orjson.dumps(event)
                + b"\n\n"
            )
        return response

    async def _messages(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        """An Anthropic Messages backend: one Message, or its events (``truncated`` stops early)."""
        usage = {"input_tokens": 5, "output_tokens": 1, "cache_read_input_tokens": 7}
        message: dict[str, Any] = {
            "id": "msg_upstream",
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [{"type": "text", "text": "ok"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
        if not body.get("stream"):
            return web.json_response(message)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        events: list[dict[str, Any]] = [
            {"type": "message_start", "message": {**message, "content": [], "stop_reason": None}},
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "ok"},
            },
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": usage},
            {"type": "message_stop"},
        ]
        if self.stream_style == "truncated":
            events = events[:3]
        for event in events:
            kind = str(event["type"]).encode()
            await response.write(b"event: " + kind + b"\ndata: " + orjson.dumps(event) + b"\n\n")
        return response

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if self.stream_style == "malformed":
            await response.write(b'data: "not a chunk"\n\n')
            return response
        for text in ("o", "k"):
            chunk = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": self.model,
                "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
            }
            # Split mid-event on purpose: the router must re-frame events, not reads.
            data = b"data: " + orjson.dumps(chunk) + b"\n\n"
            await response.write(data[:10])
            await response.write(data[10:])
            if self.stream_style == "held":
                await self.release.wait()  # the test has seen the first chunk, or never will
        if self.stream_style == "truncated":
            await response.write(b'data: {"id":"chatcmpl-fake","object":"chat.comp')
        elif self.stream_style == "error":  # vLLM's way: an error event, then [DONE]
            await response.write(b"data: " + self.error_body + b"\n\n" + b"data: [DONE]\n\n")
        elif self.stream_style == "nospace_done":
            await response.write(b"data:[DONE]\n\n")
        else:
            await response.write(b"data: [DONE]\n\n")
        return response
