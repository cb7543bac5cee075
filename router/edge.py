"""The HTTP server's edge: what a client meets before any handler runs.

aiohttp's defaults suit a trusted network: an idle connection stays open about an hour, a
request's headers may take for ever to arrive, there is no cap on connections (under a
1,024-file limit, 1,100 half-open sockets stop the server answering anyone), transport-level
parse errors answer in plain text, and ``Server`` announces the Python and aiohttp versions.
Here:

- ``server.header_timeout``: a connection must deliver a whole request line and headers within
  this many seconds of its first byte (or of connecting); else a 408 envelope and close.
- ``server.keepalive_timeout``: an idle keep-alive connection is closed after this long.
- ``server.max_connections`` (lowered to what ``RLIMIT_NOFILE`` allows, keeping half the files
  for upstream connections): a new connection beyond it first evicts the oldest connection that
  has no request in progress (idle or still sending headers); if every connection is busy, the
  newcomer gets a 503 envelope and is closed.
- a request line or header aiohttp cannot parse gets a 400 envelope, not text.

``server.body_timeout`` is applied where the body is read (``handlers.common``).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from router.config import ServerConfig
from router.errors import InvalidRequest, RouterError

log = logging.getLogger(__name__)

SERVER_NAME = "di-router"
# Files kept for everything that is not a client connection: upstream connections (one per
# request in flight, at most), Redis, logs, the worker process.
_RESERVED_FILES = 64
_CONTROL = {i: f"\\x{i:02x}" for i in [*range(32), 127]}


def loggable(text: str) -> str:
    """``text`` with control characters escaped, so a client cannot forge a log line."""
    return text.translate(_CONTROL)


async def hide_server_banner(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER_NAME


def connection_cap(configured: int) -> int:
    """``configured``, lowered so client sockets and their upstream sockets both fit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(1, min(configured, (soft - _RESERVED_FILES) // 2))


def raw_error(status: int, reason: str, message: str, code: str) -> bytes:
    """A whole HTTP/1.1 error response with the OpenAI envelope, for use below aiohttp's
    request handling (no request object exists yet)."""
    error = RouterError if status >= 500 else InvalidRequest
    body = error(message, code=code, status=status).body()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\nServer: {SERVER_NAME}\r\n\r\n"
    )
    return head.encode() + body


class GuardedHandler(RequestHandler):
    """aiohttp's connection protocol with a header deadline and envelope parse errors."""

    def __init__(self, manager: GuardedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = manager
        self._header_deadline: asyncio.TimerHandle | None = None
        self._seen_requests = 0
        # From a request's complete headers until its response is done: bytes arriving then
        # are its body, not the start of a new request.
        self._open_requests = 0

    @property
    def awaiting_request(self) -> bool:
        """No request in progress: idle between requests, or still sending headers."""
        return not self._request_in_progress and not self._messages

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self._guard.admit(self):
            return
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._request_count != self._seen_requests:
            self._open_requests += self._request_count - self._seen_requests
            self._seen_requests = self._request_count
            self._disarm()  # a whole request line and headers arrived
        elif self._header_deadline is None and not self._open_requests and data:
            # The start of a new request on a kept-alive connection, its headers incomplete.
            # Armed after parsing: a request whose headers came whole (nearly all) costs no
            # timer at all.
            self._arm()

    async def _handle_request(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super()._handle_request(*args, **kwargs)
        finally:
            self._open_requests -= 1

    def _arm(self) -> None:
        self._disarm()
        self._header_deadline = self._loop.call_later(
            self._guard.config.header_timeout, self._headers_too_slow
        )

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self._open_requests or not self.awaiting_request or self.transport is None:
            return
        timeout = self._guard.config.header_timeout
        # metrics: connections closed for slow headers
        self.reject(
            raw_error(
                408,
                "Request Timeout",
                f"The request headers did not arrive within {timeout:g} s (server.header_timeout).",
                "request_timeout",
            )
        )

    def reject(self, response: bytes) -> None:
        """Answer ``response`` on the raw transport and close the connection."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(response)
        self.force_close()
        transport.close()

    def evict(self) -> None:
        """Close an idle connection to make room; nothing is in progress on it."""
        self._disarm()
        self.force_close()
        if self.transport is not None:
            self.transport.close()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's own errors (a header too long, a bad byte) in the OpenAI envelope."""
        if status >= 500:
            log.error("transport error %s", type(exc).__name__ if exc else status)
            text = "The router failed to handle this connection."
            error: RouterError = RouterError(text, code="server_error")
        else:
            text = message or (str(exc) if exc else "") or "bad request"
            reason = loggable(text.strip().splitlines()[0]).rstrip(":")
            log.info("rejected a malformed request: %s", reason[:200])
            text = f"The HTTP request could not be parsed: {reason[:200]}"
            error = InvalidRequest(text, code="bad_http_request")
        response = web.Response(
            status=status,
            body=error.body(),
            content_type="application/json",
            headers={"Server": SERVER_NAME},
        )
        response.force_close()
        return response


class GuardedServer(web.Server):
    """Makes ``GuardedHandler`` connections and enforces the connection cap."""

    def __init__(self, *args: Any, config: ServerConfig, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config = config
        self.cap = connection_cap(config.max_connections)
        self.rejected = 0

    def __call__(self) -> RequestHandler:
        return GuardedHandler(self, loop=self._loop, **self._kwargs)

    def admit(self, handler: GuardedHandler) -> bool:
        """Make room for ``handler``, or reject it; True if it may stay."""
        if len(self.connections) <= self.cap:
            return True
        # Evict the oldest connection with nothing in progress (dicts keep insertion order).
        for other in self.connections:
            if (
                other is not handler
                and isinstance(other, GuardedHandler)
                and other.awaiting_request
            ):
                other.evict()
                return True
        self.rejected += 1  # metrics: connections refused at the cap
        handler.reject(
            raw_error(
                503,
                "Service Unavailable",
                f"Too many connections to this router process (server.max_connections, "
                f"{self.cap}); retry shortly.",
                "too_many_connections",
            )
        )
        return False


class RouterRunner(web.AppRunner):
    """``web.AppRunner`` whose server is a ``GuardedServer`` configured from ``server``."""

    def __init__(self, app: web.Application, config: ServerConfig, **kwargs: Any) -> None:
        kwargs.setdefault("keepalive_timeout", config.keepalive_timeout)
        kwargs.setdefault("shutdown_timeout", 5.0)  # lifecycle.drain already gave the grace
        super().__init__(app, **kwargs)
        self._config = config

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        # Rebuilt with the same arguments aiohttp's application computed (its handler_args
        # included), as the guarded subclass.
        return GuardedServer(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=asyncio.get_running_loop(),
            config=self._config,
            **made._kwargs,
        )


def make_runner(app: web.Application, config: ServerConfig, **kwargs: Any) -> RouterRunner:
    """The runner every router process (and test) serves ``app`` with."""
    return RouterRunner(app, config, handler_cancellation=True, access_log=None, **kwargs)
