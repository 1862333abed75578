"""The deployment as a Terraform configuration in JSON syntax (`*.tf.json`): `render_terraform`.

The foundation (accounts, network, Redis, Cloud SQL, secrets) is in `tf_foundation`, what runs (functions,
worker pools, migrate job, scheduler) in `tf_compute`; the load balancer and the outputs are here.
"""

from __future__ import annotations

from infra.manifest import FunctionSpec
from infra.render.config import (
    APIS,
    CA_FILE,
    EDGE_RESPONSE_HEADERS,
    MIGRATE_SECRET,
    REDIS_CA_DIR,
    TLS_MIN_VERSION,
    TLS_PROFILE,
    DeployConfig,
)
from infra.render.facts import (
    database_url_shape,
    function_name,
    routed,
    scheduled,
    served,
    validate,
    workers,
)
from infra.render.tf_base import Terraform, operator_variable, ref, var
from infra.render.tf_compute import tf_function, tf_migrate, tf_scheduler, tf_worker
from infra.render.tf_foundation import tf_accounts, tf_network, tf_state
from infra.render.url_map import url_map


def tf_load_balancer(tf: Terraform, specs: dict[str, FunctionSpec], config: DeployConfig) -> None:
    f = "lb.tf.json"
    for spec in routed(specs):
        name = function_name(spec, config)
        tf.resource(f, "google_compute_region_network_endpoint_group", spec.name, {
            "name": f"{name}-neg", "region": config.region, "network_endpoint_type": "SERVERLESS",
            "cloud_function": {"function": ref("google_cloudfunctions2_function", spec.name, "name")},
        })
        tf.resource(f, "google_compute_backend_service", spec.name, {
            "name": f"{name}-backend", "load_balancing_scheme": "EXTERNAL_MANAGED", "protocol": "HTTPS",
            "backend": [{"group": ref("google_compute_region_network_endpoint_group", spec.name)}],
            "log_config": {"enable": True, "sample_rate": 1},
            "custom_response_headers": list(EDGE_RESPONSE_HEADERS),
        })
    tf.resource(f, "google_compute_url_map", "api", url_map(
        specs, lambda spec: ref("google_compute_backend_service", spec.name), f"{config.prefix}-api"))
    tf.resource(f, "google_compute_global_address", "api", {"name": f"{config.prefix}-api"})
    tf.resource(f, "google_compute_managed_ssl_certificate", "api", {
        "name": f"{config.prefix}-api", "managed": {"domains": [var("api_domain")]}})
    tf.resource(f, "google_compute_ssl_policy", "api", {
        "name": f"{config.prefix}-api", "profile": TLS_PROFILE, "min_tls_version": TLS_MIN_VERSION})
    tf.resource(f, "google_compute_target_https_proxy", "api", {
        "name": f"{config.prefix}-api", "url_map": ref("google_compute_url_map", "api"),
        "ssl_policy": ref("google_compute_ssl_policy", "api"),
        "ssl_certificates": [ref("google_compute_managed_ssl_certificate", "api")]})
    tf.resource(f, "google_compute_global_forwarding_rule", "api", {
        "name": f"{config.prefix}-api", "target": ref("google_compute_target_https_proxy", "api"),
        "ip_address": ref("google_compute_global_address", "api"), "ip_protocol": "TCP", "port_range": "443",
        "load_balancing_scheme": "EXTERNAL_MANAGED"})


def render_terraform(specs: dict[str, FunctionSpec], config: DeployConfig) -> dict[str, str]:
    """The deployment as a Terraform configuration in JSON syntax: file name -> content (deterministic).

    Files: main (providers, variables, APIs, service accounts), network, state (Redis, Cloud SQL, secrets),
    functions, workers (worker pools, migrate job), scheduler, lb (the one public address), outputs.
    """
    validate(specs, config)
    tf = Terraform()
    # The settings block alone in its file: checkov's Terraform JSON parser cannot read it, and would otherwise
    # skip every resource next to it (infra/README.md, "IaC scan").
    tf.files["versions.tf.json"] = {
        "terraform": {"required_version": ">= 1.5.0", "required_providers": {
            "google": {"source": "hashicorp/google", "version": ">= 6.50.0, < 8.0.0"},
            "archive": {"source": "hashicorp/archive", "version": ">= 2.4.0"}}},
    }
    tf.files["main.tf.json"] = {"provider": {"google": {"project": config.project, "region": config.region}}}
    tf.block("main.tf.json", "variable", "image", {
        "type": "string", "default": config.image_ref,
        "description": "container image (this repository, built with buildpacks) of the workers and migrate job; "
                       "give an immutable tag per release"})
    operator_variable(tf, "api_domain", config.domain, "host name of the public API (managed certificate)")
    operator_variable(tf, "email_sender", config.email_sender, "EMAIL_SENDER: SES-verified sender address")
    operator_variable(tf, "set_password_url", config.set_password_url,
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
    emails = tf_accounts(tf, config)
    tf.block("main.tf.json", "data", "google_project", {"this": {"project_id": config.project}})
    project_number = config.project_number or "${data.google_project.this.number}"
    values = {"domain": var("api_domain"), "email_sender": var("email_sender"),
              "set_password_url": var("set_password_url"), "scheduler_email": emails["scheduler"],
              "project_number": project_number}

    tf_network(tf, config)
    tf_state(tf, specs, config, emails)
    tf.resource("functions.tf.json", "google_storage_bucket", "source", {
        "name": f"{config.project}-{config.prefix}-source", "location": config.region,
        "uniform_bucket_level_access": True, "public_access_prevention": "enforced", "force_destroy": False,
        "versioning": {"enabled": True}})
    tf.block("functions.tf.json", "data", "archive_file", {"source": {
        "type": "zip", "source_dir": config.image_source, "excludes": list(config.source_excludes),
        "output_path": "${path.module}/.build/source.zip"}})
    tf.resource("functions.tf.json", "google_storage_bucket_object", "source", {
        "name": "source-${data.archive_file.source.output_md5}.zip",
        "bucket": ref("google_storage_bucket", "source", "name"),
        "source": "${data.archive_file.source.output_path}"})
    for spec in served(specs):
        tf_function(tf, spec, config, values, emails)
    tf.resource("workers.tf.json", "google_artifact_registry_repository", "images", {
        "repository_id": config.artifact_repository, "location": config.region, "format": "DOCKER"})
    for spec in workers(specs):
        tf_worker(tf, spec, config, values, emails)
    tf_migrate(tf, config, emails)
    for spec in scheduled(specs):
        tf_scheduler(tf, spec, config, emails, project_number)
    if routed(specs):
        tf_load_balancer(tf, specs, config)
        tf.block("outputs.tf.json", "output", "api_ip", {
            "value": ref("google_compute_global_address", "api", "address"),
            "description": "point the API domain's A record here"})
        tf.block("outputs.tf.json", "output", "api_url", {"value": "https://" + var("api_domain")})
    tf.block("outputs.tf.json", "output", "function_urls", {"value": {
        spec.name: ref("google_cloudfunctions2_function", spec.name, "service_config[0].uri")
        for spec in served(specs)}})
    tf.block("outputs.tf.json", "output", "migrate_job", {"value": ref("google_cloud_run_v2_job", "migrate", "name")})
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
