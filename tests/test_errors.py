"""Every error case answers an OpenAI envelope with the right status, and the SDK's exception."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import openai
import pytest

from router.config import RouterConfig
from router.errors import InvalidRequest, UpstreamError, UpstreamTimeout

from .conftest import Fake, Stack, with_replicas


def user(text: str = "hi") -> Any:
    return [{"role": "user", "content": text}]


async def post_raw(
    stack: Stack,
    body: bytes,
    content_type: str = "application/json",
    path: str = "/chat/completions",
) -> tuple[int, Any, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(stack.base_url + path, data=body, headers={"Content-Type": content_type}) as r,
    ):
        return r.status, r.headers.copy(), await r.json(content_type=None)


def assert_envelope(body: Any, param: str | None = None) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    assert body["error"]["param"] == param


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"model": 3, "messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"model": "m"}', "messages"),
        (b'{"model": "m", "messages": "hi"}', "messages"),
        (b'{"model": "m", "messages": []}', "messages"),
        (b'{"model": "m", "messages": [{"content": "hi"}]}', "messages[0].role"),
        (b'{"model": "m", "messages": [{"role": "wizard", "content": "hi"}]}', "messages[0].role"),
        (b'{"model": "m", "messages": [{"role": "user"}]}', "messages[0].content"),
        (b'{"model": "m", "messages": [{"role": [], "content": "x"}]}', "messages[0].role"),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "text", '
            b'"text": "x", "cache_control": {"type": "ephemeral"}}]}], "tools": 5}',
            "tools",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}], '
            b'"logit_bias": {"\xc2\xb2": 1}}',
            "logit_bias",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "metadata": "s"}',
            "metadata",
        ),
        (b'{"model": "m", "messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": [{"text": "x"}]}]}',
            "messages[0].content[0].type",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]}',
            "messages[0].content[0].text",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": '
            b'[{"type": "image_url", "image_url": {}}]}]}',
            "messages[0].content[0].image_url.url",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], '
            b'"stream_options": {"include_usage": true}}',
            "stream_options",
        ),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 0}', "n"),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}], '
            b'"logit_bias": {"abc": 1}}',
            "logit_bias",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}], '
            b'"logit_bias": {"5": 500}}',
            "logit_bias",
        ),
    ],
)
async def test_bad_bodies_are_400_naming_the_param(stack: Stack, body: bytes, param: str) -> None:
    status, headers, answer = await post_raw(stack, body)
    assert status == 400
    assert_envelope(answer, param)
    assert answer["error"]["type"] == "invalid_request_error"
    assert headers["X-Request-Id"]


def test_sdk_raises_bad_request(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        stack.client().chat.completions.create(model="m", messages=[])
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == "messages"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        stack.client().chat.completions.create(
            model="m", messages=user(), stream_options={"include_usage": True}
        )


async def test_wrong_content_type_is_415(stack: Stack) -> None:
    status, _, answer = await post_raw(stack, b"model=m", "application/x-www-form-urlencoded")
    assert status == 415
    assert_envelope(answer)


async def test_unknown_path_404_and_wrong_method_405(stack: Stack) -> None:
    status, _, answer = await post_raw(stack, b"{}", path="/nothing/here")
    assert status == 404
    assert_envelope(answer)
    async with (
        aiohttp.ClientSession() as session,
        session.put(stack.base_url + "/models") as response,
    ):
        assert response.status == 405
        assert "GET" in response.headers["Allow"]
        assert_envelope(await response.json())
    with pytest.raises(openai.NotFoundError):
        stack.client().get("/nothing/here", cast_to=object)


def test_body_over_the_limit_is_413(make_stack: Any) -> None:
    def small(config: RouterConfig) -> RouterConfig:
        server = config.server.model_copy(update={"max_body_size": 2048})
        return config.model_copy(update={"server": server})

    live = make_stack(edit=small)
    with pytest.raises(openai.APIStatusError) as caught:
        live.client().chat.completions.create(model="m", messages=user("x" * 4096))
    assert caught.value.status_code == 413
    assert caught.value.body["code"] == "request_too_large"  # type: ignore[index]


def test_unreachable_upstream_is_502_without_its_address(make_stack: Any, dead_url: str) -> None:
    live = make_stack(edit=lambda c: with_replicas(c, "sim-text", [dead_url]))
    with pytest.raises(openai.InternalServerError) as caught:
        live.client().chat.completions.create(model="m", messages=user())
    # 502 when the request finds it dead, 503 when the background probe found it first.
    assert caught.value.status_code in (502, 503)
    message = str(caught.value.body)
    assert "sim-text" in message and "127.0.0.1" not in message


def test_one_dead_replica_is_skipped(make_stack: Any, stack: Stack, dead_url: str) -> None:
    alive = stack.fleets["sim-text"].replicas[0].url
    live = make_stack(edit=lambda c: with_replicas(c, "sim-text", [dead_url, alive]))
    replicas = {
        live.client()
        .chat.completions.with_raw_response.create(model="m", messages=user(str(i)))
        .headers["X-DI-Replica"]
        for i in range(6)
    }
    assert replicas == {"sim-text-f1"}


def test_upstream_timeout_is_504(make_stack: Any, fake_upstream: Fake) -> None:
    fake_upstream.upstream.mode = "hang"
    live = make_stack(
        edit=lambda c: with_replicas(
            c, "sim-text", [fake_upstream.url], timeout={"connect": 1, "read": 0.2}
        )
    )
    with pytest.raises(openai.APIStatusError) as caught:
        live.client().chat.completions.create(model="m", messages=user())
    assert caught.value.status_code == 504
    assert caught.value.body["code"] == "upstream_timeout"  # type: ignore[index]


@pytest.mark.parametrize(
    ("status", "exception"),
    [
        (400, openai.BadRequestError),
        (404, openai.NotFoundError),
        (422, openai.UnprocessableEntityError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
def test_upstream_status_passes_through(
    stack: Stack, status: int, exception: type[openai.APIStatusError]
) -> None:
    with pytest.raises(exception) as caught:
        stack.client().chat.completions.create(
            model="m",
            messages=user(),
            extra_body={"sim_fault": {"status": status, "message": f"sim says {status}"}},
        )
    assert caught.value.status_code == status
    assert caught.value.message.endswith(f"sim says {status}")
    assert "127.0.0.1" not in str(caught.value.body)


@pytest.mark.parametrize("status", [401, 403])
def test_upstream_refusing_the_routers_key_is_502(stack: Stack, status: int) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        stack.client().chat.completions.create(
            model="m",
            messages=user(),
            extra_body={"sim_fault": {"status": status, "message": "bad key sk-...abcd"}},
        )
    # Not the client's AuthenticationError: its key was fine, the router's upstream key was not.
    assert caught.value.status_code == 502
    assert caught.value.body["code"] == "upstream_auth_failed"  # type: ignore[index]
    assert "abcd" not in caught.value.message


def test_upstream_error_without_json_body(make_stack: Any, fake_upstream: Fake) -> None:
    fake_upstream.upstream.mode = "status"
    fake_upstream.upstream.status = 502
    fake_upstream.upstream.error_body = b"<html>Bad Gateway</html>"
    live = make_stack(edit=lambda c: with_replicas(c, "sim-text", [fake_upstream.url]))
    with pytest.raises(openai.APIStatusError) as caught:
        live.client().chat.completions.create(model="m", messages=user())
    assert caught.value.status_code == 502
    assert "answered HTTP 502" in caught.value.message


async def test_upstream_failing_mid_stream_ends_with_an_error_event(stack: Stack) -> None:
    for fault in ({"disconnect_after_chunks": 2}, {"error_after_chunks": 2}):
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                stack.base_url + "/chat/completions",
                json={"model": "m", "messages": user(), "stream": True, "sim_fault": fault},
            ) as response,
        ):
            data = await response.read()
        events = [e for e in data.split(b"\n\n") if e]
        assert events[-1] == b"data: [DONE]"
        assert events[-2].startswith(b'data: {"error"'), fault
    with pytest.raises(openai.APIError):
        list(
            stack.client().chat.completions.create(
                model="m",
                messages=user(),
                stream=True,
                extra_body={"sim_fault": {"disconnect_after_chunks": 1}},
            )
        )


def test_api_keys_are_enforced_and_never_logged(
    make_stack: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("DI_KEY", "sk-router-secret")

    def with_keys(config: RouterConfig) -> RouterConfig:
        server = config.server.model_validate(
            {**config.server.model_dump(), "api_keys": ["env:DI_KEY"]}
        )
        return config.model_copy(update={"server": server})

    caplog.set_level(logging.DEBUG)
    live = make_stack(edit=with_keys)
    with pytest.raises(openai.AuthenticationError):
        live.client().chat.completions.create(model="m", messages=user())
    with openai.OpenAI(base_url=live.base_url, api_key="sk-router-secret", max_retries=0) as keyed:
        assert keyed.chat.completions.create(model="m", messages=user()).choices
    assert "sk-router-secret" not in caplog.text
    assert "sk-router-secret" not in repr(live.app)


def test_error_classes_know_their_status() -> None:
    assert InvalidRequest("x").http_status == 400
    assert UpstreamError("x").http_status == 502
    assert UpstreamTimeout("x").http_status == 504
    assert UpstreamError("x", upstream_status=429).http_status == 429


async def test_odd_digits_in_a_page_limit_are_400(stack: Stack) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(stack.base_url + "/chat/completions", params={"limit": "²"}) as response,
    ):
        assert response.status == 400
        assert_envelope(await response.json(), "limit")
