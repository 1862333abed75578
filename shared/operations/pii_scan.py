"""The personal-data scanner (`invoke pii-scan`, and the tests): where does a person's data still live?

It reads every table of the `public` schema (every row, as JSON text), every Redis key under the queue's prefix
(whatever its type: strings, hash fields, list items, set and sorted-set members, stream entries; the key names
too) and so the health events, which are a table. It reports
  * every place holding one of the given strings (an address, a name, a phone as typed), compared case-blind and
    also in the address' normalised form (NFKC + casefold), as the search key stores it;
  * every email-shaped string in a place that must hold none: Redis, and every column except those that are the
    product's own (users' address, requests' address and search key, bulk uploads' cells as sent). Addresses
    of the system itself (the sender, the scheduler's service account) and erased accounts' placeholders are
    allowed.
A place that cannot be read (an unknown Redis type) is a finding, and a scan that saw no table, no row or no
key says so, so that a scan never passes because it looked at nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import redis
from psycopg import sql

from shared.core.identity import normalize_email
from shared.core.personal_data import EMAIL_SHAPED

EMAIL = re.compile(rb"[^\s@\"'\[\]]+@[^\s@\"'\[\]]+\.[a-z]{2,}", re.IGNORECASE)
# Columns that are where the product keeps addresses (any other column holding one is a finding).
ADDRESS_COLUMNS: dict[str, tuple[str, ...]] = {
    "users": ("email", "email_normalized"),
    "creation_requests": ("email", "email_normalized", "search_key"),
    "bulk_batches": ("rejected", "duplicates"),
}
_PLACEHOLDER = re.compile(rb"erased-[0-9a-f-]{36}@erased\.invalid", re.IGNORECASE)
_EXCERPT = 200


@dataclass
class ScanReport:
    """What a scan found, and how much it looked at."""

    findings: list[str] = field(default_factory=list)
    tables: int = 0
    rows: int = 0
    keys: int = 0

    @property
    def clean(self) -> bool:
        """Nothing found, and something was looked at."""
        return not self.findings


def needles(exact: Iterable[str]) -> list[bytes]:
    """The byte forms a given string can take once stored: UTF-8, JSON-escaped (ASCII), lower case and the
    normalised form of an address."""
    found: set[bytes] = set()
    for text in exact:
        if not text:
            continue
        for variant in (text, text.lower(), normalize_email(text)):
            found.add(variant.encode())
            found.add(json.dumps(variant)[1:-1].encode())
    return sorted(found)


def _raw(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def redis_values(client: redis.Redis, pattern: str) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) for every key matching `pattern`, whatever its type (the key itself, hash fields, stream
    entry fields and values, zset/set members and list items included, each as the raw bytes Redis holds)."""
    reader: Any = client  # redis-py's sync annotations mix bytes, str and awaitables
    for key in reader.scan_iter(match=pattern, count=1000):
        kind = _raw(reader.type(key))
        values: list[object] = [key]
        if kind == b"string":
            values.append(reader.get(key) or b"")
        elif kind == b"hash":
            values += [v for pair in reader.hgetall(key).items() for v in pair]
        elif kind == b"list":
            values += reader.lrange(key, 0, -1)
        elif kind == b"zset":
            values += reader.zrange(key, 0, -1)
        elif kind == b"set":
            values += list(reader.smembers(key))
        elif kind == b"stream":
            for _entry_id, fields in reader.xrange(key):
                values += [v for pair in fields.items() for v in pair]
        elif kind != b"none":  # a type this scanner cannot read must not pass as clean
            values.append(b"unscanned type " + kind)
        yield from ((_raw(key), _raw(value)) for value in values)


def has_address(value: bytes, allowed: Iterable[bytes] = ()) -> bool:
    """True when `value` holds an email-shaped string that is neither an allowed one nor an erased placeholder."""
    for match in EMAIL.finditer(value):
        text = match.group(0).lower()
        if not _PLACEHOLDER.fullmatch(text) and text not in allowed:
            return True
    return False


def hit(value: bytes, forbidden: list[bytes], *, addresses: bool, allowed: Iterable[bytes] = ()) -> bool:
    """A forbidden string, an unreadable place, or (when `addresses`) an address that may not be there."""
    lowered = value.lower()
    return any(f.lower() in lowered for f in forbidden) or b"unscanned type" in value \
        or (addresses and has_address(value, allowed))


def scan_redis(client: redis.Redis, prefix: str, forbidden: list[bytes], report: ScanReport, *,
               addresses: bool = True, allowed: Iterable[bytes] = ()) -> None:
    """Every key under `prefix` (Redis must hold no address at all)."""
    seen: set[bytes] = set()
    for key, value in redis_values(client, f"{prefix}:*"):
        seen.add(key)
        if hit(value, forbidden, addresses=addresses, allowed=allowed):
            report.findings.append(f"redis {key.decode(errors='replace')}: {value[:_EXCERPT]!r}")
    report.keys += len(seen)
    if not seen:
        report.findings.append("redis: no key scanned (nothing to prove)")


def table_needles(exact: Iterable[str]) -> list[str]:
    """The lower-case forms a given string takes inside a row's JSON text (PostgreSQL writes non-ASCII as is)."""
    forms = {json.dumps(variant, ensure_ascii=False)[1:-1].lower()
             for text in exact if text for variant in (text, normalize_email(text))}
    return sorted(forms - {""})


def scan_tables(conn: psycopg.Connection[Any], exact: Iterable[str], report: ScanReport, *,
                addresses: bool = True, allowed: Iterable[bytes] = ()) -> None:
    """Every row of every table of the public schema, as JSON text: the given strings are looked for by
    PostgreSQL (case-blind), address-shaped strings outside ADDRESS_COLUMNS by PostgreSQL then Python."""
    allowed = list(allowed)
    texts = table_needles(exact)
    tables = [row[0] for row in conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]
    for table in tables:
        name = sql.Identifier(table)
        report.tables += 1
        count = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(name)).fetchone()
        report.rows += int(count[0]) if count else 0
        if texts:
            matches = conn.execute(sql.SQL(
                "SELECT to_jsonb(t)::text FROM {} AS t WHERE EXISTS"
                " (SELECT 1 FROM unnest(%s::text[]) AS n WHERE strpos(lower(to_jsonb(t)::text), n) > 0)").format(
                name), (texts,)).fetchall()
            report.findings += [f"table {table}: {m[0][:_EXCERPT]}" for m in matches]
        if addresses:
            columns = list(ADDRESS_COLUMNS.get(table, ()))
            rows = conn.execute(sql.SQL("SELECT (to_jsonb(t) - %s::text[])::text FROM {} AS t"
                                        " WHERE (to_jsonb(t) - %s::text[])::text ~* %s").format(name),
                                (columns, columns, EMAIL_SHAPED)).fetchall()
            report.findings += [f"table {table} (an address outside the address columns): {r[0][:_EXCERPT]}"
                                for r in rows if has_address(r[0].encode(), allowed)]
    if not tables:
        report.findings.append("postgresql: no table scanned (nothing to prove)")
    elif report.rows == 0:
        report.findings.append("postgresql: no row scanned (nothing to prove)")


def scan(database_url: str, redis_url: str, prefix: str, exact: Iterable[str] = (), *,
         allowed_addresses: Iterable[str] = ()) -> ScanReport:
    """Scan every table and every Redis key under `prefix` for `exact` (see the module docstring)."""
    exact = [text for text in exact if text]
    forbidden = needles(exact)
    allowed = [a.strip().lower().encode() for a in allowed_addresses if a.strip()]
    report = ScanReport()
    with psycopg.connect(database_url, connect_timeout=10) as conn:
        scan_tables(conn, exact, report, allowed=allowed)
    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    try:
        scan_redis(client, prefix, forbidden, report, allowed=allowed)
    finally:
        client.close()
    return report
