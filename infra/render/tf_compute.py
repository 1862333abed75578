"""Terraform: what runs. Cloud Run functions, worker pools, the migrate job and the scheduler jobs, each with
its own secrets mounted and its service account."""

from __future__ import annotations

from infra.manifest import FunctionSpec
from infra.render.config import (
    CA_FILE,
    MIGRATE_SECRET,
    MIGRATE_TIMEOUT_S,
    PYTHON_RUNTIME,
    DeployConfig,
    Json,
)
from infra.render.facts import (
    account_of,
    ca_mounts,
    function_env,
    function_name,
    module_of,
    public,
    scheduled_audience,
    secrets_of,
)
from infra.render.tf_base import Terraform, ref, var


def _secret_dependencies(account: str, secrets: tuple[str, ...]) -> list[str]:
    """What a runtime waits for: its account's read grant on each secret it mounts, and the CA versions."""
    cas = [ca for ca, _ in ca_mounts(secrets)]
    return sorted([*(f"google_secret_manager_secret_iam_member.{name.lower()}_{account}" for name in (*secrets, *cas)),
                   *(f"google_secret_manager_secret_version.{ca.lower()}" for ca in cas)])


def tf_function(tf: Terraform, spec: FunctionSpec, config: DeployConfig, values: dict[str, str],
                 emails: dict[str, str]) -> None:
    f = "functions.tf.json"
    name = function_name(spec, config)
    secrets = secrets_of(spec)
    tf.resource(f, "google_cloudfunctions2_function", spec.name, {
        "name": name, "location": config.region,
        "description": f"{spec.name} ({spec.kind}) from {spec.source}",
        "labels": {"app": "provisioner", "env": config.env_name, "kind": spec.kind},
        "build_config": {
            "runtime": PYTHON_RUNTIME, "entry_point": spec.target,
            "environment_variables": {"GOOGLE_FUNCTION_SOURCE": spec.source},
            "source": {"storage_source": {"bucket": ref("google_storage_bucket", "source", "name"),
                                          "object": ref("google_storage_bucket_object", "source", "name")}},
        },
        "service_config": {
            "timeout_seconds": spec.timeout_s,
            "max_instance_request_concurrency": spec.concurrency,
            "min_instance_count": spec.min_instances,
            "max_instance_count": spec.max_instances,
            "available_memory": config.function_memory,
            "available_cpu": config.function_cpu,
            # Scheduled functions: internal only (Cloud Scheduler of the same project counts as internal).
            "ingress_settings": "ALLOW_INTERNAL_AND_GCLB" if public(spec) else "ALLOW_INTERNAL_ONLY",
            "all_traffic_on_latest_revision": True,
            "service_account_email": emails["functions"],
            "vpc_connector": ref("google_vpc_access_connector", "main"),
            "vpc_connector_egress_settings": "PRIVATE_RANGES_ONLY",
            "environment_variables": function_env(spec, config, values),
            "secret_environment_variables": [
                {"key": env, "project_id": config.project, "version": "latest",
                 "secret": ref("google_secret_manager_secret", env.lower(), "secret_id")}
                for env in secrets
            ],
            "secret_volumes": [{
                "mount_path": directory, "project_id": config.project,
                "secret": ref("google_secret_manager_secret", ca.lower(), "secret_id"),
                "versions": [{"path": CA_FILE, "version": "latest"}],
            } for ca, directory in ca_mounts(secrets)],
        },
        "depends_on": _secret_dependencies(account_of(spec), secrets),
    })
    function = "google_cloudfunctions2_function"
    invoker = {"name": ref(function, spec.name, "name"), "location": ref(function, spec.name, "location"),
               "role": "roles/run.invoker"}
    if public(spec):  # reachable only through the load balancer (ingress); callers are checked by their token
        tf.resource(f, "google_cloud_run_v2_service_iam_member", f"{spec.name}_public", {**invoker,
                                                                                          "member": "allUsers"})
    if spec.kind == "scheduled":
        tf.resource(f, "google_cloud_run_v2_service_iam_member", f"{spec.name}_scheduler", {
            **invoker, "member": f"serviceAccount:{emails['scheduler']}"})


def _container_env(env: dict[str, str], secrets: dict[str, str]) -> list[Json]:
    """Plain values, then each environment variable read from its secret (env var -> secret name)."""
    plain: list[Json] = [{"name": key, "value": value} for key, value in sorted(env.items())]
    return plain + [{"name": key, "value_source": {"secret_key_ref": {
        "secret": ref("google_secret_manager_secret", secret.lower(), "secret_id"), "version": "latest"}}}
        for key, secret in secrets.items()]


def _ca_volumes(secrets: tuple[str, ...]) -> tuple[list[Json], list[Json]]:
    """(volume mounts, volumes) of the CA files that go with these secrets, for a Cloud Run container."""
    mounts = ca_mounts(secrets)
    return ([{"name": ca.lower().replace("_", "-"), "mount_path": directory} for ca, directory in mounts],
            [{"name": ca.lower().replace("_", "-"), "secret": {
                "secret": ref("google_secret_manager_secret", ca.lower(), "secret_id"),
                "items": [{"path": CA_FILE, "version": "latest"}]}} for ca, _ in mounts])


def _direct_vpc() -> Json:
    return {"egress": "PRIVATE_RANGES_ONLY", "network_interfaces": [{
        "network": ref("google_compute_network", "main", "name"),
        "subnetwork": ref("google_compute_subnetwork", "run", "name")}]}


def tf_worker(tf: Terraform, spec: FunctionSpec, config: DeployConfig, values: dict[str, str],
               emails: dict[str, str]) -> None:
    count = f"{spec.name}_instances"
    secrets = secrets_of(spec)
    mounts, volumes = _ca_volumes(secrets)
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
        "scaling": {"scaling_mode": "MANUAL", "manual_instance_count": var(count)},
        "template": {
            "service_account": emails["consumer"],
            "vpc_access": _direct_vpc(),
            "containers": [{
                "image": var("image"),
                "command": ["python", "-m", module_of(spec)],
                "env": _container_env(function_env(spec, config, values), {env: env for env in secrets}),
                "resources": {"limits": {"cpu": config.worker_cpu, "memory": config.worker_memory}},
                "volume_mounts": mounts,
            }],
            "volumes": volumes,
        },
        "depends_on": _secret_dependencies(account_of(spec), secrets),
    })


def tf_migrate(tf: Terraform, config: DeployConfig, emails: dict[str, str]) -> None:
    """The schema owner's job: its DATABASE_URL is the owner's connection string (a secret no runtime reads)."""
    mounts, volumes = _ca_volumes(("DATABASE_URL",))
    tf.resource("workers.tf.json", "google_cloud_run_v2_job", "migrate", {
        "name": f"{config.prefix}-migrate", "location": config.region, "deletion_protection": False,
        "labels": {"app": "provisioner", "env": config.env_name, "kind": "migrate"},
        "template": {"task_count": 1, "parallelism": 1, "template": {
            "max_retries": 0, "timeout": f"{MIGRATE_TIMEOUT_S}s", "service_account": emails["migrate"],
            "vpc_access": _direct_vpc(),
            "containers": [{
                "image": var("image"), "command": ["invoke"], "args": ["migrate"],
                "env": _container_env({}, {"DATABASE_URL": MIGRATE_SECRET}),
                "resources": {"limits": {"cpu": "1", "memory": "512Mi"}},
                "volume_mounts": mounts,
            }],
            "volumes": volumes,
        }},
        "depends_on": sorted([f"google_secret_manager_secret_iam_member.{MIGRATE_SECRET.lower()}_migrate",
                              "google_secret_manager_secret_iam_member.sql_ca_migrate",
                              "google_secret_manager_secret_version.sql_ca"]),
    })


def tf_scheduler(tf: Terraform, spec: FunctionSpec, config: DeployConfig, emails: dict[str, str],
                 project_number: str) -> None:
    base = ref("google_cloudfunctions2_function", spec.name, "service_config[0].uri")
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
            "oidc_token": {"service_account_email": emails["scheduler"],
                           "audience": scheduled_audience(spec, config, project_number)},
        },
        "depends_on": [f"google_cloud_run_v2_service_iam_member.{spec.name}_scheduler"],
    })
