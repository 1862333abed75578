"""Scans for what must never be stored outside PostgreSQL's user tables: addresses, names, phones, tokens (Redis
and the health log; the scanner itself is shared/operations/pii_scan.py, `invoke pii-scan`)."""

from __future__ import annotations

from collections.abc import Iterable

import psycopg
import redis

from shared.operations.pii_scan import EMAIL, needles, redis_values

__all__ = ["EMAIL", "find_secrets", "needles", "redis_values"]


def _hit(value: bytes, forbidden: list[bytes], emails: bool) -> bool:
    return (emails and EMAIL.search(value) is not None) or any(f in value for f in forbidden) \
        or b"unscanned type" in value


def find_secrets(redis_url: str, prefix: str, database_url: str, forbidden: list[bytes],
                 exact: Iterable[str] = (), emails: bool = True) -> list[str]:
    """Every place in Redis (keys under `prefix`) or `system_health_logs` holding an email-shaped string
    (unless `emails=False`), a forbidden byte string or one of the `exact` strings (an address, a name, a phone
    as sent); empty when clean. A marker is returned when Redis or the health log held nothing, so a scan never
    passes vacuously."""
    forbidden = [*forbidden, *needles(exact)]
    found: list[str] = []
    client = redis.Redis.from_url(redis_url)
    try:
        seen = 0
        for key, value in redis_values(client, f"{prefix}:*"):
            seen += 1
            if _hit(value, forbidden, emails):
                found.append(f"redis {key!r}: {value[:200]!r}")
        if seen == 0:
            found.append("redis: no key scanned (nothing to prove)")
    finally:
        client.close()
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT event, message, metadata::text FROM system_health_logs").fetchall()
    for event, message, metadata in rows:
        text = (event + " " + message + " " + metadata).encode()
        if _hit(text, forbidden, emails):
            found.append(f"health log: {text[:200]!r}")
    if not rows:
        found.append("health log: no event scanned (nothing to prove)")
    return found
