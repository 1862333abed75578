"""Typed settings, read once from the environment when first asked for (never at import)."""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Literal

from psycopg.conninfo import conninfo_to_dict
from pydantic import (
    AnyUrl,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    RedisDsn,
    SecretStr,
    field_validator,
    model_validator,
)

# The development placeholder: Settings refuses it when APP_ENV is production (explained bandit finding).
DEV_JWT_SECRET = "dev-only-insecure-jwt-secret-change-me-0000"  # noqa: S105  # nosec B105
DEV_SET_PASSWORD_URL = "http://127.0.0.1:8080/set-password"  # noqa: S105  # nosec B105 (a page, not a secret)
# Words that mark a secret someone forgot to replace (refused in production, whatever its length).
_PLACEHOLDER_WORDS = ("change-me", "changeme", "change_me", "placeholder", "replace-me", "replaceme", "dev-only",
                      "example", "your-secret", "insecure", "default")

Environment = Literal["development", "test", "production"]


class Settings(BaseModel):
    """Everything configurable, with the seed system's defaults.

    `Settings(**values)` reads every field from the environment by its alias (any case), the keyword values
    winning: what pydantic-settings' `BaseSettings` did here, without its import and its per-field source
    machinery (about 35 ms of every instance's cold start, import and first build together).
    """

    # hide_input_in_errors: a refused DATABASE_URL or secret must not be echoed into a log by the error.
    model_config = ConfigDict(extra="ignore", hide_input_in_errors=True, validate_default=True)

    def __init__(self, **values: Any) -> None:
        super().__init__(**{**_from_environment(), **values})

    app_env: Environment = Field("production", alias="APP_ENV")
    # Any libpq connection string: URI (also `postgresql://user@/db?host=/cloudsql/p:r:i`) or `key=value` form.
    database_url: str = Field(alias="DATABASE_URL")
    redis_url: RedisDsn = Field(alias="REDIS_URL")
    # Unset in production: this instance accepts no HS256 bearer token (the consumer and static functions get no
    # secret mounted). Unset in development/test: the dev placeholder.
    auth_jwt_secret: SecretStr = Field(SecretStr(""), alias="AUTH_JWT_SECRET")
    jwt_audience: str = Field("authenticated", alias="AUTH_JWT_AUDIENCE")
    # The scheduled trigger: Cloud Scheduler sends a Google-signed OIDC token of this service account.
    scheduler_service_account: str = Field("", alias="SCHEDULER_SERVICE_ACCOUNT")
    oidc_jwks_url: str = Field("https://www.googleapis.com/oauth2/v3/certs", alias="OIDC_JWKS_URL")
    oidc_issuers: tuple[str, ...] = Field(("https://accounts.google.com", "accounts.google.com"),
                                         alias="OIDC_ISSUERS")
    # The audience the scheduler's OIDC token must carry: the scheduled function's deterministic Cloud Run URL, which
    # the deploy rendering writes here and into the scheduler job (infra/README.md). Empty: refuse every one.
    oidc_audience: str = Field("", alias="OIDC_AUDIENCE")

    ses_endpoint_url: AnyUrl | None = Field(None, alias="AWS_ENDPOINT_URL_SES")
    aws_region: str = Field("us-east-1", alias="AWS_REGION")
    email_sender: str = Field("no-reply@provisioner.local", alias="EMAIL_SENDER")
    # Required (https) in production; development falls back to the local gateway's page.
    set_password_url: str = Field("", alias="SET_PASSWORD_URL")
    set_password_ttl_hours: int = Field(72, alias="SET_PASSWORD_TTL_HOURS", ge=1)
    email_send_timeout_s: float = Field(5.0, alias="EMAIL_SEND_TIMEOUT_S", gt=0)
    # SES' sending quota (14/s is SES' production default): one rate for every sender together; 0: no limit.
    email_rate_per_s: int = Field(14, alias="EMAIL_RATE_PER_S", ge=0)
    # How long the sync path waits for a sending slot before leaving the email to the outbox pass.
    email_rate_wait_s: float = Field(1.0, alias="EMAIL_RATE_WAIT_S", ge=0, le=30)
    # Accepted creations per caller (`sub`) in any 60 s, across every instance; 0: no limit.
    create_quota_per_minute: int = Field(120, alias="CREATE_QUOTA_PER_MINUTE", ge=0)
    # Sign-in (POST /api/auth/sign-in): token lifetime, the throttle, and which X-Forwarded-For entry is the
    # client (counted from the right: 1 = the last hop's, as the local gateway writes it; 2 behind Google's external
    # load balancer, which appends `<client ip>, <lb ip>`: the deploy rendering sets it). The throttle counts
    # attempts per (account, client) and per client, each refused over its limit (429); per account it only
    # alerts (`sign_in_attack`) from SIGN_IN_ACCOUNT_ALERT_AT on, never locking the owner out
    # (docs/sign-in-and-sessions.md).
    access_token_ttl_s: int = Field(3600, alias="ACCESS_TOKEN_TTL_S", ge=60, le=86400)
    sign_in_window_s: int = Field(900, alias="SIGN_IN_WINDOW_S", ge=1)
    sign_in_max_per_account_client: int = Field(5, alias="SIGN_IN_MAX_PER_ACCOUNT_CLIENT", ge=1)
    sign_in_max_per_address: int = Field(20, alias="SIGN_IN_MAX_PER_ADDRESS", ge=1)
    sign_in_account_alert_at: int = Field(100, alias="SIGN_IN_ACCOUNT_ALERT_AT", ge=1)
    # How long an instance trusts its copy of the ended sessions when no notification arrives (the bound when
    # its LISTEN connection is down; with it up, an ended session is refused at once).
    session_cache_ttl_s: float = Field(1.0, alias="SESSION_CACHE_TTL_S", ge=0, le=2)
    trusted_proxy_hops: int = Field(1, alias="TRUSTED_PROXY_HOPS", ge=0, le=10)

    queue_name: str = Field("user-creation", alias="QUEUE_NAME", pattern=r"^[A-Za-z0-9_{}-]+$")
    queue_prefix: str = Field("bull", alias="QUEUE_PREFIX", pattern=r"^[A-Za-z0-9_{}-]+$")
    consumer_concurrency: int = Field(5, alias="CONSUMER_CONCURRENCY", ge=1, le=100)
    rate_limit_max: int = Field(10, alias="RATE_LIMIT_MAX", ge=0)  # 0: no limit
    rate_limit_duration_ms: int = Field(1000, alias="RATE_LIMIT_DURATION_MS", ge=1)
    job_attempts: int = Field(4, alias="JOB_ATTEMPTS", ge=1, le=20)
    job_backoff_ms: int = Field(2000, alias="JOB_BACKOFF_MS", ge=0)
    keep_completed: int = Field(100, alias="KEEP_COMPLETED", ge=0)
    keep_failed: int = Field(500, alias="KEEP_FAILED", ge=0)
    consumer_lock_ms: int = Field(30_000, alias="CONSUMER_LOCK_MS", ge=1000)
    consumer_stalled_interval_ms: int = Field(15_000, alias="CONSUMER_STALLED_INTERVAL_MS", ge=500)
    consumer_max_stalled: int = Field(5, alias="CONSUMER_MAX_STALLED", ge=1)
    consumer_shutdown_grace_s: float = Field(20.0, alias="CONSUMER_SHUTDOWN_GRACE_S", ge=0)
    consumer_heartbeat_s: float = Field(5.0, alias="CONSUMER_HEARTBEAT_S", gt=0)
    consumer_heartbeat_ttl_s: int = Field(30, alias="CONSUMER_HEARTBEAT_TTL_S", ge=1)
    reconcile_interval_s: float = Field(30.0, alias="RECONCILE_INTERVAL_S", gt=0, le=60)
    reconcile_grace_s: float = Field(10.0, alias="RECONCILE_GRACE_S", ge=0)
    outbox_interval_s: float = Field(10.0, alias="OUTBOX_INTERVAL_S", gt=0)
    # With no live consumer a request is created at once (the fallback) instead of queued for nobody. `false`
    # queues regardless: only for tests and benchmarks of the queue path; refused in production.
    no_consumer_fallback: bool = Field(True, alias="NO_CONSUMER_FALLBACK")
    consumer_check_ttl_s: float = Field(1.0, alias="CONSUMER_CHECK_TTL_S", ge=0)

    # Redis on the request path: short timeouts, no retry; a hanging Redis costs at most this once.
    redis_timeout_s: float = Field(0.25, alias="REDIS_TIMEOUT_S", gt=0, le=5)
    breaker_open_s: float = Field(5.0, alias="BREAKER_OPEN_S", gt=0)
    breaker_probe_interval_s: float = Field(1.0, alias="BREAKER_PROBE_INTERVAL_S", gt=0)

    mode_cache_ttl_s: float = Field(1.0, alias="MODE_CACHE_TTL_S", ge=0, le=2)
    db_pool_min: int = Field(1, alias="DB_POOL_MIN", ge=0)
    db_pool_max: int = Field(10, alias="DB_POOL_MAX", ge=1)
    db_timeout_s: float = Field(2.0, alias="DB_TIMEOUT_S", gt=0)
    # Every statement of the pool's connections is cancelled past this (0: none). The runtime role also has its
    # own 30 s default in the database (migration 0020), a backstop for connections made outside the pool.
    db_statement_timeout_ms: int = Field(15_000, alias="DB_STATEMENT_TIMEOUT_MS", ge=0, le=600_000)

    log_retention_days: int = Field(7, alias="LOG_RETENTION_DAYS", ge=1)
    # Finished requests, bulk rejected/duplicate cells, outbox rows and health events older than this keep ids,
    # times and outcomes only (docs/personal-data.md). At most ten years; at least one day.
    pii_retention_days: int = Field(90, alias="PII_RETENTION_DAYS", ge=1, le=3650)
    max_body_bytes: int = Field(16 * 1024, alias="MAX_BODY_BYTES", ge=1024)
    # Bulk uploads (POST /api/users/bulk) and the drain that creates their rows while the queue is off.
    bulk_max_bytes: int = Field(2 * 1024 * 1024, alias="BULK_MAX_BYTES", ge=1024)
    bulk_max_rows: int = Field(5000, alias="BULK_MAX_ROWS", ge=1)
    bulk_enqueue_chunk: int = Field(250, alias="BULK_ENQUEUE_CHUNK", ge=1, le=5000)
    bulk_drain_budget_s: float = Field(45.0, alias="BULK_DRAIN_BUDGET_S", gt=0)
    bulk_drain_lease_s: float = Field(120.0, alias="BULK_DRAIN_LEASE_S", gt=0)
    bulk_drain_idle_s: float = Field(2.0, alias="BULK_DRAIN_IDLE_S", gt=0)
    public_base_url: str = Field("", alias="PUBLIC_BASE_URL")
    instance_name: str = Field("", alias="INSTANCE_NAME")

    # Alerts (shared/operations/alerts.py): where they go, how long a delivery may take, how often a failed one
    # is retried.
    alert_webhook_url: HttpUrl | None = Field(None, alias="ALERT_WEBHOOK_URL")
    alert_emails: str = Field("", alias="ALERT_EMAILS")  # comma-separated recipients, through SES
    alert_timeout_s: float = Field(5.0, alias="ALERT_TIMEOUT_S", gt=0, le=30)
    alert_retry_base_s: float = Field(30.0, alias="ALERT_RETRY_BASE_S", ge=0)
    alert_window_s: int = Field(300, alias="ALERT_WINDOW_S", ge=60)
    cleanup_overdue_hours: int = Field(26, alias="CLEANUP_OVERDUE_HOURS", ge=1)
    # Traces (shared/core/tracing.py): OTLP/HTTP export when an endpoint is set, else a JSONL file when one is set.
    tracing_enabled: bool = Field(True, alias="TRACING_ENABLED")
    otel_exporter_otlp_endpoint: str = Field("", alias="OTEL_EXPORTER_OTLP_ENDPOINT")
    trace_file: str = Field("", alias="TRACE_FILE")

    @field_validator("alert_webhook_url", mode="before")
    @classmethod
    def _empty_webhook_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("database_url")
    @classmethod
    def _libpq_connection_string(cls, value: str) -> str:
        try:
            parts = conninfo_to_dict(value)
        except Exception:
            # libpq's own message may quote the string (and a password in it): name the variable only.
            raise ValueError("DATABASE_URL is not a libpq connection string (a postgresql:// URI or "
                             "key=value pairs)") from None
        if not parts:
            raise ValueError("DATABASE_URL is empty")
        return value

    @model_validator(mode="after")
    def _refuse_unsafe_production_values(self) -> Settings:
        if self.app_env != "production":
            if not self.set_password_url:
                self.set_password_url = DEV_SET_PASSWORD_URL
            if not self.auth_jwt_secret.get_secret_value():
                self.auth_jwt_secret = SecretStr(DEV_JWT_SECRET)
            return self
        secret = self.auth_jwt_secret.get_secret_value()
        if secret and (secret == DEV_JWT_SECRET or len(secret) < 32 or is_placeholder(secret)):
            raise ValueError(
                "AUTH_JWT_SECRET is a placeholder or shorter than 32 characters; "
                "set a real secret (or APP_ENV=development for local use)"
            )
        if not self.set_password_url.startswith("https://") or len(self.set_password_url) <= len("https://"):
            raise ValueError("SET_PASSWORD_URL must be set to an https:// URL in production (the link in every "
                             "welcome email)")
        if not self.no_consumer_fallback:
            raise ValueError("NO_CONSUMER_FALLBACK=false is refused in production: with no live consumer, requests "
                             "would be queued for nobody instead of created at once; it exists for tests and "
                             "benchmarks of the queue path (APP_ENV=test or development). Unset it.")
        if self.scheduler_service_account and not self.oidc_audience:
            raise ValueError("OIDC_AUDIENCE must be set (the scheduled function's URL) when "
                             "SCHEDULER_SERVICE_ACCOUNT is set")
        return self

    @property
    def is_development(self) -> bool:
        """True for the local emulation and the test suite."""
        return self.app_env != "production"


# Fields whose environment value is JSON (a list), as pydantic-settings decoded them.
_JSON_FIELDS = frozenset({"oidc_issuers"})


def _from_environment() -> dict[str, Any]:
    """The environment's value of every field, keyed by its alias; variable names match in any case."""
    environ = {key.upper(): value for key, value in os.environ.items()}
    found: dict[str, Any] = {}
    for name, field in Settings.model_fields.items():
        alias = field.alias or name
        raw = environ.get(alias.upper())
        if raw is None:
            continue
        if name in _JSON_FIELDS:
            try:
                found[alias] = json.loads(raw)
            except ValueError:
                raise ValueError(f"{alias} must be a JSON list of strings") from None
        else:
            found[alias] = raw
    return found


def is_placeholder(secret: str) -> bool:
    """True for a secret nobody chose: a known placeholder word, or too few distinct characters."""
    lowered = secret.lower()
    return any(word in lowered for word in _PLACEHOLDER_WORDS) or len(set(secret)) < 10


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, built on first use."""
    return Settings()  # values come from the environment
