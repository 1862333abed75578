"""Every route of every function with what it reads, for the tests that send it hostile input: the roles its
`@endpoint` admits (read from the function's source), its request body's media types and its query and path
parameters (read from the OpenAPI document, which a contract test keeps equal to the manifest)."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass

from infra.manifest import load_manifest
from shared.openapi import SPEC_PATH

STAFF_ROLES = ("admin", "sales_manager", "viewer")


def admitted_roles(source: str) -> tuple[str, ...] | None:
    """The roles of the function's `@endpoint(..., roles=(Role.X, ...))`, staff roles only; () for a public
    endpoint; None for a function without `endpoint` (a static page)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "endpoint":
            roles = next(k.value for k in node.keywords if k.arg == "roles")
            names = [e.attr.lower() for e in roles.elts]  # type: ignore[attr-defined]
            return tuple(n for n in names if n in STAFF_ROLES)
    return None


@dataclass(frozen=True)
class Route:
    name: str
    method: str
    path: str  # with its {parameter}, filled with a real id per test
    roles: tuple[str, ...]  # the tokens it is called with; ("anonymous",) for a public route
    media_types: tuple[str, ...]  # of its request body; () when it reads none
    query: tuple[str, ...]  # the query parameters it declares
    param: str | None  # its path parameter
    api: bool  # served through shared.http.endpoint (an API answer), not a static page or a probe


def _routes() -> list[Route]:
    spec = json.loads(SPEC_PATH.read_text())
    routes = []
    for fn in load_manifest().values():
        if fn.kind not in ("http", "scheduled"):
            continue
        roles = admitted_roles(fn.source_path.read_text())
        for route in fn.routes:
            operation = spec["paths"][route.path][route.method.lower()]
            params = operation.get("parameters", [])
            routes.append(Route(
                fn.name, route.method, route.path, roles or ("anonymous",),
                tuple(operation.get("requestBody", {}).get("content", {})),
                tuple(p["name"] for p in params if p["in"] == "query"),
                next((p["name"] for p in params if p["in"] == "path"), None), roles is not None))
    return routes


ROUTES = _routes()


def admits(route: Route, role: str) -> bool:
    """Whether `role` gets past the route's role check (a public route admits everyone)."""
    return role in route.roles or route.roles == ("anonymous",)
