"""Errors the sim returns, rendered in the OpenAI error envelope.

Handlers raise `SimError`; `error_middleware` renders it, and aiohttp's own HTTP errors
(unknown path, wrong method), as `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler


def error_type(status: int) -> str:
    """The OpenAI `type` for an HTTP status."""
    if status >= 500:
        return "server_error"
    return {
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        429: "rate_limit_error",
    }.get(status, "invalid_request_error")


class SimError(Exception):
    """A request the sim refuses or fails on purpose."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        param: str | None = None,
        code: str | int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code

    def envelope(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": error_type(self.status),
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> web.Response:
        return web.Response(
            status=self.status,
            body=orjson.dumps(self.envelope()),
            content_type="application/json",
        )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render sim and HTTP errors as OpenAI error envelopes."""
    try:
        return await handler(request)
    except SimError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = f"{exc.reason} ({request.method} {request.path})"
        return SimError(message, status=exc.status).response()
