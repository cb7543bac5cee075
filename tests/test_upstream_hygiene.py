"""router/upstream.py: what the router does not take from an upstream.

Redirects are not followed, a 200 that is not an answer is a 502, bodies are capped, and an
upstream error text never carries the router's upstream key or a replica's address to a client.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from pydantic import SecretStr

from router.config import RouterConfig
from router.upstream import (
    MalformedStream,
    check_sse_event,
    model_field,
    rewrite_model,
    scrub,
)

from .conftest import Stack, with_replicas
from .scripted import Replicas
from .test_retry import tune, user

KEY = "sk-upstream-secret-0123456789"


def single(url: str, **fields: Any) -> Any:
    def edit(config: RouterConfig) -> RouterConfig:
        config = with_replicas(config, "sim-text", [url], **fields)
        return tune(config, health={"probe_interval": 60})

    return edit


async def post(live: Stack, **body: Any) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            live.base_url + "/chat/completions", json={"model": "m", "messages": user(), **body}
        ) as response,
    ):
        return response.status, dict(response.headers), await response.read()


@pytest.mark.parametrize("stream", [False, True])
async def test_redirect_is_502_and_not_followed(
    make_stack: Any, scripted: Replicas, stream: bool
) -> None:
    moved = scripted.new("moved", mode="redirect")
    live = make_stack(edit=single(moved.url))
    status, headers, body = await post(live, stream=stream)
    assert status == 502
    assert b"upstream_redirect" in body
    assert "Location" not in headers and b"127.0.0.1:9" not in body
    assert moved.posts == 1


@pytest.mark.parametrize("mode", ["garbage", "empty"])
def test_a_200_that_is_not_a_json_object_is_502(
    make_stack: Any, scripted: Replicas, mode: str
) -> None:
    odd = scripted.new("odd", mode=mode)
    live = make_stack(edit=single(odd.url))
    with pytest.raises(openai.APIStatusError) as caught:
        live.client().chat.completions.create(model="m", messages=user())
    assert caught.value.status_code == 502
    assert caught.value.body["code"] == "upstream_bad_response"  # type: ignore[index]


async def test_a_stream_of_non_sse_lines_is_502_before_any_byte(
    make_stack: Any, scripted: Replicas
) -> None:
    odd = scripted.new("odd", mode="sse_garbage")
    live = make_stack(edit=single(odd.url))
    status, headers, body = await post(live, stream=True)
    assert status == 502
    assert headers["Content-Type"].startswith("application/json")
    assert b"upstream_bad_response" in body and b"<html>" not in body


async def test_a_json_answer_to_a_streaming_request_is_502(
    make_stack: Any, scripted: Replicas
) -> None:
    odd = scripted.new("odd", mode="garbage")  # text/plain, whatever was asked
    live = make_stack(edit=single(odd.url))
    status, _, body = await post(live, stream=True)
    assert status == 502 and b"upstream_bad_response" in body


def test_upstream_body_over_the_cap_is_502(make_stack: Any, scripted: Replicas) -> None:
    big = scripted.new("big")

    def edit(config: RouterConfig) -> RouterConfig:
        return tune(single(big.url)(config), upstream={"max_body_size": 64})

    live = make_stack(edit=edit)
    with pytest.raises(openai.APIStatusError) as caught:
        live.client().chat.completions.create(model="m", messages=user())
    assert caught.value.status_code == 502
    assert caught.value.body["code"] == "upstream_body_too_large"  # type: ignore[index]


def test_error_text_echoing_key_and_address_is_scrubbed(
    make_stack: Any, scripted: Replicas, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UPSTREAM_KEY", KEY)
    echo = scripted.new("echo", mode="status", status=400)
    host_port = echo.url.removeprefix("http://").removesuffix("/v1")
    echo.error_body = (
        b'{"error": {"message": "bad request to '
        + echo.url.encode()
        + b"/chat/completions from "
        + host_port.encode()
        + b" with key "
        + KEY.encode()
        + b' (Authorization: Bearer abc.def)", "type": "invalid_request_error", "param": "'
        + host_port.encode()
        + b'"}}'
    )
    live = make_stack(edit=single(echo.url, api_key="env:UPSTREAM_KEY"))
    with pytest.raises(openai.BadRequestError) as caught:
        live.client().chat.completions.create(model="m", messages=user())
    text = str(caught.value.body) + caught.value.message
    assert caught.value.status_code == 400
    assert "bad request to" in text  # the message itself still reaches the client
    for secret in (KEY, host_port, "127.0.0.1", "abc.def"):
        assert secret not in text


def test_error_text_quoting_the_key_cut_or_recased_or_the_port_is_scrubbed(
    make_stack: Any, scripted: Replicas, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upstream may quote its key masked, without its prefix or lower-cased, and name its
    port beside another host name: none of it reaches the client. A 4xx without a type or
    code is the client's kind of error, and the upstream did answer."""
    key = "AzureKey0123456789abcdefSECRETzz"
    monkeypatch.setenv("UPSTREAM_KEY", key)
    echo = scripted.new("echo", mode="status", status=400)
    port = echo.url.removeprefix("http://").removesuffix("/v1").rsplit(":", 1)[1]
    quoted = [key[:14] + "***" + key[-4:], key.lower(), key[3:], f"localhost:{port}"]
    quoted.append(f"http%3A%2F%2Flocalhost%3A{port}")
    echo.error_body = orjson.dumps({"error": {"message": "bad key: " + " | ".join(quoted)}})
    live = make_stack(edit=single(echo.url, api_key="env:UPSTREAM_KEY"))
    with pytest.raises(openai.BadRequestError) as caught:
        live.client().chat.completions.create(model="m", messages=user())
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["message"].startswith("bad key: ")
    assert port not in body["message"]
    for fragment in (key[:8], key[-8:], key.lower()[10:18]):
        assert fragment.casefold() not in body["message"].casefold()
    assert body["type"] == "invalid_request_error" and body["code"] == "upstream_error"


async def test_non_sse_lines_mid_stream_end_it_with_an_error_event(
    make_stack: Any, scripted: Replicas
) -> None:
    odd = scripted.new("odd", mode="sse_garbage_late")
    live = make_stack(edit=single(odd.url))
    body = {"model": "m", "messages": user(), "stream": True}
    async with (
        aiohttp.ClientSession() as session,
        session.post(live.base_url + "/chat/completions", json=body) as response,
    ):
        assert response.status == 200
        first = await response.content.readuntil(b"\n\n")
        assert b'"content":"ok"' in first
        scripted.release(odd)  # now the replica sends a line that is not SSE
        rest = await response.read()
    events = [e for e in rest.split(b"\n\n") if e]
    assert b"not server-sent events" in events[-2] and events[-1] == b"data: [DONE]"
    assert b"Traceback" not in rest


@pytest.mark.parametrize(
    "event",
    [b"data: {}", b"data:[DONE]", b": keep-alive", b"event: x\ndata: {}", b"id: 3\nretry: 10"],
)
def test_sse_fields_and_comments_pass(event: bytes) -> None:
    check_sse_event(event)


@pytest.mark.parametrize("event", [b"<html>", b"data: {}\nTraceback", b"{}"])
def test_other_lines_are_not_an_event_stream(event: bytes) -> None:
    with pytest.raises(MalformedStream):
        check_sse_event(event)


def test_the_model_id_is_rewritten_to_the_clients() -> None:
    field = model_field("gpt-mini")
    served = b'{"id": "x", "model": "llama-3-8b", "note": "\\"model\\": \\"y\\""}'
    assert rewrite_model(served, field) == (
        b'{"id": "x", "model":"gpt-mini", "note": "\\"model\\": \\"y\\""}'
    )
    # Already the client's id (spacing aside): the bytes pass through untouched.
    for echoed in (b'{"model":"gpt-mini","n":1}', b'{"model" : "gpt-mini","n":1}'):
        assert rewrite_model(echoed, field) is echoed
    assert rewrite_model(b'{"id": "x"}', field) == b'{"id": "x"}'
    # "model" as a value first, then as the key: the key's value is the one rewritten.
    listed = b'{"object": "model", "model": "llama-3-8b"}'
    assert rewrite_model(listed, field) == b'{"object": "model", "model":"gpt-mini"}'


def test_scrub_finds_key_fragments_beside_characters_whose_case_folds_longer() -> None:
    """``ß`` folds to ``ss``: the comparison must still line up with the text."""
    backend = SimpleNamespace(api_key=SecretStr("AKIAIOSFODNN7EXAMPLEKEY9"))
    replica: Any = SimpleNamespace(url="http://127.0.0.1:19111/v1", backend=backend)
    text = scrub("Größe: key AKIAIOSFODNN7EXA, İ akiaiosfodnn7; port 19111, port=19111", replica)
    assert "AKIAIOSF" not in text and "akiaiosf" not in text and "19111" not in text
    assert text.startswith("Größe: key [redacted]")
