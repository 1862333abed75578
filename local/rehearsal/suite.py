"""The rehearsal suite: what a user and an operator would notice, checked against the deployment as rendered and
run by `local.rehearsal.run`. Each case returns a short note or raises; `run_suite` prints one line per case and
ends with `rehearsal: N passed, M failed`."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import psycopg
import redis

from bench.report import max_in_window
from local.rehearsal.run import Rehearsal

Case = Callable[[Rehearsal], str]
CASES: list[tuple[str, Case]] = []
RATE_LIMIT = 10  # RATE_LIMIT_MAX per RATE_LIMIT_DURATION_MS (1 s): Settings' default, which the rendering keeps


def case(name: str) -> Callable[[Case], Case]:
    def add(function: Case) -> Case:
        CASES.append((name, function))
        return function
    return add


class Failed(AssertionError):
    """A case's expectation did not hold."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Failed(message)


def token(r: Rehearsal, role: str, subject: str | None = None, ttl_s: int = 3600) -> str:
    """A user's bearer token (HS256, the deployment's AUTH_JWT_SECRET), as the identity provider signs it."""
    now = int(time.time())
    return jwt.encode({"sub": subject or f"rehearsal-{role}", "aud": "authenticated", "iat": now, "exp": now + ttl_s,
                       "role": "authenticated", "app_metadata": {"role": role}}, r.auth_jwt_secret, algorithm="HS256")


def client(r: Rehearsal, address: str = "127.0.0.1") -> httpx.Client:
    """An HTTPS client of the front verifying its certificate, from one loopback address (a distinct client)."""
    return httpx.Client(base_url=r.front_url, verify=str(r.front_ca), timeout=60,
                        transport=httpx.HTTPTransport(verify=str(r.front_ca), local_address=address))


def owner(r: Rehearsal) -> psycopg.Connection[Any]:
    return psycopg.connect(r.owner_url, autocommit=True)


def wait_for(what: str, predicate: Callable[[], Any], timeout: float, step: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Failed(f"{what}: not within {timeout:.0f} s")
        time.sleep(step)


def set_mode(r: Rehearsal, mode: str) -> None:
    with client(r) as http:
        answer = http.post("/api/admin/system/mode", headers={"Authorization": f"Bearer {token(r, 'admin')}"},
                           json={"mode": mode, "reason": "rehearsal flips the switch"})
    check(answer.status_code == 200, f"POST /api/admin/system/mode -> {answer.status_code} {answer.text[:200]}")


def create(http: httpx.Client, r: Rehearsal, subject: str, email: str) -> httpx.Response:
    return http.post("/api/users", headers={"Authorization": f"Bearer {token(r, 'sales_manager', subject)}"},
                     json={"email": email, "full_name": "Rehearsal Person"})


def settled(r: Rehearsal, ids: list[str]) -> bool:
    with owner(r) as conn:
        row = conn.execute("SELECT count(*) FROM creation_requests WHERE id = ANY(%s) AND status IN"
                           " ('created', 'failed')", (ids,)).fetchone()
    return bool(row and row[0] == len(ids))


# ---------------------------------------------------------------------------------------------------- the cases


@case("the panel is served through the front over TLS, with the edge's headers")
def panel(r: Rehearsal) -> str:
    with client(r) as http:
        page = http.get("/admin/system-health")
        health = http.get("/healthz")
    check(page.status_code == 200 and "text/html" in page.headers.get("content-type", ""),
          f"GET /admin/system-health -> {page.status_code}")
    check(page.headers.get("strict-transport-security", "").startswith("max-age=31536000"), "no HSTS from the edge")
    check("no-store" in page.headers.get("cache-control", ""), "no Cache-Control: no-store from the edge")
    check(health.status_code == 200, f"GET /healthz -> {health.status_code} {health.text[:200]}")
    return f"{len(page.content)} bytes of panel, healthz {health.json().get('status', health.status_code)}"


@case("the load balancer answers 404/405 itself and never routes a scheduled path (issue 21 #3)")
def url_map(r: Rehearsal) -> str:
    with client(r) as http:
        unknown = http.get("/no/such/route")
        method = http.patch("/api/users")
        scheduled = [http.post(path, headers={"Authorization": f"Bearer {token(r, 'admin')}"}).status_code
                     for path in ("/api/admin/system/tick", "/api/admin/system/cleanup", "/api/admin/system/drain",
                                  "/api/admin/system/watchdog")]
    check(unknown.status_code == 404 and method.status_code == 405, f"{unknown.status_code}, {method.status_code}")
    check(scheduled == [404] * 4, f"scheduled paths through the front: {scheduled}")
    return "404 unknown, 405 wrong method, 404 for tick/cleanup/drain/watchdog"


@case("scheduled cleanup and tick run with the scheduler's OIDC token; a wrong audience or account is refused "
      "(issue 21 #1, #3)")
def scheduled_auth(r: Rehearsal) -> str:
    statuses = {key: r.call(r.scheduler.run_now(key)) for key in ("cleanup_logs", "system_tick")}
    check(statuses == {"cleanup_logs": 200, "system_tick": 200}, f"scheduler runs: {statuses}")
    job = r.scheduler.jobs["cleanup_logs"]
    service = r.cloud_run.services["cleanup_logs"]
    reached = sum(slot.served for slot in service.slots)
    wrong_audience = r.identity.id_token(job.service_account, "https://prod-another-1.europe-west1.run.app")
    stranger = r.identity.id_token(f"intruder@{job.service_account.split('@')[1]}", job.audience)
    made_up_kid = r.identity.id_token(job.service_account, job.audience, kid="made-up")
    answers = []
    for bearer in [wrong_audience, stranger, made_up_kid, *(r.identity.id_token(job.service_account, job.audience,
                                                                                 kid=f"flood-{n}") for n in range(30))]:
        answers.append(httpx.post(job.uri, headers={"Authorization": f"Bearer {bearer}"}, timeout=10).status_code)
    check(answers[:3] == [401, 403, 401], f"wrong audience / account / key: {answers[:3]}")
    check(set(answers[3:]) == {401}, f"unknown-kid flood: {sorted(set(answers[3:]))}")
    check(sum(slot.served for slot in service.slots) == reached, "a refused token reached the function")
    fetches = r.identity.fetches
    return f"cleanup 200, tick 200; 401 wrong audience, 403 other account, 401 x31 unknown kids " \
           f"(none reached the function; JWKS fetched {fetches}x so far)"


@case("202 while queueing, 201 after the switch, and the switch reaches every instance")
def switch(r: Rehearsal) -> str:
    run = uuid.uuid4().hex[:8]
    with client(r) as http:
        queued = create(http, r, f"switch-{run}", f"q-{run}@example.com")
        check(queued.status_code == 202, f"async: {queued.status_code} {queued.text[:200]}")
        for n in range(6):  # reach every instance slot of the functions involved
            http.get("/api/admin/system/mode", headers={"Authorization": f"Bearer {token(r, 'admin')}"})
            create(http, r, f"switch-{run}", f"warm-{n}-{run}@example.com")
    set_mode(r, "sync_direct")
    flipped = time.monotonic()
    seen: list[str] = []
    try:  # the first request each instance gets after the flip already sees it (no stale answer anywhere)
        headers = {"Authorization": f"Bearer {token(r, 'admin', f'every-{run}')}"}
        for slot in r.cloud_run.services["get_mode"].slots:
            if slot.proc is not None:
                answer = httpx.get(slot.url + "/api/admin/system/mode", headers=headers, timeout=10)
                check(answer.json().get("mode") == "sync_direct", f"get_mode instance {slot.number}: "
                                                                 f"{answer.text[:200]}")
                seen.append(f"get_mode#{slot.number}")
        for slot in r.cloud_run.services["create_user"].slots:
            if slot.proc is not None:
                answer = httpx.post(slot.url + "/api/users", headers=headers, timeout=10,
                                    json={"email": f"i{slot.number}-{run}@example.com", "full_name": "Instance"})
                check(answer.status_code == 201, f"create_user instance {slot.number}: {answer.status_code}")
                seen.append(f"create_user#{slot.number}")
        elapsed = time.monotonic() - flipped
    finally:
        set_mode(r, "async_queue")
    check(len([s for s in seen if s.startswith("create_user")]) == len(r.cloud_run.services["create_user"].slots),
          f"not every create_user instance was up: {seen}")
    return f"202, then the first answer of every instance after the flip was the new mode ({', '.join(seen)}; " \
           f"all checked within {elapsed:.1f} s of the flip)"


def _wait_queue_path(r: Rehearsal) -> None:
    with client(r) as http:
        wait_for("the queue path again", lambda: http.get(
            "/api/admin/system/mode", headers={"Authorization": f"Bearer {token(r, 'admin')}"}).json().get(
            "effective_mode", "async_queue") == "async_queue", 30)


def _starts(r: Rehearsal, ids: list[str]) -> list[tuple[float, str]]:
    with owner(r) as conn:
        return [(row[0], row[1]) for row in conn.execute(
            "SELECT extract(epoch FROM started_at)::float8, consumer FROM creation_attempts WHERE request_id = ANY(%s)"
            " ORDER BY started_at", (ids,))]


def _create_requests(r: Rehearsal, tag: str, run: str, count: int, callers: int) -> list[str]:
    """`count` creations through the front (addresses `<tag>-<n>-<run>@example.com`), spread over `callers`
    sales managers; every answer must be 202."""
    ids = []
    with client(r) as http:
        for n in range(count):
            answer = create(http, r, f"{tag}-{run}-{n % callers}", f"{tag}-{n}-{run}@example.com")
            check(answer.status_code == 202, f"request {n}: {answer.status_code} {answer.text[:200]}")
            ids.append(answer.json()["request_id"])
    return ids


@case("the global start rate holds across every consumer (never over the limit in any 1 s window)")
def start_rate(r: Rehearsal) -> str:
    ids = _create_requests(r, "rate", uuid.uuid4().hex[:8], 40, 4)
    wait_for("40 requests created", lambda: settled(r, ids), 90)
    starts = _starts(r, ids)
    worst = max_in_window([t * 1000 for t, _ in starts], 1000)
    consumers = {name for _, name in starts}
    check(worst <= RATE_LIMIT, f"{worst} starts in one second (limit {RATE_LIMIT})")
    check(len(consumers) >= min(2, len(r.consumers)), f"only {consumers} consumed")
    return f"{len(starts)} starts by {len(consumers)} consumers, at most {worst} in any 1 s window"


@case("a consumer SIGKILLed mid-work: nothing lost, nothing doubled")
def consumer_killed(r: Rehearsal) -> str:
    run = uuid.uuid4().hex[:8]
    ids = _create_requests(r, "kill", run, 30, 3)
    victim = r.consumers[0]
    name = str(victim.pid)

    def victim_busy() -> bool:
        with owner(r) as conn:
            row = conn.execute("SELECT count(*) FROM creation_attempts WHERE request_id = ANY(%s) AND"
                               " finished_at IS NULL AND consumer LIKE %s", (ids, f"%{name}")).fetchone()
        return bool(row and row[0])

    try:
        wait_for("a job in flight on the victim", victim_busy, 10, 0.02)
        in_flight = "with a job in flight"
    except Failed:
        in_flight = "(no job of its own in flight was seen)"
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    started = time.monotonic()
    wait_for("every request settled after the kill", lambda: settled(r, ids), 150, 1)
    with owner(r) as conn:
        statuses = dict(conn.execute("SELECT status, count(*) FROM creation_requests WHERE id = ANY(%s)"
                                     " GROUP BY status", (ids,)).fetchall())
        users = conn.execute("SELECT count(*), count(DISTINCT email_normalized) FROM users WHERE email_normalized"
                             " LIKE %s", (f"kill-%-{run}@example.com",)).fetchone()
    check(statuses == {"created": 30}, f"statuses {statuses}")
    check(users == (30, 30), f"users (rows, distinct): {users}")
    _restart_consumer(r, 0)
    return f"30 created exactly once, all settled {time.monotonic() - started:.0f} s after the kill of " \
           f"consumer pid {victim.pid} {in_flight}"


def _restart_consumer(r: Rehearsal, index: int) -> None:
    """Cloud Run replaces a dead worker instance: the same command and environment again."""
    key = next(iter(r.cloud_run.pools))
    r.consumers[index] = r.cloud_run.restart_pool_instance(key, index)


@case("sign-in throttling is per real client behind the front (issue 21 #2)")
def sign_in(r: Rehearsal) -> str:
    run = uuid.uuid4().hex[:8]
    statuses: list[int] = []
    with client(r, "127.0.0.2") as attacker, client(r, "127.0.0.3") as colleague, \
            concurrent.futures.ThreadPoolExecutor(4) as pool:

        def attempt(n: int) -> int:
            return attacker.post("/api/auth/sign-in", headers={"X-Forwarded-For": "198.51.100.99"},
                                 json={"email": f"nobody-{n}-{run}@example.com", "password": "wrong"}).status_code

        statuses = list(pool.map(attempt, range(16)))  # 4 at a time: each costs an Argon2id verification
        while len(statuses) < 30 and 429 not in statuses:  # 20 counted attempts allowed, then 429
            statuses.append(attempt(len(statuses)))
        other = colleague.post("/api/auth/sign-in", json={"email": f"colleague-{run}@example.com",
                                                          "password": "also wrong"})
    with owner(r) as conn:
        open_fails = [f"{row[0]}: {row[1]}" for row in conn.execute(
            "SELECT source, metadata->>'error' FROM system_health_logs WHERE event = 'sign_in_throttle_unavailable'")]
    check(statuses[-1] == 429 and set(statuses[:-1]) == {401}, f"one client's attempts: {statuses}; the throttle "
                                                               f"failed open on: {open_fails}")
    check(len(statuses) >= 21, f"refused after only {len(statuses) - 1} attempts")
    check(other.status_code == 401, f"another client after that: {other.status_code} (429 = one bucket for all)")
    note = f" (uncounted while failing open: {len(statuses) - 21}, {open_fails})" if len(statuses) > 21 else ""
    return f"{len(statuses) - 1} x 401 then 429 for 127.0.0.2 (whatever it claims in X-Forwarded-For); " \
           f"127.0.0.3 still 401{note}"


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@case("a JSON bulk row with 200,000 unknown keys is refused cheaply and stored small (issue 21 #4)")
def bulk(r: Rehearsal) -> str:
    heavy: dict[str, Any] = {"email": "heavy@example.com", "full_name": "Heavy"}
    heavy.update({f"{n:x}": 0 for n in range(200_000)})
    body = json.dumps([heavy, {"email": f"light-{uuid.uuid4().hex[:6]}@example.com", "full_name": "Light"}],
                      separators=(",", ":")).encode()
    with client(r) as http:
        answer = http.post("/api/users/bulk", content=body, headers={
            "Authorization": f"Bearer {token(r, 'sales_manager', 'bulk-rehearsal')}",
            "Content-Type": "application/json"})
    check(answer.status_code == 202, f"{answer.status_code} {answer.text[:300]}")
    data = answer.json()
    check(data["accepted"] == 1 and len(data["rejected"]) == 1, f"accepted {data['accepted']}, "
                                                                 f"{len(data['rejected'])} rejected entries")
    with owner(r) as conn:
        row = conn.execute("SELECT pg_column_size(rejected) FROM bulk_batches WHERE id = %s",
                           (data["batch_id"],)).fetchone()
    stored = int(row[0]) if row else -1
    peaks = [_peak_rss_mb(slot.proc.pid) for slot in r.cloud_run.services["bulk_upload"].slots if slot.proc]
    check(0 < stored < 2000, f"{stored} bytes stored")
    check(max(peaks) < 250, f"bulk_upload instance peak RSS {max(peaks):.0f} MB")
    return f"{len(body) / 1e6:.1f} MB upload: 1 rejection ({data['rejected'][0]['message'][:60]}...), " \
           f"{stored} bytes stored, instance peak RSS {max(peaks):.0f} MB"


@case("the functions' database role: TLS verified, DML only, statement_timeout 30 s (issue 21 #4)")
def database_role(r: Rehearsal) -> str:
    url = r.runtime_database_url.replace("/secrets/sql-ca/ca.pem", str(r.root / "sql-ca.pem"))
    (r.root / "sql-ca.pem").write_text(r.sql.ca.pem)
    with psycopg.connect(url, autocommit=True) as conn:
        timeout = conn.execute("SHOW statement_timeout").fetchone()
        ssl = (conn.pgconn.ssl_in_use,)
        try:
            conn.execute("CREATE TABLE rehearsal_ddl (x int)")
            ddl = "allowed"
        except psycopg.errors.InsufficientPrivilege:
            ddl = "refused"
    check(timeout == ("30s",), f"statement_timeout {timeout}")
    check(ssl == (True,), "not over TLS")
    check(ddl == "refused", "the runtime role may run DDL")
    plain = url.split("?")[0] + "?sslmode=disable"
    try:
        psycopg.connect(plain, connect_timeout=5).close()
        refused = False
    except psycopg.OperationalError:
        refused = True
    check(refused, "a connection without TLS was accepted")
    return "verify-ca over TLS, DDL refused, statement_timeout 30s, plain TCP refused"


@case("Redis as Memorystore: TLS only, AUTH required, noeviction")
def redis_settings(r: Rehearsal) -> str:
    policy = r.memorystore.client().config_get("maxmemory-policy")
    check(policy == {"maxmemory-policy": "noeviction"} or policy == {b"maxmemory-policy": b"noeviction"},
          f"{policy}")
    try:
        redis.Redis(host="127.0.0.1", port=r.memorystore.port, socket_timeout=1, socket_connect_timeout=1,
                    retry_on_timeout=False).ping()
        plain = "answered"
    except redis.RedisError:
        plain = "refused"
    try:
        redis.Redis(host="127.0.0.1", port=r.memorystore.port, ssl=True, ssl_ca_certs=str(r.memorystore.ca_file),
                    socket_timeout=2).ping()
        anonymous = "answered"
    except redis.AuthenticationError:
        anonymous = "refused"
    except redis.ResponseError as err:
        anonymous = "refused" if "NOAUTH" in str(err) else str(err)
    check(plain == "refused" and anonymous == "refused", f"plain: {plain}, TLS without AUTH: {anonymous}")
    return "plain refused, TLS without the auth string refused, noeviction"


@case("Redis stopped: the scheduled watchdog's firing alert reaches the webhook within 90 s, resolved after")
def watchdog(r: Rehearsal) -> str:
    def alerts(state: str, since: int) -> list[dict[str, Any]]:
        return [a for a in r.receiver.received[since:] if a.get("alert", {}).get("event") == "redis_unavailable"
                and a["alert"].get("state") == state]

    before = len(r.receiver.received)
    stopped = time.monotonic()
    r.memorystore.stop()
    try:
        with client(r) as http:
            fallback = create(http, r, "redis-down", f"down-{uuid.uuid4().hex[:8]}@example.com")
        wait_for("the firing alert", lambda: alerts("firing", before), 90)
        fired = time.monotonic() - stopped
    finally:
        r.memorystore.start()
    restarted = time.monotonic()
    wait_for("the resolved alert", lambda: alerts("resolved", before), 90)
    check(fallback.status_code == 201, f"a creation with Redis down: {fallback.status_code} (sync fallback is 201)")
    return f"firing after {fired:.0f} s, resolved {time.monotonic() - restarted:.0f} s after Redis came back; " \
           f"a creation meanwhile got 201"


def run_suite(r: Rehearsal, only: list[str] | None = None) -> tuple[int, int]:
    """Every case (or those whose name contains one of `only`); prints a line each, then the summary line."""
    passed = failed = 0
    for name, function in CASES:
        if only and not any(word in name for word in only):
            continue
        started = time.monotonic()
        try:
            note = function(r)
        except Exception as exc:  # a case's failure is reported, never hidden: the run exits non-zero
            failed += 1
            reason = str(exc) if isinstance(exc, Failed) else "".join(
                traceback.format_exception_only(type(exc), exc)).strip()
            print(f"FAIL {name} ({time.monotonic() - started:.1f} s): {reason}", flush=True)
            continue
        passed += 1
        print(f"ok   {name} ({time.monotonic() - started:.1f} s): {note}", flush=True)
    print(f"rehearsal: {passed} passed, {failed} failed", flush=True)
    return passed, failed
