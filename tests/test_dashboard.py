"""The dashboard: its JSON figures, and the page itself in a real headless Chromium."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from router import dashboard
from router.dashboard import _quantile
from router.keys import BALANCER, METRICS

from .conftest import Stack

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
]


def root(stack: Stack) -> str:
    return stack.base_url.removesuffix("/v1")


def dashboard_data(stack: Stack) -> dict[str, Any]:
    async def fetch() -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(root(stack) + "/dashboard/data") as response,
        ):
            assert response.status == 200
            data: dict[str, Any] = await response.json()
            return data

    return stack.run(fetch())


@pytest.mark.parametrize(
    ("redis_up", "index"), [(None, "memory"), (True, "redis"), (False, "redis down")]
)
def test_the_figures_say_where_the_prefix_index_is_and_whether_it_answers(
    make_stack: Any, redis_up: bool | None, index: str
) -> None:
    stack = make_stack()
    figures = dashboard.dashboard_data(
        stack.app[METRICS].scrape_registry(),
        stack.app[BALANCER],
        dashboard.RecentErrors(),
        redis_up=redis_up,
    )
    assert figures["cache"]["index"] == index


def test_figures_follow_traffic(make_stack: Any) -> None:
    stack = make_stack()
    client = stack.client()
    empty = dashboard_data(stack)
    assert empty["requests"]["total"] == 0
    assert empty["cache"]["hit_rate"] is None and empty["ttft_ms"]["p50"] is None
    system: Any = {
        "role": "system",
        "content": [
            {"type": "text", "text": "rules " * 200, "cache_control": {"type": "ephemeral"}}
        ],
    }
    for question in ("a", "b", "c"):
        list(
            client.chat.completions.create(
                model="m",
                messages=[system, {"role": "user", "content": question}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "x"}],
        response_format={"type": "json_object"},
    )
    with pytest.raises(Exception, match="400"):
        client.chat.completions.create(model="m", messages=[])
    data = dashboard_data(stack)
    assert data["requests"]["by_type"] == {"text": 3.0, "json": 1.0}
    assert data["requests"]["by_backend"] == {"sim-text": 3.0, "sim-json": 1.0}
    assert data["cache"]["outcomes"]["hit"] == 2 and data["cache"]["hit_rate"] == 2 / 3
    assert data["cache"]["index"] == "memory"
    assert 0 < data["tokens"]["cached_share"] < 1
    assert data["ttft_ms"]["count"] == 3 and data["ttft_ms"]["streamed"] is True
    assert 0 < data["ttft_ms"]["p50"] <= data["ttft_ms"]["p90"]
    assert {r["id"] for r in data["replicas"]} >= {"sim-text-0", "sim-text-1"}
    assert all(r["healthy"] and r["in_flight"] == 0 for r in data["replicas"])
    (error,) = data["errors"]
    assert error["status"] == 400 and "messages" in error["message"]


def test_quantiles_interpolate_within_buckets() -> None:
    bounds = [0.01, 0.1, float("inf")]
    cumulative = {0.01: 0.0, 0.1: 10.0, float("inf"): 10.0}
    assert _quantile(0.5, bounds, cumulative, 10.0) == pytest.approx(55.0)
    assert _quantile(0.5, bounds, {0.01: 0.0, 0.1: 0.0, float("inf"): 4.0}, 4.0) == 100.0
    assert _quantile(0.5, bounds, cumulative, 0.0) is None


class Page:
    """One browser tab driven over the DevTools protocol."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._next = 0

    async def call(
        self, method: str, params: dict[str, Any], *, until: str | None = None
    ) -> dict[str, Any]:
        """Send a command; return its result (or, with ``until``, wait for that event too)."""
        self._next += 1
        ident = self._next
        await self._ws.send_json({"id": ident, "method": method, "params": params})
        result: dict[str, Any] | None = None
        seen = until is None
        async with asyncio.timeout(20):
            async for message in self._ws:
                reply = message.json()
                if reply.get("id") == ident:
                    assert "result" in reply, reply
                    result = reply["result"]
                seen = seen or reply.get("method") == until
                if result is not None and seen:
                    return result
        raise AssertionError("the browser closed the connection")

    async def open(self, url: str) -> None:
        await self.call("Page.enable", {})
        await self.call("Page.navigate", {"url": url}, until="Page.loadEventFired")

    async def evaluate(self, expression: str) -> Any:
        """The value of ``expression`` in the page (a promise is awaited)."""
        params = {"expression": expression, "awaitPromise": True, "returnByValue": True}
        result = await self.call("Runtime.evaluate", params)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")


@contextlib.asynccontextmanager
async def chromium_page(url: str) -> AsyncIterator[Page]:
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory() as profile:
        process = await asyncio.create_subprocess_exec(
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={profile}",
            "about:blank",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            assert process.stderr is not None
            endpoint = ""
            async with asyncio.timeout(30):
                while not endpoint:
                    line = (await process.stderr.readline()).decode()
                    assert line, "chromium exited before it listened"
                    if line.startswith("DevTools listening on "):
                        endpoint = line.split(" on ", 1)[1].strip()
            http_root = "http://" + endpoint.split("/")[2]
            async with aiohttp.ClientSession() as session:
                async with session.get(http_root + "/json/list") as response:
                    targets = await response.json()
                (tab,) = [t for t in targets if t["type"] == "page"]
                async with session.ws_connect(tab["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    page = Page(ws)
                    await page.open(url)
                    yield page
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()


WAIT_FOR = """
new Promise((resolve, reject) => {
  const started = Date.now();
  const check = () => {
    const value = %s;
    if (value) resolve(value);
    else if (Date.now() - started > 15000) reject(new Error("timed out: %s"));
    else setTimeout(check, 50);
  };
  check();
})
"""


def wait_for(condition: str) -> str:
    return WAIT_FOR % (condition, condition.replace('"', "'"))


def test_the_page_renders_and_its_figures_change_after_traffic(make_stack: Any) -> None:
    if CHROMIUM is None:
        if os.environ.get("DI_REQUIRE_BROWSER"):  # CI: the browser test must run
            pytest.fail("chromium is not installed")
        pytest.skip("chromium is not installed (scripts/test installs it)")
    stack = make_stack()
    client = stack.client()
    url = root(stack) + "/dashboard"

    async def drive() -> None:
        async with chromium_page(url) as page:
            # The first poll has rendered: no traffic yet (only the dashboard's own requests).
            await page.evaluate(wait_for("Number(document.body.dataset.updates) >= 1"))
            assert await page.evaluate("document.title") == "di-router dashboard"
            assert (
                await page.evaluate("document.getElementById('hit-rate').textContent") == "\u2013"
            )
            assert "nothing yet" in await page.evaluate(
                "document.getElementById('by-type').textContent"
            )
            await asyncio.to_thread(send_traffic)
            by_type = await page.evaluate(
                wait_for(
                    "document.getElementById('by-type').textContent.includes('code')"
                    " && document.getElementById('by-type').textContent"
                )
            )
            assert "text" in by_type and "code" in by_type
            hit_rate = await page.evaluate(
                wait_for(
                    "document.getElementById('hit-rate').textContent.endsWith('%')"
                    " && document.getElementById('hit-rate').textContent"
                )
            )
            assert hit_rate == "50.0%"
            detail = await page.evaluate("document.getElementById('hit-detail').textContent")
            assert detail.endswith("index: memory")
            ttft = await page.evaluate("document.getElementById('ttft-p50').textContent")
            assert ttft.endswith(("ms", " s"))
            replicas = await page.evaluate("document.getElementById('replicas').textContent")
            assert "sim-code-0" in replicas and "up" in replicas
            errors = await page.evaluate(
                wait_for(
                    "document.getElementById('errors').textContent.includes('400')"
                    " && document.getElementById('errors').textContent"
                )
            )
            assert "messages" in errors

    def send_traffic() -> None:
        system: Any = {
            "role": "system",
            "content": [
                {"type": "text", "text": "handbook " * 100, "cache_control": {"type": "ephemeral"}}
            ],
        }
        for question in ("one", "two"):
            list(
                client.chat.completions.create(
                    model="m",
                    messages=[system, {"role": "user", "content": question}],
                    stream=True,
                )
            )
        client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "call it"}],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        )
        with contextlib.suppress(Exception):
            client.chat.completions.create(model="m", messages=[])

    asyncio.run(drive())
