"""The local stand-in for Cloud Scheduler: fires scheduled functions when their cron expression matches."""

from __future__ import annotations

import datetime as dt
import threading
import urllib.error
import urllib.request
from collections.abc import Callable

from infra.manifest import FunctionSpec


def _field_matches(expr: str, value: int) -> bool:
    for part in expr.split(","):
        step = 1
        if "/" in part:
            part, step_text = part.split("/", 1)
            step = int(step_text)
        if part == "*":
            if value % step == 0:
                return True
            continue
        if "-" in part:
            lo, hi = (int(x) for x in part.split("-", 1))
        else:
            lo = hi = int(part)
        if lo <= value <= hi and (value - lo) % step == 0:
            return True
    return False


def cron_matches(expression: str, when: dt.datetime) -> bool:
    """Minute, hour, day of month, month, day of week (0 = Sunday): numbers, ranges, lists, */n and *."""
    minute, hour, dom, month, dow = expression.split()
    return (_field_matches(minute, when.minute) and _field_matches(hour, when.hour)
            and _field_matches(dom, when.day) and _field_matches(month, when.month)
            and _field_matches(dow, (when.weekday() + 1) % 7))


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
    """Once a minute, fires every scheduled function whose cron expression matches that minute."""

    def __init__(self, gateway: str, specs: list[FunctionSpec], token: Callable[[], str],
                 report: Callable[[str], None]) -> None:
        super().__init__(daemon=True, name="scheduler-tick")
        self.gateway, self.specs, self.token, self.report = gateway, specs, token, report
        self.stopped = threading.Event()

    def run(self) -> None:
        """Wait for each minute boundary, then fire what is due."""
        while not self.stopped.is_set():
            now = dt.datetime.now()
            wait = 60 - now.second - now.microsecond / 1e6
            if self.stopped.wait(wait):
                return
            minute = dt.datetime.now().replace(second=0, microsecond=0)
            for spec in self.specs:
                if spec.schedule and cron_matches(spec.schedule, minute):
                    status = fire(self.gateway, spec, self.token())
                    self.report(f"scheduler fired {spec.name} ({spec.schedule}): HTTP {status}")
