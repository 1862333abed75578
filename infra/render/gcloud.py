"""The same deployment as `gcloud` commands: `gcloud_commands` (+ `gcloud_files`, the URL map they import)."""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

from infra.manifest import FunctionSpec
from infra.render.config import (
    APIS,
    CA_FILE,
    EDGE_RESPONSE_HEADERS,
    MIGRATE_SECRET,
    MIGRATE_TIMEOUT_S,
    PYTHON_RUNTIME,
    TLS_MIN_VERSION,
    TLS_PROFILE,
    DeployConfig,
)
from infra.render.facts import (
    account_of,
    ca_mounts,
    function_env,
    function_name,
    max_connections,
    module_of,
    public,
    readable_secrets,
    routed,
    scheduled,
    scheduled_audience,
    secrets_of,
    served,
    validate,
    workers,
)
from infra.render.url_map import url_map


def _gcloud_values(config: DeployConfig) -> dict[str, str]:
    values = {"domain": config.domain, "email_sender": config.email_sender,
              "set_password_url": config.set_password_url, "project_number": config.project_number}
    missing = [key for key, value in values.items() if not value]
    if missing:
        raise ValueError(f"the gcloud rendering needs {', '.join(missing)} (--domain, --email-sender, "
                         f"--set-password-url, --project-number)")
    return values  # set_password_url is checked to be https:// by validate()


def _kv(pairs: dict[str, str]) -> str:
    """KEY=VALUE,... for gcloud; switches the delimiter (gcloud topic escaping) if a value holds a comma."""
    items = [f"{key}={value}" for key, value in pairs.items()]
    if any("," in item for item in items):
        return "^|^" + "|".join(items)
    return ",".join(items)


def _cmd(*args: str) -> str:
    return shlex.join(args)


def _secret_flags(config: DeployConfig, secrets: dict[str, str]) -> str:
    """--set-secrets for these env vars (env var -> secret) and their CA files; --clear-secrets for none, so
    that a redeploy also drops what an earlier release mounted."""
    refs = {env: f"{config.secret_id(secret)}:latest" for env, secret in secrets.items()}
    for ca, directory in ca_mounts(list(secrets)):
        refs[f"{directory}/{CA_FILE}"] = f"{config.secret_id(ca)}:latest"
    return "--set-secrets=" + _kv(refs) if refs else "--clear-secrets"


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

    accounts = {"functions": config.functions_service_account, "consumer": config.consumer_service_account,
                "migrate": config.migrate_service_account, "scheduler": config.scheduler_service_account}
    readers: dict[str, list[str]] = {}
    for account, names in readable_secrets(specs).items():
        for secret in names:
            readers.setdefault(secret, []).append(accounts[account])
    for secret, members in sorted(readers.items()):
        cmds.append(_cmd("gcloud", "secrets", "create", config.secret_id(secret), "--replication-policy=automatic", p))
        for account in sorted(members):
            cmds.append(_cmd("gcloud", "secrets", "add-iam-policy-binding", config.secret_id(secret),
                             f"--member=serviceAccount:{email(account)}", "--role=roles/secretmanager.secretAccessor",
                             p))
    # The CA certificates are public and known to gcloud: store them (the real secrets are the operator's).
    ca_sources = {
        "REDIS_CA": ("gcloud", "redis", "instances", "describe", f"{config.prefix}-redis", r,
                     "--format=value(serverCaCerts[0].cert)", p),
        "SQL_CA": ("gcloud", "sql", "instances", "describe", f"{config.prefix}-pg",
                   "--format=value(serverCaCert.cert)", p),
    }
    for ca, describe in ca_sources.items():
        if ca in readers:
            cmds.append(_cmd(*describe) + " | " + _cmd("gcloud", "secrets", "versions", "add", config.secret_id(ca),
                                                         "--data-file=-", p))

    entry = f"python -m {module_of(workers(specs)[0])}" if workers(specs) else "invoke --list"
    cmds += [
        _cmd("gcloud", "artifacts", "repositories", "create", config.artifact_repository,
             "--repository-format=docker", f"--location={config.region}", p),
        _cmd("gcloud", "builds", "submit", config.image_source,
             f"--pack=image={config.image_ref},env=GOOGLE_ENTRYPOINT={entry}", p),
        _cmd("gcloud", "run", "jobs", "deploy", f"{config.prefix}-migrate", f"--image={config.image_ref}", r,
             "--command=invoke", "--args=migrate", _secret_flags(config, {"DATABASE_URL": MIGRATE_SECRET}),
             f"--service-account={email(config.migrate_service_account)}", *run_net, "--tasks=1",
             "--max-retries=0", f"--task-timeout={MIGRATE_TIMEOUT_S}s", p),
        _cmd("gcloud", "run", "jobs", "execute", f"{config.prefix}-migrate", r, "--wait", p),
        # The first migration created the runtime role (DML only) without a password: give it one, the same
        # as in the DATABASE_URL secret.
        _cmd("gcloud", "sql", "users", "set-password", config.db_runtime_user, f"--instance={config.prefix}-pg",
             "--prompt-for-password", p),
    ]

    for spec in workers(specs):
        cmds.append(_cmd(
            "gcloud", "beta", "run", "worker-pools", "deploy", function_name(spec, config),
            f"--image={config.image_ref}", r, "--command=python", f"--args=-m,{module_of(spec)}",
            f"--scaling={spec.min_instances}", f"--service-account={email(accounts[account_of(spec)])}",
            *run_net, f"--cpu={config.worker_cpu}", f"--memory={config.worker_memory}",
            "--set-env-vars=" + _kv(dict(sorted(function_env(spec, config, values).items()))),
            _secret_flags(config, {env: env for env in secrets_of(spec)}),
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
            f"--run-service-account={email(accounts[account_of(spec)])}",
            "--ingress-settings=" + ("internal-and-gclb" if public(spec) else "internal-only"),
            "--allow-unauthenticated" if public(spec) else "--no-allow-unauthenticated",
            f"--vpc-connector={connector}", "--egress-settings=private-ranges-only",
            "--set-env-vars=" + _kv(dict(sorted(function_env(spec, config, values).items()))),
            _secret_flags(config, {env: env for env in secrets_of(spec)}),
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
            f"--oidc-token-audience={scheduled_audience(spec, config, config.project_number)}",
            f"--attempt-deadline={min(max(spec.timeout_s, 15), 1800)}s",
            "--max-retry-attempts=1", p))

    if routed(specs):
        api = f"{config.prefix}-api"
        for spec in routed(specs):
            name = function_name(spec, config)
            cmds += [
                _cmd("gcloud", "compute", "network-endpoint-groups", "create", f"{name}-neg", r,
                     "--network-endpoint-type=serverless", f"--cloud-function-name={name}", p),
                _cmd("gcloud", "compute", "backend-services", "create", f"{name}-backend", "--global",
                     "--load-balancing-scheme=EXTERNAL_MANAGED", "--protocol=HTTPS",
                     *(f"--custom-response-header={header}" for header in EDGE_RESPONSE_HEADERS), p),
                _cmd("gcloud", "compute", "backend-services", "add-backend", f"{name}-backend", "--global",
                     f"--network-endpoint-group={name}-neg", f"--network-endpoint-group-region={config.region}", p),
            ]
        cmds += [
            _cmd("gcloud", "compute", "url-maps", "import", api, "--global", "--source=url-map.json", "--quiet", p),
            _cmd("gcloud", "compute", "addresses", "create", api, "--global", p),
            _cmd("gcloud", "compute", "ssl-certificates", "create", api, f"--domains={config.domain}", "--global", p),
            _cmd("gcloud", "compute", "ssl-policies", "create", api, f"--profile={TLS_PROFILE}",
                 f"--min-tls-version={TLS_MIN_VERSION.removeprefix('TLS_').replace('_', '.')}", "--global", p),
            _cmd("gcloud", "compute", "target-https-proxies", "create", api, f"--url-map={api}",
                 f"--ssl-certificates={api}", f"--ssl-policy={api}", "--global", p),
            _cmd("gcloud", "compute", "forwarding-rules", "create", api, "--global",
                 "--load-balancing-scheme=EXTERNAL_MANAGED", f"--address={api}", f"--target-https-proxy={api}",
                 "--ports=443", p),
        ]
    return cmds

