"""Personal data kept only as long as needed: the retention pass of the scheduled cleanup.

Rows older than PII_RETENTION_DAYS (90 by default) keep their ids, times and outcomes and lose the person's
address, name and phone (see shared/core/personal_data.py for what each redaction removes):
  * creation requests finished (`created` or `failed`) more than that ago: `updated_at` is when they finished;
  * bulk uploads made more than that ago: the email cells of their rejected and duplicate rows (the accepted
    rows are requests, above);
  * welcome-email outbox rows finished more than that ago: the SES message id (which finds the message, and so
    the address, in SES' own records). The outbox never holds the address itself;
  * health events older than that: anything shaped like an address (events are written without one; this is
    the backstop for a LOG_RETENTION_DAYS longer than the personal-data retention).
Users (accounts) are not expired: they are the product; `POST /api/admin/users/{id}/erase` removes a person.
One transaction; running it twice redacts nothing the second time (each row is marked `pii_redacted_at`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from psycopg import AsyncConnection, sql

from shared.core.personal_data import (
    EMAIL_SHAPED,
    EVENT_HOLDS_PERSONAL_DATA,
    PERSONAL_KEYS,
    REDACTED_EVENT,
    REDACTED_REQUEST,
    redacted_cells,
)

_DUE = sql.SQL("now() - make_interval(days => %(days)s)")
_REQUESTS = sql.SQL("UPDATE creation_requests SET {redacted} WHERE pii_redacted_at IS NULL"
                    " AND status IN ('created', 'failed') AND updated_at < {due}").format(
    redacted=REDACTED_REQUEST, due=_DUE)
_BATCHES = sql.SQL("UPDATE bulk_batches SET rejected = {rejected}, duplicates = {duplicates},"
                   " pii_redacted_at = now() WHERE pii_redacted_at IS NULL AND created_at < {due}").format(
    rejected=redacted_cells("rejected", sql.SQL("false")), duplicates=redacted_cells("duplicates", sql.SQL("false")),
    due=_DUE)
_OUTBOX = sql.SQL("UPDATE email_outbox SET provider_id = NULL, pii_redacted_at = now()"
                  " WHERE pii_redacted_at IS NULL AND status IN ('sent', 'failed')"
                  " AND coalesce(sent_at, created_at) < {due}").format(due=_DUE)
_EVENTS = sql.SQL("UPDATE system_health_logs SET {redacted} WHERE created_at < {due} AND {holds}").format(
    redacted=REDACTED_EVENT, due=_DUE, holds=EVENT_HOLDS_PERSONAL_DATA)


@dataclass(frozen=True, slots=True)
class Redacted:
    """How many rows of each kind lost their personal data in one pass."""

    requests: int
    batches: int
    outbox: int
    events: int

    def to_dict(self) -> dict[str, int]:
        """The cleanup answer's `pii_redacted`."""
        return asdict(self)


async def redact_expired(conn: AsyncConnection[Any], days: int) -> Redacted:
    """Redact, on `conn` (inside the caller's transaction), every row past the retention of `days`."""
    params = {"days": days, "shape": EMAIL_SHAPED, "keys": PERSONAL_KEYS}
    counts = []
    for statement in (_REQUESTS, _BATCHES, _OUTBOX, _EVENTS):
        cur = await conn.execute(statement, params)
        counts.append(max(0, cur.rowcount))
    return Redacted(*counts)
