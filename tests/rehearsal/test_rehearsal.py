"""`invoke rehearse` under the suite (so under CI): the rendered deployment runs on this machine and every case of
the rehearsal passes (local/rehearsal/suite.py, docs/rehearsal.md). One process, bounded in time."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import pytest

from infra.manifest import REPO_ROOT

pytestmark = pytest.mark.slow

BUDGET_S = 290  # the bound for CI: well under 5 minutes on 2 cores


@pytest.mark.timeout(BUDGET_S + 90)
def test_the_rendered_deployment_runs_and_every_rehearsal_case_passes(tmp_path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "local.rehearsal.cli", "--dir", str(tmp_path / "rehearsal")],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=BUDGET_S)
    except subprocess.TimeoutExpired:
        # SIGINT, not a kill: the rehearsal unwinds and stops every instance it started (by PID) before it exits.
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
        stderr += f"\nthe rehearsal overran its {BUDGET_S} s budget and was interrupted"
    ran = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    lines = ran.stdout.strip().splitlines()
    summary = [line for line in lines if line.startswith("rehearsal: ")]
    report = "\n".join(lines[-20:]) + "\n" + ran.stderr[-2000:]
    assert summary, report
    match = re.fullmatch(r"rehearsal: (\d+) passed, (\d+) failed", summary[-1])
    assert match, report
    assert int(match.group(2)) == 0 and int(match.group(1)) >= 10, report
    assert ran.returncode == 0, report
