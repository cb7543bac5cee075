"""The Responses API, legacy completions and stored chat completions, through the openai SDK."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from .conftest import Fake, Stack, with_replicas

TOOLS: Any = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Get the current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    }
]


class Person(BaseModel):
    name: str
    age: int


def test_string_input_gives_output_text_and_headers(stack: Stack) -> None:
    raw = stack.client().responses.with_raw_response.create(
        model="llm-id", input="Write a short poem about governed AI platforms."
    )
    response = raw.parse()
    assert response.model == "llm-id"
    assert response.status == "completed"
    assert response.output_text
    assert response.usage is not None and response.usage.input_tokens > 0
    assert raw.headers["X-DI-Request-Type"] == "text"
    assert raw.headers["X-DI-Backend"] == "sim-text"


def test_typed_input_with_instructions(stack: Stack) -> None:
    response = stack.client().responses.create(
        model="llm-id",
        instructions="Be brief.",
        input=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "input_text",
                        "text": "Summarize the three most important points about governed access.",
                    }
                ],
            }
        ],
        max_output_tokens=500,
        temperature=0,
    )
    assert response.output_text
    assert response.instructions == "Be brief."


def test_streaming_events_in_order(stack: Stack) -> None:
    stream = stack.client().responses.create(
        model="llm-id", input="Write a short poem.", stream=True
    )
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text and events[-1].response.output_text == text  # type: ignore[union-attr]


def test_stream_helper_yields_the_final_response(stack: Stack) -> None:
    with stack.client().responses.stream(model="llm-id", input="hello") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.output_text == "".join(deltas)
    assert final.model == "llm-id"


def test_parse_with_a_pydantic_model_routes_to_json(stack: Stack) -> None:
    raw = stack.client().responses.with_raw_response.parse(
        model="llm-id", input="Ada is 36.", text_format=Person
    )
    assert raw.headers["X-DI-Request-Type"] == "json"
    parsed = raw.parse().output_parsed
    assert isinstance(parsed, Person)


def test_tool_loop_through_previous_response_id(stack: Stack) -> None:
    client = stack.client()
    first = client.responses.with_raw_response.create(
        model="llm-id", input="What is the weather in Paris?", tools=TOOLS
    )
    assert first.headers["X-DI-Request-Type"] == "code"
    call = next(item for item in first.parse().output if item.type == "function_call")
    assert call.name == "get_weather"
    assert "city" in json.loads(call.arguments)
    second = client.responses.with_raw_response.create(
        model="llm-id",
        previous_response_id=first.parse().id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"c": 21}'}],
        tools=TOOLS,
    )
    assert second.headers["X-DI-Request-Type"] == "code"
    assert second.parse().output_text
    assert second.parse().previous_response_id == first.parse().id


def test_stream_of_a_tool_call(stack: Stack) -> None:
    events = list(
        stack.client().responses.create(model="m", input="weather?", tools=TOOLS, stream=True)
    )
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert "city" in json.loads(getattr(done, "arguments", ""))


def test_retrieve_input_items_delete(stack: Stack) -> None:
    client = stack.client()
    created = client.responses.create(
        model="llm-id",
        input=[
            {"role": "user", "content": "first"},
            {"role": "user", "content": [{"type": "input_text", "text": "second"}]},
        ],
    )
    fetched = client.responses.retrieve(created.id)
    assert fetched.id == created.id and fetched.output_text == created.output_text
    items = client.responses.input_items.list(created.id)
    assert [i.type for i in items.data] == ["message", "message"]
    page = client.responses.input_items.list(created.id, limit=1, order="asc")
    assert len(page.data) == 1 and page.has_more
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)


def test_store_false_is_not_kept(stack: Stack) -> None:
    client = stack.client()
    created = client.responses.create(model="m", input="hi", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)


def test_input_tokens_count(stack: Stack) -> None:
    counted = stack.client().responses.input_tokens.count(model="m", input="one two three")
    assert counted.input_tokens >= 3


def test_image_input_is_vision(stack: Stack) -> None:
    image_input: Any = [
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "What is this?"},
                {"type": "input_image", "image_url": "https://example.com/a.png"},
            ],
        }
    ]
    raw = stack.client().responses.with_raw_response.create(model="m", input=image_input)
    assert raw.headers["X-DI-Request-Type"] == "vision"
    assert "1 image" in raw.parse().output_text


def test_cache_control_on_input_parts_hits(stack: Stack) -> None:
    prompt = " ".join(["stable system prompt"] * 300)

    def ask(question: str) -> str:
        cached_input: Any = [
            {
                "role": "system",
                "content": [
                    {
                        "type": "input_text",
                        "text": prompt,
                        "cache_control": {"type": "ephemeral"},
                    }
                ],
            },
            {"role": "user", "content": question},
        ]
        raw = stack.client().responses.with_raw_response.create(model="m", input=cached_input)
        return str(raw.headers["X-DI-Cache"])

    assert [ask("a"), ask("b")] == ["miss", "hit"]


@pytest.mark.parametrize(
    ("kwargs", "exception", "param"),
    [
        ({"input": [{"type": "telepathy"}]}, openai.BadRequestError, "input[0].type"),
        ({}, openai.BadRequestError, "input"),
        (
            {"input": "hi", "previous_response_id": "resp_unknown"},
            openai.NotFoundError,
            "previous_response_id",
        ),
    ],
)
def test_bad_input(
    stack: Stack, kwargs: dict[str, Any], exception: type[openai.APIStatusError], param: str
) -> None:
    with pytest.raises(exception) as caught:
        stack.client().responses.create(model="m", **kwargs)
    assert caught.value.body["param"] == param  # type: ignore[index]


def part(marker: Any) -> dict[str, Any]:
    return {"type": "input_text", "text": "x", "cache_control": marker}


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        (
            {
                "instructions": "be brief",
                "input": [{"role": "user", "content": [part({"type": "ephemeral", "ttl": "9m"})]}],
            },
            "input[0].content[0].cache_control.ttl",
        ),
        (
            {"input": [{"role": "user", "content": "x", "cache_control": {"type": "forever"}}]},
            "input[0].cache_control.type",
        ),
        (
            {"input": [{"role": "user", "content": "x"}, {"role": "user", "content": [part(5)]}]},
            "input[1].content[0].cache_control",
        ),
        # Named in the chat body only, whose messages are not the input's items: no param.
        (
            {
                "instructions": "be brief",
                "input": [{"role": "user", "content": [part({"type": "ephemeral"})] * 5}],
            },
            None,
        ),
    ],
)
def test_a_bad_cache_control_is_named_by_its_place_in_the_input(
    stack: Stack, kwargs: dict[str, Any], param: str | None
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        stack.client().responses.create(model="m", **kwargs)
    assert caught.value.body["param"] == param  # type: ignore[index]
    assert "cache_control" in caught.value.body["message"]  # type: ignore[index]


def test_responses_backend_gets_the_body_passed_through(
    make_stack: Any, fake_upstream: Fake
) -> None:
    fake_upstream.upstream.mode = "status"
    fake_upstream.upstream.status = 418
    fake_upstream.upstream.error_body = b'{"error": {"message": "teapot", "type": "x"}}'
    live = make_stack(
        edit=lambda c: with_replicas(c, "sim-text", [fake_upstream.url], api="responses")
    )
    with pytest.raises(openai.APIStatusError) as caught:
        live.client().responses.create(model="m", input="hi", metadata={"k": "v"})
    assert caught.value.status_code == 418
    sent = fake_upstream.upstream.received[-1]
    assert sent.path == "/v1/responses"
    assert sent.body == {"model": "m", "input": "hi", "metadata": {"k": "v"}}


def test_legacy_completions(stack: Stack) -> None:
    client = stack.client()
    raw = client.completions.with_raw_response.create(model="m", prompt="Once upon", max_tokens=5)
    completion = raw.parse()
    assert raw.headers["X-DI-Request-Type"] == "text"
    assert completion.model == "m" and completion.choices[0].text
    chunks = list(client.completions.create(model="m", prompt=["a", "b"], stream=True))
    assert {c.choices[0].index for c in chunks if c.choices} == {0, 1}
    assert all(c.model == "m" for c in chunks)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="m", prompt=None)


def test_stored_chat_completions(stack: Stack) -> None:
    client = stack.client()
    made = [
        client.chat.completions.create(
            model="store-model",
            messages=[{"role": "user", "content": f"hello {i}"}],
            store=True,
            metadata={"team": "a" if i < 2 else "b"},
        )
        for i in range(3)
    ]
    streamed = list(
        client.chat.completions.create(
            model="store-model",
            messages=[{"role": "user", "content": "streamed"}],
            store=True,
            stream=True,
        )
    )
    ids = [m.id for m in made]
    listed = client.chat.completions.list(model="store-model", metadata={"team": "a"})
    assert [c.id for c in listed.data] == ids[:2]
    got = client.chat.completions.retrieve(ids[0])
    assert got.choices[0].message.content == made[0].choices[0].message.content
    streamed_copy = client.chat.completions.retrieve(streamed[0].id)
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert streamed_copy.choices[0].message.content == text
    updated = client.chat.completions.update(ids[0], metadata={"team": "c"})
    assert updated.metadata == {"team": "c"}
    messages = client.chat.completions.messages.list(ids[1])
    assert [m.content for m in messages.data] == ["hello 1"]
    deleted = client.chat.completions.delete(ids[2])
    assert deleted.deleted
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.retrieve(ids[2])
    page = client.chat.completions.list(model="store-model", limit=1)
    assert len(page.data) == 1 and page.has_more


def test_object_store_down_still_answers_and_reads_are_503(
    make_stack: Any, refused_port: Callable[[], int]
) -> None:
    from redis.asyncio import Redis

    from router.objects import RedisObjectStore

    dead = Redis.from_url(f"redis://127.0.0.1:{refused_port()}/0", socket_connect_timeout=0.2)
    live = make_stack(objects=RedisObjectStore(dead, key_prefix="t:", ttl=60))
    client = live.client()
    created = client.responses.create(model="m", input="hi")
    assert created.output_text  # the answer is not lost to the store
    completion = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], store=True
    )
    assert completion.choices[0].message.content
    with pytest.raises(openai.InternalServerError) as caught:
        client.responses.retrieve(created.id)
    assert caught.value.status_code == 503
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.list()
    live.run(dead.aclose())
