"""A proxy that forwards bytes and parses nothing: the floor for any Python gateway.

``benchmarks/overhead.py`` runs it beside di-router in front of the same simulator, so the
router's cost can be read against what aiohttp alone costs on the same path: the same server
setup (uvloop, ``handler_cancellation``, no access log) and one upstream ``ClientSession`` with
the router's connection limits. It forwards method, path, query, body and a few headers, and
returns the upstream's status, Content-Type and bytes: whole when the upstream sent a
Content-Length, else chunk by chunk as they arrive (SSE).

    python benchmarks/passthrough.py --upstream http://127.0.0.1:9100 --port 0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Sequence

import aiohttp
import uvloop
from aiohttp import hdrs, web

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)
_FORWARDED = (hdrs.CONTENT_TYPE, hdrs.ACCEPT, hdrs.AUTHORIZATION, "X-Request-Id")


def create_app(upstream: str) -> web.Application:
    app = web.Application(client_max_size=64 << 20)
    app[UPSTREAM] = upstream.rstrip("/")
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def session_ctx(app: web.Application) -> AsyncIterator[None]:
    # The router's defaults (router/upstream.py), so both proxies pool connections alike.
    connector = aiohttp.TCPConnector(limit=1024, limit_per_host=256, keepalive_timeout=30)
    app[SESSION] = aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300),
        skip_auto_headers=("User-Agent",),
    )
    yield
    await app[SESSION].close()


async def forward(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    headers = {k: v for k in _FORWARDED if (v := request.headers.get(k)) is not None}
    url = request.app[UPSTREAM] + request.rel_url.path_qs
    try:
        upstream = await request.app[SESSION].request(
            request.method, url, data=body, headers=headers
        )
    except (aiohttp.ClientError, TimeoutError) as exc:
        return web.Response(status=502, text=f"upstream failed: {type(exc).__name__}\n")
    async with upstream:
        content_type = upstream.headers.get(hdrs.CONTENT_TYPE, "application/octet-stream")
        out_headers = {hdrs.CONTENT_TYPE: content_type}
        if upstream.content_length is not None:
            data = await upstream.read()
            return web.Response(body=data, status=upstream.status, headers=out_headers)
        response = web.StreamResponse(status=upstream.status, headers=out_headers)
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away; closing the upstream response is all there is to do
        return response


async def serve(upstream: str, host: str, port: int) -> None:
    runner = web.AppRunner(create_app(upstream), handler_cancellation=True, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        print(f"passthrough listening: base_url=http://{bound_host}:{bound_port}/v1", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Forward HTTP to one upstream, parsing nothing.")
    parser.add_argument("--upstream", required=True, help="origin to forward to, e.g. http://h:p")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    with (
        contextlib.suppress(KeyboardInterrupt),
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
    ):
        runner.run(serve(args.upstream, args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
