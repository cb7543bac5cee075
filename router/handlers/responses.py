"""The Responses API: ``/v1/responses`` and its stored objects, on top of any chat backend.

A request is translated to Chat Completions first, always: that chat body is what classification
and prefix keys read, so both APIs route and cache alike. A ``chat`` backend then gets the chat
body and its answer is translated back (JSON, or typed SSE events); a ``responses`` backend gets
the client's body as it came.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import Any

import orjson
from aiohttp import web

from router import effort
from router.context import RequestContext
from router.dispatch import Plan
from router.errors import InvalidRequest, NotFound
from router.handlers.common import (
    context,
    read_json,
    relay_json,
    relay_sse,
    responses_stream_end,
)
from router.handlers.listing import guarded, list_response, newest_first, page_limit
from router.handlers.stored_chat import put_or_warn, tell_stream
from router.handlers.translated import relay_translated, translate_answer
from router.keys import DISPATCHER, OBJECTS
from router.objects import ObjectStore
from router.responses import (
    ChatToResponseEvents,
    ResponsesInputError,
    chat_to_response,
    count_input_tokens,
    input_items,
    request_to_chat,
    response_to_history,
)
from router.rewrite import RESPONSES, Outgoing
from router.tenants import owner
from router.validate import check_cache_markers, check_model

KIND = "response"


async def create_response(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    body, raw = await read_json(request)
    check_model(body)
    if "input" not in body:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input")
    ctx.effort = effort.resolve(request.headers, request.query, body)
    objects = request.app[OBJECTS]
    history = await _history(objects, ctx, body.get("previous_response_id"))
    chat = _to_chat(body, history)
    plan = _plan(request, chat, ctx)
    if plan.backend.api == "responses":
        return await _via_responses_backend(request, ctx, body, raw, chat, plan)
    return await _via_chat_backend(request, ctx, body, chat, plan)


async def _via_responses_backend(
    request: web.Request,
    ctx: RequestContext,
    body: dict[str, Any],
    raw: bytes,
    chat: dict[str, Any],
    plan: Plan,
) -> web.StreamResponse:
    """The backend speaks the Responses API itself: pass the body through, keep a copy."""
    objects = request.app[OBJECTS]
    outgoing = Outgoing(body, raw, RESPONSES)
    final = FinalResponse()
    data = b""
    async with request.app[DISPATCHER].dispatch(ctx, plan, "/responses", outgoing) as routed:
        if body.get("stream"):
            reply = await relay_sse(
                request, routed, ctx, body["model"], final.feed, ends=responses_stream_end
            )
        else:
            reply, data = await relay_json(routed, ctx, body["model"])
    # Stored once the upstream connection is released; a stream the client cut off is not.
    if final.response is not None and not ctx.client_gone:
        await _save(objects, ctx, body, chat, final.response)
        await tell_stream(reply, ctx)
    elif data:
        with contextlib.suppress(orjson.JSONDecodeError):
            await _save(objects, ctx, body, chat, orjson.loads(data))
    return reply


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
    async with dispatcher.dispatch(ctx, plan, "/chat/completions", Outgoing(chat)) as routed:
        if body.get("stream"):
            events = ChatToResponseEvents(
                request=body, response_id=response_id, created_at=created_at
            )
            reply = await relay_translated(request, routed, ctx, events)
        else:
            result = await translate_answer(
                routed,
                ctx,
                lambda answer: chat_to_response(
                    answer, request=body, response_id=response_id, created_at=created_at
                ),
            )
    if body.get("stream"):
        # After the upstream connection is released; a stream the client cut off is not stored.
        if not ctx.client_gone:
            await _save(objects, ctx, body, chat, events.response)
            await tell_stream(reply, ctx)
        return reply
    await _save(objects, ctx, body, chat, result)
    ctx.first_byte()
    return web.json_response(result, dumps=_dumps)


async def retrieve_response(request: web.Request) -> web.Response:
    doc = await _load(request)
    return web.json_response(doc["response"], dumps=_dumps)


async def delete_response(request: web.Request) -> web.Response:
    await _load(request)
    response_id = request.match_info["response_id"]
    await guarded(request.app[OBJECTS].delete(owner(context(request)), KIND, response_id))
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


def _plan(request: web.Request, chat: dict[str, Any], ctx: RequestContext) -> Plan:
    """The translated request's plan. Each marker was checked on the input already; what is
    left to fail (too many breakpoints, a 1h one after a 5m one) is named in the chat body,
    whose messages are not the input's items (instructions and history come first, function
    calls join one message): such an error names no param rather than a wrong one."""
    try:
        check_cache_markers(chat)
        return request.app[DISPATCHER].plan(chat, ctx)
    except InvalidRequest as exc:
        if exc.param is None or not exc.param.startswith("messages["):
            raise
        raise InvalidRequest(exc.message, code=exc.code) from None


def _to_chat(body: dict[str, Any], history: list[dict[str, Any]] | None) -> dict[str, Any]:
    try:
        return request_to_chat(body, history)
    except ResponsesInputError as exc:
        raise InvalidRequest(exc.message, param=exc.param) from None


async def _history(
    objects: ObjectStore, ctx: RequestContext, previous: Any
) -> list[dict[str, Any]] | None:
    if previous is None:
        return None
    if not isinstance(previous, str):
        raise InvalidRequest(
            "'previous_response_id' must be a string.", param="previous_response_id"
        )
    # Only the tenant's own responses can be continued; another's is "not found".
    doc = await guarded(objects.get(owner(ctx), KIND, previous))
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
    await put_or_warn(objects, ctx, KIND, response["id"], doc)


async def _load(request: web.Request) -> dict[str, Any]:
    response_id = request.match_info["response_id"]
    doc = await guarded(request.app[OBJECTS].get(owner(context(request)), KIND, response_id))
    if doc is None:
        raise NotFound(f"Response with id {response_id!r} not found.", param="response_id")
    return doc


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()
