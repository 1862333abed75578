"""The drain: creates the bulk rows recorded while the queue was off (kill switch, fallback, Redis lost halfway).

Runs in the scheduled `bulk_drain` function (every minute, for at most `BULK_DRAIN_BUDGET_S`) and in every
consumer (a background loop, so the rows go as soon as a consumer is back). Its guarantees:
- **never doubled**: a row is claimed (`FOR UPDATE SKIP LOCKED`, status `processing`) by one drain at a time, and
  made by `provision()`, which locks the request and returns at once when it is already done (a job that landed
  in Redis after all, a retry, another drain);
- **never lost**: a claim is a lease (`BULK_DRAIN_LEASE_S`): a drain killed mid-row leaves it `processing`, and
  the next drain takes it again after the lease; a row that keeps failing fails visibly after `JOB_ATTEMPTS`;
- **the global rate limit**: each start passes the consumers' own `StartGate` (Redis, shared by every consumer).
  With Redis unreachable the drain paces itself at the same rate and says so (a WARNING): no consumer can
  start jobs then, and the scheduled drain runs as one instance, so the limit still holds.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from shared.bootstrap import Deps
from shared.bulk.upload import finish_batches
from shared.core import db
from shared.core.errors import DatabaseUnavailable
from shared.core.health import Level, record, record_detached
from shared.core.ratelimit import StartGate
from shared.creation.outbox import deliver_pending
from shared.creation.provisioning import provision

log = logging.getLogger(__name__)

_CLAIM = """
UPDATE creation_requests SET status = 'processing', updated_at = now()
WHERE id = (SELECT id FROM creation_requests
            WHERE batch_id IS NOT NULL AND mode = 'sync_direct' AND status IN ('queued', 'processing')
              AND (status = 'queued' OR updated_at < now() - make_interval(secs => %s))
            ORDER BY created_at, batch_row LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING id, attempts
"""


@dataclass
class DrainReport:
    """What one drain pass did (counts only)."""

    claimed: int = 0
    created: int = 0
    failed: int = 0
    already_done: int = 0
    errors: int = 0
    batches_finished: int = 0
    paced_locally: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON summary."""
        return {"claimed": self.claimed, "created": self.created, "failed": self.failed,
                "already_done": self.already_done, "errors": self.errors,
                "batches_finished": self.batches_finished, "paced_locally": self.paced_locally}


def gate_key(deps: Deps) -> str:
    """The consumers' start-gate key: the drain and the consumers share one limit."""
    return f"{deps.settings.queue_prefix}:{deps.settings.queue_name}:provisioner:starts"


class _Pacer:
    """The shared Redis gate; once Redis cannot be reached, the same sliding window kept in this process."""

    def __init__(self, gate: StartGate) -> None:
        self.gate = gate
        self.window_s = gate.duration_ms / 1000
        self.local_since: str | None = None
        self._starts: collections.deque[float] = collections.deque()
        self._lock = asyncio.Lock()

    async def acquire(self) -> int | None:
        """Wait for a start; the start time (epoch ms) it was granted at, None when the limit is off."""
        if self.local_since is None:
            try:
                return await self.gate.acquire()
            except Exception as exc:
                self.local_since = type(exc).__name__
        if self.gate.max_starts <= 0:
            return None
        async with self._lock:  # the gate's own rule: at most max starts in any window, a 2 ms margin
            while True:
                now = time.monotonic()
                while self._starts and self._starts[0] <= now - self.window_s - 0.002:
                    self._starts.popleft()
                if len(self._starts) < self.gate.max_starts:
                    break
                await asyncio.sleep(self._starts[0] + self.window_s + 0.002 - now)
            self._starts.append(time.monotonic())
            return int(time.time() * 1000)


async def drain(deps: Deps, *, budget_s: float, name: str, gate: StartGate | None = None,
                stop: asyncio.Event | None = None) -> DrainReport:
    """Create drain rows for at most `budget_s` (or until none is left, or `stop` is set: the row in hand is
    finished, no new one is claimed), `CONSUMER_CONCURRENCY` at a time."""
    s = deps.settings
    pacer = _Pacer(gate or StartGate(deps.queue.client, gate_key(deps), s.rate_limit_max, s.rate_limit_duration_ms))
    report = DrainReport()
    deadline = time.monotonic() + budget_s

    async def worker() -> None:
        while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
            async with db.connection(deps.pool) as conn:
                cur = await conn.execute(_CLAIM, (s.bulk_drain_lease_s,))
                claimed = await cur.fetchone()
            if claimed is None:
                return
            report.claimed += 1
            await _one(deps, claimed["id"], int(claimed["attempts"]), pacer, name, report)

    await asyncio.gather(*(worker() for _ in range(s.consumer_concurrency)))
    if pacer.local_since is not None:
        report.paced_locally = True
        await record_detached(deps.pool, Level.WARNING, "bulk_drain_local_pacing",
                              f"the drain could not reach the Redis rate-limit gate ({pacer.local_since}); "
                              "it paced itself at the configured rate",
                              {"drain": name, "error": pacer.local_since}, source=deps.source)
    report.batches_finished = await finish_batches(deps)
    if report.claimed:
        await record_detached(deps.pool, Level.INFO, "bulk_drained",
                              f"drain {name} created {report.created} user(s) from bulk uploads",
                              {"drain": name, **report.to_dict()}, source=deps.source)
    return report


async def _one(deps: Deps, request_id: str, attempts: int, pacer: _Pacer, name: str, report: DrainReport) -> None:
    started_ms = await pacer.acquire()
    async with db.connection(deps.pool) as conn:
        cur = await conn.execute(
            "INSERT INTO creation_attempts (request_id, attempt, consumer, started_at)"
            " VALUES (%s, %s, %s, COALESCE(to_timestamp(%s / 1000.0), clock_timestamp())) RETURNING id",
            (request_id, attempts + 1, name, started_ms))
        attempt_id = (await cur.fetchone() or {}).get("id")
    try:
        outcome = await provision(deps.pool, request_id, source=deps.source, via="drain")
    except DatabaseUnavailable:
        raise
    except Exception as exc:
        report.errors += 1
        await _failed_attempt(deps, request_id, attempt_id, attempts + 1, exc)
        return
    result = "already_done" if outcome.already_done else outcome.status
    async with db.connection(deps.pool) as conn:
        await conn.execute("UPDATE creation_attempts SET finished_at = clock_timestamp(), outcome = %s, error = %s"
                           " WHERE id = %s", (result, outcome.error_code, attempt_id))
    if outcome.already_done:
        report.already_done += 1
    elif outcome.status == "created" and outcome.user is not None:
        report.created += 1
        try:
            await deliver_pending(deps.pool, deps.mailer, deps.settings, source=deps.source,
                                  user_id=outcome.user["id"], limit=1)
        except DatabaseUnavailable:
            log.warning("welcome email left in the outbox for request %s", request_id)
    else:
        report.failed += 1


async def _failed_attempt(deps: Deps, request_id: str, attempt_id: int | None, attempt: int,
                          exc: Exception) -> None:
    """Counted; the row stays claimed until its lease ends (then retried), or fails for good at the last try."""
    final = attempt >= deps.settings.job_attempts
    error = f"attempt {attempt} of {deps.settings.job_attempts} failed: {type(exc).__name__}"
    async with db.connection(deps.pool) as conn, conn.transaction():
        await conn.execute(
            "UPDATE creation_requests SET attempts = attempts + 1, error_code = 'creation_error', error = %s,"
            " status = CASE WHEN %s THEN 'failed' ELSE status END, updated_at = now()"
            " WHERE id = %s AND status IN ('queued', 'processing')", (error, final, request_id))
        await conn.execute("UPDATE creation_attempts SET finished_at = clock_timestamp(), outcome = %s, error = %s"
                           " WHERE id = %s", ("failed" if final else "retry", type(exc).__name__, attempt_id))
        meta = {"request_id": request_id, "attempt": attempt, "max_attempts": deps.settings.job_attempts,
                "error": type(exc).__name__, "via": "drain"}
        if final:
            await record(conn, Level.ERROR, "creation_failed",
                         f"user creation failed for good after {attempt} attempts ({type(exc).__name__})", meta,
                         source=deps.source)
        else:
            await record(conn, Level.WARNING, "creation_retry",
                         f"user creation attempt {attempt} failed ({type(exc).__name__}); the drain retries it "
                         f"after {deps.settings.bulk_drain_lease_s:g} s", meta, source=deps.source)


async def drain_forever(deps: Deps, gate: StartGate, *, name: str, stop: asyncio.Event) -> None:
    """The consumer's loop: drain whenever there is work, look again every `BULK_DRAIN_IDLE_S`; once `stop` is
    set (the consumer shuts down) it finishes the rows in hand and claims no more."""
    failing = False
    while not stop.is_set():
        claimed = 0
        try:
            report = await drain(deps, budget_s=deps.settings.bulk_drain_budget_s, name=name, gate=gate, stop=stop)
            claimed, failing = report.claimed, False
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("bulk drain pass of %s failed (%s); trying again", name, type(exc).__name__)
            if not failing:  # one event per failing spell, not one per pass
                failing = True
                await record_detached(deps.pool, Level.WARNING, "bulk_drain_failed",
                                      f"bulk drain pass of {name} failed ({type(exc).__name__}); retrying",
                                      {"drain": name, "error": type(exc).__name__}, source=deps.source)
        if not claimed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), deps.settings.bulk_drain_idle_s)
