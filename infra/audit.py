"""`invoke audit`: the locked runtime set (requirements.lock) against PyPI's advisory data, with pip-audit.

CI must tell a finding from a network problem, so the report is read, not only the exit code:

- **findings**: a locked package has a known vulnerability. Each is printed and the audit fails (exit 1).
- **unreachable**: the service did not answer (connection error), or could not look up some locked versions
  (pip-audit then skips them and would say "No known vulnerabilities found"). A WARNING names what was not
  audited and the audit does not fail (exit 0), so a CI without network goes on, and says so.
- **clean**: every locked package was audited and none is vulnerable (exit 0).

pip-audit runs with `--require-hashes --disable-pip`: the lock is fully pinned and hashed, so nothing is
resolved or installed to audit it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.lock import LOCK_PATH

NETWORK_SIGNS = ("ConnectionError", "Max retries exceeded", "NameResolutionError", "Name or service not known",
                 "Temporary failure in name resolution", "timed out", "ServiceError", "SSLError")


@dataclass
class AuditOutcome:
    """What one audit found."""

    findings: list[str] = field(default_factory=list)  # "name version: ID (fix: x)"
    not_audited: list[str] = field(default_factory=list)  # why each skipped package was not audited
    audited: int = 0
    unreachable: str = ""  # set when the service could not be asked at all

    @property
    def exit_code(self) -> int:
        """1 when a reachable audit found something, else 0 (a WARNING says what was not checked)."""
        return 1 if self.findings else 0

    def lines(self) -> list[str]:
        """The report, one line each."""
        out = [f"VULNERABLE {finding}" for finding in self.findings]
        if self.unreachable:
            out.append(f"WARNING: dependency audit skipped, the audit service could not be reached: {self.unreachable}")
        elif self.not_audited and not self.audited:
            out.append(f"WARNING: dependency audit skipped, the audit service answered for none of the "
                       f"{len(self.not_audited)} locked packages (first: {self.not_audited[0]})")
        elif self.not_audited:
            out.append(f"WARNING: the audit service did not answer for {len(self.not_audited)} of "
                       f"{len(self.not_audited) + self.audited} locked packages; they were NOT audited:")
            out += [f"  {reason}" for reason in self.not_audited]
        if not self.findings and not self.unreachable and not self.not_audited:
            out.append(f"audit: {self.audited} locked packages, no known vulnerability")
        elif not self.findings and self.audited:
            out.append(f"audit: {self.audited} packages audited, no known vulnerability among them")
        return out


def read_report(report: dict[str, Any]) -> AuditOutcome:
    """Classify pip-audit's JSON report (`-f json`)."""
    outcome = AuditOutcome()
    for dep in report.get("dependencies", []):
        if "skip_reason" in dep:
            outcome.not_audited.append(str(dep["skip_reason"]))
            continue
        outcome.audited += 1
        for vuln in dep.get("vulns", []):
            fixes = ", ".join(vuln.get("fix_versions") or []) or "none yet"
            outcome.findings.append(f"{dep['name']} {dep.get('version', '?')}: {vuln.get('id')} (fix: {fixes})")
    return outcome


def run_audit(lock: Path = LOCK_PATH, *, service: str = "pypi", osv_url: str = "",
              timeout_s: int = 300) -> AuditOutcome:
    """Run pip-audit on the lock and classify what it says; raises RuntimeError when it fails otherwise.

    `service` is pip-audit's (pypi, osv); `osv_url` another OSV endpoint (a mirror, or a test's)."""
    if not lock.is_file():
        raise RuntimeError(f"{lock} is missing: run `invoke lock`")
    with tempfile.TemporaryDirectory(prefix="pip-audit-") as tmp:
        report_path = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip_audit", "-r", str(lock), "--require-hashes", "--disable-pip",
               "--progress-spinner", "off", "-s", service, "-f", "json", "-o", str(report_path),
               *(["--osv-url", osv_url] if osv_url else [])]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)  # noqa: S603
        except subprocess.TimeoutExpired:
            return AuditOutcome(unreachable=f"no answer within {timeout_s} s")
        output = done.stdout + done.stderr
        if report_path.exists() and report_path.stat().st_size:
            return read_report(json.loads(report_path.read_text()))
    signs = [sign for sign in NETWORK_SIGNS if sign in output]
    if signs:
        last = next((line for line in reversed(output.splitlines()) if any(s in line for s in signs)), signs[0])
        return AuditOutcome(unreachable=last.strip()[:300])
    raise RuntimeError(f"pip-audit failed (exit {done.returncode}):\n{output[-2000:]}")
