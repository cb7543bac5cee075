"""TTFT of a repeated 2,000-token prefix on the embedded default: cache miss vs hit.

Starts ``di-router serve`` (no config: simulated backends with their default timing) on a free
loopback port, then for each of ``--pairs`` distinct system prompts sends a first request (a
miss) and a second one with another question (a hit), streaming, and reports the time to first
content token of each group. Not a test: run it by hand and record the figures.

    python benchmarks/cache_hit.py [--pairs 20] [--prefix-tokens 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

from openai import AsyncOpenAI

WORDS = ["policy", "refund", "order", "customer", "shipping", "invoice", "account", "support"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def messages(pair: int, question: str, tokens: int) -> Any:
    system = f"Tenant {pair}. " + " ".join(WORDS[(i + pair) % len(WORDS)] for i in range(tokens))
    return [
        {
            "role": "system",
            "content": [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}],
        },
        {"role": "user", "content": question},
    ]


async def first_token(client: AsyncOpenAI, body: Any) -> tuple[float, str, int]:
    """TTFT in ms, the X-DI-Cache header, and the cached tokens the backend reported."""
    started = time.perf_counter()
    ttft = None
    cached = 0
    async with client.chat.completions.with_streaming_response.create(
        model="bench", messages=body, stream=True, stream_options={"include_usage": True}
    ) as raw:
        cache = raw.headers["X-DI-Cache"]
        async for chunk in await raw.parse():
            if ttft is None and chunk.choices and chunk.choices[0].delta.content:
                ttft = (time.perf_counter() - started) * 1000
            details = chunk.usage.prompt_tokens_details if chunk.usage else None
            if details is not None:
                cached = details.cached_tokens or 0
    assert ttft is not None
    return ttft, cache, cached


async def measure(base_url: str, pairs: int, tokens: int) -> dict[str, list[float]]:
    client = AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0)
    results: dict[str, list[float]] = {"miss": [], "hit": []}
    cached_on_hit = []
    try:
        for pair in range(pairs):
            miss = await first_token(client, messages(pair, "What is the refund window?", tokens))
            hit = await first_token(client, messages(pair, "And for damaged goods?", tokens))
            assert miss[1] == "miss" and hit[1] == "hit", (miss, hit)
            results["miss"].append(miss[0])
            results["hit"].append(hit[0])
            cached_on_hit.append(hit[2])
    finally:
        await client.close()
    print(f"cached tokens reported on hits: median {statistics.median(cached_on_hit):.0f}")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--prefix-tokens", type=int, default=2000)
    args = parser.parse_args()
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "router",
        "serve",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        for line in server.stdout:
            if "base_url=" in line:
                break
        results = asyncio.run(
            measure(f"http://127.0.0.1:{port}/v1", args.pairs, args.prefix_tokens)
        )
    finally:
        server.terminate()
        server.wait(10)
    miss, hit = statistics.median(results["miss"]), statistics.median(results["hit"])
    print(f"{args.pairs} pairs, {args.prefix_tokens}-token prefix, embedded default")
    print(f"TTFT p50 miss {miss:7.1f} ms")
    print(f"TTFT p50 hit  {hit:7.1f} ms   ({miss / hit:.1f}x faster)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
