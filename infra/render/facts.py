"""Facts derived from (manifest, config) that both renderings use: names, groupings, budgets, validation, env."""

from __future__ import annotations

import re

from infra.manifest import FunctionSpec
from infra.render.config import (
    APP_ROOT,
    CA_FILE,
    CA_SECRETS,
    EXTERNAL_ALB_XFF_APPENDS,
    KINDS,
    MIGRATE_SECRET,
    SHUTDOWN_GRACE_S,
    SQL_CA_DIR,
    DeployConfig,
)


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
    """The functions behind the load balancer: the http functions with routes, by name.

    A scheduled function is never behind it: only Cloud Scheduler's identity may invoke it (Cloud Run's IAM
    checks the OIDC token before the function runs, ingress internal-only), so no flood from the internet
    reaches its one instance. Its manifest route is the path the scheduler job calls on the function's URL.
    """
    return [spec for spec in served(specs) if spec.routes and spec.kind == "http"]


def public(spec: FunctionSpec) -> bool:
    """Whether a function is behind the load balancer (allUsers invoker, ingress internal-and-gclb)."""
    return spec.kind == "http" and bool(spec.routes)


def trusted_proxy_hops(spec: FunctionSpec) -> int:
    """X-Forwarded-For entries the front appends before the function sees the request (counted from the right):
    the external Application Load Balancer appends the client's address and its own, so the client is the
    second from the right. 0 for a function no load balancer fronts."""
    return len(EXTERNAL_ALB_XFF_APPENDS) if public(spec) else 0


def scheduled_audience(spec: FunctionSpec, config: DeployConfig, project_number: str) -> str:
    """The OIDC audience of a scheduled function: its deterministic Cloud Run URL
    (https://<service>-<project number>.<region>.run.app), fixed before the deploy, so it is rendered into both
    the scheduler job's token and the function's OIDC_AUDIENCE. Cloud Run's IAM accepts it as the service's own
    URL (a custom audience would need `custom_audiences`, which a Cloud Run function resource cannot set)."""
    return f"https://{function_name(spec, config)}-{project_number}.{config.region}.run.app"


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


def account_of(spec: FunctionSpec) -> str:
    """Which service account runs a function: `consumer` for workers, `functions` for the rest."""
    return "consumer" if spec.kind == "worker" else "functions"


def secrets_of(spec: FunctionSpec) -> tuple[str, ...]:
    """The secret settings one function gets (its manifest entry's `secrets`), in a stable order."""
    return tuple(sorted(spec.secrets or ()))


def ca_mounts(secrets: tuple[str, ...] | list[str]) -> list[tuple[str, str]]:
    """(CA secret, mount directory) that go with these secrets: the Redis CA with REDIS_URL, the Cloud SQL
    CA with DATABASE_URL."""
    return [CA_SECRETS[env] for env in sorted(CA_SECRETS) if env in secrets]


def readable_secrets(specs: dict[str, FunctionSpec]) -> dict[str, list[str]]:
    """Service account -> the secrets (and CA certificates) it may read: the union over the functions it runs.

    The migrate job reads only the owner's connection string; the scheduler reads nothing.
    """
    readable: dict[str, set[str]] = {"functions": set(), "consumer": set(),
                                     "migrate": {MIGRATE_SECRET, CA_SECRETS["DATABASE_URL"][0]}, "scheduler": set()}
    for spec in specs.values():
        readable[account_of(spec)] |= {*secrets_of(spec), *(ca for ca, _ in ca_mounts(secrets_of(spec)))}
    return {account: sorted(names) for account, names in readable.items()}


def all_secrets(specs: dict[str, FunctionSpec]) -> list[str]:
    """Every secret the deployment creates: those some account reads."""
    return sorted({name for names in readable_secrets(specs).values() for name in names})


def validate(specs: dict[str, FunctionSpec], config: DeployConfig) -> None:
    """Refuse a manifest or config the rendering cannot express faithfully."""
    if not specs:
        raise ValueError("the manifest lists no function")
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,11}", config.env_name):
        raise ValueError(f"env_name {config.env_name!r}: lowercase letters, digits and '-', at most 12")
    leaked = sorted(set(config.extra_env) & set(config.secret_env))
    if leaked:
        raise ValueError(f"secret settings cannot be plain environment values: {', '.join(leaked)}")
    if config.set_password_url and not re.fullmatch(r"https://[^/\s]+(/\S*)?", config.set_password_url):
        raise ValueError(f"set_password_url {config.set_password_url!r}: the welcome email's link must be https://")
    for name, spec in specs.items():
        if spec.secrets is None:
            raise ValueError(f"{name}: the manifest must say which secrets it needs (secrets = [...], "
                             f"one of {', '.join(config.secret_env)}; [] for none)")
        unknown = sorted(set(spec.secrets) - set(config.secret_env))
        if unknown:
            raise ValueError(f"{name}: unknown secret {', '.join(unknown)} (one of {', '.join(config.secret_env)})")
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


def database_url_shape(config: DeployConfig, user: str, host: str) -> str:
    """A DATABASE_URL secret's value: TCP to the private IP, the server checked against the instance's CA.

    verify-ca, not verify-full: Cloud SQL's per-instance server certificate names the instance, not its IP,
    and the CA is the instance's own, so a valid chain already proves it is our instance.
    """
    return (f"postgresql://{user}:<password>@{host}:5432/{config.db_name}"
            f"?sslmode=verify-ca&sslrootcert={SQL_CA_DIR}/{CA_FILE}")


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
        # The buildpack installs requirements.txt (the locked dependencies), not this project; functions-framework
        # puts only the source's folder (functions/) on sys.path, so `shared` is found from the app root.
        env["PYTHONPATH"] = APP_ROOT
    if spec.kind == "scheduled":
        # Cloud Scheduler calls with a Google-signed OIDC token of this account, for this audience (both checked by
        # Cloud Run's IAM and again by the function; without OIDC_AUDIENCE production settings refuse to load).
        env["SCHEDULER_SERVICE_ACCOUNT"] = values["scheduler_email"]
        env["OIDC_AUDIENCE"] = scheduled_audience(spec, config, values["project_number"])
    hops = trusted_proxy_hops(spec)
    if hops:
        env["TRUSTED_PROXY_HOPS"] = str(hops)
    return env

