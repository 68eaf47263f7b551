"""Schedules built from the spec: one Dagster schedule per `schedules:` entry, and their description."""

from .from_spec import (
    EVERY_CRON,
    TAG_CATALOGUE,
    TAG_FILTER,
    TAG_SCHEDULE,
    TAG_TARGET,
    ScheduleError,
    ScheduleInfo,
    build_schedules,
    cron_in_words,
    describe_schedules,
    next_run_times,
    schedule_cron,
    schedule_description,
    target_keys,
)

__all__ = [
    "EVERY_CRON",
    "TAG_CATALOGUE",
    "TAG_FILTER",
    "TAG_SCHEDULE",
    "TAG_TARGET",
    "ScheduleError",
    "ScheduleInfo",
    "build_schedules",
    "cron_in_words",
    "describe_schedules",
    "next_run_times",
    "schedule_cron",
    "schedule_description",
    "target_keys",
]
