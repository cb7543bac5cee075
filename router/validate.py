"""Checks of the request fields the router reads or must reject; everything else passes through.

Written as plain checks rather than pydantic models: a request body is forwarded as the client
sent it, so the router only needs yes/no and the exact ``param`` path for the error (pydantic's
union error locations name internal tags instead), and this runs on every request.
"""

from __future__ import annotations

from typing import Any

from router.errors import InvalidRequest
from router.survey import Survey, survey_of

CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def check_chat(body: dict[str, Any], surveyed: Survey | None = None) -> None:
    """Validate a Chat Completions body; raise InvalidRequest naming the first bad ``param``.

    ``surveyed``: the body parser's survey of the messages, if at hand (see ``survey_of``).
    """
    check_model(body)
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequest("Missing required parameter: 'messages'.", param="messages")
    if not isinstance(messages, list):
        raise InvalidRequest("'messages' must be an array of message objects.", param="messages")
    if not messages:
        raise InvalidRequest("'messages' must contain at least one message.", param="messages")
    found = survey_of(body, surveyed)
    # A plain turn (a known role and a string) is valid as it is; the others get the full
    # check with its error paths.
    for i in found.others:
        _check_message(messages[i], f"messages[{i}]")
    for name in ("tools", "functions"):
        value = body.get(name)
        if value is not None and not (
            isinstance(value, list) and all(isinstance(t, dict) for t in value)
        ):
            raise InvalidRequest(f"'{name}' must be an array of objects.", param=name)
    _check_response_format(body.get("response_format"))
    check_sampling(body)
    check_cache_markers(body, found)


def check_cache_markers(body: dict[str, Any], surveyed: Survey | None = None) -> None:
    """``cache_control`` markers must be objects with string fields, wherever they sit.

    Their values are checked where breakpoints are found; this only makes sure that check
    meets the JSON types it can compare (a ``ttl`` of ``[]`` is not a 500).
    """
    _check_marker(body.get("cache_control"), "cache_control")
    tools = body.get("tools")
    for i, tool in enumerate(tools if isinstance(tools, list) else ()):
        if isinstance(tool, dict):
            _check_marker(tool.get("cache_control"), f"tools[{i}].cache_control")
    found = survey_of(body, surveyed)
    messages = found.messages
    for i in found.others:  # a plain turn has no marker
        message = messages[i]
        if not isinstance(message, dict):
            continue
        # Each param is formatted only for a marker that is there (most messages have none).
        if (marker := message.get("cache_control")) is not None:
            _check_marker(marker, f"messages[{i}].cache_control")
        content = message.get("content")
        for j, part in enumerate(content if isinstance(content, list) else ()):
            if isinstance(part, dict) and (marker := part.get("cache_control")) is not None:
                _check_marker(marker, f"messages[{i}].content[{j}].cache_control")


def _check_marker(marker: Any, where: str) -> None:
    if marker is None:
        return
    if not isinstance(marker, dict):
        raise InvalidRequest(
            'cache_control must be an object such as {"type": "ephemeral"}.', param=where
        )
    for key in ("type", "ttl"):
        if key in marker and not isinstance(marker[key], str):
            raise InvalidRequest(f"'{where}.{key}' must be a string.", param=f"{where}.{key}")


def _check_response_format(response_format: Any) -> None:
    if response_format is None:
        return
    if not isinstance(response_format, dict):
        raise InvalidRequest(
            '\'response_format\' must be an object such as {"type": "json_object"}.',
            param="response_format",
        )
    if not isinstance(response_format.get("type"), str):
        raise InvalidRequest(
            "'response_format.type' must be a string.", param="response_format.type"
        )


def check_model(body: dict[str, Any]) -> None:
    model = body.get("model")
    if model is None:
        raise InvalidRequest("Missing required parameter: 'model'.", param="model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' must be a non-empty string.", param="model")


def check_sampling(body: dict[str, Any]) -> None:
    """Fields shared by chat and legacy completions."""
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream")
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise InvalidRequest(
                "'stream_options' is only allowed when 'stream' is true.", param="stream_options"
            )
        if not isinstance(options, dict):
            raise InvalidRequest("'stream_options' must be an object.", param="stream_options")
    n = body.get("n")
    if n is not None and (not _is_int(n) or n < 1 or n > 128):
        raise InvalidRequest("'n' must be an integer between 1 and 128.", param="n")
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (not _is_int(value) or value < 1):
            raise InvalidRequest(f"'{name}' must be a positive integer.", param=name)
    _check_logit_bias(body.get("logit_bias"))
    metadata = body.get("metadata")
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise InvalidRequest("'metadata' must be an object of string values.", param="metadata")
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise InvalidRequest("'stop' must be a string or an array of strings.", param="stop")


def _check_message(message: Any, where: str) -> None:
    if not isinstance(message, dict):
        raise InvalidRequest(f"'{where}' must be an object with a role.", param=where)
    role = message.get("role")
    if not isinstance(role, str) or role not in CHAT_ROLES:
        raise InvalidRequest(
            f"'{where}.role' must be one of {', '.join(sorted(CHAT_ROLES))}; got {role!r}.",
            param=f"{where}.role",
        )
    content = message.get("content")
    if content is None:
        if role == "assistant" and (message.get("tool_calls") or message.get("function_call")):
            return
        if role == "assistant" and "content" in message:
            return
        raise InvalidRequest(f"'{where}.content' is required.", param=f"{where}.content")
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise InvalidRequest(
            f"'{where}.content' must be a string or an array of content parts.",
            param=f"{where}.content",
        )
    for j, part in enumerate(content):
        _check_part(part, f"{where}.content[{j}]")


def _check_part(part: Any, where: str) -> None:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise InvalidRequest(
            f"'{where}' must be an object with a string 'type'.", param=f"{where}.type"
        )
    kind = part["type"]
    if kind == "text" and not isinstance(part.get("text"), str):
        raise InvalidRequest(f"'{where}.text' must be a string.", param=f"{where}.text")
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        if not isinstance(url, str) or not url:
            raise InvalidRequest(
                f"'{where}.image_url.url' must be a non-empty string.",
                param=f"{where}.image_url.url",
            )
    if kind == "input_image" and not (
        isinstance(part.get("image_url"), str | dict) or isinstance(part.get("file_id"), str)
    ):
        raise InvalidRequest(
            f"'{where}' needs an 'image_url' or a 'file_id'.", param=f"{where}.image_url"
        )


def _check_logit_bias(bias: Any) -> None:
    if bias is None:
        return
    if not isinstance(bias, dict):
        raise InvalidRequest("'logit_bias' must map token ids to numbers.", param="logit_bias")
    for token, value in bias.items():
        if not (isinstance(token, str) and token.isascii() and token.isdigit()):
            raise InvalidRequest(
                f"'logit_bias' keys must be token ids; got {token!r}.", param="logit_bias"
            )
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not -100 <= value <= 100
        ):
            raise InvalidRequest(
                f"'logit_bias' values must be between -100 and 100; got {value!r} for {token}.",
                param="logit_bias",
            )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
