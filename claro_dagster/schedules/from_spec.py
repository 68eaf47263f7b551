"""Dagster schedules built from the spec's `schedules:` section, and their description for `claro schedules`.

One schedule per spec entry, named after it. A target is a catalogue operation (`<catalogue>/analyse`,
`<catalogue>/export`, `<catalogue>/dedupe`), a destination (`<catalogue>/<destination>`) or a pipeline (everything
the pipeline publishes after `records`: analyse, export and its destinations). The entry's record filter travels in the
run config of every targeted asset and, with the schedule's name, in the run tags, so a notification can say
what ran and for which records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from claro_dagster.spec.checks import PIPELINE_SCHEDULED_OPERATIONS

# Ticks as Dagster's own scheduler computes them (croniter and Dagster's DST rules, without importing Dagster), so
# `claro schedules` shows exactly the ticks the daemon will run, and answers at once.
from claro_dagster.spec.cron import EVERY_CRON, next_run_times  # noqa: F401 - re-exported
from claro_dagster.spec.models import ProjectSpec, ScheduleSpec

if TYPE_CHECKING:  # Dagster is imported only where schedules are built: describing them must not pay for it
    import dagster as dg

TAG_SCHEDULE = "claro/schedule"
TAG_FILTER = "claro/filter"
TAG_TARGET = "claro/target"
TAG_CATALOGUE = "claro/catalogue"  # what the notification sensor routes Slack messages on

_OPERATION_WORDS = {"analyse": "the data-quality report", "export": "a CSV export",
                    "dedupe": "Find Duplicates: merge proposals for review",
                    "enrich": "Bulk Enrichment"}
_WEEKDAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_CRON_MACROS = {
    "@hourly": "every hour on the hour", "@daily": "every day at 00:00", "@midnight": "every day at 00:00",
    "@weekly": "every Sunday at 00:00", "@monthly": "on the 1st of every month at 00:00",
}


class ScheduleError(ValueError):
    """A schedule entry that cannot become a Dagster schedule; the message names the key path and the fix."""


@dataclass(frozen=True)
class ScheduleInfo:
    """One spec schedule as `claro schedules` shows it."""

    name: str
    target: str
    cron: str
    timezone: str
    filter: str | None
    status: str  # "running" or "paused": the status the spec gives it; the Dagster UI can change it later
    next_runs: tuple[datetime, ...]  # aware datetimes in `timezone`
    description: str


def schedule_cron(name: str, schedule: ScheduleSpec) -> str:
    """The entry's cron expression: its `cron`, or the one its `every` stands for."""
    if (schedule.every is None) == (schedule.cron is None):
        raise ScheduleError(f"schedules.{name}: a schedule needs exactly one of 'every' (hourly, daily, weekly) "
                            "or 'cron'")
    return schedule.cron if schedule.cron is not None else EVERY_CRON[schedule.every]


def cron_in_words(cron: str) -> str:
    """`0 2 * * 1` -> `every Monday at 02:00`; expressions without a plain reading are quoted as they are."""
    if cron in _CRON_MACROS:
        return _CRON_MACROS[cron]
    fields = cron.split()
    if len(fields) == 5:
        minute, hour, day, month, weekday = fields
        if minute.isdigit() and day == "*" and month == "*":
            if hour == "*" and weekday == "*":
                return "every hour on the hour" if int(minute) == 0 else f"every hour at :{int(minute):02d}"
            if hour.isdigit():
                at = f"{int(hour):02d}:{int(minute):02d}"
                if weekday == "*":
                    return f"every day at {at}"
                if weekday.isdigit() and int(weekday) < len(_WEEKDAYS):
                    return f"every {_WEEKDAYS[int(weekday)]} at {at}"
    return f"on cron '{cron}'"


def _filter(schedule: ScheduleSpec) -> str | None:
    # An empty `filter:` means all records; any other text is kept exactly as written (quotes included).
    return schedule.filter if schedule.filter and schedule.filter.strip() else None


def target_paths(spec: ProjectSpec, name: str, target: str) -> list[tuple[str, str]]:
    """The (catalogue, operation) of each asset a schedule target names, from the spec alone (a pipeline:
    analyse, export, destinations)."""
    if target in spec.pipelines:
        pipeline = spec.pipelines[target]
        return [(pipeline.catalogue, op) for op in (*PIPELINE_SCHEDULED_OPERATIONS, *pipeline.destinations)]
    catalogue, slash, operation = target.partition("/")
    if not slash or catalogue not in spec.catalogues or not operation:
        raise ScheduleError(f"schedules.{name}.target: {target!r} is neither a pipeline "
                            f"({', '.join(spec.pipelines) or 'none defined'}) nor '<catalogue>/<operation>' "
                            f"with a catalogue of the spec ({', '.join(spec.catalogues)})")
    return [(catalogue, operation)]


def target_keys(spec: ProjectSpec, name: str, target: str) -> list[dg.AssetKey]:
    """The assets a schedule target names, from the spec alone (a pipeline: analyse, export, destinations)."""
    import dagster as dg

    return [dg.AssetKey(list(path)) for path in target_paths(spec, name, target)]


def _target_words(spec: ProjectSpec, target: str, keys: Sequence[str]) -> str:
    if target in spec.pipelines:
        return f"what pipeline {target} publishes ({', '.join(keys)})"
    catalogue, _, operation = target.partition("/")
    if operation in _OPERATION_WORDS:
        return f"{target} ({_OPERATION_WORDS[operation]} of {catalogue})"
    dest = spec.destinations.get(operation)
    monitor = spec.monitors.get(operation)
    if monitor is not None and monitor.catalogue == catalogue:
        return f"{target} (the {monitor.kind} monitor of {catalogue})"
    return f"{target} (the {dest.kind} destination of {catalogue})" if dest else target


def schedule_description(spec: ProjectSpec, name: str, schedule: ScheduleSpec,
                         keys: Sequence[dg.AssetKey] | None = None) -> str:
    """What runs, when, in which timezone and for which records, in words (shown in the Dagster UI)."""
    names = (["/".join(k.path) for k in keys] if keys is not None
             else ["/".join(p) for p in target_paths(spec, name, schedule.target)])
    filter_ = _filter(schedule)
    records = f"records where {filter_}" if filter_ else "all records"
    text = (f"Runs {_target_words(spec, schedule.target, names)} {cron_in_words(schedule_cron(name, schedule))} "
            f"({schedule.timezone} time) for {records}.")
    if schedule.paused:
        text += " Paused in the spec: start it in the Dagster UI when it should run."
    return text


def _where(spec: ProjectSpec) -> str:
    return f"{spec.spec_path}: " if spec.spec_path else ""


def _resolve(spec: ProjectSpec, name: str, schedule: ScheduleSpec,
             assets_by_key: Mapping[dg.AssetKey, dg.AssetsDefinition]) -> list[dg.AssetKey]:
    import dagster as dg

    keys = target_keys(spec, name, schedule.target)
    if schedule.target in spec.pipelines:
        # A pipeline destination whose kind has no connector yet has no asset; the pipeline runs without it,
        # exactly as the definitions do.
        operations = [dg.AssetKey([spec.pipelines[schedule.target].catalogue, op])
                      for op in PIPELINE_SCHEDULED_OPERATIONS]
        keys = [k for k in keys if k in assets_by_key or k in operations]
    missing = [k for k in keys if k not in assets_by_key]
    if missing:
        raise ScheduleError(
            f"{_where(spec)}schedules.{name}.target: {schedule.target!r} needs asset(s) "
            f"{', '.join(k.to_user_string() for k in missing)}, which the code location does not define: name an "
            "operation (analyse, export, validate, dedupe, enrich), a monitor or a destination of that catalogue")
    return keys


def _run_config(keys: Sequence[dg.AssetKey], assets_by_key: Mapping[dg.AssetKey, dg.AssetsDefinition],
                filter_: str | None) -> dict:
    if filter_ is None:
        return {}  # every targeted asset's config defaults to all records
    # The op name is Dagster's, e.g. `products__analyse` for key products/analyse: read it, do not rebuild it.
    return {"ops": {assets_by_key[k].node_def.name: {"config": {"filter": filter_}} for k in keys}}


def build_schedules(spec: ProjectSpec, assets_by_key: Mapping[dg.AssetKey, dg.AssetsDefinition],
                    jobs: Mapping[str, Any] | None = None) -> list[dg.ScheduleDefinition]:
    """One Dagster schedule per entry of the spec's `schedules:`, named after the entry. Its runs are runs of a
    named job, as every other run: the operation's own job (`products_export`) when it targets one operation or
    destination, else a job named after the schedule (its assets span several jobs); `jobs` are the jobs the
    definitions already have, by name.

    Raises ScheduleError when an entry's target has no asset or its filter does not parse.
    """
    import dagster as dg

    from claro_dagster.catalogue.filters import FilterError, compile_filter  # SQL: not needed to describe schedules

    jobs = jobs or {}
    from claro_dagster.catalogue.schema import filter_columns

    schedules: list[dg.ScheduleDefinition] = []
    for name, schedule in spec.schedules.items():
        cron = schedule_cron(name, schedule)
        filter_ = _filter(schedule)
        keys = _resolve(spec, name, schedule, assets_by_key)
        if filter_ is not None:
            try:  # fields and literal types, against the catalogue the schedule reads
                compile_filter(filter_, filter_columns(spec.catalogues[keys[0].path[0]]))
            except FilterError as exc:
                raise ScheduleError(f"{_where(spec)}schedules.{name}.filter: {exc}") from None
        tags = {TAG_SCHEDULE: name, TAG_TARGET: schedule.target, TAG_CATALOGUE: keys[0].path[0]}
        if filter_ is not None:
            tags[TAG_FILTER] = filter_
        own = "_".join(keys[0].path) if len(keys) == 1 else None
        if own is not None and own in jobs:
            target = jobs[own]
        elif name not in jobs:
            target = dg.define_asset_job(name, selection=keys, description=f"Runs of the schedule {name}")
        else:  # the schedule is named like another job: Dagster's anonymous job for it
            target = dg.AssetSelection.assets(*keys)
        schedules.append(dg.ScheduleDefinition(
            name=name,
            cron_schedule=cron,
            target=target,
            run_config=_run_config(keys, assets_by_key, filter_),
            tags=tags,
            execution_timezone=schedule.timezone,
            default_status=dg.DefaultScheduleStatus.STOPPED if schedule.paused else dg.DefaultScheduleStatus.RUNNING,
            description=schedule_description(spec, name, schedule, keys),
        ))
    return schedules


def describe_schedules(spec: ProjectSpec, now: datetime, count: int = 3) -> list[ScheduleInfo]:
    """Every spec schedule with its cron, timezone, filter, status and next `count` run times."""
    infos = []
    for name, schedule in spec.schedules.items():
        cron = schedule_cron(name, schedule)
        infos.append(ScheduleInfo(
            name=name, target=schedule.target, cron=cron, timezone=schedule.timezone, filter=_filter(schedule),
            status="paused" if schedule.paused else "running",
            next_runs=next_run_times(cron, schedule.timezone, now, count),
            description=schedule_description(spec, name, schedule),
        ))
    return infos
