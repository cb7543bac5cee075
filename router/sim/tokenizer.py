"""The sim's tokenizer: how many tokens a prompt costs, and which ones.

A token is a run of word characters or a single other non-space character:
`re.findall(r"\\w+|[^\\w\\s]", text)`. It is cheap, deterministic and close enough to a
BPE tokenizer's count for English prose and code to make prefill and cache numbers realistic.

A chat prompt is laid out the way chat templates render it, so that a shared conversation
prefix gives a shared token prefix (what the prefix cache needs):

* the tools, first, as the tokens of their orjson dump with sorted keys;
* then for each message a role marker token `<|role|>` followed by its content: string
  content by its text; `text` parts by their text; `image_url`/`input_image` parts as
  `image_tokens` tokens derived from a hash of the image URL (so different images differ);
  any other part by the tokens of its orjson dump; then the message's `tool_calls`, dumped.

`cache_control` keys are dropped everywhere before dumping: a router may strip them or pass
them through, and the cache must behave the same either way.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

TOKEN_RE = re.compile(r"\w+|[^\w\s]")
# Like TOKEN_RE but keeps the whitespace before each token, so the pieces concatenate back
# to the original text; used to stream generated text one token per chunk.
PIECE_RE = re.compile(r"\s*(?:\w+|[^\w\s])|\s+")

_TEXT_PARTS = frozenset({"text", "input_text"})
_IMAGE_PARTS = frozenset({"image_url", "input_image"})


def tokenize(text: str) -> list[str]:
    """Split text into the sim's tokens."""
    return TOKEN_RE.findall(text)


def pieces(text: str) -> list[str]:
    """Split text into one-token pieces that join back to exactly `text`."""
    return PIECE_RE.findall(text)


@dataclass(frozen=True, slots=True)
class Prompt:
    """The tokens of one prompt, and what generation needs to know about it."""

    tokens: tuple[str, ...]
    images: int = 0

    @property
    def key(self) -> bytes:
        """A digest of the tokens, to seed deterministic output."""
        return hashlib.blake2b("\x1f".join(self.tokens).encode(), digest_size=16).digest()


def strip_cache_control(value: Any) -> Any:
    """Return `value` without any `cache_control` keys, at any depth."""
    if isinstance(value, Mapping):
        return {k: strip_cache_control(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [strip_cache_control(v) for v in value]
    return value


def _dump_tokens(value: Any) -> list[str]:
    dumped = orjson.dumps(strip_cache_control(value), option=orjson.OPT_SORT_KEYS)
    return tokenize(dumped.decode())


def _image_url(part: Mapping[str, Any]) -> str:
    image = part.get("image_url")
    if isinstance(image, Mapping):
        image = image.get("url")
    if isinstance(image, str):
        return image
    # input_image parts may name an uploaded file instead of a URL.
    return orjson.dumps(strip_cache_control(part), option=orjson.OPT_SORT_KEYS).decode()


def image_tokens(url: str, count: int) -> list[str]:
    """The `count` placeholder tokens standing for the image at `url`."""
    digest = hashlib.blake2b(url.encode(), digest_size=8).hexdigest()
    return [f"<|image:{digest}:{i}|>" for i in range(count)]


def _part_tokens(part: Any, image_count: int) -> tuple[list[str], int]:
    """Tokens of one content part, and how many images it held."""
    if not isinstance(part, Mapping):
        return _dump_tokens(part), 0
    kind = part.get("type")
    if kind in _TEXT_PARTS and isinstance(part.get("text"), str):
        return tokenize(part["text"]), 0
    if kind in _IMAGE_PARTS:
        return image_tokens(_image_url(part), image_count), 1
    return _dump_tokens(part), 0


def _message_tokens(message: Mapping[str, Any], image_count: int) -> tuple[list[str], int]:
    tokens = [f"<|{message.get('role')}|>"]
    images = 0
    content = message.get("content")
    if isinstance(content, str):
        tokens += tokenize(content)
    elif isinstance(content, list):
        for part in content:
            part_tokens, part_images = _part_tokens(part, image_count)
            tokens += part_tokens
            images += part_images
    elif content is not None:
        tokens += _dump_tokens(content)
    if message.get("tool_calls"):
        tokens += _dump_tokens(message["tool_calls"])
    return tokens, images


def chat_prompt(
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Any] | None,
    *,
    image_count: int,
) -> Prompt:
    """The prompt of a chat request: tools first, then every message."""
    tokens: list[str] = _dump_tokens(list(tools)) if tools else []
    images = 0
    for message in messages:
        message_tokens, message_images = _message_tokens(message, image_count)
        tokens += message_tokens
        images += message_images
    return Prompt(tuple(tokens), images)


def completion_prompt(prompt: str | Sequence[int]) -> Prompt:
    """The prompt of a legacy completion: text, or token ids taken one token each."""
    if isinstance(prompt, str):
        return Prompt(tuple(tokenize(prompt)))
    return Prompt(tuple(str(token_id) for token_id in prompt))
