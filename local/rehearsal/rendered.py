"""The deployment as rendered (infra/render, Terraform JSON), read back: what runs, with what, and how it is wired.

Nothing here is a second copy of the configuration: every value comes from the rendered files, and Terraform's
`${...}` references are resolved against the stand-ins (`Resolver`), refusing any reference it does not know.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from infra.manifest import load_manifest
from infra.render import DeployConfig, render_terraform

REFERENCE = re.compile(r"\$\{([^}]+)\}")
PROJECT = "rehearsal-demo"  # a made-up project
PROJECT_NUMBER = "314159265358"  # what data.google_project.this.number reads for it


def render(domain: str) -> dict[str, str]:
    """The Terraform files for the made-up project, as `invoke deploy --project rehearsal-demo --out DIR` writes."""
    config = DeployConfig(project=PROJECT, domain=domain, email_sender="no-reply@rehearsal.example",
                          set_password_url=f"https://{domain}/set-password")
    return render_terraform(load_manifest(), config)


def merge(files: dict[str, str]) -> dict[str, Any]:
    """All files' blocks in one document: {section: {type: {name: body}}} (variables/outputs: {name: body})."""
    doc: dict[str, Any] = {"resource": {}, "data": {}, "variable": {}, "output": {}}
    for content in files.values():
        for section, blocks in json.loads(content).items():
            if section in ("resource", "data"):
                for rtype, items in blocks.items():
                    doc[section].setdefault(rtype, {}).update(items)
            elif section in ("variable", "output"):
                doc[section].update(blocks)
    return doc


class Resolver:
    """Resolves `${...}`: variables (their rendered default unless overridden), rendered attributes (account
    emails, secret ids), and what the stand-ins provide (`live`: addresses of the database, Redis, functions)."""

    def __init__(self, doc: dict[str, Any], *, overrides: dict[str, str] | None = None) -> None:
        self.doc = doc
        self.overrides = overrides or {}
        self.live: dict[str, str] = {"data.google_project.this.number": PROJECT_NUMBER}

    def _one(self, expr: str) -> str:
        if expr in self.live:
            return self.live[expr]
        parts = expr.split(".")
        if parts[0] == "var":
            if parts[1] in self.overrides:
                return self.overrides[parts[1]]
            variable = self.doc["variable"][parts[1]]
            if "default" not in variable:
                raise KeyError(f"variable {parts[1]} has no value")
            return str(variable["default"])
        resources = self.doc["resource"]
        if parts[0] == "google_service_account" and parts[2] == "email":
            account = resources["google_service_account"][parts[1]]["account_id"]
            return f"{account}@{PROJECT}.iam.gserviceaccount.com"
        if parts[0] == "google_secret_manager_secret" and parts[2] == "secret_id":
            return str(resources["google_secret_manager_secret"][parts[1]]["secret_id"])
        if parts[0] == "google_cloudfunctions2_function" and parts[2] == "name":
            return str(resources["google_cloudfunctions2_function"][parts[1]]["name"])
        raise KeyError(f"the rehearsal cannot resolve ${{{expr}}}")

    def __call__(self, value: Any) -> Any:
        """The value with every reference resolved (strings, lists and dicts, recursively)."""
        if isinstance(value, str):
            return REFERENCE.sub(lambda m: self._one(m.group(1)), value)
        if isinstance(value, list):
            return [self(item) for item in value]
        if isinstance(value, dict):
            return {key: self(item) for key, item in value.items()}
        return value


@dataclass
class Runtime:
    """One Cloud Run function or worker pool as rendered."""

    key: str  # the manifest name (Terraform resource name)
    name: str  # the Cloud Run service / worker pool name
    kind: str  # http | scheduled | worker
    command: list[str]
    env: dict[str, str]  # plain environment, references resolved
    secret_env: dict[str, str]  # env var -> secret id
    secret_files: dict[str, str]  # mount path of a file -> secret id
    service_account: str
    concurrency: int
    min_instances: int
    max_instances: int
    timeout_s: int = 0
    ingress: str = ""
    invokers: list[str] = field(default_factory=list)  # IAM members with roles/run.invoker


@dataclass
class SchedulerJob:
    """One Cloud Scheduler job as rendered."""

    key: str
    schedule: str
    method: str
    uri: str  # with `${...function.uri}` resolved to the service's local address
    audience: str
    service_account: str
    deadline_s: int


def functions(doc: dict[str, Any], resolve: Resolver, entry: Callable[[str, dict[str, Any]], list[str]]
              ) -> list[Runtime]:
    """Every Cloud Run function: `entry(key, body)` gives the command that serves it (functions-framework)."""
    invokers: dict[str, list[str]] = {}
    for body in doc["resource"].get("google_cloud_run_v2_service_iam_member", {}).values():
        if body["role"] == "roles/run.invoker":
            invokers.setdefault(resolve(body["name"]), []).append(resolve(body["member"]))
    found = []
    for key, body in sorted(doc["resource"]["google_cloudfunctions2_function"].items()):
        service = body["service_config"]
        found.append(Runtime(
            key=key, name=body["name"], kind=body["labels"]["kind"], command=entry(key, body),
            env=resolve(service["environment_variables"]),
            secret_env={item["key"]: resolve(item["secret"]) for item in service["secret_environment_variables"]},
            secret_files={f"{volume['mount_path']}/{version['path']}": resolve(volume["secret"])
                          for volume in service["secret_volumes"] for version in volume["versions"]},
            service_account=resolve(service["service_account_email"]),
            concurrency=int(service["max_instance_request_concurrency"]),
            min_instances=int(service["min_instance_count"]), max_instances=int(service["max_instance_count"]),
            timeout_s=int(service["timeout_seconds"]), ingress=service["ingress_settings"],
            invokers=invokers.get(body["name"], [])))
    return found


def _container(template: dict[str, Any], resolve: Resolver) -> tuple[list[str], dict[str, str], dict[str, str],
                                                                     dict[str, str]]:
    (container,) = template["containers"]
    env = {item["name"]: resolve(item["value"]) for item in container["env"] if "value" in item}
    secret_env = {item["name"]: resolve(item["value_source"]["secret_key_ref"]["secret"])
                  for item in container["env"] if "value_source" in item}
    volumes = {volume["name"]: volume["secret"] for volume in template.get("volumes", [])}
    files = {f"{mount['mount_path']}/{item['path']}": resolve(volumes[mount["name"]]["secret"])
             for mount in container.get("volume_mounts", []) for item in volumes[mount["name"]]["items"]}
    return [*container["command"], *container.get("args", [])], env, secret_env, files


def worker_pools(doc: dict[str, Any], resolve: Resolver) -> list[Runtime]:
    """Every Cloud Run worker pool, with its manual instance count (the variable, or its override)."""
    found = []
    for key, body in sorted(doc["resource"].get("google_cloud_run_v2_worker_pool", {}).items()):
        command, env, secret_env, files = _container(body["template"], resolve)
        count = int(resolve(body["scaling"]["manual_instance_count"]))
        validation = doc["variable"][f"{key}_instances"]["validation"][0]["condition"]
        low, high = (int(n) for n in re.findall(r"[<>]= (\d+)", validation))
        if not low <= count <= high:
            raise ValueError(f"{key}: {count} instances is outside what the rendering allows ({low}..{high})")
        found.append(Runtime(key=key, name=body["name"], kind="worker", command=command, env=env,
                             secret_env=secret_env, secret_files=files,
                             service_account=resolve(body["template"]["service_account"]),
                             concurrency=int(env.get("CONSUMER_CONCURRENCY", "1")), min_instances=count,
                             max_instances=high))
    return found


def migrate_job(doc: dict[str, Any], resolve: Resolver) -> Runtime:
    """The migrate job (its command, its owner connection string secret, its CA file)."""
    body = doc["resource"]["google_cloud_run_v2_job"]["migrate"]
    command, env, secret_env, files = _container(body["template"]["template"], resolve)
    return Runtime(key="migrate", name=body["name"], kind="job", command=command, env=env, secret_env=secret_env,
                   secret_files=files, service_account=resolve(body["template"]["template"]["service_account"]),
                   concurrency=1, min_instances=1, max_instances=1)


def scheduler_jobs(doc: dict[str, Any], resolve: Resolver) -> list[SchedulerJob]:
    """Every Cloud Scheduler job."""
    found = []
    for key, body in sorted(doc["resource"].get("google_cloud_scheduler_job", {}).items()):
        target = body["http_target"]
        found.append(SchedulerJob(key=key, schedule=body["schedule"], method=target["http_method"],
                                  uri=resolve(target["uri"]), audience=resolve(target["oidc_token"]["audience"]),
                                  service_account=resolve(target["oidc_token"]["service_account_email"]),
                                  deadline_s=int(body["attempt_deadline"].rstrip("s"))))
    return found


def secret_readers(doc: dict[str, Any], resolve: Resolver) -> dict[str, set[str]]:
    """Secret id -> the members allowed to read it (roles/secretmanager.secretAccessor)."""
    readers: dict[str, set[str]] = {}
    secrets = doc["resource"]["google_secret_manager_secret"]
    for body in doc["resource"].get("google_secret_manager_secret_iam_member", {}).values():
        if body["role"] != "roles/secretmanager.secretAccessor":
            continue
        key = body["secret_id"].split(".")[1]  # ${google_secret_manager_secret.<key>.id}
        readers.setdefault(secrets[key]["secret_id"], set()).add(resolve(body["member"]))
    return readers


def backends(doc: dict[str, Any]) -> dict[str, str]:
    """Backend service reference -> the function (Terraform key) its serverless NEG points at."""
    negs = doc["resource"].get("google_compute_region_network_endpoint_group", {})
    found = {}
    for key, body in doc["resource"].get("google_compute_backend_service", {}).items():
        (backend,) = body["backend"]
        neg = backend["group"].split(".")[1]
        function = negs[neg]["cloud_function"]["function"].split(".")[1]
        found["${google_compute_backend_service." + key + ".id}"] = function
    return found
