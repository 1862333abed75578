"""The queue consumer: turns queued creation requests into users, visibly alive or visibly gone.

Semantics (all configurable): `CONSUMER_CONCURRENCY` jobs at once per instance; at most `RATE_LIMIT_MAX` job
starts per `RATE_LIMIT_DURATION_MS` across every instance (a Redis sliding window, see `ratelimit`); retries with
exponential backoff (BullMQ job options); a job whose consumer died is picked up again by BullMQ's stalled
check; a heartbeat every few seconds; a reconciler that re-enqueues what Redis lost.

Pitfalls of the Python `bullmq` worker designed around (and pinned by tests):
- its blocking wait outlives redis-py 8's default 5 s socket timeout, after which it backs off for minutes:
  the worker's client gets a 15 s socket timeout and `drainDelay` 1 s;
- its limiter is only re-checked after the blocking wait (about 2 jobs/s instead of 10): not used; the gate is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

import redis.asyncio as aioredis
from bullmq import UnrecoverableError, Worker
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from shared.bootstrap import Deps
from shared.core import db, tracing
from shared.core.errors import DatabaseUnavailable, NotFound
from shared.core.health import Level, record, record_detached
from shared.core.ratelimit import StartGate
from shared.creation.job_tracing import job_span
from shared.creation.limits import LimitsFollower
from shared.creation.outbox import claim_lease_s, deliver_pending, send_claimed
from shared.creation.provisioning import provision
from shared.creation.queueing import JobQueue
from shared.creation.reconciler import reconcile

log = logging.getLogger(__name__)

LIMITS_POLL_S = 0.5  # a change of the runtime limits is obeyed within this (+ one job's duration)
WORKER_SOCKET_TIMEOUT_S = 15  # must exceed the worker's longest blocking wait (10 s)


class _Worker(Worker):  # type: ignore[misc]
    """BullMQ's worker, telling us when its first poll of the queue has returned."""

    on_first_poll: Callable[[], None] | None = None

    async def getNextJob(self, token: str) -> Any:
        job = await super().getNextJob(token)
        if self.on_first_poll is not None:
            callback, self.on_first_poll = self.on_first_poll, None
            callback()
        return job


class JobAttemptFailed(Exception):
    """The only error BullMQ sees for a failed attempt: the underlying type's name and a fixed message."""


class DrainLoop(Protocol):
    """A loop the consumer runs beside its worker until `stop` is set (the bulk drain)."""

    def __call__(self, deps: Deps, gate: StartGate, *, name: str, stop: asyncio.Event) -> Coroutine[Any, Any, None]: ...


def worker_client(url: str) -> aioredis.Redis:
    """The consumer's Redis client: long enough socket timeout for blocking waits, a short retry."""
    return aioredis.Redis.from_url(
        url, decode_responses=True, socket_timeout=WORKER_SOCKET_TIMEOUT_S, socket_connect_timeout=5,
        retry=Retry(ExponentialBackoff(cap=2, base=0.1), 3), health_check_interval=0, max_connections=64,
    )


class Consumer:
    """One consumer instance. `await start()`, then `await wait()`; `request_stop()` from a signal handler."""

    def __init__(self, deps: Deps, name: str | None = None, *, drain: DrainLoop | None = None) -> None:
        self.deps = deps
        self.drain = drain  # the bulk drain loop (shared.bulk.drain.drain_forever), handed in by functions/consumer
        self.settings = deps.settings
        tracing.setup(self.settings, "consumer")
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.client = worker_client(str(self.settings.redis_url))
        self.queue = JobQueue(self.client, self.settings)
        base = f"{self.settings.queue_prefix}:{self.settings.queue_name}"
        self.gate = StartGate(self.client, f"{base}:provisioner:starts", self.settings.rate_limit_max,
                              self.settings.rate_limit_duration_ms)
        self.limits = LimitsFollower(deps.pool, self.settings)
        self.in_flight = 0
        self.worker: _Worker | None = None
        self.first_poll = asyncio.Event()
        self.stop_requested = asyncio.Event()
        self.force_requested = asyncio.Event()
        self.last_job_at = 0.0
        self.started_at = time.time()
        self._tasks: list[asyncio.Task[None]] = []
        self._run_task: asyncio.Task[Any] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def start(self, *, first_poll_timeout_s: float = 15.0) -> None:
        """Connect, reconcile, start the worker and the loops; returns once the first poll came back.

        Raises (and leaves an ERROR event) when Redis or PostgreSQL cannot be reached: a consumer that
        cannot work must fail loudly at start, never idle silently.
        """
        try:
            await asyncio.wait_for(self.client.ping(), 10)
            await self.deps.pool.wait(timeout=10)
        except Exception as exc:
            await record_detached(self.deps.pool, Level.ERROR, "consumer_start_failed",
                                  f"consumer {self.name} could not connect ({type(exc).__name__})",
                                  {"consumer": self.name, "error": type(exc).__name__}, source=self.deps.source)
            raise
        await self._reconcile_once()
        await self._follow_limits()
        s = self.settings
        opts: dict[str, Any] = {
            "connection": self.client, "prefix": s.queue_prefix, "concurrency": self.limits.current.concurrency,
            "drainDelay": 1, "runRetryDelay": 1000, "autorun": False, "name": self.name,
            "lockDuration": s.consumer_lock_ms, "stalledInterval": s.consumer_stalled_interval_ms,
            "maxStalledCount": s.consumer_max_stalled,
            "removeOnComplete": {"count": s.keep_completed}, "removeOnFail": {"count": s.keep_failed},
        }
        self.worker = _Worker(s.queue_name, self._process, opts)
        self.worker.on_first_poll = self.first_poll.set
        self._run_task = asyncio.create_task(self.worker.run(), name="bullmq-worker")
        await self._heartbeat()
        if self.drain is not None:  # bulk rows recorded while the queue was off
            self._tasks.append(asyncio.create_task(
                self.drain(self.deps, self.gate, name=f"drain/{self.name}", stop=self.stop_requested),
                name="bulk-drain"))
        for coro, name in ((self._every(s.consumer_heartbeat_s, self._heartbeat), "heartbeat"),
                           (self._every(s.reconcile_interval_s, self._reconcile_once), "reconciler"),
                           (self._every(s.outbox_interval_s, self._deliver_outbox), "outbox"),
                           (self._every(LIMITS_POLL_S, self._follow_limits), "limits")):
            self._tasks.append(asyncio.create_task(coro, name=name))
        try:
            await asyncio.wait_for(self.first_poll.wait(), first_poll_timeout_s)
        except TimeoutError:
            await record_detached(self.deps.pool, Level.ERROR, "consumer_start_failed",
                                  f"consumer {self.name} never completed its first poll of the queue",
                                  {"consumer": self.name}, source=self.deps.source)
            raise
        await record_detached(
            self.deps.pool, Level.INFO, "consumer_started",
            f"consumer {self.name} connected and polling queue {s.queue_name}",
            {"consumer": self.name, "concurrency": self.limits.current.concurrency,
             "rate_limit": {"max": self.gate.max_starts, "duration_ms": self.gate.duration_ms}},
            source=self.deps.source)
        log.info("consumer %s started", self.name)

    def request_stop(self) -> None:
        """First call: stop taking jobs and finish the running ones. Second call: stop now."""
        if self.stop_requested.is_set():
            self.force_requested.set()
        self.stop_requested.set()

    async def wait(self) -> int:
        """Run until a stop is requested (exit code 0) or the worker loop dies (exit code 1)."""
        if self._run_task is None:
            raise RuntimeError("start() must run before wait()")
        stop = asyncio.create_task(self.stop_requested.wait())
        done, _ = await asyncio.wait({stop, self._run_task}, return_when=asyncio.FIRST_COMPLETED)
        died = self._run_task in done and not self.stop_requested.is_set()
        stop.cancel()
        if died:
            await record_detached(self.deps.pool, Level.ERROR, "consumer_died",
                                  f"consumer {self.name}: the worker loop ended unexpectedly",
                                  {"consumer": self.name}, source=self.deps.source)
        await self.shutdown()
        return 1 if died else 0

    async def shutdown(self) -> None:
        """Stop taking jobs; finish running ones within the grace period (or until a second stop), then exit.
        Jobs cut off stay locked in Redis and return to the queue through the stalled check: never lost."""
        in_flight_at_stop = self.in_flight
        if self.worker is not None:
            closing = asyncio.create_task(self.worker.close())
            force = asyncio.create_task(self.force_requested.wait())
            done, _ = await asyncio.wait({closing, force}, timeout=self.settings.consumer_shutdown_grace_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            force.cancel()
            if closing not in done:
                log.warning("consumer %s: forcing shutdown; unfinished jobs return to the queue", self.name)
                await self.worker.close(force=True)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(closing, 5)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._run_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._run_task, 5)
        try:
            await asyncio.wait_for(self.queue.forget_consumer(self.name), 2)
        except Exception as exc:
            log.warning("consumer %s: could not remove its heartbeat (%s)", self.name, type(exc).__name__)
        await record_detached(self.deps.pool, Level.INFO, "consumer_stopped", f"consumer {self.name} stopped",
                              {"consumer": self.name, "jobs_in_flight_at_stop": in_flight_at_stop,
                               "jobs_cut_off": self.in_flight},
                              source=self.deps.source)
        await self.client.aclose()

    # -- loops -----------------------------------------------------------------------------------------------

    async def _every(self, interval_s: float, action: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await action()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("consumer %s: periodic %s failed", self.name, getattr(action, "__name__", action))

    async def _heartbeat(self) -> None:
        await self.queue.heartbeat(self.name, {"started_at": int(self.started_at * 1000), "pid": os.getpid(),
                                               "host": socket.gethostname(),
                                               "last_job_at": int(self.last_job_at * 1000) or ""})

    async def _reconcile_once(self) -> None:
        report = await reconcile(self.deps.pool, self.queue, grace_s=self.settings.reconcile_grace_s,
                                 source=self.deps.source)
        if report.checked:
            log.info("consumer %s: reconciled %s", self.name, report.to_dict())

    async def _follow_limits(self) -> None:
        """Obey the stored runtime limits: the global start rate, and how many jobs this worker runs at once
        (BullMQ's loop reads `opts["concurrency"]` before each fetch, so a change applies without a restart)."""
        limits, changed = await self.limits.refresh()
        self.gate.max_starts, self.gate.duration_ms = limits.rate_limit_max, limits.rate_limit_duration_ms
        if self.worker is not None:
            self.worker.opts["concurrency"] = limits.concurrency
        if changed:
            log.info("consumer %s: runtime limits now %s", self.name, limits.values())

    async def _deliver_outbox(self) -> None:
        await deliver_pending(self.deps.pool, self.deps.mailer, self.settings, source=self.deps.source)

    # -- one job ---------------------------------------------------------------------------------------------

    async def _process(self, job: Any, token: str) -> dict[str, Any]:
        self.in_flight += 1
        try:
            async with job_span(self.deps.pool, job):  # a child of the request's trace
                return await self._process_one(job)
        except UnrecoverableError:
            raise  # raised by us with a fixed text
        except Exception as exc:
            # BullMQ keeps str(error) and the formatted traceback (chained causes included) in the job hash and
            # the events stream; a PostgreSQL DETAIL can hold a whole row. Hand it the type and a fixed text.
            raise JobAttemptFailed(f"creation attempt failed ({type(exc).__name__})") from None
        finally:
            self.in_flight -= 1

    async def _process_one(self, job: Any) -> dict[str, Any]:
        data = job.data if isinstance(job.data, dict) else {}
        request_id = data.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            raise UnrecoverableError("job data has no request id")
        attempt = int(job.attemptsMade) + 1
        max_attempts = int(job.opts.get("attempts", 1) or 1)
        started_ms = await self.gate.acquire()
        self.last_job_at = time.time()
        attempt_id = await self._attempt_started(request_id, attempt, started_ms)
        try:
            # One statement: the user, its claimed outbox row, the events, and this attempt's end.
            outcome = await provision(self.deps.pool, request_id, source=self.deps.source, via="consumer",
                                      claim_email=True, attempt_id=attempt_id,
                                      email_lease_s=claim_lease_s(self.settings))
        except NotFound:
            raise UnrecoverableError("no such creation request") from None
        except Exception as exc:
            await self._attempt_failed(request_id, attempt_id, attempt, max_attempts, exc)
            raise
        if outcome.status == "failed":
            raise UnrecoverableError(outcome.error_code or "failed")
        if outcome.email is not None:
            try:  # SES is called with no transaction open; one more statement records the result
                await send_claimed(self.deps.pool, self.deps.mailer, self.settings, outcome.email,
                                   source=self.deps.source)
            except DatabaseUnavailable:
                log.warning("welcome email left in the outbox for request %s", request_id)
        return {"user_id": outcome.user["id"] if outcome.user else None}

    async def _attempt_started(self, request_id: str, attempt: int, started_ms: int | None) -> int | None:
        """The request -> processing and its attempt row, one statement (visible while the attempt runs)."""
        async with db.connection(self.deps.pool) as conn:
            cur = await conn.execute(_ATTEMPT_STARTED, {"id": request_id, "attempt": attempt, "consumer": self.name,
                                                        "started_ms": started_ms})
            row = await cur.fetchone()
        return int(row["id"]) if row else None

    async def _attempt_failed(self, request_id: str, attempt_id: int | None, attempt: int, max_attempts: int,
                              exc: Exception) -> None:
        final = attempt >= max_attempts
        error = f"attempt {attempt} of {max_attempts} failed: {type(exc).__name__}"
        delay_ms = self.settings.job_backoff_ms * 2 ** (attempt - 1)
        try:
            async with db.connection(self.deps.pool) as conn, conn.transaction():
                await conn.execute(
                    "UPDATE creation_requests SET status = %s, attempts = attempts + 1, error_code = %s, error = %s,"
                    " updated_at = now() WHERE id = %s AND status IN ('queued', 'processing')",
                    ("failed" if final else "queued", "creation_error", error, request_id))
                if attempt_id is not None:
                    await conn.execute("UPDATE creation_attempts SET finished_at = clock_timestamp(), outcome = %s,"
                                       " error = %s WHERE id = %s", ("failed" if final else "retry",
                                                                      type(exc).__name__, attempt_id))
                meta = {"request_id": request_id, "attempt": attempt, "max_attempts": max_attempts,
                        "error": type(exc).__name__}
                if final:
                    await record(conn, Level.ERROR, "creation_failed",
                                 f"user creation failed for good after {attempt} attempts ({type(exc).__name__})",
                                 meta, source=self.deps.source)
                else:
                    await record(conn, Level.WARNING, "creation_retry",
                                 f"user creation attempt {attempt} failed ({type(exc).__name__}); "
                                 f"retry in {delay_ms / 1000:g} s", {**meta, "retry_in_ms": delay_ms},
                                 source=self.deps.source)
        except DatabaseUnavailable:
            log.error("consumer %s: attempt %s of %s failed and could not be recorded (database unavailable)",
                      self.name, attempt, request_id)


# The request -> processing (when not finished) and the attempt's row, in one statement.
_ATTEMPT_STARTED = (
    "WITH mark AS (UPDATE creation_requests SET status = 'processing', updated_at = now()"
    "  WHERE id = %(id)s AND status IN ('queued', 'processing'))"
    " INSERT INTO creation_attempts (request_id, attempt, consumer, started_at)"
    " SELECT id, %(attempt)s, %(consumer)s, COALESCE(to_timestamp(%(started_ms)s / 1000.0), clock_timestamp())"
    " FROM creation_requests WHERE id = %(id)s RETURNING id")
