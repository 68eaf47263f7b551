"""`claro check` and `claro schedules` read crons without Dagster (spec/cron.py); they must agree with Dagster's
scheduler exactly: the same crons valid, the same ticks, DST change days included."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from dagster._utils.schedules import is_valid_cron_string, schedule_execution_time_iterator

from claro_dagster.spec.cron import is_valid_cron, next_run_times

CRONS = [
    "0 * * * *", "30 * * * *", "0,30 * * * *", "*/15 * * * *", "0 */2 * * *", "0 1-3 * * *", "*/20 1,2 * * *",
    "0 2 * * *", "30 2 * * *", "30 1 * * *", "0 0 * * *", "0 9 * * 1-5", "0 2 * * 1", "15 1 * * 0", "45 23 * * 6",
    "0 0 1 * *", "0 2 1 * *", "30 2 31 * *", "0 0 L * *", "0 0 * * 1#2", "0 0 29 2 *", "@daily", "@hourly",
    "@weekly",
]
# Clocks change at 01:00-03:00 (Europe, North America, Australia, New Zealand), at midnight (Havana, Santiago), by
# a quarter hour off the hour (Chatham), or not at all (Kolkata, Kathmandu, UTC). Not Lord Howe: its 30-minute
# change makes Dagster's hourly ticks depend on the offset on the day they are computed.
ZONES = ["Europe/London", "Europe/Berlin", "America/New_York", "Australia/Sydney", "Pacific/Auckland",
         "America/Havana", "America/Santiago", "Pacific/Chatham", "Asia/Kolkata", "Asia/Kathmandu", "UTC"]


def starts_around_changes(timezone: str) -> list[datetime]:
    """Times from 3 hours before to 2 hours after each DST change of 2026 in the zone, and a plain day."""
    zone, hour = ZoneInfo(timezone), timedelta(hours=1)
    changes = [t for t in (datetime(2026, 1, 1, tzinfo=UTC) + i * hour for i in range(365 * 24))
               if t.astimezone(zone).utcoffset() != (t - hour).astimezone(zone).utcoffset()]
    return [t + i * hour + timedelta(minutes=m) for t in [*changes, datetime(2026, 6, 15, tzinfo=UTC)]
            for i in range(-3, 3) for m in (0, 20)]


def dagster_ticks(cron: str, timezone: str, after: datetime, count: int) -> list[float] | None:
    ticks = []
    try:
        for tick in schedule_execution_time_iterator(after.timestamp(), cron, timezone):
            if tick.timestamp() > after.timestamp():
                ticks.append(tick.timestamp())
                if len(ticks) == count:
                    return ticks
    except Exception:  # Dagster's own invariant fails on a few midnight changes (Havana): nothing to compare
        return None


@pytest.mark.parametrize("cron", [*CRONS, "@reboot", "0 0 * * * *", "0 0 1 1 * 2027", "0 0 30 2 *", "0 0 31 2 *",
                                  "61 * * * *", "0 24 * * *", "a b c d e", "* * *", "0 0 * * 8", ""])
def test_a_cron_is_valid_when_dagster_accepts_it(cron):
    assert is_valid_cron(cron) == is_valid_cron_string(cron)


@pytest.mark.parametrize("timezone", ZONES)
def test_next_runs_are_the_ticks_dagsters_scheduler_runs(timezone):
    zone, compared, starts = ZoneInfo(timezone), 0, starts_around_changes(timezone)
    for cron in CRONS:
        for after in starts:
            expected = dagster_ticks(cron, timezone, after, 4)
            if expected is None:
                continue
            ours = next_run_times(cron, timezone, after, 4)
            assert [t.timestamp() for t in ours] == expected, (cron, after.isoformat())
            assert all(t.tzinfo == zone for t in ours)
            compared += 1
    assert compared > 0.98 * len(CRONS) * len(starts)


def test_a_skipped_local_time_runs_after_the_change_and_a_repeated_one_once():
    # Europe/London, 2026-03-29: 01:00-02:00 does not exist; 2026-10-25: 01:00-02:00 happens twice.
    spring = next_run_times("30 1 * * *", "Europe/London", datetime(2026, 3, 28, 12, tzinfo=UTC), 2)
    assert [t.isoformat() for t in spring] == ["2026-03-29T02:00:00+01:00", "2026-03-30T01:30:00+01:00"]
    autumn = next_run_times("30 1 * * *", "Europe/London", datetime(2026, 10, 24, 12, tzinfo=UTC), 2)
    assert [t.isoformat() for t in autumn] == ["2026-10-25T01:30:00+00:00", "2026-10-26T01:30:00+00:00"]
    hourly = next_run_times("30 * * * *", "Europe/London", datetime(2026, 10, 24, 23, 45, tzinfo=UTC), 3)
    assert [t.isoformat() for t in hourly] == ["2026-10-25T01:30:00+01:00", "2026-10-25T01:30:00+00:00",
                                               "2026-10-25T02:30:00+00:00"]


def test_next_runs_need_an_aware_time():
    with pytest.raises(ValueError, match="has no timezone"):
        next_run_times("0 * * * *", "UTC", datetime(2026, 1, 1))
