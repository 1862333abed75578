"""`invoke account create` as an operator runs it: a real process against this run's servers."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.conftest import auth
from tests.functions.test_accounts import claims, set_password, sign_in

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def account_create(stack, *args: str, app_env: str = "development") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **stack.env(), "APP_ENV": app_env, "SET_PASSWORD_URL": "http://127.0.0.1:18120/set-password"}
    if app_env == "production":  # production refuses a test secret and a non-https link
        env |= {"AUTH_JWT_SECRET": secrets.token_urlsafe(48), "SET_PASSWORD_URL": "https://app.example.com/set-password"}
    return subprocess.run([sys.executable, "-m", "invoke", "account", "create", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


async def test_a_viewer_made_on_the_command_line_signs_in_and_may_not_change_anything(call, stack, db):
    done = account_create(stack, "--email", "Cli.Viewer@example.com", "--full-name", "Cli Viewer", "--role", "viewer")
    assert done.returncode == 0, done.stdout + done.stderr
    link = re.search(r"set-password link \(development only\): (http://127\.0\.0\.1:18120/set-password#token=\S+)",
                     done.stdout)
    assert link, done.stdout
    token = unquote(link.group(1).split("token=", 1)[1])
    row = db.execute("SELECT id, role FROM users WHERE email_normalized = 'cli.viewer@example.com'").fetchone()
    assert row["role"] == "viewer"
    audit = db.execute("SELECT actor FROM audit_log WHERE action = 'account_created' AND target = %s",
                       (str(row["id"]),)).fetchone()
    assert audit["actor"].startswith("cli:")
    # The same link went out by email.
    assert any(token in unquote(m["body"]) for m in stack.ses.sent_messages())

    assert (await set_password(call, token)).status_code == 204
    r = await sign_in(call, "cli.viewer@example.com")
    assert r.status_code == 200
    viewer = r.json()["access_token"]
    assert claims(viewer)["app_metadata"] == {"role": "viewer"}
    denied = await call("set_mode", "POST", "/api/admin/system/mode", headers=auth(viewer),
                        json={"mode": "sync_direct", "reason": "a viewer tries"})
    assert denied.status_code == 403


async def test_the_link_is_printed_only_in_development(deps, stack, db):
    done = account_create(stack, "--email", "prod@example.com", "--full-name", "Prod", "--role", "admin",
                          app_env="production")
    assert done.returncode == 0, done.stderr
    assert "token=" not in done.stdout + done.stderr
    row = db.execute("SELECT role FROM users WHERE email_normalized = 'prod@example.com'").fetchone()
    assert row["role"] == "admin"


@pytest.mark.parametrize(("args", "code", "says"), [
    (("--email", "a@example.com", "--full-name", "A"), 2, "--role"),
    (("--email", "a@example.com", "--full-name", "A", "--role", "member"), 2, "invalid: role"),
    (("--email", "not-an-address", "--full-name", "A", "--role", "admin"), 2, "invalid: email"),
])
async def test_bad_arguments_say_why_and_write_nothing(deps, stack, db, args, code, says):
    done = account_create(stack, *args)
    assert done.returncode == code and says in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
    assert db.execute("SELECT count(*) AS n FROM users").fetchone()["n"] == 0


async def test_an_address_in_use_is_refused(deps, stack):
    first = account_create(stack, "--email", "twice@example.com", "--full-name", "Twice", "--role", "admin")
    assert first.returncode == 0, first.stderr
    again = account_create(stack, "--email", "TWICE@example.com", "--full-name", "Twice", "--role", "viewer")
    assert again.returncode == 1 and "user_exists" in again.stderr + again.stdout
