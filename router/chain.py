"""The prefix chain: which prompt prefixes a request may find cached, and which it leaves.

Blocks (``router.prefix``) are serialised canonically (sorted keys, ``cache_control`` left
out) and hashed as a chain from a namespace (backend pool and upstream model), so a prefix key
depends on every block up to it and on nothing after it, and pools never share entries.
Hashing is incremental and stops at the last boundary the request needs: a 140 KB
conversation whose system prompt alone is marked hashes its system prompt and nothing else.

Two kinds of request:

* **Marked** (``cache_control`` anywhere): each breakpoint is a prefix the request leaves in
  the cache (``records``). It may find one left by an earlier request at the breakpoint or at
  any of the ``LOOKBACK_BLOCKS`` block boundaries before it, as Anthropic's API checks about
  20 blocks back; so turn 2 of a conversation finds turn 1's prefix whether the client marks
  the system prompt, the newest user message, or the request's top level.
* **Unmarked**, with automatic prefixes on: as vLLM and SGLang cache every prompt, the
  router indexes the message boundaries (5-minute TTL, at least ``min_tokens`` estimated
  tokens). A request records its whole prompt (what the next turn of its conversation will
  extend) and its first eligible boundary (a system prompt its neighbours share), and looks
  up its last ``LOOKBACK_BLOCKS`` eligible boundaries and the first.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from hashlib import sha256
from itertools import islice
from typing import TYPE_CHECKING, Any

import orjson

from router.prefix import BYTES_PER_TOKEN, Markers, find_markers, iter_blocks, marked_ttls

if TYPE_CHECKING:
    from hashlib import _Hash

LOOKBACK_BLOCKS = 20
AUTOMATIC_TTL = 300
_SORTED = orjson.OPT_SORT_KEYS
# Keys are SHA-256 cut to 128 bits: with the SHA extensions of current x86 and ARM CPUs it
# hashes ~2.5x faster than BLAKE2b here (1.4 against 0.55 GB/s), and 128 bits keep
# collisions out of reach for any index size.
_KEY_BYTES = 16
_SHA256 = sha256()


@dataclass(frozen=True, slots=True)
class Prefix:
    """One prompt prefix: its key, its TTL, and about how many tokens it holds."""

    key: str
    ttl: int
    tokens: int
    # A recorded breakpoint on a conversation's turn (a message other than the system prompt,
    # not a tool definition), which its next turns extend (``Claim.carries``).
    turn: bool = field(default=False, compare=False)


@dataclass(frozen=True, slots=True)
class PrefixChain:
    """A request's prefixes: what to look up (shortest first) and what a dispatch records."""

    lookups: list[Prefix] = field(default_factory=list)
    records: list[Prefix] = field(default_factory=list)  # shortest first, a subset of lookups
    marked: bool = False  # the prefixes are the body's cache_control breakpoints
    automatic: bool = False  # the prefixes are automatic message-boundary ones

    @property
    def placement_key(self) -> str | None:
        """What a new prefix is placed by: the shortest recorded prefix, the one most
        requests share (a group's system prompt), so they all land on the same replica."""
        return self.records[0].key if self.records else None


NO_PREFIX = PrefixChain()


def build_chain(
    body: dict[str, Any],
    namespace: str,
    *,
    min_tokens: int = 0,
    automatic: bool = True,
    automatic_min_tokens: int = 1024,
    markers: Markers | None = None,
) -> PrefixChain:
    """The request's chain; raises InvalidRequest for bad breakpoints (see ``marked_ttls``).

    ``min_tokens`` (the backend's) applies to every prefix; automatic ones also need
    ``automatic_min_tokens``, as OpenAI caches prompts of 1,024 tokens and more. ``markers``
    is ``find_markers(body)`` when the caller has it already.
    """
    found = find_markers(body) if markers is None else markers
    ttls = marked_ttls(found)
    if ttls:
        return _marked(body, ttls, found.turns, namespace, min_tokens)
    if not automatic:
        return NO_PREFIX
    return _automatic(body, namespace, max(min_tokens, automatic_min_tokens))


def _marked(
    body: dict[str, Any], ttls: dict[int, int], turns: frozenset[int], namespace: str, minimum: int
) -> PrefixChain:
    wanted: dict[int, int] = {}
    for index, ttl in sorted(ttls.items()):
        for position in range(max(0, index - LOOKBACK_BLOCKS), index + 1):
            # A lookback boundary shares the TTL of the breakpoint it serves.
            wanted[position] = max(wanted.get(position, 0), ttl)
    by_position = _hash_blocks(body, namespace, wanted)
    lookups = [by_position[i] for i in sorted(by_position) if by_position[i].tokens >= minimum]
    records = [
        Prefix(by_position[i].key, ttl, by_position[i].tokens, turn=i in turns)
        for i, ttl in sorted(ttls.items())
        if by_position[i].tokens >= minimum
    ]
    return PrefixChain(lookups, records, marked=True)


def _hash_blocks(body: dict[str, Any], namespace: str, wanted: dict[int, int]) -> dict[int, Prefix]:
    """Chain-hash blocks up to the last wanted position (and not one further)."""
    last = max(wanted)
    digest = _digest(namespace.encode())
    size = 0
    out: dict[int, Prefix] = {}
    for i, block in enumerate(islice(iter_blocks(body), last + 1)):
        encoded = orjson.dumps(block.payload, option=_SORTED)
        size += len(encoded)
        running = _hasher(digest)
        running.update(encoded)
        digest = running.digest()[:_KEY_BYTES]
        if i in wanted:
            out[i] = Prefix(digest.hex(), wanted[i], size // BYTES_PER_TOKEN)
    return out


def _automatic(body: dict[str, Any], namespace: str, minimum: int) -> PrefixChain:
    """Prefixes at message boundaries: one running hash over the messages as sent (the same
    client sends its history the same way every turn), read at each boundary worth a key.

    The messages are encoded once, as a list: ``[m0,m1,...]`` is the same bytes up to
    message i whatever follows it, so a key at that boundary is what the shorter
    conversation's whole prompt hashes to. Only the messages next to a boundary worth a key
    are encoded alone, to find where it falls.
    """
    running = _hasher(namespace.encode())
    size = 0
    tools = body.get("tools")
    if tools:
        encoded_tools = orjson.dumps(tools)
        running.update(encoded_tools)
        size += len(encoded_tools)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return PrefixChain(automatic=True)
    encoded = orjson.dumps(messages)
    least = minimum * BYTES_PER_TOKEN - size  # bytes of messages a boundary needs
    lookups: list[Prefix] = []
    done = 0
    for end in _boundaries(messages, len(encoded), least):
        running.update(memoryview(encoded)[done:end])
        done = end
        key = running.copy().digest()[:_KEY_BYTES].hex()
        lookups.append(Prefix(key, AUTOMATIC_TTL, (size + end) // BYTES_PER_TOKEN))
    if not lookups:
        return PrefixChain(automatic=True)
    records = [lookups[0]] if len(lookups) == 1 else [lookups[0], lookups[-1]]
    return PrefixChain(lookups, records, automatic=True)


def prompt_chain(prompt: Any, namespace: str, minimum: int) -> PrefixChain:
    """Automatic prefixes of a legacy completion's prompt: one string, or one array of token
    ids (a batch of prompts gets none). A prompt has no messages to mark where its prefixes
    end, so its boundaries fall every ``PROMPT_CHUNK_TOKENS`` (estimated) from its start:
    prompts that share a start (a few-shot preamble, a document) or extend an earlier one
    (an agent's growing transcript) share the keys of the chunks they have in common. As for
    messages, the first boundary worth a key and the last ``LOOKBACK_BLOCKS`` are looked up,
    and the first and the last recorded."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        data, per_token = prompt.encode(), BYTES_PER_TOKEN
    elif isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
        data, per_token = _token_bytes(prompt), _TOKEN_ID_BYTES
    else:
        return PrefixChain(automatic=True)
    step = PROMPT_CHUNK_TOKENS * per_token
    first = max(step, -(-minimum * per_token // step) * step)  # the first chunk end worth a key
    ends = range(first, len(data) + 1, step)
    if not ends:
        return PrefixChain(automatic=True)
    wanted = sorted({ends[0], *ends[-LOOKBACK_BLOCKS:]})
    running = _hasher(namespace.encode() + b"\x00prompt")
    lookups: list[Prefix] = []
    done = 0
    for end in wanted:
        running.update(memoryview(data)[done:end])
        done = end
        key = running.copy().digest()[:_KEY_BYTES].hex()
        lookups.append(Prefix(key, AUTOMATIC_TTL, end // per_token))
    records = [lookups[0]] if len(lookups) == 1 else [lookups[0], lookups[-1]]
    return PrefixChain(lookups, records, automatic=True)


PROMPT_CHUNK_TOKENS = 256
_TOKEN_ID_BYTES = 8


def _token_bytes(tokens: list[int]) -> bytes:
    try:
        return array("q", tokens).tobytes()
    except OverflowError:  # an id no model has: hashed as text instead, still consistently
        return str(tokens).encode()


def _boundaries(messages: list[Any], total: int, least: int) -> list[int]:
    """Where, in the encoded list of ``total`` bytes, the boundaries worth a key end: the
    first one holding at least ``least`` bytes and the last ``LOOKBACK_BLOCKS`` that do."""
    ends: list[int] = []
    end = total - 1  # the last message ends before the closing bracket
    for message in messages[: -LOOKBACK_BLOCKS - 1 : -1]:  # the tail, newest first
        if end < least:
            break
        ends.append(end)
        end -= len(orjson.dumps(message)) + 1  # the message and its comma (or the bracket)
    ends.reverse()
    if len(ends) < LOOKBACK_BLOCKS:
        return ends  # the tail reaches the first boundary, or every earlier one is shorter
    tail_starts = len(messages) - len(ends)
    end = 0  # after the opening bracket, the first message ends after its own bytes
    for message in messages[:tail_starts]:
        end += len(orjson.dumps(message)) + 1
        if end >= least:
            return [end, *ends]
    return ends


def _digest(data: bytes) -> bytes:
    return _hasher(data).digest()[:_KEY_BYTES]


def _hasher(data: bytes) -> _Hash:
    """A SHA-256 hasher fed ``data``: a copy of one made at import, because creating one
    looks the algorithm up in OpenSSL's provider tables each time (~10 µs in the server,
    against well under 1 µs for a copy)."""
    running = _SHA256.copy()
    running.update(data)
    return running
