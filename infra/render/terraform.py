"""The deployment as a Terraform configuration in JSON syntax (`*.tf.json`): `render_terraform`."""

from __future__ import annotations

import json
from typing import Any

from infra.manifest import FunctionSpec
from infra.render.config import (
    APIS,
    CA_FILE,
    EDGE_RESPONSE_HEADERS,
    MIGRATE_SECRET,
    MIGRATE_TIMEOUT_S,
    PYTHON_RUNTIME,
    REDIS_CA_DIR,
    TLS_MIN_VERSION,
    TLS_PROFILE,
    DeployConfig,
    Json,
)
from infra.render.facts import (
    account_of,
    all_secrets,
    ca_mounts,
    database_url_shape,
    function_env,
    function_name,
    max_connections,
    module_of,
    readable_secrets,
    routed,
    scheduled,
    secrets_of,
    served,
    validate,
    workers,
)
from infra.render.url_map import url_map


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


def _operator_variable(tf: _Terraform, name: str, default: str, description: str,
                       validation: Json | None = None) -> None:
    body: Json = {"type": "string", "description": description}
    if default:
        body["default"] = default
    if validation:
        body["validation"] = [validation]
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

    readers: dict[str, list[str]] = {}
    for account, names in readable_secrets(specs).items():
        for secret in names:
            readers.setdefault(secret, []).append(account)
    for secret in all_secrets(specs):
        key = secret.lower()
        tf.resource(f, "google_secret_manager_secret", key, {
            "secret_id": config.secret_id(secret), "replication": {"auto": {}}, "labels": {"app": "provisioner"},
        })
        for account in sorted(readers[secret]):
            tf.resource(f, "google_secret_manager_secret_iam_member", f"{key}_{account}", {
                "secret_id": _ref("google_secret_manager_secret", key),
                "role": "roles/secretmanager.secretAccessor", "member": f"serviceAccount:{emails[account]}",
            })
    # The CAs are public information Terraform knows: their versions are managed here, unlike the real secrets.
    ca_data = {"redis_ca": '${join("\\n", google_redis_instance.main.server_ca_certs[*].cert)}',
               "sql_ca": "${google_sql_database_instance.main.server_ca_cert[0].cert}"}
    for key, data in ca_data.items():
        if key.upper() in readers:
            tf.resource(f, "google_secret_manager_secret_version", key, {
                "secret": _ref("google_secret_manager_secret", key), "secret_data": data})


def _secret_dependencies(account: str, secrets: tuple[str, ...]) -> list[str]:
    """What a runtime waits for: its account's read grant on each secret it mounts, and the CA versions."""
    cas = [ca for ca, _ in ca_mounts(secrets)]
    return sorted([*(f"google_secret_manager_secret_iam_member.{name.lower()}_{account}" for name in (*secrets, *cas)),
                   *(f"google_secret_manager_secret_version.{ca.lower()}" for ca in cas)])


def _tf_function(tf: _Terraform, spec: FunctionSpec, config: DeployConfig, values: dict[str, str],
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
                for env in secrets
            ],
            "secret_volumes": [{
                "mount_path": directory, "project_id": config.project,
                "secret": _ref("google_secret_manager_secret", ca.lower(), "secret_id"),
                "versions": [{"path": CA_FILE, "version": "latest"}],
            } for ca, directory in ca_mounts(secrets)],
        },
        "depends_on": _secret_dependencies(account_of(spec), secrets),
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


def _container_env(env: dict[str, str], secrets: dict[str, str]) -> list[Json]:
    """Plain values, then each environment variable read from its secret (env var -> secret name)."""
    plain: list[Json] = [{"name": key, "value": value} for key, value in sorted(env.items())]
    return plain + [{"name": key, "value_source": {"secret_key_ref": {
        "secret": _ref("google_secret_manager_secret", secret.lower(), "secret_id"), "version": "latest"}}}
        for key, secret in secrets.items()]


def _ca_volumes(secrets: tuple[str, ...]) -> tuple[list[Json], list[Json]]:
    """(volume mounts, volumes) of the CA files that go with these secrets, for a Cloud Run container."""
    mounts = ca_mounts(secrets)
    return ([{"name": ca.lower().replace("_", "-"), "mount_path": directory} for ca, directory in mounts],
            [{"name": ca.lower().replace("_", "-"), "secret": {
                "secret": _ref("google_secret_manager_secret", ca.lower(), "secret_id"),
                "items": [{"path": CA_FILE, "version": "latest"}]}} for ca, _ in mounts])


def _direct_vpc() -> Json:
    return {"egress": "PRIVATE_RANGES_ONLY", "network_interfaces": [{
        "network": _ref("google_compute_network", "main", "name"),
        "subnetwork": _ref("google_compute_subnetwork", "run", "name")}]}


def _tf_worker(tf: _Terraform, spec: FunctionSpec, config: DeployConfig, values: dict[str, str],
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
        "scaling": {"scaling_mode": "MANUAL", "manual_instance_count": _var(count)},
        "template": {
            "service_account": emails["consumer"],
            "vpc_access": _direct_vpc(),
            "containers": [{
                "image": _var("image"),
                "command": ["python", "-m", module_of(spec)],
                "env": _container_env(function_env(spec, config, values), {env: env for env in secrets}),
                "resources": {"limits": {"cpu": config.worker_cpu, "memory": config.worker_memory}},
                "volume_mounts": mounts,
            }],
            "volumes": volumes,
        },
        "depends_on": _secret_dependencies(account_of(spec), secrets),
    })


def _tf_migrate(tf: _Terraform, config: DeployConfig, emails: dict[str, str]) -> None:
    """The schema owner's job: its DATABASE_URL is the owner's connection string (a secret no runtime reads)."""
    mounts, volumes = _ca_volumes(("DATABASE_URL",))
    tf.resource("workers.tf.json", "google_cloud_run_v2_job", "migrate", {
        "name": f"{config.prefix}-migrate", "location": config.region, "deletion_protection": False,
        "labels": {"app": "provisioner", "env": config.env_name, "kind": "migrate"},
        "template": {"task_count": 1, "parallelism": 1, "template": {
            "max_retries": 0, "timeout": f"{MIGRATE_TIMEOUT_S}s", "service_account": emails["migrate"],
            "vpc_access": _direct_vpc(),
            "containers": [{
                "image": _var("image"), "command": ["invoke"], "args": ["migrate"],
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
            "custom_response_headers": list(EDGE_RESPONSE_HEADERS),
        })
    tf.resource(f, "google_compute_url_map", "api", url_map(
        specs, lambda spec: _ref("google_compute_backend_service", spec.name), f"{config.prefix}-api"))
    tf.resource(f, "google_compute_global_address", "api", {"name": f"{config.prefix}-api"})
    tf.resource(f, "google_compute_managed_ssl_certificate", "api", {
        "name": f"{config.prefix}-api", "managed": {"domains": [_var("api_domain")]}})
    tf.resource(f, "google_compute_ssl_policy", "api", {
        "name": f"{config.prefix}-api", "profile": TLS_PROFILE, "min_tls_version": TLS_MIN_VERSION})
    tf.resource(f, "google_compute_target_https_proxy", "api", {
        "name": f"{config.prefix}-api", "url_map": _ref("google_compute_url_map", "api"),
        "ssl_policy": _ref("google_compute_ssl_policy", "api"),
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
                       "SET_PASSWORD_URL: the page the welcome email links to (https://)", {
                           "condition": '${can(regex("^https://[^/\\s]+(/\\S*)?$", var.set_password_url))}',
                           "error_message": "set_password_url must be an https:// address."})
    tf.block("main.tf.json", "variable", "db_password", {
        "type": "string", "sensitive": True,
        "description": f"password of the Cloud SQL user {config.db_user}, the schema owner (the same as in the "
                       f"{config.secret_id(MIGRATE_SECRET)} secret)"})
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
    private_ip = "${google_sql_database_instance.main.private_ip_address}"
    tf.block("outputs.tf.json", "output", "database_url_template", {
        "value": database_url_shape(config, config.db_runtime_user, private_ip),
        "description": f"the {config.secret_id('DATABASE_URL')} secret's shape: the runtime role (DML only)"})
    tf.block("outputs.tf.json", "output", "migrate_database_url_template", {
        "value": database_url_shape(config, config.db_user, private_ip),
        "description": f"the {config.secret_id(MIGRATE_SECRET)} secret's shape: the schema owner (migrate job)"})
    tf.block("outputs.tf.json", "output", "redis_url_template", {
        "value": "rediss://:<auth string>@${google_redis_instance.main.host}:${google_redis_instance.main.port}"
                 f"/0?ssl_ca_certs={REDIS_CA_DIR}/{CA_FILE}",
        "description": "the REDIS_URL secret's shape (auth string: gcloud redis instances get-auth-string)"})
    return tf.render()

