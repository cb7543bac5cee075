"""Every error on /v1/messages* is Anthropic's envelope with its status and type; the SDK's
typed exceptions follow. Includes the router's own errors (body, path, size, upstream)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aiohttp
import anthropic
import orjson
import pytest

from router.config import RouterConfig

from .conftest import Fake, Stack, with_replicas

USER: Any = [{"role": "user", "content": "hi"}]


def base(stack: Stack) -> str:
    return stack.base_url.removesuffix("/v1")


@pytest.fixture
def client(stack: Stack) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=base(stack), api_key="t", max_retries=0) as live:
        yield live


async def post(
    stack: Stack,
    body: bytes,
    path: str = "/v1/messages",
    content_type: str = "application/json",
    method: str = "POST",
) -> tuple[int, Any, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, base(stack) + path, data=body, headers={"Content-Type": content_type}
        ) as r,
    ):
        return r.status, r.headers.copy(), await r.json(content_type=None)


def assert_anthropic(answer: Any, error_type: str) -> None:
    assert set(answer) == {"type", "error"}
    assert answer["type"] == "error"
    assert set(answer["error"]) == {"type", "message"}
    assert answer["error"]["type"] == error_type
    assert answer["error"]["message"]


def text_block(marker: Any) -> dict[str, Any]:
    return {"type": "text", "text": "x", "cache_control": marker}


def body(**fields: Any) -> bytes:
    return orjson.dumps({"model": "m", "max_tokens": 5, "messages": USER, **fields})


@pytest.mark.parametrize(
    ("raw", "mentions"),
    [
        (b"{not json", "JSON"),
        (b"[1]", "object"),
        (orjson.dumps({"model": "m", "messages": USER}), "max_tokens"),
        (body(max_tokens=0), "max_tokens"),
        (body(max_tokens=True), "max_tokens"),
        (orjson.dumps({"max_tokens": 5, "messages": USER}), "model"),
        (body(messages=[]), "messages"),
        (body(messages="hi"), "messages"),
        (body(messages=[{"role": "system", "content": "x"}]), "messages.0.role"),
        (body(messages=[{"role": "user", "content": 5}]), "messages.0.content"),
        (body(messages=[{"role": "user", "content": [{"type": "audio"}]}]), "content.0.type"),
        (body(messages=[{"role": "user", "content": [{"type": "text"}]}]), "content.0.text"),
        (
            body(messages=[{"role": "assistant", "content": [{"type": "tool_result"}]}]),
            "messages.0.content.0.type",
        ),
        (
            body(
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image",
                                "source": {"type": "base64", "media_type": "image/bmp", "data": ""},
                            }
                        ],
                    }
                ]
            ),
            "media_type",
        ),
        (body(system=5), "system"),
        (body(system=[{"type": "image"}]), "system.0.type"),
        (body(tools=[{"name": "f"}]), "tools.0.input_schema"),
        (body(tools=[{"type": "web_search_20250305", "name": "w"}]), "tools.0.type"),
        (body(tool_choice={"type": "sometimes"}), "tool_choice"),
        (body(stop_sequences="x"), "stop_sequences"),
        (body(stream="yes"), "stream"),
        (body(extra=1, temperature="hot"), "temperature"),
        (
            body(system=[{"type": "text", "text": "x", "cache_control": {"type": "forever"}}]),
            "system.0.cache_control.type: Unknown cache_control type 'forever'",
        ),
        (
            body(
                system=[
                    {
                        "type": "text",
                        "text": "x",
                        "cache_control": {"type": "ephemeral", "ttl": "2h"},
                    }
                ]
            ),
            "system.0.cache_control.ttl: Unknown cache_control ttl '2h'",
        ),
        (
            body(
                messages=[
                    {"role": "user", "content": [text_block({"type": "ephemeral", "ttl": 5})]}
                ]
            ),
            "messages.0.content.0.cache_control.ttl",
        ),
        (body(cache_control="ephemeral"), "cache_control: cache_control must be an object"),
        (
            body(
                messages=[{"role": "user", "content": "x", "cache_control": {"type": "ephemeral"}}]
            ),
            "messages.0.cache_control: Extra inputs are not permitted",
        ),
        (
            body(
                messages=[
                    {"role": "user", "content": [{**text_block({"type": "ephemeral"}), "text": ""}]}
                ]
            ),
            "messages.0.content.0.text: cache_control cannot be set for empty text blocks",
        ),
        (
            body(
                messages=[
                    {"role": "user", "content": "x"},
                    {
                        "role": "assistant",
                        "content": [
                            {
                                "type": "redacted_thinking",
                                "data": "x",
                                "cache_control": {"type": "ephemeral"},
                            },
                            {"type": "text", "text": "y"},
                        ],
                    },
                ]
            ),
            "messages.1.content.0.cache_control: Thinking blocks cannot be marked",
        ),
        (
            body(tools=[{"name": "f", "input_schema": {}, "cache_control": {}}]),
            "tools.0.cache_control.type",
        ),
        (body(thinking={"type": "enabled", "budget_tokens": "lots"}), "budget_tokens"),
        (body(output_config={"effort": "extreme"}), "effort"),
    ],
)
async def test_bad_bodies_are_400_in_anthropic_envelope(
    stack: Stack, raw: bytes, mentions: str
) -> None:
    status, headers, answer = await post(stack, raw)
    assert status == 400
    assert_anthropic(answer, "invalid_request_error")
    assert mentions in answer["error"]["message"]
    assert headers["X-Request-Id"]


FIVE_MINUTES = {"type": "ephemeral"}
ONE_HOUR = {"type": "ephemeral", "ttl": "1h"}


@pytest.mark.parametrize(
    ("raw", "mentions"),
    [
        (body(system=[text_block({"type": "ephemeral", "ttl": "7m"})]), "system.0.cache_control"),
        (
            body(system=[text_block(FIVE_MINUTES) for _ in range(5)]),
            "at most 4 cache_control breakpoints",
        ),
        (
            body(system=[text_block(FIVE_MINUTES), text_block(ONE_HOUR)]),
            "ttl '1h' must not come after one with ttl '5m'",
        ),
    ],
)
async def test_count_tokens_refuses_the_breakpoints_messages_refuses(
    stack: Stack, raw: bytes, mentions: str
) -> None:
    """``/v1/messages/count_tokens`` takes the same body as ``/v1/messages``, and refuses the
    same ``cache_control`` breakpoints with the same message."""
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        status, _, answer = await post(stack, raw, path)
        assert status == 400, path
        assert_anthropic(answer, "invalid_request_error")
        assert mentions in answer["error"]["message"], path
    status, _, answer = await post(
        stack, body(system=[text_block(ONE_HOUR)]), "/v1/messages/count_tokens"
    )
    assert status == 200
    assert answer["input_tokens"] > 0


async def test_router_errors_keep_anthropic_statuses(stack: Stack) -> None:
    status, _, answer = await post(stack, b"x=1", content_type="application/x-www-form-urlencoded")
    assert status == 415
    assert_anthropic(answer, "invalid_request_error")
    status, _, answer = await post(stack, body(), path="/v1/messages/nope")
    assert status == 404
    assert_anthropic(answer, "not_found_error")
    status, _, answer = await post(stack, b"", method="GET")
    assert status == 405
    assert_anthropic(answer, "invalid_request_error")
    # The OpenAI surface keeps its own envelope for the same mistakes.
    status, _, answer = await post(stack, b"{}", path="/v1/nothing")
    assert status == 404 and set(answer) == {"error"}


def test_sdk_raises_typed_errors(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model="m", max_tokens=0, messages=USER)
    assert bad.value.status_code == 400
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve("msgbatch_nothing")
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(
            model="m", max_tokens=5, messages=USER, extra_headers={"X-DI-Effort": "turbo"}
        )


def test_body_over_the_limit_is_413_request_too_large(make_stack: Any) -> None:
    def small(config: RouterConfig) -> RouterConfig:
        server = config.server.model_copy(update={"max_body_size": 4096})
        return config.model_copy(update={"server": server})

    stack = make_stack(edit=small)
    with (
        anthropic.Anthropic(base_url=base(stack), api_key="t", max_retries=0) as client,
        pytest.raises(anthropic.APIStatusError) as caught,
    ):
        client.messages.create(
            model="m", max_tokens=5, messages=[{"role": "user", "content": "x" * 10_000}]
        )
    assert caught.value.status_code == 413
    assert caught.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]


@pytest.mark.parametrize(
    ("status", "exception", "error_type"),
    [
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.InternalServerError, "overloaded_error"),
        (400, anthropic.BadRequestError, "invalid_request_error"),
    ],
)
def test_upstream_errors_map_to_anthropic_types(
    make_stack: Any, fake_upstream: Fake, status: int, exception: type[Exception], error_type: str
) -> None:
    fake_upstream.upstream.mode = "status"
    fake_upstream.upstream.status = status
    fake_upstream.upstream.error_headers = {"Retry-After": "7"} if status == 429 else {}
    stack = make_stack(edit=lambda c: with_replicas(c, "sim-text", [fake_upstream.url]))
    with (
        anthropic.Anthropic(base_url=base(stack), api_key="t", max_retries=0) as client,
        pytest.raises(exception) as caught,
    ):
        client.messages.create(model="m", max_tokens=5, messages=USER)
    error: Any = caught.value
    assert error.status_code == status
    assert error.body == {
        "type": "error",
        "error": {"type": error_type, "message": "upstream says no"},
    }
    if status == 429:
        assert error.response.headers["Retry-After"] == "7"


def test_unreachable_upstream_is_502_api_error(make_stack: Any, dead_url: str) -> None:
    stack = make_stack(edit=lambda c: with_replicas(c, "sim-text", [dead_url]))
    with (
        anthropic.Anthropic(base_url=base(stack), api_key="t", max_retries=0) as client,
        pytest.raises(anthropic.InternalServerError) as caught,
    ):
        client.messages.create(model="m", max_tokens=5, messages=USER)
    assert caught.value.status_code == 502
    assert caught.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    assert "127.0.0.1" not in str(caught.value.body)


def test_a_stream_that_breaks_ends_with_an_error_event(
    make_stack: Any, fake_upstream: Fake
) -> None:
    fake_upstream.upstream.stream_style = "truncated"
    stack = make_stack(edit=lambda c: with_replicas(c, "sim-text", [fake_upstream.url]))
    with anthropic.Anthropic(base_url=base(stack), api_key="t", max_retries=0) as client:
        stream = client.messages.create(model="m", max_tokens=5, messages=USER, stream=True)
        seen = []
        with pytest.raises(anthropic.APIStatusError) as caught:
            for event in stream:
                seen.append(event.type)
    assert seen[0] == "message_start" and "message_stop" not in seen
    assert "ended the stream early" in str(caught.value.body)
