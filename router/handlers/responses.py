"""The Responses API: ``/v1/responses`` and its stored objects, on top of any chat backend.

A request is translated to Chat Completions first, always: that chat body is what classification
and prefix keys read, so both APIs route and cache alike. A ``chat`` backend then gets the chat
body and its answer is translated back (JSON, or typed SSE events); a ``responses`` backend gets
the client's body as it came.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from router.context import RequestContext
from router.dispatch import Plan, Routed
from router.errors import InvalidRequest, NotFound, UpstreamError
from router.handlers.common import (
    context,
    open_stream,
    read_json,
    relay_json,
    relay_sse,
    responses_stream_end,
    where,
    write_or_gone,
)
from router.handlers.listing import guarded, list_response, newest_first, page_limit
from router.keys import DISPATCHER, OBJECTS
from router.objects import ObjectStore
from router.prefix import strip_cache_control
from router.responses import (
    ChatToResponseEvents,
    ResponsesInputError,
    chat_to_response,
    count_input_tokens,
    input_items,
    request_to_chat,
    response_to_history,
)
from router.store import StoreUnavailable
from router.upstream import iter_sse_events, read_body
from router.usage import usage_from_dict
from router.validate import check_model

log = logging.getLogger(__name__)

KIND = "response"


async def create_response(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    body, _raw = await read_json(request)
    check_model(body)
    if "input" not in body:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input")
    objects = request.app[OBJECTS]
    history = await _history(objects, body.get("previous_response_id"))
    chat = _to_chat(body, history)
    plan = request.app[DISPATCHER].plan(chat, ctx)
    if plan.backend.api == "responses":
        return await _via_responses_backend(request, ctx, body, chat, plan)
    return await _via_chat_backend(request, ctx, body, chat, plan)


async def _via_responses_backend(
    request: web.Request,
    ctx: RequestContext,
    body: dict[str, Any],
    chat: dict[str, Any],
    plan: Plan,
) -> web.StreamResponse:
    """The backend speaks the Responses API itself: pass the body through, keep a copy."""
    objects = request.app[OBJECTS]
    payload = _passthrough_payload(body, plan)
    async with request.app[DISPATCHER].dispatch(ctx, plan, "/responses", payload) as routed:
        if body.get("stream"):
            final = FinalResponse()
            reply = await relay_sse(
                request, routed, ctx, body["model"], final.feed, ends=responses_stream_end
            )
            if final.response is not None:
                await _save(objects, ctx, body, chat, final.response)
            return reply
        answer, data = await relay_json(routed, ctx, body["model"])
    with contextlib.suppress(orjson.JSONDecodeError):
        await _save(objects, ctx, body, chat, orjson.loads(data))
    return answer


async def _via_chat_backend(
    request: web.Request,
    ctx: RequestContext,
    body: dict[str, Any],
    chat: dict[str, Any],
    plan: Plan,
) -> web.StreamResponse:
    """The backend speaks Chat Completions: send the translation, translate the answer back."""
    objects = request.app[OBJECTS]
    dispatcher = request.app[DISPATCHER]
    response_id = f"resp_{uuid.uuid4().hex}"
    created_at = int(time.time())
    payload = dispatcher.payload(chat, None, plan)
    async with dispatcher.dispatch(ctx, plan, "/chat/completions", payload) as routed:
        if body.get("stream"):
            events = ChatToResponseEvents(
                request=body, response_id=response_id, created_at=created_at
            )
            reply = await _stream_events(request, routed, ctx, events)
            ctx.usage = usage_from_dict(events.response.get("usage"))
            await _save(objects, ctx, body, chat, events.response)
            return reply
        data = await read_body(routed.response, where(routed), routed.body_limit)
        try:
            result = chat_to_response(
                orjson.loads(data), request=body, response_id=response_id, created_at=created_at
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            raise UpstreamError(
                f"The {where(routed)} answered with something that is not a chat completion."
            ) from None
    ctx.usage = usage_from_dict(result.get("usage"))
    await _save(objects, ctx, body, chat, result)
    ctx.first_byte()
    return web.json_response(result, headers=ctx.headers, dumps=_dumps)


async def retrieve_response(request: web.Request) -> web.Response:
    doc = await _load(request)
    return web.json_response(doc["response"], dumps=_dumps)


async def delete_response(request: web.Request) -> web.Response:
    await _load(request)
    response_id = request.match_info["response_id"]
    await guarded(request.app[OBJECTS].delete(KIND, response_id))
    return web.json_response({"id": response_id, "object": "response", "deleted": True})


async def cancel_response(request: web.Request) -> web.Response:
    await _load(request)
    raise InvalidRequest("Only background responses can be cancelled; this one has finished.")


async def list_input_items(request: web.Request) -> web.Response:
    doc = await _load(request)
    items: list[dict[str, Any]] = list(doc["input_items"])
    # OpenAI lists input items newest first unless asked otherwise.
    if newest_first(request.query.get("order", "desc")):
        items.reverse()
    after = request.query.get("after")
    if after is not None:
        ids = [item.get("id") for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    limit = page_limit(request.query.get("limit"))
    return list_response(items[:limit], len(items) > limit)


async def count_tokens(request: web.Request) -> web.Response:
    body, _ = await read_json(request)
    if "input" not in body:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input")
    try:
        tokens = count_input_tokens(body)
    except ResponsesInputError as exc:
        raise InvalidRequest(exc.message, param=exc.param) from None
    return web.json_response({"object": "response.input_tokens", "input_tokens": tokens})


def _to_chat(body: dict[str, Any], history: list[dict[str, Any]] | None) -> dict[str, Any]:
    try:
        return request_to_chat(body, history)
    except ResponsesInputError as exc:
        raise InvalidRequest(exc.message, param=exc.param) from None


async def _history(objects: ObjectStore, previous: Any) -> list[dict[str, Any]] | None:
    if previous is None:
        return None
    if not isinstance(previous, str):
        raise InvalidRequest(
            "'previous_response_id' must be a string.", param="previous_response_id"
        )
    doc = await guarded(objects.get(KIND, previous))
    if doc is None:
        raise NotFound(
            f"Previous response with id {previous!r} not found.", param="previous_response_id"
        )
    history: list[dict[str, Any]] = doc["history"]
    return history


class FinalResponse:
    """Keeps the Response object of a passed-through stream's terminal event, for storage."""

    def __init__(self) -> None:
        self.response: dict[str, Any] | None = None

    def feed(self, event: bytes) -> None:
        if not responses_stream_end(event):
            return
        data = event.rpartition(b"data:")[2]
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if isinstance(parsed, dict) and isinstance(parsed.get("response"), dict):
            self.response = parsed["response"]


def _passthrough_payload(body: dict[str, Any], plan: Plan) -> bytes:
    """The client's Responses body for a ``responses`` backend, changed as a chat body would be."""
    backend = plan.backend
    out = body
    if backend.model:
        out = {**out, "model": backend.model}
    if plan.marked and not backend.forward_cache_control:
        # Input items have the shape of chat messages: markers sit where they would in chat.
        items = out.get("input")
        out = strip_cache_control({**out, "messages": items if isinstance(items, list) else []})
        if isinstance(items, list):
            out["input"] = out["messages"]
        del out["messages"]
    if backend.prompt_cache_key and plan.prompt_cache_key and "prompt_cache_key" not in body:
        out = {**out, "prompt_cache_key": plan.prompt_cache_key}
    return orjson.dumps(out)


async def _stream_events(
    request: web.Request, routed: Routed, ctx: RequestContext, events: ChatToResponseEvents
) -> web.StreamResponse:
    """Relay a chat stream as typed Responses events; failures end in ``response.failed``."""
    reply = await open_stream(request, ctx)
    if not await write_or_gone(reply, b"".join(events.start()), ctx):
        return reply
    try:
        closing = await _relay_events(reply, routed, ctx, events)
    except (aiohttp.ClientError, TimeoutError, ValueError, TypeError, AttributeError) as exc:
        # A broken transport, or chunks that are not the chat stream they claim to be.
        routed.broken = True
        message = f"The {where(routed)} broke off the stream ({type(exc).__name__})."
        log.warning("request %s: %s", ctx.request_id, message)
        closing = events.fail(message)
    if closing:
        await write_or_gone(reply, b"".join(closing), ctx)
    return reply


async def _relay_events(
    reply: web.StreamResponse, routed: Routed, ctx: RequestContext, events: ChatToResponseEvents
) -> list[bytes]:
    """Translate chunks as they come; returns the closing frames still to write."""
    closing: list[bytes] | None = None
    async for batch in iter_sse_events(routed.response):
        if closing is not None:
            continue  # read to the end, so the upstream connection can be reused
        frames: list[bytes] = []
        for event in batch:
            data = event[5:].strip() if event.startswith(b"data:") else None
            if data is None:
                continue
            if data == b"[DONE]":
                closing = events.finish()
                break
            chunk = orjson.loads(data)
            if "error" in chunk:
                error = chunk["error"] if isinstance(chunk["error"], dict) else {}
                closing = events.fail(str(error.get("message", "upstream error")))
                break
            frames += events.feed(chunk)
        if closing is not None:
            frames, closing = frames + closing, []
        if frames and not await write_or_gone(reply, b"".join(frames), ctx):
            return []
    if closing is None:
        return events.fail(f"The {where(routed)} ended the stream early.")
    return closing


async def _save(
    objects: ObjectStore,
    ctx: RequestContext,
    body: dict[str, Any],
    chat: dict[str, Any],
    response: dict[str, Any],
) -> None:
    if body.get("store") is False or not isinstance(response.get("id"), str):
        return
    doc = {
        "response": response,
        "input_items": input_items(body),
        "history": response_to_history(chat.get("messages") or [], response),
    }
    try:
        await objects.put(KIND, response["id"], doc)
    except StoreUnavailable:
        log.warning(
            "request %s: response %s not stored (store down)", ctx.request_id, response["id"]
        )


async def _load(request: web.Request) -> dict[str, Any]:
    response_id = request.match_info["response_id"]
    doc = await guarded(request.app[OBJECTS].get(KIND, response_id))
    if doc is None:
        raise NotFound(f"Response with id {response_id!r} not found.", param="response_id")
    return doc


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()
