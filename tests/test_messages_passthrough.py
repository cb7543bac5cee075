"""``api: messages`` backends get the client's Messages body passed through (a scripted fake)."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest

from router.config import RouterConfig
from router.handlers.messages import messages_stream_end

from .conftest import Fake, Stack, with_replicas

SYSTEM: Any = [
    {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}
]
USER: Any = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]


def messages_backend(fake: Fake, **fields: Any) -> Any:
    def edit(config: RouterConfig) -> RouterConfig:
        return with_replicas(config, "sim-text", [fake.url], api="messages", **fields)

    return edit


def client_for(stack: Stack) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=stack.base_url.removesuffix("/v1"), api_key="t", max_retries=0
    )


def test_json_passthrough_strips_markers_and_echoes_the_model(
    make_stack: Any, fake_upstream: Fake
) -> None:
    stack = make_stack(edit=messages_backend(fake_upstream, model="served-model"))
    with client_for(stack) as client:
        raw = client.messages.with_raw_response.create(
            model="claude-x",
            max_tokens=9,
            system=SYSTEM,
            messages=USER,
            thinking={"type": "enabled", "budget_tokens": 4096},
        )
    message = raw.parse()
    assert message.model == "claude-x"  # the upstream said "upstream-model"
    assert message.content[0].type == "text" and message.content[0].text == "ok"
    assert message.usage.cache_read_input_tokens == 7  # the backend's own figures, untouched
    assert raw.headers["X-DI-Backend"] == "sim-text"
    assert raw.headers["X-DI-Effort"] == "medium"
    assert raw.headers["X-DI-Cache"] == "miss"
    sent = fake_upstream.upstream.received[-1]
    assert sent.path == "/v1/messages"
    assert sent.body["model"] == "served-model"
    assert sent.body["system"] == [{"type": "text", "text": "You are terse."}]
    assert sent.body["thinking"] == {"type": "enabled", "budget_tokens": 4096}
    assert sent.body["max_tokens"] == 9 and sent.body["messages"] == USER


def test_forwarded_markers_reach_a_messages_backend_whole(
    make_stack: Any, fake_upstream: Fake
) -> None:
    stack = make_stack(edit=messages_backend(fake_upstream, forward_cache_control=True))
    with client_for(stack) as client:
        client.messages.create(model="m", max_tokens=9, system=SYSTEM, messages=USER)
    sent = fake_upstream.upstream.received[-1]
    assert sent.body["system"] == SYSTEM
    assert sent.body["model"] == "m"


def test_streamed_passthrough(make_stack: Any, fake_upstream: Fake) -> None:
    stack = make_stack(edit=messages_backend(fake_upstream))
    with (
        client_for(stack) as client,
        client.messages.stream(model="claude-x", max_tokens=9, messages=USER) as stream,
    ):
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "ok"
    assert final.model == "claude-x"
    assert final.stop_reason == "end_turn"
    assert fake_upstream.upstream.received[-1].body["stream"] is True


def test_a_broken_passthrough_stream_ends_with_an_error_event(
    make_stack: Any, fake_upstream: Fake
) -> None:
    fake_upstream.upstream.stream_style = "truncated"
    stack = make_stack(edit=messages_backend(fake_upstream))
    with client_for(stack) as client:
        stream = client.messages.create(model="m", max_tokens=9, messages=USER, stream=True)
        kinds = []
        try:
            for event in stream:
                kinds.append(event.type)
        except anthropic.APIStatusError as exc:
            error: Any = exc.body
        else:
            raise AssertionError("the stream ended without an error")
    assert kinds == ["message_start", "content_block_start", "content_block_delta"]
    assert error["error"]["type"] == "api_error"
    assert "ended the stream early" in error["error"]["message"]


def test_chat_requests_to_the_same_pool_still_use_chat(
    make_stack: Any, fake_upstream: Fake
) -> None:
    stack = make_stack(edit=messages_backend(fake_upstream))
    answer = stack.client().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].message.content == "ok"
    assert fake_upstream.upstream.received[-1].path == "/v1/chat/completions"


@pytest.mark.parametrize(
    ("event", "ends"),
    [
        (b'event: message_stop\ndata: {"type":"message_stop"}', True),
        (b'event:message_stop\ndata: {"type":"message_stop"}', True),
        (b'event: error\ndata: {"type":"error","error":{}}', True),
        (b'data: {"type":"message_stop"}', True),
        (b'event: content_block_delta\ndata: {"delta":{"text":"message_stop"}}', False),
        (b'event: message_delta\ndata: {"type":"message_delta"}', False),
    ],
)
def test_messages_stream_end(event: bytes, ends: bool) -> None:
    assert messages_stream_end(event) is ends
