"""`invoke rehearse` under the suite (so under CI): the rendered deployment runs on this machine and every case of
the rehearsal passes (local/rehearsal/suite.py, docs/rehearsal.md). One process, bounded in time."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from infra.manifest import REPO_ROOT

pytestmark = pytest.mark.slow

BUDGET_S = 290  # the bound for CI: well under 5 minutes on 2 cores


@pytest.mark.timeout(BUDGET_S + 30)
def test_the_rendered_deployment_runs_and_every_rehearsal_case_passes(tmp_path) -> None:
    ran = subprocess.run([sys.executable, "-m", "local.rehearsal.cli", "--dir", str(tmp_path / "rehearsal")],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=BUDGET_S, check=False)
    lines = ran.stdout.strip().splitlines()
    summary = [line for line in lines if line.startswith("rehearsal: ")]
    report = "\n".join(lines[-20:]) + "\n" + ran.stderr[-2000:]
    assert summary, report
    match = re.fullmatch(r"rehearsal: (\d+) passed, (\d+) failed", summary[-1])
    assert match, report
    assert int(match.group(2)) == 0 and int(match.group(1)) >= 10, report
    assert ran.returncode == 0, report
