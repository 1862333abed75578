"""`GET /metrics`: the Prometheus text exposition, derived from PostgreSQL and Redis on every scrape.

Functions run as many short-lived instances, so per-process counters (`prometheus_client.Counter`) would each
see a sliver and reset at every cold start. Instead a `Collector` renders one snapshot read from the shared state
(request and email rows, attempt timings, BullMQ counts, consumer heartbeats) into a fresh `CollectorRegistry`:
any instance answers the same numbers. Histograms are computed in SQL (a count per `le` bound), so a scrape
moves a few numbers, not the rows. Labels are fixed words (outcome, state, event): never an address or a name.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.bootstrap import Deps
from shared.core import db
from shared.operations.admin import redis_view

# Job durations run from a few ms (a user row) to seconds (SES, retries); queue waits up to minutes.
JOB_DURATION_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
QUEUE_WAIT_BOUNDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


@dataclass(frozen=True, slots=True)
class Histogram:
    """Cumulative counts per upper bound, total count and sum (seconds)."""

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]
    count: int
    total: float

    def buckets(self) -> list[tuple[str, float]]:
        """`prometheus_client`'s shape: (le, cumulative count), ending with +Inf = count."""
        return [*((_le(b), float(c)) for b, c in zip(self.bounds, self.cumulative, strict=True)),
                ("+Inf", float(self.count))]


def _le(bound: float) -> str:
    return repr(float(bound))


@dataclass(slots=True)
class Snapshot:
    """Everything one scrape exports."""

    requests: dict[str, int] = field(default_factory=dict)
    requests_pending: int = 0
    emails: dict[str, int] = field(default_factory=dict)
    emails_pending: int = 0
    fallback_active: bool = False
    redis_up: bool = False
    queue_jobs: dict[str, int] | None = None
    consumers_alive: int | None = None
    alerts_firing: dict[str, bool] = field(default_factory=dict)
    job_duration: Histogram | None = None
    queue_wait: Histogram | None = None


_TOTALS = """
SELECT
  (SELECT count(*) FROM creation_requests WHERE status = 'created') AS created,
  (SELECT count(*) FROM creation_requests WHERE status = 'failed') AS failed,
  (SELECT count(*) FROM creation_requests WHERE status IN ('queued', 'processing')) AS pending,
  (SELECT count(*) FROM creation_requests WHERE fallback AND created_at > now() - %(window)s) AS recent_fallbacks,
  (SELECT count(*) FROM email_outbox WHERE status = 'sent') AS emails_sent,
  (SELECT count(*) FROM email_outbox WHERE status = 'failed') AS emails_failed,
  (SELECT count(*) FROM email_outbox WHERE status = 'pending') AS emails_pending
"""

# One pass over the observations; a count per `le` bound (Prometheus buckets are cumulative and inclusive).
_HISTOGRAM = """
WITH obs AS ({observations}), bounds AS (SELECT unnest(%(bounds)s::float8[]) AS le)
SELECT (SELECT count(*) FROM obs) AS count, (SELECT coalesce(sum(v), 0) FROM obs) AS total,
       ARRAY(SELECT count(obs.v) FROM bounds LEFT JOIN obs ON obs.v <= bounds.le GROUP BY bounds.le
             ORDER BY bounds.le) AS cumulative
"""

JOB_DURATIONS = ("SELECT extract(epoch FROM finished_at - started_at)::float8 AS v FROM creation_attempts"
                 " WHERE finished_at IS NOT NULL")
# Queue wait: from the request's record to the start of its first try (the consumer's first attempt row).
QUEUE_WAITS = ("SELECT DISTINCT ON (a.request_id) extract(epoch FROM a.started_at - r.created_at)::float8 AS v"
               " FROM creation_attempts a JOIN creation_requests r ON r.id = a.request_id"
               " ORDER BY a.request_id, a.id")


async def _histogram(conn: Any, observations: str, bounds: tuple[float, ...]) -> Histogram:
    cur = await conn.execute(_HISTOGRAM.format(observations=observations), {"bounds": list(bounds)})
    row = await cur.fetchone()
    return Histogram(bounds, tuple(int(c) for c in row["cumulative"]), int(row["count"]), float(row["total"]))


async def take_snapshot(deps: Deps) -> Snapshot:
    """Read the shared state once (Redis bounded: a dead Redis costs < 1 s and shows as `provisioner_redis_up 0`)."""
    snap = Snapshot()
    redis, counts, consumers = await redis_view(deps)
    snap.redis_up = bool(redis["available"])
    if snap.redis_up:
        snap.queue_jobs, snap.consumers_alive = counts, len(consumers)
    async with db.connection(deps.pool) as conn:
        cur = await conn.execute(_TOTALS, {"window": timedelta(seconds=deps.settings.alert_window_s)})
        row = await cur.fetchone() or {}
        snap.requests = {"created": int(row["created"]), "failed": int(row["failed"])}
        snap.requests_pending = int(row["pending"])
        snap.fallback_active = int(row["recent_fallbacks"]) > 0
        snap.emails = {"sent": int(row["emails_sent"]), "failed": int(row["emails_failed"])}
        snap.emails_pending = int(row["emails_pending"])
        cur = await conn.execute("SELECT key, firing FROM alert_states ORDER BY key")
        snap.alerts_firing = {r["key"]: bool(r["firing"]) for r in await cur.fetchall()}
        snap.job_duration = await _histogram(conn, JOB_DURATIONS, JOB_DURATION_BOUNDS)
        snap.queue_wait = await _histogram(conn, QUEUE_WAITS, QUEUE_WAIT_BOUNDS)
    return snap


class SnapshotCollector(Collector):
    """Renders one snapshot as metric families."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        """The families CONTRACT.md names, and a few that explain them."""
        s = self.snap
        requests = CounterMetricFamily("provisioner_requests", "Creation requests finished, by outcome",
                                       labels=["outcome"])
        for outcome, value in s.requests.items():
            requests.add_metric([outcome], value)
        yield requests
        yield GaugeMetricFamily("provisioner_requests_pending", "Creation requests queued or processing",
                                value=s.requests_pending)
        emails = CounterMetricFamily("provisioner_emails", "Welcome emails by outcome (failed: given up)",
                                     labels=["outcome"])
        for outcome, value in s.emails.items():
            emails.add_metric([outcome], value)
        yield emails
        yield GaugeMetricFamily("provisioner_emails_pending", "Welcome emails waiting in the outbox",
                                value=s.emails_pending)
        yield GaugeMetricFamily("provisioner_fallback_active",
                                "1 while requests are served by the automatic fallback (within ALERT_WINDOW_S)",
                                value=int(s.fallback_active))
        yield GaugeMetricFamily("provisioner_redis_up", "1 when Redis answered this scrape", value=int(s.redis_up))
        jobs = GaugeMetricFamily("provisioner_queue_jobs", "BullMQ jobs by state (absent while Redis is down)",
                                 labels=["state"])
        for state, value in (s.queue_jobs or {}).items():
            jobs.add_metric([state], value)
        yield jobs
        if s.consumers_alive is not None:
            yield GaugeMetricFamily("provisioner_consumers_alive", "Consumers with a fresh heartbeat",
                                    value=s.consumers_alive)
        alerts = GaugeMetricFamily("provisioner_alert_firing", "1 while the alert condition fires", labels=["event"])
        for event, firing in s.alerts_firing.items():
            alerts.add_metric([event], int(firing))
        yield alerts
        for name, doc, hist in (
                ("provisioner_job_duration_seconds", "Consumer job tries, start to finish", s.job_duration),
                ("provisioner_queue_wait_seconds", "From request recorded to the start of its first try",
                 s.queue_wait)):
            if hist is not None:
                yield HistogramMetricFamily(name, doc, buckets=hist.buckets(), sum_value=hist.total)


async def exposition(deps: Deps) -> bytes:
    """The text format of one fresh snapshot."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(await take_snapshot(deps)))
    return bytes(generate_latest(registry))
