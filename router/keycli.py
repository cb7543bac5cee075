"""``di-router keys create|list|revoke``: API keys kept (hashed) in Redis.

The Redis is the one the router reads keys from: ``objects.redis_url``, else ``cache.redis_url``
of ``--config``, or ``--redis-url`` (with ``--key-prefix``). A created key is printed once; only
its SHA-256 digest is stored. Routers see new and revoked keys within
``server.key_cache_seconds`` (they cache lookups that briefly).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from router.config import REQUEST_TYPES, TENANT_NAME, ConfigError, load_config
from router.keystore import KeyRecord, RedisKeyStore
from router.store import StoreUnavailable

Action = Callable[[RedisKeyStore, argparse.Namespace], Awaitable[int]]


def add_keys_commands(keys: argparse.ArgumentParser) -> None:
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--config", help="router config (its objects/cache Redis and key prefix)")
    where.add_argument("--redis-url", help="Redis URL (instead of --config)")
    where.add_argument("--key-prefix", default=None, help="Redis key prefix (default di:)")
    actions = keys.add_subparsers(dest="keys_command", required=True)

    create = actions.add_parser("create", parents=[where], help="create a key; printed once")
    create.add_argument("--name", required=True, help="the tenant name (owns its objects)")
    create.add_argument("--rpm", type=int, default=None, help="requests per minute")
    create.add_argument("--tpm", type=int, default=None, help="tokens per minute")
    create.add_argument("--allowed-types", default=None, help=f"comma list of {REQUEST_TYPES}")
    create.add_argument("--allowed-backends", default=None, help="comma list of backend names")
    create.set_defaults(run=_run_keys, action=_create)

    listing = actions.add_parser("list", parents=[where], help="list keys (names, never keys)")
    listing.set_defaults(run=_run_keys, action=_list)

    revoke = actions.add_parser("revoke", parents=[where], help="revoke a tenant's key")
    revoke.add_argument("name")
    revoke.set_defaults(run=_run_keys, action=_revoke)


def _run_keys(args: argparse.Namespace) -> int:
    try:
        url, prefix = _redis_of(args)
    except (ConfigError, ValueError) as exc:
        print(f"di-router keys: {exc}", file=sys.stderr)
        return 1
    action: Action = args.action

    async def run() -> int:
        redis = Redis.from_url(url, socket_connect_timeout=5)
        try:
            return await action(RedisKeyStore(redis, key_prefix=prefix, timeout=5), args)
        except StoreUnavailable as exc:
            print(f"di-router keys: Redis unavailable ({exc})", file=sys.stderr)
            return 1
        finally:
            await redis.aclose()

    return asyncio.run(run())


def _redis_of(args: argparse.Namespace) -> tuple[str, str]:
    if args.config:
        config = load_config(args.config)
        url = config.objects.redis_url or config.cache.redis_url
        if url is None:
            raise ValueError(f"{args.config} configures no Redis (objects.redis_url)")
        return url.get_secret_value(), args.key_prefix or config.cache.key_prefix
    if not args.redis_url:
        raise ValueError("give --config FILE or --redis-url URL")
    return args.redis_url, args.key_prefix or "di:"


def _names(raw: str | None, known: tuple[str, ...] | None = None) -> frozenset[str] | None:
    if raw is None:
        return None
    names = frozenset(n.strip() for n in raw.split(",") if n.strip())
    unknown = names - set(known) if known is not None else set()
    if unknown:
        raise ValueError(f"unknown: {', '.join(sorted(unknown))}")
    return names


async def _create(store: RedisKeyStore, args: argparse.Namespace) -> int:
    if not re.match(TENANT_NAME, args.name):
        print(f"di-router keys: invalid name {args.name!r}", file=sys.stderr)
        return 1
    for limit in (args.rpm, args.tpm):
        if limit is not None and limit <= 0:
            print("di-router keys: --rpm and --tpm must be positive", file=sys.stderr)
            return 1
    try:
        record = KeyRecord(
            name=args.name,
            rpm=args.rpm,
            tpm=args.tpm,
            allowed_types=_names(args.allowed_types, (*REQUEST_TYPES, "document", "long")),
            allowed_backends=_names(args.allowed_backends),
        )
        key = await store.create(record)
    except ValueError as exc:
        print(f"di-router keys: {exc}", file=sys.stderr)
        return 1
    print(f"created key for {args.name} (shown once, store it now):")
    print(key)
    return 0


async def _list(store: RedisKeyStore, args: argparse.Namespace) -> int:
    print(f"{'name':<24} {'rpm':>8} {'tpm':>10} {'types':<24} {'backends':<20} created")
    for r in await store.list():
        created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(r.created))
        types = ",".join(sorted(r.allowed_types)) if r.allowed_types is not None else "all"
        backends = ",".join(sorted(r.allowed_backends)) if r.allowed_backends is not None else "all"
        print(
            f"{r.name:<24} {r.rpm or '-':>8} {r.tpm or '-':>10} {types:<24} {backends:<20} "
            f"{created}"
        )
    return 0


async def _revoke(store: RedisKeyStore, args: argparse.Namespace) -> int:
    if not await store.revoke(args.name):
        print(f"di-router keys: no key named {args.name!r}", file=sys.stderr)
        return 1
    print(f"revoked the key of {args.name}")
    return 0
