"""Request search at scale: GET /api/admin/requests?q=<email substring> over a million recorded requests."""

from __future__ import annotations

import random
import time
from typing import Any

import httpx

from bench.context import Ctx, auth, load_average
from bench.report import at_most, case_result, fmt, ratio

FIRST = ["Ana", "Bruno", "Chloé", "Dmitri", "Émile", "Fatima", "Gaspard", "Hana", "Ingrid", "José"]
LAST = ["García", "Müller", "Nakamura", "O'Brien", "Smith", "Kowalski", "Dubois", "Rossi", "Novak", "Silva"]
DOMAINS = ["example.com", "example.org", "corp.example", "mail.example.net", "shop.example"]


async def _fill(ctx: Ctx, rows: int) -> float:
    """`rows` requests in one INSERT ... SELECT generate_series (the trigram index rebuilt once afterwards, as a
    bulk load does it); returns the seconds it took."""
    started = time.perf_counter()
    async with ctx.db() as conn:
        await conn.execute("DROP INDEX IF EXISTS creation_requests_search_key_trgm")
        await conn.execute(
            "INSERT INTO creation_requests (id, actor, body_hash, email, email_normalized, full_name, mode, status,"
            " attempts, created_at, updated_at)"
            " SELECT 'req_b' || g, 'bench-sales-' || (g %% 20), 'h', e, lower(e),"
            "        (%(first)s::text[])[1 + g %% 10] || ' ' || (%(last)s::text[])[1 + (g / 10) %% 10],"
            "        'async_queue', (ARRAY['created','created','created','failed'])[1 + g %% 4], 1,"
            "        t, t"
            " FROM generate_series(1, %(rows)s) AS g,"
            "      LATERAL (SELECT 'user' || g || '@' || (%(domains)s::text[])[1 + g %% 5] AS e,"
            "                      now() - make_interval(secs => %(rows)s - g) AS t) AS x",
            {"rows": rows, "first": FIRST, "last": LAST, "domains": DOMAINS})
        await conn.execute("CREATE INDEX creation_requests_search_key_trgm ON creation_requests"
                           " USING gin (search_key gin_trgm_ops)")
        await conn.execute("ANALYZE creation_requests")
    return time.perf_counter() - started


KINDS = ("whole address", "address start, upper case", "5 digits", "number@domain start", "domain", "last name")


def _queries(rows: int, count: int) -> list[str]:
    """Substrings an operator types: a whole address, its start, a number, a domain, a name (any case)."""
    pick = random.Random(13)  # noqa: S311  (test data, not security)
    queries: list[str] = []
    for i in range(count):
        n = pick.randint(1, rows)
        kind = i % 6
        queries.append([f"user{n}@", f"USER{n}", str(n)[:5], f"{n}@{DOMAINS[n % 5][:4]}", DOMAINS[n % 5],
                        LAST[n % 10].upper()][kind])
    return queries


async def search_1m(ctx: Ctx) -> dict[str, Any]:
    """p99 of GET /api/admin/requests?q=... (email or name substrings) over 1,000,000 requests, one client."""
    ctx.wipe()
    rows = ctx.n(1_000_000, 100_000)
    fill_s = await _fill(ctx, rows)
    ctx.progress(f"  {rows} requests recorded in {fill_s:.1f} s")
    server = await ctx.function("list_requests", instance="list_requests-bench").start()
    headers = auth(ctx.tokens["admin"])
    queries = _queries(rows, ctx.n(600, 120))
    latencies: list[float] = []
    matched: list[int] = []
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=10) as client:
        for q in queries[:30]:  # warm the connection pool, the plan cache and the buffer cache
            (await client.get("/api/admin/requests", params={"q": q})).raise_for_status()
        healthz: list[float] = []
        for q in queries:
            started = time.perf_counter()
            answer = await client.get("/api/admin/requests", params={"q": q, "limit": "50"})
            latencies.append((time.perf_counter() - started) * 1000)
            answer.raise_for_status()
            matched.append(len(answer.json()["items"]))
            started = time.perf_counter()
            (await client.get("/api/admin/requests", params={"limit": "1"})).raise_for_status()
            healthz.append((time.perf_counter() - started) * 1000)
    ctx.registry.stop(server)
    by_kind = {kind: fmt(sorted(latencies[i::6])[min(len(latencies[i::6]) - 1, int(len(latencies[i::6]) * 0.99))])
               for i, kind in enumerate(KINDS)}
    async with ctx.db() as conn:
        await conn.execute("TRUNCATE creation_requests RESTART IDENTITY CASCADE")
    latencies.sort()
    healthz.sort()
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    plain_p99 = healthz[min(len(healthz) - 1, int(len(healthz) * 0.99))]
    ctx.notes["search_1m"] = (f"p50 {fmt(p50)} ms over {rows:,} requests; {len(queries)} queries, "
                              f"{sum(1 for m in matched if m == 0)} with no match")
    return case_result(
        figure=p99, unit="ms", limit=plain_p99,
        limit_desc="p99 of the same route without a search (newest 1 request) on the same data",
        ratio=ratio(p99, plain_p99), goal="p99 <= 50 ms", goal_met=at_most(p99, 50.0),
        p50_ms=p50, max_ms=latencies[-1], rows=rows, queries=len(queries), fill_s=fill_s,
        answers_with_matches=sum(1 for m in matched if m), p99_ms_by_query_kind=by_kind,
        load_avg_1m=load_average()[0])
