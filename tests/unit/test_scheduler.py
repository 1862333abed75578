"""The local scheduler reads cron as Cloud Scheduler does, in UTC (the deployment's `time_zone`)."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest

from infra.manifest import load_manifest
from infra.render import DeployConfig
from local.scheduler import cron_matches

UTC = dt.UTC


def fires(expression: str, start: dt.datetime, days: int) -> list[dt.datetime]:
    """The days in [start, start + days) the expression fires on, at start's time of day."""
    return [start + dt.timedelta(days=n) for n in range(days)
            if cron_matches(expression, start + dt.timedelta(days=n))]


def at(*parts: int) -> dt.datetime:
    return dt.datetime(*parts, tzinfo=UTC)


def test_step_in_the_month_field_fires_every_other_month() -> None:
    months = [m for m in range(1, 13) if cron_matches("0 0 1 */2 *", at(2026, m, 1, 0, 0))]
    assert months == [1, 3, 5, 7, 9, 11]
    assert [m for m in range(1, 13) if cron_matches("0 0 1 2-12/3 *", at(2026, m, 1))] == [2, 5, 8, 11]


def test_day_of_month_or_day_of_week_when_both_are_restricted() -> None:
    # "0 0 13 * 5": the 13th of every month AND every Friday (cron's OR), not only a Friday the 13th.
    days = [d.day for d in fires("0 0 13 * 5", at(2026, 3, 1), 31)]
    assert days == [6, 13, 20, 27]  # Fridays 6, 13, 20, 27 of March 2026; the 13th is one of them
    days = [d.day for d in fires("0 0 13 * 1", at(2026, 3, 1), 31)]
    assert days == [2, 9, 13, 16, 23, 30]  # the Mondays, plus Friday the 13th
    # With one field left at '*', only the other one restricts.
    assert [d.day for d in fires("0 0 * * 1", at(2026, 3, 1), 31)] == [2, 9, 16, 23, 30]


def test_names_of_days_and_months() -> None:
    assert [d.day for d in fires("30 6 * * MON", at(2026, 11, 23, 6, 30), 7)] == [23]
    assert [d.day for d in fires("30 6 * * mon-wed", at(2026, 11, 23, 6, 30), 7)] == [23, 24, 25]
    assert [m for m in range(1, 13) if cron_matches("0 0 1 JAN,JUL *", at(2026, m, 1))] == [1, 7]


def test_seven_and_zero_both_mean_sunday() -> None:
    sunday = at(2026, 11, 29, 3, 0)
    assert sunday.weekday() == 6
    assert cron_matches("0 3 * * 7", sunday) and cron_matches("0 3 * * 0", sunday)
    assert cron_matches("0 3 * * SUN", sunday)
    assert not cron_matches("0 3 * * 7", sunday + dt.timedelta(days=1))
    assert [d.day for d in fires("0 3 * * 5-7", at(2026, 11, 23, 3, 0), 7)] == [27, 28, 29]


def test_the_minute_is_read_in_utc_not_local_time() -> None:
    new_york = zoneinfo.ZoneInfo("America/New_York")
    # 03:00 UTC is 22:00 the evening before in New York: the UTC hour decides.
    local = dt.datetime(2026, 11, 28, 22, 0, tzinfo=new_york)
    assert local.astimezone(UTC) == at(2026, 11, 29, 3, 0)
    assert cron_matches("0 3 * * *", local)
    assert not cron_matches("0 22 * * *", local)
    assert cron_matches("0 3 * * *", dt.datetime(2026, 11, 29, 3, 0))  # naive: taken as UTC


def test_the_local_scheduler_uses_the_deployments_time_zone() -> None:
    assert DeployConfig(project="p").scheduler_time_zone == "Etc/UTC"
    schedules = [spec.schedule for spec in load_manifest().values() if spec.schedule]
    assert schedules
    for schedule in schedules:  # each parses and fires within a day
        start = at(2026, 11, 23)
        assert any(cron_matches(schedule, start + dt.timedelta(minutes=m)) for m in range(24 * 60))


@pytest.mark.parametrize("expression", ["61 * * * *", "* * * * 8", "* * 0 * *", "* *", "not cron at all"])
def test_a_bad_expression_is_refused(expression: str) -> None:
    with pytest.raises(ValueError):
        cron_matches(expression, at(2026, 1, 1))
