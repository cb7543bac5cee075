"""The router's configuration: pydantic models of the YAML file, and how it is loaded.

Every model is frozen and forbids unknown keys, so a typo in the file is an error with its
location rather than a silently ignored setting. Secrets are given as ``env:VAR_NAME`` and
resolved at load time into ``SecretStr``, which never prints its value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from redis.connection import parse_url

REQUEST_TYPES: tuple[str, ...] = ("text", "code", "json", "vision")
# Types that exist only when routed (``routes.document``, ``routes.long``).
OPTIONAL_TYPES: tuple[str, ...] = ("document", "long")
# Request effort levels (X-DI-Effort, ?effort=, reasoning_effort); see router/effort.py.
EFFORT_LEVELS: tuple[str, ...] = (
    "fast",
    "minimal",
    "low",
    "medium",
    "high",
    "xhigh",
    "max",
    "auto",
)
# OpenAI's reasoning_effort scale, lowest first; backends name the values they accept.
REASONING_EFFORTS: tuple[str, ...] = ("none", "minimal", "low", "medium", "high", "xhigh")
REDIS_URL = re.compile(r"^(rediss?://[^\s]+|unix://?/[^\s]+)$")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(value: object) -> object:
    """``32MiB``, ``512k``, ``1048576`` -> bytes (binary units either way)."""
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if not match:
            raise ValueError(f"not a size: {value!r} (use bytes or e.g. 32MiB)")
        return int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    return value


def resolve_secret(value: object, info: ValidationInfo) -> object:
    """``env:NAME`` -> the variable's value; a missing variable is a config error.

    Validated with the context ``{"env": False}`` (``check-config --no-env``), references stay
    as they are: a file can be checked where its secrets are not set.
    """
    if isinstance(value, str) and value.startswith("env:"):
        if isinstance(info.context, dict) and info.context.get("env") is False:
            return value
        name = value[4:]
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set")
        return os.environ[name]
    return value


ByteSize = Annotated[int, BeforeValidator(parse_size), Field(gt=0)]
Secret = Annotated[SecretStr, BeforeValidator(resolve_secret)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_metrics(value: str) -> str:
    """``auto``, ``off`` or an http(s) URL: where a replica publishes Prometheus metrics."""
    if value in ("auto", "off") or re.match(r"^https?://[^/\s]+", value):
        return value
    raise ValueError("must be auto, off, or an http:// or https:// URL of a /metrics page")


def _yaml_off(value: object) -> object:
    # YAML 1.1 reads a bare ``off`` as false.
    return "off" if value is False else value


MetricsSource = Annotated[str, BeforeValidator(_yaml_off), AfterValidator(_check_metrics)]


class ReplicaConfig(_Frozen):
    id: str = Field(min_length=1)
    url: str
    # Overrides the backend's ``metrics`` for this replica (a URL is per replica by nature).
    metrics: MetricsSource | None = None

    @field_validator("url")
    @classmethod
    def _http_base(cls, url: str) -> str:
        if not re.match(r"^https?://[^/\s]+", url):
            raise ValueError("must be an http:// or https:// base URL such as http://host:8000/v1")
        return url.rstrip("/")


class TimeoutConfig(_Frozen):
    connect: float = Field(default=5.0, gt=0)
    read: float = Field(default=300.0, gt=0, description="longest silence between bytes")


class BackendCacheConfig(_Frozen):
    min_tokens: int = Field(default=0, ge=0, description="shorter prefixes are not indexed")


class BackendConfig(_Frozen):
    name: str = Field(min_length=1)
    replicas: list[ReplicaConfig] = Field(min_length=1)
    model: str | None = None
    api_key: Secret | None = None
    api: Literal["chat", "responses", "messages"] = "chat"
    timeout: TimeoutConfig = TimeoutConfig()
    forward_cache_control: bool = False
    prompt_cache_key: bool = False
    # Send vLLM's ``cache_salt`` derived from the tenant, so tenants never share KV blocks.
    cache_salt: bool = False
    # A Messages request whose last turn is the assistant's (Anthropic's "prefill") asks the
    # model to continue that text. vLLM and SGLang do so with ``continue_final_message``;
    # without it a chat backend starts a new turn after the prefill.
    continue_final_message: bool = False
    cache: BackendCacheConfig = BackendCacheConfig()
    # Whether the backend takes OpenAI's ``reasoning_effort``: ``true`` for low/medium/high
    # (what OpenAI, vLLM and SGLang all accept), or the list of values it accepts.
    reasoning_effort: bool | list[Literal["none", "minimal", "low", "medium", "high", "xhigh"]] = (
        False
    )

    @property
    def reasoning_efforts(self) -> tuple[str, ...]:
        """The ``reasoning_effort`` values this backend accepts (empty: send none)."""
        if self.reasoning_effort is True:
            return ("low", "medium", "high")
        if self.reasoning_effort is False:
            return ()
        return tuple(v for v in REASONING_EFFORTS if v in self.reasoning_effort)

    # Where replicas publish vLLM/SGLang metrics: auto = the replica URL's origin + /metrics.
    metrics: MetricsSource = "auto"

    @model_validator(mode="after")
    def _unique_replicas(self) -> BackendConfig:
        ids = [r.id for r in self.replicas]
        if len(ids) != len(set(ids)):
            raise ValueError(f"replica ids must be unique within backend {self.name!r}")
        if self.metrics not in ("auto", "off") and len(self.replicas) > 1:
            raise ValueError(
                "a metrics URL on the backend fits one replica only; give each replica its own "
                "replicas[].metrics, or use auto"
            )
        return self

    def metrics_url(self, replica: ReplicaConfig) -> str | None:
        """The replica's metrics page, or None when it publishes none."""
        source = replica.metrics or self.metrics
        if source == "off":
            return None
        if source == "auto":
            origin = re.match(r"^https?://[^/\s]+", replica.url)
            return origin.group(0) + "/metrics" if origin else None
        return source


RouteTarget = str | list[str]


class RoutesConfig(_Frozen):
    """Backend pool(s) per request type, and optionally per ``<type>@<effort>``.

    A value is a backend name or a list of them (the first serves; the rest are fallbacks).
    ``document`` and ``long`` are optional: a type that is not routed is never chosen.
    """

    text: RouteTarget
    code: RouteTarget
    json_: RouteTarget = Field(alias="json")
    vision: RouteTarget
    document: RouteTarget | None = None
    long: RouteTarget | None = None

    # Extra keys are the ``<type>@<effort>`` routes, checked below.
    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)

    @model_validator(mode="after")
    def _effort_routes(self) -> RoutesConfig:
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is not None and not _is_target(value):
                key = "json" if name == "json_" else name
                raise ValueError(f"route {key!r} must name a backend or a list of at least 1 item")
        for key, value in (self.model_extra or {}).items():
            request_type, at, effort = key.partition("@")
            if not at or request_type not in REQUEST_TYPES + OPTIONAL_TYPES:
                raise ValueError(
                    f"unknown route {key!r}: keys are request types "
                    f"({', '.join(REQUEST_TYPES + OPTIONAL_TYPES)}) or <type>@<effort>"
                )
            if effort not in EFFORT_LEVELS:
                raise ValueError(
                    f"route {key!r}: unknown effort {effort!r} (use {', '.join(EFFORT_LEVELS)})"
                )
            if not _is_target(value):
                raise ValueError(f"route {key!r} must name a backend or a list of backends")
        return self

    def _target(self, key: str) -> RouteTarget | None:
        if key == "json":
            return self.json_
        if key in type(self).model_fields:
            value: RouteTarget | None = getattr(self, key)
            return value
        extra = (self.model_extra or {}).get(key)
        return extra if _is_target(extra) else None

    def pools_for(self, request_type: str, effort: str | None = None) -> list[str]:
        """The backend names for a type (and effort), first = primary; [] when not routed.

        ``<type>@<effort>`` wins when configured, else the type's own route.
        """
        target = self._target(f"{request_type}@{effort}") if effort else None
        if target is None:
            target = self._target(request_type)
        if target is None:
            return []
        return [target] if isinstance(target, str) else list(target)

    def routed(self) -> dict[str, list[str]]:
        """Every configured route key and its backends, in a stable order."""
        keys = [t for t in REQUEST_TYPES + OPTIONAL_TYPES if self._target(t) is not None]
        keys += sorted(self.model_extra or {})
        out = {}
        for key in keys:
            target = self._target(key)
            if target is not None:
                out[key] = [target] if isinstance(target, str) else list(target)
        return out

    def enabled(self, request_type: str) -> bool:
        return self._target(request_type) is not None

    def backend_for(self, request_type: str) -> str:
        return self.pools_for(request_type)[0]


def _is_target(value: object) -> bool:
    if isinstance(value, str):
        return bool(value)
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) and v for v in value)


TENANT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"


class ApiKeyConfig(_Frozen):
    """One client key and what its holder (the tenant) may do; limits per minute."""

    key: Secret
    name: str | None = Field(default=None, pattern=TENANT_NAME)  # default: key-<hash prefix>
    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)
    allowed_types: list[str] | None = None
    allowed_backends: list[str] | None = None

    @field_validator("allowed_types")
    @classmethod
    def _known_types(cls, types: list[str] | None) -> list[str] | None:
        for t in types or ():
            if t not in REQUEST_TYPES and t not in ("document", "long"):
                raise ValueError(f"unknown request type {t!r} (use {', '.join(REQUEST_TYPES)})")
        return types


def _key_entry(value: object) -> object:
    """A plain string (or ``env:VAR``) is a key with no name, limits or restrictions."""
    return {"key": value} if isinstance(value, str) else value


class LimitsConfig(_Frozen):
    """Bounds on the work one request may cause; each breach is a 400 naming the limit."""

    max_messages: int = Field(default=4096, gt=0, description="messages or input items")
    max_content_parts: int = Field(default=8192, gt=0, description="content parts, all messages")
    max_tools: int = Field(default=512, gt=0)
    max_depth: int = Field(default=64, gt=0, le=200, description="JSON nesting levels")
    max_json_values: int = Field(default=65536, gt=0, description="values and keys in the body")
    max_hashed_string: ByteSize = 4 << 20  # one string in a prefix the router hashes
    max_large_bodies: int = Field(default=16, gt=0, description="bodies over 256 KiB read at once")
    # Shorter than any holder's body_timeout, so a waiter's 503 does not hinge on whether a
    # stalled holder's deadline happens to fire just before its own.
    large_body_wait: float = Field(default=5.0, gt=0, description="wait for a large-body slot")


class ServerConfig(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_body_size: ByteSize = 8 << 20
    api_keys: list[Annotated[ApiKeyConfig, BeforeValidator(_key_entry)]] = Field(
        default_factory=list
    )
    # Also accept keys created with `di-router keys create` (kept hashed in the objects' Redis).
    redis_keys: bool = False
    key_cache_seconds: float = Field(default=10.0, ge=0, description="Redis key lookups cached")
    cors_allow_origin: str = "*"
    # Stored-object routes (lists, retrieve, delete...) send no CORS headers unless enabled, so
    # a web page cannot read stored conversations through a visitor's browser.
    cors_objects: bool = False
    limits: LimitsConfig = LimitsConfig()
    # Slow or idle clients: seconds for the request line and headers, for the whole body, and
    # for an idle keep-alive connection between requests.
    header_timeout: float = Field(default=10.0, gt=0)
    body_timeout: float = Field(default=60.0, gt=0)
    keepalive_timeout: float = Field(default=75.0, gt=0)
    # Per process; lowered to what the open-file limit allows. Beyond it: 503.
    max_connections: int = Field(default=4096, gt=0)
    shutdown_grace: float = Field(default=25.0, ge=0, description="seconds streams may finish")

    @model_validator(mode="after")
    def _unique_key_names(self) -> ServerConfig:
        names = [k.name for k in self.api_keys if k.name is not None]
        if len(names) != len(set(names)):
            raise ValueError("api_keys names must be unique")
        keys = [k.key.get_secret_value() for k in self.api_keys]
        if len(keys) != len(set(keys)):
            raise ValueError("api_keys must be distinct (one key, one tenant)")
        return self


class RoutingConfig(_Frozen):
    policy: Literal["prefix_affinity", "least_loaded", "round_robin"] = "prefix_affinity"
    # A warm replica is skipped when its in-flight count exceeds the least-loaded one's by more
    # than both thresholds (in the manner of SGLang's balance_abs/rel_threshold).
    balance_abs_threshold: int = Field(default=32, ge=0)
    balance_rel_threshold: float = Field(default=1.5, ge=1.0)
    # A new prefix goes, in rendezvous order, to the first replica whose load is within this
    # much of the least-loaded one's: deterministic while loads are even (every router agrees),
    # load-aware when they are not (so the prefixes of a busy fleet spread).
    placement_slack: float = Field(default=0.0, ge=0)
    # Before that, an index that counts the new prefixes each replica holds (Redis, or one
    # process) keeps, of the replicas whose load is within this much of the least-loaded
    # one's, those given the fewest: a replica whose cache holds two system prompts is not
    # given a third while another holds one. Loads further apart decide by themselves.
    placement_count_slack: float = Field(default=8.0, ge=0)
    replica_cooldown: float = Field(default=5.0, ge=0, description="seconds a failed replica rests")
    retries: int = Field(default=2, ge=0, description="other replicas tried before the first byte")
    # Every attempt of a request (all pools) must have its response headers within this.
    deadline: float = Field(default=300.0, gt=0, description="seconds until response headers")


class HealthConfig(_Frozen):
    """The per-replica circuit breaker and the background liveness checker."""

    failure_threshold: int = Field(default=3, ge=1, description="consecutive failures to open")
    max_open: float = Field(default=60.0, gt=0, description="longest rest, Retry-After included")
    probe_interval: float = Field(default=5.0, gt=0, description="seconds between probes")
    probe_timeout: float = Field(default=2.0, gt=0)


class LoadConfig(_Frozen):
    """Scraping the replicas' own metrics (vLLM, SGLang) for their load and KV usage."""

    interval: float = Field(default=0.25, gt=0, description="seconds between scrapes")
    stale_after: float = Field(default=2.0, gt=0, description="older figures are not used")
    timeout: float = Field(default=1.0, gt=0, description="one scrape's deadline")
    kv_full: float = Field(default=0.95, gt=0, le=1, description="KV usage refusing new prefixes")


def check_redis_url(url: SecretStr | None) -> SecretStr | None:
    """A Redis URL the client can connect with, checked when the config is read (by
    ``check-config`` too), not when ``serve`` first connects. The messages never echo the URL:
    it may carry a password."""
    value = url.get_secret_value() if url is not None else ""
    if not value or value.startswith("env:"):
        return url
    if not REDIS_URL.match(value):
        raise ValueError("must be a redis://, rediss:// or unix:// URL")
    try:
        parse_url(value)  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        database = urlsplit(value).path.strip("/")
        if not value.startswith("unix") and database and not database.isdigit():
            raise ValueError("redis-py would use database 0 instead")
    except ValueError:
        raise ValueError(
            "is not a usable Redis URL: its port, database number or options could not be read"
        ) from None
    return url


class CacheConfig(_Frozen):
    redis_url: Secret | None = None

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, url: SecretStr | None) -> SecretStr | None:
        return check_redis_url(url)

    key_prefix: str = "di:"
    timeout_ms: float = Field(default=50.0, gt=0)
    retry_after: float = Field(default=1.0, ge=0, description="seconds Redis rests after a fault")
    failure_threshold: int = Field(
        default=3, ge=1, description="Redis faults in a row before it counts as down"
    )
    # Automatic prefixes: unmarked requests get affinity on their message boundaries.
    automatic: bool = True
    automatic_min_tokens: int = Field(default=1024, ge=0, description="estimated tokens")
    memory_max_entries: int = Field(default=100_000, gt=0)
    responses_ttl: int = Field(default=30 * 24 * 3600, gt=0, description="stored objects, seconds")
    # Prefix-index entries are namespaced by tenant; true lets tenants share (one-team setups).
    share_across_tenants: bool = False


class ObjectsConfig(_Frozen):
    """Where stored chat completions and responses live (their lifetime: cache.responses_ttl)."""

    redis_url: Secret | None = None  # default: cache.redis_url, else memory

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, url: SecretStr | None) -> SecretStr | None:
        return check_redis_url(url)

    timeout_ms: float = Field(default=500.0, gt=0)
    memory_max_objects: int = Field(default=10_000, gt=0)


class ClassifyConfig(_Frozen):
    # A request whose estimated input exceeds this many tokens is ``long`` (when routed).
    long_threshold: int = Field(default=100_000, gt=0)


class UpstreamPoolConfig(_Frozen):
    connection_limit: int = Field(default=1024, gt=0)
    connection_limit_per_host: int = Field(default=256, gt=0)
    max_body_size: ByteSize = Field(default=64 << 20, description="largest upstream JSON answer")


class TracingConfig(_Frozen):
    """OpenTelemetry traces: off unless an OTLP endpoint is given (needs the ``otel`` extra)."""

    otlp_endpoint: str | None = None  # OTLP/HTTP, e.g. http://otel-collector:4318/v1/traces
    service_name: str = "di-router"
    sample_ratio: float = Field(default=1.0, ge=0, le=1, description="of traces not sampled yet")

    @field_validator("otlp_endpoint")
    @classmethod
    def _http_endpoint(cls, url: str | None) -> str | None:
        if url is not None and not re.match(r"^https?://[^/\s]+", url):
            raise ValueError(
                "must be an http:// or https:// URL such as http://host:4318/v1/traces"
            )
        return url


class RouterConfig(_Frozen):
    server: ServerConfig = ServerConfig()
    backends: list[BackendConfig] = Field(min_length=1)
    routes: RoutesConfig
    routing: RoutingConfig = RoutingConfig()
    cache: CacheConfig = CacheConfig()
    objects: ObjectsConfig = ObjectsConfig()
    upstream: UpstreamPoolConfig = UpstreamPoolConfig()
    classify: ClassifyConfig = ClassifyConfig()
    health: HealthConfig = HealthConfig()
    load: LoadConfig = LoadConfig()
    tracing: TracingConfig = TracingConfig()

    @model_validator(mode="after")
    def _routes_name_backends(self) -> RouterConfig:
        names = [b.name for b in self.backends]
        if len(names) != len(set(names)):
            raise ValueError("backend names must be unique")
        replica_ids = [r.id for b in self.backends for r in b.replicas]
        if len(replica_ids) != len(set(replica_ids)):
            raise ValueError("replica ids must be unique across backends")
        problems: list[tuple[tuple[str, ...], str]] = []
        for key, targets in self.routes.routed().items():
            loc: tuple[str, ...] = ("routes", key)
            if len(targets) != len(set(targets)):
                problems.append((loc, "lists a backend twice"))
            apis = {b.api for b in self.backends if b.name in targets}
            if len(apis) > 1:
                problems.append((loc, "fallback pools must speak the same api as the first"))
            for index, target in enumerate(targets):
                if target not in names:
                    where = (*loc, str(index)) if len(targets) > 1 else loc
                    problems.append(
                        (
                            where,
                            f"names backend {target!r}, which is not defined "
                            f"(defined: {', '.join(names)})",
                        )
                    )
        if self.server.redis_keys and not (self.objects.redis_url or self.cache.redis_url):
            problems.append(
                (("server", "redis_keys"), "redis_keys needs objects.redis_url or cache.redis_url")
            )
        for i, entry in enumerate(self.server.api_keys):
            unknown = set(entry.allowed_backends or ()) - set(names)
            if unknown:
                problems.append(
                    (
                        ("server", "api_keys", str(i), "allowed_backends"),
                        f"names unknown backends {', '.join(sorted(unknown))}",
                    )
                )
        if problems:
            raise LocatedProblems(problems)
        return self

    def backend(self, name: str) -> BackendConfig:
        return next(b for b in self.backends if b.name == name)

    def routing_table(self) -> dict[str, BackendConfig]:
        return {key: self.backend(names[0]) for key, names in self.routes.routed().items()}


class LocatedProblems(ValueError):
    """Problems a cross-field check found, each at its own place in the file."""

    def __init__(self, problems: Sequence[tuple[tuple[str, ...], str]]) -> None:
        super().__init__("; ".join(f"{'.'.join(loc)}: {message}" for loc, message in problems))
        self.problems = list(problems)


class ConfigError(Exception):
    """A config file that cannot be used; ``problems`` lists each with its location."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(problems))
        self.source = source
        self.problems = list(problems)


def embedded_config(
    pools: Mapping[str, Sequence[tuple[str, str]]], *, host: str = "127.0.0.1", port: int = 8000
) -> RouterConfig:
    """The zero-config setup: one simulated backend per request type, ``sim-<type>``."""
    backends = [
        BackendConfig(
            name=name,
            replicas=[ReplicaConfig(id=rid, url=url) for rid, url in replicas],
        )
        for name, replicas in pools.items()
    ]
    routes = RoutesConfig.model_validate({t: f"sim-{t}" for t in REQUEST_TYPES})
    return RouterConfig(server=ServerConfig(host=host, port=port), backends=backends, routes=routes)


def load_config(path: str | Path, *, env: bool = True, **overrides: dict[str, Any]) -> RouterConfig:
    """Read and validate a YAML config; raise ConfigError naming each problem's line.

    ``env=False`` leaves ``env:VAR`` references unresolved (to check a file without its
    secrets).
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, [f"cannot read: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"not valid YAML: {exc}"]) from None
    if not isinstance(data, dict):
        raise ConfigError(source, ["the file must hold a mapping with backends: and routes:"])
    for section, values in overrides.items():
        given = data.get(section)
        if isinstance(given, dict):
            data[section] = {**given, **values}
        elif given is None:  # absent, or an empty "section:" line
            data[section] = values
    try:
        return RouterConfig.model_validate(data, context={"env": env})
    except ValidationError as exc:
        raise ConfigError(source, _problems(exc, root)) from None


def _problems(exc: ValidationError, root: yaml.Node | None) -> list[str]:
    problems = []
    for err in exc.errors():
        found = (err.get("ctx") or {}).get("error")
        if isinstance(found, LocatedProblems):
            for loc, message in found.problems:
                problems.append(_describe({"loc": (*err["loc"], *loc), "msg": message}, root))
        else:
            problems.append(_describe(err, root))
    return problems


def _describe(err: Any, root: yaml.Node | None) -> str:
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"{locate(root, [str(p) for p in err['loc']])}: {message}"


def locate(root: yaml.Node | None, loc: Sequence[str]) -> str:
    """``line N: a.b[0].c``: where ``loc`` is in the file (its nearest existing node)."""
    path = ""
    for part in loc:
        path += f"[{part}]" if part.isdigit() else (f".{part}" if path else part)
    line = _line_of(root, loc)
    where = f"line {line}: " if line else ""
    return f"{where}{path or '(top level)'}"


def _line_of(node: yaml.Node | None, loc: Sequence[str]) -> int | None:
    """The 1-based line of the deepest YAML node on ``loc`` that exists in the file."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
        else:
            node = None
        if node is None:
            break
        line = node.start_mark.line + 1
    return line
