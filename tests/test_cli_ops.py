"""The command line as an operator meets it: version, help, check-config, logs, workers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from router import __version__
from router.cli import main

from .conftest import RedisServer, free_port
from .test_cli import EXAMPLE, running

MINIMAL = """\
backends:
  - name: pool
    replicas:
      - {id: a, url: "http://127.0.0.1:9000/v1"}
routes: {text: pool, code: pool, json: pool, vision: pool}
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "router.yaml"
    path.write_text(text)
    return str(path)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"di-router {__version__}"


@pytest.mark.parametrize("command", ["serve", "sim", "check-config"])
def test_help_shows_defaults_without_markup(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "``" not in out
    if command == "sim":
        assert "(default: 9000)" in out and "(default: 15.0)" in out
    if command == "serve":
        assert "--workers" in out and "(default: 1)" in out and "--log-format" in out
    if command == "check-config":
        assert "--no-env" in out


def test_example_config_passes_without_its_secrets(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("DI_ROUTER_API_KEY", "OPENAI_API_KEY", "DI_ROUTER_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    assert main(["check-config", str(EXAMPLE)]) == 1
    assert "DI_ROUTER_API_KEY is not set" in capsys.readouterr().err
    assert main(["check-config", "--no-env", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert ": OK" in out and "warning" not in out
    assert re.search(r"^text +vllm-llama ", out, re.M)


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (MINIMAL + "cache: {redis_url: 'http://redis:6379'}\n", "line 6: cache.redis_url: must be"),
        (MINIMAL.replace("http://127.0.0.1", "ftp://x"), "line 4: backends[0].replicas[0].url"),
        (MINIMAL + "tracing: {otlp_endpoint: 'grpc:4317'}\n", "line 6: tracing.otlp_endpoint"),
    ],
)
def test_check_config_checks_url_schemes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: str, fragment: str
) -> None:
    assert main(["check-config", write(tmp_path, edit)]) == 1
    assert fragment in capsys.readouterr().err


def test_each_missing_backend_is_reported_at_its_routes_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = MINIMAL.replace(
        "routes: {text: pool, code: pool, json: pool, vision: pool}",
        "routes:\n  text: pool\n  code: nope\n  json: pool\n  vision: gone\n",
    )
    assert main(["check-config", write(tmp_path, text)]) == 1
    err = capsys.readouterr().err
    assert "line 7: routes.code: names backend 'nope'" in err
    assert "line 9: routes.vision: names backend 'gone'" in err


def test_check_config_warns_about_unrouted_backends_and_urls_without_v1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = MINIMAL.replace(
        "routes:",
        "  - name: spare\n    replicas:\n      - {id: s, url: 'http://127.0.0.1:9001'}\nroutes:",
    )
    assert main(["check-config", write(tmp_path, text)]) == 0
    out = capsys.readouterr().out
    assert "(2 warning(s))" in out
    assert "line 5: backends[1].name: backend 'spare' is defined but no route uses it" in out
    assert "line 7: backends[1].replicas[0].url: replica 's' URL does not end in /v1" in out


def test_serve_reports_a_bad_option_without_a_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["serve", "--redis-url", "http://localhost:6379"]) == 1
    err = capsys.readouterr().err
    assert "cache.redis_url: must be a redis://" in err and "Traceback" not in err
    path = write(tmp_path, MINIMAL + "cache: {redis_url: 'http://redis:6379'}\n")
    result = subprocess.run(
        [sys.executable, "-m", "router", "serve", "--config", path],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "line 6: cache.redis_url" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "url",
    [
        "redis://:s3cret@127.0.0.1:notaport/0",
        "redis://:s3cret@127.0.0.1:99999/0",
        "redis://:s3cret@127.0.0.1:6379/zero",
    ],
)
def test_check_config_refuses_a_redis_url_serve_could_not_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    """Caught when the config is read, by check-config as by serve, and never echoed (the
    URL may carry a password)."""
    path = write(
        tmp_path, MINIMAL + f"cache: {{redis_url: '{url}'}}\nobjects: {{redis_url: '{url}'}}\n"
    )
    assert main(["check-config", path]) == 1
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "cache.redis_url: is not a usable Redis URL" in text
    assert "objects.redis_url: is not a usable Redis URL" in text
    assert "s3cret" not in text and "Traceback" not in text
    assert main(["serve", "--config", path]) == 1
    assert "s3cret" not in capsys.readouterr().err


def test_json_access_log_has_one_line_per_request_without_prompt_text() -> None:
    port = free_port()
    args = ["serve", "--port", str(port), "--log-format", "json", "--log-level", "info"]
    process = subprocess.Popen(
        [sys.executable, "-m", "router", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None and process.stderr is not None
    try:
        for line in process.stdout:
            if "OpenAI(base_url=" in line:
                break
        with openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0
        ) as client:
            client.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": "secret prompt words"}],
                extra_headers={"X-Request-Id": "req-42"},
            )
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    records = [orjson.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert records and all(isinstance(r, dict) for r in records)
    access = [r for r in records if r["logger"] == "router.access"]
    (line,) = [r for r in access if r["request_id"] == "req-42"]
    assert line["status"] == 200 and line["type"] == "text" and line["backend"] == "sim-text"
    assert line["replica"].startswith("sim-text-") and line["cache"] == "none"
    assert line["ttft_ms"] > 0 and line["duration_ms"] >= line["ttft_ms"]
    assert line["prompt_tokens"] > 0 and line["completion_tokens"] > 0
    assert "tenant" in line
    assert "secret prompt words" not in err


def _metric_total(text: str, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def test_workers_share_one_port_and_metrics_add_up() -> None:
    port = free_port()
    args = ["serve", "--port", str(port), "--workers", "2", "--log-level", "warning"]
    with running(*args, ready="workers, pids") as out:
        pids = out[-1].split("pids")[1].strip().split(", ")
        assert len(set(pids)) == 2
        root = f"http://127.0.0.1:{port}"
        body: Any = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        count = 24

        def one(_: int) -> int:
            # A fresh connection each: the kernel spreads connections over the workers.
            request = urllib.request.Request(
                root + "/v1/chat/completions",
                data=orjson.dumps(body),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                return int(response.status)

        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(one, range(count))) == [200] * count
        # Whichever worker answers a scrape reports every worker's requests.
        for _ in range(6):
            with urllib.request.urlopen(root + "/metrics", timeout=30) as response:
                text = response.read().decode()
            assert (
                _metric_total(text, "di_requests_total", endpoint="/v1/chat/completions") == count
            )
            assert (
                _metric_total(text, "gen_ai_server_request_duration_seconds_count", type="text")
                == count
            )
            with urllib.request.urlopen(root + "/dashboard/data", timeout=30) as response:
                figures = orjson.loads(response.read())
            assert figures["requests"]["by_type"] == {"text": count}
            assert figures["ttft_ms"]["count"] == count


def test_tracing_without_the_otel_extra_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from router import tracing

    assert tracing.missing_extra() is None  # installed here
    monkeypatch.setattr("router.cli.missing_extra", lambda: "tracing needs the otel extra")
    assert main(["serve", "--otlp-endpoint", "http://127.0.0.1:4318/v1/traces"]) == 1
    err = capsys.readouterr().err
    assert "tracing needs the otel extra" in err and "Traceback" not in err


def test_workers_agree_on_placement_through_redis(redis_server: RedisServer) -> None:
    port = free_port()
    args = ["serve", "--port", str(port), "--workers", "2", "--redis-url", redis_server.url]
    with running(*args, "--log-level", "warning", ready="workers, pids"):
        url = f"http://127.0.0.1:{port}/v1/chat/completions"

        def send(prefix: int, question: str) -> tuple[str, str]:
            body = {
                "model": "m",
                "max_tokens": 2,
                "messages": [
                    {
                        "role": "system",
                        "content": [
                            {
                                "type": "text",
                                "text": f"prefix {prefix} " * 50,
                                "cache_control": {"type": "ephemeral"},
                            }
                        ],
                    },
                    {"role": "user", "content": question},
                ],
            }
            request = urllib.request.Request(
                url, data=orjson.dumps(body), headers={"Content-Type": "application/json"}
            )
            # A fresh connection per request: the two of a prefix may meet different workers.
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.headers["X-DI-Replica"], response.headers["X-DI-Cache"]

        for prefix in range(8):
            first, cache = send(prefix, "first")
            assert cache == "miss"
            for question in ("second", "third"):
                assert send(prefix, question) == (first, "hit")
