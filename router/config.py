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

REQUEST_TYPES: tuple[str, ...] = ("text", "code", "json", "vision")
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
    api: Literal["chat", "responses"] = "chat"
    timeout: TimeoutConfig = TimeoutConfig()
    forward_cache_control: bool = False
    prompt_cache_key: bool = False
    cache: BackendCacheConfig = BackendCacheConfig()
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


def _pool_list(value: object) -> object:
    """A route is one backend name or a list of them (fallback pools, tried in order)."""
    return [value] if isinstance(value, str) else value


PoolList = Annotated[list[str], BeforeValidator(_pool_list), Field(min_length=1)]


class RoutesConfig(_Frozen):
    text: PoolList
    code: PoolList
    json_: PoolList = Field(alias="json")
    vision: PoolList

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    def pools_for(self, request_type: str, effort: str | None = None) -> list[str]:
        """The backend names serving ``request_type``, primary first, then fallbacks."""
        pools: list[str] = self.json_ if request_type == "json" else getattr(self, request_type)
        return list(pools)

    def backend_for(self, request_type: str) -> str:
        """The primary pool of ``request_type``."""
        return self.pools_for(request_type)[0]


class ServerConfig(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_body_size: ByteSize = 32 << 20
    api_keys: list[Secret] = Field(default_factory=list)
    cors_allow_origin: str = "*"


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


class CacheConfig(_Frozen):
    redis_url: Secret | None = None

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, url: SecretStr | None) -> SecretStr | None:
        # The scheme only: the URL itself may carry a password and must not be echoed.
        value = url.get_secret_value() if url is not None else ""
        if value and not value.startswith("env:") and not REDIS_URL.match(value):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return url

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
    upstream: UpstreamPoolConfig = UpstreamPoolConfig()
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
        for request_type in REQUEST_TYPES:
            targets = self.routes.pools_for(request_type)
            loc: tuple[str, ...] = ("routes", request_type)
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
        if problems:
            raise LocatedProblems(problems)
        return self

    def backend(self, name: str) -> BackendConfig:
        return next(b for b in self.backends if b.name == name)

    def routing_table(self) -> dict[str, BackendConfig]:
        return {t: self.backend(self.routes.backend_for(t)) for t in REQUEST_TYPES}


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
