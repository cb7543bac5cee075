"""router/sim/metrics.py: the sim's GET /metrics, in vLLM's names and true to its state."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from router.load import parse_report
from router.sim import SimSettings, start_fleet
from router.sim.engine import SIM_ENGINE


def samples(page: str) -> dict[str, tuple[dict[str, str], float]]:
    return {
        s.name: (s.labels, s.value)
        for family in text_string_to_metric_families(page)
        for s in family.samples
    }


def chat(text: str) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], "max_tokens": 1}


async def test_metrics_report_running_waiting_and_kv_blocks() -> None:
    # Each uncached prompt takes seconds to prefill, so while the first one prefills the other
    # two wait in the replica's queue; the test cancels them long before.
    slow = SimSettings(ttft_ms=0, prefill_ms_per_token=20, itl_ms=0, cache_blocks=1000)
    async with await start_fleet(slow) as fleet, aiohttp.ClientSession() as session:
        replica = fleet.replicas[0]
        engine = replica.app[SIM_ENGINE]
        posts = [
            asyncio.create_task(
                session.post(replica.url + "/chat/completions", json=chat(f"{i} " + "w " * 300))
            )
            for i in range(3)
        ]
        for _ in range(500):  # until all three are admitted (bounded)
            if engine.stats.in_flight == 3 and engine.occupancy().waiting == 2:
                break
            await asyncio.sleep(0.01)
        async with session.get(replica.url.removesuffix("/v1") + "/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            page = await response.text()
        for post in posts:
            post.cancel()
        await asyncio.gather(*posts, return_exceptions=True)
    found = samples(page)
    assert found["vllm:num_requests_running"][1] == 1
    assert found["vllm:num_requests_waiting"][1] == 2
    kv = found["vllm:kv_cache_usage_perc"][1]
    assert 0 < kv < 1
    # Three prompts of about 300 tokens each, in 16-token blocks, out of 1000 blocks.
    assert round(kv * 1000) == 3 * -(-engine.stats.prompt_tokens // 3 // 16)
    labels, value = found["vllm:cache_config_info"]
    assert value == 1 and labels["block_size"] == "16" and labels["num_gpu_blocks"] == "1000"
    report = parse_report(page.encode())
    assert (report.running, report.waiting) == (1, 2)


async def test_prefix_cache_counters_count_tokens() -> None:
    fast = SimSettings(ttft_ms=0, prefill_ms_per_token=0, itl_ms=0)
    async with await start_fleet(fast) as fleet, aiohttp.ClientSession() as session:
        replica = fleet.replicas[0]
        for _ in range(2):
            async with session.post(
                replica.url + "/chat/completions", json=chat("same " * 100)
            ) as response:
                usage = (await response.json())["usage"]
        async with session.get(replica.url.removesuffix("/v1") + "/metrics") as response:
            found = samples(await response.text())
    assert found["vllm:prefix_cache_queries_total"][1] == 2 * usage["prompt_tokens"]
    assert (
        found["vllm:prefix_cache_hits_total"][1] == usage["prompt_tokens_details"]["cached_tokens"]
    )
    assert found["vllm:num_requests_running"][1] == 0
    assert found["vllm:kv_cache_usage_perc"][1] == 0
