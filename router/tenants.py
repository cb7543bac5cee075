"""Who is asking: API keys -> tenants, and what a tenant's identity changes downstream.

A tenant is the holder of a key: its ``name`` owns stored objects, scopes the prefix index and
the backends' KV caches, and carries the key's limits and permissions. Keys come from
``server.api_keys`` (plain strings get the name ``key-<first 8 hex of sha256(key)>``, stable
across restarts and reorderings) and, with ``server.redis_keys``, from Redis (``keystore``).
Without keys there is one anonymous tenant (``ctx.tenant is None``).

Keys are compared as SHA-256 digests with ``hmac.compare_digest`` against every configured key
without stopping early, so timing says nothing about them; a key itself is never logged, put in
a header or an error, or used to derive anything that leaves the process.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from router.config import ApiKeyConfig, RouterConfig
from router.context import RequestContext
from router.errors import Forbidden, ServiceUnavailable, Unauthorized
from router.keystore import RedisKeyStore, key_digest
from router.store import StoreUnavailable

log = logging.getLogger(__name__)

# Where the anonymous tenant's objects live (not a valid tenant name, so never a real one's).
ANONYMOUS = "~"
_NEGATIVE_CACHE = 10_000


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    rpm: int | None = None
    tpm: int | None = None
    allowed_types: frozenset[str] | None = None
    allowed_backends: frozenset[str] | None = None

    @property
    def limited(self) -> bool:
        return self.rpm is not None or self.tpm is not None


def generated_name(key: str) -> str:
    """The tenant name of a key given without one: stable, and reveals nothing useful."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def tenant_of(entry: ApiKeyConfig) -> Tenant:
    secret = entry.key.get_secret_value()
    return Tenant(
        name=entry.name or generated_name(secret),
        rpm=entry.rpm,
        tpm=entry.tpm,
        allowed_types=frozenset(entry.allowed_types) if entry.allowed_types is not None else None,
        allowed_backends=(
            frozenset(entry.allowed_backends) if entry.allowed_backends is not None else None
        ),
    )


class KeyRing:
    """Turns an ``Authorization`` header into a tenant, or raises 401."""

    def __init__(self, config: RouterConfig, redis_keys: RedisKeyStore | None = None) -> None:
        self._keys = [
            (key_digest(e.key.get_secret_value()), tenant_of(e)) for e in config.server.api_keys
        ]
        self._redis = redis_keys
        self._cache_seconds = config.server.key_cache_seconds
        # digest -> (expires, tenant or None): Redis answers, so a burst costs one lookup.
        self._cache: OrderedDict[bytes, tuple[float, Tenant | None]] = OrderedDict()

    @property
    def required(self) -> bool:
        return bool(self._keys) or self._redis is not None

    async def authenticate(self, authorization: str, api_key: str = "") -> Tenant | None:
        """The tenant holding the key; None when no keys are configured.

        The key comes as ``Authorization: Bearer <key>`` (OpenAI's SDKs) or as ``x-api-key``
        (Anthropic's SDKs), passed here as ``api_key``.
        """
        if not self.required:
            return None
        scheme, _, token = authorization.partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else ""
        given = given or api_key.strip()
        if not given:
            raise Unauthorized(
                "Missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'."
            )
        digest = key_digest(given)
        found: Tenant | None = None
        for known, tenant in self._keys:  # no early exit: constant time over the key list
            if hmac.compare_digest(digest, known):
                found = tenant
        if found is None and self._redis is not None:
            found = await self._from_redis(digest)
        if found is None:
            raise Unauthorized("Incorrect API key provided.")
        return found

    async def _from_redis(self, digest: bytes) -> Tenant | None:
        assert self._redis is not None
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            record = await self._redis.lookup(digest.hex())
        except StoreUnavailable:
            # Fail closed: a key that cannot be checked is not let in.
            raise ServiceUnavailable(
                "The key store is unavailable, so the API key cannot be checked; retry shortly."
            ) from None
        tenant = None
        if record is not None:
            tenant = Tenant(
                name=record.name,
                rpm=record.rpm,
                tpm=record.tpm,
                allowed_types=record.allowed_types,
                allowed_backends=record.allowed_backends,
            )
        self._cache[digest] = (now + self._cache_seconds, tenant)
        self._cache.move_to_end(digest)
        while len(self._cache) > _NEGATIVE_CACHE:
            self._cache.popitem(last=False)
        return tenant


def owner(ctx: RequestContext) -> str:
    """The namespace of the tenant's stored objects."""
    return ctx.tenant if ctx.tenant is not None else ANONYMOUS


def check_route(ctx: RequestContext, request_type: str, backend: str) -> None:
    """403 when the key may not send this type of request, or use this backend."""
    if ctx.allowed_types is not None and request_type not in ctx.allowed_types:
        allowed = ", ".join(sorted(ctx.allowed_types)) or "none"
        raise Forbidden(
            f"This API key may not send {request_type!r} requests (allowed: {allowed}).",
            code="request_type_not_allowed",
        )
    if ctx.allowed_backends is not None and backend not in ctx.allowed_backends:
        raise Forbidden(
            f"This API key may not use the backend {backend!r} that serves {request_type!r} "
            "requests.",
            code="backend_not_allowed",
        )


def cache_scope(config: RouterConfig, ctx: RequestContext) -> str | None:
    """The tenant whose prefixes and KV blocks a request may share; None: shared by all."""
    if config.cache.share_across_tenants:
        return None
    return ctx.tenant


def scoped_namespace(namespace: str, scope: str | None) -> str:
    """A prefix-key namespace with the tenant in it, so no tenant can probe another's prefixes."""
    return namespace if scope is None else f"{namespace}\x00tenant:{scope}"


def cache_salt(scope: str | None) -> str | None:
    """vLLM's ``cache_salt`` for a tenant: a digest of its name (never of its key)."""
    if scope is None:
        return None
    return hashlib.sha256(b"di-router cache salt\x00" + scope.encode()).hexdigest()[:32]
