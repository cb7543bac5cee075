"""Deterministic filler text: the sim's "language model" is a seeded word picker."""

from __future__ import annotations

import hashlib
import random

VOCABULARY = (
    "the", "model", "router", "token", "cache", "prefix", "block", "replica", "request",
    "stream", "latency", "batch", "prompt", "answer", "system", "user", "tool", "value",
    "signal", "queue", "memory", "kernel", "graph", "vector", "layer", "weight", "matrix",
    "server", "client", "packet", "sample", "window", "context", "output", "input", "reply",
    "quick", "simple", "steady", "bright", "careful", "simulated", "shared", "fast", "slow",
    "is", "was", "runs", "holds", "sends", "reads", "writes", "keeps", "moves", "finds",
    "and", "or", "with", "from", "into", "over", "under", "near",
)  # fmt: skip

# Chance that a word is followed by punctuation, which is a token of its own.
_PUNCTUATION_RATE = 0.08


def seeded_rng(*parts: int | str | bytes | None) -> random.Random:
    """An RNG whose stream depends only on `parts` (stable across processes)."""
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(repr(part).encode() if not isinstance(part, bytes) else part)
        digest.update(b"\x1f")
    return random.Random(int.from_bytes(digest.digest(), "big"))


def word_pieces(rng: random.Random, count: int) -> list[str]:
    """`count` one-token pieces of prose: words with leading spaces, some punctuation."""
    out: list[str] = []
    while len(out) < count:
        word = rng.choice(VOCABULARY)
        out.append(" " + word if out else word)
        if len(out) < count and rng.random() < _PUNCTUATION_RATE:
            out.append(rng.choice((",", ".")))
    return out


def words(rng: random.Random, count: int) -> str:
    """`count` words separated by spaces."""
    return " ".join(rng.choice(VOCABULARY) for _ in range(count))
