"""Settings accept every libpq connection string and refuse, in production, what would fail or leak later."""

from __future__ import annotations

import secrets

import pytest
from psycopg.conninfo import make_conninfo
from pydantic import ValidationError

from shared.core.settings import DEV_SET_PASSWORD_URL, Settings

REAL_SECRET = secrets.token_urlsafe(48)
PRODUCTION = {"APP_ENV": "production", "REDIS_URL": "redis://127.0.0.1:6390/0", "AUTH_JWT_SECRET": REAL_SECRET,
              "SET_PASSWORD_URL": "https://app.example.com/set-password"}


@pytest.mark.parametrize("dsn", [
    "postgresql://postgres@/provisioner?host=/var/run/postgresql",
    "postgresql://app:pw@/provisioner?host=/cloudsql/my-project:europe-west1:main",
    "postgres://app@db.internal:5432/provisioner?sslmode=verify-full&sslrootcert=/etc/ca.pem",
    "postgresql:///provisioner",
    "host=/var/run/postgresql dbname=provisioner user=app",
    "host=127.0.0.1 port=55432 dbname=provisioner_test user=postgres",
    # what tests/support/stack.py and the bench hand over when DATABASE_URL is configured
    make_conninfo("postgresql://postgres@127.0.0.1:55432/postgres", dbname="provisioner_test_0a1b2c"),
])
def test_every_libpq_connection_string_is_accepted(dsn):
    assert Settings(**PRODUCTION, DATABASE_URL=dsn).database_url == dsn


@pytest.mark.parametrize("dsn", ["", "not a dsn", "mysql://root@db/app", "postgresql://u@h/db?nonsense=1"])
def test_a_malformed_connection_string_is_refused_naming_the_variable_not_its_value(dsn):
    with pytest.raises(ValidationError) as refused:
        Settings(**PRODUCTION, DATABASE_URL=dsn)
    assert "DATABASE_URL" in str(refused.value)
    if dsn:
        assert dsn not in str(refused.value)


def test_a_password_in_a_refused_connection_string_is_not_echoed():
    with pytest.raises(ValidationError) as refused:
        Settings(**PRODUCTION, DATABASE_URL="postgresql://u:hunter2-secret@h/db?bogus_option=1")
    assert "hunter2-secret" not in str(refused.value)


@pytest.mark.parametrize("url", ["", "http://app.example.com/set-password", "ftp://x/y", "https://"])
def test_production_needs_an_https_set_password_url(url):
    with pytest.raises(ValidationError, match="SET_PASSWORD_URL"):
        Settings(**{**PRODUCTION, "SET_PASSWORD_URL": url}, DATABASE_URL="postgresql:///p")


def test_development_falls_back_to_the_local_set_password_page_but_production_never_does():
    dev = Settings(APP_ENV="development", DATABASE_URL="postgresql:///p", REDIS_URL="redis://127.0.0.1:1/0")
    assert dev.set_password_url == DEV_SET_PASSWORD_URL
    prod = {k: v for k, v in PRODUCTION.items() if k != "SET_PASSWORD_URL"}
    with pytest.raises(ValidationError, match="SET_PASSWORD_URL"):
        Settings(**prod, DATABASE_URL="postgresql:///p")


@pytest.mark.parametrize("secret", [
    "change-me-" + "a1b2c3d4e5f6g7h8i9j0k1l2m3n4",   # long, but a placeholder word
    "your-secret-" + "Qw3rTy7uI9oP1aS5dF8gH2jK",
    "x" * 64,                                         # long, but nobody chose it
    "abcabcabcabcabcabcabcabcabcabcabcabc",
    "short-but-random-Q7",
])
def test_production_refuses_placeholder_secrets(secret):
    with pytest.raises(ValidationError, match="AUTH_JWT_SECRET"):
        Settings(**{**PRODUCTION, "AUTH_JWT_SECRET": secret}, DATABASE_URL="postgresql:///p")
    with pytest.raises(ValidationError) as refused:
        Settings(**{**PRODUCTION, "AUTH_JWT_SECRET": secret}, DATABASE_URL="postgresql:///p")
    assert secret not in str(refused.value)


@pytest.mark.parametrize("value", ["false", "0", "no", "off", False])
def test_turning_the_no_consumer_fallback_off_is_refused_in_production(value):
    with pytest.raises(ValidationError, match="NO_CONSUMER_FALLBACK=false is refused in production") as refused:
        Settings(**PRODUCTION, DATABASE_URL="postgresql:///p", NO_CONSUMER_FALLBACK=value)
    assert "APP_ENV=test or development" in str(refused.value)
    assert Settings(**PRODUCTION, DATABASE_URL="postgresql:///p").no_consumer_fallback is True
    assert Settings(**PRODUCTION, DATABASE_URL="postgresql:///p", NO_CONSUMER_FALLBACK="true").no_consumer_fallback
    for env in ("test", "development"):  # where the queue path is measured with no consumer running
        assert Settings(DATABASE_URL="postgresql:///p", REDIS_URL="redis://127.0.0.1:6390/0", APP_ENV=env,
                        NO_CONSUMER_FALLBACK=value).no_consumer_fallback is False


def test_a_scheduler_account_without_an_audience_is_refused_in_production():
    with pytest.raises(ValidationError, match="OIDC_AUDIENCE"):
        Settings(**PRODUCTION, DATABASE_URL="postgresql:///p", SCHEDULER_SERVICE_ACCOUNT="s@p.iam.gserviceaccount.com")
    ok = Settings(**PRODUCTION, DATABASE_URL="postgresql:///p", SCHEDULER_SERVICE_ACCOUNT="s@p.iam.gserviceaccount.com",
                  OIDC_AUDIENCE="https://cleanup.example.com")
    assert ok.oidc_audience == "https://cleanup.example.com"


def test_production_without_a_jwt_secret_starts_and_accepts_no_bearer_token(monkeypatch):
    # The consumer and the static functions get no AUTH_JWT_SECRET mounted (infra least privilege): they must
    # start, and an instance without a secret must never verify a token (an empty HMAC key signs anything).
    import jwt as pyjwt

    from shared.core.auth import Role, authenticate, issue_token
    from shared.core.errors import Unauthorized

    monkeypatch.delenv("AUTH_JWT_SECRET", raising=False)
    bare = {key: value for key, value in PRODUCTION.items() if key != "AUTH_JWT_SECRET"}
    settings = Settings(**bare, DATABASE_URL="postgresql:///p")
    assert settings.auth_jwt_secret.get_secret_value() == ""
    forged = pyjwt.encode({"sub": "x", "aud": "authenticated", "exp": 4_102_444_800,
                           "app_metadata": {"role": "admin"}}, "k" * 32, algorithm="HS256")
    with pytest.raises(Unauthorized):
        authenticate(f"Bearer {forged}", settings)
    with pytest.raises(RuntimeError, match="AUTH_JWT_SECRET"):
        issue_token(settings, role=Role.ADMIN, subject="x")


def test_personal_data_retention_defaults_to_90_days_and_refuses_nonsense():
    base = {"DATABASE_URL": "postgresql://u@127.0.0.1/db", "REDIS_URL": "redis://127.0.0.1:1/0", "APP_ENV": "test"}
    assert Settings(**base).pii_retention_days == 90
    assert Settings(**base, PII_RETENTION_DAYS="30").pii_retention_days == 30
    for bad in ("0", "-1", "3651", "ninety"):
        with pytest.raises(ValidationError):
            Settings(**base, PII_RETENTION_DAYS=bad)
