"""Scans for what must never be stored outside PostgreSQL's user tables: addresses, names, phones, tokens."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

import psycopg
import redis

EMAIL = re.compile(rb"[^\s@\"'\[\]]+@[^\s@\"'\[\]]+\.[a-z]{2,}", re.IGNORECASE)


def redis_values(client: redis.Redis, pattern: str) -> Iterable[tuple[bytes, bytes]]:
    """(key, value) for every key matching `pattern`, whatever its type (the key itself, hash fields, stream
    entry fields and values, zset/set members and list items included, each as the raw bytes Redis holds)."""
    for key in client.scan_iter(match=pattern, count=1000):
        kind = client.type(key)
        values: list[bytes] = [key]
        if kind == b"string":
            values.append(client.get(key) or b"")
        elif kind == b"hash":
            values += [v for pair in client.hgetall(key).items() for v in pair]
        elif kind == b"list":
            values += client.lrange(key, 0, -1)
        elif kind == b"zset":
            values += client.zrange(key, 0, -1)
        elif kind == b"set":
            values += list(client.smembers(key))
        elif kind == b"stream":
            for _entry_id, fields in client.xrange(key):
                values += [v for pair in fields.items() for v in pair]
        elif kind != b"none":  # a type this scanner cannot read must not pass as clean
            values.append(b"unscanned type " + kind)
        for value in values:
            yield key, value


def needles(exact: Iterable[str]) -> list[bytes]:
    """The byte forms a given string can take once stored: UTF-8, JSON-escaped (ASCII) and lower case."""
    found: set[bytes] = set()
    for text in exact:
        for variant in (text, text.lower()):
            found.add(variant.encode())
            found.add(json.dumps(variant)[1:-1].encode())
    return sorted(found)


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
