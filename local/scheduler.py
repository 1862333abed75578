"""The local stand-in for Cloud Scheduler: fires scheduled functions when their cron expression matches."""

from __future__ import annotations

import datetime as dt
import threading
import urllib.error
import urllib.request
from collections.abc import Callable

from cronsim import CronSim, CronSimError

from infra.manifest import FunctionSpec


def cron_matches(expression: str, when: dt.datetime) -> bool:
    """Whether a five-field cron expression fires at the minute of `when`, read in UTC as Cloud Scheduler's jobs
    are deployed (`time_zone = "Etc/UTC"`); a naive `when` is taken as UTC.

    Parsing is cronsim's (Vixie cron semantics: `*/n` in any field, names such as MON and JAN, 0 or 7 = Sunday,
    day of month OR day of week when both are restricted): a hand-made parser got those wrong.
    """
    minute = (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).astimezone(dt.UTC).replace(second=0,
                                                                                                 microsecond=0)
    try:
        return next(CronSim(expression, minute - dt.timedelta(minutes=1))) == minute
    except CronSimError as err:
        raise ValueError(f"bad cron expression {expression!r}: {err}") from None


def fire(gateway: str, spec: FunctionSpec, token: str) -> int:
    """POST to the scheduled function's route through the gateway, as Cloud Scheduler would (with a token)."""
    route = spec.routes[0]
    request = urllib.request.Request(gateway + route.path, method=route.method, data=b"",  # noqa: S310
                                     headers={"Authorization": f"Bearer {token}", "User-Agent": "local-scheduler"})
    try:
        with urllib.request.urlopen(request, timeout=spec.timeout_s) as answer:  # noqa: S310
            return int(answer.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


class SchedulerTick(threading.Thread):
    """Once a minute (UTC), fires every scheduled function whose cron expression matches that minute."""

    def __init__(self, gateway: str, specs: list[FunctionSpec], token: Callable[[], str],
                 report: Callable[[str], None]) -> None:
        super().__init__(daemon=True, name="scheduler-tick")
        self.gateway, self.specs, self.token, self.report = gateway, specs, token, report
        self.stopped = threading.Event()

    def run(self) -> None:
        """Wait for each minute boundary, then fire what is due."""
        while not self.stopped.is_set():
            now = dt.datetime.now(dt.UTC)
            wait = 60 - now.second - now.microsecond / 1e6
            if self.stopped.wait(wait):
                return
            minute = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
            for spec in self.specs:
                if spec.schedule and cron_matches(spec.schedule, minute):
                    status = fire(self.gateway, spec, self.token())
                    self.report(f"scheduler fired {spec.name} ({spec.schedule}): HTTP {status}")
