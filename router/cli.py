"""di-router: an OpenAI-compatible LLM router (serve, sim, check-config, bench)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from importlib import metadata
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from router import __version__
from router.app import create_app
from router.config import (
    REQUEST_TYPES,
    ConfigError,
    RouterConfig,
    embedded_config,
    load_config,
)
from router.config_check import check_file
from router.edge import make_runner
from router.keycli import add_keys_commands
from router.keys import LIFECYCLE
from router.lifecycle import drain
from router.logs import LogSettings, configure_logging
from router.tenants import tenant_of
from router.tracing import missing_extra
from router.workers import serve_workers

log = logging.getLogger("router")

EMBEDDED_REPLICAS = 2
_LEVELS = ["debug", "info", "warning", "error"]


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


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown after each option's help, except where there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="di-router", description=__doc__, formatter_class=_HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"di-router {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run the router (embedded simulated backends by default)",
        description="Run the router. Without --config it runs the embedded default: four "
        "simulated backend pools and an in-memory prefix index.",
        formatter_class=_HelpFormatter,
    )
    serve.add_argument("--config", metavar="FILE", help="YAML config (default: embedded)")
    serve.add_argument("--host", default=None, help="listen address (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="listen port (default: 8000)")
    serve.add_argument(
        "--redis-url", metavar="URL", default=None, help="prefix index in Redis: redis[s]://..."
    )
    serve.add_argument(
        "--workers",
        metavar="N",
        type=int,
        default=1,
        help="router processes sharing the port (SO_REUSEPORT)",
    )
    serve.add_argument("--log-level", default="info", choices=_LEVELS, help="log verbosity")
    serve.add_argument(
        "--log-format", default="text", choices=["text", "json"], help="json: one object a line"
    )
    serve.add_argument(
        "--otlp-endpoint",
        metavar="URL",
        default=None,
        help="send traces over OTLP/HTTP, e.g. http://localhost:4318/v1/traces (needs the "
        "otel extra)",
    )
    serve.set_defaults(run=_serve)

    sim = sub.add_parser(
        "sim",
        help="run the simulated OpenAI-compatible LLM server",
        description="Run simulated vLLM-like replicas: replica i listens on port + i.",
        formatter_class=_HelpFormatter,
    )
    sim.add_argument("--host", default="127.0.0.1", help="listen address")
    sim.add_argument("--port", type=int, default=9000, help="replica i listens on port + i")
    sim.add_argument("--replicas", type=int, default=1, help="number of replicas")
    sim.add_argument("--name", default="sim", help="replica ids are NAME-i")
    sim.add_argument("--model", default="sim-model", help="model id the replicas report")
    sim.add_argument("--ttft-ms", type=float, default=15.0, help="fixed time to first token")
    sim.add_argument(
        "--prefill-ms-per-token", type=float, default=0.1, help="prefill time per uncached token"
    )
    sim.add_argument("--itl-ms", type=float, default=15.0, help="time between output tokens")
    sim.add_argument("--output-tokens", type=int, default=64, help="answer length by default")
    sim.add_argument("--cache-blocks", type=int, default=8192, help="KV cache size, in blocks")
    sim.add_argument("--block-size", type=int, default=16, help="tokens per KV cache block")
    sim.add_argument("--log-level", default="info", choices=_LEVELS, help="log verbosity")
    sim.set_defaults(run=_sim)

    check = sub.add_parser(
        "check-config",
        help="validate a config, print the routing table",
        description="Validate a config file: each problem at its line (exit 1), then warnings "
        "and the routing table.",
        formatter_class=_HelpFormatter,
    )
    check.add_argument("file", help="the YAML config")
    check.add_argument(
        "--no-env",
        action="store_true",
        help="leave env:VAR references unresolved (check a file whose secrets are not set)",
    )
    check.set_defaults(run=_check_config)

    # Listed for --help only: main() hands "bench ..." to the benchmark's own parser.
    keys = sub.add_parser("keys", help="API keys kept in Redis: create, list, revoke")
    add_keys_commands(keys)
    sub.add_parser("bench", help="TTFT benchmark (see benchmarks/ttft.py; bench --help)")
    return parser


def _version() -> str:
    try:
        return metadata.version("di-router")
    except metadata.PackageNotFoundError:  # run from a source tree
        return __version__


def _serve(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, args.log_format)
    if args.workers < 1:
        print("di-router: --workers must be at least 1", file=sys.stderr)
        return 2
    listen = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    overrides: dict[str, Any] = {}  # section -> settings
    if listen:
        overrides["server"] = listen
    if args.redis_url:
        overrides["cache"] = {"redis_url": args.redis_url}
    if args.otlp_endpoint:
        overrides["tracing"] = {"otlp_endpoint": args.otlp_endpoint}
    logs = LogSettings(args.log_level, args.log_format)
    try:
        if args.config:
            config = load_config(args.config, **overrides)
        else:
            # Check the options before starting simulators for a config that cannot work.
            _with_overrides(_placeholder_config(), overrides)
    except ConfigError as exc:
        _print_problems(exc)
        return 1
    traced = config.tracing.otlp_endpoint if args.config else args.otlp_endpoint
    if traced and (problem := missing_extra()) is not None:
        print(f"di-router: {problem}", file=sys.stderr)
        return 1
    if not args.config:
        return _run(_serve_embedded(overrides, args.workers, logs))
    if args.workers > 1:
        return _run(serve_workers(config, args.workers, logs, _announce))
    return _run(_serve_config(config))


def _placeholder_config() -> RouterConfig:
    return embedded_config({f"sim-{t}": [(t, "http://127.0.0.1/v1")] for t in REQUEST_TYPES})


def _with_overrides(config: RouterConfig, overrides: dict[str, dict[str, Any]]) -> RouterConfig:
    """``config`` with the command line's settings; ConfigError naming the option if bad."""
    if not overrides:
        return config
    data = config.model_dump(by_alias=True)
    for section, values in overrides.items():
        data[section] = {**data[section], **values}
    try:
        return RouterConfig.model_validate(data)
    except ValidationError as exc:
        problems = [
            ".".join(str(p) for p in err["loc"])
            + ": "
            + str(err["msg"]).removeprefix("Value error, ")
            for err in exc.errors()
        ]
        raise ConfigError("command line", problems) from None


async def _serve_config(
    config: RouterConfig,
    *,
    worker: bool = False,
    on_ready: Callable[[web.AppRunner], None] | None = None,
) -> None:
    """Serve until stopped; ``worker``: one of ``serve --workers N`` (the port shared)."""
    runner = await _start(config, worker=worker)
    try:
        if on_ready is not None:
            on_ready(runner)
        else:
            _announce(config, runner)
        await _until_stopped()
    except BaseException:
        await runner.cleanup()
        raise
    # SIGINT/SIGTERM: stop listening, let requests finish within server.shutdown_grace.
    await drain(runner, runner.app[LIFECYCLE], config.server.shutdown_grace)


async def _serve_embedded(
    overrides: dict[str, dict[str, Any]], workers: int, logs: LogSettings
) -> None:
    """The simulated fleet runs once, in this process; the router (or its workers) use it."""
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
        config = _with_overrides(embedded_config(pools), overrides)
        print("embedded default: simulated backends", ", ".join(pools), flush=True)
        if workers > 1:
            await serve_workers(config, workers, logs, _announce)
        else:
            await _serve_config(config)
    finally:
        for fleet in fleets:
            await fleet.close()


async def _start(config: RouterConfig, *, worker: bool = False) -> web.AppRunner:
    runner = make_runner(create_app(config, worker=worker), config.server)
    await runner.setup()
    site = web.TCPSite(
        runner, config.server.host, config.server.port, backlog=1024, reuse_port=worker or None
    )
    await site.start()
    # Everything alive now lives as long as the process: keep it out of the collector's way,
    # so collections triggered by per-request garbage stay short.
    gc.freeze()
    return runner


def _announce(config: RouterConfig, address: tuple[str, int] | web.AppRunner) -> None:
    if isinstance(address, web.AppRunner):
        host, port = address.addresses[0][:2]
    else:
        host, port = address
    base_url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/v1"
    print(f"di-router listening: base_url={base_url}", flush=True)
    print(
        f"  curl {base_url}/chat/completions -H 'Content-Type: application/json' "
        """-d '{"model": "any", "messages": [{"role": "user", "content": "hi"}]}'""",
        flush=True,
    )
    print(
        f"  python -c \"from openai import OpenAI; c = OpenAI(base_url='{base_url}', "
        "api_key='none'); print(c.chat.completions.create(model='any', "
        "messages=[{'role': 'user', 'content': 'hi'}]).choices[0].message.content)\""
        "   # needs: pip install openai",
        flush=True,
    )


def _sim(args: argparse.Namespace) -> int:
    from router.sim import SimSettings, serve_fleet_forever

    configure_logging(args.log_level)
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
        config, warnings = check_file(args.file, env=not args.no_env)
    except ConfigError as exc:
        _print_problems(exc)
        return 1
    print(f"{args.file}: OK" + (f" ({len(warnings)} warning(s))" if warnings else ""))
    for warning in warnings:
        print(f"  warning: {warning}")
    print(f"{'route':<14} {'backend':<20} {'api':<10} {'model':<24} replicas")
    for route, names in config.routes.routed().items():
        backend = config.backend(names[0])
        replicas = ", ".join(r.id for r in backend.replicas)
        model = backend.model or "(client's model id)"
        print(f"{route:<14} {backend.name:<20} {backend.api:<10} {model:<24} {replicas}")
        for fallback in names[1:]:
            print(f"{'':<14} then {fallback}")
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
