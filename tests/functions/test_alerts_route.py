"""GET /api/admin/system/alerts (admin, viewer) and POST /api/admin/system/watchdog (admin, scheduler)."""

from __future__ import annotations

import redis

from shared.core.auth import Role, issue_token
from shared.operations.alerts import masked_target
from tests.conftest import auth, make_settings
from tests.integration.test_consumer import start_consumer


async def test_viewer_reads_alerts_sales_manager_may_not(call, deps, db, tokens, settings):
    db.execute("TRUNCATE alert_states, alert_outbox RESTART IDENTITY")
    db.execute("INSERT INTO alert_outbox (alert_key, version, target, event, level, state, message)"
               " VALUES ('no_consumer', 1, 'webhook', 'no_consumer', 'WARNING', 'firing', 'no live queue consumer')")
    viewer = issue_token(settings, role=Role.VIEWER, subject="viewer-1")
    answer = await call("list_alerts", "GET", "/api/admin/system/alerts", headers=auth(viewer))
    assert answer.status_code == 200
    body = answer.json()
    assert body["target"] == {"webhook": None, "emails": 0}
    assert [(i["event"], i["state"], i["deliveries"][0]["status"]) for i in body["items"]] == [
        ("no_consumer", "firing", "pending")]
    denied = await call("list_alerts", "GET", "/api/admin/system/alerts", headers=auth(tokens["sales_manager"]))
    assert denied.status_code == 403
    viewer_run = await call("alert_watchdog", "POST", "/api/admin/system/watchdog", headers=auth(viewer))
    assert viewer_run.status_code == 403


async def test_watchdog_run_by_an_admin_reports_every_condition(call, deps, db, tokens):
    db.execute("TRUNCATE alert_states, alert_outbox RESTART IDENTITY")
    answer = await call("alert_watchdog", "POST", "/api/admin/system/watchdog", headers=auth(tokens["admin"]))
    assert answer.status_code == 200
    body = answer.json()
    assert body["database"] is True
    assert set(body["conditions"]) == {"fallback_active", "creation_failed", "email_failing", "cleanup_failing",
                                       "sign_in_attack", "redis_unavailable", "no_consumer"}
    # Redis answers; no consumer runs in this test while the mode is async_queue: that is the no-consumer state.
    assert body["conditions"]["redis_unavailable"] is False and body["conditions"]["no_consumer"] is True


def test_the_panel_sees_the_webhook_host_never_its_secret_path(stack):
    settings = make_settings(stack, ALERT_WEBHOOK_URL="https://hooks.slack.com/services/T000/B000/s3cr3tT0ken",
                             ALERT_EMAILS="a@example.com, b@example.com")
    shown = masked_target(settings)
    assert shown == {"webhook": "https://hooks.slack.com/***", "emails": 2}


async def test_each_condition_fires_once_and_resolves_when_it_ends(call, deps, db, tokens, stack, consumers,
                                                                   tmp_path):
    db.execute("TRUNCATE alert_states, alert_outbox RESTART IDENTITY")
    consumer = start_consumer(consumers, stack, tmp_path)  # a real one: the quiet start has a live consumer

    async def run() -> dict[str, str]:
        answer = await call("alert_watchdog", "POST", "/api/admin/system/watchdog", headers=auth(tokens["admin"]))
        assert answer.status_code == 200
        return {t["event"]: t["state"] for t in answer.json()["transitions"]}

    assert await run() == {}
    user = "00000000-0000-0000-0000-000000000001"
    db.execute("INSERT INTO creation_requests (id, actor, body_hash, email, email_normalized, full_name, status, mode,"
               " fallback, fallback_reason) VALUES ('req_fb', 's', 'h', 'a@example.com', 'a@example.com', 'A',"
               " 'created', 'sync_direct', true, 'redis_unavailable'),"
               " ('req_failed', 's', 'h', 'b@example.com', 'b@example.com', 'B', 'failed', 'async_queue', false, null)")
    db.execute("INSERT INTO users (id, email, email_normalized, full_name, request_id)"
               " VALUES (%s, 'a@example.com', 'a@example.com', 'A', 'req_fb')", (user,))
    db.execute("INSERT INTO email_outbox (user_id, request_id, attempts, last_error) VALUES (%s, 'req_fb', 2, 'X')",
               (user,))
    db.execute("INSERT INTO system_health_logs (level, event, message) VALUES ('ERROR', 'cleanup_failed', 'x')")
    consumer.stop()  # no live consumer while the mode is async_queue
    client = redis.Redis.from_url(stack.redis_url)
    try:
        client.delete(f"{stack.queue_prefix}:user-creation:provisioner:consumers")  # its heartbeat gone at once
    finally:
        client.close()
    assert await run() == {"fallback_active": "firing", "creation_failed": "firing", "email_failing": "firing",
                           "cleanup_failing": "firing", "no_consumer": "firing"}
    assert await run() == {}  # still true: no repeat

    db.execute("UPDATE creation_requests SET created_at = now() - interval '1 hour',"
               " updated_at = now() - interval '1 hour'")  # out of the 5-minute window
    db.execute("UPDATE email_outbox SET status = 'sent', sent_at = now()")
    db.execute("INSERT INTO system_health_logs (level, event, message) VALUES ('INFO', 'health_logs_cleaned', 'x')")
    db.execute("UPDATE system_config SET value = 'sync_direct' WHERE key = 'traffic_mode'")  # queue not in use
    assert await run() == {"fallback_active": "resolved", "creation_failed": "resolved", "email_failing": "resolved",
                           "cleanup_failing": "resolved", "no_consumer": "resolved"}


async def test_an_instance_with_invalid_settings_answers_503_and_names_the_variable_in_its_log(
        call, deps, tokens, stack, monkeypatch, caplog):
    # A bad ALERT_WEBHOOK_URL is the deploy's mistake, not the caller's: 503 `misconfigured`, never a 422.
    from shared import bootstrap
    from shared.core import settings

    for key, value in stack.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("ALERT_WEBHOOK_URL", "not a url")
    monkeypatch.setattr(bootstrap, "_deps", None)
    settings.get_settings.cache_clear()
    try:
        answer = await call("get_mode", "GET", "/api/admin/system/mode", headers=auth(tokens["admin"]))
    finally:
        settings.get_settings.cache_clear()
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "misconfigured"
    assert "ALERT_WEBHOOK_URL" in caplog.text and "not a url" not in caplog.text
