"""Running sim replicas as real HTTP servers in the current event loop.

Each replica gets its own AppRunner and TCPSite, hence its own port, KV cache and counters,
exactly as separate vLLM servers would be seen by the router.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import TracebackType

from aiohttp import web

from router.sim.app import create_sim_app
from router.sim.settings import SimSettings

# In-flight sim requests are disposable: do not wait aiohttp's default 60 s for them on close.
SHUTDOWN_TIMEOUT_S = 0.5


@dataclass
class SimReplica:
    """One running replica; `url` is the OpenAI base URL, ending in /v1."""

    id: str
    url: str
    port: int
    app: web.Application
    runner: web.AppRunner = field(repr=False)


class SimFleet:
    """Replicas started by `start_fleet`; close it (or use `async with`) to stop them."""

    def __init__(self, replicas: list[SimReplica]) -> None:
        self.replicas = replicas

    async def close(self) -> None:
        """Stop every replica; safe to call twice."""
        replicas, self.replicas = self.replicas, []
        for replica in replicas:
            await replica.runner.cleanup()

    async def __aenter__(self) -> SimFleet:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


def _base_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v1"


async def _start_replica(
    settings: SimSettings, replica_id: str, host: str, port: int
) -> SimReplica:
    app = create_sim_app(settings, replica_id=replica_id)
    # handler_cancellation: a client leaving before its first token cancels the wait.
    runner = web.AppRunner(
        app, handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT_S, access_log=None
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = int(runner.addresses[0][1])
    except BaseException:
        await runner.cleanup()
        raise
    return SimReplica(
        id=replica_id, url=_base_url(host, bound_port), port=bound_port, app=app, runner=runner
    )


async def start_fleet(
    settings: SimSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    replicas: int = 1,
    name: str = "sim",
) -> SimFleet:
    """Start `replicas` sim servers.

    Replica i listens on port + i; port 0 means each replica takes a free port chosen by the
    OS. Replica ids are f"{name}-{i}".
    """
    if replicas < 1:
        raise ValueError("a fleet needs at least one replica")
    fleet = SimFleet([])
    try:
        for index in range(replicas):
            replica_port = port + index if port else 0
            replica = await _start_replica(settings, f"{name}-{index}", host, replica_port)
            fleet.replicas.append(replica)
    except BaseException:
        await fleet.close()
        raise
    return fleet


async def serve_fleet_forever(
    settings: SimSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    replicas: int = 1,
    name: str = "sim",
) -> None:
    """Run a fleet until cancelled, printing one `<id> <base url>` line per replica."""
    fleet = await start_fleet(settings, host=host, port=port, replicas=replicas, name=name)
    try:
        for replica in fleet.replicas:
            print(f"{replica.id} {replica.url}", flush=True)
        await asyncio.Event().wait()
    finally:
        await fleet.close()
