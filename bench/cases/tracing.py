"""The cost of tracing on the 202 path: the create function with spans recorded and exported (the JSONL sink of
`invoke dev`, a real exporter behind the SDK's batch processor) against the same function with tracing off."""

from __future__ import annotations

from typing import Any

from bench.cases.http import _answers, _expect, _post_load, _warm
from bench.context import Ctx, load_average
from bench.procs import tree_cpu_s
from bench.report import all_met, at_most, case_result, fmt, ratio


async def tracing_cost_202(ctx: Ctx) -> dict[str, Any]:
    """p50 of POST /api/users -> 202 (one connection) with tracing on / off, measured in alternating rounds."""
    ctx.wipe()
    rounds, per_round = ctx.n(4, 2), ctx.n(500, 150)
    sink = ctx.log_dir / "bench-spans.jsonl"
    off = await ctx.function("create_user", env={"TRACING_ENABLED": "false"}, instance="create_user-trace-off").start()
    on = await ctx.function("create_user", env={"TRACE_FILE": str(sink)}, instance="create_user-trace-on").start()
    figures: dict[str, dict[str, Any]] = {"off": {"p50": [], "p99": [], "cpu": 0.0, "n": 0},
                                          "on": {"p50": [], "p99": [], "cpu": 0.0, "n": 0}}
    for server in (off, on):
        await _warm(ctx, server)
    for _ in range(rounds):
        for name, server in (("off", off), ("on", on)):
            cpu0 = tree_cpu_s(server.pid)
            result = await _post_load(ctx, server, requests=per_round)
            _expect(result, 202, f"create with tracing {name}")
            figures[name]["p50"].append(result["p50_ms"])
            figures[name]["p99"].append(result["p99_ms"])
            figures[name]["cpu"] += tree_cpu_s(server.pid) - cpu0
            figures[name]["n"] += result["requests"]
            figures[name]["answers"] = _answers(result)
    ctx.registry.stop(off)
    ctx.registry.stop(on)
    spans = sum(1 for _ in sink.open()) if sink.exists() else 0
    if spans == 0:
        raise RuntimeError("tracing on exported no span: the case would compare off with off")
    p50 = {name: sorted(f["p50"])[len(f["p50"]) // 2] for name, f in figures.items()}
    share = ratio(p50["on"], p50["off"])
    cpu_per_1k = {name: 1000 * f["cpu"] / f["n"] for name, f in figures.items()}
    ctx.notes["tracing_cost_202"] = (f"p99 on {fmt(max(figures['on']['p99']))} / off {fmt(max(figures['off']['p99']))}"
                                     f" ms; CPU/1k on {fmt(cpu_per_1k['on'])} s, off {fmt(cpu_per_1k['off'])} s;"
                                     f" {spans} spans exported")
    return case_result(
        figure=p50["on"], unit="ms", limit=p50["off"], limit_desc="the same create function with TRACING_ENABLED=false",
        ratio=share, goal="ratio (p50 tracing on / off, median of alternating rounds) <= 1.15",
        goal_met=all_met(at_most(share, 1.15)), rounds=rounds, requests_per_round=per_round,
        p50_rounds_on=figures["on"]["p50"], p50_rounds_off=figures["off"]["p50"],
        cpu_s_per_1000_requests=cpu_per_1k, spans_exported=spans, load_avg_1m=load_average()[0])
