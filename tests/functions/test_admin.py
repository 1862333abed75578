"""The admin functions: kill switch, metrics, logs, cleanup."""

from __future__ import annotations

import pytest

from tests.conftest import auth
from tests.functions.test_create_user import BODY


async def test_mode_defaults_to_async_queue(call, tokens):
    r = await call("get_mode", "GET", "/api/admin/system/mode", headers=auth(tokens["admin"]))
    assert r.status_code == 200
    data = r.json()
    assert data["mode"] == data["effective_mode"] == "async_queue"
    assert data["effective_reason"] == "configured"
    assert {"version", "reason", "updated_at", "updated_by"} <= data.keys()


async def test_switch_records_who_why_from_to_and_changes_the_next_answer(call, tokens, db):
    r = await call("set_mode", "POST", "/api/admin/system/mode", headers=auth(tokens["admin"]),
                   json={"mode": "sync_direct", "reason": "Redis maintenance tonight", "expected_version": 1})
    assert r.status_code == 200, r.text
    state = r.json()
    assert state["mode"] == "sync_direct" and state["version"] == 2 and state["updated_by"] == "admin-1"
    assert state["effective_mode"] == "sync_direct" and state["effective_reason"] == "manual"
    row = db.execute("SELECT value FROM system_config WHERE key = 'traffic_mode'").fetchone()
    assert row["value"] == "sync_direct"
    event = db.execute("SELECT level, metadata FROM system_health_logs WHERE event = 'mode_switched'").fetchone()
    assert event["level"] == "SWITCH"
    assert event["metadata"] == {"from": "async_queue", "to": "sync_direct", "by": "admin-1",
                                 "reason": "Redis maintenance tonight", "version": 2, "automatic": False}
    created = await call("create_user", "POST", "/api/users", headers=auth(tokens["sales_manager"]), json=BODY)
    assert created.status_code == 201


async def test_stale_expected_version_is_409_and_changes_nothing(call, tokens, db):
    ok = await call("set_mode", "POST", "/api/admin/system/mode", headers=auth(tokens["admin"]),
                    json={"mode": "sync_direct", "reason": "first admin", "expected_version": 1})
    assert ok.status_code == 200
    stale = await call("set_mode", "POST", "/api/admin/system/mode", headers=auth(tokens["admin"]),
                       json={"mode": "async_queue", "reason": "second admin", "expected_version": 1})
    assert stale.status_code == 409 and stale.json()["error"]["code"] == "stale_version"
    assert db.execute("SELECT value FROM system_config WHERE key = 'traffic_mode'").fetchone()["value"] == "sync_direct"


@pytest.mark.parametrize("payload", [{"mode": "turbo", "reason": "why not"}, {"mode": "sync_direct"},
                                     {"mode": "sync_direct", "reason": "no"},
                                     {"mode": "sync_direct", "reason": "x" * 501},
                                     {"mode": "sync_direct", "reason": "fine", "extra": 1}])
async def test_bad_switch_is_422(call, tokens, db, payload):
    r = await call("set_mode", "POST", "/api/admin/system/mode", headers=auth(tokens["admin"]), json=payload)
    assert r.status_code == 422 and r.json()["error"]["details"]
    assert db.execute("SELECT count(*) AS n FROM system_health_logs").fetchone()["n"] == 0


async def test_switch_to_the_same_mode_is_a_no_op(call, tokens, db):
    r = await call("set_mode", "POST", "/api/admin/system/mode", headers=auth(tokens["admin"]),
                   json={"mode": "async_queue", "reason": "already so"})
    assert r.status_code == 200 and r.json()["version"] == 1
    assert db.execute("SELECT count(*) AS n FROM system_health_logs").fetchone()["n"] == 0


async def test_metrics_show_queue_switch_and_totals(call, tokens):
    for i in range(3):
        r = await call("create_user", "POST", "/api/users", headers=auth(tokens["sales_manager"]),
                       json={**BODY, "email": f"user{i}@example.com"})
        assert r.status_code == 202
    r = await call("system_metrics", "GET", "/api/admin/system/metrics", headers=auth(tokens["admin"]))
    assert r.status_code == 200
    m = r.json()
    assert m["mode"] == m["effective_mode"] == "async_queue"
    assert m["redis"]["available"] is True and m["redis"]["latency_ms"] >= 0
    assert m["queue"] == {"waiting": 3, "active": 0, "completed": 0, "failed": 0, "delayed": 0}
    assert m["workers"] == {"alive": 0, "items": []}  # none runs here; a real one: test_metrics_list_the_live_consumer
    assert m["oldest_waiting_age_s"] >= 0
    assert m["rate_limit"] == {"max": 10, "duration_ms": 1000}
    assert m["totals"]["pending"] == 3 and m["totals"]["created"] == 0


async def test_logs_newest_first_filtered_and_incremental(call, tokens):
    await call("set_mode", "POST", "/api/admin/system/mode", headers=auth(tokens["admin"]),
               json={"mode": "sync_direct", "reason": "for the log"})
    await call("create_user", "POST", "/api/users", headers=auth(tokens["sales_manager"]), json=BODY)
    r = await call("system_logs", "GET", "/api/admin/system/logs", headers=auth(tokens["admin"]))
    items = r.json()["items"]
    assert [i["event"] for i in items] == ["user_created", "creation_requested", "mode_switched"]
    assert items[0]["id"] > items[1]["id"] > items[2]["id"]
    assert {"id", "created_at", "level", "event", "message", "metadata"} == items[0].keys()
    switch = await call("system_logs", "GET", "/api/admin/system/logs?level=SWITCH",
                        headers=auth(tokens["admin"]))
    assert [i["event"] for i in switch.json()["items"]] == ["mode_switched"]
    newer = await call("system_logs", "GET", f"/api/admin/system/logs?after_id={items[1]['id']}&limit=1",
                       headers=auth(tokens["admin"]))
    assert [i["id"] for i in newer.json()["items"]] == [items[0]["id"]]
    older = await call("system_logs", "GET", f"/api/admin/system/logs?before_id={items[0]['id']}&limit=1",
                       headers=auth(tokens["admin"]))
    assert [i["id"] for i in older.json()["items"]] == [items[1]["id"]]


@pytest.mark.parametrize("query", ["limit=0", "limit=501", "level=DEBUG", "after_id=-1", "limit=abc", "foo=1"])
async def test_bad_log_query_is_422(call, tokens, query):
    r = await call("system_logs", "GET", f"/api/admin/system/logs?{query}", headers=auth(tokens["admin"]))
    assert r.status_code == 422


async def test_cleanup_deletes_only_logs_past_retention_and_is_safe_twice(call, tokens, db):
    db.execute("INSERT INTO system_health_logs (created_at, level, event, message) VALUES"
               " (now() - interval '7 days 1 second', 'INFO', 'old', 'old'),"
               " (now() - interval '6 days 23 hours 59 minutes 59 seconds', 'INFO', 'young', 'young')")
    r = await call("cleanup_logs", "POST", "/api/admin/system/cleanup", headers=auth(tokens["admin"]))
    assert r.status_code == 200 and r.json()["deleted"] == 1 and r.json()["retention_days"] == 7
    events = {row["event"] for row in db.execute("SELECT event FROM system_health_logs")}
    assert events == {"young", "health_logs_cleaned"}
    again = await call("cleanup_logs", "POST", "/api/admin/system/cleanup", headers=auth(tokens["admin"]))
    assert again.json()["deleted"] == 0 and again.json()["retention_days"] == 7


async def test_healthz_and_openapi_need_no_token(call):
    assert (await call("healthz", "GET", "/healthz")).json() == {"status": "ok"}
    spec = (await call("openapi_spec", "GET", "/openapi.json")).json()
    assert spec["openapi"].startswith("3.1")


async def test_panel_page_and_assets_are_served_without_path_tricks(call):
    page = await call("admin_panel", "GET", "/admin/system-health")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "System Health" in page.text and "frame-ancestors 'none'" in page.headers["content-security-policy"]
    for path in ["/admin/assets/../../tasks.py", "/admin/assets/.env", "/admin/assets/nope.js", "/admin/other"]:
        assert (await call("admin_panel", "GET", path)).status_code == 404
