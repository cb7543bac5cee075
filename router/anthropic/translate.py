"""Anthropic Messages requests -> Chat Completions requests (pure; checked as they go).

The chat body is what classification and prefix keys read, for every backend, so a
conversation keys the same on both surfaces: a system prompt becomes a system message of text
parts, each content block a chat part, ``tool_use`` blocks an assistant message's
``tool_calls``, ``tool_result`` blocks ``tool`` messages, and every ``cache_control`` stays on
the block it marked (reduced to ``type`` and ``ttl``: chat servers know nothing else).

A bad request raises ``MessagesInputError`` naming the field the way Anthropic does
(``messages.1.content.0.source.data``); the handler answers 400.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from router.prefix import marker_fault


class MessagesInputError(ValueError):
    """A Messages request the router cannot take; ``param`` names the offending field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(f"{param}: {message}")
        self.message = f"{param}: {message}"
        self.param = param


_ROLES = frozenset({"user", "assistant"})
_USER_BLOCKS = frozenset({"text", "image", "document", "tool_result", "search_result"})
_ASSISTANT_BLOCKS = frozenset(
    {"text", "tool_use", "thinking", "redacted_thinking", "server_tool_use"}
)
# Anthropic's tool_choice types and their chat spelling (``tool`` names one function).
_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
# Sampling fields copied as they are (``top_k`` is an extra field vLLM and SGLang take).
_NUMBERS = ("temperature", "top_p", "top_k")


def request_to_chat(body: dict[str, Any], *, require_max_tokens: bool = True) -> dict[str, Any]:
    """The Chat Completions body for a Messages request; raises MessagesInputError."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise MessagesInputError("Field required (a non-empty string)", "model")
    chat: dict[str, Any] = {"model": model}
    limit = body.get("max_tokens")
    if require_max_tokens or limit is not None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise MessagesInputError("Field required (a positive integer)", "max_tokens")
        chat["max_completion_tokens"] = limit
    messages = _system(body.get("system"))
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise MessagesInputError("Field required (a non-empty array of messages)", "messages")
    for i, message in enumerate(raw):
        messages += _message(message, f"messages.{i}")
    chat["messages"] = messages
    if (marker := body.get("cache_control")) is not None:
        chat["cache_control"] = _marker(marker, "cache_control")
    _options(body, chat)
    return chat


def _options(body: dict[str, Any], chat: dict[str, Any]) -> None:
    for key in _NUMBERS:
        value = body.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise MessagesInputError("Input should be a number", key)
            chat[key] = value
    _stops_and_user(body, chat)
    if body.get("tools") is not None:
        chat["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"], chat)
    if (response_format := _output_format(body.get("output_config"))) is not None:
        chat["response_format"] = response_format
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise MessagesInputError("Input should be a boolean", "stream")
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}


def _output_format(config: Any) -> dict[str, Any] | None:
    """``output_config.format`` (structured outputs) as chat's ``response_format``."""
    if config is None:
        return None
    if not isinstance(config, dict):
        raise MessagesInputError("Input should be an object", "output_config")
    fmt = config.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        raise MessagesInputError(
            "Input should be {type: json_schema, schema}", "output_config.format"
        )
    if not isinstance(fmt.get("schema"), dict):
        raise MessagesInputError("Field required (an object)", "output_config.format.schema")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"]}}


def _stops_and_user(body: dict[str, Any], chat: dict[str, Any]) -> None:
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise MessagesInputError("Input should be an array of strings", "stop_sequences")
        if stops:
            chat["stop"] = stops
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise MessagesInputError("Input should be an object", "metadata")
        user = metadata.get("user_id")
        if user is not None and not isinstance(user, str):
            raise MessagesInputError("Input should be a string", "metadata.user_id")
        if user:
            chat["user"] = user


# --- system and messages ---------------------------------------------------------------


def _system(system: Any) -> list[dict[str, Any]]:
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if not isinstance(system, list):
        raise MessagesInputError("Input should be a string or an array of text blocks", "system")
    parts = []
    for j, block in enumerate(system):
        param = f"system.{j}"
        if not isinstance(block, dict) or block.get("type") != "text":
            raise MessagesInputError("System blocks must be text blocks", f"{param}.type")
        parts.append(_text_part(block, param))
    return [{"role": "system", "content": parts}] if parts else []


def _message(message: Any, param: str) -> list[dict[str, Any]]:
    if not isinstance(message, dict):
        raise MessagesInputError("Input should be an object", param)
    role = message.get("role")
    if not isinstance(role, str) or role not in _ROLES:
        raise MessagesInputError(
            f"Input should be 'user' or 'assistant', not {role!r}", f"{param}.role"
        )
    if message.get("cache_control") is not None:
        # Anthropic's messages take markers on their blocks only: one here would be dropped
        # unread, and the client would believe the prompt cached.
        raise MessagesInputError(
            "Extra inputs are not permitted (put cache_control on a content block)",
            f"{param}.cache_control",
        )
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise MessagesInputError(
            "Input should be a string or an array of content blocks", f"{param}.content"
        )
    allowed = _USER_BLOCKS if role == "user" else _ASSISTANT_BLOCKS
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if not isinstance(kind, str) or kind not in allowed:
            raise MessagesInputError(
                f"Unsupported content block type {kind!r} in a {role} message",
                f"{param}.content.{j}.type",
            )
    if role == "assistant":
        return [_assistant(content, param)]
    return _user(content, param)


def _user(blocks: list[dict[str, Any]], param: str) -> list[dict[str, Any]]:
    """Tool results become ``tool`` messages (first, as chat wants them right after the call),
    then the other blocks one user message."""
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        where = f"{param}.content.{j}"
        if block["type"] == "tool_result":
            out.append(_tool_result(block, where))
        else:
            parts.append(_part(block, where))
    if parts or not out:
        out.append({"role": "user", "content": parts})
    return out


def _assistant(blocks: list[dict[str, Any]], param: str) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    marker = None
    for j, block in enumerate(blocks):
        where = f"{param}.content.{j}"
        kind = block["type"]
        if kind == "text":
            parts.append(_text_part(block, where))
        elif kind in ("tool_use", "server_tool_use"):
            calls.append(_tool_call(block, where))
            if block.get("cache_control") is not None:
                # The marker closes the prefix at the calls, which chat hashes as one block.
                marker = _marker(block["cache_control"], f"{where}.cache_control")
        elif block.get("cache_control") is not None:
            # As Anthropic: a thinking block is cached with the turn, never marked itself.
            raise MessagesInputError(
                "Thinking blocks cannot be marked with cache_control", f"{where}.cache_control"
            )
        # Thinking blocks are dropped: chat backends cannot take reasoning back as input.
    message: dict[str, Any] = {"role": "assistant", "content": parts or None}
    if calls:
        message["tool_calls"] = calls
    elif not parts:
        message["content"] = ""
    if marker is not None:
        message["cache_control"] = marker
    return message


def _tool_call(block: dict[str, Any], param: str) -> dict[str, Any]:
    call_id = _string(block, "id", param)
    name = _string(block, "name", param)
    arguments = block.get("input", {})
    if not isinstance(arguments, dict):
        raise MessagesInputError("Input should be an object", f"{param}.input")
    function = {"name": name, "arguments": orjson.dumps(arguments).decode()}
    return {"id": call_id, "type": "function", "function": function}


def _tool_result(block: dict[str, Any], param: str) -> dict[str, Any]:
    call_id = _string(block, "tool_use_id", param)
    content = block.get("content", "")
    if isinstance(content, list):
        converted: str | list[dict[str, Any]] = [
            _part(part, f"{param}.content.{k}") for k, part in enumerate(content)
        ]
    elif isinstance(content, str):
        converted = content
    else:
        raise MessagesInputError(
            "Input should be a string or an array of content blocks", f"{param}.content"
        )
    if block.get("is_error") is True:
        # Chat has no error flag on a tool message; say it in the content, as a model reads it.
        prefix = {"type": "text", "text": "Error:"}
        converted = f"Error: {converted}" if isinstance(converted, str) else [prefix, *converted]
    message: dict[str, Any] = {"role": "tool", "tool_call_id": call_id, "content": converted}
    if block.get("cache_control") is not None:
        message["cache_control"] = _marker(block["cache_control"], f"{param}.cache_control")
    return message


# --- content blocks --------------------------------------------------------------------


def _part(block: Any, param: str) -> dict[str, Any]:
    kind = block.get("type") if isinstance(block, dict) else None
    if kind == "text":
        return _text_part(block, param)
    if kind == "image":
        return _marked(block, _image_part(_source(block, param), param), param)
    if kind == "document":
        return _marked(block, _document_part(block, param), param)
    if kind == "search_result":
        text = "\n".join(
            c.get("text", "") for c in block.get("content") or [] if isinstance(c, dict)
        )
        return _marked(block, {"type": "text", "text": text}, param)
    raise MessagesInputError(f"Unsupported content block type {kind!r}", f"{param}.type")


def _text_part(block: dict[str, Any], param: str) -> dict[str, Any]:
    text = _string(block, "text", param)
    if not text and block.get("cache_control") is not None:
        # Anthropic's own words: a breakpoint on nothing marks no prefix a cache could hold.
        raise MessagesInputError(
            "cache_control cannot be set for empty text blocks", f"{param}.text"
        )
    return _marked(block, {"type": "text", "text": text}, param)


def _marked(block: dict[str, Any], part: dict[str, Any], param: str) -> dict[str, Any]:
    if block.get("cache_control") is not None:
        part["cache_control"] = _marker(block["cache_control"], f"{param}.cache_control")
    return part


def _marker(marker: Any, param: str) -> dict[str, Any]:
    """A ``cache_control`` for the chat body: ``type`` and ``ttl`` only, checked here so that
    a bad one is named by its place in the Messages body.

    ``ttl`` sets how long the prefix index keeps the entry; ``scope`` and anything else Anthropic
    may add are accepted but mean nothing to a chat server (which would reject them), so they
    stop here.
    """
    if (fault := marker_fault(marker)) is not None:
        message, field = fault
        raise MessagesInputError(
            message.rstrip("."), param if field is None else f"{param}.{field}"
        )
    return {k: v for k, v in marker.items() if k in ("type", "ttl")}


def _source(block: dict[str, Any], param: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict) or not isinstance(source.get("type"), str):
        raise MessagesInputError("Field required (an object with a type)", f"{param}.source")
    return source


def _image_part(source: dict[str, Any], param: str) -> dict[str, Any]:
    kind = source["type"]
    if kind == "base64":
        media = _string(source, "media_type", f"{param}.source")
        if media not in _IMAGE_TYPES:
            raise MessagesInputError(
                f"Unsupported image media type {media!r} (use {', '.join(sorted(_IMAGE_TYPES))})",
                f"{param}.source.media_type",
            )
        data = _string(source, "data", f"{param}.source")
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    if kind == "url":
        return {
            "type": "image_url",
            "image_url": {"url": _string(source, "url", f"{param}.source")},
        }
    raise MessagesInputError(
        f"Unsupported image source type {kind!r} (use base64 or url)", f"{param}.source.type"
    )


def _document_part(block: dict[str, Any], param: str) -> dict[str, Any]:
    """A chat ``file`` part: the document's bytes as a data URL, or its URL or file id."""
    source = _source(block, param)
    where = f"{param}.source"
    kind = source["type"]
    file: dict[str, Any] = {}
    if kind == "base64":
        media = _string(source, "media_type", where)
        file["file_data"] = f"data:{media};base64,{_string(source, 'data', where)}"
    elif kind == "text":
        text = _string(source, "data", where)
        file["file_data"] = "data:text/plain;base64," + base64.b64encode(text.encode()).decode()
    elif kind == "content":
        content = source.get("content")
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            text = "\n".join(
                _text_part(c, f"{where}.content.{k}")["text"] for k, c in enumerate(content)
            )
        else:
            raise MessagesInputError("Input should be a string or text blocks", f"{where}.content")
        file["file_data"] = "data:text/plain;base64," + base64.b64encode(text.encode()).decode()
    elif kind == "url":
        file["file_url"] = _string(source, "url", where)
    elif kind == "file":
        file["file_id"] = _string(source, "file_id", where)
    else:
        raise MessagesInputError(f"Unsupported document source type {kind!r}", f"{where}.type")
    title = block.get("title")
    if isinstance(title, str) and title:
        file["filename"] = title
    return {"type": "file", "file": file}


# --- tools -----------------------------------------------------------------------------


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise MessagesInputError("Input should be an array of tools", "tools")
    out = []
    for i, tool in enumerate(tools):
        param = f"tools.{i}"
        if not isinstance(tool, dict):
            raise MessagesInputError("Input should be an object", param)
        if tool.get("type") not in (None, "custom"):
            raise MessagesInputError(
                f"Tool type {tool.get('type')!r} is not supported; only custom tools are",
                f"{param}.type",
            )
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise MessagesInputError(
                "Field required (a JSON schema object)", f"{param}.input_schema"
            )
        function: dict[str, Any] = {"name": _string(tool, "name", param), "parameters": schema}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        out.append(_marked(tool, {"type": "function", "function": function}, param))
    return out


def _tool_choice(choice: Any, chat: dict[str, Any]) -> None:
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "tool":
        name = _string(choice, "name", "tool_choice")
        chat["tool_choice"] = {"type": "function", "function": {"name": name}}
    elif isinstance(kind, str) and kind in _TOOL_CHOICES:
        chat["tool_choice"] = _TOOL_CHOICES[kind]
    else:
        raise MessagesInputError(
            "Input should be an object with type auto, any, tool or none", "tool_choice.type"
        )
    if choice.get("disable_parallel_tool_use") is True and kind != "none":
        chat["parallel_tool_calls"] = False


# --- helpers ---------------------------------------------------------------------------


def _string(obj: dict[str, Any], key: str, param: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise MessagesInputError("Field required (a string)", f"{param}.{key}")
    return value


def strip_markers(body: dict[str, Any]) -> dict[str, Any]:
    """A copy of a Messages body without any ``cache_control`` (the input is not modified).

    Markers sit on the body, system blocks, tools, content blocks and the blocks inside a
    ``tool_result``; nothing else is touched (a tool's input may hold any keys).
    """
    out: dict[str, Any] = {k: v for k, v in body.items() if k != "cache_control"}
    if isinstance(system := body.get("system"), list):
        out["system"] = [_unmarked(b) for b in system]
    if isinstance(tools := body.get("tools"), list):
        out["tools"] = [_unmarked(t) for t in tools]
    if isinstance(messages := body.get("messages"), list):
        out["messages"] = [_strip_message(m) for m in messages]
    return out


def _strip_message(message: Any) -> Any:
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        return message
    blocks = []
    for block in message["content"]:
        block = _unmarked(block)
        if isinstance(block, dict) and isinstance(block.get("content"), list):
            block["content"] = [_unmarked(b) for b in block["content"]]
        blocks.append(block)
    return {**message, "content": blocks}


def _unmarked(item: Any) -> Any:
    if isinstance(item, dict):
        return {k: v for k, v in item.items() if k != "cache_control"}
    return item
