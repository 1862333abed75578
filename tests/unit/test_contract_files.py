"""The manifest, the functions/ folder and the OpenAPI document describe the same routes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from openapi_spec_validator import validate

from infra.manifest import REPO_ROOT, load_manifest
from shared.openapi import SPEC_PATH

CONTRACT_ROUTES = {  # every route of CONTRACT.md's table (the black-box checks call each)
    ("POST", "/api/users"), ("GET", "/api/users/requests/{request_id}"),
    ("GET", "/api/admin/system/mode"), ("POST", "/api/admin/system/mode"),
    ("GET", "/api/admin/system/metrics"), ("GET", "/api/admin/system/logs"),
    ("POST", "/api/admin/system/cleanup"), ("GET", "/healthz"), ("GET", "/admin/system-health"),
    ("GET", "/api/admin/requests"), ("GET", "/api/admin/requests/{request_id}"),
    ("POST", "/api/admin/requests/retry"), ("GET", "/api/admin/audit"),
    ("GET", "/api/admin/system/limits"), ("POST", "/api/admin/system/limits"), ("GET", "/metrics"),
    ("POST", "/api/users/bulk"), ("GET", "/api/users/bulk/{batch_id}"),
    ("GET", "/api/users/bulk/{batch_id}/results.csv"), ("GET", "/sales"), ("GET", "/set-password"),
    ("POST", "/api/account/password"), ("POST", "/api/auth/sign-in"),
}


def test_every_function_module_is_in_the_manifest_and_back():
    manifest = load_manifest()
    modules = {p.stem for p in (REPO_ROOT / "functions").glob("*.py") if p.stem != "__init__"}
    assert modules == {Path(spec.source).stem for spec in manifest.values()}
    for name, spec in manifest.items():
        assert spec.source_path.exists()
        source = spec.source_path.read_text()
        assert re.search(rf"^async def {name}\(", source, re.MULTILINE), f"{spec.source} must define {name}"


def test_openapi_is_valid_and_lists_exactly_the_served_routes():
    spec = json.loads(SPEC_PATH.read_text())
    validate(spec)
    documented = {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}
    served = {(r.method, r.path) for f in load_manifest().values() for r in f.routes}
    assert documented == served
    assert CONTRACT_ROUTES <= served


def test_function_names_do_not_shadow_real_modules():
    import importlib.util
    import sys

    for spec in load_manifest().values():
        stem = Path(spec.source).stem
        assert stem not in sys.stdlib_module_names
        found = importlib.util.find_spec(stem)
        assert found is None or (found.origin or "").startswith(str(REPO_ROOT / "functions")), stem
