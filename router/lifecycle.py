"""Shutdown with a deadline: stop accepting, report unready, let requests finish, cut the rest.

On SIGTERM an orchestrator gives a pod a grace period (Kubernetes: 30 s) before SIGKILL. A cut
by SIGKILL leaves a streaming client with half an answer and no error. So ``drain``:

1. marks the process draining (``/ready`` answers 503) and stops listening;
2. closes idle keep-alive connections, and lets every request in progress run for up to
   ``server.shutdown_grace`` seconds;
3. cancels what is still running: the request middleware sees ``ending`` and closes a stream
   with an error event and ``[DONE]`` (a request without a response yet gets a 503 envelope);
4. then cleans up the application, and the process exits within the grace plus a moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from aiohttp import web

log = logging.getLogger(__name__)

# Time the cut requests get to write their error tails before the application is cleaned up.
_TAIL_SECONDS = 2.0


class Lifecycle:
    """This process's requests in progress, and whether it is shutting down."""

    def __init__(self) -> None:
        self.draining = False  # SIGTERM seen: /ready is 503
        self.ending = False  # the grace is over: requests still running are being cut
        self._active: set[asyncio.Task[object]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        """Count the current task as a request in progress while the block runs."""
        task = asyncio.current_task()
        if task is None:
            yield
            return
        self._active.add(task)
        self._idle.clear()
        try:
            yield
        finally:
            self._active.discard(task)
            if not self._active:
                self._idle.set()

    @property
    def in_progress(self) -> int:
        return len(self._active)

    async def wait_idle(self, seconds: float) -> bool:
        """True when no request is in progress, within ``seconds``."""
        try:
            async with asyncio.timeout(seconds):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def cut(self) -> int:
        """Cancel every request still in progress; each ends with an error for its client."""
        self.ending = True
        for task in self._active:
            task.cancel("router shutting down")
        return len(self._active)


async def drain(runner: web.AppRunner, lifecycle: Lifecycle, grace: float) -> None:
    """Shut the server down within ``grace`` seconds (plus the tails' moment), then clean up."""
    lifecycle.draining = True
    for site in list(runner.sites):
        await site.stop()
    server = runner.server
    if server is not None:
        # Idle keep-alive connections close now; busy ones after their current response.
        server.pre_shutdown()
    log.info(
        "shutting down: %d request(s) in progress, up to %.0f s to finish",
        lifecycle.in_progress,
        grace,
    )
    if not await lifecycle.wait_idle(grace):
        cut = lifecycle.cut()
        log.warning("shutdown grace over: ending %d request(s) with an error", cut)
        await lifecycle.wait_idle(_TAIL_SECONDS)
    await runner.cleanup()
