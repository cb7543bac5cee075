"""The OpenAI error envelope and the exceptions that map to it.

Handlers raise; one middleware renders ``{"error": {"message", "type", "param", "code"}}``.

    RouterError                      any error the router answers itself
    ├── InvalidRequest        400    the client's body or parameters are wrong
    ├── Unauthorized          401    missing or unknown API key
    ├── NotFound              404    unknown path or stored object
    ├── MethodNotAllowed      405
    ├── RequestTimeout        408    the client was too slow sending its request
    ├── PayloadTooLarge       413
    ├── UnsupportedMediaType  415
    ├── Unprocessable         422
    ├── RateLimited           429
    ├── ServiceUnavailable    503    nothing can serve the request right now
    └── UpstreamError         502    the backend failed; ``status`` may carry the backend's own
        └── UpstreamTimeout   504
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson


class RouterError(Exception):
    """An error answered to the client in the OpenAI envelope."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self._status = status
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}

    @property
    def http_status(self) -> int:
        return self._status or self.status

    def envelope(self) -> dict[str, Any]:
        return error_envelope(self.message, self.type, self.param, self.code)

    def body(self) -> bytes:
        return orjson.dumps(self.envelope())


class InvalidRequest(RouterError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(RouterError):
    status = 401
    type = "invalid_request_error"
    default_code = "invalid_api_key"


class NotFound(RouterError):
    status = 404
    type = "invalid_request_error"
    default_code = "not_found"


class MethodNotAllowed(RouterError):
    status = 405
    type = "invalid_request_error"
    default_code = "method_not_allowed"


class RequestTimeout(RouterError):
    status = 408
    type = "invalid_request_error"
    default_code = "request_timeout"


class PayloadTooLarge(RouterError):
    status = 413
    type = "invalid_request_error"
    default_code = "request_too_large"


class UnsupportedMediaType(RouterError):
    status = 415
    type = "invalid_request_error"
    default_code = "unsupported_media_type"


class Unprocessable(RouterError):
    status = 422
    type = "invalid_request_error"


class RateLimited(RouterError):
    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class ServiceUnavailable(RouterError):
    status = 503
    type = "server_error"
    default_code = "service_unavailable"


class UpstreamError(RouterError):
    """The backend could not be reached, or answered with an error status.

    ``upstream_status`` is the backend's own status when it answered; the client then gets that
    status, so an upstream 400 stays a 400 and the SDK raises the matching exception.
    """

    status = 502
    type = "upstream_error"
    default_code = "upstream_unavailable"

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int | None = None,
        error_type: str | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.upstream_status = upstream_status
        self.error_type = error_type

    @property
    def http_status(self) -> int:
        return self.upstream_status or self.status

    def envelope(self) -> dict[str, Any]:
        return error_envelope(self.message, self.error_type or self.type, self.param, self.code)


class UpstreamTimeout(UpstreamError):
    status = 504
    default_code = "upstream_timeout"


def error_envelope(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
