"""Scans for what must never be stored outside PostgreSQL's user tables: addresses, tokens, secrets."""

from __future__ import annotations

import re
from collections.abc import Iterable

import psycopg
import redis

EMAIL = re.compile(rb"[^\s@\"'\[\]]+@[^\s@\"'\[\]]+\.[a-z]{2,}", re.IGNORECASE)


def redis_values(client: redis.Redis, pattern: str) -> Iterable[tuple[bytes, bytes]]:
    """(key, value) for every key matching `pattern`, whatever its type (the key itself included)."""
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
            values += [repr(client.xrange(key)).encode()]
        for value in values:
            yield key, value


def find_secrets(redis_url: str, prefix: str, database_url: str, forbidden: list[bytes]) -> list[str]:
    """Every place in Redis (keys under `prefix`) or `system_health_logs` holding an address or a forbidden
    string; empty when clean. Also returns a marker when Redis held nothing, so a scan never passes vacuously."""
    found: list[str] = []
    client = redis.Redis.from_url(redis_url)
    try:
        seen = 0
        for key, value in redis_values(client, f"{prefix}:*"):
            seen += 1
            if EMAIL.search(value) or any(f in value for f in forbidden):
                found.append(f"redis {key!r}: {value[:80]!r}")
        if seen == 0:
            found.append("redis: no key scanned (nothing to prove)")
    finally:
        client.close()
    with psycopg.connect(database_url) as conn:
        for message, metadata in conn.execute("SELECT message, metadata::text FROM system_health_logs"):
            text = (message + metadata).encode()
            if EMAIL.search(text) or any(f in text for f in forbidden):
                found.append(f"health log: {text[:120]!r}")
    return found
