"""Stand-in for Cloud Scheduler: each rendered job fires on its cron schedule (UTC) on a clock running `factor`
times faster than real time, POSTing to the job's URI with a Google-signed ID token of the job's service account
for the job's audience, as the rendered `oidc_token` says. `run_now` is `gcloud scheduler jobs run`."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass

import httpx

from local.rehearsal.cloud_run import proxy_client
from local.rehearsal.google_identity import GoogleIdentity
from local.rehearsal.rendered import SchedulerJob
from local.scheduler import cron_matches


@dataclass
class Firing:
    """One attempt of a job."""

    job: str
    at: float
    status: int


class Scheduler:
    """Fires the jobs; `firings` is what happened."""

    def __init__(self, jobs: list[SchedulerJob], identity: GoogleIdentity, factor: float) -> None:
        self.jobs = {job.key: job for job in jobs}
        self.identity = identity
        self.factor = factor
        self.firings: list[Firing] = []
        self.client = proxy_client()

    async def run_now(self, key: str) -> int:
        """Fire one job now; its HTTP status (0: no answer within the attempt deadline)."""
        job = self.jobs[key]
        token = self.identity.id_token(job.service_account, job.audience)
        try:
            answer = await self.client.request(job.method, job.uri, headers={
                "Authorization": f"Bearer {token}", "User-Agent": "Google-Cloud-Scheduler"},
                timeout=job.deadline_s)
            status = answer.status_code
        except httpx.HTTPError:
            status = 0
        self.firings.append(Firing(key, time.time(), status))
        return status

    async def run(self) -> None:
        """Forever: at each minute boundary of the fast clock, fire the jobs whose schedule matches it."""
        start_real = time.monotonic()
        start_virtual = dt.datetime.now(dt.UTC)
        last = start_virtual.replace(second=0, microsecond=0)
        tasks: set[asyncio.Task[int]] = set()
        while True:
            await asyncio.sleep(0.2)
            now = start_virtual + dt.timedelta(seconds=(time.monotonic() - start_real) * self.factor)
            minute = now.replace(second=0, microsecond=0)
            while last < minute:
                last += dt.timedelta(minutes=1)
                for key, job in self.jobs.items():
                    if cron_matches(job.schedule, last):
                        task = asyncio.create_task(self.run_now(key))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
