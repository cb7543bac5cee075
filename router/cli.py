"""``di-router``: serve, sim, check-config, bench."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from aiohttp import web

from router.app import create_app
from router.config import (
    REQUEST_TYPES,
    CacheConfig,
    ConfigError,
    RouterConfig,
    embedded_config,
    load_config,
)
from router.edge import make_runner
from router.keycli import add_keys_commands
from router.keys import LIFECYCLE
from router.lifecycle import drain
from router.tenants import tenant_of

log = logging.getLogger("router")

EMBEDDED_REPLICAS = 2


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["bench"]:
        # The benchmark has its own parser; argparse would refuse options meant for it.
        from router.bench.cli import main as bench_main

        return bench_main(args_list[1:])
    parser = _parser()
    args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help()
        return 2
    command: Callable[[argparse.Namespace], int] = args.run
    return command(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="di-router", description=__doc__)
    sub = parser.add_subparsers(dest="command")

    serve = sub.add_parser("serve", help="run the router (embedded simulated backends by default)")
    serve.add_argument("--config", help="YAML config; without it, the embedded default runs")
    serve.add_argument("--host", default=None, help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="listen port (default 8000)")
    serve.add_argument("--redis-url", default=None, help="prefix store in Redis (redis[s]://...)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(run=_serve)

    sim = sub.add_parser("sim", help="run the simulated OpenAI-compatible LLM server")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=9000, help="replica i listens on port + i")
    sim.add_argument("--replicas", type=int, default=1)
    sim.add_argument("--name", default="sim", help="replica ids are NAME-i")
    sim.add_argument("--model", default="sim-model")
    sim.add_argument("--ttft-ms", type=float, default=15.0, help="fixed time to first token")
    sim.add_argument("--prefill-ms-per-token", type=float, default=0.1)
    sim.add_argument("--itl-ms", type=float, default=15.0, help="time between output tokens")
    sim.add_argument("--output-tokens", type=int, default=64)
    sim.add_argument("--cache-blocks", type=int, default=8192)
    sim.add_argument("--block-size", type=int, default=16)
    sim.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sim.set_defaults(run=_sim)

    check = sub.add_parser("check-config", help="validate a config, print the routing table")
    check.add_argument("file")
    check.set_defaults(run=_check_config)

    keys = sub.add_parser("keys", help="API keys kept in Redis: create, list, revoke")
    add_keys_commands(keys)

    # Listed for --help only: main() hands "bench ..." to the benchmark's own parser.
    sub.add_parser("bench", help="TTFT benchmark (see benchmarks/ttft.py; bench --help)")
    return parser


def _serve(args: argparse.Namespace) -> int:
    _logging(args.log_level)
    listen = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if args.config:
        overrides: dict[str, dict[str, Any]] = {}
        if listen:
            overrides["server"] = listen
        if args.redis_url:
            overrides["cache"] = {"redis_url": args.redis_url}
        try:
            config = load_config(args.config, **overrides)
        except ConfigError as exc:
            _print_problems(exc)
            return 1
        return _run(_serve_config(config))
    return _run(_serve_embedded(listen, args.redis_url))


async def _serve_config(config: RouterConfig) -> None:
    runner = await _start(config)
    _announce(config, runner)
    await _serve_until_stopped(config, runner)


async def _serve_until_stopped(config: RouterConfig, runner: web.AppRunner) -> None:
    """Serve until SIGINT/SIGTERM, then drain within ``server.shutdown_grace``."""
    try:
        await _until_stopped()
    except BaseException:
        await runner.cleanup()
        raise
    await drain(runner, runner.app[LIFECYCLE], config.server.shutdown_grace)


async def _serve_embedded(listen: dict[str, Any], redis_url: str | None) -> None:
    from router.sim import SimSettings, start_fleet

    fleets = []
    try:
        for request_type in REQUEST_TYPES:
            fleet = await start_fleet(
                SimSettings(model=f"sim-{request_type}"),
                replicas=EMBEDDED_REPLICAS,
                name=f"sim-{request_type}",
            )
            fleets.append(fleet)
        pools = {
            f"sim-{t}": [(r.id, r.url) for r in fleet.replicas]
            for t, fleet in zip(REQUEST_TYPES, fleets, strict=True)
        }
        config = embedded_config(pools, **listen)
        if redis_url:
            cache = CacheConfig.model_validate(
                {**config.cache.model_dump(), "redis_url": redis_url}
            )
            config = config.model_copy(update={"cache": cache})
        runner = await _start(config)
        print("embedded default: simulated backends", ", ".join(pools), flush=True)
        _announce(config, runner)
        await _serve_until_stopped(config, runner)
    finally:
        for fleet in fleets:
            await fleet.close()


async def _start(config: RouterConfig) -> web.AppRunner:
    runner = make_runner(create_app(config), config.server)
    await runner.setup()
    site = web.TCPSite(runner, config.server.host, config.server.port, backlog=1024)
    await site.start()
    # Everything alive now lives as long as the process: keep it out of the collector's way,
    # so collections triggered by per-request garbage stay short.
    gc.freeze()
    return runner


def _announce(config: RouterConfig, runner: web.AppRunner) -> None:
    host, port = runner.addresses[0][:2]
    base_url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/v1"
    print(f"di-router listening: base_url={base_url}", flush=True)
    print(
        f"  python -c \"from openai import OpenAI; c = OpenAI(base_url='{base_url}', "
        "api_key='none'); print(c.chat.completions.create(model='any', "
        "messages=[{'role': 'user', 'content': 'hi'}]).choices[0].message.content)\"",
        flush=True,
    )


def _sim(args: argparse.Namespace) -> int:
    from router.sim import SimSettings, serve_fleet_forever

    _logging(args.log_level)
    settings = SimSettings(
        model=args.model,
        ttft_ms=args.ttft_ms,
        prefill_ms_per_token=args.prefill_ms_per_token,
        itl_ms=args.itl_ms,
        output_tokens=args.output_tokens,
        cache_blocks=args.cache_blocks,
        block_size=args.block_size,
    )
    return _run(
        _until_cancelled_or_stopped(
            serve_fleet_forever(
                settings, host=args.host, port=args.port, replicas=args.replicas, name=args.name
            )
        )
    )


def _check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        _print_problems(exc)
        return 1
    print(f"{args.file}: OK")
    print(f"{'type':<8} {'backend':<20} {'api':<10} {'model':<24} replicas")
    for request_type, backend in config.routing_table().items():
        replicas = ", ".join(r.id for r in backend.replicas)
        model = backend.model or "(client's model id)"
        print(f"{request_type:<8} {backend.name:<20} {backend.api:<10} {model:<24} {replicas}")
        for fallback in config.routes.pools_for(request_type)[1:]:
            print(f"{'':<8} then {fallback}")
    store = "redis" if config.cache.redis_url else "memory"
    print(f"routing policy: {config.routing.policy}; prefix store: {store}")
    if config.server.api_keys or config.server.redis_keys:
        names = [tenant_of(k).name for k in config.server.api_keys]
        extra = " (+ keys in Redis)" if config.server.redis_keys else ""
        print(f"tenants: {', '.join(names) or 'none in the file'}{extra}")
    return 0


def _print_problems(exc: ConfigError) -> None:
    print(f"{exc.source}: invalid config", file=sys.stderr)
    for problem in exc.problems:
        print(f"  - {problem}", file=sys.stderr)


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


async def _until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _until_cancelled_or_stopped(work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` until it ends or SIGINT/SIGTERM arrives, then cancel it cleanly."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(_until_stopped())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    for pending in (task, stopper):
        pending.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _run(main: Coroutine[Any, Any, None]) -> int:
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    try:
        with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main)
    except OSError as exc:
        print(f"di-router: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0
