"""What the sim answers: deterministic text, schema-valid JSON, or a tool call.

Output depends only on (settings.seed, the request's `seed`, the prompt tokens, the choice
index), so a repeated request gets the same answer and tests can predict it. Each choice is
a list of one-token pieces; streaming sends one piece per chunk.

Length: text runs to `max_tokens`/`max_completion_tokens` when given (finish "length", like
a benchmark with `ignore_eos`), else to `settings.output_tokens` (finish "stop"). A JSON
document ends where it ends (finish "stop") unless the limit cuts it (finish "length").
Tool calls are never cut, so their arguments always validate. `stop` strings cut the text
before the first match (finish "stop").
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson

from router.sim.errors import SimError
from router.sim.json_prompt import requested_schema
from router.sim.logprobs import token_entries
from router.sim.request import ChatRequest, CompletionRequest
from router.sim.schema_values import sample_schema
from router.sim.settings import SimSettings
from router.sim.tokenizer import Prompt, pieces
from router.sim.words import seeded_rng, word_pieces, words

# Schema keywords that say what a tool's `parameters` are; without any, it is an object.
_SHAPE_KEYWORDS = ("type", "$ref", "anyOf", "oneOf", "allOf", "enum", "const")


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Choice:
    """One generated choice: content pieces, or a tool call whose arguments are the pieces."""

    index: int
    pieces: tuple[str, ...]
    finish_reason: str
    tool_call: ToolCall | None = None
    # One entry per content piece when the request asked for logprobs (see `logprobs`).
    logprobs: tuple[dict[str, Any], ...] | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def tokens(self) -> int:
        """Completion tokens: a tool call's name costs one, each piece one."""
        return len(self.pieces) + (1 if self.tool_call is not None else 0)


def cut_at_stop(parts: Sequence[str], stops: Sequence[str]) -> tuple[list[str], bool]:
    """The pieces before the first occurrence of any stop string, and whether one occurred."""
    text = "".join(parts)
    found = [index for stop in stops if stop and (index := text.find(stop)) >= 0]
    if not found:
        return list(parts), False
    cut = min(found)
    kept: list[str] = []
    position = 0
    for part in parts:
        if position + len(part) >= cut:
            if cut > position:
                kept.append(part[: cut - position])
            break
        kept.append(part)
        position += len(part)
    return kept, True


def _ending(index: int, parts: Sequence[str], *, truncated: bool, stops: Sequence[str]) -> Choice:
    kept, stopped = cut_at_stop(parts, stops)
    finish = "length" if truncated and not stopped else "stop"
    return Choice(index=index, pieces=tuple(kept), finish_reason=finish)


def _text_choice(
    index: int,
    rng: random.Random,
    *,
    limit: int | None,
    default: int,
    images: int,
    stops: list[str],
) -> Choice:
    count = limit if limit is not None else default
    parts = pieces(f"I see {images} image{'s' if images != 1 else ''}.") if images else []
    parts += word_pieces(rng, max(0, count - len(parts)))
    return _ending(index, parts[:count], truncated=limit is not None, stops=stops)


def _json_document(
    rng: random.Random, response_format: Mapping[str, Any], messages: list[dict[str, Any]]
) -> list[str] | None:
    """The pieces of the JSON document `response_format` asks for, if it asks for one.

    JSON mode carries no schema: the answer follows the one the prompt gives, when it can be
    read (see `json_prompt`), like a model that reads its instructions.
    """
    kind = response_format.get("type")
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        value = sample_schema(spec.get("schema") or {}, rng)
    elif kind == "json_object":
        value = _json_object(rng, messages)
    else:
        return None
    return pieces(orjson.dumps(value).decode())


def _json_object(rng: random.Random, messages: list[dict[str, Any]]) -> Any:
    schema = requested_schema(messages)
    if schema is not None:
        try:
            return sample_schema(schema, rng)
        except (ValueError, TypeError, KeyError, IndexError, RecursionError):
            pass  # a schema the sampler cannot follow: still answer valid JSON
    return {"answer": words(rng, rng.randint(4, 12))}


def _functions(request: ChatRequest) -> list[Mapping[str, Any]]:
    """The functions a tool call may go to; empty when the model should answer in text."""
    functions = [
        tool["function"]
        for tool in request.tools or []
        if tool.get("type", "function") == "function" and isinstance(tool.get("function"), dict)
    ]
    if not functions or request.tool_choice == "none":
        return []
    if request.messages[-1].get("role") == "tool":
        return []  # a tool result came back: the loop ends with a text answer
    if not isinstance(request.tool_choice, dict):
        return functions
    forced = request.tool_choice.get("function") or request.tool_choice
    name = forced.get("name") if isinstance(forced, dict) else None
    chosen = [function for function in functions if function.get("name") == name]
    if not chosen:
        raise SimError(f"tool_choice names an unknown function: {name!r}", param="tool_choice")
    return chosen


def _tool_choice(index: int, rng: random.Random, functions: list[Mapping[str, Any]]) -> Choice:
    function = functions[0] if len(functions) == 1 else rng.choice(functions)
    parameters = function.get("parameters") or {}
    if not any(keyword in parameters for keyword in _SHAPE_KEYWORDS):
        parameters = {**parameters, "type": "object"}
    arguments = orjson.dumps(sample_schema(parameters, rng)).decode()
    call = ToolCall(
        id=f"call_{rng.getrandbits(96):024x}",
        name=str(function.get("name", "")),
        arguments=arguments,
    )
    return Choice(
        index=index, pieces=tuple(pieces(arguments)), finish_reason="tool_calls", tool_call=call
    )


def _chat_choice(
    request: ChatRequest,
    prompt: Prompt,
    settings: SimSettings,
    functions: list[Mapping[str, Any]],
    index: int,
) -> Choice:
    rng = seeded_rng(settings.seed, request.seed, prompt.key, index)
    if functions:
        return _tool_choice(index, rng, functions)
    limit = request.token_limit
    document = _json_document(rng, request.response_format or {}, request.messages)
    if document is None:
        return _text_choice(
            index,
            rng,
            limit=limit,
            default=settings.output_tokens,
            images=prompt.images,
            stops=request.stop_strings,
        )
    truncated = limit is not None and len(document) > limit
    kept = document[:limit] if limit is not None else document
    return _ending(index, kept, truncated=truncated, stops=request.stop_strings)


def chat_choices(request: ChatRequest, prompt: Prompt, settings: SimSettings) -> list[Choice]:
    """The `n` choices of a chat completion."""
    functions = _functions(request)
    choices = [
        _chat_choice(request, prompt, settings, functions, index) for index in range(request.n)
    ]
    if request.logprobs:
        top = request.top_logprobs or 0
        choices = [_with_logprobs(choice, top) for choice in choices]
    return choices


def _with_logprobs(choice: Choice, top: int) -> Choice:
    # A tool call's arguments are not content: OpenAI reports no content logprobs for them.
    entries = token_entries(choice.pieces, top) if choice.tool_call is None else []
    return replace(choice, logprobs=tuple(entries))


def completion_choices(
    request: CompletionRequest, prompt: Prompt, settings: SimSettings, *, first_index: int
) -> list[Choice]:
    """The `n` choices for one prompt of a legacy completion, indexed from `first_index`."""
    choices = [
        _text_choice(
            first_index + offset,
            seeded_rng(settings.seed, request.seed, prompt.key, offset),
            limit=request.max_tokens,
            default=settings.output_tokens,
            images=0,
            stops=request.stop_strings,
        )
        for offset in range(request.n)
    ]
    if request.logprobs is not None:
        choices = [_with_logprobs(choice, request.logprobs) for choice in choices]
    return choices
