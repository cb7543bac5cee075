"""Settings of one simulated OpenAI-compatible LLM replica.

The default timings model a 7-8B model served by vLLM on one modern GPU: prefill runs at
roughly 10k prompt tokens/s (`prefill_ms_per_token=0.1`), decoding at about 65 tokens/s per
sequence (`itl_ms=15`), and every request pays a fixed overhead (`ttft_ms=15`) for scheduling,
tokenisation and the first forward pass. Prefill is charged only for prompt tokens missing
from the replica's prefix cache, which is what makes cache-aware routing measurable.

Setting every timing to 0 gives a sim that never sleeps, for fast tests.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class SimSettings:
    """How one sim replica behaves: its model name, timings, KV cache and randomness."""

    model: str = "sim-model"
    ttft_ms: float = 15.0
    prefill_ms_per_token: float = 0.1
    itl_ms: float = 15.0
    output_tokens: int = 64
    block_size: int = 16
    cache_blocks: int = 8192
    image_tokens: int = 85
    seed: int = 0
    # A real server's context window: prompt plus completion tokens of one sequence. Requests
    # beyond it are 400s, so no request can make the sim generate without end.
    max_model_len: int = 131072  # Llama 3.1's 128K

    def __post_init__(self) -> None:
        for name in ("ttft_ms", "prefill_ms_per_token", "itl_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"SimSettings.{name} must be >= 0")
        if self.block_size < 1:
            raise ValueError("SimSettings.block_size must be >= 1")
        if self.max_model_len < 1:
            raise ValueError("SimSettings.max_model_len must be >= 1")
        for name in ("output_tokens", "cache_blocks", "image_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"SimSettings.{name} must be >= 0")
