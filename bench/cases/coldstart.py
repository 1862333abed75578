"""Cold start: process start to first answer of every HTTP function of the manifest, against a hello world."""

from __future__ import annotations

import re
import statistics
from typing import Any

from bench.context import Ctx, auth, load_average
from bench.report import at_most, case_result, fmt, ratio
from infra.manifest import load_manifest

QUICK_FUNCTIONS = ("create_user", "get_mode", "healthz")


async def _cold(ctx: Ctx, server: Any, path: str, headers: dict[str, str] | None = None,
                want: int | None = None) -> tuple[float, int]:
    server.launch()
    try:
        answer: tuple[float, int] = await server.wait_answer(path, headers=headers, want=want, interval=0.01)
        return answer
    finally:
        ctx.registry.stop(server)


async def cold_start(ctx: Ctx) -> dict[str, Any]:
    """Start each function alone (nothing else starting), poll GET on its first route with an admin token.

    Any HTTP answer counts (a POST-only route answers 405); get_mode must answer 200, which needs the
    database, so the lazy start-up (settings, pool, Redis client) is inside its time.
    """
    ctx.wipe()
    manifest = load_manifest()
    names = [n for n, spec in manifest.items() if spec.kind in ("http", "scheduled")]
    if ctx.quick:
        names = [n for n in names if n in QUICK_FUNCTIONS]
    hello: list[float] = []
    per_function: dict[str, dict[str, Any]] = {}
    rounds = ctx.n(3, 2)
    hello_slots = {0, len(names) // 2, len(names)} if rounds == 3 else {0, len(names)}
    for index in range(len(names) + 1):
        if index in hello_slots:  # interleaved, so a machine getting busier shows in both
            seconds, _ = await _cold(ctx, ctx.bench_function("hello"), "/", want=200)
            hello.append(seconds)
        if index == len(names):
            break
        name = names[index]
        route = manifest[name].routes[0]
        path = re.sub(r"\{[a-z_]+\}", "bench", route.path)
        want = 200 if name == "get_mode" else None
        seconds, status = await _cold(ctx, ctx.function(name, instance=f"{name}-cold"), path,
                                      headers=auth(ctx.tokens["admin"]), want=want)
        per_function[name] = {"seconds": seconds, "status": status, "path": path}
        ctx.progress(f"  {name}: {fmt(seconds * 1000)} ms ({status})")
    limit = statistics.median(hello)
    slowest = max(per_function, key=lambda n: per_function[n]["seconds"])
    figure = per_function[slowest]["seconds"]
    share = ratio(figure, limit)
    median = statistics.median(v["seconds"] for v in per_function.values())
    db_answer = per_function.get("get_mode", {}).get("seconds")
    ctx.notes["cold_start"] = f"slowest {slowest}; get_mode (200, DB) {fmt(db_answer)} s; median {fmt(median)} s"
    return case_result(
        figure=figure, unit="s", limit=limit,
        limit_desc=f"median of {len(hello)} cold starts of bench/hello.py (same server and flags)",
        ratio=share, goal="slowest function start -> first answer <= 1.5x the hello world (ratio = slowest / hello)",
        goal_met=at_most(share, 1.5), slowest=slowest, per_function=per_function, hello_samples_s=hello,
        median_function_s=median,
        load_avg_1m=load_average()[0])
