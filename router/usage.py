"""Token usage as the backends report it, read without parsing whole answers.

One reader for every surface: the relays hand each JSON answer (``note_body``) and each SSE
data event (``note_event``) here, and the result lands in ``RequestContext.usage``, which
metrics, the access log, placement (cached tokens) and token limits all read.

Backends put ``usage`` at the end of a JSON answer and in the last chunk of a stream (OpenAI's
``include_usage``), so the readers here look only there: the relay keeps a reference to the
last event it passed and this module reads it once the stream ended, keeping JSON parsing off
the per-chunk path. Three shapes are understood: Chat Completions (``prompt_tokens``,
``completion_tokens``, ``prompt_tokens_details.cached_tokens``), the Responses API
(``input_tokens``, ``output_tokens``, ``input_tokens_details.cached_tokens``) and Anthropic's
Messages API (``input_tokens`` + ``cache_read_input_tokens``, which it counts apart).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from router.context import RequestContext

_KEY = b'"usage"'
# A usage object nests two levels at most (prompt_tokens_details); its values are numbers.
_USAGE_OBJECT = re.compile(rb"\s*:\s*(\{(?:[^{}]++|\{(?:[^{}]++|\{[^{}]*+\})*+\})*+\})")
# A usage object is small; a match further than this from the end is not the answer's usage.
_TAIL = 8 << 10


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    # None when the backend gave no cached-token figure at all (placement must not read that
    # as "evicted"); 0 when it said none of the prompt was cached.
    cached_tokens: int | None = None


def usage_from_dict(usage: Any) -> Usage | None:
    """A ``usage`` object in any of the three shapes; None when it is absent or not one."""
    if not isinstance(usage, dict):
        return None
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        prompt = _int(usage.get("prompt_tokens"))
        return Usage(
            prompt, _int(usage.get("completion_tokens")), None if cached is None else _int(cached)
        )
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
    costs a reverse scan and a small regex match, not a second full parse.
    """
    at = data.rfind(_KEY, max(0, len(data) - _TAIL))
    if at < 0:
        return None
    match = _USAGE_OBJECT.match(data, at + len(_KEY))
    if match is None:
        return None  # "usage": null, or not an object of the usual depth
    try:
        return usage_from_dict(orjson.loads(match.group(1)))
    except orjson.JSONDecodeError:
        return None


def note_body(ctx: RequestContext, data: bytes) -> None:
    """Usage from a whole JSON answer (chat, completions, Responses or Messages)."""
    found = usage_from_bytes(data)
    if found is None:
        return
    before = ctx.usage
    if before is not None and found.prompt_tokens == 0 and found.cached_tokens is None:
        # Messages streams report input in message_start and output in message_delta.
        found = Usage(before.prompt_tokens, found.completion_tokens, before.cached_tokens)
    ctx.usage = found


def note_event(ctx: RequestContext, event: bytes) -> None:
    """Count a relayed SSE data event and read its usage when it carries one (the
    ``include_usage`` chunk, a terminal Responses event, Messages' ``message_delta``)."""
    if not event.startswith((b"data:", b"event:")):
        return
    ctx.streamed_events += 1
    if b'"usage"' in event:
        note_body(ctx, event)


def tokens_used(ctx: RequestContext, body_size: int) -> int:
    """What a request cost, for token limits: reported, else estimated (4 bytes of request
    body a token, plus one token per streamed event)."""
    if ctx.usage is not None:
        return ctx.usage.prompt_tokens + ctx.usage.completion_tokens
    if not ctx.upstream_ms:
        return 0  # never reached a backend
    return body_size // 4 + ctx.streamed_events


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
