"""Cron expressions of schedules and webhooks, without Dagster: which are valid, and when they next run.

`claro check` and `claro schedules` must answer without importing Dagster, yet say exactly what Dagster's scheduler
will do. Dagster parses crons with croniter (vendored at 6.0.0, `dagster._utils.schedules`); this module uses the
same release from PyPI and Dagster's rules on top of it (tests/spec/test_cron.py compares both tick by tick):

- a cron is valid when croniter accepts it, it has five fields, and it is not the 30th or 31st of February;
- a local time that does not exist (clocks go forward) runs at the first time after the change, except for crons
  that run every hour, which skip it;
- a local time that happens twice (clocks go back) runs once, at the second of the two, except for crons that run
  every hour, which run at both.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from itertools import islice
from zoneinfo import ZoneInfo

from croniter import croniter
from dateutil.tz import datetime_ambiguous, datetime_exists

#: What `every:` stands for. Daily and weekly runs start at 02:00 local time: catalogue work (quality reports,
#: exports, pushes to channels) is finished before the working day begins. In Europe/London 02:00 also exists
#: exactly once on both DST change days (the clocks change at 01:00 GMT), so a daily run is neither skipped nor
#: doubled. Weekly runs on Monday, so the week starts with fresh reports.
EVERY_CRON: dict[str, str] = {
    "hourly": "0 * * * *",
    "daily": "0 2 * * *",
    "weekly": "0 2 * * 1",
}


def is_valid_cron(cron: str) -> bool:
    """True when Dagster accepts `cron` as a schedule (the rules of `dagster._utils.schedules.is_valid_cron_string`)."""
    if not croniter.is_valid(cron):
        return False
    expanded, *_ = croniter.expand(cron)
    if len(expanded) != 5:  # seconds or years: Dagster schedules have minute resolution
        return False
    months, days = expanded[3], expanded[2]
    return not (months == [2] and len(days) == 1 and days[0] in (30, 31))


def _every_hour(cron: str) -> bool:
    expanded, *_ = croniter.expand(cron)
    return expanded[1] == ["*"]


#: Dagster's scheduler computes daily, weekly and monthly crons with its own arithmetic, which treats a time as
#: repeated or missing only in these hours (every DST change but a few at midnight, e.g. Havana, Santiago).
_DST_HOURS = {1, 2, 3}


def _day_based(cron: str) -> bool:
    """A cron Dagster runs as daily, weekly or monthly (one minute and hour of the day), not by croniter."""
    (minutes, hours, days, months, weekdays), nth = croniter.expand(cron)[:2]
    if nth or len(minutes) != 1 or len(hours) != 1 or "*" in (minutes[0], hours[0]) or months != ["*"]:
        return False
    if days == ["*"]:
        return weekdays == ["*"] or all(isinstance(d, int) for d in weekdays)
    return len(days) == 1 and isinstance(days[0], int) and days[0] <= 28 and weekdays == ["*"]


def _after_gap(local: datetime) -> datetime:
    # Dagster's rule: a time in the gap runs at the start of its hour plus the DST offset (02:30 -> 03:00).
    return local.replace(minute=0, second=0, microsecond=0) + local.tzinfo.dst(local + timedelta(hours=1))


def _ticks(cron: str, zone: ZoneInfo, after: datetime) -> Iterator[datetime]:
    """Ticks strictly after `after`, in order, as aware datetimes in `zone`."""
    start = after.astimezone(zone)
    # croniter knows wall-clock time only: step through local times and place each on the clock. Start an hour
    # early so that a time the clocks repeat is seen in both of its occurrences.
    times = croniter(cron, start.replace(tzinfo=None) - timedelta(hours=1))
    every_hour, day_based = _every_hour(cron), _day_based(cron)
    last = start.timestamp()
    while True:
        local = times.get_next(datetime).replace(tzinfo=zone)
        if day_based and local.hour not in _DST_HOURS:
            candidates = [local]  # Dagster's day arithmetic keeps the wall time as it is (first occurrence)
        elif not datetime_exists(local):
            candidates = [] if every_hour else [_after_gap(local)]
        elif datetime_ambiguous(local):
            later = local.replace(fold=1)
            candidates = [later]
            if every_hour:  # both occurrences of every repeated time, in the order they happen
                earlier = local.replace(fold=0)
                candidates.append(earlier)
                while earlier.timestamp() < later.timestamp():
                    more = times.get_next(datetime).replace(tzinfo=zone)
                    earlier = more.replace(fold=0)
                    candidates += [earlier, more.replace(fold=1)]
                candidates.sort(key=datetime.timestamp)
        else:
            candidates = [local]
        for tick in candidates:
            if tick.timestamp() > last:
                last = tick.timestamp()
                yield tick


def next_run_times(cron: str, timezone: str, after: datetime, count: int = 3) -> tuple[datetime, ...]:
    """The next `count` ticks strictly after `after`, as aware datetimes in `timezone`."""
    if after.tzinfo is None:
        raise ValueError(f"{after!r} has no timezone; pass an aware datetime such as datetime.now(UTC)")
    zone = ZoneInfo(timezone)
    # Through the timestamp: the wall time as the clock shows it, even where Dagster names a time in the gap.
    return tuple(datetime.fromtimestamp(t.timestamp(), zone) for t in islice(_ticks(cron, zone, after), count))
