"""JSON values that validate against a JSON schema, drawn from a seeded RNG.

The sim answers `response_format: json_schema` and tool calls with documents that validate
against the caller's schema, the way a grammar-constrained engine (vLLM's xgrammar) does.
Covered: object (properties, required, additionalProperties, minProperties), string (enum,
minLength/maxLength, a few common formats), integer/number (minimum/maximum, exclusive
bounds, multipleOf), boolean, null, array (items, prefixItems, minItems/maxItems,
uniqueItems), enum/const, anyOf/oneOf (the first branch), allOf (merged), type lists, and
`$ref` into `$defs`/`definitions` (any local JSON pointer). `pattern` is not honoured.

Optional properties and array lengths shrink with depth so recursive schemas terminate.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any

import orjson

from router.sim.words import words

Schema = Mapping[str, Any]

# Below this depth optional properties and extra array items are left out.
_SHALLOW = 4
# A recursive schema that requires itself can never terminate; give up here.
_MAX_DEPTH = 24
_INT_SPAN = 100

_FORMATS = {
    "date-time": "2024-05-17T09:30:00Z",
    "date": "2024-05-17",
    "time": "09:30:00Z",
    "email": "user@example.com",
    "uri": "https://example.com/sim",
    "hostname": "example.com",
    "ipv4": "192.0.2.1",
    "uuid": "6f1c2a3e-8d4b-4f5a-9c7e-2b1d0e3f4a5b",
}


class SchemaSampler:
    """Draws values for one root schema, resolving its `$ref`s."""

    def __init__(self, root: Any, rng: random.Random) -> None:
        self.root = root
        self.rng = rng

    def sample(self, schema: Any = None, depth: int = 0) -> Any:
        """A value valid against `schema` (the root when omitted)."""
        schema = self.root if schema is None else schema
        if schema is True or not isinstance(schema, Mapping):
            return self._words(1, 3)
        schema = self._flatten(schema, depth)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return self.rng.choice(schema["enum"])
        for key in ("anyOf", "oneOf"):
            if schema.get(key):
                rest = {k: v for k, v in schema.items() if k != key}
                return self.sample({**rest, **self._resolve(schema[key][0])}, depth + 1)
        return self._typed(schema, _schema_type(schema), depth)

    def _typed(self, schema: Schema, kind: str, depth: int) -> Any:
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, depth)
        if kind == "integer":
            return self._integer(schema)
        if kind == "number":
            return self._number(schema)
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        return self._string(schema)

    def _resolve(self, schema: Any) -> Any:
        """Replace a local `$ref` by its target, keeping sibling keywords."""
        seen = 0
        while isinstance(schema, Mapping) and isinstance(schema.get("$ref"), str):
            target = _pointer(self.root, schema["$ref"])
            siblings = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**target, **siblings} if isinstance(target, Mapping) else target
            seen += 1
            if seen > _MAX_DEPTH:
                return {}
        return schema

    def _flatten(self, schema: Schema, depth: int) -> Schema:
        """Resolve `$ref` and merge `allOf` into one schema."""
        if depth > _MAX_DEPTH:
            return {"type": "null"}
        resolved = self._resolve(schema)
        if not isinstance(resolved, Mapping):
            return {}
        if not resolved.get("allOf"):
            return resolved
        merged: dict[str, Any] = {k: v for k, v in resolved.items() if k != "allOf"}
        for part in resolved["allOf"]:
            part = self._flatten(part, depth + 1) if isinstance(part, Mapping) else {}
            properties = {**merged.get("properties", {}), **part.get("properties", {})}
            required = [*merged.get("required", []), *part.get("required", [])]
            merged.update(part)
            merged["properties"], merged["required"] = properties, list(dict.fromkeys(required))
        return merged

    def _words(self, low: int, high: int) -> str:
        return words(self.rng, self.rng.randint(low, high))

    def _string(self, schema: Schema) -> str:
        min_length = int(schema.get("minLength", 0))
        max_length = schema.get("maxLength")
        fixed = _FORMATS.get(str(schema.get("format")))
        text = fixed if fixed is not None else self._words(1, 3)
        while len(text) < min_length:
            text += " " + self._words(1, 3)
        if max_length is not None:
            text = text[: int(max_length)]
        return text

    def _integer(self, schema: Schema) -> int:
        low, high = _bounds(schema)
        lo, hi = _span(_int_limit(low, upper=False), _int_limit(high, upper=True))
        step = schema.get("multipleOf")
        if isinstance(step, int) and step > 0:
            first, last = math.ceil(lo / step), math.floor(hi / step)
            return self.rng.randint(first, last) * step if first <= last else lo
        return self.rng.randint(lo, hi)

    def _number(self, schema: Schema) -> float | int:
        step = schema.get("multipleOf")
        if isinstance(step, (int, float)) and step > 0:
            return self._multiple(schema, step)
        low, high = _bounds(schema)
        lo = low[0] if low is not None else None
        hi = high[0] if high is not None else None
        lo_f, hi_f = _span_float(lo, hi)
        value = round(lo_f + (hi_f - lo_f) * self.rng.random(), 2)
        if not _within(value, low, high):
            value = (lo_f + hi_f) / 2
        return value

    def _multiple(self, schema: Schema, step: float) -> float | int:
        low, high = _bounds(schema)
        lo = low[0] if low is not None else None
        hi = high[0] if high is not None else None
        lo_f, hi_f = _span_float(lo, hi)
        first, last = math.ceil(lo_f / step), math.floor(hi_f / step)
        for _ in range(8):
            count = self.rng.randint(first, last) if first <= last else first
            value = count * step
            # Float steps can miss by an ulp; keep only exact multiples.
            if (value / step).is_integer() and _within(value, low, high):
                return value
        return 0

    def _array(self, schema: Schema, depth: int) -> list[Any]:
        prefix = schema.get("prefixItems") or []
        min_items = int(schema.get("minItems", 0))
        max_items = schema.get("maxItems")
        wanted = max(min_items, self.rng.randint(1, 3) if depth < _SHALLOW else 0)
        if max_items is not None:
            wanted = min(wanted, int(max_items))
        items_schema = schema.get("items", {})
        values: list[Any] = []
        seen: set[bytes] = set()
        # Duplicates are skipped under uniqueItems, so allow some extra draws.
        for index in range(wanted * 8 + 8 if schema.get("uniqueItems") else wanted):
            if len(values) >= wanted:
                break
            if index < len(prefix):
                item_schema = prefix[index]
            elif items_schema is False:
                break
            else:
                item_schema = items_schema
            value = self.sample(item_schema, depth + 1)
            key = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
            if schema.get("uniqueItems") and key in seen:
                continue
            seen.add(key)
            values.append(value)
        return values

    def _object(self, schema: Schema, depth: int) -> dict[str, Any]:
        properties: Mapping[str, Any] = schema.get("properties") or {}
        required = list(schema.get("required") or [])
        extra = schema.get("additionalProperties", True)
        extra_schema = extra if isinstance(extra, Mapping) else {}
        value: dict[str, Any] = {}
        for name, sub in properties.items():
            if name in required or (depth < _SHALLOW and self.rng.random() < 0.5):
                value[name] = self.sample(sub, depth + 1)
        for name in required:
            if name not in value:
                value[name] = self.sample(extra_schema, depth + 1)
        wanted = int(schema.get("minProperties", 0))
        if not properties and isinstance(extra, Mapping) and depth < _SHALLOW:
            wanted = max(wanted, self.rng.randint(1, 2))  # a map: give it some entries
        optional = [name for name in properties if name not in value]
        while len(value) < wanted and optional:
            name = optional.pop(0)
            value[name] = self.sample(properties[name], depth + 1)
        counter = 0
        while len(value) < wanted and extra is not False:
            name, counter = f"key_{counter}", counter + 1
            if name not in value:
                value[name] = self.sample(extra_schema, depth + 1)
        return value


def _schema_type(schema: Schema) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        non_null = [k for k in kind if k != "null"]
        kind = non_null[0] if non_null else "null"
    if isinstance(kind, str):
        return kind
    if "properties" in schema or "additionalProperties" in schema or "required" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    if any(k in schema for k in ("minimum", "maximum", "multipleOf")):
        return "number"
    return "string"


def _pointer(root: Any, ref: str) -> Any:
    """Follow a local JSON pointer such as `#/$defs/Item`; unknown refs accept anything."""
    if not ref.startswith("#"):
        return {}
    node = root
    for raw in ref[1:].split("/")[1:]:
        key = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return {}
    return node


Bound = tuple[float, bool]  # (limit, exclusive)


def _bounds(schema: Schema) -> tuple[Bound | None, Bound | None]:
    """Lower and upper bounds, reading draft-4 boolean and draft-6+ numeric exclusives."""
    low: Bound | None = None
    high: Bound | None = None
    if isinstance(schema.get("minimum"), (int, float)):
        low = (schema["minimum"], schema.get("exclusiveMinimum") is True)
    if isinstance(schema.get("maximum"), (int, float)):
        high = (schema["maximum"], schema.get("exclusiveMaximum") is True)
    exclusive_min = schema.get("exclusiveMinimum")
    if not isinstance(exclusive_min, bool) and isinstance(exclusive_min, (int, float)):
        low = (exclusive_min, True) if low is None or exclusive_min >= low[0] else low
    exclusive_max = schema.get("exclusiveMaximum")
    if not isinstance(exclusive_max, bool) and isinstance(exclusive_max, (int, float)):
        high = (exclusive_max, True) if high is None or exclusive_max <= high[0] else high
    return low, high


def _int_limit(bound: Bound | None, *, upper: bool) -> int | None:
    """The tightest integer inside a bound."""
    if bound is None:
        return None
    limit, exclusive = bound
    if upper:
        return math.ceil(limit) - 1 if exclusive else math.floor(limit)
    return math.floor(limit) + 1 if exclusive else math.ceil(limit)


def _span(lo: int | None, hi: int | None) -> tuple[int, int]:
    if lo is None and hi is None:
        return 0, _INT_SPAN
    if lo is None:
        assert hi is not None
        return min(0, hi), hi
    if hi is None:
        return lo, max(lo, 0) + _INT_SPAN
    return lo, max(lo, hi)


def _span_float(lo: float | None, hi: float | None) -> tuple[float, float]:
    if lo is None and hi is None:
        return 0.0, float(_INT_SPAN)
    if lo is None:
        assert hi is not None
        return min(0.0, hi - 1), hi
    if hi is None:
        return lo, max(lo, 0.0) + _INT_SPAN
    return lo, max(lo, hi)


def _within(value: float, low: Bound | None, high: Bound | None) -> bool:
    if low is not None and (value < low[0] or (low[1] and value == low[0])):
        return False
    return not (high is not None and (value > high[0] or (high[1] and value == high[0])))


def sample_schema(schema: Any, rng: random.Random) -> Any:
    """A value that validates against `schema`."""
    return SchemaSampler(schema, rng).sample()
