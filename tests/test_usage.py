"""Reading the backends' token usage from answers and stream tails."""

from __future__ import annotations

import orjson

from router.usage import Usage, usage_from_bytes, usage_from_dict


def test_chat_completion_body() -> None:
    body = {
        "id": "x",
        "choices": [{"message": {"content": 'a "usage": {"prompt_tokens": 99} in text'}}],
        "usage": {
            "prompt_tokens": 12,
            "completion_tokens": 3,
            "prompt_tokens_details": {"cached_tokens": 8},
        },
    }
    assert usage_from_bytes(orjson.dumps(body)) == Usage(12, 3, 8)


def test_stream_usage_chunk_and_null_usage() -> None:
    chunk = b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}'
    # No prompt_tokens_details: the backend said nothing about caching (not "0 cached").
    assert usage_from_bytes(chunk) == Usage(5, 2, None)
    assert usage_from_bytes(b'data: {"choices":[{"delta":{}}],"usage":null}') is None
    assert usage_from_bytes(b'data: {"choices":[]}') is None
    assert usage_from_bytes(b'data: {"usage":{"prompt_tokens":5') is None


def test_responses_and_anthropic_shapes() -> None:
    responses = {
        "input_tokens": 10,
        "output_tokens": 4,
        "input_tokens_details": {"cached_tokens": 6},
    }
    assert usage_from_dict(responses) == Usage(10, 4, 6)
    anthropic = {
        "input_tokens": 3,
        "output_tokens": 4,
        "cache_read_input_tokens": 20,
        "cache_creation_input_tokens": 5,
    }
    assert usage_from_dict(anthropic) == Usage(28, 4, 20)
    assert usage_from_dict({"other": 1}) is None
    assert usage_from_dict(None) is None


def test_odd_usage_objects_give_nothing_rather_than_wrong_figures() -> None:
    braces_in_a_string = b'{"usage":{"prompt_tokens":1,"completion_tokens":2,"note":"}{"}}'
    assert usage_from_bytes(braces_in_a_string) in (None, Usage(1, 2, 0))
    nested = b'{"usage":{"prompt_tokens":4,"completion_tokens":1,"a":{"b":{"c":{}}}}}'
    assert usage_from_bytes(nested) in (None, Usage(4, 1, 0))
