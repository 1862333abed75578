"""infra/render.py turns every function of the manifest into a Google Cloud deployment, from its kind alone."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import replace
from typing import Any

import pytest

from infra.manifest import FunctionSpec, Route, load_manifest
from infra.render import (
    DeployConfig,
    account_of,
    connection_budget,
    function_name,
    gcloud_commands,
    gcloud_files,
    main,
    module_of,
    render_terraform,
)
from shared.core.settings import Settings

SECRETS = ("DATABASE_URL", "REDIS_URL", "AUTH_JWT_SECRET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
           "MIGRATE_DATABASE_URL")
CAS = {"REDIS_URL": ("redis_ca", "/secrets/redis-ca"), "DATABASE_URL": ("sql_ca", "/secrets/sql-ca")}
STATIC = ("admin_panel", "openapi_spec", "healthz")  # answer without any secret
CONFIG = DeployConfig(project="example-project", domain="api.example.com", email_sender="no-reply@example.com",
                      set_password_url="https://app.example.com/set-password", project_number="123456789012")


def public(spec: FunctionSpec) -> bool:
    """Behind the load balancer: an http function with routes (a scheduled one never is)."""
    return spec.kind == "http" and bool(spec.routes)


def terraform(specs: dict[str, FunctionSpec] | None = None, config: DeployConfig = CONFIG) -> dict[str, Any]:
    """Every resource of the rendering, merged over the files: {type: {name: body}}, plus variables."""
    merged: dict[str, Any] = {"resource": {}, "variable": {}, "output": {}, "data": {}}
    for content in render_terraform(specs if specs is not None else load_manifest(), config).values():
        doc = json.loads(content)
        for section in merged:
            for key, value in doc.get(section, {}).items():
                if section in ("resource", "data"):
                    merged[section].setdefault(key, {}).update(value)
                else:
                    merged[section][key] = value
    return merged


def resources(doc: dict[str, Any], rtype: str) -> dict[str, Any]:
    return dict(doc["resource"].get(rtype, {}))


def with_fakes() -> dict[str, FunctionSpec]:
    """The manifest plus one made-up function of each kind."""
    specs = dict(load_manifest())
    specs["zz_fake_report"] = FunctionSpec(
        name="zz_fake_report", kind="http", source="functions/zz_fake_report.py",
        routes=(Route("GET", "/api/fake/{report_id}/pdf"), Route("DELETE", "/api/fake/{report_id}/pdf")),
        timeout_s=42, concurrency=7, min_instances=2, max_instances=9, secrets=())
    specs["zz_fake_tick"] = FunctionSpec(
        name="zz_fake_tick", kind="scheduled", source="functions/zz_fake_tick.py",
        routes=(Route("POST", "/api/fake/tick"),), timeout_s=300, concurrency=1, min_instances=0, max_instances=1,
        schedule="*/5 * * * *", secrets=("DATABASE_URL",))
    specs["zz_fake_worker"] = FunctionSpec(
        name="zz_fake_worker", kind="worker", source="functions/zz_fake_worker.py", routes=(),
        timeout_s=0, concurrency=3, min_instances=2, max_instances=4, secrets=("REDIS_URL", "AWS_ACCESS_KEY_ID"))
    return specs


# ------------------------------------------------------------------------------------ a tiny URL-map evaluator


def _path_matches(rule: dict[str, Any], path: str) -> bool:
    if "full_path_match" in rule:
        return bool(rule["full_path_match"] == path)
    pattern = "^" + re.escape(rule["path_template_match"]).replace(r"\*", "[^/]+") + "$"
    return re.match(pattern, path) is not None


def _method_matches(rule: dict[str, Any], method: str) -> bool:
    return all(h["header_name"] == ":method" and h["exact_match"] == method for h in rule.get("header_matches", []))


def route_request(url_map: dict[str, Any], method: str, path: str) -> tuple[str, int]:
    """What the load balancer does with a request: ("backend", 0) or ("abort", status)."""
    (matcher,) = url_map["path_matcher"]
    assert url_map["host_rule"] == [{"hosts": ["*"], "path_matcher": matcher["name"]}]
    for rule in sorted(matcher["route_rules"], key=lambda r: r["priority"]):
        if any(_path_matches(m, path) and _method_matches(m, method) for m in rule["match_rules"]):
            if "service" in rule:
                return rule["service"], 0
            return "abort", rule["route_action"]["fault_injection_policy"]["abort"]["http_status"]
    return "abort", matcher["default_route_action"]["fault_injection_policy"]["abort"]["http_status"]


def sample(path: str) -> str:
    return re.sub(r"\{[a-z_]+\}", "x-1_2", path)


# ---------------------------------------------------------------------------------------------------- tests


def test_every_function_is_deployed_by_its_kind_with_the_manifest_limits() -> None:
    specs = load_manifest()
    doc = terraform(specs)
    functions = resources(doc, "google_cloudfunctions2_function")
    pools = resources(doc, "google_cloud_run_v2_worker_pool")
    assert set(functions) | set(pools) == set(specs)
    assert not set(functions) & set(pools)
    for name, spec in specs.items():
        if spec.kind in ("http", "scheduled"):
            body = functions[name]
            assert body["name"] == function_name(spec, CONFIG)
            assert body["build_config"]["runtime"] == "python311"
            assert body["build_config"]["entry_point"] == name
            assert body["build_config"]["environment_variables"]["GOOGLE_FUNCTION_SOURCE"] == spec.source
            assert body["build_config"]["source"]["storage_source"]["object"] == (
                "${google_storage_bucket_object.source.name}")
            service = body["service_config"]
            assert service["timeout_seconds"] == spec.timeout_s
            assert service["max_instance_request_concurrency"] == spec.concurrency
            assert service["min_instance_count"] == spec.min_instances
            assert service["max_instance_count"] == spec.max_instances
            assert service["vpc_connector"] == "${google_vpc_access_connector.main.id}"
            assert service["available_memory"]
            assert service["ingress_settings"] == ("ALLOW_INTERNAL_AND_GCLB" if public(spec) else "ALLOW_INTERNAL_ONLY")
            invokers = {key: value for key, value in resources(doc, "google_cloud_run_v2_service_iam_member").items()
                        if value["name"] == f"${{google_cloudfunctions2_function.{name}.name}}"}
            assert invokers and all(v["role"] == "roles/run.invoker" for v in invokers.values())
        else:
            assert spec.kind == "worker"
            pool = pools[name]
            (container,) = pool["template"]["containers"]
            assert container["command"] == ["python", "-m", module_of(spec)]
            assert pool["scaling"] == {"scaling_mode": "MANUAL", "manual_instance_count": f"${{var.{name}_instances}}"}
            variable = doc["variable"][f"{name}_instances"]
            assert variable["default"] == spec.min_instances
            assert variable["validation"][0]["condition"] == (
                f"${{var.{name}_instances >= {spec.min_instances} && var.{name}_instances <= {spec.max_instances}}}")
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["CONSUMER_CONCURRENCY"] == str(spec.concurrency)


def test_every_route_reaches_its_function_through_the_one_load_balancer() -> None:
    specs = load_manifest()
    doc = terraform(specs)
    url_map = resources(doc, "google_compute_url_map")["api"]
    backends = resources(doc, "google_compute_backend_service")
    negs = resources(doc, "google_compute_region_network_endpoint_group")
    for name, spec in specs.items():
        for route in spec.routes:
            target, status = route_request(url_map, route.method, sample(route.path))
            if not public(spec):  # scheduled: only Cloud Scheduler calls it, on the function's own URL
                assert status == 404 and name not in backends and name not in negs, (name, route)
                continue
            assert (target, status) == (f"${{google_compute_backend_service.{name}.id}}", 0), (name, route)
            if route.method == "GET":
                assert route_request(url_map, "HEAD", sample(route.path))[0] == target
            backend = backends[name]
            assert backend["load_balancing_scheme"] == "EXTERNAL_MANAGED"
            assert backend["backend"] == [{"group": f"${{google_compute_region_network_endpoint_group.{name}.id}}"}]
            assert negs[name]["network_endpoint_type"] == "SERVERLESS"
            assert negs[name]["cloud_function"] == {"function": f"${{google_cloudfunctions2_function.{name}.name}}"}
            if "{" in route.path:
                rule_paths = {m.get("path_template_match") for r in url_map["path_matcher"][0]["route_rules"]
                              for m in r["match_rules"]}
                assert re.sub(r"\{[a-z_]+\}", "*", route.path) in rule_paths
    known = {(r.method, r.path) for s in specs.values() for r in s.routes}
    some_path = sorted(known)[0][1]
    if ("PATCH", some_path) not in known:
        assert route_request(url_map, "PATCH", sample(some_path)) == ("abort", 405)
    assert route_request(url_map, "GET", "/no/such/route") == ("abort", 404)
    assert route_request(url_map, "GET", "/api/users/requests/a/b") == ("abort", 404)  # one segment per {param}
    proxy = resources(doc, "google_compute_target_https_proxy")["api"]
    rule = resources(doc, "google_compute_global_forwarding_rule")["api"]
    assert proxy["url_map"] == "${google_compute_url_map.api.id}"
    assert rule["target"] == "${google_compute_target_https_proxy.api.id}" and rule["port_range"] == "443"


def test_every_scheduled_function_has_a_scheduler_job_with_an_oidc_token() -> None:
    specs = load_manifest()
    doc = terraform(specs)
    jobs = resources(doc, "google_cloud_scheduler_job")
    expected = {name for name, spec in specs.items() if spec.kind == "scheduled"}
    assert set(jobs) == expected and expected
    for name in expected:
        spec, job = specs[name], jobs[name]
        assert job["schedule"] == spec.schedule
        assert job["time_zone"] == "Etc/UTC"
        target = job["http_target"]
        uri = f"${{google_cloudfunctions2_function.{name}.service_config[0].uri}}"
        assert target["http_method"] == "POST"
        assert target["uri"].startswith(uri)
        audience = f"https://{function_name(spec, CONFIG)}-123456789012.europe-west1.run.app"
        assert target["oidc_token"] == {"service_account_email": "${google_service_account.scheduler.email}",
                                        "audience": audience}
        env = resources(doc, "google_cloudfunctions2_function")[name]["service_config"]["environment_variables"]
        assert env["OIDC_AUDIENCE"] == audience and env["SCHEDULER_SERVICE_ACCOUNT"].endswith(".email}")
        invoker = resources(doc, "google_cloud_run_v2_service_iam_member")[f"{name}_scheduler"]
        assert invoker["member"] == "serviceAccount:${google_service_account.scheduler.email}"


def test_the_worker_runs_the_consumer_module_and_is_never_publicly_routed() -> None:
    specs = load_manifest()
    doc = terraform(specs)
    worker_names = {name for name, spec in specs.items() if spec.kind == "worker"}
    assert worker_names
    pools = resources(doc, "google_cloud_run_v2_worker_pool")
    assert set(pools) == worker_names
    assert any(pool["template"]["containers"][0]["command"] == ["python", "-m", "functions.consumer"]
               for pool in pools.values())
    lb_text = render_terraform(specs, CONFIG)["lb.tf.json"]
    for name in worker_names:
        assert name not in resources(doc, "google_cloudfunctions2_function")
        assert name not in resources(doc, "google_compute_backend_service")
        assert name not in resources(doc, "google_compute_region_network_endpoint_group")
        assert f".{name}." not in lb_text
        assert pools[name]["template"]["vpc_access"]["egress"] == "PRIVATE_RANGES_ONLY"


def test_redis_is_standard_ha_noeviction_with_transit_encryption_on_private_service_access() -> None:
    redis = resources(terraform(), "google_redis_instance")["main"]
    assert redis["tier"] == "STANDARD_HA"
    assert redis["redis_configs"] == {"maxmemory-policy": "noeviction"}
    assert redis["transit_encryption_mode"] == "SERVER_AUTHENTICATION"
    assert redis["connect_mode"] == "PRIVATE_SERVICE_ACCESS"
    assert redis["auth_enabled"] is True
    assert "google_service_networking_connection.private_services" in redis["depends_on"]


def test_cloud_sql_is_postgres_16_private_with_backups_pitr_and_room_for_every_pool() -> None:
    specs = load_manifest()
    doc = terraform(specs)
    sql = resources(doc, "google_sql_database_instance")["main"]
    settings = sql["settings"]
    assert sql["database_version"] == "POSTGRES_16"
    assert settings["availability_type"] == "REGIONAL"
    assert settings["ip_configuration"]["ipv4_enabled"] is False
    assert settings["ip_configuration"]["private_network"] == "${google_compute_network.main.id}"
    assert settings["backup_configuration"]["enabled"] is True
    assert settings["backup_configuration"]["point_in_time_recovery_enabled"] is True
    flags = {flag["name"]: int(flag["value"]) for flag in settings["database_flags"] if flag["value"].isdigit()}
    needed = sum(spec.max_instances for spec in specs.values()) * CONFIG.db_pool_max
    assert flags["max_connections"] >= needed and flags["max_connections"] == connection_budget(specs, CONFIG)
    assert resources(doc, "google_sql_database")["main"]["name"] == CONFIG.db_name
    assert resources(doc, "google_sql_user")["main"]["password"] == "${var.db_password}"
    assert doc["variable"]["db_password"]["sensitive"] is True
    with pytest.raises(ValueError, match="max_connections"):
        render_terraform(specs, replace(CONFIG, db_max_connections=needed // 2))


def test_secrets_come_from_secret_manager_and_are_never_plain_environment_values() -> None:
    doc = terraform()
    secrets = resources(doc, "google_secret_manager_secret")
    for env in SECRETS:
        assert env.lower() in secrets
    assert set(resources(doc, "google_secret_manager_secret_version")) == {"redis_ca", "sql_ca"}  # values: the
    # operator's; only the public CA certificates are filled in by Terraform
    for name, function in resources(doc, "google_cloudfunctions2_function").items():
        service = function["service_config"]
        assert not set(SECRETS) & set(service["environment_variables"]), name
        for item in service["secret_environment_variables"]:
            assert item["secret"] == f"${{google_secret_manager_secret.{item['key'].lower()}.secret_id}}"
    for name, pool in resources(doc, "google_cloud_run_v2_worker_pool").items():
        env = pool["template"]["containers"][0]["env"]
        assert not {e["name"] for e in env if "value" in e} & set(SECRETS), name
    job = resources(doc, "google_cloud_run_v2_job")["migrate"]["template"]["template"]["containers"][0]
    assert [e["name"] for e in job["env"]] == ["DATABASE_URL"] and "value_source" in job["env"][0]

    def plain_values(node: Any) -> list[str]:
        found: list[str] = []
        if isinstance(node, dict):
            if isinstance(node.get("environment_variables"), dict):
                found += list(node["environment_variables"])
            if isinstance(node.get("name"), str) and "value" in node and "header_matches" not in node:
                found.append(node["name"])
            for value in node.values():
                found += plain_values(value)
        elif isinstance(node, list):
            for value in node:
                found += plain_values(value)
        return found

    assert not set(plain_values(doc["resource"])) & set(SECRETS)
    for command in gcloud_commands(load_manifest(), CONFIG):
        for arg in shlex.split(command):
            if arg.startswith(("--set-env-vars=", "--update-env-vars=")):
                assert not any(f"{secret}=" in arg for secret in SECRETS), command
    with pytest.raises(ValueError, match="secret"):
        render_terraform(load_manifest(), replace(CONFIG, extra_env={"REDIS_URL": "redis://leak"}))


def mounted(doc: dict[str, Any]) -> dict[str, tuple[set[str], set[tuple[str, str]]]]:
    """Every deployable of the Terraform rendering -> (secret env vars, {(CA secret, mount dir)})."""
    found: dict[str, tuple[set[str], set[tuple[str, str]]]] = {}
    for name, function in resources(doc, "google_cloudfunctions2_function").items():
        service = function["service_config"]
        found[name] = ({s["key"] for s in service["secret_environment_variables"]},
                       {(re.sub(r".*secret\.(\w+)\.secret_id.*", r"\1", v["secret"]), v["mount_path"])
                        for v in service["secret_volumes"]})
    for name, pool in {**resources(doc, "google_cloud_run_v2_worker_pool"),
                       "migrate": resources(doc, "google_cloud_run_v2_job")["migrate"]}.items():
        template = pool["template"]["template"] if name == "migrate" else pool["template"]
        (container,) = template["containers"]
        by_volume = {v["name"]: re.sub(r".*secret\.(\w+)\.secret_id.*", r"\1", v["secret"]["secret"])
                     for v in template["volumes"]}
        found[name] = ({e["name"] for e in container["env"] if "value_source" in e},
                       {(by_volume[m["name"]], m["mount_path"]) for m in container["volume_mounts"]})
    return found


def test_each_function_gets_only_the_secrets_its_manifest_entry_names() -> None:
    specs = load_manifest()
    assert all(spec.secrets is not None for spec in specs.values())
    for name, (envs, cas) in mounted(terraform(specs)).items():
        wanted = set(specs[name].secrets or ()) if name != "migrate" else {"DATABASE_URL"}
        assert envs == wanted, name
        assert cas == {CAS[env] for env in wanted if env in CAS}, name  # the CA file goes with its secret
    for name in STATIC:
        assert mounted(terraform(specs))[name] == (set(), set())
    assert "AUTH_JWT_SECRET" not in mounted(terraform(specs))["consumer"][0]  # the consumer checks no token
    deploys = _deploys(gcloud_commands(specs, CONFIG))
    for name, spec in specs.items():
        (flag,) = [a for a in deploys[function_name(spec, CONFIG)] if a.startswith(("--set-secrets", "--clear-se"))]
        if not spec.secrets:
            assert flag == "--clear-secrets", name  # a redeploy also drops what an earlier release mounted
            continue
        refs = dict(item.split("=", 1) for item in flag.removeprefix("--set-secrets=").split(","))
        expected = {env: f"provisioner-prod-{env.lower().replace('_', '-')}:latest" for env in spec.secrets}
        expected |= {f"{CAS[env][1]}/ca.pem": f"provisioner-prod-{CAS[env][0].replace('_', '-')}:latest"
                     for env in spec.secrets if env in CAS}
        assert refs == expected, name
    (migrate,) = [shlex.split(c) for c in gcloud_commands(specs, CONFIG) if c.startswith("gcloud run jobs deploy ")]
    assert ("--set-secrets=DATABASE_URL=provisioner-prod-migrate-database-url:latest,"
            "/secrets/sql-ca/ca.pem=provisioner-prod-sql-ca:latest") in migrate


def test_the_renderer_refuses_a_function_that_does_not_say_which_secrets_it_needs() -> None:
    specs = dict(load_manifest())
    routed = next(spec for spec in specs.values() if spec.routes)
    with pytest.raises(ValueError, match=f"{routed.name}: the manifest must say which secrets"):
        render_terraform({**specs, routed.name: replace(routed, secrets=None)}, CONFIG)
    with pytest.raises(ValueError, match="unknown secret AWS_SESSION_TOKEN"):
        gcloud_commands({**specs, routed.name: replace(routed, secrets=("AWS_SESSION_TOKEN",))}, CONFIG)


def iam_grants(doc: dict[str, Any]) -> dict[str, set[tuple[str, str]]]:
    """member -> {(role, what)} over every IAM resource of the Terraform rendering."""
    grants: dict[str, set[tuple[str, str]]] = {}
    for rtype, items in doc["resource"].items():
        if "iam" not in rtype:
            continue
        for body in items.values():
            target = body.get("secret_id") or body.get("name") or rtype
            grants.setdefault(body["member"], set()).add((body["role"], target))
    return grants


def test_four_service_accounts_each_hold_only_the_roles_they_need() -> None:
    specs = load_manifest()
    doc = terraform(specs)
    accounts = resources(doc, "google_service_account")
    assert {body["account_id"] for body in accounts.values()} == {
        "provisioner-fn", "provisioner-consumer", "provisioner-migrate", "provisioner-scheduler"}
    assert not [rtype for rtype in doc["resource"] if rtype.startswith(("google_project_iam", "google_sql_user_iam"))]

    def member(account: str) -> str:
        return f"serviceAccount:${{google_service_account.{account}.email}}"

    def secret_reads(*names: str) -> set[tuple[str, str]]:
        return {("roles/secretmanager.secretAccessor", f"${{google_secret_manager_secret.{n.lower()}.id}}")
                for n in names}

    def union(kind_account: str) -> set[str]:
        wanted = {env for spec in specs.values() if account_of(spec) == kind_account for env in spec.secrets or ()}
        return wanted | {CAS[env][0].upper() for env in wanted if env in CAS}

    grants = iam_grants(doc)
    assert grants[member("functions")] == secret_reads(*union("functions"))
    assert grants[member("consumer")] == secret_reads(*union("consumer"))
    assert "AUTH_JWT_SECRET" not in union("consumer") and "MIGRATE_DATABASE_URL" not in union("functions")
    assert grants[member("migrate")] == secret_reads("MIGRATE_DATABASE_URL", "SQL_CA")
    assert grants[member("scheduler")] == {
        ("roles/run.invoker", f"${{google_cloudfunctions2_function.{name}.name}}")
        for name, spec in specs.items() if spec.kind == "scheduled"}
    assert set(grants) - {member(a) for a in ("functions", "consumer", "migrate", "scheduler")} == {"allUsers"}
    assert {role for role, _ in grants["allUsers"]} == {"roles/run.invoker"}  # routed functions, behind the LB
    assert {what for _, what in grants["allUsers"]} == {
        f"${{google_cloudfunctions2_function.{name}.name}}" for name, spec in specs.items() if public(spec)}
    for name, spec in specs.items():
        if spec.kind == "worker":
            pool = resources(doc, "google_cloud_run_v2_worker_pool")[name]
            assert pool["template"]["service_account"] == "${google_service_account.consumer.email}"
        else:
            function = resources(doc, "google_cloudfunctions2_function")[name]
            assert function["service_config"]["service_account_email"] == "${google_service_account.functions.email}"
    commands = gcloud_commands(specs, CONFIG)
    bindings = [shlex.split(c) for c in commands if " add-iam-policy-binding " in c or " add-invoker-policy" in c]
    assert not [c for c in commands if c.startswith("gcloud projects add-iam-policy-binding")]
    readers = {(args[3], args[4].split(":", 1)[1].split("@")[0]) for args in bindings if args[1] == "secrets"}
    assert {secret for secret, account in readers if account == "provisioner-migrate"} == {
        "provisioner-prod-migrate-database-url", "provisioner-prod-sql-ca"}
    assert ("provisioner-prod-auth-jwt-secret", "provisioner-consumer") not in readers


def test_the_runtime_connects_as_the_dml_role_verifying_the_server_and_migrations_as_the_owner() -> None:
    doc = terraform()
    runtime_url = doc["output"]["database_url_template"]["value"]
    owner_url = doc["output"]["migrate_database_url_template"]["value"]
    assert runtime_url.startswith(f"postgresql://{CONFIG.db_runtime_user}:")
    assert owner_url.startswith(f"postgresql://{CONFIG.db_user}:") and CONFIG.db_user != CONFIG.db_runtime_user
    for url in (runtime_url, owner_url):
        query = dict(item.split("=", 1) for item in url.split("?", 1)[1].split("&"))
        assert query == {"sslmode": "verify-ca", "sslrootcert": "/secrets/sql-ca/ca.pem"}
    # ... that file is the instance's own CA, mounted wherever DATABASE_URL is.
    assert resources(doc, "google_secret_manager_secret_version")["sql_ca"]["secret_data"] == (
        "${google_sql_database_instance.main.server_ca_cert[0].cert}")
    for name, (envs, cas) in mounted(doc).items():
        assert ("DATABASE_URL" in envs) == (("sql_ca", "/secrets/sql-ca") in cas), name
    text = json.dumps(render_terraform(load_manifest(), CONFIG)) + "\n".join(gcloud_commands(load_manifest(), CONFIG))
    assert "sslmode=require" not in text and "sslmode=prefer" not in text
    assert resources(doc, "google_sql_user")["main"]["name"] == CONFIG.db_user  # Cloud SQL makes only the owner
    assert CONFIG.db_runtime_user not in json.dumps(resources(doc, "google_sql_user"))
    commands = [shlex.split(c) for c in gcloud_commands(load_manifest(), CONFIG)]
    migrate_at = next(i for i, c in enumerate(commands) if c[:4] == ["gcloud", "run", "jobs", "execute"])
    password_at = next(i for i, c in enumerate(commands) if c[:5] == ["gcloud", "sql", "users", "set-password",
                                                                      CONFIG.db_runtime_user])
    assert password_at > migrate_at  # the first migration creates the role; then it gets its password


def test_the_https_proxy_refuses_tls_below_1_2_and_the_edge_adds_hsts_and_no_store() -> None:
    doc = terraform()
    policy = resources(doc, "google_compute_ssl_policy")["api"]
    assert policy["min_tls_version"] == "TLS_1_2" and policy["profile"] in ("MODERN", "RESTRICTED")
    assert resources(doc, "google_compute_target_https_proxy")["api"]["ssl_policy"] == (
        "${google_compute_ssl_policy.api.id}")
    backends = resources(doc, "google_compute_backend_service")
    assert set(backends) == {name for name, spec in load_manifest().items() if public(spec)}
    for name, backend in backends.items():
        headers = dict(h.split(": ", 1) for h in backend["custom_response_headers"])
        assert headers["Strict-Transport-Security"].startswith("max-age=31536000"), name
        assert int(headers["Strict-Transport-Security"].split("=")[1].split(";")[0]) >= 31536000
        assert headers["Cache-Control"] == "no-store", name
    commands = [shlex.split(c) for c in gcloud_commands(load_manifest(), CONFIG)]
    (ssl,) = [c for c in commands if c[:4] == ["gcloud", "compute", "ssl-policies", "create"]]
    assert "--min-tls-version=1.2" in ssl
    (proxy,) = [c for c in commands if c[:4] == ["gcloud", "compute", "target-https-proxies", "create"]]
    assert f"--ssl-policy={ssl[4]}" in proxy
    created = [c for c in commands if c[:4] == ["gcloud", "compute", "backend-services", "create"]]
    assert created and all(
        "--custom-response-header=Strict-Transport-Security: max-age=31536000; includeSubDomains" in c
        and "--custom-response-header=Cache-Control: no-store" in c for c in created)


def test_set_password_url_is_always_rendered_explicitly_and_only_as_https() -> None:
    doc = terraform(config=DeployConfig(project="p"))
    variable = doc["variable"]["set_password_url"]
    assert "default" not in variable  # the operator must give it: nothing defaults to 127.0.0.1
    assert "https://" in variable["validation"][0]["condition"]
    for function in resources(doc, "google_cloudfunctions2_function").values():
        assert function["service_config"]["environment_variables"]["SET_PASSWORD_URL"] == "${var.set_password_url}"
    for pool in resources(doc, "google_cloud_run_v2_worker_pool").values():
        env = {e["name"]: e.get("value") for e in pool["template"]["containers"][0]["env"]}
        assert env["SET_PASSWORD_URL"] == "${var.set_password_url}"
    given = terraform()["variable"]["set_password_url"]
    assert given["default"] == CONFIG.set_password_url
    for bad in ("http://app.example.com/set-password", "https:///no-host", "ftp://x"):
        with pytest.raises(ValueError, match="https://"):
            render_terraform(load_manifest(), replace(CONFIG, set_password_url=bad))
        with pytest.raises(ValueError, match="https://"):
            gcloud_commands(load_manifest(), replace(CONFIG, set_password_url=bad))
    with pytest.raises(ValueError, match="set_password_url"):
        gcloud_commands(load_manifest(), replace(CONFIG, set_password_url=""))
    for args in _deploys(gcloud_commands(load_manifest(), CONFIG)).values():
        (env,) = [a for a in args if a.startswith("--set-env-vars=")]
        assert f"SET_PASSWORD_URL={CONFIG.set_password_url}" in env


def test_plain_environment_names_are_real_settings() -> None:
    aliases = {field.alias for field in Settings.model_fields.values()}
    doc = terraform()
    for function in resources(doc, "google_cloudfunctions2_function").values():
        assert set(function["service_config"]["environment_variables"]) <= aliases | {"FUNCTION_USE_ASGI", "PYTHONPATH"}
        assert function["service_config"]["environment_variables"]["PYTHONPATH"] == "/workspace"  # shared/ is there
        assert function["service_config"]["environment_variables"]["APP_ENV"] == "production"
    for pool in resources(doc, "google_cloud_run_v2_worker_pool").values():
        assert {e["name"] for e in pool["template"]["containers"][0]["env"]} <= aliases | {"AWS_ACCESS_KEY_ID",
                                                                                          "AWS_SECRET_ACCESS_KEY"}


def test_migrations_are_a_cloud_run_job_running_invoke_migrate() -> None:
    job = resources(terraform(), "google_cloud_run_v2_job")["migrate"]
    (container,) = job["template"]["template"]["containers"]
    assert container["command"] == ["invoke"] and container["args"] == ["migrate"]
    assert job["template"]["template"]["max_retries"] == 0
    assert job["template"]["template"]["service_account"] == "${google_service_account.migrate.email}"


def test_the_rendering_is_deterministic_valid_json_in_tf_json_files() -> None:
    specs = load_manifest()
    first, second = render_terraform(specs, CONFIG), render_terraform(load_manifest(), CONFIG)
    assert first == second
    assert first and all(name.endswith(".tf.json") for name in first)
    for content in first.values():
        assert content == json.dumps(json.loads(content), indent=2, sort_keys=True) + "\n"
    assert gcloud_commands(specs, CONFIG) == gcloud_commands(load_manifest(), CONFIG)
    assert gcloud_files(specs, CONFIG) == gcloud_files(load_manifest(), CONFIG)
    for content in gcloud_files(specs, CONFIG).values():
        json.loads(content)


def test_every_reference_and_dependency_names_something_declared() -> None:
    doc = terraform(with_fakes())
    declared = {f"{rtype}.{name}" for rtype, items in doc["resource"].items() for name in items}
    declared |= {f"data.{rtype}.{name}" for rtype, items in doc["data"].items() for name in items}
    text = json.dumps(doc["resource"]) + json.dumps(doc["output"]) + json.dumps(doc["data"])
    expressions = re.findall(r"\$\{(.*?)\}", text)
    assert expressions
    for expression in expressions:
        for ref in re.findall(r"\b((?:data\.)?google_[a-z0-9_]+\.[a-z0-9_]+|data\.[a-z_]+\.[a-z0-9_]+)\.", expression):
            assert ref in declared, expression
        for variable in re.findall(r"\bvar\.([a-z0-9_]+)", expression):
            assert variable in doc["variable"], expression
    for items in doc["resource"].values():
        for body in items.values():
            assert set(body.get("depends_on", [])) <= declared


def _deploys(commands: list[str]) -> dict[str, list[str]]:
    """Deployed name -> its command's arguments, for every function and worker-pool deploy."""
    found: dict[str, list[str]] = {}
    for command in commands:
        args = shlex.split(command)
        if args[:3] == ["gcloud", "functions", "deploy"] or args[:5] == ["gcloud", "beta", "run", "worker-pools",
                                                                        "deploy"]:
            name = args[3] if args[1] == "functions" else args[5]
            assert name not in found
            found[name] = args
    return found


def test_gcloud_commands_deploy_every_function_once_and_schedule_every_scheduled_one() -> None:
    specs = load_manifest()
    commands = gcloud_commands(specs, CONFIG)
    deploys = _deploys(commands)
    assert set(deploys) == {function_name(spec, CONFIG) for spec in specs.values()}
    for spec in specs.values():
        args = deploys[function_name(spec, CONFIG)]
        if spec.kind == "worker":
            assert "--command=python" in args and f"--args=-m,{module_of(spec)}" in args
            assert f"--scaling={spec.min_instances}" in args
        else:
            assert "--gen2" in args and f"--entry-point={spec.name}" in args and "--runtime=python311" in args
            assert f"--timeout={spec.timeout_s}s" in args and f"--concurrency={spec.concurrency}" in args
            assert f"--min-instances={spec.min_instances}" in args
            assert f"--max-instances={spec.max_instances}" in args
            assert any(a.startswith("--set-secrets=") and "DATABASE_URL=" in a for a in args) == bool(
                spec.secrets and "DATABASE_URL" in spec.secrets)
    schedulers = [shlex.split(c) for c in commands if c.startswith("gcloud scheduler jobs create http ")]
    scheduled = [spec for spec in specs.values() if spec.kind == "scheduled"]
    assert sorted(args[5] for args in schedulers) == sorted(function_name(spec, CONFIG) for spec in scheduled)
    for args in schedulers:
        assert any(a.startswith("--oidc-service-account-email=provisioner-scheduler@") for a in args)
        assert any(a.startswith("--oidc-token-audience=https://") for a in args)
    (redis,) = [c for c in commands if c.startswith("gcloud redis instances create ")]
    assert "--tier=standard" in redis and "--redis-config=maxmemory-policy=noeviction" in redis
    (sql,) = [c for c in commands if c.startswith("gcloud sql instances create ")]
    assert "--database-version=POSTGRES_16" in sql and "--no-assign-ip" in sql
    assert "--enable-point-in-time-recovery" in sql
    url_map = json.loads(gcloud_files(specs, CONFIG)["url-map.json"])
    backends = {rule["service"].rsplit("/", 1)[-1] for rule in url_map["pathMatchers"][0]["routeRules"]
                if "service" in rule}
    assert backends == {f"{function_name(spec, CONFIG)}-backend" for spec in specs.values() if public(spec)}
    for spec in specs.values():
        if spec.kind == "scheduled":
            args = deploys[function_name(spec, CONFIG)]
            assert "--no-allow-unauthenticated" in args and "--ingress-settings=internal-only" in args
    with pytest.raises(ValueError, match="domain"):
        gcloud_commands(specs, DeployConfig(project="p"))


def test_an_added_function_shows_up_in_both_renderings_so_nothing_is_hard_coded() -> None:
    specs = with_fakes()
    doc = terraform(specs)
    http = resources(doc, "google_cloudfunctions2_function")["zz_fake_report"]
    assert http["service_config"]["timeout_seconds"] == 42
    assert http["service_config"]["max_instance_request_concurrency"] == 7
    assert (http["service_config"]["min_instance_count"], http["service_config"]["max_instance_count"]) == (2, 9)
    url_map = resources(doc, "google_compute_url_map")["api"]
    report = "${google_compute_backend_service.zz_fake_report.id}"
    assert route_request(url_map, "GET", "/api/fake/r-1/pdf") == (report, 0)
    assert route_request(url_map, "DELETE", "/api/fake/r-1/pdf") == (report, 0)
    assert route_request(url_map, "POST", "/api/fake/r-1/pdf") == ("abort", 405)
    tick = resources(doc, "google_cloud_scheduler_job")["zz_fake_tick"]
    assert tick["schedule"] == "*/5 * * * *" and "oidc_token" in tick["http_target"]
    pool = resources(doc, "google_cloud_run_v2_worker_pool")["zz_fake_worker"]
    assert pool["template"]["containers"][0]["command"] == ["python", "-m", "functions.zz_fake_worker"]
    assert doc["variable"]["zz_fake_worker_instances"]["default"] == 2
    assert "zz_fake_worker" not in resources(doc, "google_compute_backend_service")

    commands = gcloud_commands(specs, CONFIG)
    deploys = _deploys(commands)
    for name in ("zz_fake_report", "zz_fake_tick", "zz_fake_worker"):
        assert function_name(specs[name], CONFIG) in deploys
    assert "--max-instances=9" in deploys[function_name(specs["zz_fake_report"], CONFIG)]
    assert any(c.startswith(f"gcloud scheduler jobs create http {function_name(specs['zz_fake_tick'], CONFIG)} ")
               for c in commands)
    assert "zz-fake-report-backend" in gcloud_files(specs, CONFIG)["url-map.json"]
    assert len(_deploys(gcloud_commands(load_manifest(), CONFIG))) == len(deploys) - 3


def test_the_renderer_refuses_what_it_cannot_deploy_faithfully() -> None:
    specs = dict(load_manifest())
    worker = next(spec for spec in specs.values() if spec.kind == "worker")
    routed = next(spec for spec in specs.values() if spec.routes)
    with pytest.raises(ValueError, match="never publicly routed"):
        render_terraform({**specs, worker.name: replace(worker, routes=(Route("GET", "/w"),))}, CONFIG)
    with pytest.raises(ValueError, match="routed to both"):
        render_terraform({**specs, "zz_dup": replace(routed, name="zz_dup")}, CONFIG)
    with pytest.raises(ValueError, match="unknown kind"):
        render_terraform({**specs, "zz_odd": replace(routed, name="zz_odd", kind="cron", routes=())}, CONFIG)


def test_main_dry_run_prints_the_terraform_files_and_writes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--project", "p", "--dry-run"]) == 0
    out = capsys.readouterr().out
    for name in render_terraform(load_manifest(), DeployConfig(project="p")):
        assert f"# ---- {name}" in out
    assert '"google_cloudfunctions2_function"' in out and '"google_cloud_run_v2_worker_pool"' in out


def test_main_gcloud_dry_run_prints_commands_and_out_writes_files(capsys: pytest.CaptureFixture[str],
                                                                   tmp_path: Any) -> None:
    args = ["--project", "p", "--format", "gcloud", "--domain", "api.example.com", "--email-sender", "a@example.com",
            "--set-password-url", "https://app.example.com/set-password", "--project-number", "123456789012"]
    assert main([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "gcloud functions deploy " in out and "gcloud scheduler jobs create http " in out
    assert main(["--project", "p", "--format", "gcloud", "--dry-run"]) == 2  # operator values missing
    assert "--domain" in capsys.readouterr().err
    assert main(["--project", "p", "--out", str(tmp_path / "tf")]) == 0
    written = sorted(path.name for path in (tmp_path / "tf").iterdir())
    assert written == sorted(render_terraform(load_manifest(), DeployConfig(project="p")))
    main_tf = json.loads((tmp_path / "tf" / "functions.tf.json").read_text())
    source_dir = main_tf["data"]["archive_file"]["source"]["source_dir"]
    assert (tmp_path / "tf" / source_dir / "infra" / "functions.toml").resolve().is_file()


# ------------------------------------------------- what the functions need to run as rendered (issue 21)


def _rendered_env(spec: FunctionSpec, doc: dict[str, Any]) -> dict[str, str]:
    body = resources(doc, "google_cloudfunctions2_function")[spec.name]
    return dict(body["service_config"]["environment_variables"])


@pytest.mark.parametrize("render", ["terraform", "gcloud"])
def test_every_scheduled_function_loads_production_settings_from_its_rendered_environment(render: str) -> None:
    """Rendered without OIDC_AUDIENCE, production Settings() refused to load: every scheduled function answered
    503 and the watchdog, cleanup, tick and drain never ran."""
    specs = load_manifest()
    secrets = {"DATABASE_URL": "postgresql://u@10.0.0.3/p", "REDIS_URL": "rediss://:x@10.0.0.4:6378/0",
               "AUTH_JWT_SECRET": "kQ3v9ZrT1mXw8LpA2sYd7HnB4cFj6GtU0eRi5VoN"}
    doc = terraform(specs)
    commands = [shlex.split(c) for c in gcloud_commands(specs, CONFIG)]
    for spec in specs.values():
        if spec.kind != "scheduled":
            continue
        if render == "terraform":
            env = _rendered_env(spec, doc)
            env["SCHEDULER_SERVICE_ACCOUNT"] = "provisioner-scheduler@example-project.iam.gserviceaccount.com"
            env["SET_PASSWORD_URL"] = "https://app.example.com/set-password"
        else:
            (deploy,) = [a for a in commands if a[:3] == ["gcloud", "functions", "deploy"]
                         and a[3] == function_name(spec, CONFIG)]
            (flag,) = [a for a in deploy if a.startswith("--set-env-vars=")]
            raw = flag.removeprefix("--set-env-vars=")
            sep = "|" if raw.startswith("^|^") else ","
            env = dict(item.split("=", 1) for item in raw.removeprefix("^|^").split(sep))
            (job,) = [a for a in commands if a[:4] == ["gcloud", "scheduler", "jobs", "create"]
                      and a[5] == function_name(spec, CONFIG)]
            assert f"--oidc-token-audience={env['OIDC_AUDIENCE']}" in job
        settings = Settings(**{**env, **secrets})  # raises on the old rendering: OIDC_AUDIENCE must be set
        assert settings.oidc_audience.startswith(f"https://{function_name(spec, CONFIG)}-")
        assert settings.scheduler_service_account


def test_functions_behind_the_load_balancer_find_the_client_in_googles_forwarded_for() -> None:
    """Google's external Application Load Balancer sends `<client-sent>, <client ip>, <lb ip>`: with the
    default TRUSTED_PROXY_HOPS=1 every caller was the load balancer (one sign-in throttle bucket for all)."""
    from shared.accounts.signin import client_address

    specs = load_manifest()
    doc = terraform(specs)
    for spec in specs.values():
        if spec.kind == "worker":
            continue
        env = _rendered_env(spec, doc)
        if not public(spec):
            assert "TRUSTED_PROXY_HOPS" not in env
            continue
        hops = Settings(**{**env, "DATABASE_URL": "postgresql:///p", "REDIS_URL": "redis://x/0",
                           "SET_PASSWORD_URL": "https://a.example/p"}).trusted_proxy_hops
        google = ["198.51.100.7, 203.0.113.9, 130.211.0.5"]  # spoofed by the client, the client, the LB
        assert client_address(google, "35.191.0.1", hops) == "203.0.113.9", spec.name


def test_every_check_checkov_skips_is_listed_with_its_reason_in_the_infra_readme() -> None:
    from infra.manifest import REPO_ROOT

    config = (REPO_ROOT / "infra" / "checkov.yaml").read_text()
    skipped = re.findall(r"^\s+- (CKV\w+)", config, flags=re.MULTILINE)
    readme = (REPO_ROOT / "infra" / "README.md").read_text().split("## IaC scan (checkov)", 1)[1]
    listed = re.findall(r"^\| `(CKV\w+)` \|[^|]+\|\s*\S", readme, flags=re.MULTILINE)
    assert skipped and sorted(skipped) == sorted(listed)
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "--config-file infra/checkov.yaml" in ci and re.search(r"CHECKOV_VERSION=\d+\.\d+\.\d+", ci)
