"""Prompt-cache markers: the prompt's blocks, its ``cache_control`` breakpoints, stripping.

The prompt is read as a sequence of blocks, in the order a model sees them: each tool
definition, then each message's content parts (a string content is one text part; an
assistant's ``tool_calls`` are one more block). A ``cache_control`` breakpoint, as in
Anthropic's API, closes a prefix at its block. ``router.chain`` turns blocks into prefix keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from router.errors import InvalidRequest
from router.survey import Survey, survey_of

MAX_BREAKPOINTS = 4
TTL_SECONDS = {"5m": 300, "1h": 3600}
BYTES_PER_TOKEN = 4  # the usual estimate for English text and JSON; the router has no tokenizer


# Roles whose messages are the prompt's fixed head, not turns of a conversation.
_SYSTEM_ROLES = frozenset({"system", "developer"})


@dataclass(frozen=True, slots=True)
class Block:
    """One block of the prompt, as a model sees it; hashed only when the chain needs it."""

    payload: Any  # what is hashed
    marker: Any  # the cache_control found on it (or on its message/tool), else None


@dataclass(frozen=True, slots=True)
class Markers:
    """Where a request's ``cache_control`` keys are, found without building any block."""

    at: dict[int, tuple[Any, str]]  # block index -> (marker, param) of each non-null marker
    blocks: int  # how many blocks the prompt has
    keys: int  # cache_control keys at the places the router reads (null ones included)
    top_level: Any  # the request's own cache_control (automatic mode), if any
    messages: tuple[int, ...] = ()  # the messages holding a key (on them or on a part)
    # The blocks of ``at`` (and the last, in automatic mode) that belong to a conversation's
    # turns: messages other than the system prompt (``system``, ``developer``), not the
    # tool definitions (a tool's result is a turn).
    turns: frozenset[int] = frozenset()


def find_markers(body: dict[str, Any], surveyed: Survey | None = None) -> Markers:
    """Walk tools and the messages that are not plain once, counting blocks and noting
    markers; linear and cheap. ``surveyed``: the survey of the messages, if at hand."""
    at: dict[int, tuple[Any, str]] = {}
    keys = 0
    block = 0
    tools = body.get("tools")
    for i, tool in enumerate(tools if isinstance(tools, list) else ()):
        if isinstance(tool, dict):
            if "cache_control" in tool:
                keys += 1
                if tool["cache_control"] is not None:
                    at[block] = (tool["cache_control"], f"tools[{i}].cache_control")
            block += 1
    found = survey_of(body, surveyed)
    messages = found.messages
    # Every message is one block unless it is one of the others: message i starts at block
    # `block + i + shift`, where shift sums what the earlier others add beyond one block.
    shift = 0
    holders: list[int] = []
    turns: set[int] = set()
    for i in found.others:
        message = messages[i]
        if not isinstance(message, dict):
            shift -= 1  # not a message: no block at all
        elif (
            isinstance(message.get("content"), str)
            and "cache_control" not in message
            and not message.get("tool_calls")
            and not message.get("function_call")
        ):
            continue  # a turn with extra fields (name, tool_call_id): one block, no marker
        else:
            first = block + i + shift
            count, held = _message_markers(i, message, first, at)
            shift += count - 1
            if held:
                keys += held
                holders.append(i)
                if message.get("role") not in _SYSTEM_ROLES:
                    turns.update(p for p in range(first, first + count) if p in at)
    blocks = block + len(messages) + shift
    top_level = body.get("cache_control")
    if "cache_control" in body:
        keys += 1
    if top_level is not None and _ends_on_a_turn(messages):
        turns.add(blocks - 1)
    return Markers(at, blocks, keys, top_level, tuple(holders), frozenset(turns))


def check_marker_places(body: dict[str, Any], surveyed: Survey | None = None) -> None:
    """Refuse a ``cache_control`` where a breakpoint is not read (on a tool call, on a tool's
    ``function``, on ``response_format``...): it would be forwarded unread, and the client
    would believe the prompt cached. Only the turns that are not plain are read (a plain
    turn has no object to hold one), so a long conversation costs nothing here."""
    where = _stray_marker(body, survey_of(body, surveyed))
    if where is not None:
        raise InvalidRequest(
            "cache_control is not read here: put it on a content part, a message, a tool "
            "definition or the top level of the request.",
            param=where,
        )


def _stray_marker(body: dict[str, Any], surveyed: Survey) -> str | None:
    """The param of the first ``cache_control`` key where a client might put a breakpoint
    that is not read: on a tool call or its function, in a content part's object (an
    ``image_url``), on a tool's ``function``, a legacy ``functions`` entry or
    ``response_format``. Not deeper: a JSON schema (a tool's ``parameters``, a
    ``json_schema``) may well describe a property of that name."""
    messages = surveyed.messages
    for i in surveyed.others:
        message = messages[i]
        if isinstance(message, dict) and (found := _stray_in_message(message)) is not None:
            return f"messages[{i}].{found}"
    tools = body.get("tools")
    for i, tool in enumerate(tools if isinstance(tools, list) else ()):
        if isinstance(tool, dict) and _holds_marker(tool.get("function")):
            return f"tools[{i}].function.cache_control"
    functions = body.get("functions")
    for i, function in enumerate(functions if isinstance(functions, list) else ()):
        if _holds_marker(function):
            return f"functions[{i}].cache_control"
    if _holds_marker(body.get("response_format")):
        return "response_format.cache_control"
    return None


def _stray_in_message(message: dict[str, Any]) -> str | None:
    calls = message.get("tool_calls")
    for j, call in enumerate(calls if isinstance(calls, list) else ()):
        if _holds_marker(call):
            return f"tool_calls[{j}].cache_control"
        if isinstance(call, dict) and _holds_marker(call.get("function")):
            return f"tool_calls[{j}].function.cache_control"
    if _holds_marker(message.get("function_call")):
        return "function_call.cache_control"
    content = message.get("content")
    for j, part in enumerate(content if isinstance(content, list) else ()):
        if isinstance(part, dict):
            for name, value in part.items():
                if _holds_marker(value):
                    return f"content[{j}].{name}.cache_control"
    return None


def _holds_marker(value: Any) -> bool:
    """A marker that is there (a null one is none, as where markers are read)."""
    return isinstance(value, dict) and value.get("cache_control") is not None


def _ends_on_a_turn(messages: list[Any]) -> bool:
    """Whether the prompt's last block (automatic mode's breakpoint) is in a turn."""
    last = messages[-1] if messages else None
    return isinstance(last, dict) and last.get("role") not in _SYSTEM_ROLES


def _message_markers(
    i: int, message: dict[str, Any], block: int, at: dict[int, tuple[Any, str]]
) -> tuple[int, int]:
    """Note message ``i``'s markers (its first block is ``block``); its block and key counts."""
    keys = 0
    content = message.get("content")
    count = 1 if content is not None and not isinstance(content, list) else 0
    if isinstance(content, list):
        for j, part in enumerate(content):
            if isinstance(part, dict) and "cache_control" in part:
                keys += 1
                if part["cache_control"] is not None:
                    at[block + j] = (
                        part["cache_control"],
                        f"messages[{i}].content[{j}].cache_control",
                    )
        count = len(content)
    if message.get("tool_calls") or message.get("function_call") or not count:
        count += 1
    if "cache_control" in message:
        keys += 1
        last = block + count - 1
        # A breakpoint on the whole message closes the prefix at its last block.
        if message["cache_control"] is not None and last not in at:
            at[last] = (message["cache_control"], f"messages[{i}].cache_control")
    return count, keys


def iter_blocks(body: dict[str, Any]) -> Iterator[Block]:
    """The request's blocks in prompt order (tools, then messages), built as they are read."""
    return _blocks(body)


def marked_ttls(markers: Markers) -> dict[int, int]:
    """Block index -> TTL of each breakpoint (top-level ``cache_control`` closes the last).

    Raises InvalidRequest naming the ``param`` for more than four breakpoints, an unknown type
    or ttl, or a ``1h`` breakpoint after a ``5m`` one (a longer-lived prefix cannot depend on a
    shorter-lived one).
    """
    found = sorted(markers.at.items())
    if markers.top_level is not None and markers.blocks:
        found.append((markers.blocks - 1, (markers.top_level, "cache_control")))
    if not found:
        return {}
    if len(found) > MAX_BREAKPOINTS:
        raise InvalidRequest(
            f"A request may have at most {MAX_BREAKPOINTS} cache_control breakpoints; "
            f"found {len(found)}.",
            param=found[MAX_BREAKPOINTS][1][1],
        )
    ttls: dict[int, int] = {}
    params: dict[int, str] = {}
    for position, (marker, param) in found:
        ttl = _ttl_of(marker, param)
        # Top-level mode on a block that is also marked: one breakpoint, the shorter TTL.
        ttls[position] = min(ttl, ttls.get(position, ttl))
        params.setdefault(position, param)
    _check_ttl_order(ttls, params)
    return ttls


def strip_cache_control(body: dict[str, Any], markers: Markers | None = None) -> dict[str, Any]:
    """A copy of ``body`` without any ``cache_control`` (the input is not modified).

    ``markers``, from ``find_markers(body)``, says which messages hold one: only those are
    copied (a long conversation with a marked system prompt copies one message, not all), and
    with none there the copy shares the client's ``messages`` list.
    """
    stripped = {k: v for k, v in body.items() if k != "cache_control"}
    if isinstance(tools := body.get("tools"), list):
        stripped["tools"] = [_without_marker(t) for t in tools]
    if isinstance(messages := body.get("messages"), list):
        if markers is None:
            stripped["messages"] = [_strip_message(m) for m in messages]
        elif markers.messages:
            copied = list(messages)
            for i in markers.messages:
                copied[i] = _strip_message(copied[i])
            stripped["messages"] = copied
    return stripped


def _strip_message(message: Any) -> Any:
    if not isinstance(message, dict):
        return message
    stripped = _without_marker(message)
    content = message.get("content")
    if isinstance(content, list) and any(
        isinstance(p, dict) and "cache_control" in p for p in content
    ):
        stripped = {**stripped, "content": [_without_marker(p) for p in content]}
    return stripped


def _without_marker(item: Any) -> Any:
    if isinstance(item, dict) and "cache_control" in item:
        return {k: v for k, v in item.items() if k != "cache_control"}
    return item


def _blocks(body: dict[str, Any]) -> Iterator[Block]:
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        if isinstance(tool, dict):
            yield Block(_without_marker(tool), tool.get("cache_control"))
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else ():
        if isinstance(message, dict):
            yield from _message_blocks(message)


def _message_blocks(message: dict[str, Any]) -> Iterator[Block]:
    head = [message.get("role"), message.get("name"), message.get("tool_call_id")]
    content = message.get("content")
    parts: list[Any]
    if isinstance(content, list):
        parts = content
    elif content is None:
        parts = []
    else:
        # A string is the same prompt as one text part, so both spellings share a key.
        parts = [{"type": "text", "text": content}]
    blocks = [
        Block(
            [head, _without_marker(part)],
            part.get("cache_control") if isinstance(part, dict) else None,
        )
        for part in parts
    ]
    if message.get("tool_calls") or message.get("function_call") or not blocks:
        calls = message.get("tool_calls") or message.get("function_call")
        blocks.append(Block([head, calls], None))
    if (marker := message.get("cache_control")) is not None:
        # A breakpoint on the whole message closes the prefix at its last block.
        last = blocks[-1]
        if last.marker is None:
            blocks[-1] = Block(last.payload, marker)
    yield from blocks


def marker_fault(marker: Any) -> tuple[str, str | None] | None:
    """What is wrong with one ``cache_control`` value, and in which of its fields (None: the
    value itself); None when it is a valid breakpoint. Each surface names the place itself."""
    if not isinstance(marker, dict):
        return 'cache_control must be an object such as {"type": "ephemeral"}.', None
    if marker.get("type") != "ephemeral":
        kind = marker.get("type")
        return f"Unknown cache_control type {kind!r}; the only type is 'ephemeral'.", "type"
    ttl = marker.get("ttl", "5m")
    if not isinstance(ttl, str) or ttl not in TTL_SECONDS:
        return f"Unknown cache_control ttl {ttl!r}; use '5m' or '1h'.", "ttl"
    return None


def _ttl_of(marker: Any, param: str) -> int:
    if (fault := marker_fault(marker)) is not None:
        message, field = fault
        raise InvalidRequest(message, param=param if field is None else f"{param}.{field}")
    ttl: str = marker.get("ttl", "5m")
    return TTL_SECONDS[ttl]


def _check_ttl_order(ttls: dict[int, int], params: dict[int, str]) -> None:
    shortest = None
    for index in sorted(ttls):
        if shortest is not None and ttls[index] > shortest:
            raise InvalidRequest(
                "A cache_control breakpoint with ttl '1h' must not come after one with ttl '5m'.",
                param=f"{params[index]}.ttl",
            )
        shortest = ttls[index] if shortest is None else min(shortest, ttls[index])
