"""Side by side with the Node/BullMQ peer (bench/peer.py): the 202 path at 1 and 50 connections and the consumer,
each side started by this run on the same stack, measured in alternating rounds with the same load generator,
CPU read from /proc (psutil) for each side's server or worker process tree.

Each round starts from empty tables and an empty queue (`ctx.wipe()`), so neither side works against the
other's rows. Which side goes first alternates from round to round.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bench.cases.consumer import DRAIN_WARM_UP, NO_LIMIT, drain
from bench.cases.http import _answers, _expect
from bench.context import Ctx, load_average
from bench.loadgen import Load, run_load
from bench.peer import PeerServer, PeerWorker, prepare_peer
from bench.procs import FunctionServer, tree_cpu_s
from bench.report import all_met, at_least, at_most, case_result, fmt, hist_percentile, ratio

SIDES = ("ours", "peer")

# What the two sides do differently per request / per user (the peer's README, "Differences"), for the notes.
WORK_202 = ("equal work per request (same SQL statement, quota Lua, BullMQ addStandardJob, token cache of 4096"
            " on both); ours also holds a LISTEN connection for the kill switch (idle, not per request);"
            " body checks: pydantic + email_validator (ours) vs hand-written checks (peer)")
WORK_CONSUMER = ("equal work per user (attempt row, provision_request(), email-rate Lua, one SES call to the same"
                 " emulator, the sent record; rate limiter off on both); ours also runs its reconciler (30 s),"
                 " runtime-limits poll (0.5 s) and bulk-drain loop in the same process, the peer does not;"
                 " SES: our SigV4 client vs the AWS SDK v3")


async def _peer_dir(ctx: Ctx) -> Any:
    if "peer_dir" not in ctx.shared:
        ctx.shared["peer_dir"] = await asyncio.to_thread(prepare_peer, ctx.log_dir)
    return ctx.shared["peer_dir"]


async def peer_server(ctx: Ctx) -> PeerServer:
    """The peer's server process shared by the 202 cases (started once, on the run's stack and environment)."""
    if "peer_server" not in ctx.shared:
        server = ctx.registry.add(PeerServer(await _peer_dir(ctx), ctx.env, ctx.log_dir))
        ctx.shared["peer_server"] = await server.start()
    server: PeerServer = ctx.shared["peer_server"]
    return server


async def _servers(ctx: Ctx) -> dict[str, FunctionServer]:
    return {"ours": await ctx.create_user_server(), "peer": await peer_server(ctx)}


def _load(ctx: Ctx, server: FunctionServer, connections: int, requests: int, duration_s: float,
          histogram: bool = False) -> Load:
    return Load(url=server.url + "/api/users", token=ctx.tokens["sales"], connections=connections,
                max_requests=requests, duration_s=duration_s, histogram=histogram)


async def warm_up(ctx: Ctx, servers: dict[str, FunctionServer]) -> None:
    """Both sides to their steady state before any measured round: V8's optimising compiler and our caches,
    pools and first garbage collections (bench/README.md, "Warm-up")."""
    for name in SIDES:
        ctx.wipe()
        result = await run_load(_load(ctx, servers[name], 10, 2000, 60))
        _expect(result, 202, f"warm-up of {name}")


async def _rounds(ctx: Ctx, *, connections: int, rounds: int, requests: int = 0, duration_s: float = 60.0
                  ) -> dict[str, dict[str, Any]]:
    """`rounds` alternating measured runs per side: pooled requests, CPU, time and latency histogram."""
    servers = await _servers(ctx)
    await warm_up(ctx, servers)
    pooled: dict[str, dict[str, Any]] = {name: {"requests": 0, "cpu_s": 0.0, "seconds": 0.0, "hist": [],
                                                "codes": {}, "rounds": []} for name in SIDES}
    for r in range(rounds):
        for name in SIDES if r % 2 == 0 else tuple(reversed(SIDES)):
            server = servers[name]
            ctx.wipe()
            cpu0 = tree_cpu_s(server.pid)
            result = await run_load(_load(ctx, server, connections, requests, duration_s, histogram=True))
            cpu_s = tree_cpu_s(server.pid) - cpu0
            _expect(result, 202, f"{name}, {connections} connection(s)")
            side = pooled[name]
            side["requests"] += result["requests"]
            side["cpu_s"] += cpu_s
            side["seconds"] += result["duration_s"]
            side["hist"] += result["hist"]
            for code, count in result["codes"].items():
                side["codes"][code] = side["codes"].get(code, 0) + count
            side["rounds"].append({"requests": result["requests"], "rps": result["rps"], "p99_ms": result["p99_ms"],
                                   "cpu_s_per_1000": 1000 * cpu_s / result["requests"]})
            side["tool"] = result["tool"]
    for side in pooled.values():
        side["cpu_s_per_1000"] = 1000 * side["cpu_s"] / side["requests"]
        side["req_per_cpu_s"] = side["requests"] / side["cpu_s"] if side["cpu_s"] else None
        side["rps"] = side["requests"] / side["seconds"]
        side["p50_ms"] = hist_percentile(side["hist"], 50)
        side["p99_ms"] = hist_percentile(side["hist"], 99)
    return pooled


def _sides(pooled: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The per-side extra fields every 202 case reports."""
    out: dict[str, Any] = {}
    for name in SIDES:
        side = pooled[name]
        out[f"{name}_cpu_s_per_1000"] = side["cpu_s_per_1000"]
        out[f"{name}_req_per_cpu_s"] = side["req_per_cpu_s"]
        out[f"{name}_rps"] = side["rps"]
        out[f"{name}_p50_ms"] = side["p50_ms"]
        out[f"{name}_p99_ms"] = side["p99_ms"]
        out[f"{name}_requests"] = side["requests"]
        out[f"{name}_answers"] = _answers(side)
        out[f"{name}_rounds"] = side["rounds"]
    out["ratio_req_per_cpu_s"] = ratio(pooled["ours"]["req_per_cpu_s"], pooled["peer"]["req_per_cpu_s"])
    out["ratio_rps"] = ratio(pooled["ours"]["rps"], pooled["peer"]["rps"])
    out["ratio_p99"] = ratio(pooled["ours"]["p99_ms"], pooled["peer"]["p99_ms"])
    return out


def _note(pooled: dict[str, dict[str, Any]]) -> str:
    o, p = pooled["ours"], pooled["peer"]
    return (f"CPU/1k ours {fmt(o['cpu_s_per_1000'])} s vs peer {fmt(p['cpu_s_per_1000'])} s; req/CPU-s "
            f"{fmt(o['req_per_cpu_s'])} vs {fmt(p['req_per_cpu_s'])}; req/s {fmt(o['rps'])} vs {fmt(p['rps'])};"
            f" p99 {fmt(o['p99_ms'])} vs {fmt(p['p99_ms'])} ms; {WORK_202}")


def _case_202(ctx: Ctx, name: str, pooled: dict[str, dict[str, Any]], *, connections: int, load: str, goal: str,
              also_met: bool | None) -> dict[str, Any]:
    """A 202-path case: our server CPU per 1,000 answers against the peer's, and one more condition."""
    share = ratio(pooled["ours"]["cpu_s_per_1000"], pooled["peer"]["cpu_s_per_1000"])
    ctx.notes[name] = _note(pooled)
    return case_result(
        figure=pooled["ours"]["cpu_s_per_1000"], unit="CPU s/1k", limit=pooled["peer"]["cpu_s_per_1000"],
        limit_desc=f"the Node peer's server CPU per 1,000 202s, {load} alternating with ours, same stack and load"
                   " generator",
        ratio=share, goal=goal, goal_met=all_met(at_most(share, 1.0), also_met),
        **_sides(pooled), connections=connections, work_difference=WORK_202, load_generator=pooled["ours"]["tool"],
        load_avg_1m=load_average()[0])


async def peer_202_1_conn(ctx: Ctx) -> dict[str, Any]:
    """POST /api/users -> 202, one connection: CPU per 1,000 answers and p99, ours against the peer's."""
    rounds, requests = ctx.n(4, 2), ctx.n(1000, 400)
    pooled = await _rounds(ctx, connections=1, rounds=rounds, requests=requests)
    return _case_202(ctx, "peer_202_1_conn", pooled, connections=1, load=f"{rounds} x {requests} requests",
                     goal="ratio (ours / peer CPU per 1,000 202s) <= 1 (so req per CPU second >= the peer's) and"
                          " p99 <= the peer's p99",
                     also_met=at_most(pooled["ours"]["p99_ms"], pooled["peer"]["p99_ms"]))


async def peer_202_50_conns(ctx: Ctx) -> dict[str, Any]:
    """POST /api/users -> 202, 50 connections: CPU per 1,000 answers and req/s per CPU second vs the peer's."""
    rounds, duration = ctx.n(4, 2), ctx.n(5, 3)
    pooled = await _rounds(ctx, connections=50, rounds=rounds, duration_s=duration)
    return _case_202(ctx, "peer_202_50_conns", pooled, connections=50,
                     load=f"{rounds} x {duration} s at 50 connections",
                     goal="ratio (ours / peer CPU per 1,000 202s) <= 1 and req per CPU second >= the peer's",
                     also_met=at_least(pooled["ours"]["req_per_cpu_s"], pooled["peer"]["req_per_cpu_s"]))


async def peer_consumer(ctx: Ctx) -> dict[str, Any]:
    """CPU per created user: our consumer against the peer's BullMQ worker draining as many pre-queued requests,
    alternating, same SES emulator, rate limiter off, concurrency 5."""
    rounds, requests = ctx.n(2, 1), ctx.n(1000, 300)
    peer_dir = await _peer_dir(ctx)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in SIDES}
    for r in range(rounds):
        for name in SIDES if r % 2 == 0 else tuple(reversed(SIDES)):
            make = (lambda: PeerWorker(peer_dir, ctx.env, ctx.log_dir, **NO_LIMIT)) if name == "peer" else None
            runs[name].append(await drain(ctx, consumers=1, requests=requests, timeout_s=180, make=make,
                                          warm_up=DRAIN_WARM_UP, **NO_LIMIT))
    cpu_ms = {name: sum(run["cpu_s_per_1000_users"] * run["requests"] for run in runs[name])
              / sum(run["requests"] for run in runs[name]) for name in SIDES}
    rate = {name: sum(run["requests"] for run in runs[name]) / sum(run["elapsed_s"] for run in runs[name])
            for name in SIDES}
    share = ratio(cpu_ms["ours"], cpu_ms["peer"])
    ctx.notes["peer_consumer"] = (f"CPU/user ours {fmt(cpu_ms['ours'])} ms vs peer {fmt(cpu_ms['peer'])} ms;"
                                  f" users/s {fmt(rate['ours'])} vs {fmt(rate['peer'])}; {WORK_CONSUMER}")
    return case_result(
        figure=cpu_ms["ours"], unit="CPU ms/user", limit=cpu_ms["peer"],
        limit_desc=f"the Node peer's BullMQ worker (node worker.js), CPU per created user, {rounds} x {requests}"
                   " pre-queued requests alternating with our consumer",
        ratio=share, goal="ratio (ours / peer CPU per user) <= 1 and ours <= 1.5 ms per user",
        goal_met=all_met(at_most(share, 1.0), at_most(cpu_ms["ours"], 1.5)),
        ours_cpu_ms_per_user=cpu_ms["ours"], peer_cpu_ms_per_user=cpu_ms["peer"],
        ours_users_per_s=rate["ours"], peer_users_per_s=rate["peer"], ratio_users_per_s=ratio(rate["ours"],
                                                                                              rate["peer"]),
        ours_runs=runs["ours"], peer_runs=runs["peer"], work_difference=WORK_CONSUMER,
        load_avg_1m=load_average()[0])
