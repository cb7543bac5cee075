"""The command line: serve (embedded default, as a user runs it), sim, check-config."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest

from router.cli import main

from .conftest import free_port

EXAMPLE = Path(__file__).parent.parent / "deploy" / "config.example.yaml"


@contextmanager
def running(*args: str, ready: str) -> Iterator[list[str]]:
    """Run ``python -m router ARGS`` until it prints ``ready``; stop it afterwards."""
    process = subprocess.Popen(
        [sys.executable, "-m", "router", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    lines: list[str] = []
    try:
        for line in process.stdout:
            lines.append(line)
            if ready in line:
                break
        else:
            raise AssertionError("exited before ready:\n" + "".join(lines))
        yield lines
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(15) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            process.stdout.close()


def test_serve_runs_the_embedded_default() -> None:
    port = free_port()
    with running(
        "serve", "--port", str(port), "--log-level", "warning", ready="OpenAI(base_url="
    ) as out:
        base_url = f"http://127.0.0.1:{port}/v1"
        assert any(base_url in line for line in out)
        assert any("OpenAI(base_url=" in line for line in out)
        with openai.OpenAI(base_url=base_url, api_key="none", max_retries=0) as client:
            raw = client.chat.completions.with_raw_response.create(
                model="any", messages=[{"role": "user", "content": "hi"}], max_tokens=3
            )
        assert raw.headers["X-DI-Backend"] == "sim-text"
        assert raw.parse().model == "any"


def test_sim_serves_replicas_on_consecutive_ports() -> None:
    port = free_port()
    args = ["sim", "--port", str(port), "--replicas", "1", "--ttft-ms", "0", "--itl-ms", "0"]
    with running(*args, ready="sim-0"):
        base_url = f"http://127.0.0.1:{port}/v1"
        with openai.OpenAI(base_url=base_url, api_key="x", max_retries=0) as client:
            assert [m.id for m in client.models.list()] == ["sim-model"]


def test_check_config_prints_the_routing_table(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("DI_ROUTER_API_KEY", "OPENAI_API_KEY", "TEAM_A_KEY"):
        monkeypatch.setenv(name, f"x-{name}")
    monkeypatch.setenv("DI_ROUTER_REDIS_URL", "redis://redis:6379/0")
    monkeypatch.setenv("DI_ROUTER_OBJECTS_REDIS_URL", "redis://redis-objects:6379/0")
    assert main(["check-config", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "tenants: key-" in out and ", team-a (+ keys in Redis)" in out
    assert "x-TEAM_A_KEY" not in out
    assert re.search(r"^code +sglang-coder ", out, re.M)
    assert re.search(r"^ +then vllm-llama$", out, re.M)  # code's fallback pool
    assert re.search(r"^vision +ollama-vision ", out, re.M)
    assert re.search(r"^code@high +vllm-reasoner ", out, re.M)


def test_check_config_reports_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("backends: []\nroutes: {text: a}\n")
    assert main(["check-config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "line 1: backends" in err
    assert "routes.code: Field required" in err


def test_serve_with_a_bad_config_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes: 3\n")
    assert main(["serve", "--config", str(bad)]) == 1
    assert "invalid config" in capsys.readouterr().err


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "serve" in capsys.readouterr().out


def test_serve_embedded_with_an_unreachable_redis_still_answers(
    refused_port: Callable[[], int],
) -> None:
    port = free_port()
    redis_url = f"redis://127.0.0.1:{refused_port()}/0"
    args = ["serve", "--port", str(port), "--redis-url", redis_url, "--log-level", "warning"]
    with (
        running(*args, ready="OpenAI(base_url="),
        openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0
        ) as client,
    ):
        marked: Any = [
            {
                "role": "system",
                "content": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}],
            },
            {"role": "user", "content": "hi"},
        ]
        raw = client.chat.completions.with_raw_response.create(model="any", messages=marked)
        assert raw.headers["X-DI-Cache"] == "bypass"
        assert raw.parse().choices[0].message.content
