"""GET /api/admin/system/alerts (admin, viewer) and POST /api/admin/system/watchdog (admin, scheduler)."""

from __future__ import annotations

from shared.alerts import masked_target
from shared.auth import Role, issue_token
from tests.conftest import auth, make_settings


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
                                       "redis_unavailable", "no_consumer"}
    assert body["conditions"]["redis_unavailable"] is False and body["conditions"]["no_consumer"] is False


def test_the_panel_sees_the_webhook_host_never_its_secret_path(stack):
    settings = make_settings(stack, ALERT_WEBHOOK_URL="https://hooks.slack.com/services/T000/B000/s3cr3tT0ken",
                             ALERT_EMAILS="a@example.com, b@example.com")
    shown = masked_target(settings)
    assert shown == {"webhook": "https://hooks.slack.com/***", "emails": 2}
