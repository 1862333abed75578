"""What a function imports before its first request is paid by every new instance (bench case `cold_start`).

Each library below cost a measured share of a cold start on a 2-core machine when a function imported it at
import time without needing it there: the OpenTelemetry metrics SDK that redis-py pulls in (about 40 ms),
pydantic-settings (about 20 ms, plus its slower first build), bullmq (15-30 ms, only for an instance that queues),
email_validator (20 ms, only for an instance that reads an address), the mailer's boto3 (over 100 ms), Argon2 and
zxcvbn (sign-in and passwords only), prometheus_client (the metrics route only). A fresh interpreter imports each
function as functions-framework does and lists what it loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NEVER_AT_IMPORT = ("opentelemetry.sdk.metrics", "pydantic_settings", "bullmq", "email_validator", "boto3",
                   "botocore", "argon2", "zxcvbn", "prometheus_client")


def _loaded_after_import(module: str) -> list[str]:
    code = (f"import json, sys; import {module}; "
            f"print(json.dumps([m for m in {list(NEVER_AT_IMPORT)!r} if m in sys.modules]))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60, check=True)
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


@pytest.mark.parametrize("function", ["create_user", "get_mode", "set_mode", "system_metrics", "request_status"])
def test_a_function_imports_no_library_it_does_not_use_at_import(function):
    assert _loaded_after_import(f"functions.{function}") == []
