"""Stored chat completions (``store: true``): list, retrieve, update metadata, delete, messages."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web

from router.context import RequestContext
from router.errors import InvalidRequest, NotFound
from router.handlers.common import context, read_json, write_or_gone
from router.handlers.listing import guarded, list_response, newest_first, page_limit
from router.keys import OBJECTS
from router.objects import ObjectStore
from router.store import StoreUnavailable
from router.tenants import owner

log = logging.getLogger(__name__)

KIND = "chat"


async def save(
    objects: ObjectStore, ctx: RequestContext, body: dict[str, Any], completion: dict[str, Any]
) -> None:
    """Store a finished completion with its request, for its tenant.

    A store fault costs only the copy, never the answer, and is never silent: ``ctx.stored``
    becomes ``failed`` (the ``X-DI-Store`` header) and a warning is logged.
    """
    completion_id = completion.get("id")
    if not isinstance(completion_id, str):
        return
    doc = {
        "completion": {**completion, "metadata": body.get("metadata") or {}},
        "messages": body.get("messages") or [],
    }
    await put_or_warn(objects, ctx, KIND, completion_id, doc)


async def put_or_warn(
    objects: ObjectStore, ctx: RequestContext, kind: str, object_id: str, doc: dict[str, Any]
) -> None:
    """Store an object made by this request; record the outcome in ``ctx.stored``."""
    try:
        await objects.put(owner(ctx), kind, object_id, doc)
    except (StoreUnavailable, orjson.JSONEncodeError) as exc:
        ctx.stored = "failed"
        log.warning("request %s: %s %s not stored (%s)", ctx.request_id, kind, object_id, exc)
        return
    ctx.stored = "stored"


async def tell_stream(reply: web.StreamResponse, ctx: RequestContext) -> None:
    """After a stream, headers are gone: a failed store is said in an SSE comment line, which
    SDKs skip (the warning is logged too)."""
    if ctx.stored == "failed" and not ctx.client_gone:
        await write_or_gone(reply, b": x-di-store: failed\n\n", ctx)


class StreamAssembler:
    """Rebuilds a ``chat.completion`` from its SSE chunks, to store a streamed answer."""

    def __init__(self) -> None:
        self.head: dict[str, Any] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None

    def feed(self, event: bytes) -> None:
        if not event.startswith(b"data:"):
            return
        try:
            chunk = orjson.loads(event[5:])
        except orjson.JSONDecodeError:
            return
        if not isinstance(chunk, dict) or "error" in chunk:
            return
        if not self.head:
            self.head = {k: chunk.get(k) for k in ("id", "created", "model")}
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if isinstance(choice, dict):
                self._merge(choice)

    def _merge(self, choice: dict[str, Any]) -> None:
        index = choice.get("index", 0)
        state = self.choices.setdefault(
            index, {"index": index, "content": "", "tool_calls": {}, "finish_reason": None}
        )
        delta = choice.get("delta") or {}
        state["content"] += delta.get("content") or ""
        for call in delta.get("tool_calls") or ():
            held = state["tool_calls"].setdefault(
                call.get("index", 0),
                {
                    "id": call.get("id"),
                    "type": "function",
                    "function": {"name": "", "arguments": ""},
                },
            )
            function = call.get("function") or {}
            held["function"]["name"] += function.get("name") or ""
            held["function"]["arguments"] += function.get("arguments") or ""
        if choice.get("finish_reason"):
            state["finish_reason"] = choice["finish_reason"]

    def completion(self) -> dict[str, Any]:
        choices = []
        for index in sorted(self.choices):
            state = self.choices[index]
            message: dict[str, Any] = {"role": "assistant", "content": state["content"] or None}
            if state["tool_calls"]:
                message["tool_calls"] = [
                    state["tool_calls"][i] for i in sorted(state["tool_calls"])
                ]
            choices.append(
                {"index": index, "message": message, "finish_reason": state["finish_reason"]}
            )
        return {**self.head, "object": "chat.completion", "choices": choices, "usage": self.usage}


async def list_completions(request: web.Request) -> web.Response:
    query = request.query
    model = query.get("model")
    metadata = {
        key[len("metadata[") : -1]: value
        for key, value in query.items()
        if key.startswith("metadata[") and key.endswith("]")
    }

    def keep(doc: dict[str, Any]) -> bool:
        completion = doc["completion"]
        if model is not None and completion.get("model") != model:
            return False
        held = completion.get("metadata") or {}
        return all(held.get(k) == v for k, v in metadata.items())

    page = await guarded(
        request.app[OBJECTS].page(
            owner(context(request)),
            KIND,
            after=query.get("after"),
            limit=page_limit(query.get("limit")),
            newest_first=newest_first(query.get("order")),
            keep=keep,
        )
    )
    return list_response([doc["completion"] for doc in page.items], page.has_more)


async def retrieve_completion(request: web.Request) -> web.Response:
    doc = await _load(request)
    return web.json_response(doc["completion"], dumps=_dumps)


async def update_completion(request: web.Request) -> web.Response:
    doc = await _load(request)
    body, _ = await read_json(request)
    metadata = body.get("metadata")
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InvalidRequest("'metadata' must be an object of string values.", param="metadata")
    doc["completion"]["metadata"] = metadata
    completion = doc["completion"]
    await guarded(request.app[OBJECTS].put(owner(context(request)), KIND, completion["id"], doc))
    return web.json_response(completion, dumps=_dumps)


async def delete_completion(request: web.Request) -> web.Response:
    await _load(request)
    completion_id = request.match_info["completion_id"]
    await guarded(request.app[OBJECTS].delete(owner(context(request)), KIND, completion_id))
    return web.json_response(
        {"object": "chat.completion.deleted", "id": completion_id, "deleted": True}
    )


async def list_messages(request: web.Request) -> web.Response:
    doc = await _load(request)
    completion_id = request.match_info["completion_id"]
    messages = [
        {**m, "id": f"{completion_id}-{i}", "content": _text(m.get("content"))}
        for i, m in enumerate(doc["messages"])
        if isinstance(m, dict)
    ]
    if newest_first(request.query.get("order")):
        messages.reverse()
    after = request.query.get("after")
    if after is not None:
        ids = [m["id"] for m in messages]
        messages = messages[ids.index(after) + 1 :] if after in ids else []
    limit = page_limit(request.query.get("limit"))
    return list_response(messages[:limit], len(messages) > limit)


def _text(content: Any) -> Any:
    # Stored messages report text content as a string, as OpenAI's store does.
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content


async def _load(request: web.Request) -> dict[str, Any]:
    completion_id = request.match_info["completion_id"]
    # Another tenant's object is "not found", exactly like one that never existed.
    doc = await guarded(request.app[OBJECTS].get(owner(context(request)), KIND, completion_id))
    if doc is None:
        raise NotFound(
            f"No stored chat completion found with id {completion_id!r}.", param="completion_id"
        )
    return doc


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()
