"""The error hierarchy, and its envelope on each API surface.

Handlers raise; one middleware renders the envelope of the request's surface: OpenAI's
``{"error": {"message", "type", "param", "code"}}``, or on ``/v1/messages`` Anthropic's
``{"type": "error", "error": {"type", "message"}}`` with the type Anthropic uses for the status.

    RouterError                      any error the router answers itself
    ├── InvalidRequest        400    the client's body or parameters are wrong
    ├── Unauthorized          401    missing or unknown API key
    ├── Forbidden             403    the key may not use this request type or backend
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

    def render(self, surface: str) -> bytes:
        """The error body in the envelope of ``surface`` (``openai`` or ``anthropic``)."""
        if surface == "anthropic":
            return orjson.dumps(anthropic_envelope(self.message, self.http_status))
        return self.body()


class InvalidRequest(RouterError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(RouterError):
    status = 401
    type = "invalid_request_error"
    default_code = "invalid_api_key"


class Forbidden(RouterError):
    status = 403
    type = "invalid_request_error"
    default_code = "permission_denied"


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
        if code is None and upstream_status is not None:
            code = "upstream_error"  # it answered: not "unavailable"
        super().__init__(message, param=param, code=code)
        self.upstream_status = upstream_status
        if error_type is None and upstream_status is not None and upstream_status < 500:
            error_type = "invalid_request_error"  # OpenAI's type for a 4xx that names none
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


# Anthropic's error type for each status it documents; others fall back by class (4xx, 5xx).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_error_type(status: int) -> str:
    if status in _ANTHROPIC_TYPES:
        return _ANTHROPIC_TYPES[status]
    return "invalid_request_error" if status < 500 else "api_error"


def anthropic_envelope(message: str, status: int) -> dict[str, Any]:
    return {"type": "error", "error": {"type": anthropic_error_type(status), "message": message}}
