"""Reads `infra/functions.toml`, the single list of deployable functions and their routes."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

MANIFEST_PATH = Path(__file__).with_name("functions.toml")
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Route:
    """One public route: method and path pattern."""

    method: str
    path: str

    @property
    def regex(self) -> re.Pattern[str]:
        """The path pattern with each {name} matching one segment."""
        segment = r"[^/\x00-\x1f\x7f]+"  # no control characters: such a path matches no route (404)
        return re.compile(r"\A" + re.sub(r"\\\{[a-z_]+\\\}", lambda _: segment, re.escape(self.path)) + r"/?\Z")


@dataclass(frozen=True)
class FunctionSpec:
    """One function of the manifest."""

    name: str
    kind: str
    source: str
    routes: tuple[Route, ...]
    timeout_s: int
    concurrency: int
    min_instances: int
    max_instances: int
    schedule: str | None = None
    secrets: tuple[str, ...] | None = None  # the secret settings it needs; None: the manifest does not say

    @property
    def target(self) -> str:
        """The functions-framework target: the function is named like the manifest entry."""
        return self.name

    @property
    def source_path(self) -> Path:
        """Absolute path of the function's module."""
        return REPO_ROOT / self.source


def load_manifest(path: Path = MANIFEST_PATH) -> dict[str, FunctionSpec]:
    """Every function of the manifest by name."""
    data = tomllib.loads(path.read_text())
    specs: dict[str, FunctionSpec] = {}
    for name, entry in data["functions"].items():
        routes = tuple(Route(*r.split(" ", 1)) for r in entry.get("routes", []))
        specs[name] = FunctionSpec(
            name=name, kind=entry["kind"], source=entry["source"], routes=routes,
            timeout_s=entry["timeout_s"], concurrency=entry["concurrency"],
            min_instances=entry["min_instances"], max_instances=entry["max_instances"],
            schedule=entry.get("schedule"),
            secrets=tuple(entry["secrets"]) if "secrets" in entry else None,
        )
    return specs


def match_route(specs: dict[str, FunctionSpec], method: str, path: str) -> tuple[FunctionSpec | None, list[str]]:
    """(function serving method+path, the methods the path answers to: empty for an unknown path).

    A path some route names literally (`/api/admin/requests/retry`) belongs to the literal routes only, never to
    a `{name}` route that would also match it (`/api/admin/requests/{request_id}`).
    """
    matching = [(spec, route) for spec in specs.values() for route in spec.routes if route.regex.match(path)]
    if any("{" not in route.path for _, route in matching):
        matching = [(spec, route) for spec, route in matching if "{" not in route.path]
    allowed: list[str] = []
    for spec, route in matching:
        if route.method == method or (method == "HEAD" and route.method == "GET"):
            return spec, [route.method]
        allowed.append(route.method)
    return None, sorted(set(allowed) | ({"HEAD"} if "GET" in allowed else set()))
