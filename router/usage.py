"""Token usage as the backends report it, read without parsing whole answers.

Backends put ``usage`` at the end of a JSON answer and in the last chunk of a stream (OpenAI's
``include_usage``), so the readers here look only there: the relay keeps a reference to the
last event it passed and this module reads it once the stream ended, keeping JSON parsing off
the per-chunk path. Three shapes are understood: Chat Completions (``prompt_tokens``,
``completion_tokens``, ``prompt_tokens_details.cached_tokens``), the Responses API
(``input_tokens``, ``output_tokens``, ``input_tokens_details.cached_tokens``) and Anthropic's
Messages API (``input_tokens`` + ``cache_read_input_tokens``, which it counts apart).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

_KEY = b'"usage"'
# A usage object is small; a match further than this from the end is not the answer's usage.
_TAIL = 8 << 10


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


def usage_from_dict(usage: Any) -> Usage | None:
    """A ``usage`` object in any of the three shapes; None when it is absent or not one."""
    if not isinstance(usage, dict):
        return None
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else 0
        prompt = _int(usage.get("prompt_tokens"))
        return Usage(prompt, _int(usage.get("completion_tokens")), _int(cached))
    if "input_tokens" in usage or "output_tokens" in usage:
        details = usage.get("input_tokens_details")
        if isinstance(details, dict):  # Responses API: input_tokens includes the cached ones
            cached = _int(details.get("cached_tokens"))
            return Usage(_int(usage.get("input_tokens")), _int(usage.get("output_tokens")), cached)
        # Anthropic: input_tokens excludes cache reads and cache writes.
        read = _int(usage.get("cache_read_input_tokens"))
        written = _int(usage.get("cache_creation_input_tokens"))
        prompt = _int(usage.get("input_tokens")) + read + written
        return Usage(prompt, _int(usage.get("output_tokens")), read)
    return None


def usage_from_bytes(data: bytes) -> Usage | None:
    """The last ``"usage": {...}`` object in a JSON document or SSE event, if any.

    Only the tail is searched and only the usage object itself is parsed, so a long answer
    costs a reverse scan, not a second full parse.
    """
    at = data.rfind(_KEY, max(0, len(data) - _TAIL))
    if at < 0:
        return None
    start = data.find(b"{", at + len(_KEY))
    if start < 0 or data[at + len(_KEY) : start].strip(b" \t\r\n:"):
        return None  # "usage": null, or something else between the key and a brace
    end = _closing_brace(data, start)
    if end < 0:
        return None
    try:
        return usage_from_dict(orjson.loads(data[start : end + 1]))
    except orjson.JSONDecodeError:
        return None


def _closing_brace(data: bytes, start: int) -> int:
    """Index of the brace closing the object opened at ``start`` (strings skipped), or -1."""
    depth = 0
    in_string = escaped = False
    for index in range(start, len(data)):
        char = data[index]
        if in_string:
            if escaped:
                escaped = False
            elif char == 0x5C:  # backslash
                escaped = True
            elif char == 0x22:  # quote
                in_string = False
        elif char == 0x22:
            in_string = True
        elif char == 0x7B:  # {
            depth += 1
        elif char == 0x7D:  # }
            depth -= 1
            if depth == 0:
                return index
    return -1


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
