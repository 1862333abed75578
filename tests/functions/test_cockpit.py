"""The operator's cockpit: viewer role, request search, a request's story, the audit trail, limits, the switch
that returns by itself, and bulk retry."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from infra.manifest import load_manifest
from local.scheduler import cron_matches
from shared.creation.outbox import deliver_pending
from tests.conftest import auth
from tests.functions.test_create_user import BODY
from tests.support.traps import before_insert

ADMIN_GETS = [("get_mode", "/api/admin/system/mode"), ("system_metrics", "/api/admin/system/metrics"),
              ("system_logs", "/api/admin/system/logs"), ("list_requests", "/api/admin/requests"),
              ("list_audit", "/api/admin/audit"), ("get_limits", "/api/admin/system/limits")]
ADMIN_CHANGES = [
    ("set_mode", "/api/admin/system/mode", {"mode": "sync_direct", "reason": "viewer tries"}),
    ("set_limits", "/api/admin/system/limits",
     {"rate_limit_max": 5, "rate_limit_duration_ms": 1000, "concurrency": 2, "reason": "viewer tries"}),
    ("bulk_retry", "/api/admin/requests/retry", {"filter": {"status": "failed"}, "reason": "viewer tries"}),
    ("retry_request", "/api/admin/requests/req_x/retry", {"reason": "viewer tries"}),
    ("cleanup_logs", "/api/admin/system/cleanup", None),
]


def insert_request(db, request_id: str, email: str, full_name: str = "Some Person", *, status: str = "failed",
                   actor: str = "sales-1", created_at: datetime | None = None, mode: str = "async_queue") -> str:
    db.execute("INSERT INTO creation_requests (id, actor, body_hash, email, email_normalized, full_name, mode, status,"
               " attempts, error_code, error, created_at, updated_at) VALUES (%s, %s, 'h', %s, lower(%s), %s, %s, %s,"
               " 4, CASE WHEN %s = 'failed' THEN 'creation_error' END, NULL, %s, %s)",
               (request_id, actor, email, email, full_name, mode, status, status,
                created_at or datetime.now(UTC), created_at or datetime.now(UTC)))
    return request_id


def counts(db) -> tuple[int, int]:
    return (db.execute("SELECT count(*) AS n FROM audit_log").fetchone()["n"],
            db.execute("SELECT count(*) AS n FROM system_health_logs").fetchone()["n"])


# -- viewer ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "path"), ADMIN_GETS)
async def test_viewer_reads_every_admin_route(call, tokens, name, path):
    r = await call(name, "GET", path, headers=auth(tokens["viewer"]))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(("name", "path", "body"), ADMIN_CHANGES)
async def test_viewer_changes_nothing_and_leaves_no_trace(call, tokens, db, name, path, body):
    insert_request(db, "req_viewer", "v@example.com")
    before = counts(db)
    r = await call(name, "POST", path, headers=auth(tokens["viewer"]), json=body)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert counts(db) == before
    assert db.execute("SELECT value FROM system_config WHERE key = 'traffic_mode'").fetchone()["value"] == "async_queue"
    assert db.execute("SELECT count(*) AS n FROM runtime_limits").fetchone()["n"] == 0
    assert db.execute("SELECT status FROM creation_requests WHERE id = 'req_viewer'").fetchone()["status"] == "failed"


# -- search ---------------------------------------------------------------------------------------------------

async def test_search_ignores_case_and_unicode_width_in_email_and_name(call, tokens, db):
    created = await call("create_user", "POST", "/api/users", headers=auth(tokens["sales_manager"]),
                         json={**BODY, "email": "Ｍａｒｉａ.Lopez@Example.com", "full_name": "María STRAßE"})
    assert created.status_code == 202
    insert_request(db, "req_other", "bob@example.com", "Bob Builder")
    for q in ("maria.lopez", "MARIA.LOP", "ｍａｒｉａ", "maría strasse", "straße"):
        r = await call("list_requests", "GET", "/api/admin/requests", params={"q": q}, headers=auth(tokens["admin"]))
        assert r.status_code == 200, r.text
        assert [i["request_id"] for i in r.json()["items"]] == [created.json()["request_id"]], q
    item = r.json()["items"][0]
    assert {"request_id", "status", "mode", "email", "full_name", "actor", "attempts", "created_at",
            "updated_at"} <= item.keys()
    assert item["actor"] == "sales-1" and item["status"] == "queued"
    # LIKE wildcards in q are matched literally
    r = await call("list_requests", "GET", "/api/admin/requests", params={"q": "%"}, headers=auth(tokens["admin"]))
    assert r.json()["items"] == []


async def test_search_filters_and_keyset_pages_newest_first(call, tokens, db):
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(7):
        insert_request(db, f"req_a{i}", f"anna{i}@example.com", status="failed" if i % 2 else "created",
                       actor="sales-1" if i < 5 else "sales-2", created_at=t0 + timedelta(minutes=i))
    admin = auth(tokens["admin"])
    seen, cursor = [], None
    while True:
        params = {"q": "anna", "limit": "2", **({"cursor": cursor} if cursor else {})}
        r = await call("list_requests", "GET", "/api/admin/requests", params=params, headers=admin)
        assert r.status_code == 200, r.text
        page = r.json()
        seen += [i["request_id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"req_a{i}" for i in range(6, -1, -1)]
    r = await call("list_requests", "GET", "/api/admin/requests", headers=admin,
                   params={"status": "failed", "actor": "sales-1", "from": "2026-01-01T00:02:00Z",
                           "to": "2026-01-01T00:04:00+00:00"})
    assert [i["request_id"] for i in r.json()["items"]] == ["req_a3"]


async def test_search_finds_old_matches_behind_many_newer_requests(call, tokens, db):
    db.execute("INSERT INTO creation_requests (id, actor, body_hash, email, email_normalized, full_name, mode, status,"
               " created_at) SELECT 'req_n' || g, 's', 'h', 'n' || g || '@example.com', 'n' || g || '@example.com',"
               " 'N', 'async_queue', 'created', now() - make_interval(secs => g) FROM generate_series(1, 2500) AS g")
    admin = auth(tokens["admin"])
    r = await call("list_requests", "GET", "/api/admin/requests", params={"q": "N2499@"}, headers=admin)
    assert [i["request_id"] for i in r.json()["items"]] == ["req_n2499"]  # older than the newest 2,000
    r = await call("list_requests", "GET", "/api/admin/requests", params={"q": "n24", "limit": "500"}, headers=admin)
    ids = [i["request_id"] for i in r.json()["items"]]
    expected = sorted((f"req_n{g}" for g in range(1, 2501) if "n24" in f"n{g}@"), key=lambda i: int(i[5:]))
    assert ids == expected and r.json()["next_cursor"] is None


@pytest.mark.parametrize("params", [{"colour": "red"}, {"from": "yesterday"}, {"to": "2026-13-01"},
                                    {"status": "weird"}, {"limit": "0"}, {"limit": "501"}, {"limit": "ten"},
                                    {"cursor": "abc"}, {"cursor": "L.\x8d\U000b7a6a\x7fG"},  # found by schemathesis
                                    {"from": "2026-02-01", "to": "2026-01-01"},
                                    {"q": "x" * 201}, {"q": "a\x00b"}, {"actor": "\x00"}, {"limit": "²"},
                                    {"from": "2026-01-01T00:00:00+25:00"}])
async def test_bad_search_input_is_422(call, tokens, params):
    r = await call("list_requests", "GET", "/api/admin/requests", params=params, headers=auth(tokens["admin"]))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"]


async def test_a_cursor_from_elsewhere_is_422(call, tokens, db):
    insert_request(db, "req_c1", "c1@example.com")
    insert_request(db, "req_c2", "c2@example.com")
    r = await call("list_requests", "GET", "/api/admin/requests?limit=1", headers=auth(tokens["admin"]))
    cursor = r.json()["next_cursor"]
    payload, mac = cursor.split(".")
    forged = base64.urlsafe_b64encode(json.dumps([1, "2030-01-01T00:00:00+00:00", "req_zz"]).encode()).decode()
    for bad in (forged.rstrip("=") + "." + mac, payload + "." + "0" * 32, payload):
        r = await call("list_requests", "GET", "/api/admin/requests", params={"cursor": bad},
                       headers=auth(tokens["admin"]))
        assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "cursor"
    ok = await call("list_requests", "GET", "/api/admin/requests", params={"cursor": cursor, "limit": "1"},
                    headers=auth(tokens["admin"]))
    assert ok.status_code == 200 and len(ok.json()["items"]) == 1


# -- story ----------------------------------------------------------------------------------------------------

async def test_story_of_a_sync_request_shows_each_step_in_order(call, tokens, db, deps):
    await call("set_mode", "POST", "/api/admin/system/mode", headers=auth(tokens["admin"]),
               json={"mode": "sync_direct", "reason": "queue off"})
    created = await call("create_user", "POST", "/api/users", headers=auth(tokens["sales_manager"]),
                         json={**BODY, "email": "story@example.com"})
    assert created.status_code == 201, created.text
    request_id = created.json()["request_id"]
    await deliver_pending(deps.pool, deps.mailer, deps.settings, source="test")
    db.execute("UPDATE password_setup_tokens SET used_at = now() + interval '1 minute'")
    r = await call("request_story", "GET", f"/api/admin/requests/{request_id}", headers=auth(tokens["viewer"]))
    assert r.status_code == 200, r.text
    story = r.json()
    assert story["request"]["request_id"] == request_id and story["request"]["status"] == "created"
    kinds = [s["kind"] for s in story["timeline"]]
    assert kinds == ["recorded", "sync", "user_created", "email_sent", "password_set"], kinds
    ats = [datetime.fromisoformat(s["at"]) for s in story["timeline"]]
    assert ats == sorted(ats)
    # the trace id recorded with the request (the create path fills it from `traceparent` once traces exist)
    db.execute("UPDATE creation_requests SET trace_id = '4bf92f3577b34da6a3ce929d0e0e4736' WHERE id = %s",
               (request_id,))
    again = await call("request_story", "GET", f"/api/admin/requests/{request_id}", headers=auth(tokens["viewer"]))
    assert again.json()["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"


async def test_story_shows_attempts_retries_and_failure(call, tokens, db):
    insert_request(db, "req_story", "s@example.com", created_at=datetime.now(UTC) - timedelta(seconds=10))
    db.execute("INSERT INTO creation_attempts (request_id, attempt, consumer, started_at, finished_at, outcome, error)"
               " VALUES ('req_story', 1, 'consumer-a', now() - interval '9 s', now() - interval '8.5 s', 'retry',"
               " 'RaiseException'), ('req_story', 2, 'consumer-b', now() - interval '5 s', now() - interval '4.9 s',"
               " 'failed', 'RaiseException')")
    r = await call("retry_request", "POST", "/api/admin/requests/req_story/retry", headers=auth(tokens["admin"]),
                   json={"reason": "SES fixed"})
    assert r.status_code == 200
    story = (await call("request_story", "GET", "/api/admin/requests/req_story",
                        headers=auth(tokens["admin"]))).json()
    attempts = [s for s in story["timeline"] if s["kind"] == "attempt"]
    assert [(a["detail"]["consumer"], a["detail"]["outcome"]) for a in attempts] == [("consumer-a", "retry"),
                                                                                      ("consumer-b", "failed")]
    assert 450 <= attempts[0]["detail"]["duration_ms"] <= 550
    [retry] = [s for s in story["timeline"] if s["kind"] == "retried"]
    assert retry["detail"] == {"by": "admin-1", "reason": "SES fixed", "bulk": False}
    assert [s["kind"] for s in story["timeline"]][:2] == ["recorded", "queued"]


@pytest.mark.parametrize("request_id", ["req_nothing", "req%00x", "r" * 101, "caf%C3%A9"])
async def test_story_of_unknown_request_is_404(call, tokens, request_id):
    r = await call("request_story", "GET", f"/api/admin/requests/{request_id}", headers=auth(tokens["admin"]))
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


# -- audit ----------------------------------------------------------------------------------------------------

async def test_every_admin_change_is_audited_with_who_why_before_after(call, tokens, db):
    admin = auth(tokens["admin"])
    await call("set_mode", "POST", "/api/admin/system/mode", headers=admin,
               json={"mode": "sync_direct", "reason": "maintenance"})
    await call("set_limits", "POST", "/api/admin/system/limits", headers=admin,
               json={"rate_limit_max": 20, "rate_limit_duration_ms": 1000, "concurrency": 3, "reason": "faster"})
    insert_request(db, "req_au", "au@example.com")
    await call("retry_request", "POST", "/api/admin/requests/req_au/retry", headers=admin, json={"reason": "again"})
    await call("cleanup_logs", "POST", "/api/admin/system/cleanup", headers=admin)
    r = await call("list_audit", "GET", "/api/admin/audit", headers=auth(tokens["viewer"]))
    items = r.json()["items"]
    assert [i["action"] for i in items] == ["cleanup", "request_retry", "limits_changed", "mode_switch"]
    assert all(i["actor"] == "admin-1" for i in items)
    switch = items[-1]
    assert switch["reason"] == "maintenance" and switch["before"]["mode"] == "async_queue"
    assert switch["after"]["mode"] == "sync_direct"
    assert items[-2]["after"] == {"rate_limit_max": 20, "rate_limit_duration_ms": 1000, "concurrency": 3}
    older = await call("list_audit", "GET", "/api/admin/audit", params={"limit": 2, "after_id": items[1]["id"]},
                       headers=admin)
    assert [i["action"] for i in older.json()["items"]] == ["limits_changed", "mode_switch"]
    for params in ({"since": "x"}, {"after_id": str(2**63)}, {"limit": "0"}):
        bad = await call("list_audit", "GET", "/api/admin/audit", params=params, headers=admin)
        assert bad.status_code == 422


@pytest.fixture
def audit_trap(db):
    """The audit row of a change with the reason 'audit-trap' (and of any cleanup) cannot be written."""
    with before_insert(db, "audit_log", "IF NEW.reason = 'audit-trap' OR NEW.action = 'cleanup' THEN"
                                        " RAISE EXCEPTION 'trap: refusing this audit row'; END IF;"):
        yield


async def test_a_change_whose_audit_row_cannot_be_written_does_not_happen(call, tokens, db, audit_trap):
    """The audit row is written in the change's own transaction: when PostgreSQL refuses the row, the switch,
    the limits, the retry, the bulk retry and the cleanup are all rolled back with it."""
    admin = auth(tokens["admin"])
    insert_request(db, "req_trap", "trap@example.com")
    db.execute("INSERT INTO system_health_logs (created_at, level, event, message, source)"
               " VALUES (now() - interval '30 days', 'INFO', 'old', 'old', 'test')")
    answers = [
        await call("set_mode", "POST", "/api/admin/system/mode", headers=admin,
                   json={"mode": "sync_direct", "reason": "audit-trap"}),
        await call("set_limits", "POST", "/api/admin/system/limits", headers=admin,
                   json={"rate_limit_max": 20, "rate_limit_duration_ms": 1000, "concurrency": 3,
                         "reason": "audit-trap"}),
        await call("retry_request", "POST", "/api/admin/requests/req_trap/retry", headers=admin,
                   json={"reason": "audit-trap"}),
        await call("bulk_retry", "POST", "/api/admin/requests/retry", headers=admin,
                   json={"filter": {"status": "failed"}, "reason": "audit-trap"}),
        await call("cleanup_logs", "POST", "/api/admin/system/cleanup", headers=admin),
    ]
    for answer in answers:
        assert answer.status_code >= 500 and answer.json()["error"]["code"], answer.text[:200]
    mode = (await call("get_mode", "GET", "/api/admin/system/mode", headers=admin)).json()
    assert mode["mode"] == "async_queue"
    limits = (await call("get_limits", "GET", "/api/admin/system/limits", headers=admin)).json()
    assert limits["version"] == 0
    assert db.execute("SELECT status, attempts FROM creation_requests WHERE id = 'req_trap'").fetchone() == {
        "status": "failed", "attempts": 4}
    assert db.execute("SELECT count(*) AS n FROM audit_log").fetchone()["n"] == 0
    assert db.execute("SELECT count(*) AS n FROM system_health_logs WHERE event = 'old'").fetchone()["n"] == 1
    assert db.execute("SELECT count(*) AS n FROM system_health_logs WHERE level = 'SWITCH'").fetchone()["n"] == 0


async def test_cleanup_keeps_audit_rows_for_400_days_not_7(call, tokens, db):
    db.execute("INSERT INTO audit_log (at, actor, action) VALUES (now() - interval '30 days', 'a', 'old_but_kept'),"
               " (now() - interval '401 days', 'a', 'too_old')")
    r = await call("cleanup_logs", "POST", "/api/admin/system/cleanup", headers=auth(tokens["admin"]))
    assert r.status_code == 200 and r.json()["audit_deleted"] == 1
    actions = {row["action"] for row in db.execute("SELECT action FROM audit_log")}
    assert actions == {"old_but_kept", "cleanup"}


# -- kill switch extras ---------------------------------------------------------------------------------------

async def test_switch_with_revert_after_shows_revert_at_and_returns_by_itself(call, tokens, db, deps):
    admin = auth(tokens["admin"])
    r = await call("set_mode", "POST", "/api/admin/system/mode", headers=admin,
                   json={"mode": "sync_direct", "reason": "short maintenance", "revert_after_s": 60})
    assert r.status_code == 200, r.text
    revert_at = datetime.fromisoformat(r.json()["revert_at"])
    assert 55 <= (revert_at - datetime.now(UTC)).total_seconds() <= 61
    assert (await call("get_mode", "GET", "/api/admin/system/mode", headers=admin)).json()["revert_at"] is not None
    # the tick before the time is up changes nothing
    tick = await call("system_tick", "POST", "/api/admin/system/tick", headers=admin)
    assert tick.json()["mode_reverted"] is False
    db.execute("UPDATE system_config SET revert_at = now() - interval '1 s' WHERE key = 'traffic_mode'")
    tick = await call("system_tick", "POST", "/api/admin/system/tick", headers=admin)
    assert tick.json() == {"mode_reverted": True, "mode": "async_queue"}
    state = (await call("get_mode", "GET", "/api/admin/system/mode", headers=admin)).json()
    assert state["mode"] == "async_queue" and state["revert_at"] is None and state["updated_by"] == "system"
    event = db.execute("SELECT level, metadata FROM system_health_logs WHERE event = 'mode_reverted'").fetchone()
    assert event["level"] == "SWITCH" and event["metadata"]["automatic"] is True
    assert event["metadata"]["from"] == "sync_direct" and event["metadata"]["set_by"] == "admin-1"
    assert [r["action"] for r in db.execute("SELECT action FROM audit_log ORDER BY id")] == ["mode_switch",
                                                                                            "mode_revert"]
    assert (await call("system_tick", "POST", "/api/admin/system/tick", headers=admin)).json()["mode_reverted"] is False


async def test_a_due_return_happens_on_the_next_read_of_the_mode(call, tokens, db, deps):
    await call("set_mode", "POST", "/api/admin/system/mode", headers=auth(tokens["admin"]),
               json={"mode": "sync_direct", "reason": "short", "revert_after_s": 60})
    db.execute("UPDATE system_config SET revert_at = now() - interval '1 s' WHERE key = 'traffic_mode'")
    deps.mode_cache.invalidate()
    created = await call("create_user", "POST", "/api/users", headers=auth(tokens["sales_manager"]), json=BODY)
    assert created.status_code == 202  # queued again: the switch came back before this request was served
    assert db.execute("SELECT count(*) AS n FROM system_health_logs WHERE event = 'mode_reverted'").fetchone()["n"] == 1


@pytest.mark.parametrize("seconds", [59, 86_401, "60", 1.5])
async def test_bad_revert_after_is_422(call, tokens, db, seconds):
    r = await call("set_mode", "POST", "/api/admin/system/mode", headers=auth(tokens["admin"]),
                   json={"mode": "sync_direct", "reason": "bad", "revert_after_s": seconds})
    assert r.status_code == 422
    assert counts(db) == (0, 0)


async def test_switching_back_by_hand_cancels_the_return(call, tokens, db):
    admin = auth(tokens["admin"])
    await call("set_mode", "POST", "/api/admin/system/mode", headers=admin,
               json={"mode": "sync_direct", "reason": "short", "revert_after_s": 600})
    r = await call("set_mode", "POST", "/api/admin/system/mode", headers=admin,
                   json={"mode": "sync_direct", "reason": "keep it off"})
    assert r.json()["revert_at"] is None and r.json()["mode"] == "sync_direct"


# -- limits ---------------------------------------------------------------------------------------------------

async def test_limits_default_to_the_configuration_then_change_with_version(call, tokens, db):
    admin = auth(tokens["admin"])
    r = await call("get_limits", "GET", "/api/admin/system/limits", headers=admin)
    assert r.json() == {"rate_limit_max": 10, "rate_limit_duration_ms": 1000, "concurrency": 5, "version": 0,
                        "reason": None, "updated_at": None, "updated_by": None}
    body = {"rate_limit_max": 50, "rate_limit_duration_ms": 2000, "concurrency": 8, "reason": "campaign day",
            "expected_version": 0}
    r = await call("set_limits", "POST", "/api/admin/system/limits", headers=admin, json=body)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1 and r.json()["updated_by"] == "admin-1" and r.json()["concurrency"] == 8
    stale = await call("set_limits", "POST", "/api/admin/system/limits", headers=admin, json=body)
    assert stale.status_code == 409 and stale.json()["error"]["code"] == "stale_version"
    metrics = (await call("system_metrics", "GET", "/api/admin/system/metrics", headers=admin)).json()
    assert metrics["rate_limit"] == {"max": 50, "duration_ms": 2000}
    event = db.execute("SELECT level, metadata FROM system_health_logs WHERE event = 'limits_changed'").fetchone()
    assert event["level"] == "INFO" and event["metadata"]["after"]["rate_limit_max"] == 50


@pytest.mark.parametrize("change", [{"rate_limit_max": 0}, {"rate_limit_max": 10_001},
                                    {"rate_limit_duration_ms": 99}, {"rate_limit_duration_ms": 60_001},
                                    {"concurrency": 0}, {"concurrency": 101}, {"concurrency": "5"},
                                    {"reason": "no"}, {"extra": 1}])
async def test_limits_out_of_bounds_are_422_and_write_nothing(call, tokens, db, change):
    body = {"rate_limit_max": 10, "rate_limit_duration_ms": 1000, "concurrency": 5, "reason": "bounds", **change}
    r = await call("set_limits", "POST", "/api/admin/system/limits", headers=auth(tokens["admin"]), json=body)
    assert r.status_code == 422 and r.json()["error"]["details"]
    assert counts(db) == (0, 0)
    assert db.execute("SELECT count(*) AS n FROM runtime_limits").fetchone()["n"] == 0


def test_the_switch_return_is_checked_every_minute_even_without_traffic():
    spec = load_manifest()["system_tick"]
    assert spec.kind == "scheduled" and spec.routes[0].path == "/api/admin/system/tick"
    assert all(cron_matches(spec.schedule, datetime(2026, 3, 1, hour, minute)) for hour in (0, 13, 23)
               for minute in range(60))
