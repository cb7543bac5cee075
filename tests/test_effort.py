"""Effort parsing and its precedence, the budget and reasoning_effort mappings, effort routes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from router.config import ConfigError, load_config
from router.effort import backend_value, resolve
from router.errors import InvalidRequest

ROUTES = """
backends:
  - name: small
    replicas: [{id: a, url: "http://127.0.0.1:9000/v1"}]
  - name: big
    replicas: [{id: b, url: "http://127.0.0.1:9001/v1"}]
    reasoning_effort: true
routes:
  text: small
  code: small
  json: small
  vision: small
  long: big
  code@high: big
  code@xhigh: [big, small]
"""


def test_precedence_header_query_body_thinking() -> None:
    body: dict[str, Any] = {
        "reasoning_effort": "low",
        "reasoning": {"effort": "medium"},
        "output_config": {"effort": "xhigh"},
        "thinking": {"type": "enabled", "budget_tokens": 50_000},
    }
    assert resolve({"X-DI-Effort": "fast"}, {"effort": "max"}, body) == "fast"
    assert resolve({}, {"effort": "MAX"}, body) == "max"
    assert resolve({}, {}, body) == "low"
    del body["reasoning_effort"]
    assert resolve({}, {}, body) == "medium"
    del body["reasoning"]
    assert resolve({}, {}, body) == "xhigh"
    del body["output_config"]
    assert resolve({}, {}, body) == "max"
    assert resolve({}, {}, {}) is None


@pytest.mark.parametrize(
    ("budget", "level"),
    [
        (1024, "low"),
        (2048, "low"),
        (2049, "medium"),
        (8192, "medium"),
        (16384, "high"),
        (32768, "xhigh"),
        (32769, "max"),
    ],
)
def test_thinking_budgets_map_to_levels(budget: int, level: str) -> None:
    assert resolve({}, {}, {"thinking": {"type": "enabled", "budget_tokens": budget}}) == level


def test_disabled_or_adaptive_thinking_names_no_effort() -> None:
    assert resolve({}, {}, {"thinking": {"type": "disabled"}}) is None
    assert resolve({}, {}, {"thinking": {"type": "adaptive"}}) is None


def test_openai_none_is_the_fastest_level() -> None:
    assert resolve({}, {}, {"reasoning_effort": "none"}) == "fast"


@pytest.mark.parametrize(
    ("headers", "query", "body", "param"),
    [
        ({"X-DI-Effort": "turbo"}, {}, {}, "X-DI-Effort"),
        ({"X-DI-Effort": "none"}, {}, {}, "X-DI-Effort"),  # "none" is OpenAI's, not a level
        ({}, {"effort": ""}, {}, "effort"),
        ({}, {}, {"reasoning_effort": 3}, "reasoning_effort"),
        ({}, {}, {"reasoning": {"effort": "lots"}}, "reasoning.effort"),
        ({}, {}, {"thinking": {"type": "enabled", "budget_tokens": "x"}}, "thinking.budget_tokens"),
    ],
)
def test_invalid_effort_is_a_400_naming_where(
    headers: dict[str, str], query: dict[str, str], body: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        resolve(headers, query, body)
    assert caught.value.param == param
    assert caught.value.http_status == 400


@pytest.mark.parametrize(
    ("level", "accepted", "value"),
    [
        ("high", ("low", "medium", "high"), "high"),
        ("xhigh", ("low", "medium", "high"), "high"),
        ("max", ("low", "medium", "high", "xhigh"), "xhigh"),
        ("fast", ("low", "medium", "high"), "low"),
        ("fast", ("none", "low"), "none"),
        ("minimal", ("none", "low"), "low"),  # a tie goes up
        ("auto", ("low", "medium", "high"), None),
        (None, ("low",), None),
        ("high", (), None),
    ],
)
def test_levels_map_onto_what_the_backend_accepts(
    level: str | None, accepted: tuple[str, ...], value: str | None
) -> None:
    assert backend_value(level, accepted) == value


def test_effort_routes_and_pools_for(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(ROUTES)
    config = load_config(path)
    routes = config.routes
    assert routes.pools_for("code") == ["small"]
    assert routes.pools_for("code", "high") == ["big"]
    assert routes.pools_for("code", "xhigh") == ["big", "small"]
    assert routes.pools_for("code", "low") == ["small"]  # falls back to the type
    assert routes.pools_for("text", "high") == ["small"]
    assert routes.pools_for("long") == ["big"]
    assert routes.pools_for("document") == []
    assert routes.enabled("long") and not routes.enabled("document")
    assert config.backend("big").reasoning_efforts == ("low", "medium", "high")
    assert config.backend("small").reasoning_efforts == ()
    assert list(config.routing_table()) == [
        "text",
        "code",
        "json",
        "vision",
        "long",
        "code@high",
        "code@xhigh",
    ]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("  code@turbo: big", "unknown effort 'turbo'"),
        ("  poetry: big", "unknown route 'poetry'"),
        ("  poetry@high: big", "unknown route 'poetry@high'"),
        ("  code@low: nowhere", "routes.code@low: names backend 'nowhere'"),
        ("  code@low: []", "must name a backend"),
        ("  document: [big, nowhere]", "routes.document[1]: names backend 'nowhere'"),
    ],
)
def test_bad_routes_are_config_errors(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(ROUTES + line + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert problem in str(caught.value)


def test_reasoning_effort_lists_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(ROUTES.replace("reasoning_effort: true", "reasoning_effort: [low, turbo]"))
    with pytest.raises(ConfigError):
        load_config(path)
    path.write_text(ROUTES.replace("reasoning_effort: true", "reasoning_effort: [xhigh, minimal]"))
    assert load_config(path).backend("big").reasoning_efforts == ("minimal", "xhigh")
