"""Effort routing and the document and long types, end to end through the openai SDK."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import anthropic
import openai
import pytest

from router.config import ClassifyConfig, RouterConfig, RoutesConfig

from .conftest import Fake, Stack, with_replicas

USER: Any = [{"role": "user", "content": "Name three uses for a paperclip."}]
TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
    }
]
PDF = "data:application/pdf;base64," + base64.b64encode(b"%PDF-1.4 tiny").decode()
IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
FILE_PART = {"type": "file", "file": {"file_data": PDF, "filename": "a.pdf"}}


def routes(**extra: Any) -> Callable[[RouterConfig], RouterConfig]:
    """An edit adding route keys (``code@high``, ``document``, ...) to the default routes."""

    def edit(config: RouterConfig) -> RouterConfig:
        given = config.routes.model_dump(by_alias=True, exclude_none=True)
        new = RoutesConfig.model_validate({**given, **extra})
        return config.model_copy(update={"routes": new})

    return edit


def long_at(tokens: int, inner: Callable[[RouterConfig], RouterConfig]) -> Any:
    def edit(config: RouterConfig) -> RouterConfig:
        config = inner(config)
        return config.model_copy(update={"classify": ClassifyConfig(long_threshold=tokens)})

    return edit


@pytest.fixture(scope="module")
def effort_stack() -> Any:
    from .conftest import start_stack, stop_stack

    live = start_stack(
        edit=routes(**{"code@high": "sim-json", "text@max": ["sim-vision", "sim-text"]})
    )
    yield live
    stop_stack(live)


def headers_of(stack: Stack, **kwargs: Any) -> Any:
    raw = stack.client().chat.completions.with_raw_response.create(model="m", **kwargs)
    raw.parse()
    return raw.headers


def test_effort_header_picks_the_type_at_effort_pool(effort_stack: Stack) -> None:
    plain = headers_of(effort_stack, messages=USER, tools=TOOLS)
    assert plain["X-DI-Request-Type"] == "code" and plain["X-DI-Backend"] == "sim-code"
    assert "X-DI-Effort" not in plain
    high = headers_of(
        effort_stack,
        messages=USER,
        tools=TOOLS,
        extra_headers={"X-DI-Effort": "high", "Origin": "https://app.example"},
    )
    assert high["X-DI-Request-Type"] == "code"  # effort tunes the type, never picks it
    assert high["X-DI-Backend"] == "sim-json"
    assert high["X-DI-Effort"] == "high"
    assert "X-DI-Effort" in high["Access-Control-Expose-Headers"]


def test_effort_without_its_own_route_falls_back_to_the_type(effort_stack: Stack) -> None:
    low = headers_of(effort_stack, messages=USER, tools=TOOLS, extra_headers={"X-DI-Effort": "low"})
    assert low["X-DI-Backend"] == "sim-code" and low["X-DI-Effort"] == "low"
    text = headers_of(effort_stack, messages=USER, extra_headers={"X-DI-Effort": "high"})
    assert text["X-DI-Backend"] == "sim-text"


def test_a_list_route_serves_from_its_first_pool(effort_stack: Stack) -> None:
    served = headers_of(effort_stack, messages=USER, extra_query={"effort": "max"})
    assert served["X-DI-Backend"] == "sim-vision" and served["X-DI-Effort"] == "max"


def test_effort_precedence_header_query_body(effort_stack: Stack) -> None:
    both = headers_of(
        effort_stack,
        messages=USER,
        tools=TOOLS,
        reasoning_effort="low",
        extra_query={"effort": "high"},
    )
    assert both["X-DI-Effort"] == "high" and both["X-DI-Backend"] == "sim-json"
    header = headers_of(
        effort_stack,
        messages=USER,
        tools=TOOLS,
        extra_query={"effort": "high"},
        extra_headers={"X-DI-Effort": "medium"},
    )
    assert header["X-DI-Effort"] == "medium" and header["X-DI-Backend"] == "sim-code"
    body = headers_of(effort_stack, messages=USER, tools=TOOLS, reasoning_effort="high")
    assert body["X-DI-Effort"] == "high" and body["X-DI-Backend"] == "sim-json"


def test_responses_reasoning_effort_routes(effort_stack: Stack) -> None:
    tool: Any = {"type": "function", "name": "lookup", "parameters": {"type": "object"}}
    raw = effort_stack.client().responses.with_raw_response.create(
        model="m", input="find it", tools=[tool], reasoning={"effort": "high"}
    )
    assert raw.headers["X-DI-Effort"] == "high" and raw.headers["X-DI-Backend"] == "sim-json"


def test_thinking_budget_maps_to_a_level(effort_stack: Stack) -> None:
    base_url = effort_stack.base_url.removesuffix("/v1")
    tools: Any = [{"name": "lookup", "input_schema": {"type": "object"}}]
    with anthropic.Anthropic(base_url=base_url, api_key="t", max_retries=0) as client:
        raw = client.messages.with_raw_response.create(
            model="m",
            max_tokens=64,
            tools=tools,
            messages=[{"role": "user", "content": "go"}],
            thinking={"type": "enabled", "budget_tokens": 10_000},
        )
    assert raw.headers["X-DI-Effort"] == "high" and raw.headers["X-DI-Backend"] == "sim-json"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"extra_headers": {"X-DI-Effort": "turbo"}},
        {"extra_query": {"effort": "1"}},
        {"reasoning_effort": "ludicrous"},
    ],
)
def test_invalid_effort_is_400(effort_stack: Stack, kwargs: Any) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        effort_stack.client().chat.completions.create(model="m", messages=USER, **kwargs)
    assert caught.value.body["code"] == "invalid_effort"  # type: ignore[index]


def test_effort_reaches_a_backend_that_takes_reasoning_effort(
    make_stack: Any, fake_upstream: Fake
) -> None:
    stack = make_stack(
        edit=lambda c: with_replicas(
            c,
            "sim-text",
            [fake_upstream.url],
            reasoning_effort=["minimal", "low", "medium", "high"],
        )
    )
    sent = fake_upstream.upstream.received
    client = stack.client()
    for level, expected in [("fast", "minimal"), ("medium", "medium"), ("max", "high")]:
        raw = client.chat.completions.with_raw_response.create(
            model="m", messages=USER, extra_headers={"X-DI-Effort": level}
        )
        assert raw.headers["X-DI-Effort"] == level
        assert sent[-1].body["reasoning_effort"] == expected
    client.chat.completions.create(model="m", messages=USER, extra_headers={"X-DI-Effort": "auto"})
    assert "reasoning_effort" not in sent[-1].body
    client.chat.completions.create(model="m", messages=USER)
    assert "reasoning_effort" not in sent[-1].body
    # The Messages surface: a thinking budget becomes reasoning_effort on the chat backend.
    base_url = stack.base_url.removesuffix("/v1")
    with anthropic.Anthropic(base_url=base_url, api_key="t", max_retries=0) as anthropic_client:
        anthropic_client.messages.create(
            model="m",
            max_tokens=5,
            messages=USER,
            thinking={"type": "enabled", "budget_tokens": 2000},
        )
    assert sent[-1].body["reasoning_effort"] == "low"
    assert "thinking" not in sent[-1].body


def test_backends_without_the_flag_get_the_body_as_sent(
    make_stack: Any, fake_upstream: Fake
) -> None:
    stack = make_stack(edit=lambda c: with_replicas(c, "sim-text", [fake_upstream.url]))
    stack.client().chat.completions.create(
        model="m", messages=USER, extra_headers={"X-DI-Effort": "high"}
    )
    assert "reasoning_effort" not in fake_upstream.upstream.received[-1].body


# --- document and long ------------------------------------------------------------------


@pytest.fixture(scope="module")
def typed_stack() -> Any:
    from .conftest import start_stack, stop_stack

    live = start_stack(edit=long_at(2000, routes(document="sim-vision", long="sim-json")))
    yield live
    stop_stack(live)


def test_chat_file_part_is_document(typed_stack: Stack) -> None:
    content: Any = [{"type": "text", "text": "Summarise."}, FILE_PART, IMAGE]
    headers = headers_of(typed_stack, messages=[{"role": "user", "content": content}])
    assert headers["X-DI-Request-Type"] == "document"  # document outranks vision
    assert headers["X-DI-Backend"] == "sim-vision"


def test_responses_input_file_is_document(typed_stack: Stack) -> None:
    raw = typed_stack.client().responses.with_raw_response.create(
        model="m",
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Summarise."},
                    {"type": "input_file", "file_data": PDF, "filename": "a.pdf"},
                ],
            }
        ],
    )
    assert raw.headers["X-DI-Request-Type"] == "document"
    assert raw.parse().output_text


def test_messages_document_block_is_document(typed_stack: Stack) -> None:
    base_url = typed_stack.base_url.removesuffix("/v1")
    data = base64.b64encode(b"%PDF-1.4 tiny").decode()
    with anthropic.Anthropic(base_url=base_url, api_key="t", max_retries=0) as client:
        raw = client.messages.with_raw_response.create(
            model="m",
            max_tokens=8,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "document",
                            "source": {
                                "type": "base64",
                                "media_type": "application/pdf",
                                "data": data,
                            },
                            "title": "a.pdf",
                        },
                        {"type": "text", "text": "Summarise."},
                    ],
                }
            ],
        )
    assert raw.headers["X-DI-Request-Type"] == "document"
    assert raw.parse().content[0].type == "text"


def test_long_input_outranks_code_but_not_vision(typed_stack: Stack) -> None:
    long_text = "word " * 3000  # 15,000 characters: ~3,750 estimated tokens
    long_user: Any = [{"role": "user", "content": long_text}]
    assert headers_of(typed_stack, messages=long_user)["X-DI-Request-Type"] == "long"
    coded = headers_of(typed_stack, messages=long_user, tools=TOOLS)
    assert coded["X-DI-Request-Type"] == "long" and coded["X-DI-Backend"] == "sim-json"
    pictured: Any = [{"role": "user", "content": [{"type": "text", "text": long_text}, IMAGE]}]
    assert headers_of(typed_stack, messages=pictured)["X-DI-Request-Type"] == "vision"
    assert headers_of(typed_stack, messages=USER, tools=TOOLS)["X-DI-Request-Type"] == "code"


def test_without_routes_the_four_types_are_unchanged(stack: Stack) -> None:
    content: Any = [{"type": "text", "text": "Summarise."}, FILE_PART]
    assert (
        headers_of(stack, messages=[{"role": "user", "content": content}])["X-DI-Request-Type"]
        == "text"
    )
    with_image: Any = [{"role": "user", "content": [FILE_PART, IMAGE]}]
    assert headers_of(stack, messages=with_image)["X-DI-Request-Type"] == "vision"
    huge: Any = [{"role": "user", "content": "word " * 100_000}]
    assert headers_of(stack, messages=huge)["X-DI-Request-Type"] == "text"


def test_effort_reaches_a_responses_backend_as_reasoning_effort(
    make_stack: Any, fake_upstream: Fake
) -> None:
    stack = make_stack(
        edit=lambda c: with_replicas(
            c, "sim-text", [fake_upstream.url], api="responses", reasoning_effort=True
        )
    )
    raw = stack.client().responses.with_raw_response.create(
        model="m",
        input="hi",
        reasoning={"effort": "low", "summary": "auto"},
        extra_headers={"X-DI-Effort": "xhigh"},
    )
    assert raw.headers["X-DI-Effort"] == "xhigh"
    sent = fake_upstream.upstream.received[-1]
    assert sent.path == "/v1/responses"
    assert sent.body["reasoning"] == {"effort": "high", "summary": "auto"}
