"""The prefix cache: chained block hashes, leading hits only, LRU eviction."""

from __future__ import annotations

from router.sim.kvcache import PrefixCache, block_hashes


def _tokens(count: int, tag: str = "t") -> list[str]:
    return [f"{tag}{i}" for i in range(count)]


def test_only_full_blocks_are_hashed_and_hashes_chain() -> None:
    assert len(block_hashes(_tokens(47), 16)) == 2
    # Same second block after a different first block: a different hash.
    a = block_hashes(["x"] * 4 + ["y"] * 4, 4)
    b = block_hashes(["z"] * 4 + ["y"] * 4, 4)
    assert a[1] != b[1]


def test_repeat_hits_every_full_block() -> None:
    cache = PrefixCache(block_size=16, capacity=100)
    assert cache.admit(_tokens(40)) == 0
    assert cache.admit(_tokens(40)) == 32
    assert len(cache) == 2


def test_hits_stop_at_the_first_divergent_block() -> None:
    cache = PrefixCache(block_size=4, capacity=100)
    cache.admit(_tokens(12))
    diverged = [*_tokens(5), "other", *_tokens(12)[6:]]
    assert cache.admit(diverged) == 4


def test_least_recently_used_blocks_are_evicted() -> None:
    cache = PrefixCache(block_size=4, capacity=4)
    cache.admit(_tokens(8, "a"))  # blocks a0, a1
    cache.admit(_tokens(8, "b"))  # blocks b0, b1: full
    assert cache.admit(_tokens(8, "a")) == 8  # refreshes a: b is now the oldest
    cache.admit(_tokens(8, "c"))  # evicts b
    assert len(cache) == 4
    assert cache.admit(_tokens(8, "a")) == 8
    assert cache.admit(_tokens(8, "b")) == 0


def test_zero_capacity_never_hits() -> None:
    cache = PrefixCache(block_size=4, capacity=0)
    cache.admit(_tokens(8))
    assert cache.admit(_tokens(8)) == 0
    assert len(cache) == 0
