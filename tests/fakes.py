"""A scriptable fake upstream: a real aiohttp server that records what it receives.

For behaviour the simulator does not model (a hang, a slow header, an odd error body) and for
checking the exact body the router forwarded.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeUpstream:
    """Answers each POST per ``mode``: ``echo`` (a chat.completion), ``hang``, ``status``."""

    mode: str = "echo"
    status: int = 500
    error_body: bytes = b'{"error": {"message": "upstream says no", "type": "server_error"}}'
    model: str = "upstream-model"
    received: list[Received] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    runner: web.AppRunner | None = None
    url: str = ""

    async def start(self) -> FakeUpstream:
        app = web.Application()
        app.router.add_post("/v1/{tail:.*}", self._handle)
        app.router.add_get("/v1/models", self._models)
        self.runner = web.AppRunner(app, handler_cancellation=True)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/v1"
        return self

    async def close(self) -> None:
        self.release.set()
        if self.runner is not None:
            await self.runner.cleanup()

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
            return web.Response(
                body=self.error_body, status=self.status, content_type="application/json"
            )
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

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
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
        await response.write(b"data: [DONE]\n\n")
        return response
