"""Renders the function manifest (`infra/functions.toml`) into a deployment on Google Cloud.

Two equivalent renderings, both pure functions of (manifest, `DeployConfig`):

- `render_terraform`: a Terraform configuration in JSON syntax (`*.tf.json`), file name -> content;
- `gcloud_commands` (+ `gcloud_files` for the URL map it imports): the same deployment as `gcloud` commands.

Nothing is called and nothing is written at import or by those functions; only `main()` writes, with `--out`.
Every function of the manifest is rendered from its kind (http, scheduled, worker): no function name is special.

    python -m infra.render --project P [--region R] [--format terraform|gcloud] [--out DIR] [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.manifest import REPO_ROOT, FunctionSpec, load_manifest

Json = dict[str, Any]

KINDS = ("http", "scheduled", "worker")
PYTHON_RUNTIME = "python311"
REDIS_CA_DIR = "/secrets/redis-ca"  # the Memorystore server CA, mounted from Secret Manager
REDIS_CA_FILE = "ca.pem"
SHUTDOWN_GRACE_S = 8  # Cloud Run sends SIGKILL 10 s after SIGTERM: finish running jobs before that
MIGRATE_TIMEOUT_S = 600
SOURCE_EXCLUDES = (".git", ".local", ".venv", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".build", "tests")

# Google APIs the deployment uses, by the Terraform resource types that need them.
APIS = {
    "artifactregistry": ("google_artifact_registry_repository", "google_cloudfunctions2_function"),
    "cloudbuild": ("google_cloudfunctions2_function",),
    "cloudfunctions": ("google_cloudfunctions2_function",),
    "cloudscheduler": ("google_cloud_scheduler_job",),
    "compute": ("google_compute_",),
    "iam": ("google_service_account",),
    "redis": ("google_redis_instance",),
    "run": ("google_cloud_run_v2_", "google_cloudfunctions2_function"),
    "secretmanager": ("google_secret_manager_",),
    "servicenetworking": ("google_service_networking_connection",),
    "sqladmin": ("google_sql_",),
    "vpcaccess": ("google_vpc_access_connector",),
}


@dataclass(frozen=True)
class DeployConfig:
    """Everything about one deployment that the manifest does not say.

    Empty `domain`, `email_sender` and `set_password_url` become Terraform variables the operator must set
    (the gcloud rendering needs them given).
    """

    project: str
    region: str = "europe-west1"
    env_name: str = "prod"
    image_source: str = "."  # the repository, as seen from where terraform / gcloud run
    image: str = ""  # container image of workers and the migrate job; default: Artifact Registry in the project
    domain: str = ""  # the public API's host name (managed certificate)
    email_sender: str = ""
    set_password_url: str = ""
    ses_region: str = "eu-west-1"
    functions_service_account: str = "provisioner-fn"
    consumer_service_account: str = "provisioner-consumer"
    migrate_service_account: str = "provisioner-migrate"
    scheduler_service_account: str = "provisioner-scheduler"
    network: str = "provisioner"
    vpc_connector: str = "provisioner-conn"
    vpc_connector_range: str = "10.8.0.0/28"
    run_subnet_range: str = "10.10.0.0/24"  # Direct VPC egress of the worker pool and the migrate job
    db_tier: str = "db-custom-2-7680"
    db_name: str = "provisioner"
    db_user: str = "provisioner"
    db_pool_max: int = 10  # DB_POOL_MAX of every instance
    db_reserved_connections: int = 20  # migrations, operators, Cloud SQL's own
    db_max_connections: int = 0  # 0: exactly what the manifest needs (see connection_budget)
    redis_memory_size_gb: int = 1
    redis_version: str = "REDIS_7_2"
    scheduler_time_zone: str = "Etc/UTC"
    function_memory: str = "512Mi"
    function_cpu: str = "1"
    worker_memory: str = "512Mi"
    worker_cpu: str = "1"
    queue_name: str = "user-creation"
    queue_prefix: str = "bull"  # on Redis Cluster: "{bull}" (hash tag), see infra/README.md
    artifact_repository: str = "provisioner"
    source_excludes: tuple[str, ...] = SOURCE_EXCLUDES  # paths under image_source left out of the functions' zip
    secret_env: tuple[str, ...] = (
        "DATABASE_URL", "REDIS_URL", "AUTH_JWT_SECRET",
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",  # SES is an AWS service: its credentials are secrets too
    )
    extra_env: dict[str, str] = field(default_factory=dict)  # more non-secret settings (shared/settings.py)

    @property
    def prefix(self) -> str:
        """The stem of every resource name: `provisioner-<env>`."""
        return f"provisioner-{self.env_name}"

    @property
    def image_ref(self) -> str:
        """The container image of the workers and the migrate job."""
        return self.image or (f"{self.region}-docker.pkg.dev/{self.project}/{self.artifact_repository}/"
                              f"provisioner:latest")

    def service_account_email(self, account_id: str) -> str:
        """The e-mail address of a service account of this project."""
        return f"{account_id}@{self.project}.iam.gserviceaccount.com"

    def secret_id(self, env_var: str) -> str:
        """The Secret Manager id holding one secret setting."""
        return f"{self.prefix}-{env_var.lower().replace('_', '-')}"

    @property
    def redis_ca_secret_id(self) -> str:
        """The Secret Manager id holding the Redis server CA (not a secret, but mounted like one)."""
        return f"{self.prefix}-redis-ca"


# --------------------------------------------------------------------------------------------- derived facts


def function_name(spec: FunctionSpec, config: DeployConfig) -> str:
    """The Google Cloud name of a function, worker pool or scheduler job: `<env>-<name with hyphens>`."""
    return f"{config.env_name}-{spec.name.replace('_', '-')}"


def module_of(spec: FunctionSpec) -> str:
    """The Python module of a function's source (`functions/consumer.py` -> `functions.consumer`)."""
    return spec.source.removesuffix(".py").replace("/", ".")


def served(specs: dict[str, FunctionSpec]) -> list[FunctionSpec]:
    """The functions deployed as Cloud Run functions (http and scheduled), by name."""
    return [specs[name] for name in sorted(specs) if specs[name].kind in ("http", "scheduled")]


def workers(specs: dict[str, FunctionSpec]) -> list[FunctionSpec]:
    """The long-running consumers, deployed as Cloud Run worker pools, by name."""
    return [specs[name] for name in sorted(specs) if specs[name].kind == "worker"]


def scheduled(specs: dict[str, FunctionSpec]) -> list[FunctionSpec]:
    """The functions a Cloud Scheduler job fires, by name."""
    return [spec for spec in served(specs) if spec.kind == "scheduled"]


def routed(specs: dict[str, FunctionSpec]) -> list[FunctionSpec]:
    """The functions behind the load balancer (those with routes), by name."""
    return [spec for spec in served(specs) if spec.routes]


def lb_path(path: str) -> str:
    """A manifest path as a URL-map path: each `{param}` segment becomes `*` (exactly one segment)."""
    return re.sub(r"\{[a-z_]+\}", "*", path)


def connection_budget(specs: dict[str, FunctionSpec], config: DeployConfig) -> int:
    """PostgreSQL connections the deployment may open at most: every instance's pool full, plus a reserve."""
    return sum(spec.max_instances for spec in specs.values()) * config.db_pool_max + config.db_reserved_connections


def max_connections(specs: dict[str, FunctionSpec], config: DeployConfig) -> int:
    """Cloud SQL's max_connections: the configured value, refused if the manifest could exceed it."""
    need = connection_budget(specs, config)
    if config.db_max_connections and config.db_max_connections < need:
        raise ValueError(f"db_max_connections={config.db_max_connections} is below what the manifest can open "
                         f"({need} = sum(max_instances) x DB_POOL_MAX {config.db_pool_max} + reserve)")
    return config.db_max_connections or need


def validate(specs: dict[str, FunctionSpec], config: DeployConfig) -> None:
    """Refuse a manifest or config the rendering cannot express faithfully."""
    if not specs:
        raise ValueError("the manifest lists no function")
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,11}", config.env_name):
        raise ValueError(f"env_name {config.env_name!r}: lowercase letters, digits and '-', at most 12")
    leaked = sorted(set(config.extra_env) & set(config.secret_env))
    if leaked:
        raise ValueError(f"secret settings cannot be plain environment values: {', '.join(leaked)}")
    for name, spec in specs.items():
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,40}", name):
            raise ValueError(f"function name {name!r}: lowercase letters, digits and '_'")
        if spec.kind not in KINDS:
            raise ValueError(f"{name}: unknown kind {spec.kind!r} (one of {', '.join(KINDS)})")
        if spec.kind == "scheduled" and not spec.schedule:
            raise ValueError(f"{name}: a scheduled function needs a schedule")
        if spec.kind == "worker" and spec.routes:
            raise ValueError(f"{name}: a worker is never publicly routed")
        if not 0 <= spec.min_instances <= spec.max_instances or spec.max_instances < 1:
            raise ValueError(f"{name}: needs 0 <= min_instances <= max_instances and max_instances >= 1")
        if spec.kind != "worker" and not 1 <= spec.timeout_s <= 3600:
            raise ValueError(f"{name}: Cloud Run functions take a timeout of 1..3600 s")
        if not 1 <= spec.concurrency <= 1000:
            raise ValueError(f"{name}: concurrency must be 1..1000")
    seen: dict[tuple[str, str], str] = {}
    for name, spec in sorted(specs.items()):
        for route in spec.routes:
            other = seen.setdefault((route.method, lb_path(route.path)), name)
            if other != name:
                raise ValueError(f"{route.method} {route.path} is routed to both {other} and {name}")
    max_connections(specs, config)


def plain_env(config: DeployConfig, values: dict[str, str]) -> dict[str, str]:
    """The non-secret settings every runtime gets (`values` holds domain, sender and password link)."""
    env = {
        "APP_ENV": "production",
        "QUEUE_NAME": config.queue_name,
        "QUEUE_PREFIX": config.queue_prefix,
        "AWS_REGION": config.ses_region,
        "EMAIL_SENDER": values["email_sender"],
        "SET_PASSWORD_URL": values["set_password_url"],
        "PUBLIC_BASE_URL": f"https://{values['domain']}",
        "DB_POOL_MAX": str(config.db_pool_max),
    }
    env.update(config.extra_env)
    return env


def function_env(spec: FunctionSpec, config: DeployConfig, values: dict[str, str]) -> dict[str, str]:
    """Plain environment of one function or worker; secrets are never in it."""
    env = plain_env(config, values)
    if spec.kind == "worker":
        env["CONSUMER_CONCURRENCY"] = str(spec.concurrency)
        env["CONSUMER_SHUTDOWN_GRACE_S"] = str(SHUTDOWN_GRACE_S)
    else:
        env["FUNCTION_USE_ASGI"] = "true"  # as `invoke dev` runs them: functions-framework --asgi
    if spec.kind == "scheduled":
        # Cloud Scheduler calls with a Google-signed OIDC token of this account (checked by the function).
        env["SCHEDULER_SERVICE_ACCOUNT"] = values["scheduler_email"]
    return env


# ----------------------------------------------------------------------------------------------- URL map


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


# ----------------------------------------------------------------------------------------------- Terraform


def _ref(rtype: str, name: str, attr: str = "id") -> str:
    return "${" + f"{rtype}.{name}.{attr}" + "}"


class _Terraform:
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


def _var(name: str) -> str:
    return "${var." + name + "}"


def _operator_variable(tf: _Terraform, name: str, default: str, description: str) -> None:
    body: Json = {"type": "string", "description": description}
    if default:
        body["default"] = default
    tf.block("main.tf.json", "variable", name, body)


def _tf_accounts(tf: _Terraform, config: DeployConfig) -> dict[str, str]:
    accounts = {
        "functions": (config.functions_service_account, "provisioner HTTP and scheduled functions"),
        "consumer": (config.consumer_service_account, "provisioner queue consumers (worker pools)"),
        "migrate": (config.migrate_service_account, "provisioner database migrations (Cloud Run job)"),
        "scheduler": (config.scheduler_service_account, "Cloud Scheduler identity invoking scheduled functions"),
    }
    for key, (account_id, title) in accounts.items():
        tf.resource("main.tf.json", "google_service_account", key, {"account_id": account_id, "display_name": title})
    return {key: _ref("google_service_account", key, "email") for key in accounts}


def _tf_network(tf: _Terraform, config: DeployConfig) -> None:
    f = "network.tf.json"
    tf.resource(f, "google_compute_network", "main", {"name": config.network, "auto_create_subnetworks": False})
    tf.resource(f, "google_compute_subnetwork", "run", {
        "name": f"{config.network}-run", "region": config.region, "network": _ref("google_compute_network", "main"),
        "ip_cidr_range": config.run_subnet_range, "private_ip_google_access": True,
    })
    tf.resource(f, "google_compute_global_address", "private_services", {
        "name": f"{config.network}-psa", "purpose": "VPC_PEERING", "address_type": "INTERNAL", "prefix_length": 16,
        "network": _ref("google_compute_network", "main"),
    })
    tf.resource(f, "google_service_networking_connection", "private_services", {
        "network": _ref("google_compute_network", "main"), "service": "servicenetworking.googleapis.com",
        "reserved_peering_ranges": [_ref("google_compute_global_address", "private_services", "name")],
    })
    tf.resource(f, "google_vpc_access_connector", "main", {
        "name": config.vpc_connector, "region": config.region, "ip_cidr_range": config.vpc_connector_range,
        "network": _ref("google_compute_network", "main", "name"), "min_instances": 2, "max_instances": 3,
    })


def _tf_state(tf: _Terraform, specs: dict[str, FunctionSpec], config: DeployConfig,
              emails: dict[str, str]) -> None:
    f = "state.tf.json"
    psa = ["google_service_networking_connection.private_services"]
    tf.resource(f, "google_redis_instance", "main", {
        "name": f"{config.prefix}-redis", "region": config.region, "tier": "STANDARD_HA",
        "memory_size_gb": config.redis_memory_size_gb, "redis_version": config.redis_version,
        "authorized_network": _ref("google_compute_network", "main"), "connect_mode": "PRIVATE_SERVICE_ACCESS",
        "transit_encryption_mode": "SERVER_AUTHENTICATION", "auth_enabled": True,
        "redis_configs": {"maxmemory-policy": "noeviction"},
        "persistence_config": {"persistence_mode": "RDB", "rdb_snapshot_period": "ONE_HOUR"},
        "depends_on": psa,
    })
    tf.resource(f, "google_sql_database_instance", "main", {
        "name": f"{config.prefix}-pg", "region": config.region, "database_version": "POSTGRES_16",
        "deletion_protection": True,
        "settings": {
            "tier": config.db_tier, "edition": "ENTERPRISE", "availability_type": "REGIONAL",
            "disk_type": "PD_SSD", "disk_autoresize": True, "deletion_protection_enabled": True,
            "backup_configuration": {
                "enabled": True, "point_in_time_recovery_enabled": True, "start_time": "02:00",
                "transaction_log_retention_days": 7, "backup_retention_settings": {"retained_backups": 14},
            },
            "ip_configuration": {"ipv4_enabled": False, "private_network": _ref("google_compute_network", "main"),
                                 "ssl_mode": "ENCRYPTED_ONLY"},
            "database_flags": [{"name": "max_connections", "value": str(max_connections(specs, config))}],
        },
        "depends_on": psa,
    })
    instance = _ref("google_sql_database_instance", "main", "name")
    tf.resource(f, "google_sql_database", "main", {"name": config.db_name, "instance": instance})
    tf.resource(f, "google_sql_user", "main", {"name": config.db_user, "instance": instance,
                                               "password": _var("db_password")})

    readers = {env: ["functions", "consumer"] for env in config.secret_env}
    if "DATABASE_URL" in readers:
        readers["DATABASE_URL"].append("migrate")
    readers["REDIS_CA"] = ["functions", "consumer"]
    for env, accounts in sorted(readers.items()):
        key = env.lower()
        secret_id = config.redis_ca_secret_id if env == "REDIS_CA" else config.secret_id(env)
        tf.resource(f, "google_secret_manager_secret", key, {
            "secret_id": secret_id, "replication": {"auto": {}}, "labels": {"app": "provisioner"},
        })
        for account in accounts:
            tf.resource(f, "google_secret_manager_secret_iam_member", f"{key}_{account}", {
                "secret_id": _ref("google_secret_manager_secret", key),
                "role": "roles/secretmanager.secretAccessor", "member": f"serviceAccount:{emails[account]}",
            })
    # The CA is public information Terraform knows: its version is managed here, unlike the real secrets.
    tf.resource(f, "google_secret_manager_secret_version", "redis_ca", {
        "secret": _ref("google_secret_manager_secret", "redis_ca"),
        "secret_data": '${join("\\n", google_redis_instance.main.server_ca_certs[*].cert)}',
    })


def _secret_readers(config: DeployConfig, account: str) -> list[str]:
    keys = [*(env.lower() for env in config.secret_env), "redis_ca"]
    return sorted(f"google_secret_manager_secret_iam_member.{key}_{account}" for key in keys)


def _tf_function(tf: _Terraform, spec: FunctionSpec, config: DeployConfig, values: dict[str, str],
                 emails: dict[str, str]) -> None:
    f = "functions.tf.json"
    name = function_name(spec, config)
    tf.resource(f, "google_cloudfunctions2_function", spec.name, {
        "name": name, "location": config.region,
        "description": f"{spec.name} ({spec.kind}) from {spec.source}",
        "labels": {"app": "provisioner", "env": config.env_name, "kind": spec.kind},
        "build_config": {
            "runtime": PYTHON_RUNTIME, "entry_point": spec.target,
            "environment_variables": {"GOOGLE_FUNCTION_SOURCE": spec.source},
            "source": {"storage_source": {"bucket": _ref("google_storage_bucket", "source", "name"),
                                          "object": _ref("google_storage_bucket_object", "source", "name")}},
        },
        "service_config": {
            "timeout_seconds": spec.timeout_s,
            "max_instance_request_concurrency": spec.concurrency,
            "min_instance_count": spec.min_instances,
            "max_instance_count": spec.max_instances,
            "available_memory": config.function_memory,
            "available_cpu": config.function_cpu,
            "ingress_settings": "ALLOW_INTERNAL_AND_GCLB" if spec.routes else "ALLOW_INTERNAL_ONLY",
            "all_traffic_on_latest_revision": True,
            "service_account_email": emails["functions"],
            "vpc_connector": _ref("google_vpc_access_connector", "main"),
            "vpc_connector_egress_settings": "PRIVATE_RANGES_ONLY",
            "environment_variables": function_env(spec, config, values),
            "secret_environment_variables": [
                {"key": env, "project_id": config.project, "version": "latest",
                 "secret": _ref("google_secret_manager_secret", env.lower(), "secret_id")}
                for env in config.secret_env
            ],
            "secret_volumes": [{
                "mount_path": REDIS_CA_DIR, "project_id": config.project,
                "secret": _ref("google_secret_manager_secret", "redis_ca", "secret_id"),
                "versions": [{"path": REDIS_CA_FILE, "version": "latest"}],
            }],
        },
        "depends_on": [*_secret_readers(config, "functions"), "google_secret_manager_secret_version.redis_ca"],
    })
    function = "google_cloudfunctions2_function"
    invoker = {"name": _ref(function, spec.name, "name"), "location": _ref(function, spec.name, "location"),
               "role": "roles/run.invoker"}
    if spec.routes:  # reachable only through the load balancer (ingress); callers are checked by their token
        tf.resource(f, "google_cloud_run_v2_service_iam_member", f"{spec.name}_public", {**invoker,
                                                                                          "member": "allUsers"})
    if spec.kind == "scheduled":
        tf.resource(f, "google_cloud_run_v2_service_iam_member", f"{spec.name}_scheduler", {
            **invoker, "member": f"serviceAccount:{emails['scheduler']}"})


def _container_env(env: dict[str, str], secrets: list[str]) -> list[Json]:
    plain: list[Json] = [{"name": key, "value": value} for key, value in sorted(env.items())]
    return plain + [{"name": key, "value_source": {"secret_key_ref": {
        "secret": _ref("google_secret_manager_secret", key.lower(), "secret_id"), "version": "latest"}}}
        for key in secrets]


def _direct_vpc() -> Json:
    return {"egress": "PRIVATE_RANGES_ONLY", "network_interfaces": [{
        "network": _ref("google_compute_network", "main", "name"),
        "subnetwork": _ref("google_compute_subnetwork", "run", "name")}]}


def _tf_worker(tf: _Terraform, spec: FunctionSpec, config: DeployConfig, values: dict[str, str],
               emails: dict[str, str]) -> None:
    count = f"{spec.name}_instances"
    tf.block("main.tf.json", "variable", count, {
        "type": "number", "default": spec.min_instances,
        "description": f"instances of the worker pool {spec.name} (manifest: {spec.min_instances}.."
                       f"{spec.max_instances}); the start rate limit stays global whatever the count",
        "validation": [{
            "condition": "${" + f"var.{count} >= {spec.min_instances} && var.{count} <= {spec.max_instances}" + "}",
            "error_message": f"{spec.name} runs {spec.min_instances}..{spec.max_instances} instances "
                             f"(infra/functions.toml).",
        }],
    })
    tf.resource("workers.tf.json", "google_cloud_run_v2_worker_pool", spec.name, {
        "name": function_name(spec, config), "location": config.region, "launch_stage": "BETA",
        "deletion_protection": False,
        "labels": {"app": "provisioner", "env": config.env_name, "kind": spec.kind},
        # Worker pools always have CPU (no request throttling) and are scaled by instance count.
        "scaling": {"scaling_mode": "MANUAL", "manual_instance_count": _var(count)},
        "template": {
            "service_account": emails["consumer"],
            "vpc_access": _direct_vpc(),
            "containers": [{
                "image": _var("image"),
                "command": ["python", "-m", module_of(spec)],
                "env": _container_env(function_env(spec, config, values), list(config.secret_env)),
                "resources": {"limits": {"cpu": config.worker_cpu, "memory": config.worker_memory}},
                "volume_mounts": [{"name": "redis-ca", "mount_path": REDIS_CA_DIR}],
            }],
            "volumes": [{"name": "redis-ca", "secret": {
                "secret": _ref("google_secret_manager_secret", "redis_ca", "secret_id"),
                "items": [{"path": REDIS_CA_FILE, "version": "latest"}]}}],
        },
        "depends_on": [*_secret_readers(config, "consumer"), "google_secret_manager_secret_version.redis_ca"],
    })


def _tf_migrate(tf: _Terraform, config: DeployConfig, emails: dict[str, str]) -> None:
    tf.resource("workers.tf.json", "google_cloud_run_v2_job", "migrate", {
        "name": f"{config.prefix}-migrate", "location": config.region, "deletion_protection": False,
        "labels": {"app": "provisioner", "env": config.env_name, "kind": "migrate"},
        "template": {"task_count": 1, "parallelism": 1, "template": {
            "max_retries": 0, "timeout": f"{MIGRATE_TIMEOUT_S}s", "service_account": emails["migrate"],
            "vpc_access": _direct_vpc(),
            "containers": [{
                "image": _var("image"), "command": ["invoke"], "args": ["migrate"],
                "env": _container_env({}, ["DATABASE_URL"] if "DATABASE_URL" in config.secret_env else []),
                "resources": {"limits": {"cpu": "1", "memory": "512Mi"}},
            }],
        }},
        "depends_on": ["google_secret_manager_secret_iam_member.database_url_migrate"],
    })


def _tf_scheduler(tf: _Terraform, spec: FunctionSpec, config: DeployConfig, emails: dict[str, str]) -> None:
    base = _ref("google_cloudfunctions2_function", spec.name, "service_config[0].uri")
    route = spec.routes[0] if spec.routes else None
    tf.resource("scheduler.tf.json", "google_cloud_scheduler_job", spec.name, {
        "name": function_name(spec, config), "region": config.region,
        "description": f"fires {spec.name} ({spec.schedule} {config.scheduler_time_zone})",
        "schedule": spec.schedule, "time_zone": config.scheduler_time_zone,
        "attempt_deadline": f"{min(max(spec.timeout_s, 15), 1800)}s",
        "retry_config": {"retry_count": 1},
        "http_target": {
            "http_method": route.method if route else "POST",
            "uri": base + (route.path if route else "/"),
            "oidc_token": {"service_account_email": emails["scheduler"], "audience": base},
        },
        "depends_on": [f"google_cloud_run_v2_service_iam_member.{spec.name}_scheduler"],
    })


def _tf_load_balancer(tf: _Terraform, specs: dict[str, FunctionSpec], config: DeployConfig) -> None:
    f = "lb.tf.json"
    for spec in routed(specs):
        name = function_name(spec, config)
        tf.resource(f, "google_compute_region_network_endpoint_group", spec.name, {
            "name": f"{name}-neg", "region": config.region, "network_endpoint_type": "SERVERLESS",
            "cloud_function": {"function": _ref("google_cloudfunctions2_function", spec.name, "name")},
        })
        tf.resource(f, "google_compute_backend_service", spec.name, {
            "name": f"{name}-backend", "load_balancing_scheme": "EXTERNAL_MANAGED", "protocol": "HTTPS",
            "backend": [{"group": _ref("google_compute_region_network_endpoint_group", spec.name)}],
            "log_config": {"enable": True, "sample_rate": 1},
        })
    tf.resource(f, "google_compute_url_map", "api", url_map(
        specs, lambda spec: _ref("google_compute_backend_service", spec.name), f"{config.prefix}-api"))
    tf.resource(f, "google_compute_global_address", "api", {"name": f"{config.prefix}-api"})
    tf.resource(f, "google_compute_managed_ssl_certificate", "api", {
        "name": f"{config.prefix}-api", "managed": {"domains": [_var("api_domain")]}})
    tf.resource(f, "google_compute_target_https_proxy", "api", {
        "name": f"{config.prefix}-api", "url_map": _ref("google_compute_url_map", "api"),
        "ssl_certificates": [_ref("google_compute_managed_ssl_certificate", "api")]})
    tf.resource(f, "google_compute_global_forwarding_rule", "api", {
        "name": f"{config.prefix}-api", "target": _ref("google_compute_target_https_proxy", "api"),
        "ip_address": _ref("google_compute_global_address", "api"), "ip_protocol": "TCP", "port_range": "443",
        "load_balancing_scheme": "EXTERNAL_MANAGED"})


def render_terraform(specs: dict[str, FunctionSpec], config: DeployConfig) -> dict[str, str]:
    """The deployment as a Terraform configuration in JSON syntax: file name -> content (deterministic).

    Files: main (providers, variables, APIs, service accounts), network, state (Redis, Cloud SQL, secrets),
    functions, workers (worker pools, migrate job), scheduler, lb (the one public address), outputs.
    """
    validate(specs, config)
    tf = _Terraform()
    tf.files["main.tf.json"] = {
        "terraform": {"required_version": ">= 1.5.0", "required_providers": {
            "google": {"source": "hashicorp/google", "version": ">= 6.50.0, < 8.0.0"},
            "archive": {"source": "hashicorp/archive", "version": ">= 2.4.0"}}},
        "provider": {"google": {"project": config.project, "region": config.region}},
    }
    tf.block("main.tf.json", "variable", "image", {
        "type": "string", "default": config.image_ref,
        "description": "container image (this repository, built with buildpacks) of the workers and migrate job; "
                       "give an immutable tag per release"})
    _operator_variable(tf, "api_domain", config.domain, "host name of the public API (managed certificate)")
    _operator_variable(tf, "email_sender", config.email_sender, "EMAIL_SENDER: SES-verified sender address")
    _operator_variable(tf, "set_password_url", config.set_password_url,
                       "SET_PASSWORD_URL: the page the welcome email links to")
    tf.block("main.tf.json", "variable", "db_password", {
        "type": "string", "sensitive": True,
        "description": "password of the Cloud SQL user (the same as in the DATABASE_URL secret)"})
    for api in sorted(APIS):
        tf.resource("main.tf.json", "google_project_service", api, {
            "service": f"{api}.googleapis.com", "disable_on_destroy": False})
    emails = _tf_accounts(tf, config)
    values = {"domain": _var("api_domain"), "email_sender": _var("email_sender"),
              "set_password_url": _var("set_password_url"), "scheduler_email": emails["scheduler"]}

    _tf_network(tf, config)
    _tf_state(tf, specs, config, emails)
    tf.resource("functions.tf.json", "google_storage_bucket", "source", {
        "name": f"{config.project}-{config.prefix}-source", "location": config.region,
        "uniform_bucket_level_access": True, "public_access_prevention": "enforced", "force_destroy": False})
    tf.block("functions.tf.json", "data", "archive_file", {"source": {
        "type": "zip", "source_dir": config.image_source, "excludes": list(config.source_excludes),
        "output_path": "${path.module}/.build/source.zip"}})
    tf.resource("functions.tf.json", "google_storage_bucket_object", "source", {
        "name": "source-${data.archive_file.source.output_md5}.zip",
        "bucket": _ref("google_storage_bucket", "source", "name"),
        "source": "${data.archive_file.source.output_path}"})
    for spec in served(specs):
        _tf_function(tf, spec, config, values, emails)
    tf.resource("workers.tf.json", "google_artifact_registry_repository", "images", {
        "repository_id": config.artifact_repository, "location": config.region, "format": "DOCKER"})
    for spec in workers(specs):
        _tf_worker(tf, spec, config, values, emails)
    _tf_migrate(tf, config, emails)
    for spec in scheduled(specs):
        _tf_scheduler(tf, spec, config, emails)
    if routed(specs):
        _tf_load_balancer(tf, specs, config)
        tf.block("outputs.tf.json", "output", "api_ip", {
            "value": _ref("google_compute_global_address", "api", "address"),
            "description": "point the API domain's A record here"})
        tf.block("outputs.tf.json", "output", "api_url", {"value": "https://" + _var("api_domain")})
    tf.block("outputs.tf.json", "output", "function_urls", {"value": {
        spec.name: _ref("google_cloudfunctions2_function", spec.name, "service_config[0].uri")
        for spec in served(specs)}})
    tf.block("outputs.tf.json", "output", "migrate_job", {"value": _ref("google_cloud_run_v2_job", "migrate", "name")})
    tf.block("outputs.tf.json", "output", "database_url_template", {
        "value": f"postgresql://{config.db_user}:<password>@"
                 "${google_sql_database_instance.main.private_ip_address}"
                 f":5432/{config.db_name}?sslmode=require",
        "description": "the DATABASE_URL secret's shape"})
    tf.block("outputs.tf.json", "output", "redis_url_template", {
        "value": "rediss://:<auth string>@${google_redis_instance.main.host}:${google_redis_instance.main.port}"
                 f"/0?ssl_ca_certs={REDIS_CA_DIR}/{REDIS_CA_FILE}",
        "description": "the REDIS_URL secret's shape (auth string: gcloud redis instances get-auth-string)"})
    return tf.render()


# ------------------------------------------------------------------------------------------------- gcloud


def _gcloud_values(config: DeployConfig) -> dict[str, str]:
    values = {"domain": config.domain, "email_sender": config.email_sender,
              "set_password_url": config.set_password_url}
    missing = [key for key, value in values.items() if not value]
    if missing:
        raise ValueError(f"the gcloud rendering needs {', '.join(missing)} (--domain, --email-sender, "
                         f"--set-password-url)")
    return values


def _kv(pairs: dict[str, str]) -> str:
    """KEY=VALUE,... for gcloud; switches the delimiter (gcloud topic escaping) if a value holds a comma."""
    items = [f"{key}={value}" for key, value in pairs.items()]
    if any("," in item for item in items):
        return "^|^" + "|".join(items)
    return ",".join(items)


def _cmd(*args: str) -> str:
    return shlex.join(args)


def _secret_flags(config: DeployConfig, secrets: list[str], *, with_ca: bool) -> str:
    refs = {env: f"{config.secret_id(env)}:latest" for env in secrets}
    if with_ca:
        refs[f"{REDIS_CA_DIR}/{REDIS_CA_FILE}"] = f"{config.redis_ca_secret_id}:latest"
    return "--set-secrets=" + _kv(refs)


def _backend_url(config: DeployConfig, spec: FunctionSpec) -> str:
    return (f"https://www.googleapis.com/compute/v1/projects/{config.project}/global/backendServices/"
            f"{function_name(spec, config)}-backend")


def _camel(value: Any) -> Any:
    if isinstance(value, dict):
        return {re.sub(r"_([a-z])", lambda m: m.group(1).upper(), key): _camel(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_camel(item) for item in value]
    return value


def gcloud_files(specs: dict[str, FunctionSpec], config: DeployConfig) -> dict[str, str]:
    """Files the gcloud commands read: the URL map to import (JSON, which `url-maps import` reads as YAML)."""
    validate(specs, config)
    if not routed(specs):
        return {}
    body = _camel(url_map(specs, lambda spec: _backend_url(config, spec), f"{config.prefix}-api"))
    body["hostRules"], body["pathMatchers"] = body.pop("hostRule"), body.pop("pathMatcher")  # API: plural lists
    return {"url-map.json": json.dumps(body, indent=2, sort_keys=True) + "\n"}


def gcloud_commands(specs: dict[str, FunctionSpec], config: DeployConfig) -> list[str]:
    """The deployment as `gcloud` commands, one shell-quoted string each, in the order to run them.

    Secret versions are not created here (the operator adds them, see infra/README.md); the URL map is imported
    from `url-map.json` (`gcloud_files`).
    """
    validate(specs, config)
    values = {**_gcloud_values(config),
              "scheduler_email": config.service_account_email(config.scheduler_service_account)}
    p, r = f"--project={config.project}", f"--region={config.region}"
    network = f"projects/{config.project}/global/networks/{config.network}"
    connector = f"projects/{config.project}/locations/{config.region}/connectors/{config.vpc_connector}"
    subnet = f"{config.network}-run"
    email = config.service_account_email
    run_net = [f"--network={config.network}", f"--subnet={subnet}", "--vpc-egress=private-ranges-only"]
    cmds = [_cmd("gcloud", "services", "enable", *(f"{api}.googleapis.com" for api in sorted(APIS)), p)]
    for account in (config.functions_service_account, config.consumer_service_account,
                    config.migrate_service_account, config.scheduler_service_account):
        cmds.append(_cmd("gcloud", "iam", "service-accounts", "create", account, f"--display-name={account}", p))

    cmds += [
        _cmd("gcloud", "compute", "networks", "create", config.network, "--subnet-mode=custom", p),
        _cmd("gcloud", "compute", "networks", "subnets", "create", subnet, f"--network={config.network}", r,
             f"--range={config.run_subnet_range}", "--enable-private-ip-google-access", p),
        _cmd("gcloud", "compute", "addresses", "create", f"{config.network}-psa", "--global", "--purpose=VPC_PEERING",
             "--prefix-length=16", f"--network={config.network}", p),
        _cmd("gcloud", "services", "vpc-peerings", "connect", "--service=servicenetworking.googleapis.com",
             f"--ranges={config.network}-psa", f"--network={config.network}", p),
        _cmd("gcloud", "compute", "networks", "vpc-access", "connectors", "create", config.vpc_connector, r,
             f"--network={config.network}", f"--range={config.vpc_connector_range}", "--min-instances=2",
             "--max-instances=3", p),
        _cmd("gcloud", "redis", "instances", "create", f"{config.prefix}-redis", r, "--tier=standard",
             f"--size={config.redis_memory_size_gb}", f"--redis-version={config.redis_version.lower()}",
             f"--network={network}", "--connect-mode=private-service-access",
             "--transit-encryption-mode=server-authentication", "--enable-auth",
             "--redis-config=maxmemory-policy=noeviction", "--persistence-mode=rdb", "--rdb-snapshot-period=1h", p),
        _cmd("gcloud", "sql", "instances", "create", f"{config.prefix}-pg", "--database-version=POSTGRES_16",
             "--edition=enterprise", f"--tier={config.db_tier}", r, "--availability-type=regional",
             f"--network={network}", "--no-assign-ip", "--ssl-mode=ENCRYPTED_ONLY", "--backup-start-time=02:00",
             "--enable-point-in-time-recovery", "--retained-transaction-log-days=7", "--retained-backups-count=14",
             f"--database-flags=max_connections={max_connections(specs, config)}", "--deletion-protection", p),
        _cmd("gcloud", "sql", "databases", "create", config.db_name, f"--instance={config.prefix}-pg", p),
        _cmd("gcloud", "sql", "users", "create", config.db_user, f"--instance={config.prefix}-pg", p),
        _cmd("gcloud", "sql", "users", "set-password", config.db_user, f"--instance={config.prefix}-pg",
             "--prompt-for-password", p),
    ]

    readers = {env: [config.functions_service_account, config.consumer_service_account]
               for env in config.secret_env}
    if "DATABASE_URL" in readers:
        readers["DATABASE_URL"].append(config.migrate_service_account)
    secret_ids = {config.secret_id(env): accounts for env, accounts in readers.items()}
    secret_ids[config.redis_ca_secret_id] = [config.functions_service_account, config.consumer_service_account]
    for secret_id, accounts in sorted(secret_ids.items()):
        cmds.append(_cmd("gcloud", "secrets", "create", secret_id, "--replication-policy=automatic", p))
        for account in accounts:
            cmds.append(_cmd("gcloud", "secrets", "add-iam-policy-binding", secret_id,
                             f"--member=serviceAccount:{email(account)}", "--role=roles/secretmanager.secretAccessor",
                             p))

    entry = f"python -m {module_of(workers(specs)[0])}" if workers(specs) else "invoke --list"
    cmds += [
        _cmd("gcloud", "artifacts", "repositories", "create", config.artifact_repository,
             "--repository-format=docker", f"--location={config.region}", p),
        _cmd("gcloud", "builds", "submit", config.image_source,
             f"--pack=image={config.image_ref},env=GOOGLE_ENTRYPOINT={entry}", p),
        _cmd("gcloud", "run", "jobs", "deploy", f"{config.prefix}-migrate", f"--image={config.image_ref}", r,
             "--command=invoke", "--args=migrate",
             _secret_flags(config, [e for e in config.secret_env if e == "DATABASE_URL"], with_ca=False),
             f"--service-account={email(config.migrate_service_account)}", *run_net, "--tasks=1",
             "--max-retries=0", f"--task-timeout={MIGRATE_TIMEOUT_S}s", p),
        _cmd("gcloud", "run", "jobs", "execute", f"{config.prefix}-migrate", r, "--wait", p),
    ]

    for spec in workers(specs):
        cmds.append(_cmd(
            "gcloud", "beta", "run", "worker-pools", "deploy", function_name(spec, config),
            f"--image={config.image_ref}", r, "--command=python", f"--args=-m,{module_of(spec)}",
            f"--scaling={spec.min_instances}", f"--service-account={email(config.consumer_service_account)}",
            *run_net, f"--cpu={config.worker_cpu}", f"--memory={config.worker_memory}",
            "--set-env-vars=" + _kv(dict(sorted(function_env(spec, config, values).items()))),
            _secret_flags(config, list(config.secret_env), with_ca=True),
            f"--labels=app=provisioner,env={config.env_name},kind={spec.kind},max-instances={spec.max_instances}",
            p))

    for spec in served(specs):
        name = function_name(spec, config)
        cmds.append(_cmd(
            "gcloud", "functions", "deploy", name, "--gen2", r, f"--runtime={PYTHON_RUNTIME}",
            f"--source={config.image_source}", f"--entry-point={spec.target}", "--trigger-http",
            f"--set-build-env-vars=GOOGLE_FUNCTION_SOURCE={spec.source}",
            f"--timeout={spec.timeout_s}s", f"--memory={config.function_memory}", f"--cpu={config.function_cpu}",
            f"--concurrency={spec.concurrency}", f"--min-instances={spec.min_instances}",
            f"--max-instances={spec.max_instances}",
            f"--run-service-account={email(config.functions_service_account)}",
            "--ingress-settings=" + ("internal-and-gclb" if spec.routes else "internal-only"),
            "--allow-unauthenticated" if spec.routes else "--no-allow-unauthenticated",
            f"--vpc-connector={connector}", "--egress-settings=private-ranges-only",
            "--set-env-vars=" + _kv(dict(sorted(function_env(spec, config, values).items()))),
            _secret_flags(config, list(config.secret_env), with_ca=True),
            f"--update-labels=app=provisioner,env={config.env_name},kind={spec.kind}", p))
        if spec.kind == "scheduled":
            cmds.append(_cmd("gcloud", "functions", "add-invoker-policy-binding", name, r,
                             f"--member=serviceAccount:{email(config.scheduler_service_account)}", p))

    for spec in scheduled(specs):
        name = function_name(spec, config)
        base = f"https://{config.region}-{config.project}.cloudfunctions.net/{name}"
        route = spec.routes[0] if spec.routes else None
        cmds.append(_cmd(
            "gcloud", "scheduler", "jobs", "create", "http", name, f"--location={config.region}",
            f"--schedule={spec.schedule}", f"--time-zone={config.scheduler_time_zone}",
            f"--uri={base}{route.path if route else '/'}",
            f"--http-method={(route.method if route else 'POST').lower()}",
            f"--oidc-service-account-email={email(config.scheduler_service_account)}",
            f"--oidc-token-audience={base}", f"--attempt-deadline={min(max(spec.timeout_s, 15), 1800)}s",
            "--max-retry-attempts=1", p))

    if routed(specs):
        api = f"{config.prefix}-api"
        for spec in routed(specs):
            name = function_name(spec, config)
            cmds += [
                _cmd("gcloud", "compute", "network-endpoint-groups", "create", f"{name}-neg", r,
                     "--network-endpoint-type=serverless", f"--cloud-function-name={name}", p),
                _cmd("gcloud", "compute", "backend-services", "create", f"{name}-backend", "--global",
                     "--load-balancing-scheme=EXTERNAL_MANAGED", "--protocol=HTTPS", p),
                _cmd("gcloud", "compute", "backend-services", "add-backend", f"{name}-backend", "--global",
                     f"--network-endpoint-group={name}-neg", f"--network-endpoint-group-region={config.region}", p),
            ]
        cmds += [
            _cmd("gcloud", "compute", "url-maps", "import", api, "--global", "--source=url-map.json", "--quiet", p),
            _cmd("gcloud", "compute", "addresses", "create", api, "--global", p),
            _cmd("gcloud", "compute", "ssl-certificates", "create", api, f"--domains={config.domain}", "--global", p),
            _cmd("gcloud", "compute", "target-https-proxies", "create", api, f"--url-map={api}",
                 f"--ssl-certificates={api}", "--global", p),
            _cmd("gcloud", "compute", "forwarding-rules", "create", api, "--global",
                 "--load-balancing-scheme=EXTERNAL_MANAGED", f"--address={api}", f"--target-https-proxy={api}",
                 "--ports=443", p),
        ]
    return cmds


# --------------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m infra.render", description=(
        "Render infra/functions.toml into a Google Cloud deployment (Terraform JSON or gcloud commands). "
        "Never runs gcloud or terraform."))
    parser.add_argument("--project", required=True, help="Google Cloud project id")
    parser.add_argument("--region", default=DeployConfig.region)
    parser.add_argument("--env", dest="env_name", default=DeployConfig.env_name, help="environment name (prod)")
    parser.add_argument("--format", choices=("terraform", "gcloud"), default="terraform")
    parser.add_argument("--out", type=Path, help="write the files into this directory (else: print them)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be applied, write nothing")
    parser.add_argument("--domain", default="", help="public API host name")
    parser.add_argument("--email-sender", default="", help="EMAIL_SENDER (SES-verified)")
    parser.add_argument("--set-password-url", default="", help="SET_PASSWORD_URL")
    parser.add_argument("--image", default="", help="container image of the workers and migrate job")
    parser.add_argument("--source", default="", help="the repository as seen from where terraform/gcloud run "
                                                       "(default: relative path from --out, else '.')")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI: print (`--dry-run`, or no `--out`) or write (`--out DIR`) the rendering; 0 on success, 2 on error."""
    args = _parser().parse_args(argv)
    writing = args.out is not None and not args.dry_run
    source = args.source or (os.path.relpath(REPO_ROOT, args.out.resolve()) if writing else ".")
    excludes: tuple[str, ...] = SOURCE_EXCLUDES
    if writing and args.out.resolve().is_relative_to(REPO_ROOT):  # never zip terraform's own directory
        excludes = (*excludes, args.out.resolve().relative_to(REPO_ROOT).as_posix())
    config = DeployConfig(project=args.project, region=args.region, env_name=args.env_name, image_source=source,
                          image=args.image, domain=args.domain, email_sender=args.email_sender,
                          set_password_url=args.set_password_url, source_excludes=excludes)
    specs = load_manifest()
    try:
        if args.format == "terraform":
            files = render_terraform(specs, config)
            commands: list[str] = []
        else:
            commands = gcloud_commands(specs, config)
            files = gcloud_files(specs, config)
            files["deploy.sh"] = "#!/bin/sh\nset -eu\n" + "".join(f"{command}\n" for command in commands)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not writing:
        for command in commands:
            print(command)
        for name, content in files.items():
            if name != "deploy.sh":
                print(f"# ---- {name}")
                print(content, end="")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (args.out / name).write_text(content)
        print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
