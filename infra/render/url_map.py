"""The URL map of the one load balancer, shared by the Terraform and the gcloud renderings."""

from __future__ import annotations

from collections.abc import Callable

from infra.manifest import FunctionSpec
from infra.render.config import Json
from infra.render.facts import lb_path, routed


def url_map(specs: dict[str, FunctionSpec], backend: Callable[[FunctionSpec], str], name: str) -> Json:
    """The URL map (snake_case fields) routing every manifest route to its function's backend.

    Rules match path and method (`:method`, GET also answers HEAD, as the local gateway); a known path with
    another method gets 405, any other path 404, both from the load balancer itself (fault injection abort).
    """
    front = routed(specs)
    if not front:
        raise ValueError("no function has a route: nothing to put behind the load balancer")
    entries = sorted(((route.path, route.method, spec) for spec in front for route in spec.routes),
                     key=lambda entry: (entry[0], entry[1], entry[2].name))

    def path_match(path: str) -> Json:
        pattern = lb_path(path)
        return {"path_template_match": pattern} if pattern != path else {"full_path_match": path}

    def abort(status: int, spec: FunctionSpec) -> Json:
        return {"weighted_backend_services": [{"backend_service": backend(spec), "weight": 100}],
                "fault_injection_policy": {"abort": {"http_status": status, "percentage": 100}}}

    rules: list[Json] = []
    for path, method, spec in entries:
        methods = [method, "HEAD"] if method == "GET" else [method]
        rules.append({
            "priority": len(rules) + 1,
            "service": backend(spec),
            "match_rules": [{**path_match(path), "header_matches": [{"header_name": ":method", "exact_match": m}]}
                            for m in methods],
        })
    first_for_path: dict[str, FunctionSpec] = {}
    for path, _, spec in entries:
        first_for_path.setdefault(path, spec)
    for path, spec in first_for_path.items():
        rules.append({"priority": len(rules) + 1, "match_rules": [path_match(path)], "route_action": abort(405, spec)})
    not_found = abort(404, front[0])
    return {
        "name": name,
        "default_route_action": not_found,
        "host_rule": [{"hosts": ["*"], "path_matcher": "api"}],
        "path_matcher": [{"name": "api", "default_route_action": not_found, "route_rules": rules}],
    }

