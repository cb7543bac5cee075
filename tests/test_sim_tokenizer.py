"""The sim tokenizer: token counts, chat prompt layout, images and cache_control."""

from __future__ import annotations

from typing import Any

from router.sim.tokenizer import chat_prompt, completion_prompt, pieces, tokenize


def test_tokenize_splits_words_and_punctuation() -> None:
    assert tokenize("Hello, world! it's 42") == ["Hello", ",", "world", "!", "it", "'", "s", "42"]


def test_pieces_rejoin_to_the_text_one_token_each() -> None:
    text = '{"a": [1, 2]}  and more.\n'
    parts = pieces(text)
    assert "".join(parts) == text
    assert all(len(tokenize(part)) <= 1 for part in parts)


def test_chat_prompt_puts_tools_first_then_role_markers() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    prompt = chat_prompt(messages, tools, image_count=4)
    tool_tokens = tokenize('[{"function":{"name":"f"},"type":"function"}]')
    assert list(prompt.tokens) == [
        *tool_tokens,
        "<|system|>",
        "Be",
        "brief",
        ".",
        "<|user|>",
        "Hi",
    ]


def test_content_parts_and_tool_calls_are_counted() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "text", "text": "one two"}, {"type": "x", "y": 1}]},
        {"role": "assistant", "content": None, "tool_calls": [call]},
    ]
    prompt = chat_prompt(messages, None, image_count=4)
    expected = 1 + 2 + len(tokenize('{"type":"x","y":1}')) + 1
    expected += len(
        tokenize('[{"function":{"arguments":"{}","name":"f"},"id":"c1","type":"function"}]')
    )
    assert len(prompt.tokens) == expected


def _image(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def test_images_cost_image_tokens_and_differ_by_url() -> None:
    first = chat_prompt([{"role": "user", "content": [_image("a.png")]}], None, image_count=5)
    second = chat_prompt([{"role": "user", "content": [_image("b.png")]}], None, image_count=5)
    responses = chat_prompt(
        [{"role": "user", "content": [{"type": "input_image", "image_url": "a.png"}]}],
        None,
        image_count=5,
    )
    assert len(first.tokens) == len(second.tokens) == 1 + 5
    assert first.images == second.images == 1
    assert first.tokens[1:] != second.tokens[1:]
    assert responses.tokens == first.tokens


def test_cache_control_does_not_change_the_tokens() -> None:
    marker = {"type": "ephemeral"}
    plain = chat_prompt(
        [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "x"}]}],
        [{"type": "function", "function": {"name": "f"}}],
        image_count=1,
    )
    marked = chat_prompt(
        [
            {
                "role": "user",
                "cache_control": marker,
                "content": [
                    {"type": "text", "text": "hi", "cache_control": marker},
                    {"type": "x", "cache_control": marker},
                ],
            }
        ],
        [{"type": "function", "function": {"name": "f"}, "cache_control": marker}],
        image_count=1,
    )
    assert marked.tokens == plain.tokens
    assert marked.key == plain.key


def test_completion_prompt_accepts_text_or_token_ids() -> None:
    assert completion_prompt("a b.").tokens == ("a", "b", ".")
    assert completion_prompt([7, 8, 9]).tokens == ("7", "8", "9")
