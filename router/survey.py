"""One pass over a chat body's messages that sets the plain turns apart from the rest.

A long conversation is mostly plain turns: ``{"role": "user", "content": "..."}``, a known role
and a string, nothing else. What the router asks of a body (its limits, its validity, its type,
its ``cache_control`` markers) has the same answer for every plain turn: one text block, no
parts, no marker, no image, not a tool turn, nesting three levels below the body. So one walk
here finds the turns that need a closer look, and the limits, validation, classification and
the marker search read only those (before, each of them walked all 140 turns of a 140 KB
conversation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Tool turns are never plain: they make a request ``code``.
PLAIN_ROLES = frozenset({"system", "developer", "user", "assistant"})
PLAIN_KEYS = ("role", "content")
# What a plain turn adds to the body's JSON values: the object, two keys, two strings.
PLAIN_VALUES = 5


@dataclass(frozen=True, slots=True)
class Survey:
    """The turns of one messages list that are not plain (``others``), by index."""

    messages: list[Any]  # the list surveyed; a survey answers for this very list only
    others: list[int]

    @property
    def plain(self) -> int:
        return len(self.messages) - len(self.others)

    def other_messages(self) -> list[Any]:
        messages = self.messages
        return [messages[i] for i in self.others]

    def plain_strings(self) -> list[str]:
        """The plain turns' strings, roles and contents (for the rare question that needs
        their lengths)."""
        skip = set(self.others)
        plain = [m for i, m in enumerate(self.messages) if i not in skip]
        return [m["role"] for m in plain] + [m["content"] for m in plain]


EMPTY = Survey([], [])


def survey(messages: Any) -> Survey:
    """Survey ``messages`` (anything: a body's ``messages`` value as sent)."""
    if type(messages) is not list:
        return EMPTY
    others = [
        i
        for i, m in enumerate(messages)
        if not (
            type(m) is dict
            and len(m) == 2
            and type(m.get("content")) is str
            and type(role := m.get("role")) is str
            and role in PLAIN_ROLES
        )
    ]
    return Survey(messages, others)


def survey_of(body: dict[str, Any], known: Survey | None = None) -> Survey:
    """The survey of ``body['messages']``: ``known`` when it was taken of that same list (the
    body parser's), else a new one (a body the router built, such as a translated one)."""
    messages = body.get("messages")
    if known is not None and known.messages is messages:
        return known
    return survey(messages)
