"""The JSON shape a `json_object` prompt asks for, read from the prompt's own text.

JSON mode gives the model no schema, so clients put it in the prompt: instructor's JSON mode
pastes the schema into the system message, LangChain's `JsonOutputParser` pastes it after
"Here is the output schema:", and people write "reply in JSON with the keys name and age".
A real model follows that; the sim does too, when it can read it:

1. the last JSON schema in the messages (an object with `properties` of schemas, or with
   `type: object`), newest message first;
2. else the last JSON example object (its keys, values of the same types);
3. else field names named in prose (`keys "name" and "age"`, `fields: name, age`).

Otherwise `None`, and the caller answers with a generic object. Every property found is
required, so the answer carries all the fields asked for.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

# Bounds that keep the scan linear-ish on long prompts full of braces (code, data).
_MAX_TEXT = 64 << 10
_MAX_ATTEMPTS = 200
_DECODER = json.JSONDecoder()
_OBJECT_START = re.compile(r'\{\s*["}]')
_FIELD_PHRASE = re.compile(
    r"\b(?:keys?|fields?|properties|attributes)\b\s*(?:named|called)?\s*:?\s*"
    r"((?:[\"'`]?[A-Za-z_]\w*[\"'`]?(?:\s*,\s*(?:and\s+|or\s+)?|\s+and\s+|\s+or\s+)?){1,20})",
    re.IGNORECASE,
)
_QUOTED = re.compile(r"[\"'`]([A-Za-z_]\w*)[\"'`]")
_WORD = re.compile(r"[A-Za-z_]\w*")
_JOINERS = frozenset({"and", "or", "named", "called", "the", "with"})


def requested_schema(messages: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The schema the prompt asks the answer to follow, if one can be read from it."""
    texts = [text for message in reversed(messages) for text in _texts(message)]
    for text in texts:
        schema, example = _objects(text[-_MAX_TEXT:])
        if schema is not None:
            return _all_required(schema)
        if example is not None:
            return _all_required(_schema_of(example))
    for text in texts:
        names = _field_names(text[-_MAX_TEXT:])
        if names:
            properties = {name: {"type": "string"} for name in names}
            return {"type": "object", "properties": properties, "required": names}
    return None


def _texts(message: Mapping[str, Any]) -> list[str]:
    content = message.get("content")
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        ][::-1]
    return []


def _objects(text: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The last JSON schema and the last other JSON object in ``text``."""
    schema = example = None
    position = attempts = 0
    while attempts < _MAX_ATTEMPTS:
        match = _OBJECT_START.search(text, position)
        if match is None:
            break
        attempts += 1
        try:
            value, end = _DECODER.raw_decode(text, match.start())
        except ValueError:
            position = match.start() + 1
            continue
        position = end
        if _is_schema(value):
            schema = value
        elif isinstance(value, dict) and value:
            example = value
    return schema, example


def _is_schema(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    properties = value.get("properties")
    if isinstance(properties, dict):
        # LangChain's instructions show {"properties": {"foo": ["bar"]}} as a bad instance.
        return bool(properties) and all(isinstance(p, dict) for p in properties.values())
    return value.get("type") == "object" and isinstance(value.get("$defs"), dict)


def _all_required(schema: dict[str, Any]) -> dict[str, Any]:
    properties = schema.get("properties")
    out = {**schema, "type": schema.get("type", "object")}
    if isinstance(properties, dict):
        out["required"] = list(properties)
    return out


def _schema_of(value: Any) -> dict[str, Any]:
    """A schema whose instances look like ``value``: same keys, same types of values."""
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer"}
    if isinstance(value, float):
        return {"type": "number"}
    if isinstance(value, str):
        return {"type": "string"}
    if isinstance(value, list):
        items = _schema_of(value[0]) if value else {"type": "string"}
        return {"type": "array", "items": items, "minItems": 1 if value else 0}
    if isinstance(value, dict):
        properties = {str(k): _schema_of(v) for k, v in value.items()}
        return {"type": "object", "properties": properties, "required": list(properties)}
    return {"type": "null"}


def _field_names(text: str) -> list[str]:
    names: list[str] = []
    for match in _FIELD_PHRASE.finditer(text):
        phrase = match.group(1)
        found = _QUOTED.findall(phrase) or [
            word for word in _WORD.findall(phrase) if word.lower() not in _JOINERS
        ]
        names += [name for name in found if name not in names]
    return names
