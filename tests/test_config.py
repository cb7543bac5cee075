"""Config loading: validation with locations, secrets from the environment, the embedded default."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.config import ConfigError, embedded_config, load_config, parse_size

EXAMPLE = Path(__file__).parent.parent / "deploy" / "config.example.yaml"

MINIMAL = """
backends:
  - name: pool
    replicas:
      - {id: a, url: "http://127.0.0.1:9000/v1/"}
routes: {text: pool, code: pool, json: pool, vision: pool}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "router.yaml"
    path.write_text(text)
    return path


def test_minimal_config_has_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.server.port == 8000
    assert config.server.max_body_size == 8 << 20
    assert config.backends[0].replicas[0].url == "http://127.0.0.1:9000/v1"
    assert config.routing.policy == "prefix_affinity"
    assert {t: b.name for t, b in config.routing_table().items()} == {
        "text": "pool",
        "code": "pool",
        "json": "pool",
        "vision": "pool",
    }


def test_example_config_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DI_ROUTER_API_KEY", "k")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    monkeypatch.setenv("DI_ROUTER_REDIS_URL", "redis://:pw@redis:6379/0")
    monkeypatch.setenv("TEAM_A_KEY", "sk-team-a")
    monkeypatch.setenv("DI_ROUTER_OBJECTS_REDIS_URL", "redis://objects:6379/0")
    config = load_config(EXAMPLE)
    team = config.server.api_keys[1]
    assert (team.name, team.rpm, team.allowed_types) == ("team-a", 600, ["text", "code", "json"])
    assert config.server.api_keys[0].name is None  # a plain string: named from its digest
    openai_backend = config.backend("openai")
    assert openai_backend.api_key is not None
    assert openai_backend.api_key.get_secret_value() == "sk-secret"
    assert "sk-secret" not in repr(config) and "sk-secret" not in str(config.model_dump())


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            MINIMAL.replace("vision: pool", "vision: nowhere"),
            "line 6: routes.vision: names backend",
        ),
        (MINIMAL.replace(", vision: pool", ""), "routes.vision: Field required"),
        (MINIMAL.replace("http://127.0.0.1:9000/v1/", "ftp://x"), "line 5: backends[0].replicas"),
        (MINIMAL + "\nserver: {prot: 1}\n", "server.prot: Extra inputs are not permitted"),
        (MINIMAL + "\nserver: {max_body_size: lots}\n", "not a size"),
        (MINIMAL.replace("replicas:", "api_key: env:NOT_SET_ANYWHERE\n    replicas:"), "NOT_SET"),
        ("just a string", "must hold a mapping"),
        ("a: [unclosed", "not valid YAML"),
    ],
)
def test_problems_name_their_location(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert any(fragment in p for p in caught.value.problems), caught.value.problems


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


def test_duplicate_replica_ids(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        '- {id: a, url: "http://127.0.0.1:9000/v1/"}',
        '- {id: a, url: "http://h:1/v1"}\n      - {id: a, url: "http://h:2/v1"}',
    )
    with pytest.raises(ConfigError, match="unique"):
        load_config(write(tmp_path, text))


def test_sizes() -> None:
    assert parse_size("32MiB") == 32 << 20
    assert parse_size("512k") == 512 << 10
    assert parse_size(100) == 100


def test_embedded_default_routes_each_type_to_its_own_simulator() -> None:
    pools = {
        f"sim-{t}": [(f"sim-{t}-0", "http://127.0.0.1:1/v1")]
        for t in ("text", "code", "json", "vision")
    }
    config = embedded_config(pools)
    assert {t: b.name for t, b in config.routing_table().items()} == {
        t: f"sim-{t}" for t in ("text", "code", "json", "vision")
    }


def test_cli_overrides_fill_an_empty_section(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL + "\nserver:\n"), server={"port": 9999})
    assert config.server.port == 9999


FALLBACKS = """
backends:
  - name: first
    replicas:
      - {id: a, url: "http://10.0.0.1:8000/v1"}
      - {id: b, url: "https://10.0.0.2/v1", metrics: "http://10.0.0.2:9100/metrics"}
  - name: second
    metrics: off
    replicas:
      - {id: c, url: "http://10.0.0.3:8000/v1"}
routes: {text: [first, second], code: first, json: [second], vision: first}
"""


def test_routes_take_fallback_lists_and_metrics_sources(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FALLBACKS))
    assert config.routes.pools_for("text") == ["first", "second"]
    assert config.routes.pools_for("code", effort="high") == ["first"]
    assert config.routes.backend_for("json") == "second"
    first, second = config.backends
    assert first.metrics_url(first.replicas[0]) == "http://10.0.0.1:8000/metrics"
    assert first.metrics_url(first.replicas[1]) == "http://10.0.0.2:9100/metrics"
    assert second.metrics_url(second.replicas[0]) is None  # YAML's bare off
    assert config.routing.retries == 2 and config.load.interval < 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("text: [first, first]", "lists a backend twice"),
        ("text: [first, nope]", "'nope', which is not defined"),
        ("text: []", "at least 1 item"),
    ],
)
def test_bad_fallback_lists_are_refused(tmp_path: Path, change: str, message: str) -> None:
    text = FALLBACKS.replace("text: [first, second]", change)
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert message in str(caught.value)


def test_bad_metrics_sources_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, FALLBACKS.replace("metrics: off", "metrics: sometimes")))
    assert "auto, off, or an http" in str(caught.value)
    shared_url = FALLBACKS.replace(
        "  - name: first\n", "  - name: first\n    metrics: http://x/metrics\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, shared_url))
    assert "fits one replica only" in str(caught.value)
