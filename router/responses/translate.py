"""Pure translation between the OpenAI Responses API and Chat Completions.

The backends only speak Chat Completions, so `POST /v1/responses` is served by turning the
request into a chat body (`request_to_chat`) and the chat completion back into a Response
(`chat_to_response`; `stream.ChatToResponseEvents` for streams). Nothing here does I/O: the
handler loads and stores conversation state and passes it in.

Request input is checked once (`_checked_input`) and then rendered twice: as chat messages and
as the Responses input-item listing. A bad request raises `ResponsesInputError`, naming the
offending parameter the way OpenAI does (`input[2].content[0].type`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection
from typing import Any, TypeGuard

import orjson

from router.prefix import marker_fault
from router.responses import objects


class ResponsesInputError(ValueError):
    """A Responses request the router cannot translate; the handler answers 400 naming `param`."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


# Chat templates of open-weight models know `system` but often not `developer`, OpenAI's newer
# name for the same role.
_CHAT_ROLES = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}
_TEXT_PARTS = frozenset({"input_text", "output_text"})
_INPUT_PARTS = _TEXT_PARTS | {"input_image", "input_file"}
# An input_file names its bytes one of these ways; chat `file` parts take the same keys.
_FILE_KEYS = ("file_data", "file_id", "file_url", "filename")
_ASSISTANT_PARTS = _TEXT_PARTS | {"refusal"}
_TOOL_CHOICES = frozenset({"auto", "none", "required"})
# Responses' `original` image detail has no chat equivalent; `high` is the closest.
_CHAT_DETAIL = {"auto": "auto", "low": "low", "high": "high", "original": "high"}
_ID_PREFIXES = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}

# Fields copied to the chat body unchanged, with the JSON types each accepts.
_PASSTHROUGH: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "temperature": (int, float),
    "top_p": (int, float),
    "user": (str,),
    "seed": (int,),
    "stop": (str, list),
    "top_logprobs": (int,),
    "parallel_tool_calls": (bool,),
}

_WORD = re.compile(r"\w+|[^\w\s]")
_IMAGE_TOKENS = 85


# --- checking ---------------------------------------------------------------------------


def _string(obj: dict[str, Any], key: str, param: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise ResponsesInputError(f"'{key}' must be a string", f"{param}.{key}")
    return value


def _typed(value: Any, types: tuple[type, ...]) -> bool:
    # JSON true/false are Python ints: only accept them where a bool is asked for.
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types)


def _one_of(value: Any, options: Collection[str]) -> TypeGuard[str]:
    # Checks the type first: an unhashable JSON value (list, object) must not reach `in`.
    return isinstance(value, str) and value in options


def _item_type(item: dict[str, Any]) -> str:
    # Easy input messages (`{"role", "content"}`) carry no type.
    kind = item.get("type") or "message"
    return str(kind)


def _check_marker(obj: dict[str, Any], param: str) -> None:
    """A ``cache_control`` on ``obj`` must be a valid breakpoint: checked here, so that a bad
    one is named by its place in the input, not in the chat body it is translated to."""
    marker = obj.get("cache_control")
    if marker is not None and (fault := marker_fault(marker)) is not None:
        message, field = fault
        where = f"{param}.cache_control"
        raise ResponsesInputError(message, where if field is None else f"{where}.{field}")


def _check_part(part: Any, param: str, allowed: frozenset[str]) -> None:
    if not isinstance(part, dict):
        raise ResponsesInputError("content parts must be objects", param)
    _check_marker(part, param)
    kind = part.get("type")
    if not _one_of(kind, allowed):
        raise ResponsesInputError(f"unsupported content part type {kind!r}", f"{param}.type")
    if kind in _TEXT_PARTS:
        _string(part, "text", param)
    elif kind == "refusal":
        _string(part, "refusal", param)
    elif kind == "input_file":
        _check_file(part, param)
    else:
        _check_image(part, param)


def _check_file(part: dict[str, Any], param: str) -> None:
    if not any(isinstance(part.get(key), str) for key in ("file_data", "file_id", "file_url")):
        raise ResponsesInputError(
            "input_file needs a 'file_data', 'file_id' or 'file_url' string", f"{param}.file_data"
        )
    for key in _FILE_KEYS:
        if part.get(key) is not None and not isinstance(part[key], str):
            raise ResponsesInputError(f"'{key}' must be a string", f"{param}.{key}")


def _check_image(part: dict[str, Any], param: str) -> None:
    if part.get("image_url") is None and part.get("file_id") is not None:
        # Chat backends fetch images by URL; the router has no file store to resolve ids.
        raise ResponsesInputError(
            "input_image.file_id is not supported; send image_url (an https or data: URL)",
            f"{param}.file_id",
        )
    _string(part, "image_url", param)
    if part.get("detail") is not None and not _one_of(part["detail"], _CHAT_DETAIL):
        raise ResponsesInputError(f"unsupported image detail {part['detail']!r}", f"{param}.detail")


def _check_parts(content: Any, param: str, allowed: frozenset[str]) -> None:
    if isinstance(content, list):
        for j, part in enumerate(content):
            _check_part(part, f"{param}[{j}]", allowed)
    elif not isinstance(content, str):
        raise ResponsesInputError("must be a string or an array of content parts", param)


def _check_item(item: Any, param: str) -> None:
    if not isinstance(item, dict):
        raise ResponsesInputError("input items must be objects", param)
    _check_marker(item, param)
    kind = _item_type(item)
    if kind == "message":
        role = item.get("role")
        if not _one_of(role, _CHAT_ROLES):
            raise ResponsesInputError(f"unsupported role {role!r}", f"{param}.role")
        allowed = _ASSISTANT_PARTS if role == "assistant" else _INPUT_PARTS
        _check_parts(item.get("content"), f"{param}.content", allowed)
    elif kind == "function_call":
        for key in ("call_id", "name", "arguments"):
            _string(item, key, param)
    elif kind == "function_call_output":
        _string(item, "call_id", param)
        _check_parts(item.get("output"), f"{param}.output", _INPUT_PARTS)
    elif kind != "reasoning":
        raise ResponsesInputError(f"unsupported input item type {kind!r}", f"{param}.type")


def _checked_input(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's input as a list of valid items; reasoning items are dropped.

    Chat backends cannot take reasoning back as input, and their own reasoning is not stored.
    """
    raw = body.get("input")
    if raw is None:
        raise ResponsesInputError("missing required parameter: 'input'", "input")
    if isinstance(raw, str):
        return [{"type": "message", "role": "user", "content": raw}]
    if not isinstance(raw, list):
        raise ResponsesInputError("'input' must be a string or an array of input items", "input")
    for i, item in enumerate(raw):
        _check_item(item, f"input[{i}]")
    return [item for item in raw if _item_type(item) != "reasoning"]


def _instructions(body: dict[str, Any]) -> str | None:
    value = body.get("instructions")
    if value is not None and not isinstance(value, str):
        raise ResponsesInputError("'instructions' must be a string", "instructions")
    return value or None


# --- request -> chat -------------------------------------------------------------------


def _with_cache_control(source: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    # The prompt-caching layer (router.prefix) reads `cache_control` markers from the chat body:
    # on the body, tools, messages and content parts.
    if "cache_control" in source:
        target["cache_control"] = source["cache_control"]
    return target


def _chat_part(part: dict[str, Any]) -> dict[str, Any]:
    kind = part["type"]
    if kind in _TEXT_PARTS:
        out: dict[str, Any] = {"type": "text", "text": part["text"]}
    elif kind == "refusal":
        out = {"type": "refusal", "refusal": part["refusal"]}
    elif kind == "input_file":
        file = {key: part[key] for key in _FILE_KEYS if part.get(key) is not None}
        out = {"type": "file", "file": file}
    else:
        detail = _CHAT_DETAIL[part.get("detail") or "auto"]
        out = {"type": "image_url", "image_url": {"url": part["image_url"], "detail": detail}}
    return _with_cache_control(part, out)


def _chat_content(content: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    return content if isinstance(content, str) else [_chat_part(part) for part in content]


def _chat_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for item in items:
        kind = _item_type(item)
        if kind == "message":
            message = {"role": _CHAT_ROLES[item["role"]], "content": _chat_content(item["content"])}
            messages.append(_with_cache_control(item, message))
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            # Chat carries a turn's text and all its tool calls in one assistant message, and
            # some chat templates reject two assistant messages in a row.
            if messages and messages[-1]["role"] == "assistant":
                messages[-1].setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            _with_cache_control(item, messages[-1])
        else:
            message = {
                "role": "tool",
                "tool_call_id": item["call_id"],
                "content": _chat_content(item["output"]),
            }
            messages.append(_with_cache_control(item, message))
    return messages


def _chat_tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise ResponsesInputError("'tools' must be an array", "tools")
    chat_tools = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise ResponsesInputError("tools must be objects", f"tools[{i}]")
        if tool.get("type") != "function":
            raise ResponsesInputError(
                f"tool type {tool.get('type')!r} is not supported; only function tools are",
                f"tools[{i}].type",
            )
        function = {"name": _string(tool, "name", f"tools[{i}]")}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                function[key] = tool[key]
        chat_tools.append(_with_cache_control(tool, {"type": "function", "function": function}))
    return chat_tools


def _chat_tool_choice(choice: Any) -> str | dict[str, Any]:
    if _one_of(choice, _TOOL_CHOICES):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": _string(choice, "name", "tool_choice")}}
    raise ResponsesInputError(
        "'tool_choice' must be auto, none, required or a function choice", "tool_choice"
    )


def _chat_response_format(text: Any) -> dict[str, Any] | None:
    if text is None:
        return None
    if not isinstance(text, dict):
        raise ResponsesInputError("'text' must be an object", "text")
    fmt = text.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise ResponsesInputError("'text.format' must be an object", "text.format")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind != "json_schema":
        raise ResponsesInputError(f"unsupported text format {kind!r}", "text.format.type")
    if not isinstance(fmt.get("schema"), dict):
        raise ResponsesInputError("'schema' must be an object", "text.format.schema")
    schema = {"name": _string(fmt, "name", "text.format"), "schema": fmt["schema"]}
    for key in ("description", "strict"):
        if fmt.get(key) is not None:
            schema[key] = fmt[key]
    return {"type": "json_schema", "json_schema": schema}


def _chat_options(body: dict[str, Any], chat: dict[str, Any]) -> None:
    """Copy the sampling and tool settings onto `chat`."""
    for key, types in _PASSTHROUGH.items():
        if body.get(key) is None:
            continue
        if not _typed(body[key], types):
            raise ResponsesInputError(f"invalid type for '{key}'", key)
        chat[key] = body[key]
    if "top_logprobs" in chat:
        chat["logprobs"] = True  # chat rejects top_logprobs without it
    limit = body.get("max_output_tokens")
    if limit is not None:
        if not _typed(limit, (int,)):
            raise ResponsesInputError("'max_output_tokens' must be an integer", "max_output_tokens")
        chat["max_completion_tokens"] = limit
    if body.get("tools") is not None:
        chat["tools"] = _chat_tools(body["tools"])
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _chat_tool_choice(body["tool_choice"])
    response_format = _chat_response_format(body.get("text"))
    if response_format is not None:
        chat["response_format"] = response_format


def request_to_chat(
    body: dict[str, Any], history: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The Chat Completions body for a Responses request.

    `history` is the stored chat conversation of `previous_response_id`; it goes after the
    instructions, which are the new request's own (OpenAI does not carry them over). Fields the
    router does not implement (metadata, store, include, reasoning, truncation, ...) are not
    forwarded.
    """
    if not isinstance(body, dict):
        raise ResponsesInputError("the request body must be a JSON object", None)
    messages: list[dict[str, Any]] = []
    instructions = _instructions(body)
    if instructions is not None:
        messages.append({"role": "system", "content": instructions})
    messages.extend(history or [])
    messages.extend(_chat_messages(_checked_input(body)))
    if not messages:
        raise ResponsesInputError("'input' must contain at least one item", "input")
    # A top-level marker asks for automatic caching of the whole prompt.
    chat = _with_cache_control(body, {"messages": messages})
    _chat_options(body, chat)
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise ResponsesInputError("'stream' must be a boolean", "stream")
    chat["stream"] = stream
    if stream:
        chat["stream_options"] = {"include_usage": True}
    return chat


# --- chat -> response ------------------------------------------------------------------


def _content_text(content: Any) -> str:
    # Some backends answer with a list of text parts instead of a string.
    if isinstance(content, list):
        return "".join(p.get("text") or "" for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def chat_to_response(
    chat: dict[str, Any], *, request: dict[str, Any], response_id: str, created_at: int
) -> dict[str, Any]:
    """The Response object for a `chat.completion` (choice 0) answering `request`."""
    choices = chat.get("choices") or [{}]
    message = choices[0].get("message") or {}
    incomplete = objects.incomplete_details(choices[0].get("finish_reason"))
    status = "completed" if incomplete is None else "incomplete"
    output: list[dict[str, Any]] = []
    content = []
    if text := _content_text(message.get("content")):
        content.append(objects.text_part(text))
    if refusal := message.get("refusal"):
        content.append(objects.refusal_part(refusal))
    if content:
        output.append(objects.message_item(objects.item_id("msg", response_id, 0), content, status))
    for index, call in enumerate(message.get("tool_calls") or []):
        function = call.get("function") or {}
        output.append(
            objects.function_call_item(
                objects.item_id("fc", response_id, len(output)),
                call_id=call.get("id") or objects.item_id("call", response_id, index),
                name=function.get("name") or "",
                arguments=function.get("arguments") or "",
                status=status,
            )
        )
    return objects.build_response(
        request,
        response_id=response_id,
        created_at=created_at,
        status=status,
        output=output,
        usage=objects.usage_from_chat(chat.get("usage")),
        incomplete=incomplete,
    )


def response_to_history(
    request_chat_messages: list[dict[str, Any]], response: dict[str, Any]
) -> list[dict[str, Any]]:
    """The chat conversation to store for `previous_response_id` continuations.

    That is the request's messages without the system message `request_to_chat` made from
    `instructions` (those do not carry over), then the response's output as one assistant
    message, as chat puts a turn's text and tool calls together.
    """
    messages = list(request_chat_messages)
    instructions = response.get("instructions")
    if instructions and messages and messages[0] == {"role": "system", "content": instructions}:
        messages = messages[1:]
    texts: list[str] = []
    refusals: list[str] = []
    calls: list[dict[str, Any]] = []
    for item in response.get("output") or []:
        if item.get("type") == "message":
            for part in item.get("content") or []:
                if part.get("type") == "output_text":
                    texts.append(part["text"])
                elif part.get("type") == "refusal":
                    refusals.append(part["refusal"])
        elif item.get("type") == "function_call":
            function = {"name": item["name"], "arguments": item["arguments"]}
            calls.append({"id": item["call_id"], "type": "function", "function": function})
    # An empty reply still gets its assistant message, so user and assistant turns alternate.
    assistant: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if calls:
        assistant["content"] = assistant["content"] or None
        assistant["tool_calls"] = calls
    if refusals:
        assistant["refusal"] = "".join(refusals)
    messages.append(assistant)
    return messages


# --- input items and token estimate ------------------------------------------------------


def _listed_part(part: dict[str, Any], assistant: bool) -> dict[str, Any]:
    kind = part["type"]
    if kind == "refusal":
        return objects.refusal_part(part["refusal"])
    if kind in _TEXT_PARTS:
        if assistant:
            return objects.text_part(part["text"])
        return {"type": "input_text", "text": part["text"]}
    if kind == "input_file":
        return {key: part[key] for key in ("type", *_FILE_KEYS) if part.get(key) is not None}
    return {
        "type": "input_image",
        "image_url": part["image_url"],
        "detail": part.get("detail") or "auto",
    }


def _listed_content(content: str | list[dict[str, Any]], assistant: bool) -> list[dict[str, Any]]:
    if isinstance(content, str):
        content = [{"type": "input_text", "text": content}]
    return [_listed_part(part, assistant) for part in content]


def _listed_item(item: dict[str, Any], id_: str) -> dict[str, Any]:
    kind = _item_type(item)
    if kind == "function_call":
        return objects.function_call_item(
            id_,
            call_id=item["call_id"],
            name=item["name"],
            arguments=item["arguments"],
            status="completed",
        )
    if kind == "function_call_output":
        output = item["output"]
        return {
            "id": id_,
            "type": "function_call_output",
            "status": "completed",
            "call_id": item["call_id"],
            "output": output if isinstance(output, str) else _listed_content(output, False),
        }
    if item["role"] == "assistant":
        return objects.message_item(id_, _listed_content(item["content"], True), "completed")
    return {
        "id": id_,
        "type": "message",
        "role": item["role"],
        "status": "completed",
        "content": _listed_content(item["content"], False),
    }


def input_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's input as Responses input items, for `GET /v1/responses/{id}/input_items`.

    Items keep the ids the client gave; the others get ids derived from the input, so listing
    the same stored request twice gives the same ids. Reasoning items are not listed.
    """
    items = _checked_input(body)
    digest = hashlib.sha256(orjson.dumps(body.get("input"), option=orjson.OPT_SORT_KEYS))
    seed = digest.hexdigest()[:24]
    listed = []
    for index, item in enumerate(items):
        given = item.get("id")
        id_ = given if isinstance(given, str) else f"{_ID_PREFIXES[_item_type(item)]}_{seed}{index}"
        listed.append(_listed_item(item, id_))
    return listed


def _count_words(text: str) -> int:
    return len(_WORD.findall(text))


def _content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return _count_words(content)
    tokens = 0
    for part in content or []:
        if part["type"] == "image_url":
            tokens += _IMAGE_TOKENS
        else:
            tokens += _count_words(part.get("text") or part.get("refusal") or "")
    return tokens


def count_input_tokens(body: dict[str, Any]) -> int:
    """An estimate of the input tokens of a Responses request, for `/v1/responses/input_tokens`.

    It is not the backend tokenizer's count: words and punctuation marks of the translated chat
    request count one each, images a flat 85 (OpenAI's low-detail price), each message one for
    its role marker, and tool definitions as the words of their JSON.
    """
    chat = request_to_chat(body)
    tokens = 0
    for message in chat["messages"]:
        tokens += 1 + _content_tokens(message.get("content"))
        for call in message.get("tool_calls") or []:
            function = call["function"]
            tokens += _count_words(function["name"]) + _count_words(function["arguments"])
    if "tools" in chat:
        tokens += _count_words(orjson.dumps(chat["tools"]).decode())
    return tokens
