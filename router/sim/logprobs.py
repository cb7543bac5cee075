"""Log probabilities for generated tokens, in the OpenAI shapes, when a request asks for them.

The values are made up but consistent: each token's log probability is drawn from an RNG
seeded by the token and its position, its alternatives are other vocabulary words with lower
values, and the sampled token comes first in `top_logprobs`, as a greedy model's would.
Chat (`logprobs: true`, `top_logprobs: 0..20`) gets `{"content": [...], "refusal": null}`
per choice, and one entry per streamed content chunk; legacy completions (`logprobs: 0..5`)
get `tokens`, `token_logprobs`, `top_logprobs` and `text_offset`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from router.sim.words import VOCABULARY, seeded_rng


def token_entries(pieces: Sequence[str], top: int) -> list[dict[str, Any]]:
    """One chat logprobs entry per piece, each with ``top`` alternatives."""
    entries = []
    for position, piece in enumerate(pieces):
        rng = seeded_rng("logprob", position, piece)
        logprob = -round(rng.uniform(0.0005, 1.2), 6)
        alternatives = [{"token": piece, "logprob": logprob, "bytes": list(piece.encode())}]
        current = logprob
        for word in rng.sample(VOCABULARY, min(len(VOCABULARY), top + 1)):
            if len(alternatives) >= top:
                break
            token = (" " if piece.startswith(" ") else "") + word
            if token == piece:
                continue
            current = round(current - rng.uniform(0.2, 2.5), 6)
            alternatives.append({"token": token, "logprob": current, "bytes": list(token.encode())})
        entries.append({**alternatives[0], "top_logprobs": alternatives[:top]})
    return entries


def chat_logprobs(entries: Sequence[dict[str, Any]] | None) -> dict[str, Any] | None:
    """A chat choice's (or chunk's) ``logprobs`` object; None when none were asked for."""
    if entries is None:
        return None
    return {"content": list(entries), "refusal": None}


def completion_logprobs(entries: Sequence[dict[str, Any]], start: int = 0) -> dict[str, Any]:
    """The legacy completions shape, for the pieces the entries describe."""
    offsets = []
    position = start
    for entry in entries:
        offsets.append(position)
        position += len(entry["token"])
    return {
        "tokens": [entry["token"] for entry in entries],
        "token_logprobs": [entry["logprob"] for entry in entries],
        "top_logprobs": [
            {alt["token"]: alt["logprob"] for alt in entry["top_logprobs"]} for entry in entries
        ],
        "text_offset": offsets,
    }
