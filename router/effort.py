"""Request effort: how hard the client wants the model to think, from wherever it said so.

Precedence: the ``X-DI-Effort`` header > the ``?effort=`` query parameter > the body's
``reasoning_effort`` (Chat), ``reasoning.effort`` (Responses) or ``output_config.effort``
(Messages) > Anthropic's ``thinking.budget_tokens``. Effort tunes the chosen request type
(``code@high`` routes); it never picks the type. Levels: fast, minimal, low, medium, high,
xhigh, max, auto; ``auto`` means "the router's default" and is never forwarded.

Thinking budgets map onto levels by size (Anthropic's minimum budget is 1024 tokens):

    budget_tokens  <= 2048 low, <= 8192 medium, <= 16384 high, <= 32768 xhigh, above: max

A backend that takes OpenAI's ``reasoning_effort`` gets the level mapped onto OpenAI's scale
(fast -> none, minimal, low, medium, high, xhigh and max -> xhigh), then onto the nearest value
that backend accepts (``backends[].reasoning_effort``), ties going up.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from router.config import EFFORT_LEVELS, REASONING_EFFORTS
from router.errors import InvalidRequest

HEADER = "X-DI-Effort"
_BUDGETS = ((2048, "low"), (8192, "medium"), (16384, "high"), (32768, "xhigh"))
# OpenAI's value for each level; "none" is also accepted from bodies, as OpenAI's own value.
_OPENAI_VALUE = {
    "fast": "none",
    "minimal": "minimal",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "xhigh",
    "max": "xhigh",
}
_FROM_OPENAI = {"none": "fast"}


def resolve(
    headers: Mapping[str, str], query: Mapping[str, str], body: dict[str, Any]
) -> str | None:
    """The request's effort level, or None when it names none; raises InvalidRequest."""
    given = headers.get(HEADER)
    if given is not None:
        return _level(given, HEADER, "header")
    given = query.get("effort")
    if given is not None:
        return _level(given, "effort", "query parameter")
    for value, param in _body_efforts(body):
        if value is not None:
            return _level(value, param, "field", openai=True)
    return _from_thinking(body.get("thinking"))


def backend_value(level: str | None, accepted: tuple[str, ...]) -> str | None:
    """The ``reasoning_effort`` to send a backend accepting ``accepted``; None to send none."""
    if level is None or level == "auto" or not accepted:
        return None
    wanted = REASONING_EFFORTS.index(_OPENAI_VALUE[level])
    # Nearest accepted value; on a tie the higher one (the client asked for more, not less).
    return min(
        accepted,
        key=lambda v: (abs(REASONING_EFFORTS.index(v) - wanted), -REASONING_EFFORTS.index(v)),
    )


def _body_efforts(body: dict[str, Any]) -> list[tuple[Any, str]]:
    reasoning = body.get("reasoning")
    nested = reasoning.get("effort") if isinstance(reasoning, dict) else None
    output = body.get("output_config")
    anthropic = output.get("effort") if isinstance(output, dict) else None
    return [
        (body.get("reasoning_effort"), "reasoning_effort"),
        (nested, "reasoning.effort"),
        (anthropic, "output_config.effort"),
    ]


def _level(value: Any, param: str, where: str, *, openai: bool = False) -> str:
    if isinstance(value, str):
        level = value.strip().lower()
        if openai:
            level = _FROM_OPENAI.get(level, level)
        if level in EFFORT_LEVELS:
            return level
    raise InvalidRequest(
        f"Invalid effort {value!r} in the {param} {where}; use one of {', '.join(EFFORT_LEVELS)}.",
        param=param,
        code="invalid_effort",
    )


def _from_thinking(thinking: Any) -> str | None:
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
        return None
    budget = thinking.get("budget_tokens")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise InvalidRequest(
            "thinking.budget_tokens must be a positive integer.", param="thinking.budget_tokens"
        )
    return next((level for limit, level in _BUDGETS if budget <= limit), "max")
