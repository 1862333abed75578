"""Use case: a sales manager uploads many users at once (a webinar's buyers) and follows the batch.

Every valid row becomes an ordinary creation request (same table, same status route, same `provision()`),
tagged with the batch. What the upload guarantees:
- **Nothing written for a bad file**: the file is read and every row validated before the one transaction.
- **One transaction before the 202**: the batch and all its requests are one multi-row INSERT (from `unnest`);
  a row whose address got a pending request meanwhile is reported as a duplicate, never a second request.
- **Queue path**: after the commit the jobs go to BullMQ with its bulk add, `BULK_ENQUEUE_CHUNK` per round trip
  (each chunk is one MULTI: all or none of it lands). If Redis fails halfway, the rows not confirmed move to the
  drain (fallback, a WARNING event): a chunk that landed after all meets the drain in `provision()`: one user.
- **Drain path** (kill switch, automatic fallback): the rows are recorded the same way and created by the drain
  (`shared.bulk.drain`) at the global rate limit. The answer and the batch say `path`.
- **Idempotent** under `Idempotency-Key` (scoped to the caller): the same bytes get the same batch, other bytes
  get 422 `idempotency_key_reused`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from psycopg.types.json import Jsonb
from pydantic import ValidationError

from shared.bootstrap import Deps
from shared.bulk.parse import UploadRow, parse_upload
from shared.core import db, health
from shared.core.auth import Principal, Role
from shared.core.errors import IdempotencyKeyReused, NotFound, RateLimited
from shared.core.health import Level
from shared.creation.creation import Answer, new_request_id
from shared.creation.email_syntax import enable_domain_cache
from shared.creation.models import CreateUserCommand, TrafficMode
from shared.creation.quota import Charge

log = logging.getLogger(__name__)

PENDING = ("queued", "processing")
# What one rejected row may add to the batch (answered and stored in bulk_batches.rejected): at most this many
# entries, each field name and message cut to these lengths. 5,000 rows x 4 entries bound the stored list.
MAX_ERRORS_PER_ROW = 4
MAX_FIELD_CHARS = 64
MAX_MESSAGE_CHARS = 300
CSV_INJECTION_LEADS = ("=", "+", "-", "@", "\t", "\r")


@dataclass
class CheckedUpload:
    """The rows of an upload sorted into those to create, those rejected and the duplicates inside it."""

    rows: int
    valid: list[tuple[int, CreateUserCommand]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)  # {row, field, message, email}
    duplicates: list[dict[str, Any]] = field(default_factory=list)  # {row, reason, email[, first_row]}


def new_batch_id() -> str:
    """A batch id: `bat_` and 32 hex digits."""
    return f"bat_{uuid.uuid4().hex}"


def _rejection(item: UploadRow, field: str, message: str) -> dict[str, Any]:
    """One refusal of a row as stored with the batch and answered. A JSON upload's keys and cells may hold NUL,
    which no PostgreSQL text or jsonb value can: it is shown as U+FFFD, the rest as sent."""
    return {"row": item.row, "field": field[:MAX_FIELD_CHARS].replace("\x00", "\ufffd"),
            "message": message[:MAX_MESSAGE_CHARS].replace("\x00", "\ufffd"),
            "email": item.email_cell.replace("\x00", "\ufffd")}


def check_rows(rows: list[UploadRow]) -> CheckedUpload:
    """Validate each row with the model of `POST /api/users`; the second row of an address is a duplicate."""
    enable_domain_cache()
    checked = CheckedUpload(rows=len(rows))
    first_row: dict[str, int] = {}
    for item in rows:
        if item.problem or item.fields is None:
            checked.rejected.append(_rejection(item, item.problem_field, item.problem or "invalid row"))
            continue
        try:
            command = CreateUserCommand.model_validate(item.fields)
        except ValidationError as exc:
            for err in exc.errors()[:MAX_ERRORS_PER_ROW]:
                name = ".".join(str(part) for part in err.get("loc", ())) or "row"
                checked.rejected.append(_rejection(item, name, str(err.get("msg", "invalid"))))
            continue
        norm = command.email_normalized
        if norm in first_row:
            checked.duplicates.append({"row": item.row, "reason": "duplicate_in_upload",
                                       "first_row": first_row[norm], "email": command.email})
            continue
        first_row[norm] = item.row
        checked.valid.append((item.row, command))
    return checked


async def _charge_quota(deps: Deps, principal: Principal, rows: int) -> Charge:
    """Count the upload's rows against the caller's `CREATE_QUOTA_PER_MINUTE` (a bulk row counts as one).

    All rows or none (`shared.creation.quota`): the whole upload is refused with 429 `rate_limited` +
    Retry-After, before anything is written, when it does not fit.
    """
    charge = await deps.quota.charge(principal.subject, rows)
    if not charge.allowed:
        raise RateLimited(f"this upload's {rows} rows do not fit in the caller's quota of {deps.quota.limit} "
                          f"creations in 60 s; retry in {charge.retry_after_s} s",
                          retry_after_s=charge.retry_after_s)
    return charge


def _public(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rejected rows and duplicates as answered: without the email cell (it stays for results.csv)."""
    return [{k: v for k, v in item.items() if k != "email"} for item in items]


def batch_url(deps: Deps, batch_id: str) -> str:
    """Where the caller follows a batch."""
    return f"{deps.settings.public_base_url}/api/users/bulk/{batch_id}"


def _answer(deps: Deps, batch: dict[str, Any]) -> Answer:
    url = batch_url(deps, batch["id"])
    return Answer(202, {"batch_id": batch["id"], "accepted": batch["accepted"], "rows": batch["rows_in_file"],
                        "rejected": _public(batch["rejected"]), "duplicates": _public(batch["duplicates"]),
                        "path": batch["path"], "status_url": url, "results_url": f"{url}/results.csv"},
                  {"Location": url})


_INSERT_ROWS = """
INSERT INTO creation_requests (id, actor, body_hash, email, email_normalized, full_name, phone, product, mode,
                               fallback, fallback_reason, batch_id, batch_row)
SELECT r.id, %(actor)s, r.hash, r.email, r.norm, r.full_name, r.phone, r.product, %(mode)s, %(fallback)s,
       %(reason)s, %(batch)s, r.n
FROM unnest(%(ids)s::text[], %(hashes)s::text[], %(emails)s::text[], %(norms)s::text[], %(names)s::text[],
            %(phones)s::text[], %(products)s::text[], %(rows)s::int[])
     AS r(id, hash, email, norm, full_name, phone, product, n)
ON CONFLICT (email_normalized) WHERE status IN ('queued', 'processing') DO NOTHING
RETURNING id, batch_row
"""


async def accept_upload(deps: Deps, principal: Principal, body: bytes, content_type: str | None,
                        idempotency_key: str | None) -> Answer:
    """Read, validate and record an upload (one transaction), then queue its rows or leave them to the drain."""
    checked = check_rows(parse_upload(body, content_type, max_rows=deps.settings.bulk_max_rows))
    body_hash = hashlib.sha256(body).hexdigest()
    if idempotency_key is not None:
        replay = await _replay(deps, principal, idempotency_key, body_hash)
        if replay is not None:
            return replay

    to_create = await _without_taken_addresses(deps, checked)
    charge = await _charge_quota(deps, principal, len(to_create))
    try:
        return await _accept(deps, principal, checked, to_create, body_hash=body_hash,
                             idempotency_key=idempotency_key, charge=charge)
    except Exception:
        await deps.quota.refund(charge)  # nothing was accepted: the rows do not count
        raise


async def _accept(deps: Deps, principal: Principal, checked: CheckedUpload,
                  to_create: list[tuple[int, CreateUserCommand]], *, body_hash: str, idempotency_key: str | None,
                  charge: Charge) -> Answer:
    """Record the checked rows in one transaction, then queue them or leave them to the drain."""
    mode = (await deps.mode_cache.current()).mode
    fallback_reason = await deps.fallback_reason() if mode is TrafficMode.ASYNC_QUEUE else None
    use_queue = mode is TrafficMode.ASYNC_QUEUE and fallback_reason is None
    batch_id = new_batch_id()
    ids = [new_request_id() for _ in to_create]
    recorded = await _record(deps, principal, checked, to_create, ids, batch_id=batch_id, body_hash=body_hash,
                             idempotency_key=idempotency_key, use_queue=use_queue, fallback_reason=fallback_reason)
    if recorded is None:  # a concurrent twin with the same key committed first
        await deps.quota.refund(charge)
        replay = await _replay(deps, principal, idempotency_key or "", body_hash)
        if replay is None:
            raise RuntimeError("idempotency key conflict without a batch")
        return replay
    if use_queue and recorded["accepted"]:
        recorded = await _enqueue(deps, recorded, [i for i, row in recorded["ids"]])
    elif not recorded["accepted"]:
        await finish_batches(deps, batch_ids=[batch_id])  # nothing to create: done at once, with its event
    return _answer(deps, recorded)


async def _replay(deps: Deps, principal: Principal, key: str, body_hash: str) -> Answer | None:
    async with db.connection(deps.pool) as conn:
        cur = await conn.execute("SELECT * FROM bulk_batches WHERE actor = %s AND idempotency_key = %s",
                                 (principal.subject, key))
        batch = await cur.fetchone()
    if batch is None:
        return None
    if batch["body_hash"] != body_hash:
        raise IdempotencyKeyReused("this Idempotency-Key was used for another file",
                                   details=[{"field": "Idempotency-Key", "message": "reused with another file"}])
    return _answer(deps, batch)


async def _without_taken_addresses(deps: Deps, checked: CheckedUpload) -> list[tuple[int, CreateUserCommand]]:
    """The valid rows whose address has no user and no pending request (the others become duplicates)."""
    norms = [command.email_normalized for _, command in checked.valid]
    if not norms:
        return []
    async with db.connection(deps.pool) as conn:
        cur = await conn.execute(
            "SELECT email_normalized, 'user_exists' AS reason FROM users WHERE email_normalized = ANY(%(n)s)"
            " UNION ALL SELECT email_normalized, 'request_in_progress' FROM creation_requests"
            " WHERE status IN ('queued', 'processing') AND email_normalized = ANY(%(n)s)", {"n": norms})
        taken = {row["email_normalized"]: row["reason"] for row in await cur.fetchall()}
    keep = []
    for row, command in checked.valid:
        reason = taken.get(command.email_normalized)
        if reason is None:
            keep.append((row, command))
        else:
            checked.duplicates.append({"row": row, "reason": reason, "email": command.email})
    return keep


async def _record(deps: Deps, principal: Principal, checked: CheckedUpload,
                  to_create: list[tuple[int, CreateUserCommand]], ids: list[str], *, batch_id: str, body_hash: str,
                  idempotency_key: str | None, use_queue: bool, fallback_reason: str | None) -> dict[str, Any] | None:
    """The batch, its requests and its INFO event in one transaction. None: the key's batch exists already."""
    path = "queue" if use_queue else "drain"
    mode = TrafficMode.ASYNC_QUEUE if use_queue else TrafficMode.SYNC_DIRECT
    async with db.connection(deps.pool) as conn, conn.transaction():
        cur = await conn.execute(
            "INSERT INTO bulk_batches (id, actor, idempotency_key, body_hash, rows_in_file, accepted, rejected,"
            " path) VALUES (%s, %s, %s, %s, %s, 0, %s, %s)"
            " ON CONFLICT (actor, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING id",
            (batch_id, principal.subject, idempotency_key, body_hash, checked.rows, Jsonb(checked.rejected), path))
        if await cur.fetchone() is None:
            return None
        inserted: list[tuple[str, int]] = []
        if to_create:
            commands = [command for _, command in to_create]
            cur = await conn.execute(_INSERT_ROWS, {
                "actor": principal.subject, "mode": mode.value, "fallback": fallback_reason is not None,
                "reason": fallback_reason, "batch": batch_id, "ids": ids,
                "hashes": [c.body_hash() for c in commands], "emails": [c.email for c in commands],
                "norms": [c.email_normalized for c in commands], "names": [c.full_name for c in commands],
                "phones": [c.phone for c in commands], "products": [c.product for c in commands],
                "rows": [row for row, _ in to_create]})
            inserted = [(r["id"], r["batch_row"]) for r in await cur.fetchall()]
        landed = {row for _, row in inserted}
        for row, command in to_create:  # lost a race to a request recorded since the check
            if row not in landed:
                checked.duplicates.append({"row": row, "reason": "request_in_progress", "email": command.email})
        checked.duplicates.sort(key=lambda item: item["row"])
        cur = await conn.execute(
            "UPDATE bulk_batches SET accepted = %s, duplicates = %s WHERE id = %s RETURNING *",
            (len(inserted), Jsonb(checked.duplicates), batch_id))
        batch = dict(await cur.fetchone() or {})
        await health.record(conn, Level.INFO, "bulk_accepted",
                            f"bulk upload recorded: {len(inserted)} of {checked.rows} row(s) accepted ({path})",
                            {"batch_id": batch_id, "rows": checked.rows, "accepted": len(inserted),
                             "rejected": len({r["row"] for r in checked.rejected}),
                             "duplicates": len(checked.duplicates), "path": path,
                             "fallback_reason": fallback_reason}, source=deps.source)
    batch["ids"] = sorted(inserted, key=lambda pair: pair[1])
    return batch


async def _enqueue(deps: Deps, batch: dict[str, Any], request_ids: list[str]) -> dict[str, Any]:
    """BullMQ bulk add in chunks (one round trip each). On a failure the unconfirmed rows go to the drain."""
    chunk = deps.settings.bulk_enqueue_chunk
    done = 0
    try:
        for start in range(0, len(request_ids), chunk):
            await deps.queue.enqueue_many(request_ids[start:start + chunk])
            done = min(len(request_ids), start + chunk)
    except Exception as exc:
        reason = "redis_unavailable"
        await deps.breaker.failure(f"{reason}: {type(exc).__name__}")
        async with db.connection(deps.pool) as conn, conn.transaction():
            await conn.execute(
                "UPDATE creation_requests SET mode = 'sync_direct', fallback = true, fallback_reason = %s,"
                " updated_at = now() WHERE id = ANY(%s) AND status = 'queued'", (reason, request_ids[done:]))
            cur = await conn.execute("UPDATE bulk_batches SET path = 'drain', enqueued = %s WHERE id = %s"
                                     " RETURNING *", (done, batch["id"]))
            batch = dict(await cur.fetchone() or batch)
            await health.record(conn, Level.WARNING, "bulk_fallback",
                                f"Redis failed while queueing a bulk upload ({type(exc).__name__}): "
                                f"{len(request_ids) - done} row(s) left to the drain",
                                {"batch_id": batch["id"], "enqueued": done, "to_drain": len(request_ids) - done,
                                 "error": type(exc).__name__}, source=deps.source)
        return batch
    async with db.connection(deps.pool) as conn:
        await conn.execute("UPDATE bulk_batches SET enqueued = %s WHERE id = %s", (done, batch["id"]))
    batch["enqueued"] = done
    return batch


# -- progress -----------------------------------------------------------------------------------------------------

_PROGRESS = """
SELECT b.*, c.total, c.created, c.failed, c.pending
FROM bulk_batches b CROSS JOIN LATERAL (
    SELECT count(*) AS total, count(*) FILTER (WHERE r.status = 'created') AS created,
           count(*) FILTER (WHERE r.status = 'failed') AS failed,
           count(*) FILTER (WHERE r.status IN ('queued', 'processing')) AS pending
    FROM creation_requests r WHERE r.batch_id = b.id) c
"""


async def _load_batch(deps: Deps, principal: Principal, batch_id: str) -> dict[str, Any]:
    """The batch with its counts; 404 when unknown or made by another caller (admins see every batch)."""
    if not batch_id.startswith("bat_") or len(batch_id) > 40:
        raise NotFound("no such batch")
    async with db.connection(deps.pool) as conn:
        cur = await conn.execute(_PROGRESS + " WHERE b.id = %s", (batch_id,))
        batch = await cur.fetchone()
    if batch is None or (principal.role is not Role.ADMIN and batch["actor"] != principal.subject):
        raise NotFound("no such batch")
    return dict(batch)


def _progress(batch: dict[str, Any]) -> dict[str, Any]:
    return {"batch_id": batch["id"], "total": int(batch["total"]), "created": int(batch["created"]),
            "failed": int(batch["failed"]), "pending": int(batch["pending"]), "done": int(batch["pending"]) == 0,
            "path": batch["path"], "rows": batch["rows_in_file"],
            "rejected": len({item["row"] for item in batch["rejected"]}),
            "duplicates": len(batch["duplicates"]), "created_at": batch["created_at"].isoformat(),
            "finished_at": batch["finished_at"].isoformat() if batch["finished_at"] else None}


async def batch_status(deps: Deps, principal: Principal, batch_id: str) -> dict[str, Any]:
    """`{batch_id, total, created, failed, pending, done, path, ...}`; records the end once it is reached."""
    batch = await _load_batch(deps, principal, batch_id)
    if int(batch["pending"]) == 0 and batch["finished_at"] is None:
        await finish_batches(deps, batch_ids=[batch_id])
        batch = await _load_batch(deps, principal, batch_id)
    return _progress(batch)


async def own_batches(deps: Deps, principal: Principal, limit: int) -> list[dict[str, Any]]:
    """The caller's most recent batches with their progress, newest first."""
    async with db.connection(deps.pool) as conn:
        cur = await conn.execute(_PROGRESS + " WHERE b.actor = %s ORDER BY b.created_at DESC LIMIT %s",
                                 (principal.subject, limit))
        return [_progress(dict(row)) for row in await cur.fetchall()]


async def finish_batches(deps: Deps, *, batch_ids: list[str] | None = None) -> int:
    """Mark batches whose every row is created or failed as finished, each with one INFO event (once)."""
    async with db.connection(deps.pool) as conn, conn.transaction():
        cur = await conn.execute(
            "UPDATE bulk_batches b SET finished_at = now() WHERE finished_at IS NULL"
            " AND (%(ids)s::text[] IS NULL OR b.id = ANY(%(ids)s::text[]))"
            " AND NOT EXISTS (SELECT 1 FROM creation_requests r WHERE r.batch_id = b.id"
            "                 AND r.status IN ('queued', 'processing'))"
            " RETURNING b.id, b.path, b.accepted,"
            " (SELECT count(*) FROM creation_requests r WHERE r.batch_id = b.id AND r.status = 'created') AS created,"
            " (SELECT count(*) FROM creation_requests r WHERE r.batch_id = b.id AND r.status = 'failed') AS failed",
            {"ids": batch_ids})
        finished = await cur.fetchall()
        for row in finished:
            await health.record(conn, Level.INFO, "bulk_finished",
                                f"bulk upload finished: {row['created']} created, {row['failed']} failed",
                                {"batch_id": row["id"], "total": row["accepted"], "created": int(row["created"]),
                                 "failed": int(row["failed"]), "path": row["path"]}, source=deps.source)
    return len(finished)


def neutralise(cell: str) -> str:
    """A cell a spreadsheet would run as a formula (= + - @, tab, CR first) gets a leading apostrophe."""
    return "'" + cell if cell.startswith(CSV_INJECTION_LEADS) else cell


async def results_csv(deps: Deps, principal: Principal, batch_id: str) -> str:
    """`row,email,status,error` for every row of the upload (created, failed, queued, processing, rejected,
    duplicate), in file order; formula-like cells neutralised."""
    batch = await _load_batch(deps, principal, batch_id)
    async with db.connection(deps.pool) as conn:
        cur = await conn.execute("SELECT batch_row, email, status, error FROM creation_requests"
                                 " WHERE batch_id = %s", (batch_id,))
        lines: list[tuple[int, str, str, str]] = [
            (r["batch_row"], r["email"], r["status"], r["error"] or "") for r in await cur.fetchall()]
    messages: dict[int, list[str]] = {}
    emails: dict[int, str] = {}
    for item in batch["rejected"]:
        messages.setdefault(item["row"], []).append(f"{item['field']}: {item['message']}")
        emails[item["row"]] = item.get("email") or ""
    lines += [(row, emails[row], "rejected", "; ".join(text)) for row, text in messages.items()]
    for item in batch["duplicates"]:
        why = item["reason"] + (f" (row {item['first_row']})" if item.get("first_row") else "")
        lines.append((item["row"], item.get("email") or "", "duplicate", why))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["row", "email", "status", "error"])
    for row, email, status, error in sorted(lines, key=lambda line: line[0]):
        writer.writerow([row, neutralise(email), status, neutralise(error)])
    return out.getvalue()
