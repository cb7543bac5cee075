"""The router's own time (``Server-Timing: router;dur``) for a large conversation vs a tiny one.

Starts a simulator replica with no added latency and ``di-router serve`` in front of it (as
separate processes on free loopback ports), then sends, one at a time and interleaved, a tiny
request and a ~140 KB conversation whose system prompt alone carries ``cache_control``, and
reports the median ``router;dur`` of each (the router's work before the upstream call: body
parsing, validation, classification, prefix chain, index lookup, replica choice). A variant
without any marker (automatic prefixes over every message boundary) is measured too, and so is
``short``: the marked system prompt and one question, which does the same prefix work as the
marked conversation, so the marked one's ratio to it is what the conversation's length costs.
Not a test: run it by hand and record the figures.

    python benchmarks/router_cost.py [--rounds 300] [--kb 140]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from router.bench.fleet import running_fleet, start_child
from router.sim import SimSettings

_ROUTER_DUR = re.compile(r"router;dur=([\d.]+)")
EPHEMERAL = {"type": "ephemeral"}


def conversation(kb: int, *, marked: bool) -> dict[str, Any]:
    """A chat of about ``kb`` kilobytes: a 2,000-word system prompt, then many turns."""
    words = ["policy", "refund", "order", "customer", "shipping", "invoice", "account", "notes"]
    system: dict[str, Any] = {"type": "text", "text": " ".join(words[i % 8] for i in range(2000))}
    if marked:
        system["cache_control"] = EPHEMERAL
    messages: list[dict[str, Any]] = [{"role": "system", "content": [system]}]
    turn = 0
    while len(orjson.dumps(messages)) < kb * 1024:
        filler = " ".join(words[(turn + i) % 8] for i in range(120))
        messages.append({"role": "user", "content": f"Question {turn}: {filler}"})
        messages.append({"role": "assistant", "content": f"Answer {turn}: {filler}"})
        turn += 1
    messages.append({"role": "user", "content": "And the last question?"})
    return {"model": "m", "messages": messages, "max_tokens": 1}


def short_marked(kb: int) -> dict[str, Any]:
    """The marked conversation's system prompt and one question: the same prefix work."""
    whole = conversation(kb, marked=True)
    question = {"role": "user", "content": "And the last question?"}
    return {**whole, "messages": [whole["messages"][0], question]}


async def router_ms(session: aiohttp.ClientSession, url: str, body: bytes) -> float:
    async with session.post(
        url, data=body, headers={"Content-Type": "application/json"}
    ) as response:
        await response.read()
        response.raise_for_status()
        found = _ROUTER_DUR.search(response.headers["Server-Timing"])
        assert found is not None
        return float(found.group(1))


async def main(rounds: int, kb: int) -> None:
    sim = SimSettings(ttft_ms=0, prefill_ms_per_token=0, itl_ms=0, output_tokens=1)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        async with running_fleet(sim, 1, out) as fleet:
            config = out / "router.yaml"
            replicas = [{"id": i, "url": u} for i, u in fleet.replicas]
            config.write_text(
                orjson.dumps(
                    {
                        "server": {"host": "127.0.0.1", "port": 0},
                        "backends": [{"name": "pool", "replicas": replicas}],
                        "routes": dict.fromkeys(("text", "code", "json", "vision"), "pool"),
                    }
                ).decode()
            )
            argv = [sys.executable, "-m", "router", "serve", "--config", str(config)]
            router, lines = await start_child(
                "router",
                [*argv, "--log-level", "warning"],
                out / "router.log",
                lambda seen: any("base_url=" in line for line in seen),
            )
            try:
                base = next(line for line in lines if "base_url=" in line).split("base_url=")[1]
                url = base.strip() + "/chat/completions"
                bodies = {
                    "tiny": orjson.dumps(
                        {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
                    ),
                    "marked": orjson.dumps(conversation(kb, marked=True)),
                    "unmarked": orjson.dumps(conversation(kb, marked=False)),
                    "short": orjson.dumps(short_marked(kb)),
                }
                times: dict[str, list[float]] = {name: [] for name in bodies}
                async with aiohttp.ClientSession() as session:
                    for body in bodies.values():  # warm-up
                        for _ in range(20):
                            await router_ms(session, url, body)
                    for _ in range(rounds):
                        for name, body in bodies.items():
                            times[name].append(await router_ms(session, url, body))
            finally:
                await router.stop()
    tiny = statistics.median(times["tiny"])
    short = statistics.median(times["short"])
    print(f"{rounds} rounds, interleaved; router;dur median (p90) in ms")
    for name, body in bodies.items():
        median = statistics.median(times[name])
        p90 = statistics.quantiles(times[name], n=10)[-1]
        print(
            f"  {name:9} {len(body) / 1024:6.1f} KB  {median:6.3f} ({p90:6.3f})"
            f"  {median / tiny:5.2f}x tiny  {median / short:5.2f}x short"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--kb", type=int, default=140)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.kb))
