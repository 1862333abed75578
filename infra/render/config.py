"""What one deployment is, beyond the manifest: `DeployConfig` and the constants every rendering shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Json = dict[str, Any]

KINDS = ("http", "scheduled", "worker")
PYTHON_RUNTIME = "python311"
APP_ROOT = "/workspace"  # where Google's buildpacks put the source (this repository) in the image
REDIS_CA_DIR = "/secrets/redis-ca"  # the Memorystore server CA, mounted from Secret Manager
SQL_CA_DIR = "/secrets/sql-ca"  # the Cloud SQL instance's server CA: the runtime verifies the server with it
CA_FILE = "ca.pem"
REDIS_CA_FILE = CA_FILE
# The secret holding the owner's connection string: only the migrate job reads it (as its DATABASE_URL).
MIGRATE_SECRET = "MIGRATE_DATABASE_URL"  # noqa: S105 - the name of a secret, not its value
# Public CA certificates, kept in Secret Manager to be mounted as files next to the secret that needs them.
CA_SECRETS = {"REDIS_URL": ("REDIS_CA", REDIS_CA_DIR), "DATABASE_URL": ("SQL_CA", SQL_CA_DIR)}
# Set by the load balancer on every answer: HTTPS only from now on (a year), and nothing of this API is cached.
EDGE_RESPONSE_HEADERS = ("Strict-Transport-Security: max-age=31536000; includeSubDomains", "Cache-Control: no-store")
# What Google's global external Application Load Balancer does to X-Forwarded-For: it appends
# `<client ip>, <load balancer ip>` to whatever the client sent. A function behind it therefore finds the real
# client in the second entry from the right: its TRUSTED_PROXY_HOPS is the number of entries the front appends.
EXTERNAL_ALB_XFF_APPENDS = ("<client ip>", "<load balancer ip>")
TLS_MIN_VERSION = "TLS_1_2"
TLS_PROFILE = "MODERN"
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
    # The project's number: scheduled functions' OIDC audience is their deterministic Cloud Run URL,
    # https://<service>-<number>.<region>.run.app. Terraform reads it (data.google_project); the gcloud rendering
    # needs it given (--project-number).
    project_number: str = ""
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
    db_user: str = "provisioner"  # owns the schema: the migrate job connects as it
    db_runtime_user: str = "provisioner_runtime"  # DML only; created by infra/migrations/0006_runtime_role.sql
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
    secret_env: tuple[str, ...] = (  # the secrets a manifest entry may name in `secrets`
        "DATABASE_URL", "REDIS_URL", "AUTH_JWT_SECRET",
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",  # SES is an AWS service: its credentials are secrets too
        "ALERT_WEBHOOK_URL",  # a chat webhook URL carries its own credential
    )
    extra_env: dict[str, str] = field(default_factory=dict)  # more non-secret settings (shared/core/settings.py)

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
        """The Secret Manager id holding one secret setting (or CA certificate: REDIS_CA, SQL_CA)."""
        return f"{self.prefix}-{env_var.lower().replace('_', '-')}"

    @property
    def redis_ca_secret_id(self) -> str:
        """The Secret Manager id holding the Redis server CA (not a secret, but mounted like one)."""
        return self.secret_id("REDIS_CA")

