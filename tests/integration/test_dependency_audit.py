"""`invoke audit` runs the real pip-audit on the lock and tells a finding (fail) from an unreachable service
(WARNING, go on). The advisory service is served locally here (OSV's query API), so the outcome does not depend
on this machine's network."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from infra.audit import run_audit
from infra.lock import LOCK_PATH, locked_pins


class Advisories:
    """An OSV query endpoint on 127.0.0.1 that knows one vulnerability (or none)."""

    def __init__(self, vulnerable: dict[str, str]) -> None:
        self.vulnerable = vulnerable  # package -> the version it is fixed in
        self.asked: list[str] = []

    def answer(self, query: dict[str, Any]) -> dict[str, Any]:
        name = query["package"]["name"]
        self.asked.append(name)
        if name not in self.vulnerable:
            return {}
        return {"vulns": [{"id": "GHSA-test-0001", "summary": "made up for the test", "affected": [{
            "package": {"name": name, "ecosystem": "PyPI"},
            "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": self.vulnerable[name]}]}]}]}]}


@pytest.fixture
def advisories() -> Iterator[tuple[Advisories, str]]:
    known = Advisories({})

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.dumps(known.answer(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield known, f"http://127.0.0.1:{server.server_address[1]}/v1/query"
    server.shutdown()
    server.server_close()


def test_a_known_vulnerability_in_the_lock_fails_the_audit(advisories: tuple[Advisories, str]) -> None:
    known, url = advisories
    pins = locked_pins(LOCK_PATH.read_text())
    known.vulnerable["jinja2"] = "999.0"
    outcome = run_audit(service="osv", osv_url=url, timeout_s=120)
    assert set(known.asked) == set(pins)  # every locked package was asked about, the lock was not re-resolved
    assert outcome.exit_code == 1
    assert outcome.findings == [f"jinja2 {pins['jinja2']}: GHSA-test-0001 (fix: 999.0)"]
    assert any(line.startswith("VULNERABLE jinja2") for line in outcome.lines())


def test_a_clean_answer_passes_and_says_how_many_packages_were_audited(advisories: tuple[Advisories, str]) -> None:
    _, url = advisories
    outcome = run_audit(service="osv", osv_url=url, timeout_s=120)
    assert outcome.exit_code == 0 and not outcome.findings and not outcome.not_audited
    assert outcome.lines() == [f"audit: {len(locked_pins(LOCK_PATH.read_text()))} locked packages, "
                               "no known vulnerability"]


def test_an_unreachable_service_warns_and_does_not_fail() -> None:
    outcome = run_audit(service="osv", osv_url="http://127.0.0.1:9/v1/query", timeout_s=120)  # discard port
    assert outcome.exit_code == 0
    (line,) = outcome.lines()
    assert line.startswith("WARNING: dependency audit skipped, the audit service could not be reached")
