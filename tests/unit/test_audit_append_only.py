"""The audit trail is append-only in the code too: no statement outside the prune (migration 0016's
SECURITY DEFINER `cleanup_audit_log()`) updates or deletes audit rows."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REWRITE = re.compile(r"\b(UPDATE\s+(public\.)?audit_log|DELETE\s+FROM\s+(public\.)?audit_log|TRUNCATE\s+(TABLE\s+)?"
                     r"(public\.)?audit_log)\b", re.IGNORECASE)
PRUNE = "infra/migrations/0016_audit_append_only.sql"


def test_no_code_updates_or_deletes_audit_rows() -> None:
    sources = [p for folder in ("shared", "functions", "local", "infra") for p in (ROOT / folder).rglob("*")
               if p.suffix in {".py", ".sql", ".js"}] + [ROOT / "tasks.py"]
    assert len(sources) > 50
    found = {str(p.relative_to(ROOT)): REWRITE.findall(p.read_text()) for p in sources}
    rewrites = {path: hits for path, hits in found.items() if hits}
    # The original 400-day prune (0003) was replaced by 0016's; 0016 holds the only DELETE.
    assert set(rewrites) <= {"infra/migrations/0003_audit.sql", PRUNE}, rewrites
    assert len(rewrites[PRUNE]) == 1
