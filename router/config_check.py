"""``di-router check-config``: validate a file, then warn about what is legal but suspicious.

Errors make the config unusable (``load_config`` raises them, each at its line). Warnings do
not: a backend no route sends anything to, a replica URL that does not end in ``/v1`` (every
OpenAI-compatible server mounts its API there, so a bare ``http://host:8000`` is almost always
a 404 waiting to happen). Each is reported at its own line of the file.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from router.config import RouterConfig, load_config, locate


def check_file(path: str | Path, *, env: bool = True) -> tuple[RouterConfig, list[str]]:
    """The config and its warnings; raises ConfigError with each problem when it is invalid."""
    config = load_config(path, env=env)
    try:
        root = yaml.compose(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):  # it was just read and parsed; only a race gets here
        root = None
    return config, warnings(config, root)


def routed_backends(config: RouterConfig) -> set[str]:
    """Every backend some route sends requests to, fallback pools included."""
    return {name for names in config.routes.routed().values() for name in names}


def warnings(config: RouterConfig, root: yaml.Node | None) -> list[str]:
    found: list[str] = []
    routed = routed_backends(config)
    for index, backend in enumerate(config.backends):
        if backend.name not in routed:
            where = locate(root, ("backends", str(index), "name"))
            found.append(f"{where}: backend {backend.name!r} is defined but no route uses it")
        for number, replica in enumerate(backend.replicas):
            if not replica.url.endswith("/v1"):
                loc = ("backends", str(index), "replicas", str(number), "url")
                found.append(
                    f"{locate(root, loc)}: replica {replica.id!r} URL does not end in /v1 "
                    "(OpenAI-compatible servers serve their API under /v1)"
                )
    return found
