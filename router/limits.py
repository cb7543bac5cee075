"""Bounds on the work one request body may cause, checked in one pass before anything reads it.

Every surface reads its JSON body through ``BodyParser.parse``, so every surface gets the same
limits (``server.limits``): messages (or Responses input items), content parts, tools, nesting
depth, JSON values, and the longest string of a body the router will hash for prompt caching.
A breach is a 400 naming the limit's key.

Why these and how. The router's own work is linear in the body, but not all bodies cost the same
per byte: orjson parses a 16 MiB string in ~40 ms and 16 MiB of tiny object keys in ~1.5 s,
holding the GIL (a worker thread would stall the event loop just as much). So:

- a body up to ``INLINE_BYTES`` is parsed on the loop at once (its worst case is a few ms);
- a larger body is first parsed and measured in a worker *process*; only if it is within the
  limits is it parsed again here, and then its cost is bounded by ``max_json_values`` and its
  size. The double parse costs CPU, never loop time.

Depth matters beyond cost: orjson parses up to 1024 levels but encodes at most 254, and the
router re-encodes parts of the body (prefix hashing, ``cache_control`` stripping, stored
objects, Responses translation). A depth limit well below 254 keeps every re-encoding possible,
so nothing the upstream has already answered can be lost to an encoding error.

The measuring pass walks the body level by level, a plain loop over each level's values (it
measured faster than C-level ``map``/``compress`` pipelines, which cost ~10 µs per level
whatever its size), and stops as soon as the values seen and those waiting on the next level
pass ``max_json_values``. A chat body's plain turns (``router.survey``) are counted, not walked.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from router.errors import InvalidRequest
from router.survey import EMPTY, PLAIN_KEYS, PLAIN_VALUES, Survey, survey

if TYPE_CHECKING:
    from router.config import LimitsConfig

# Bodies up to this size are parsed on the event loop directly: at worst (all tiny keys) that
# costs ~25 ms here, less than the round trip to the worker process.
INLINE_BYTES = 256 << 10


class Limits(NamedTuple):
    """The limits as plain values, cheap to send to the worker process."""

    max_messages: int
    max_content_parts: int
    max_tools: int
    max_depth: int
    max_json_values: int
    max_hashed_string: int

    @classmethod
    def of(cls, config: LimitsConfig) -> Limits:
        return cls(
            config.max_messages,
            config.max_content_parts,
            config.max_tools,
            config.max_depth,
            config.max_json_values,
            config.max_hashed_string,
        )


class Parsed(NamedTuple):
    """A parsed body and the survey of its ``messages`` (for the checks that read them next)."""

    body: Any
    survey: Survey


@dataclass(frozen=True, slots=True)
class Breach:
    """One limit a body exceeds: the message and the ``param`` of the 400."""

    message: str
    param: str | None

    def error(self) -> InvalidRequest:
        return InvalidRequest(self.message, param=self.param, code="limit_exceeded")


def loads(raw: bytes) -> Any:
    """``orjson.loads`` with the cyclic GC paused: a body holds no cycles, and collections
    triggered by its many new containers would rescan them again and again."""
    if not gc.isenabled():
        return orjson.loads(raw)
    gc.disable()
    try:
        return orjson.loads(raw)
    finally:
        gc.enable()


def check(
    body: dict[str, Any],
    limits: Limits,
    *,
    hashing: bool,
    raw: bytes | None = None,
    surveyed: Survey | None = None,
) -> Breach | None:
    """The first limit ``body`` exceeds, or None. ``hashing``: the body carries
    ``cache_control`` markers, so the router will hash its strings. ``raw``, the bytes it was
    parsed from, lets a small body skip the walk when its size alone rules a breach out.
    ``surveyed``: the survey of ``body['messages']``, if taken already; plain turns are
    counted, not walked."""
    found = surveyed if surveyed is not None else survey(body.get("messages"))
    breach = _counts(body, limits, found)
    if breach is None and (raw is None or not _within_by_size(raw, limits, hashing=hashing)):
        # No string holds more characters than its JSON has bytes: a body no longer than
        # max_hashed_string needs no look at its strings' lengths, only at depth and count.
        if raw is not None and len(raw) <= limits.max_hashed_string:
            hashing = False
        breach = _shape(body, limits, hashing=hashing, surveyed=found)
    return breach


def _within_by_size(raw: bytes, limits: Limits, *, hashing: bool) -> bool:
    """True when ``raw`` is too small to break the shape limits: every JSON value or key
    takes at least two bytes, and nesting needs an opening bracket per level (brackets inside
    strings count too, which only makes this more cautious)."""
    size = len(raw)
    return (
        size // 2 + 1 <= limits.max_json_values
        and (not hashing or size <= limits.max_hashed_string)
        and raw.count(b"[") + raw.count(b"{") <= limits.max_depth
    )


def _counts(body: dict[str, Any], limits: Limits, surveyed: Survey) -> Breach | None:
    for name in ("messages", "input"):
        items = body.get(name)
        if isinstance(items, list):
            if len(items) > limits.max_messages:
                return _breach(name, len(items), limits.max_messages, "max_messages", "items")
            if items is surveyed.messages:
                items = surveyed.other_messages()  # a plain turn has no parts
            parts = sum(
                len(content)
                for item in items
                if isinstance(item, dict)
                for content in (item.get("content"), item.get("output"))
                if isinstance(content, list)
            )
            if parts > limits.max_content_parts:
                return _breach(name, parts, limits.max_content_parts, "max_content_parts", "parts")
    for name in ("tools", "functions"):
        tools = body.get(name)
        if isinstance(tools, list) and len(tools) > limits.max_tools:
            return _breach(name, len(tools), limits.max_tools, "max_tools", "tools")
    return None


def _breach(param: str, found: int, limit: int, key: str, what: str) -> Breach:
    return Breach(
        f"'{param}' holds {found} {what}; this router accepts at most {limit} "
        f"(server.limits.{key}).",
        param,
    )


def _shape(body: Any, limits: Limits, *, hashing: bool, surveyed: Survey) -> Breach | None:
    """Depth, value count and longest string in one breadth-first pass; the plain turns of
    ``surveyed`` are counted, not walked (each is the same five values, three levels down)."""
    depth = values = longest = 0
    if surveyed.plain and isinstance(body, dict) and body.get("messages") is surveyed.messages:
        body = {**body, "messages": surveyed.other_messages()}
        values = PLAIN_VALUES * surveyed.plain
        depth = 4  # the body, its messages, a turn, the turn's strings
        if hashing:
            longest = max(map(len, [*surveyed.plain_strings(), *PLAIN_KEYS]))
    breach = _walk(body, limits, hashing=hashing, values=values, longest=longest)
    if breach is None and depth > limits.max_depth:
        breach = _too_deep(limits)
    return breach


def _walk(body: Any, limits: Limits, *, hashing: bool, values: int, longest: int) -> Breach | None:
    level: list[Any] = [body]
    depth = 0
    most = limits.max_json_values
    while level:
        depth += 1
        if depth > limits.max_depth:
            return _too_deep(limits)
        values += len(level)
        below: list[Any] = []
        for item in level:
            kind = type(item)
            if kind is dict:
                values += len(item)
                below.extend(item.values())
                if hashing:
                    longest = max(longest, max(map(len, item), default=0))
            elif kind is list:
                below.extend(item)
            elif kind is str and hashing:
                longest = max(longest, len(item))
            if values + len(below) > most:
                break  # the next level alone is over the limit: stop reading this one
        if values + len(below) > most:
            return Breach(
                f"The body holds more than {most} JSON values and keys "
                "(server.limits.max_json_values).",
                None,
            )
        if longest > limits.max_hashed_string:
            return Breach(
                f"A prompt-cached body may not hold a string longer than "
                f"{limits.max_hashed_string} characters (server.limits.max_hashed_string).",
                None,
            )
        level = below
    return None


def _too_deep(limits: Limits) -> Breach:
    return Breach(
        f"The body is nested deeper than {limits.max_depth} levels (server.limits.max_depth).",
        None,
    )


def _precheck(raw: bytes, limits: Limits) -> Breach | str | None:
    """In the worker process: the body's breach, a parse problem (str), or None if fine."""
    try:
        body = loads(raw)
    except orjson.JSONDecodeError:
        return "not json"
    if not isinstance(body, dict):
        return None  # the caller's own parse reports it, cheaply
    return check(body, limits, hashing=b'"cache_control"' in raw)


def _start_pool() -> ProcessPoolExecutor:
    """The worker process, started and answering.

    forkserver: a fresh, single-threaded parent for the worker, never a fork of this process
    with its event loop and threads.
    """
    context = multiprocessing.get_context("forkserver")
    pool = ProcessPoolExecutor(max_workers=1, mp_context=context)
    pool.submit(len, b"").result()
    return pool


class BodySlot:
    """A place among the large bodies read at once; small bodies need none."""

    def __init__(self, semaphore: asyncio.Semaphore | None, wait: float = 5.0) -> None:
        self._semaphore = semaphore
        self._wait = wait
        self.held = semaphore is None

    async def __aenter__(self) -> BodySlot:
        """Raises TimeoutError (``held`` still False) after ``wait`` s without a slot."""
        if self._semaphore is not None:
            # A wait of its own: under the body's deadline alone, a waiter would nearly always
            # get the slot a stalled holder frees at its (earlier) deadline, with no time left.
            async with asyncio.timeout(self._wait):
                await self._semaphore.acquire()
            self.held = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._semaphore is not None and self.held:
            self._semaphore.release()


class BodyParser:
    """Parses request bodies within the limits; owns the worker process for large ones."""

    def __init__(self, config: LimitsConfig, *, inline_bytes: int = INLINE_BYTES) -> None:
        self.limits = Limits.of(config)
        self._inline = inline_bytes
        self._pool: ProcessPoolExecutor | None = None
        # Bounds the memory of bodies being read: a large one waits for a slot with its bytes
        # still in the socket (TCP flow control), not in this process.
        self._large = asyncio.Semaphore(config.max_large_bodies)
        self._large_wait = config.large_body_wait

    def slot(self, length: int | None, encoded: bool) -> BodySlot:
        """The slot a body of ``length`` bytes (None: chunked) must hold while it is read;
        an ``encoded`` (compressed) body may grow, so it counts as large."""
        small = length is not None and length <= self._inline and not encoded
        return BodySlot(None if small else self._large, self._large_wait)

    async def parse(self, raw: bytes) -> Parsed:
        """The parsed JSON, after the limits; raises InvalidRequest (or orjson's error)."""
        if len(raw) > self._inline:
            verdict = await self._precheck(raw)
            if isinstance(verdict, Breach):
                raise verdict.error()
            if verdict is not None:
                raise orjson.JSONDecodeError("not json", "", 0)
        body = loads(raw)
        if not isinstance(body, dict):
            return Parsed(body, EMPTY)
        found = survey(body.get("messages"))
        # Whether the body is prompt-cached matters only for a body longer than the
        # longest string allowed (see check); the search costs a scan of an unmarked body.
        hashing = len(raw) > self.limits.max_hashed_string and b'"cache_control"' in raw
        breach = check(body, self.limits, hashing=hashing, raw=raw, surveyed=found)
        if breach is not None:
            raise breach.error()
        return Parsed(body, found)

    async def _precheck(self, raw: bytes) -> Breach | str | None:
        loop = asyncio.get_running_loop()
        try:
            if self._pool is None:
                # Starting the worker blocks on its start-up: do it on a thread, not the loop.
                self._pool = await loop.run_in_executor(None, _start_pool)
            return await loop.run_in_executor(self._pool, _precheck, raw, self.limits)
        except BrokenProcessPool:
            # The worker died (out of memory, killed): this body is what it could not take.
            self.close()
            return Breach("The body could not be measured within the router's limits.", None)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
