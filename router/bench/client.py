"""Sending one streamed chat request and timing it, token by token.

TTFT is the time to the first chunk that carries generated output (content, reasoning or a tool
call), never to the response headers or the role-only first chunk: vLLM and the sim send both
as soon as a request is admitted, long before its prefill ends. Each later content chunk's
arrival gives an inter-token latency, as `vllm bench serve` measures them.

The client is aiohttp rather than the openai SDK: the SDK's per-chunk pydantic parsing costs
CPU on the same small machine that runs the servers, and the router's `X-DI-*` headers and raw
arrival times are what is measured anyway.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from router.bench.workloads import BenchRequest

_MAX_ERROR_BODY = 4096
_OUTPUT_DELTA_FIELDS = ("content", "reasoning_content", "reasoning", "tool_calls")


@dataclass(slots=True)
class RequestResult:
    """What one request did; times are `time.perf_counter()` seconds."""

    index: int  # position in the workload's send order
    label: str
    start: float | None = None  # when it was sent; None: never sent
    headers_at: float | None = None
    token_times: list[float] = field(default_factory=list)  # arrival of each output chunk
    end: float | None = None
    error: str = ""
    status: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    di_cache: str | None = None  # the router's X-DI-Cache header
    replica: str | None = None  # the router's X-DI-Replica header

    @property
    def sent(self) -> bool:
        return self.start is not None

    @property
    def ok(self) -> bool:
        return self.end is not None and not self.error

    @property
    def ttft(self) -> float | None:
        if self.start is None or not self.token_times:
            return None
        return self.token_times[0] - self.start

    @property
    def e2el(self) -> float | None:
        if self.start is None or self.end is None:
            return None
        return self.end - self.start

    @property
    def output_tokens(self) -> int:
        """Tokens generated: the server's usage when given, else the chunks counted."""
        if self.completion_tokens is not None:
            return self.completion_tokens
        return len(self.token_times)

    def fail(self, error: str) -> None:
        if not self.error:
            self.error = error


@dataclass(frozen=True, kw_only=True)
class ClientSettings:
    base_url: str  # ending in /v1
    base_urls: tuple[str, ...] = ()  # several routers: request i goes to base_urls[i % n]
    model: str
    api_key: str | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)
    request_timeout_s: float = 300.0
    connect_timeout_s: float = 10.0


def new_session(connections: int) -> aiohttp.ClientSession:
    """The run's one session; its pool is as large as the most requests in flight, so the
    connection limit never becomes a hidden concurrency limit."""
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None)
    return aiohttp.ClientSession(connector=connector, timeout=timeout)


class ChatClient:
    """Streams chat completions from one OpenAI-compatible base URL."""

    def __init__(self, settings: ClientSettings, session: aiohttp.ClientSession) -> None:
        self.settings = settings
        self._session = session
        bases = settings.base_urls or (settings.base_url,)
        self._urls = [base.rstrip("/") + "/chat/completions" for base in bases]
        self._headers = {"Content-Type": "application/json"}
        if settings.api_key:
            self._headers["Authorization"] = f"Bearer {settings.api_key}"
        self._timeout = aiohttp.ClientTimeout(
            total=settings.request_timeout_s, sock_connect=settings.connect_timeout_s
        )

    async def send(self, request: BenchRequest, result: RequestResult) -> None:
        """Send `request`, filling `result` as it goes; failures are recorded, not raised."""
        payload = orjson.dumps(request.body(self.settings.model, self.settings.extra_body))
        result.start = time.perf_counter()
        try:
            async with self._session.post(
                self._urls[result.index % len(self._urls)],
                data=payload,
                headers=self._headers,
                timeout=self._timeout,
            ) as response:
                result.headers_at = time.perf_counter()
                result.status = response.status
                result.di_cache = response.headers.get("X-DI-Cache")
                result.replica = response.headers.get("X-DI-Replica")
                if response.status >= 400:
                    result.fail(f"HTTP {response.status}: {await _error_message(response)}")
                elif not await _read_stream(response, result):
                    result.fail("the stream ended without [DONE]")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # ValueError: a malformed event (orjson) or an over-long line (aiohttp).
            detail = str(exc)
            result.fail(f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__)
        result.end = time.perf_counter()


async def _read_stream(response: aiohttp.ClientResponse, result: RequestResult) -> bool:
    """Read SSE events until [DONE]; True when it came. Servers send one-line `data:` events."""
    async for line in response.content:
        arrived = time.perf_counter()
        if not line.startswith(b"data:"):
            continue  # blank separators, comments, other fields
        data = line[5:].strip()
        if data == b"[DONE]":
            return True
        event = orjson.loads(data)
        if not isinstance(event, dict):
            continue
        if "error" in event:
            # The router and vLLM report mid-stream failures as an error event.
            result.fail(f"stream error: {_message_of(event)}")
            continue
        if isinstance(usage := event.get("usage"), dict):
            _read_usage(usage, result)
        if any(_has_output(choice) for choice in event.get("choices") or ()):
            result.token_times.append(arrived)
    return False


def _has_output(choice: Any) -> bool:
    delta = choice.get("delta") if isinstance(choice, dict) else None
    return isinstance(delta, dict) and any(delta.get(name) for name in _OUTPUT_DELTA_FIELDS)


def _read_usage(usage: dict[str, Any], result: RequestResult) -> None:
    result.prompt_tokens = _int_or_none(usage.get("prompt_tokens"))
    result.completion_tokens = _int_or_none(usage.get("completion_tokens"))
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    # A server without prefix caching reports no details: count that as nothing cached.
    result.cached_tokens = _int_or_none(cached) or 0


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


async def _error_message(response: aiohttp.ClientResponse) -> str:
    raw = await response.content.read(_MAX_ERROR_BODY)
    try:
        return _message_of(orjson.loads(raw))
    except orjson.JSONDecodeError:
        return raw.decode(errors="replace").strip() or response.reason or ""


def _message_of(body: Any) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error if error is not None else body)
