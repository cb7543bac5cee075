"""The client code of the reference documents, run as written against a live router.

Only ``BASE_URL``, ``API_KEY`` and ``LLM_ID`` are filled in. The documents pass
``http_client=httpx.Client(verify=False)``; the installed openai SDK is built on httpx2, whose
``Client`` takes the same argument, so that is the one difference.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import pytest
from openai import OpenAI

from .conftest import Stack

LLM_ID = "openai:CONNECTION-NAME:MODEL-NAME"
DEFAULT_TEMPERATURE = 0
DEFAULT_MAX_TOKENS = 500


@pytest.fixture
def seed_client(stack: Stack) -> Iterator[OpenAI]:
    client = OpenAI(
        base_url=stack.base_url, api_key="dummy", http_client=httpx.Client(verify=False)
    )
    yield client
    client.close()  # the documents never close theirs; a test must


def test_chat_completion_client(seed_client: OpenAI) -> None:
    client = seed_client
    context = """You are a capable ghost writer
  who helps college applicants"""
    content = """Write a complete 350-word short essay
  for a college application on the topic -
  My first memories."""
    prompt: Any = [{"role": "system", "content": context}, {"role": "user", "content": content}]
    response = client.chat.completions.create(
        model=LLM_ID,
        messages=prompt,
        temperature=DEFAULT_TEMPERATURE,
        max_tokens=DEFAULT_MAX_TOKENS,
    )
    assert response.model == LLM_ID
    assert response.choices[0].message.content


def test_chat_streaming_client(seed_client: OpenAI) -> None:
    open_client = seed_client
    prompt: Any = [
        {"role": "system", "content": "You are a capable ghost writer"},
        {"role": "user", "content": "Write a complete 500-word short essay"},
    ]
    start_time = time.time()
    response = open_client.chat.completions.create(
        model=LLM_ID,
        stream=True,
        messages=prompt,
        temperature=DEFAULT_TEMPERATURE,
        max_tokens=1000,
    )
    collected_messages = []
    chunk_time = 0.0
    for chunk in response:
        chunk_time = time.time() - start_time
        chunk_message = chunk.choices[0].delta
        collected_messages.append(chunk_message)
    full_reply_content = "".join(
        [m.content for m in collected_messages if hasattr(m, "content") and m.content is not None]
    )
    assert full_reply_content
    assert chunk_time >= 0


def test_responses_typed_input_client(seed_client: OpenAI) -> None:
    client = seed_client
    typed_input: Any = [
        {
            "role": "user",
            "content": [
                {
                    "type": "input_text",
                    "text": "Summarize the three most important points about governed LLM access.",
                }
            ],
        }
    ]
    response = client.responses.create(
        model=LLM_ID, input=typed_input, max_output_tokens=DEFAULT_MAX_TOKENS
    )
    assert response.output_text


def test_responses_streaming_client(seed_client: OpenAI) -> None:
    client = seed_client
    stream = client.responses.create(
        model=LLM_ID, input="Write a short poem about governed AI platforms.", stream=True
    )
    collected_text = []
    completed = False
    for event in stream:
        if event.type == "response.output_text.delta":
            collected_text.append(event.delta)
        elif event.type == "response.completed":
            completed = True
    assert "".join(collected_text)
    assert completed


def test_chat_tools_vision_and_schema_clients(stack: Stack) -> None:
    client = OpenAI(api_key="llm_live_...", base_url=stack.base_url)  # as in the documents
    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Get the current weather for a location.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "location": {"type": "string", "description": "City and country"}
                    },
                    "required": ["location"],
                },
            },
        }
    ]
    response = client.chat.completions.create(
        model="YOUR_MODEL_ID",
        messages=[{"role": "user", "content": "What is the weather in Berlin?"}],
        tools=tools,
        tool_choice="auto",
        parallel_tool_calls=False,
    )
    assert response.choices[0].message.tool_calls
    schema: Any = {
        "type": "json_schema",
        "json_schema": {
            "name": "person",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                "required": ["name", "age"],
                "additionalProperties": False,
            },
        },
    }
    resp = client.chat.completions.create(
        model="YOUR_MODEL_ID",
        messages=[{"role": "user", "content": "Extract the person's name and age."}],
        response_format=schema,
    )
    assert resp.choices[0].message.content
    client.close()
