"""Router PROCESSES for tests that claim something about several routers.

Each is ``python -m router serve --config <file>`` from this checkout, listening on a port the
OS picks (``server.port: 0``); the ``base_url=`` line it prints is what we wait for.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import router

_BASE_URL = re.compile(r"base_url=(\S+)")
READY_TIMEOUT_S = 30.0
REQUEST_TYPES = ("text", "code", "json", "vision")


def pool_config(
    replicas: list[tuple[str, str]], *, redis_url: str | None = None, **routing: Any
) -> dict[str, Any]:
    """One pool of ``replicas`` (id, URL) serving every request type."""
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0},
        "backends": [{"name": "pool", "replicas": [{"id": i, "url": u} for i, u in replicas]}],
        "routes": dict.fromkeys(REQUEST_TYPES, "pool"),
        "routing": routing,
    }
    if redis_url is not None:
        # A generous deadline: these tests are about agreement, not Redis latency.
        config["cache"] = {"redis_url": redis_url, "timeout_ms": 500}
    return config


@dataclass
class RouterProcess:
    config: dict[str, Any]
    workdir: Path
    name: str = "router"
    base_url: str = ""
    process: subprocess.Popen[bytes] | None = None
    _lines: queue.Queue[str] = field(default_factory=queue.Queue)
    _reader: threading.Thread | None = None

    def start(self) -> RouterProcess:
        path = self.workdir / f"{self.name}.yaml"
        path.write_text(yaml.safe_dump(self.config), encoding="utf-8")
        checkout = str(Path(router.__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": checkout + os.pathsep + os.environ.get("PYTHONPATH", "")}
        argv = [sys.executable, "-m", "router", "serve", "--config", str(path)]
        self.process = subprocess.Popen(
            [*argv, "--log-level", "warning"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        while True:
            try:
                line = self._lines.get(timeout=READY_TIMEOUT_S)
            except queue.Empty:
                self.stop()
                raise RuntimeError(f"{self.name} did not start in time") from None
            if found := _BASE_URL.search(line):
                self.base_url = found.group(1)
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {line}")

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for raw in self.process.stdout:  # also keeps the pipe drained
            self._lines.put(raw.decode(errors="replace"))
        self._lines.put("")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self._reader is not None:
            self._reader.join(10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None
