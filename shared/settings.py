"""Typed settings, read once from the environment when first asked for (never at import)."""

from __future__ import annotations

import functools
from typing import Literal

from pydantic import AnyUrl, Field, PostgresDsn, RedisDsn, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The development placeholder: Settings refuses it when APP_ENV is production (explained bandit finding).
DEV_JWT_SECRET = "dev-only-insecure-jwt-secret-change-me-0000"  # noqa: S105  # nosec B105

Environment = Literal["development", "test", "production"]


class Settings(BaseSettings):
    """Everything configurable, with the seed system's defaults."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)

    app_env: Environment = Field("production", alias="APP_ENV")
    database_url: PostgresDsn = Field(alias="DATABASE_URL")
    redis_url: RedisDsn = Field(alias="REDIS_URL")
    auth_jwt_secret: SecretStr = Field(SecretStr(DEV_JWT_SECRET), alias="AUTH_JWT_SECRET")
    jwt_audience: str = Field("authenticated", alias="AUTH_JWT_AUDIENCE")
    # The scheduled trigger: Cloud Scheduler sends a Google-signed OIDC token of this service account.
    scheduler_service_account: str = Field("", alias="SCHEDULER_SERVICE_ACCOUNT")
    oidc_jwks_url: str = Field("https://www.googleapis.com/oauth2/v3/certs", alias="OIDC_JWKS_URL")
    oidc_issuers: tuple[str, ...] = Field(("https://accounts.google.com", "accounts.google.com"),
                                         alias="OIDC_ISSUERS")

    ses_endpoint_url: AnyUrl | None = Field(None, alias="AWS_ENDPOINT_URL_SES")
    aws_region: str = Field("us-east-1", alias="AWS_REGION")
    email_sender: str = Field("no-reply@provisioner.local", alias="EMAIL_SENDER")
    set_password_url: str = Field("http://127.0.0.1:8080/set-password", alias="SET_PASSWORD_URL")
    set_password_ttl_hours: int = Field(72, alias="SET_PASSWORD_TTL_HOURS", ge=1)
    email_send_timeout_s: float = Field(5.0, alias="EMAIL_SEND_TIMEOUT_S", gt=0)

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

    log_retention_days: int = Field(7, alias="LOG_RETENTION_DAYS", ge=1)
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

    @model_validator(mode="after")
    def _refuse_dev_secret_outside_development(self) -> Settings:
        secret = self.auth_jwt_secret.get_secret_value()
        if self.app_env == "production" and (secret == DEV_JWT_SECRET or len(secret) < 32):
            raise ValueError(
                "AUTH_JWT_SECRET is the development placeholder or shorter than 32 characters; "
                "set a real secret (or APP_ENV=development for local use)"
            )
        return self

    @property
    def is_development(self) -> bool:
        """True for the local emulation and the test suite."""
        return self.app_env != "production"


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, built on first use."""
    return Settings()  # type: ignore[call-arg]  # values come from the environment
