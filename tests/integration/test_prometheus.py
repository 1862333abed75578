"""GET /metrics after a known workload (real consumer, real Redis), parsed with prometheus_client's own parser and
checked against what PostgreSQL and Redis hold."""

from __future__ import annotations

import redis
from prometheus_client.parser import text_string_to_metric_families

from shared.core.auth import Principal, Role, issue_token
from shared.creation.creation import create_user_request
from shared.creation.models import CreateUserCommand
from shared.operations.prometheus_export import JOB_DURATION_BOUNDS, QUEUE_WAIT_BOUNDS
from tests.conftest import auth, use_deps
from tests.integration.test_consumer import all_done, start_consumer, submit, trap  # noqa: F401
from tests.support.pii import EMAIL

SALES = Principal("sales-1", Role.SALES_MANAGER)


def parse(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """{sample name: {sorted labels: value}}."""
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def cumulative(values: list[float], bounds: tuple[float, ...]) -> dict[str, float]:
    found = {repr(float(b)): float(sum(v <= b for v in values)) for b in bounds}
    found["+Inf"] = float(len(values))
    return found


async def test_metrics_match_the_database_and_redis_after_a_known_workload(
        deps, deps_factory, consumers, trap, stack, tmp_path, db, call, settings, monkeypatch):  # noqa: F811
    start_consumer(consumers, stack, tmp_path)
    one_try = await deps_factory(JOB_ATTEMPTS=1)  # the failing job: one try, no retry (job options ride the job)
    ids = await submit(deps, [f"prom-{i}@example.com" for i in range(5)]) + await submit(one_try, ["fail-p@x.org"])
    final = await all_done(db, ids, timeout=30)
    assert sorted(final.values()) == ["created"] * 5 + ["failed"]
    no_redis = await deps_factory(REDIS_URL="redis://127.0.0.1:1/0")
    fallback = await create_user_request(no_redis, SALES, CreateUserCommand(email="prom-fb@example.com",
                                                                           full_name="Fallback"), None)
    assert fallback.status == 201 and fallback.body["fallback"] is True

    viewer = issue_token(settings, role=Role.VIEWER, subject="viewer-1")
    answer = await call("prometheus_metrics", "GET", "/metrics", headers=auth(viewer))
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    assert not EMAIL.search(answer.content)  # labels are fixed words, never an address
    m = parse(answer.text)

    count = lambda sql: db.execute(sql).fetchone()["n"]  # noqa: E731
    assert m["provisioner_requests_total"] == {
        (("outcome", "created"),): count("SELECT count(*) AS n FROM creation_requests WHERE status = 'created'"),
        (("outcome", "failed"),): count("SELECT count(*) AS n FROM creation_requests WHERE status = 'failed'")}
    assert m["provisioner_requests_total"][(("outcome", "created"),)] == 6
    assert m["provisioner_emails_total"][(("outcome", "sent"),)] == count(
        "SELECT count(*) AS n FROM email_outbox WHERE status = 'sent'")
    assert m["provisioner_fallback_active"][()] == 1

    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    try:
        heartbeats = client.zcard(f"{stack.queue_prefix}:user-creation:provisioner:consumers")
        completed = client.zcard(f"{stack.queue_prefix}:user-creation:completed")
        failed = client.zcard(f"{stack.queue_prefix}:user-creation:failed")
    finally:
        client.close()
    assert m["provisioner_consumers_alive"][()] == heartbeats == 1  # the one real consumer
    jobs = {dict(k)["state"]: v for k, v in m["provisioner_queue_jobs"].items()}
    assert (jobs["completed"], jobs["failed"], jobs["waiting"]) == (completed, failed, 0) == (5, 1, 0)

    durations = [r["v"] for r in db.execute(
        "SELECT extract(epoch FROM finished_at - started_at)::float8 AS v FROM creation_attempts"
        " WHERE finished_at IS NOT NULL")]
    assert len(durations) == 6
    job = {dict(k)["le"]: v for k, v in m["provisioner_job_duration_seconds_bucket"].items()}
    assert job == cumulative(durations, JOB_DURATION_BOUNDS)
    assert m["provisioner_job_duration_seconds_count"][()] == 6
    assert abs(m["provisioner_job_duration_seconds_sum"][()] - sum(durations)) < 1e-6

    waits = [r["v"] for r in db.execute(
        "SELECT extract(epoch FROM min(a.started_at) - r.created_at)::float8 AS v FROM creation_attempts a"
        " JOIN creation_requests r ON r.id = a.request_id GROUP BY r.id, r.created_at")]
    wait = {dict(k)["le"]: v for k, v in m["provisioner_queue_wait_seconds_bucket"].items()}
    assert len(waits) == 6 and wait == cumulative(waits, QUEUE_WAIT_BOUNDS)

    # Whatever instance answers: one that did none of the work scrapes the same figures.
    use_deps(monkeypatch, await deps_factory(INSTANCE_NAME="prom-idle"))
    elsewhere = parse((await call("prometheus_metrics", "GET", "/metrics", headers=auth(viewer))).text)
    ours = {name: value for name, value in m.items() if name.startswith("provisioner_")}
    assert len(ours) >= 8 and {name: elsewhere[name] for name in ours} == ours

    denied = await call("prometheus_metrics", "GET", "/metrics",
                        headers=auth(issue_token(settings, role=Role.SALES_MANAGER, subject="s")))
    assert denied.status_code == 403


async def test_metrics_answer_with_redis_down(monkeypatch, deps, deps_factory, call, tokens):
    no_redis = await deps_factory(REDIS_URL="redis://127.0.0.1:1/0")
    use_deps(monkeypatch, no_redis)
    answer = await call("prometheus_metrics", "GET", "/metrics", headers=auth(tokens["admin"]))
    assert answer.status_code == 200
    m = parse(answer.text)
    assert m["provisioner_redis_up"][()] == 0
    assert "provisioner_queue_jobs" not in m and "provisioner_consumers_alive" not in m
    assert m["provisioner_requests_total"][(("outcome", "created"),)] == 0
