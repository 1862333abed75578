"""Cold start: process start to the first *real* answer of every HTTP function of the manifest, against a hello
world."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from bench.context import Ctx, auth, load_average
from bench.procs import FunctionServer
from bench.report import at_most, case_result, fmt, ratio
from infra.manifest import load_manifest

QUICK_FUNCTIONS = ("create_user", "get_mode", "set_mode", "healthz", "system_metrics")


@dataclass(frozen=True)
class Probe:
    """The request that shows a function really works: what a user would send first, and the answers that prove
    it reached what the function uses (a 405 or a 401 proves nothing)."""

    method: str
    path: str
    want: tuple[int, ...]
    token: str | None = "admin"  # noqa: S105  # nosec B105 (which of the run's tokens, not a secret)
    body: bytes | None = None
    content_type: str = "application/json"


def _json(text: str) -> bytes:
    return text.encode()


def probes(request_id: str, tag: str) -> dict[str, Probe]:
    """One probe per HTTP function. `request_id` is a queued request (for the routes that look one up), `tag`
    makes the addresses of this run unique."""
    user = _json(f'{{"email": "cold-{tag}@example.com", "full_name": "Cold Start"}}')
    reason = _json('{"reason": "bench cold start"}')
    return {
        # PostgreSQL (the switch, the idempotency/quota bookkeeping) and Redis (quota, queue): the 202 path.
        "create_user": Probe("POST", "/api/users", (202,), "sales", user),
        "request_status": Probe("GET", f"/api/users/requests/{request_id}", (200,), "sales"),
        "get_mode": Probe("GET", "/api/admin/system/mode", (200,)),
        # The mode it already has: a locked read of the row, nothing written.
        "set_mode": Probe("POST", "/api/admin/system/mode", (200,),
                          body=_json('{"mode": "async_queue", "reason": "bench cold start"}')),
        "system_metrics": Probe("GET", "/api/admin/system/metrics", (200,)),
        "system_logs": Probe("GET", "/api/admin/system/logs", (200,)),
        "cleanup_logs": Probe("POST", "/api/admin/system/cleanup", (200,)),
        "healthz": Probe("GET", "/healthz", (200,), None),
        "openapi_spec": Probe("GET", "/openapi.json", (200,), None),
        "list_requests": Probe("GET", "/api/admin/requests", (200,)),
        # A queued request cannot be retried: the 409 comes from its row.
        "retry_request": Probe("POST", f"/api/admin/requests/{request_id}/retry", (409,),
                               body=_json('{"reason": "bench cold start"}')),
        "admin_panel": Probe("GET", "/admin/system-health", (200,), None),
        "alert_watchdog": Probe("POST", "/api/admin/system/watchdog", (200,)),
        "list_alerts": Probe("GET", "/api/admin/system/alerts", (200,)),
        "set_password_page": Probe("GET", "/set-password", (200,), None),
        # An unknown token: looked up (hashed) in PostgreSQL.
        "set_password": Probe("POST", "/api/account/password", (400, 404, 410), None,
                              _json('{"token": "cold-start-unknown-token", "password": "a long enough pass"}')),
        # An unknown address: the account lookup and the equal-time Argon2 verification.
        "sign_in": Probe("POST", "/api/auth/sign-in", (401,), None,
                         _json(f'{{"email": "nobody-{tag}@example.com", "password": "wrong password"}}')),
        "create_account": Probe("POST", "/api/admin/accounts", (201,),
                                body=_json(f'{{"email": "staff-{tag}@example.com", "full_name": "Cold Staff",'
                                           ' "role": "viewer"}')),
        "list_accounts": Probe("GET", "/api/admin/accounts", (200,)),
        "prometheus_metrics": Probe("GET", "/metrics", (200,)),
        "resend_welcome": Probe("POST", f"/api/admin/accounts/{uuid.UUID(int=0)}/welcome", (404,)),
        "bulk_upload": Probe("POST", "/api/users/bulk", (202,), "sales",
                             f"email,full_name\ncold-bulk-{tag}@example.com,Cold Bulk\n".encode(), "text/csv"),
        "bulk_status": Probe("GET", "/api/users/bulk", (200,), "sales"),
        "my_requests": Probe("GET", "/api/users/requests", (200,), "sales"),
        "bulk_drain": Probe("POST", "/api/admin/system/drain", (200,)),
        "sales_desk": Probe("GET", "/sales", (200,), None),
        "request_story": Probe("GET", f"/api/admin/requests/{request_id}", (200,)),
        # Counting only: the filter is read against PostgreSQL, nothing is retried.
        "bulk_retry": Probe("POST", "/api/admin/requests/retry", (200,),
                            body=_json('{"filter": {"status": "failed"}, "reason": "bench cold start",'
                                       ' "dry_run": true}')),
        "list_audit": Probe("GET", "/api/admin/audit", (200,)),
        "get_limits": Probe("GET", "/api/admin/system/limits", (200,)),
        # Stale on purpose: the row is read and locked, nothing changes for the other cases.
        "set_limits": Probe("POST", "/api/admin/system/limits", (409,),
                            body=_json('{"rate_limit_max": 10, "rate_limit_duration_ms": 1000,'
                                       ' "concurrency": 5, "reason": "bench cold start",'
                                       ' "expected_version": 999999}')),
        "system_tick": Probe("POST", "/api/admin/system/tick", (200,)),
        # The account lifecycle on an id nobody has: the account is looked up (and locked) in PostgreSQL -> 404.
        "erase_user": Probe("POST", f"/api/admin/users/{uuid.UUID(int=0)}/erase", (404,), body=reason),
        "disable_account": Probe("POST", f"/api/admin/accounts/{uuid.UUID(int=0)}/disable", (404,), body=reason),
        "enable_account": Probe("POST", f"/api/admin/accounts/{uuid.UUID(int=0)}/enable", (404,), body=reason),
        "change_account_role": Probe("PATCH", f"/api/admin/accounts/{uuid.UUID(int=0)}", (404,),
                                     body=_json('{"role": "viewer", "reason": "bench cold start"}')),
        "revoke_sessions": Probe("POST", f"/api/admin/accounts/{uuid.UUID(int=0)}/sessions/revoke", (404,),
                                 body=reason),
        # The bench's admin token is not one of our sign-in's sessions: nothing to end, the token check runs.
        "sign_out": Probe("POST", "/api/auth/sign-out", (204,)),
    }


async def _first_answer(server: FunctionServer, probe: Probe, headers: dict[str, str],
                        within_s: float = 40.0) -> tuple[float, int]:
    """Launch, then send the probe every 10 ms until the process accepts a connection: the first answer is the
    one timed, and it must be one of `probe.want` (anything else fails the case: a 503 is no start)."""
    server.launch()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        while True:
            if not server.running():
                raise RuntimeError(f"{server.name} exited:\n{server.output()}")
            try:
                response = await client.request(probe.method, probe.path, headers=headers, content=probe.body)
            except httpx.TransportError:
                if time.perf_counter() - server.launched_at > within_s:
                    raise RuntimeError(f"{server.name} did not answer within {within_s} s:\n"
                                       f"{server.output()}") from None
                await asyncio.sleep(0.01)
                continue
            seconds = time.perf_counter() - server.launched_at
            if response.status_code not in probe.want:
                raise RuntimeError(f"{server.name}: {probe.method} {probe.path} answered {response.status_code}"
                                   f" (want {probe.want}): {response.text[:300]}")
            return seconds, response.status_code


async def cold_start(ctx: Ctx) -> dict[str, Any]:
    """Start each function alone (nothing else starting) and time launch -> its first real answer.

    The first request is one a user would send (create_user: an authenticated POST with a valid body, answered
    202 after PostgreSQL and Redis; the admin reads: 200 with an admin token), so the lazy start-up (settings,
    pool, Redis client, token key, first queries) is inside the time, not only the imports.
    """
    ctx.wipe()
    manifest = load_manifest()
    names = [n for n, spec in manifest.items() if spec.kind in ("http", "scheduled")]
    if ctx.quick:
        names = [n for n in names if n in QUICK_FUNCTIONS]
    request_id = (await ctx.create_requests(1))[0]
    table = probes(request_id, uuid.uuid4().hex[:10])
    missing = [n for n in names if n not in table]
    if missing:
        raise RuntimeError(f"no cold-start probe for {missing}: add one to bench/cases/coldstart.py")
    hello: list[float] = []
    floor: list[float] = []
    per_function: dict[str, dict[str, Any]] = {}
    rounds = ctx.n(3, 2)
    hello_slots = {0, len(names) // 2, len(names)} if rounds == 3 else {0, len(names)}
    hello_probe = Probe("GET", "/", (200,), None)
    for index in range(len(names) + 1):
        if index in hello_slots:  # interleaved, so a machine getting busier shows in both
            for target, samples in (("hello", hello), ("hello_deps", floor)):
                server = ctx.bench_function(target)
                try:
                    seconds, _ = await _first_answer(server, hello_probe, {})
                finally:
                    ctx.registry.stop(server)
                samples.append(seconds)
        if index == len(names):
            break
        name = names[index]
        probe = table[name]
        headers = {"content-type": probe.content_type} if probe.body is not None else {}
        if probe.token is not None:
            headers.update(auth(ctx.tokens[probe.token]))
        server = ctx.function(name, instance=f"{name}-cold")
        try:
            seconds, status = await _first_answer(server, probe, headers)
        finally:
            ctx.registry.stop(server)
        per_function[name] = {"seconds": seconds, "status": status, "request": f"{probe.method} {probe.path}",
                              "ratio_to_hello": None}
        ctx.progress(f"  {name}: {fmt(seconds * 1000)} ms ({status})")
    limit = statistics.median(hello)
    for figures in per_function.values():
        figures["ratio_to_hello"] = ratio(figures["seconds"], limit)
    slowest = max(per_function, key=lambda n: per_function[n]["seconds"])
    figure = per_function[slowest]["seconds"]
    median = statistics.median(v["seconds"] for v in per_function.values())
    floor_s = statistics.median(floor)
    share = ratio(figure, floor_s)  # issue 23: against the floor, what any function with these libraries pays
    ctx.notes["cold_start"] = (f"slowest {slowest} {fmt(figure * 1000)} ms; floor (hello + the libraries + one query,"
                               f" one PING) {fmt(floor_s * 1000)} ms = {fmt(ratio(floor_s, limit))}x hello"
                               f" ({fmt(limit * 1000)} ms); median function {fmt(median * 1000)} ms")
    return case_result(
        figure=figure, unit="s", limit=floor_s,
        limit_desc=f"median of {len(floor)} cold starts of bench/hello_deps.py (same server and flags), interleaved",
        ratio=share,
        goal="slowest function start -> first real answer <= 1.2x the floor (ratio = slowest / hello_deps)",
        goal_met=at_most(share, 1.2), slowest=slowest, per_function=per_function, hello_samples_s=hello,
        hello_s=limit, median_function_s=median, floor_s=floor_s, floor_samples_s=floor,
        floor_desc="bench/hello_deps.py: hello + psycopg, redis, pydantic, PyJWT imported, and a first request that"
                   " connects to PostgreSQL (one query), PINGs Redis and checks a token: none of our code",
        floor_to_hello=ratio(floor_s, limit), slowest_to_floor=ratio(figure, floor_s), load_avg_1m=load_average()[0])
