"""The Terraform JSON builder the Terraform rendering's modules share: blocks per file, references, variables."""

from __future__ import annotations

import json
from typing import Any

from infra.render.config import (
    APIS,
    Json,
)


def ref(rtype: str, name: str, attr: str = "id") -> str:
    return "${" + f"{rtype}.{name}.{attr}" + "}"


class Terraform:
    """Collects top-level Terraform blocks per file."""

    def __init__(self) -> None:
        self.files: dict[str, Json] = {}

    def block(self, file: str, section: str, name: str, body: Any) -> None:
        self.files.setdefault(file, {}).setdefault(section, {})[name] = body

    def resource(self, file: str, rtype: str, name: str, body: Json) -> str:
        """Add a resource (depending on the APIs it needs); returns its address."""
        needs = sorted(api for api, types in APIS.items() if any(rtype.startswith(t) for t in types))
        if rtype != "google_project_service" and needs:
            body = {**body, "depends_on": sorted({*body.get("depends_on", []),
                                                  *(f"google_project_service.{api}" for api in needs)})}
        self.files.setdefault(file, {}).setdefault("resource", {}).setdefault(rtype, {})[name] = body
        return f"{rtype}.{name}"

    def render(self) -> dict[str, str]:
        return {name: json.dumps(body, indent=2, sort_keys=True) + "\n" for name, body in sorted(self.files.items())}


def var(name: str) -> str:
    return "${var." + name + "}"


def operator_variable(tf: Terraform, name: str, default: str, description: str,
                       validation: Json | None = None) -> None:
    body: Json = {"type": "string", "description": description}
    if default:
        body["default"] = default
    if validation:
        body["validation"] = [validation]
    tf.block("main.tf.json", "variable", name, body)
