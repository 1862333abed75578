"""`python -m bench [--quick] [--case NAME ...]`: run the cases, print one table, write bench/results/latest.json.

Starts its own PostgreSQL, Redis and SES emulator (or, with DATABASE_URL / REDIS_URL set, a throwaway database
and a unique queue prefix on those servers), runs every case bounded in count and time against 127.0.0.1, and
stops every process it started by PID, also when a case fails or the run is interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

import psutil
import psycopg
import redis

from bench.cases import CASES
from bench.context import Ctx, forget_keys
from bench.loadgen import wrk_available
from bench.report import failed_case, fmt, format_table, met_mark, validate
from tests.support.stack import Stack, running_stack

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(stack: Stack, load_start: tuple[float, float, float]) -> dict[str, Any]:
    """The machine block of the results: what the figures were measured on, and how busy it was."""
    with psycopg.connect(stack.database_url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        postgres = str(row[0]) if row else "?"
    client = redis.Redis.from_url(stack.redis_url)
    try:
        redis_version = str(client.info("server").get("redis_version", "?"))
    finally:
        client.close()
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "postgres": postgres,
        "redis": redis_version,
        "load_average_start": [round(x, 2) for x in load_start],
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _forget_keys(stack: Stack) -> None:
    """On a Redis we did not start, delete the keys of this run's prefix (and nothing else)."""
    forget_keys(stack.redis_url, stack.queue_prefix)


async def run_cases(args: argparse.Namespace, stack: Stack, log_dir: Path) -> dict[str, dict[str, Any]]:
    ctx = Ctx(quick=args.quick, stack=stack, log_dir=log_dir)
    names = args.case or list(CASES)
    case_timeout = 150 if args.quick else 420
    try:
        for i, name in enumerate(names, 1):
            ctx.progress(f"{i}/{len(names)} {name}: running (load avg {os.getloadavg()[0]:.2f})")
            started = time.perf_counter()
            try:
                result = await asyncio.wait_for(CASES[name](ctx), case_timeout)
            except Exception as exc:
                (log_dir / f"error-{name}.txt").write_text(traceback.format_exc())
                result = failed_case(f"{type(exc).__name__}: {str(exc)[:500]}")
                ctx.progress(f"{i}/{len(names)} {name}: FAILED {type(exc).__name__}: {str(exc)[:300]}"
                             f" (traceback in {log_dir}/error-{name}.txt)")
            else:
                ctx.progress(f"{i}/{len(names)} {name}: {fmt(result['figure'])} {result['unit']}"
                             f" (ratio {fmt(result['ratio'])}, goal met: {met_mark(result['goal_met'])})"
                             f" in {time.perf_counter() - started:.1f} s")
            ctx.results[name] = result
    finally:
        await ctx.aclose()
        ctx.registry.stop_all()
    for name, note in ctx.notes.items():
        if name in ctx.results:
            ctx.results[name].setdefault("notes", note)
    return ctx.results


async def amain(args: argparse.Namespace) -> int:
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    load_start = os.getloadavg()
    log_dir = RESULTS / "logs"
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir(parents=True)
    began = time.perf_counter()
    print(f"[bench] {'quick' if args.quick else 'full'} run; load generator: "
          f"{'wrk' if wrk_available() else 'python (wrk not installed)'}; logs in {log_dir}", flush=True)
    with tempfile.TemporaryDirectory(prefix="provisioner-bench-") as tmp, running_stack(Path(tmp)) as stack:
        if os.environ.get("REDIS_URL"):
            stack = dataclasses.replace(stack, queue_prefix=f"bench-{uuid.uuid4().hex[:8]}")
        machine = {**machine_info(stack, load_start), "run": "quick" if args.quick else "full"}
        print(f"[bench] stack up in {time.perf_counter() - began:.1f} s: PostgreSQL {machine['postgres']}, "
              f"Redis {machine['redis']}", flush=True)
        try:
            cases = await run_cases(args, stack, log_dir)
        finally:
            if not stack.redis_is_ours:
                _forget_keys(stack)
    machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    doc = {"machine": machine, "cases": cases}
    problems = validate(doc)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    print()
    print(format_table(cases, {name: str(case.get("notes", "")) for name, case in cases.items()}))
    print(f"\n[bench] load average at start {machine['load_average_start']}, at end "
          f"{[round(x, 2) for x in os.getloadavg()]}; {time.perf_counter() - began:.0f} s; wrote {args.output}")
    for problem in problems:
        print(f"[bench] results document: {problem}", file=sys.stderr)
    failed = [name for name, case in cases.items() if "error" in case]
    return 1 if failed or problems else 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller counts and shorter runs (< 2 minutes)")
    parser.add_argument("--case", action="append", choices=list(CASES), metavar="NAME",
                        help="run only this case (repeatable); cases that need another's figure measure it")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json", help="where the JSON goes")
    args = parser.parse_args(argv)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    try:
        code = asyncio.run(amain(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("[bench] interrupted; every process started was stopped", file=sys.stderr)
        code = 130
    sys.exit(code)
