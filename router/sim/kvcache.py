"""A replica's prefix KV cache, modelled on vLLM's automatic prefix caching.

The prompt is cut into full blocks of `block_size` tokens (a trailing partial block is never
cached). Each block is identified by a hash chained over every block before it, so a block
only matches when the whole prefix up to it matches. A request's cache hit is the number of
leading blocks already present; after the lookup all of the prompt's full blocks are inserted
(or refreshed), and the least recently used blocks are evicted beyond `capacity` blocks.

Blocks are inserted when the request is admitted rather than when its prefill finishes, so a
concurrent request with the same prefix already hits: a simplification that does not matter
for routing, which cares about where a prefix was sent.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence


def block_hashes(tokens: Sequence[str], block_size: int) -> list[bytes]:
    """Chained hashes of the full blocks of `tokens`: h_i = H(h_{i-1}, block i)."""
    hashes: list[bytes] = []
    previous = b""
    for start in range(0, len(tokens) - block_size + 1, block_size):
        block = "\x00".join(tokens[start : start + block_size]).encode()
        previous = hashlib.blake2b(previous + b"\x01" + block, digest_size=16).digest()
        hashes.append(previous)
    return hashes


class PrefixCache:
    """Block-hash LRU recording which prompt prefixes a replica holds."""

    def __init__(self, *, block_size: int, capacity: int) -> None:
        self.block_size = block_size
        self.capacity = capacity
        # Ordered oldest use first; values unused.
        self._blocks: OrderedDict[bytes, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def admit(self, tokens: Sequence[str]) -> int:
        """Look the prompt up, then cache its full blocks; return the cached token count."""
        hashes = block_hashes(tokens, self.block_size)
        hits = 0
        for block in hashes:
            if block not in self._blocks:
                break
            hits += 1
        for block in hashes:
            self._blocks[block] = None
            self._blocks.move_to_end(block)
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)
        return hits * self.block_size

    def clear(self) -> None:
        self._blocks.clear()
