"""The hostile-input corpus (tests/data/hostile_requests.yaml), sent as raw bytes.

Each case must get its 4xx in the OpenAI envelope (never a 500, never plain text), the router's
own ``Server`` name (no version banner), and the router must serve a normal request right after.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from router.config import RouterConfig

from .conftest import Stack, start_stack, stop_stack

CORPUS = Path(__file__).parent / "data" / "hostile_requests.yaml"
API_KEY = "sk-test"


def _cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = yaml.safe_load(CORPUS.read_text(encoding="utf-8"))
    return cases


def _edit(config: RouterConfig) -> RouterConfig:
    server = config.server.model_validate(
        {
            **config.server.model_dump(),
            "api_keys": [API_KEY],
            "max_body_size": 1 << 20,
            "body_timeout": 1.0,
        }
    )
    return config.model_copy(update={"server": server})


@pytest.fixture(scope="module")
def guarded() -> Iterator[Stack]:
    live = start_stack(edit=_edit)
    yield live
    stop_stack(live)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def _bytes(text: str) -> bytes:
    """A corpus string as bytes: each character is one byte (YAML's "\\xff" is 0xff)."""
    return text.encode("latin-1")


def _body(case: dict[str, Any]) -> bytes:
    if "json" in case:
        return orjson.dumps(case["json"])
    if "raw" in case:
        return _bytes(case["raw"])
    if "gen" not in case:
        return b""
    gen = case["gen"]
    if "nest" in gen:
        filler = "[" * gen["nest"] + "]" * gen["nest"]
    else:
        filler = ",".join([gen["repeat"]] * gen["count"])
    return _bytes(gen["template"].replace("@", filler))


def _header_value(value: str) -> str:
    # "@N": a value of N characters, for header-size cases.
    return "x" * int(value[1:]) if value.startswith("@") and value[1:].isdigit() else value


def request_bytes(case: dict[str, Any]) -> bytes:
    body = _body(case)
    headers = {
        "Host": "127.0.0.1",
        "Content-Type": "application/json",
        "Authorization": f"Bearer {API_KEY}",
        "Connection": "close",
    }
    if case.get("gzip"):
        headers["Content-Encoding"] = "gzip"  # and a body that is not gzip
    for name, value in (case.get("headers") or {}).items():
        headers[name] = _header_value(value)
    if "Transfer-Encoding" not in headers:
        headers.setdefault("Content-Length", str(len(body)))
    method = case.get("method", "POST")
    path = case.get("path", "/v1/chat/completions")
    head = f"{method} {path} HTTP/1.1\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items() if v != "")
    return _bytes(head + "\r\n") + body


async def send_raw(stack: Stack, data: bytes, seconds: float = 20) -> Answer:
    port = int(stack.base_url.rsplit(":", 1)[1].split("/", 1)[0])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(seconds):
            writer.write(data)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            length = headers.get("content-length")
            body = await (reader.readexactly(int(length)) if length else reader.read())
    finally:
        writer.close()
    return Answer(status, headers, body)


async def serves(stack: Stack) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            stack.base_url + "/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "still there?"}]},
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as response,
    ):
        assert response.status == 200
        assert (await response.json())["choices"]


@pytest.mark.parametrize("case", _cases(), ids=lambda case: case["name"])
async def test_hostile_request(guarded: Stack, case: dict[str, Any]) -> None:
    answer = await send_raw(guarded, request_bytes(case))
    expect = case["expect"]
    assert answer.status == expect["status"], answer.body[:300]
    assert answer.headers.get("server") == "di-router"
    assert answer.headers["content-type"].startswith("application/json")
    envelope = orjson.loads(answer.body)
    assert set(envelope) == {"error"}
    error = envelope["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if "param" in expect:
        assert error["param"] == expect["param"]
    if "code" in expect:
        assert error["code"] == expect["code"]
    await serves(guarded)


def test_every_case_is_named_once() -> None:
    names = [case["name"] for case in _cases()]
    assert len(names) == len(set(names))
    assert len(names) >= 80


async def test_paths_and_ids_are_escaped_in_logs(
    guarded: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    forged = "/v1/chat/completions/x%0A2026-12-01 00:00:00 INFO router.app: request forged"
    case = {"method": "GET", "path": forged.replace(" ", "%20"), "json": {}}
    answer = await send_raw(guarded, request_bytes(case))
    assert answer.status == 404
    lines = [r.getMessage() for r in caplog.records]
    assert not any(line.startswith("2026-12-01") or "\n" in line for line in lines)
    assert any("%0A" in line for line in lines)


async def test_gzip_body_that_is_gzip_is_accepted(guarded: Stack) -> None:
    chat = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    body = gzip.compress(orjson.dumps(chat))
    answer = await send_raw(guarded, request_bytes({"raw": body.decode("latin-1"), "gzip": True}))
    assert answer.status == 200
