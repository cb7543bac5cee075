"""Reading request bodies: a body already received takes no deadline and no large-body slot."""

from __future__ import annotations

import asyncio
import gzip
from typing import cast
from unittest import mock

from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.test_utils import make_mocked_request

from router.config import REQUEST_TYPES, embedded_config
from router.handlers.common import read_body_bytes
from router.keys import BODY_PARSER, CONFIG
from router.limits import BodyParser, BodySlot

BODY = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'


class CountingSlots:
    """A body parser stand-in that counts the large-body slots asked for."""

    def __init__(self) -> None:
        self.asked = 0

    def slot(self, length: int | None, encoded: bool) -> BodySlot:
        self.asked += 1
        return BodySlot(None)


def request_for(
    payload: StreamReader, slots: CountingSlots, headers: dict[str, str] | None = None
) -> web.Request:
    app = web.Application()
    pools = {f"sim-{t}": [(t, "http://127.0.0.1:1/v1")] for t in REQUEST_TYPES}
    app[CONFIG] = embedded_config(pools)
    app[BODY_PARSER] = cast(BodyParser, slots)
    return make_mocked_request(
        "POST", "/v1/chat/completions", headers=headers or {}, payload=payload, app=app
    )


def stream() -> StreamReader:
    return StreamReader(mock.Mock(_reading_paused=False), 2**16, loop=asyncio.get_running_loop())


async def test_a_body_received_whole_needs_no_slot() -> None:
    payload, slots = stream(), CountingSlots()
    payload.feed_data(BODY)
    payload.feed_eof()
    assert await read_body_bytes(request_for(payload, slots)) == BODY
    assert slots.asked == 0


async def test_a_body_still_arriving_is_read_in_a_slot() -> None:
    payload, slots = stream(), CountingSlots()
    payload.feed_data(BODY[:10])

    def rest() -> None:
        payload.feed_data(BODY[10:])
        payload.feed_eof()

    reading = asyncio.ensure_future(read_body_bytes(request_for(payload, slots)))
    asyncio.get_running_loop().call_soon(rest)  # runs after the read is waiting for it
    assert await reading == BODY
    assert slots.asked == 1


async def test_a_compressed_body_is_read_in_a_slot_even_when_whole() -> None:
    # Its decoded size is unknown until it is decoded: it counts as large.
    payload, slots = stream(), CountingSlots()
    # (A live request's stream holds the decoded bytes; this one holds what it was fed.)
    payload.feed_data(gzip.compress(BODY))
    payload.feed_eof()
    request = request_for(payload, slots, {"Content-Encoding": "gzip"})
    assert await read_body_bytes(request) == gzip.compress(BODY)
    assert slots.asked == 1
