"""Sampled JSON values validate against their schema, for many schemas and seeds."""

from __future__ import annotations

import random
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from router.sim.schema_values import sample_schema

ADDRESS = {
    "type": "object",
    "properties": {
        "street": {"type": "string", "minLength": 3},
        "zip": {"type": "string", "maxLength": 5},
        "country": {"enum": ["NL", "DE", "FR"]},
    },
    "required": ["street", "country"],
    "additionalProperties": False,
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "flat": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 14},
            "precise": {"type": "boolean"},
        },
        "required": ["city", "unit", "days"],
        "additionalProperties": False,
    },
    "numbers": {
        "type": "object",
        "properties": {
            "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "step": {"type": "integer", "multipleOf": 5, "minimum": 7, "maximum": 40},
            "cents": {"type": "number", "multipleOf": 0.25, "minimum": -3},
            "negative": {"type": "integer", "maximum": -10},
            "narrow": {"type": "integer", "exclusiveMinimum": 2.5, "exclusiveMaximum": 4},
        },
        "required": ["ratio", "step", "cents", "negative", "narrow"],
    },
    "draft4_exclusive_flags": {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "object",
        "properties": {
            "low": {"type": "number", "minimum": 2, "exclusiveMinimum": True, "maximum": 3},
            "count": {"type": "integer", "maximum": 9, "exclusiveMaximum": True, "minimum": 8},
        },
        "required": ["low", "count"],
    },
    "nested_refs": {
        "$defs": {
            "address": ADDRESS,
            "person": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 20},
                    "age": {"type": ["integer", "null"], "minimum": 0, "maximum": 130},
                    "home": {"$ref": "#/$defs/address"},
                    "tags": {
                        "type": "array",
                        "items": {"type": "string", "enum": ["a", "b", "c", "d"]},
                        "minItems": 2,
                        "maxItems": 3,
                        "uniqueItems": True,
                    },
                },
                "required": ["name", "home", "tags"],
            },
        },
        "type": "object",
        "properties": {
            "people": {"type": "array", "items": {"$ref": "#/$defs/person"}, "minItems": 1}
        },
        "required": ["people"],
    },
    "definitions_and_unions": {
        "definitions": {"id": {"type": "string", "const": "fixed"}},
        "type": "object",
        "properties": {
            "ref": {"$ref": "#/definitions/id"},
            "either": {"anyOf": [{"type": "integer", "minimum": 3}, {"type": "null"}]},
            "one": {"oneOf": [{"type": "string", "maxLength": 2}, {"type": "integer"}]},
            "both": {
                "allOf": [
                    {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                    {"properties": {"b": {"type": "null"}}, "required": ["b"]},
                ]
            },
            "nothing": {"type": "null"},
        },
        "required": ["ref", "either", "one", "both", "nothing"],
    },
    "map_and_tuple": {
        "type": "object",
        "properties": {
            "scores": {"type": "object", "additionalProperties": {"type": "number"}},
            "pair": {
                "type": "array",
                "prefixItems": [{"type": "string"}, {"type": "integer"}],
                "items": False,
                "minItems": 2,
            },
            "formats": {
                "type": "object",
                "properties": {
                    "when": {"type": "string", "format": "date-time"},
                    "mail": {"type": "string", "format": "email"},
                },
                "required": ["when", "mail"],
            },
        },
        "required": ["scores", "pair", "formats"],
        "minProperties": 3,
    },
    "recursive_tree": {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "label": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                },
                "required": ["label", "children"],
            }
        },
        "$ref": "#/$defs/node",
    },
    "pydantic_style": {
        "$defs": {"Color": {"enum": ["red", "green"], "title": "Color", "type": "string"}},
        "properties": {
            "color": {"$ref": "#/$defs/Color"},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        },
        "required": ["color"],
        "title": "Paint",
        "type": "object",
    },
}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
# No "explain" phase: it imports libcst, whose DeprecationWarning filterwarnings=error trips.
@settings(max_examples=40, deadline=None, phases=[Phase.generate, Phase.shrink])
@given(seed=st.integers(min_value=0, max_value=2**32))
def test_sample_validates(name: str, seed: int) -> None:
    schema = SCHEMAS[name]
    jsonschema.validate(sample_schema(schema, random.Random(seed)), schema)


def test_same_seed_same_value() -> None:
    schema = SCHEMAS["nested_refs"]
    assert sample_schema(schema, random.Random(3)) == sample_schema(schema, random.Random(3))


def test_empty_schema_gives_some_json_value() -> None:
    assert isinstance(sample_schema({}, random.Random(0)), str)
