"""Terraform: the foundation. Service accounts, the network, Redis, Cloud SQL and the secrets (who reads which)."""

from __future__ import annotations

from infra.manifest import FunctionSpec
from infra.render.config import (
    DeployConfig,
)
from infra.render.facts import (
    all_secrets,
    max_connections,
    readable_secrets,
)
from infra.render.tf_base import Terraform, ref, var


def tf_accounts(tf: Terraform, config: DeployConfig) -> dict[str, str]:
    accounts = {
        "functions": (config.functions_service_account, "provisioner HTTP and scheduled functions"),
        "consumer": (config.consumer_service_account, "provisioner queue consumers (worker pools)"),
        "migrate": (config.migrate_service_account, "provisioner database migrations (Cloud Run job)"),
        "scheduler": (config.scheduler_service_account, "Cloud Scheduler identity invoking scheduled functions"),
    }
    for key, (account_id, title) in accounts.items():
        tf.resource("main.tf.json", "google_service_account", key, {"account_id": account_id, "display_name": title})
    return {key: ref("google_service_account", key, "email") for key in accounts}


def tf_network(tf: Terraform, config: DeployConfig) -> None:
    f = "network.tf.json"
    tf.resource(f, "google_compute_network", "main", {"name": config.network, "auto_create_subnetworks": False})
    tf.resource(f, "google_compute_subnetwork", "run", {
        "name": f"{config.network}-run", "region": config.region, "network": ref("google_compute_network", "main"),
        "ip_cidr_range": config.run_subnet_range, "private_ip_google_access": True,
        "log_config": {"aggregation_interval": "INTERVAL_5_MIN", "flow_sampling": 0.5,
                       "metadata": "INCLUDE_ALL_METADATA"},
    })
    tf.resource(f, "google_compute_global_address", "private_services", {
        "name": f"{config.network}-psa", "purpose": "VPC_PEERING", "address_type": "INTERNAL", "prefix_length": 16,
        "network": ref("google_compute_network", "main"),
    })
    tf.resource(f, "google_service_networking_connection", "private_services", {
        "network": ref("google_compute_network", "main"), "service": "servicenetworking.googleapis.com",
        "reserved_peering_ranges": [ref("google_compute_global_address", "private_services", "name")],
    })
    tf.resource(f, "google_vpc_access_connector", "main", {
        "name": config.vpc_connector, "region": config.region, "ip_cidr_range": config.vpc_connector_range,
        "network": ref("google_compute_network", "main", "name"), "min_instances": 2, "max_instances": 3,
    })


def tf_state(tf: Terraform, specs: dict[str, FunctionSpec], config: DeployConfig,
              emails: dict[str, str]) -> None:
    f = "state.tf.json"
    psa = ["google_service_networking_connection.private_services"]
    tf.resource(f, "google_redis_instance", "main", {
        "name": f"{config.prefix}-redis", "region": config.region, "tier": "STANDARD_HA",
        "memory_size_gb": config.redis_memory_size_gb, "redis_version": config.redis_version,
        "authorized_network": ref("google_compute_network", "main"), "connect_mode": "PRIVATE_SERVICE_ACCESS",
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
            "ip_configuration": {"ipv4_enabled": False, "private_network": ref("google_compute_network", "main"),
                                 "ssl_mode": "ENCRYPTED_ONLY"},
            # Connections, disconnections, checkpoints and DDL go to Cloud Logging (cheap; checkov CKV_GCP_51-53,
            # CKV_GCP_111); statement durations and pgaudit are left off (infra/README.md, "IaC scan").
            "database_flags": [{"name": "max_connections", "value": str(max_connections(specs, config))},
                               {"name": "log_checkpoints", "value": "on"},
                               {"name": "log_connections", "value": "on"},
                               {"name": "log_disconnections", "value": "on"},
                               {"name": "log_statement", "value": "ddl"}],
        },
        "depends_on": psa,
    })
    instance = ref("google_sql_database_instance", "main", "name")
    tf.resource(f, "google_sql_database", "main", {"name": config.db_name, "instance": instance})
    tf.resource(f, "google_sql_user", "main", {"name": config.db_user, "instance": instance,
                                               "password": var("db_password")})

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
                "secret_id": ref("google_secret_manager_secret", key),
                "role": "roles/secretmanager.secretAccessor", "member": f"serviceAccount:{emails[account]}",
            })
    # The CAs are public information Terraform knows: their versions are managed here, unlike the real secrets.
    ca_data = {"redis_ca": '${join("\\n", google_redis_instance.main.server_ca_certs[*].cert)}',
               "sql_ca": "${google_sql_database_instance.main.server_ca_cert[0].cert}"}
    for key, data in ca_data.items():
        if key.upper() in readers:
            tf.resource(f, "google_secret_manager_secret_version", key, {
                "secret": ref("google_secret_manager_secret", key), "secret_data": data})
