"""``di-router serve --workers N``: N router processes on one port, each with its own loop.

Each worker binds the port with ``SO_REUSEPORT`` and the kernel spreads new connections over
them; nothing is shared in memory. What must agree across workers already goes through shared
state (the prefix index in Redis) or comes from the backends; metrics use
``prometheus_client``'s multiprocess mode: the parent makes a fresh directory, every worker
writes its figures there, and a scrape of any worker sums them all.

The parent starts the workers (the ``spawn`` method: fresh interpreters, no forked event loop
or sockets), waits until each has bound the port, prints the banner, and stops them all on
SIGINT/SIGTERM. A worker that dies takes the router down with it (exit 1): a supervisor
(systemd, Kubernetes) restarts a whole router more predictably than a half-alive one would
limp on. With the embedded default, the simulated fleet runs once, in the parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable
from multiprocessing.process import BaseProcess

from aiohttp import web
from prometheus_client import multiprocess

from router.config import RouterConfig
from router.logs import LogSettings
from router.metrics import MULTIPROC_ENV

log = logging.getLogger(__name__)

READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
Announce = Callable[[RouterConfig, tuple[str, int]], None]


def _worker_main(
    config: RouterConfig, logs: LogSettings, ready: multiprocessing.connection.Connection
) -> None:
    """One worker: the ordinary single-process server, bound with SO_REUSEPORT."""
    from router.cli import _run, _serve_config

    logs.apply()

    def on_ready(runner: web.AppRunner) -> None:
        ready.send(os.getpid())
        ready.close()

    raise SystemExit(_run(_serve_config(config, worker=True, on_ready=on_ready)))


async def serve_workers(
    config: RouterConfig, workers: int, logs: LogSettings, announce: Announce
) -> None:
    """Run ``workers`` router processes until SIGINT/SIGTERM or until one of them dies."""
    if config.cache.redis_url is None:
        log.warning(
            "%d workers with an in-memory prefix index: each worker keeps its own, so a prefix "
            "may be cached on one replica per worker; set cache.redis_url (or --redis-url) to "
            "share one index",
            workers,
        )
    metrics_dir = tempfile.mkdtemp(prefix="di-router-metrics-")
    previous = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = metrics_dir  # inherited by the workers, read at their import
    holder: socket.socket | None = None
    processes: list[BaseProcess] = []
    try:
        if config.server.port == 0:
            holder, config = _reserve_port(config)
        spawn = multiprocessing.get_context("spawn")
        pipes = []
        for index in range(workers):
            receive, send = spawn.Pipe(duplex=False)
            process = spawn.Process(
                target=_worker_main, args=(config, logs, send), name=f"di-router-worker-{index}"
            )
            process.start()
            send.close()
            processes.append(process)
            pipes.append(receive)
        await asyncio.to_thread(_await_ready, pipes, READY_TIMEOUT)
        if holder is not None:
            holder.close()
            holder = None
        announce(config, (config.server.host, config.server.port))
        print(f"  {workers} workers, pids {', '.join(str(p.pid) for p in processes)}", flush=True)
        if await _until_stopped_or_died(processes):
            raise OSError("a worker process died; stopping the router")
    finally:
        if holder is not None:
            holder.close()
        await asyncio.to_thread(_stop, processes, metrics_dir)
        shutil.rmtree(metrics_dir, ignore_errors=True)
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous


def _reserve_port(config: RouterConfig) -> tuple[socket.socket, RouterConfig]:
    """Port 0 means "any free port", but every worker must get the same one: bind it here
    (with SO_REUSEPORT, never listening) and hand its number to the workers."""
    family = socket.AF_INET6 if ":" in config.server.host else socket.AF_INET
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((config.server.host, 0))
    port = int(holder.getsockname()[1])
    server = config.server.model_copy(update={"port": port})
    return holder, config.model_copy(update={"server": server})


def _await_ready(pipes: list[multiprocessing.connection.Connection], timeout: float) -> None:
    for pipe in pipes:
        try:
            if not pipe.poll(timeout):
                raise OSError("a worker did not start in time")
            pipe.recv()
        except EOFError:
            raise OSError("a worker exited before it was ready (see its message above)") from None
        finally:
            pipe.close()


async def _until_stopped_or_died(processes: list[BaseProcess]) -> bool:
    """Wait for SIGINT/SIGTERM (False) or a worker's exit (True)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    stopped = asyncio.ensure_future(stop.wait())
    died = asyncio.ensure_future(asyncio.to_thread(_wait_any, processes))
    await asyncio.wait({stopped, died}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    return not stop.is_set()


def _wait_any(processes: list[BaseProcess]) -> None:
    multiprocessing.connection.wait([p.sentinel for p in processes])


def _stop(processes: list[BaseProcess], metrics_dir: str) -> None:
    """SIGTERM every worker (each drains as a single router does), then wait; kill stragglers."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(STOP_TIMEOUT)
        if process.is_alive():
            log.warning("worker %s did not stop in time; killing it", process.pid)
            process.kill()
            process.join()
        if process.pid is not None:
            multiprocess.mark_process_dead(process.pid, metrics_dir)  # type: ignore[no-untyped-call]
