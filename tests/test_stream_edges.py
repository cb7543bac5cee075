"""Streams from upstreams that are not the well-behaved simulator."""

from __future__ import annotations

from typing import Any

import aiohttp
import openai
import pytest

from .conftest import Fake, Stack, with_replicas


def events_of(data: bytes) -> list[bytes]:
    return [e for e in data.split(b"\n\n") if e]


async def post_stream(stack: Stack, path: str, body: dict[str, Any]) -> bytes:
    async with (
        aiohttp.ClientSession() as session,
        session.post(stack.base_url + path, json={**body, "stream": True}) as response,
    ):
        assert response.status == 200
        return await response.read()


def on_fake(make_stack: Any, fake: Fake, **fields: Any) -> Stack:
    stack: Stack = make_stack(edit=lambda c: with_replicas(c, "sim-text", [fake.url], **fields))
    return stack


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


async def test_done_without_a_space_ends_the_stream(make_stack: Any, fake_upstream: Fake) -> None:
    fake_upstream.upstream.stream_style = "nospace_done"
    events = events_of(
        await post_stream(on_fake(make_stack, fake_upstream), "/chat/completions", CHAT)
    )
    assert events[-1] == b"data:[DONE]"
    assert not any(b'"error"' in e for e in events)


async def test_half_an_event_is_not_relayed(make_stack: Any, fake_upstream: Fake) -> None:
    fake_upstream.upstream.stream_style = "truncated"
    events = events_of(
        await post_stream(on_fake(make_stack, fake_upstream), "/chat/completions", CHAT)
    )
    assert not any(b"chat.comp" in e and not e.endswith(b"}") for e in events)
    assert events[-2].startswith(b'data: {"error"') and events[-1] == b"data: [DONE]"


async def test_malformed_chunk_stored_stream_still_ends_cleanly(
    make_stack: Any, fake_upstream: Fake
) -> None:
    fake_upstream.upstream.stream_style = "malformed"
    live = on_fake(make_stack, fake_upstream)
    events = events_of(await post_stream(live, "/chat/completions", {**CHAT, "store": True}))
    assert events[-1] == b"data: [DONE]"


async def test_malformed_chunk_in_a_translated_responses_stream_fails_it(
    make_stack: Any, fake_upstream: Fake
) -> None:
    fake_upstream.upstream.stream_style = "malformed"
    live = on_fake(make_stack, fake_upstream)
    data = await post_stream(live, "/responses", {"model": "m", "input": "hi"})
    assert b"response.failed" in events_of(data)[-1]
    assert b"HTTP/1.1" not in data  # never a second response inside the stream


@pytest.mark.parametrize("path", ["/chat/completions", "/responses", "/messages"])
async def test_an_error_event_mid_stream_names_no_replica_url(
    make_stack: Any, fake_upstream: Fake, path: str
) -> None:
    upstream = fake_upstream.upstream
    upstream.stream_style = "error"
    upstream.error_body = (
        b'{"error": {"message": "KV full at ' + fake_upstream.url.encode() + b'"}}'
    )
    live = on_fake(make_stack, fake_upstream)
    body: dict[str, Any] = {"model": "m", "input": "hi"}
    if path != "/responses":
        body = {**CHAT, "max_tokens": 5}
    data = await post_stream(live, path, body)
    assert b"KV full at [redacted]" in data
    assert fake_upstream.url.encode() not in data
    assert fake_upstream.url.split("//")[1].split(":")[0].encode() not in data


def test_responses_backend_streams_end_without_done_and_are_stored(
    make_stack: Any, fake_upstream: Fake
) -> None:
    live = on_fake(make_stack, fake_upstream, api="responses")
    client = live.client()
    with client.responses.stream(model="client-model", input="hi") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds == ["response.created", "response.completed"]
    assert final.model == "client-model"
    assert client.responses.retrieve(final.id).output_text == "ok"
    plain = client.responses.create(model="client-model", input="hi")
    assert plain.output_text == "ok" and plain.model == "client-model"


def test_responses_passthrough_strips_every_marker(make_stack: Any, fake_upstream: Fake) -> None:
    # Tools make it a code request: front the code pool with the fake.
    live: Stack = make_stack(
        edit=lambda c: with_replicas(
            c, "sim-code", [fake_upstream.url], api="responses", prompt_cache_key=True
        )
    )
    marker = {"type": "ephemeral"}
    tool: Any = {"type": "function", "name": "f", "parameters": {}, "cache_control": marker}
    item: Any = {
        "role": "user",
        "content": [{"type": "input_text", "text": "stable", "cache_control": marker}],
    }
    live.client().responses.create(
        model="m", input=[item], tools=[tool], extra_body={"cache_control": marker}
    )
    sent = fake_upstream.upstream.received[-1].body
    assert "cache_control" not in str(sent)
    assert len(sent["prompt_cache_key"]) == 32
    assert sent["input"][0]["content"][0]["text"] == "stable"


def test_upstream_error_body_in_two_reads_keeps_its_message(
    make_stack: Any, fake_upstream: Fake
) -> None:
    fake_upstream.upstream.mode = "status"
    fake_upstream.upstream.status = 400
    fake_upstream.upstream.error_body = (
        b'{"error": {"message": "' + b"x" * 2000 + b'", "type": "invalid_request_error", '
        b'"param": "temperature", "code": "bad_temp"}}'
    )
    with pytest.raises(openai.BadRequestError) as caught:
        on_fake(make_stack, fake_upstream).client().chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.body["param"] == "temperature"  # type: ignore[index]
    assert caught.value.body["code"] == "bad_temp"  # type: ignore[index]


def test_upstream_retry_after_reaches_the_client(make_stack: Any, fake_upstream: Fake) -> None:
    fake_upstream.upstream.mode = "status"
    fake_upstream.upstream.status = 429
    fake_upstream.upstream.error_body = b'{"error": {"message": "slow down", "type": "x"}}'
    fake_upstream.upstream.error_headers = {"Retry-After": "7"}
    with pytest.raises(openai.RateLimitError) as caught:
        on_fake(make_stack, fake_upstream).client().chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.message.endswith("slow down")
