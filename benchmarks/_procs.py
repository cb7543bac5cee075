"""The benchmarks' processes: simulator, router, pass-through, py-spy; always stopped.

``start_stack`` starts a simulator with di-router and ``passthrough.py`` in front of it.

Each child listens on a port the OS picks (``--port 0``) and announces its URL on stdout; the
announcement, not a fixed port, is what we wait for, so two runs never race for a port. Output
goes to a log file rather than a pipe: a chatty child can never block on a full pipe, and the
log's tail explains a child that dies before it is ready.

``py-spy`` is one more child: ``start_py_spy`` samples a process into a file of collapsed
stacks, and ``read_py_spy`` reads that file back.

Children get their own session, so a Ctrl-C in the terminal reaches only the benchmark, which
then stops them in order (terminate, then kill); on Linux they also get SIGTERM if the
benchmark itself dies without cleaning up.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import orjson

STOP_TIMEOUT_S = 5.0
READY_TIMEOUT_S = 30.0
_PR_SET_PDEATHSIG = 1
_SIM_READY = re.compile(r"^\S+ (http://\S+/v1)$", re.MULTILINE)
_PROXY_READY = re.compile(r"base_url=(http://\S+/v1)")
_PY_SPY_READY = re.compile(r"(Sampling process)")
_FRAME = re.compile(r"^(?P<func>.*) \((?P<path>.*):\d+\)$")


@dataclass(frozen=True, slots=True)
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    announced: str  # group 1 of the ready line: a base URL, for servers

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass(frozen=True, slots=True)
class Stack:
    """A simulator with both proxies in front of it."""

    sim: Child
    passthrough: Child
    router: Child

    def proxy(self, target: str) -> Child:
        return self.router if target == "di-router" else self.passthrough

    def pids(self, target: str) -> dict[str, int]:
        """The processes that serve a request to ``target``, by role: sim, proxy."""
        pids = {"sim": self.sim.pid}
        if target != "direct":
            pids["proxy"] = self.proxy(target).pid
        return pids

    def url(self, target: str) -> str:
        """The chat completions URL of a target: direct, passthrough or di-router."""
        child = self.sim if target == "direct" else self.proxy(target)
        return child.announced + "/chat/completions"


class ChildError(RuntimeError):
    """A child exited or stayed silent before announcing itself."""


class Children:
    """The processes of one benchmark run; leaving the ``with`` block stops them all."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._children: list[Child] = []

    def __enter__(self) -> Children:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    def start(
        self,
        name: str,
        argv: list[str],
        ready: re.Pattern[str],
        *,
        timeout: float = READY_TIMEOUT_S,
    ) -> Child:
        """Run ``argv`` and return once a stdout line matches ``ready`` (group 1 is the URL)."""
        log = self._log_dir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        try:
            url = _wait_ready(proc, log, ready, timeout)
        except BaseException:
            stop(proc)
            raise
        child = Child(name, proc, log, url)
        self._children.append(child)
        return child

    def stop(self, child: Child) -> None:
        stop(child.proc)
        self._children.remove(child)

    def stop_all(self) -> None:
        # Reverse order: proxies go before the simulator they point at.
        while self._children:
            stop(self._children.pop().proc)


def start_stack(
    children: Children, workdir: Path, tag: str, ttft_ms: float, output_tokens: int
) -> Stack:
    """A one-replica simulator with no delay but ``ttft_ms``, then both proxies in front."""
    sim_argv = [sys.executable, "-m", "router", "sim", "--host", "127.0.0.1", "--port", "0"]
    sim_argv += ["--replicas", "1", "--ttft-ms", str(ttft_ms), "--itl-ms", "0"]
    sim_argv += ["--prefill-ms-per-token", "0", "--output-tokens", str(output_tokens)]
    sim = children.start(f"sim-{tag}", [*sim_argv, "--log-level", "warning"], _SIM_READY)
    config = workdir / f"router-{tag}.yaml"
    config.write_bytes(  # JSON is YAML, and spares us quoting rules
        orjson.dumps(
            {
                "server": {"host": "127.0.0.1", "port": 0},
                "backends": [{"name": "up", "replicas": [{"id": "up-0", "url": sim.announced}]}],
                "routes": {"text": "up", "code": "up", "json": "up", "vision": "up"},
            }
        )
    )
    serve = ["serve", "--config", str(config), "--log-level", "warning"]
    router = children.start(f"router-{tag}", [sys.executable, "-m", "router", *serve], _PROXY_READY)
    passthrough_argv = [sys.executable, str(Path(__file__).with_name("passthrough.py"))]
    passthrough_argv += ["--upstream", sim.announced.removesuffix("/v1"), "--host", "127.0.0.1"]
    passthrough = children.start(f"passthrough-{tag}", passthrough_argv, _PROXY_READY)
    return Stack(sim, passthrough, router)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate, wait a little, then kill; never leaves a zombie behind."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


def start_py_spy(children: Children, name: str, pid: int, out: Path, seconds: float) -> Child:
    """Sample ``pid`` for ``seconds`` with py-spy, which writes raw stacks to ``out`` and exits."""
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        raise ChildError("profiling needs py-spy on PATH (pip install py-spy)")
    # --nonblocking reads stacks without pausing the process, which keeps its timing honest;
    # idle samples are not recorded, so a window longer than the load costs nothing.
    argv = [py_spy, "record", "--pid", str(pid), "--rate", "250", "--nonblocking"]
    argv += ["--format", "raw", "-o", str(out), "--duration", str(round(seconds))]
    return children.start(name, argv, _PY_SPY_READY)


def read_py_spy(path: Path) -> Iterator[tuple[list[str], int]]:
    """Each sampled stack, outermost frame first, as ``file:function`` names; with its count."""
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            yield [_frame_name(frame) for frame in stack.split(";")], int(count)


def _frame_name(frame: str) -> str:
    match = _FRAME.match(frame)
    if match is None:
        return frame
    path = match["path"].split("site-packages/")[-1]  # the package-relative part
    if path.startswith("/"):
        path = Path(path).name
    return f"{path}:{match['func']}"


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _wait_ready(
    proc: subprocess.Popen[bytes], log: Path, ready: re.Pattern[str], timeout: float
) -> str:
    deadline = time.monotonic() + timeout
    while True:
        match = ready.search(log.read_text(errors="replace"))
        if match:
            return match.group(1)
        if proc.poll() is not None:
            raise ChildError(f"{log.stem} exited with {proc.returncode}:\n{log_tail(log)}")
        if time.monotonic() > deadline:
            raise ChildError(f"{log.stem} not ready after {timeout:.0f}s:\n{log_tail(log)}")
        time.sleep(0.05)  # polling a log file; there is nothing to wait on


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel for SIGTERM when we die.
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
