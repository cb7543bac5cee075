"""Server-sent events for streamed completions, paced by the engine's token clock.

A stream is a sequence of steps: step k holds the chunks due when token k is generated
(every choice's k-th token, plus role and finish chunks), sent at `first_token_at + k *
itl_ms`. Mid-stream faults fire right after the K-th content chunk (one per generated token;
role, finish and usage chunks do not count), so K = 0 fails before any chunk is sent and a
stream with fewer than K content chunks ends normally.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import orjson
from aiohttp import web

from router.sim.engine import Admission, Outcome, SimEngine, Tracked, sleep_until
from router.sim.generate import Choice
from router.sim.logprobs import chat_logprobs, completion_logprobs
from router.sim.request import SimFault
from router.sim.wire import Meta, chat_chunk, chat_deltas, text_chunk

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    # Keep reverse proxies (nginx) from buffering the stream.
    "X-Accel-Buffering": "no",
}
DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class Event:
    """One SSE chunk; `content` marks chunks that carry a generated token."""

    payload: dict[str, Any]
    content: bool = False


def encode(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def chat_steps(meta: Meta, choices: Sequence[Choice]) -> Iterator[list[Event]]:
    """Chat chunks by token step: role first, one delta per token, then the finish chunk."""
    deltas = [chat_deltas(choice) for choice in choices]
    for step in range(max(1, max((len(d) for d in deltas), default=0))):
        events: list[Event] = []
        for choice, choice_deltas in zip(choices, deltas, strict=True):
            if step == 0:
                role = {"role": "assistant", "content": ""}
                events.append(Event(chat_chunk(meta, choice.index, role)))
            if step < len(choice_deltas):
                delta = choice_deltas[step]
                logprobs = _chunk_logprobs(choice, step)
                chunk = chat_chunk(meta, choice.index, delta, logprobs=logprobs)
                events.append(Event(chunk, content=True))
            if step == max(0, len(choice_deltas) - 1):
                finish = chat_chunk(meta, choice.index, {}, choice.finish_reason)
                events.append(Event(finish))
        yield events


def _chunk_logprobs(choice: Choice, step: int) -> dict[str, Any] | None:
    """The logprobs of a content chunk: its one token's entry (none for tool-call parts)."""
    if choice.logprobs is None:
        return None
    if choice.tool_call is not None or step >= len(choice.logprobs):
        return chat_logprobs([])
    return chat_logprobs(choice.logprobs[step : step + 1])


def text_steps(meta: Meta, choices: Sequence[Choice]) -> Iterator[list[Event]]:
    """Legacy completion chunks by token step: one piece per token, then the finish chunk."""
    offsets = [list(accumulate((len(p) for p in choice.pieces), initial=0)) for choice in choices]
    for step in range(max(1, max((len(choice.pieces) for choice in choices), default=0))):
        events: list[Event] = []
        for choice, starts in zip(choices, offsets, strict=True):
            if step < len(choice.pieces):
                logprobs = None
                if choice.logprobs is not None:
                    entry = choice.logprobs[step : step + 1]
                    logprobs = completion_logprobs(entry, starts[step])
                chunk = text_chunk(meta, choice.index, choice.pieces[step], logprobs=logprobs)
                events.append(Event(chunk, content=True))
            if step == max(0, len(choice.pieces) - 1):
                events.append(Event(text_chunk(meta, choice.index, "", choice.finish_reason)))
        yield events


def _fault_error(fault: SimFault) -> dict[str, Any]:
    status = fault.status or 500
    return {
        "error": {"message": fault.message, "type": "server_error", "param": None, "code": status}
    }


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """Everything a stream needs besides the request."""

    admission: Admission
    steps: Iterator[list[Event]]
    usage: dict[str, Any] | None  # the trailing usage chunk, when asked for
    fault: SimFault | None


async def _inject(
    request: web.Request, response: web.StreamResponse, fault: SimFault, sent: int
) -> bool:
    """Fire the fault due after `sent` content chunks, if any; True when the stream is over."""
    if sent == fault.disconnect_after_chunks:
        # Abrupt end: close the connection with the chunked body never terminated.
        if request.transport is not None:
            request.transport.close()
        return True
    if sent == fault.error_after_chunks:
        # An error event and no [DONE], as vLLM does when generation fails mid-stream.
        await response.write(encode(_fault_error(fault)))
        await response.write_eof()
        return True
    return False


async def stream(
    request: web.Request, engine: SimEngine, plan: StreamPlan, tracked: Tracked
) -> web.StreamResponse:
    """Send the planned chunks as SSE; a client that goes away ends the stream."""
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    sent = 0
    try:
        if plan.fault and await _inject(request, response, plan.fault, sent):
            tracked.outcome = Outcome.FAILED
            return response
        for step, events in enumerate(plan.steps):
            await sleep_until(engine.token_time(plan.admission, step))
            for event in events:
                await response.write(encode(event.payload))
                if not event.content:
                    continue
                sent += 1
                if plan.fault and await _inject(request, response, plan.fault, sent):
                    tracked.outcome = Outcome.FAILED
                    return response
        if plan.usage is not None:
            await response.write(encode(plan.usage))
        await response.write(DONE)
        await response.write_eof()
    except ConnectionResetError:
        # The client went away mid-stream: stop generating. aiohttp's
        # ClientConnectionResetError is one of these, so it lands here too.
        tracked.outcome = Outcome.CANCELLED
    return response
