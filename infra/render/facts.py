"""Facts derived from (manifest, config) that both renderings use: names, groupings, budgets, validation, env."""

from __future__ import annotations

import re

from infra.manifest import FunctionSpec
from infra.render.config import KINDS, SHUTDOWN_GRACE_S, DeployConfig


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

