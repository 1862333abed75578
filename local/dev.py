"""`invoke dev`: the whole system on this machine, behind one gateway on 127.0.0.1.

Starts (unless configured) real PostgreSQL and Redis with state kept in `.local/dev/`, a moto SES server,
applies the migrations, then runs every function of the manifest as its own functions-framework process,
the queue consumer, the gateway and a scheduler tick. Prints one table and a READY line only when every part
answered its health check. If any part fails to start or dies, it says which and why, and stops the rest.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.manifest import MIGRATIONS_DIR, REPO_ROOT, load_manifest
from local.postgres_server import PostgresServer
from local.processes import ServiceError, find_free_port
from local.redis_server import RedisServer
from local.scheduler import SchedulerTick
from local.ses_emulator import SesEmulator
from local.supervisor import Child, Supervisor
from shared.core.db import apply_migrations


def default_state_dir() -> Path:
    """Where `invoke dev` keeps PostgreSQL's and Redis' data and state.json: `PROVISIONER_STATE_DIR` when set
    (the e2e test points it at an empty temporary folder), else `.local/dev/` in the repository."""
    configured = os.environ.get("PROVISIONER_STATE_DIR")
    return Path(configured) if configured else REPO_ROOT / ".local" / "dev"


STATE_DIR = default_state_dir()
STATE_FILE = STATE_DIR / "state.json"
PREFERRED_PORTS = {"postgres": 55432, "redis": 56379, "ses": 55500}


@dataclass
class DevOptions:
    """What `invoke dev` was asked for."""

    port: int = 8080
    state_dir: Path = field(default_factory=default_state_dir)
    with_consumer: bool = True
    with_scheduler: bool = True


class Stop(Exception):
    """SIGTERM received."""


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _preferred(name: str) -> int:
    port = PREFERRED_PORTS[name]
    return port if _port_free(port) else find_free_port()


def read_state(state_dir: Path | None = None) -> dict[str, Any] | None:
    """What the running (or last) `invoke dev` wrote: URLs of the gateway and services."""
    path = (state_dir or default_state_dir()) / "state.json"
    return json.loads(path.read_text()) if path.exists() else None


def run_dev(opts: DevOptions) -> int:
    """Run until Ctrl-C/SIGTERM (exit 0) or until a part dies (exit 1)."""
    sup = Supervisor()
    if not _port_free(opts.port):
        sup.say(f"!! port {opts.port} is taken on 127.0.0.1: stop what uses it or pass --port N")
        return 1

    def on_sigterm(signum: int, frame: Any) -> None:
        raise Stop()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    services: list[tuple[str, Any]] = []
    tick: SchedulerTick | None = None
    ready_file = opts.state_dir / f"ready-{os.getpid()}"  # the gateway's /healthz is 503 until it exists
    ready_file.unlink(missing_ok=True)
    try:
        with contextlib.ExitStack() as stack:
            env = _environment(opts, stack, services, sup)
            sup.say("applying migrations ...")
            applied = apply_migrations(env["DATABASE_URL"], MIGRATIONS_DIR)
            sup.say(f"migrations applied: {', '.join(applied) or 'none (up to date)'}")
            _start_alert_receiver(sup, env, opts.state_dir)
            upstreams = _start_functions(sup, env)
            if opts.with_consumer and (REPO_ROOT / "functions" / "consumer.py").exists():
                _start_consumer(sup, env)
            gateway = sup.spawn(Child(
                "gateway", [sys.executable, "-m", "local.gateway", "--port", str(opts.port),
                            "--upstreams", json.dumps(upstreams), "--ready-file", str(ready_file),
                            "--max-body-bytes", env.get("MAX_BODY_BYTES", str(16 * 1024)),
                            "--body-limits", json.dumps(_body_limits())],
                env, url=f"http://127.0.0.1:{opts.port}", health_path="/healthz"))
            for child in sup.children.values():
                sup.wait_healthy(child, timeout=60)
            state = {"gateway": gateway.url, "database_url": env["DATABASE_URL"], "redis_url": env["REDIS_URL"],
                     "ses_url": env.get("AWS_ENDPOINT_URL_SES"), "pid": os.getpid(),
                     "functions": upstreams, "alert_webhook_url": env.get("ALERT_WEBHOOK_URL"),
                     "alerts_file": env.get("DEV_ALERTS_FILE"), "trace_file": env.get("TRACE_FILE")}
            opts.state_dir.mkdir(parents=True, exist_ok=True)
            (opts.state_dir / "state.json").write_text(json.dumps(state, indent=2))
            if opts.with_scheduler:
                tick = _start_scheduler(sup, gateway.url, env)
            _print_table(sup, services, tick)
            _print_sign_in(sup, env, gateway.url, own_database=any(name == "postgres" for name, _ in services))
            ready_file.touch()  # every part answered its health check: from now on /healthz says 200
            sup.say(f"READY provisioner on {gateway.url} (Ctrl-C stops everything)")
            return _watch(sup, services, ready_file)
    except (KeyboardInterrupt, Stop):
        sup.say("stopping ...")
        return 0
    except (RuntimeError, ServiceError) as exc:
        sup.say(f"!! FAILED: {exc}")
        return 1
    finally:
        if tick is not None:
            tick.stopped.set()
        ready_file.unlink(missing_ok=True)
        sup.stop_all()
        signal.signal(signal.SIGTERM, previous)
        sup.say("all processes stopped")


def _environment(opts: DevOptions, stack: contextlib.ExitStack, services: list[tuple[str, Any]],
                 sup: Supervisor) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("APP_ENV", "development")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("SET_PASSWORD_URL", f"http://127.0.0.1:{opts.port}/set-password")
    data = opts.state_dir
    data.mkdir(parents=True, exist_ok=True)
    if not env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        env.setdefault("TRACE_FILE", str(data / "spans.jsonl"))  # the local trace sink: `invoke traces REQUEST_ID`
    if not env.get("DATABASE_URL"):
        sup.say(f"starting PostgreSQL (embedded, state in {data / 'pg'}) ...")
        pg = stack.enter_context(PostgresServer(data / "pg", _preferred("postgres")))
        env["DATABASE_URL"] = pg.create_database("provisioner")
        services.append(("postgres", pg))
    if not env.get("REDIS_URL"):
        sup.say(f"starting Redis (noeviction, append-only file in {data / 'redis'}) ...")
        redis_server = stack.enter_context(RedisServer(data / "redis", _preferred("redis"), persistent=True))
        env["REDIS_URL"] = redis_server.url
        services.append(("redis", redis_server))
    if not env.get("AWS_ENDPOINT_URL_SES"):
        sup.say("starting the SES emulator (moto) ...")
        ses = stack.enter_context(SesEmulator(_preferred("ses"), log_path=data / "moto.log"))
        env["AWS_ENDPOINT_URL_SES"] = ses.url
        env.setdefault("AWS_ACCESS_KEY_ID", "testing")
        env.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        env.setdefault("AWS_REGION", ses.region)
        services.append(("ses", ses))
    return env


def _start_functions(sup: Supervisor, env: dict[str, str]) -> dict[str, str]:
    upstreams: dict[str, str] = {}
    for spec in load_manifest().values():
        if spec.kind not in ("http", "scheduled"):
            continue
        port = find_free_port()
        url = f"http://127.0.0.1:{port}"
        child_env = {**env, "INSTANCE_NAME": f"{spec.name}/dev"}
        sup.spawn(Child(spec.name, [sys.executable, "-m", "functions_framework", "--target", spec.target,
                                    "--source", str(spec.source_path), "--host", "127.0.0.1", "--port", str(port),
                                    "--asgi"], child_env, url=url, health_path="/"))
        upstreams[spec.name] = url
    return upstreams


def _start_alert_receiver(sup: Supervisor, env: dict[str, str], state_dir: Path) -> None:
    """Without ALERT_WEBHOOK_URL, alerts go to a local receiver; `invoke alerts` prints what it got. A bad one is
    refused here, before anything starts on it."""
    if env.get("ALERT_WEBHOOK_URL"):
        from pydantic import HttpUrl, TypeAdapter, ValidationError

        try:
            TypeAdapter(HttpUrl).validate_python(env["ALERT_WEBHOOK_URL"])
        except ValidationError:
            raise RuntimeError("ALERT_WEBHOOK_URL is not an http(s) URL: fix it or unset it (then a local"
                               " receiver takes the alerts)") from None
        sup.say(f"alerts go to ALERT_WEBHOOK_URL ({env['ALERT_WEBHOOK_URL'].split('//')[-1].split('/')[0]})")
        return
    port = find_free_port()
    env["DEV_ALERTS_FILE"] = str(state_dir / "alerts.jsonl")
    env["ALERT_WEBHOOK_URL"] = f"http://127.0.0.1:{port}/alerts"
    sup.spawn(Child("alerts", [sys.executable, "-m", "local.alert_receiver", "--port", str(port), "--file",
                               env["DEV_ALERTS_FILE"]], env, url=f"http://127.0.0.1:{port}", health_path="/healthz"))


def _body_limits() -> dict[str, int]:
    """Functions whose manifest entry sets a body cap of its own (e.g. a bulk upload)."""
    limits = {spec.name: getattr(spec, "max_body_bytes", None) for spec in load_manifest().values()}
    return {name: int(limit) for name, limit in limits.items() if limit}


def _start_consumer(sup: Supervisor, env: dict[str, str]) -> None:
    sup.spawn(Child("consumer", [sys.executable, "-m", "functions.consumer"],
                    {**env, "INSTANCE_NAME": "consumer/dev"}, ready_text="consumer consumer/dev started"))


def _admin_token(env: dict[str, str], *, ttl_s: int, subject: str = "dev-admin") -> str:
    """An admin token signed with the system's secret (the dev placeholder unless AUTH_JWT_SECRET is set)."""
    from shared.core.auth import Role, issue_token
    from shared.core.settings import Settings

    settings = Settings(**{k: v for k, v in env.items() if k in ("APP_ENV", "DATABASE_URL", "REDIS_URL",
                                                                 "AUTH_JWT_SECRET")})
    return issue_token(settings, role=Role.ADMIN, subject=subject, ttl_s=ttl_s)


def _print_sign_in(sup: Supervisor, env: dict[str, str], gateway: str, *, own_database: bool) -> None:
    """How to sign in to the panel, in development only (never a token signed with a production secret)."""
    if env.get("APP_ENV") != "development":
        sup.say(f"System Health panel: {gateway}/admin/system-health (APP_ENV is not development: no dev sign-in)")
        return
    if own_database:
        from local.dev_admin import DEV_ADMIN_EMAIL, ensure_dev_admin

        sup.say(f"System Health panel: {gateway}/admin/system-health  sign in as {DEV_ADMIN_EMAIL} with the "
                f"password {ensure_dev_admin(env)} (new at every start, development only)")
    sup.say(f"System Health panel (signed in for 8 h): {gateway}/admin/system-health#token="
            f"{_admin_token(env, ttl_s=8 * 3600)}")


def _start_scheduler(sup: Supervisor, gateway: str, env: dict[str, str]) -> SchedulerTick:
    specs = [s for s in load_manifest().values() if s.schedule]
    tick = SchedulerTick(gateway, specs, lambda: _admin_token(env, ttl_s=300, subject="scheduler"), sup.say)
    tick.start()
    return tick


def _print_table(sup: Supervisor, services: list[tuple[str, Any]], tick: SchedulerTick | None) -> None:
    rows = [(name, getattr(svc, "url", "").split("@")[-1], "running", str(getattr(svc, "pid", ""))) for name, svc in
            services]
    for child in sup.children.values():
        rows.append((child.name, child.url or "-", child.state, str(child.proc.pid if child.proc else "")))
    if tick is not None:
        rows.append(("scheduler", ", ".join(f"{s.name} '{s.schedule}'" for s in tick.specs), "running", "-"))
    widths = [max(len(r[i]) for r in [*rows, ("part", "url", "state", "pid")]) for i in range(4)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    sup.say(line.format("part", "url", "state", "pid"))
    for row in rows:
        sup.say(line.format(*row))


WATCHED = ("shared", "functions", "infra")


def _code_stamp() -> dict[Path, float]:
    return {p: p.stat().st_mtime for d in WATCHED for p in (REPO_ROOT / d).rglob("*.py")}


def _watch(sup: Supervisor, services: list[tuple[str, Any]], ready_file: Path) -> int:
    stamp = _code_stamp()
    down: set[str] = set()
    while True:
        current = _code_stamp()
        if current != stamp:
            changed = sorted({str(p.relative_to(REPO_ROOT)) for p in current.keys() ^ stamp.keys()}
                             | {str(p.relative_to(REPO_ROOT)) for p in current if stamp.get(p) != current[p]})
            stamp = current
            sup.say(f"code changed ({', '.join(changed[:5])}): reloading the functions and the consumer ...")
            ready_file.unlink(missing_ok=True)  # /healthz says 503 while parts restart
            sup.restart([n for n in sup.children if n != "gateway"])
            ready_file.touch()
            sup.say("reloaded")
        dead = sup.first_dead()
        if dead is not None:
            sup.say(f"!! {dead.name} DIED ({dead.state}); stopping everything" + sup._tail_text(dead))
            return 1
        for name, svc in services:
            running = svc.is_running()
            if not running and name == "redis":
                # The system is built to live through a Redis outage (fallback, alerts): keep it up, say so.
                if name not in down:
                    sup.say("!! redis stopped: requests fall back to synchronous creation; the watchdog alerts."
                            " Start it again on the same port to resume queueing.")
                    down.add(name)
                continue
            if not running:
                sup.say(f"!! {name} DIED; stopping everything")
                return 1
            if name in down:
                sup.say(f"{name} is back")
                down.discard(name)
        time.sleep(0.5)
