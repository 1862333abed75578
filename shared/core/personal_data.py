"""What "removing a person's data" from a row means, in one place: the retention pass
(shared/operations/retention.py) and the erase of a person (shared/accounts/erase.py) both use these.

A redacted creation request keeps its id, caller, times, status, error code and user id; its address, name
and phone become empty (PostgreSQL recomputes `search_key` from them), its body hash, a hash of the
address, name and phone, a fixed marker, and its Idempotency-Key (text the caller chose, which may be anything,
an address included) goes: a replay of that key afterwards is a new request. A redacted bulk cell keeps its row,
field and reason and loses the `email` cell as sent. A health event loses anything shaped like an address and the
keys that name a person.
"""

from __future__ import annotations

from psycopg import sql

# The SET list of a redacted request (the CHECK of migration 0017 keeps it finished).
REDACTED_REQUEST = sql.SQL("email = '', email_normalized = '', full_name = '', phone = NULL,"
                           " body_hash = 'redacted', idempotency_key = NULL, pii_redacted_at = now()")


def redacted_cells(column: str, keep: sql.Composable) -> sql.Composed:
    """A jsonb array of bulk cells ({row, field, message, email} or {row, reason, email, ...}) without their
    email cells, except those for which `keep` (a boolean expression over the element `e`) holds."""
    return sql.SQL("(SELECT coalesce(jsonb_agg(CASE WHEN {keep} THEN e ELSE e - 'email' END ORDER BY n),"
                   " '[]'::jsonb) FROM jsonb_array_elements({cells}) WITH ORDINALITY AS cell(e, n))").format(
        keep=keep, cells=sql.Identifier(column))

# Something shaped like an address inside a health event's text (POSIX regex; the JSON punctuation around a
# value is never part of a match, so the redacted jsonb text stays valid JSON).
EMAIL_SHAPED = r'''[^][:space:]@"'\\[]+@[^][:space:]@"'\\[]+\.[[:alpha:]]{2,}'''
# Metadata keys that would hold a person's data (events never carry them; removed if one ever did).
PERSONAL_KEYS = ["email", "email_normalized", "full_name", "name", "phone"]

# The SET list of a redacted health event (`%(keys)s` is PERSONAL_KEYS, `%(shape)s` EMAIL_SHAPED).
REDACTED_EVENT = sql.SQL("message = regexp_replace(message, %(shape)s, '[redacted-email]', 'g'),"
                  " metadata = regexp_replace((metadata - %(keys)s::text[])::text, %(shape)s, '[redacted-email]',"
                  " 'g')::jsonb")
# The events holding something to redact.
EVENT_HOLDS_PERSONAL_DATA = sql.SQL("(message ~ %(shape)s OR metadata::text ~ %(shape)s"
                                    " OR metadata ?| %(keys)s::text[])")


def placeholder_email(user_id: str) -> str:
    """The address an erased account keeps: unique (from its id) and undeliverable (.invalid, RFC 2606)."""
    return f"erased-{user_id}@erased.invalid"
