"""Helpers shared by the stored-object endpoints: OpenAI list pages and store faults."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

import orjson
from aiohttp import web

from router.errors import InvalidRequest, ServiceUnavailable
from router.store import StoreUnavailable

T = TypeVar("T")


async def guarded(call: Awaitable[T]) -> T:
    """Await a store call; a store that cannot answer is a 503, not a 500."""
    try:
        return await call
    except StoreUnavailable:
        raise ServiceUnavailable("The object store is unavailable; try again shortly.") from None


def page_limit(raw: str | None) -> int:
    if raw is None:
        return 20
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 100:
        raise InvalidRequest("'limit' must be an integer from 1 to 100.", param="limit")
    return int(raw)


def newest_first(order: str | None) -> bool:
    if order not in (None, "asc", "desc"):
        raise InvalidRequest("'order' must be 'asc' or 'desc'.", param="order")
    return order == "desc"


def list_response(items: list[dict[str, Any]], has_more: bool) -> web.Response:
    return web.json_response(
        {
            "object": "list",
            "data": items,
            "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None,
            "has_more": has_more,
        },
        dumps=_dumps,
    )


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()
