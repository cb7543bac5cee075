"""``GET /dashboard`` (the page) and ``GET /dashboard/data`` (its figures, polled)."""

from __future__ import annotations

import time
from functools import cache
from importlib.resources import files

import orjson
from aiohttp import web

from router.dashboard import dashboard_data, refresh_gauges
from router.keys import BALANCER, METRICS, RECENT_ERRORS, STORE
from router.redis_store import RedisPrefixStore


@cache
def _page() -> bytes:
    return files("router").joinpath("dashboard.html").read_bytes()


async def page(request: web.Request) -> web.Response:
    return web.Response(
        body=_page(),
        content_type="text/html",
        charset="utf-8",
        # The page loads nothing from anywhere else; say so to the browser.
        headers={
            "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
            "style-src 'unsafe-inline'; img-src data:",
            "Cache-Control": "no-cache",
        },
    )


async def data(request: web.Request) -> web.Response:
    app = request.app
    metrics = app[METRICS]
    # This process's figures are current; the other workers' were set at their last request's
    # end or scrape.
    store = app[STORE]
    refresh_gauges(metrics, app[BALANCER], store, time.monotonic())
    redis_up = store.answering if isinstance(store, RedisPrefixStore) else None
    figures = dashboard_data(
        metrics.scrape_registry(), app[BALANCER], app[RECENT_ERRORS], redis_up=redis_up
    )
    return web.Response(
        body=orjson.dumps(figures),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )
