"""Scripted fake replicas: real aiohttp servers whose /metrics and answers tests choose.

Unlike the simulator, a ``Scripted`` replica reports whatever load figures a test sets and
answers every generation request the way ``mode`` says, so tests can build a busy, a frozen, a
failing or a misbehaving replica on purpose.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from .conftest import LoopThread

OK_BODY = {
    "id": "chatcmpl-scripted",
    "object": "chat.completion",
    "created": 1,
    "model": "scripted",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


def vllm_metrics(running: float, waiting: float, kv: float = 0.1) -> bytes:
    """A /metrics page in vLLM's names, with a histogram around it as vLLM's pages have."""
    lines = [
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        f'vllm:num_requests_running{{engine="0",model_name="m"}} {running}',
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
        "# TYPE vllm:num_requests_waiting gauge",
        f'vllm:num_requests_waiting{{engine="0",model_name="m"}} {waiting}',
        "# TYPE vllm:kv_cache_usage_perc gauge",
        f'vllm:kv_cache_usage_perc{{engine="0",model_name="m"}} {kv}',
        "# TYPE vllm:time_to_first_token_seconds histogram",
        'vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="m"} 3.0',
        'vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="m"} 4.0',
        'vllm:time_to_first_token_seconds_count{model_name="m"} 4.0',
        'vllm:time_to_first_token_seconds_sum{model_name="m"} 0.5',
    ]
    return ("\n".join(lines) + "\n").encode()


@dataclass
class Scripted:
    """One fake replica. ``mode`` for POSTs: ok, status, frozen (everything hangs, as under
    SIGSTOP), redirect, garbage, empty, sse_garbage (from the start), sse_garbage_late (after
    one good chunk), drop (close before answering)."""

    name: str = "scripted"
    mode: str = "ok"
    status: int = 503
    error_body: bytes = b'{"error": {"message": "overloaded", "type": "server_error"}}'
    error_headers: dict[str, str] = field(default_factory=dict)
    metrics: bytes | None = None  # None: /metrics is a 404
    posts: int = 0
    scrapes: int = 0
    probes: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    runner: web.AppRunner | None = None
    url: str = ""

    @property
    def origin(self) -> str:
        return self.url.removesuffix("/v1")

    async def start(self) -> Scripted:
        app = web.Application()
        app.router.add_post("/v1/{tail:.*}", self._post)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
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

    async def _frozen(self) -> None:
        if self.mode == "frozen":
            await self.release.wait()

    async def _models(self, request: web.Request) -> web.Response:
        self.probes += 1
        await self._frozen()
        return web.json_response({"object": "list", "data": []})

    async def _metrics(self, request: web.Request) -> web.Response:
        await self._frozen()
        self.scrapes += 1
        if self.metrics is None:
            raise web.HTTPNotFound()
        return web.Response(body=self.metrics, content_type="text/plain")

    async def _post(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.posts += 1
        await self._frozen()
        mode = self.mode
        if mode == "status":
            return web.Response(
                status=self.status,
                body=self.error_body,
                headers={"Content-Type": "application/json", **self.error_headers},
            )
        if mode == "redirect":
            raise web.HTTPTemporaryRedirect("http://127.0.0.1:9/v1/chat/completions")
        if mode == "garbage":
            return web.Response(text="Service is up!", content_type="text/plain")
        if mode == "empty":
            return web.Response(status=200)
        if mode == "drop":
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        if body.get("stream"):
            return await self._stream(request, garbage=mode)
        return web.json_response({**OK_BODY, "model": self.name})

    async def _stream(self, request: web.Request, *, garbage: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if garbage == "sse_garbage":
            await response.write(b"<html>proxy error</html>\n\n")
            return response
        chunk = {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": self.name,
            "choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": "stop"}],
        }
        await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        if garbage == "sse_garbage_late":
            await self.release.wait()  # the test saw the first chunk arrive
            await response.write(b"Traceback (most recent call last):\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response


@dataclass
class Replicas:
    """Scripted replicas on their own loop thread; ``new`` makes one."""

    thread: LoopThread
    made: list[Scripted] = field(default_factory=list)

    def new(self, name: str = "scripted", **fields: object) -> Scripted:
        replica = self.thread.run(Scripted(name=name, **fields).start())  # type: ignore[arg-type]
        self.made.append(replica)
        return replica

    def release(self, replica: Scripted) -> None:
        """Let a replica waiting on its ``release`` event go on."""
        self.thread.loop.call_soon_threadsafe(replica.release.set)

    def set(self, replica: Scripted, **fields: object) -> None:
        """Change a replica's script from its own loop (its handlers read it there)."""

        async def apply() -> None:
            for key, value in fields.items():
                setattr(replica, key, value)

        self.thread.run(apply())
