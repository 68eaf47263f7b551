"""Run-status sensors: tell people what happened (Slack) and record it in the outbox (signed webhooks).

Every run tells people, however it was launched. Three sensors watch the runs of this code location:

    claro_run_started    run.started    outbox only
    claro_run_completed  run.completed  outbox; Slack `run.completed` to the routes that list it in
                                        `events`; Slack `review.queued` when `records` queued changes
    claro_run_failed     run.failed     outbox; Slack `run.failed` naming the failing stage, or
                                        `batch.halted` when the failure is `batch_validated`'s gate

Every event lands in `claro_events` (type `run.*`, `change_set` = `run:<run_id>`) with a payload a
webhook receiver can act on: run id, job, status, catalogue, pipeline, asset keys, partition/batch,
source, schedule, record filter, the error of a failure and a link to the run in the Dagster UI.

Runs the sensors do not see (`claro run` and `claro rerun` materialize in-process against the local
instance, outside any code location) are recorded by `record_run` after they end: the same function
the sensors use, reading everything from the run's record in the instance, so the events and alerts
are the same whoever launched the run.

A sensor may evaluate the same run again (the daemon crashed before it saved its cursor), and a run
may be recorded both in-process and by a sensor, so each event is written once per (run, type):
looked up and inserted in one transaction that holds the run's write lock, so two writers at once
cannot both insert. The three sensors tick independently, so writing `run.completed` or `run.failed`
first writes the run's `run.started` when it is missing, in the same transaction: `run.started` is
always the run's first event in the outbox, and a later started tick finds it already there.
Slack messages go out only when the event was new, so a re-evaluated run is never announced twice.
Slack trouble never fails a tick: the notifier does not raise, and the call is wrapped anyway. A
failure to write the outbox does fail the tick (it shows in the UI's sensor history), after Slack
has been tried.
"""

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from claro_dagster.assets.onboarding import GATE, STAGES
from claro_dagster.catalogue.batches import Batch, BatchRegistry
from claro_dagster.catalogue.review import ReviewQueue
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.resources.alerts import batch_halted
from claro_dagster.resources.catalogue import CatalogueResource
from claro_dagster.resources.slack import Alert, SlackNotifier, run_url
from claro_dagster.schedules import TAG_CATALOGUE, TAG_FILTER, TAG_SCHEDULE
from claro_dagster.sensors.enrich_alerts import enrichment_review_alerts
from claro_dagster.sensors.inbound import TAG_BATCH, TAG_SOURCE
from claro_dagster.spec.models import NotificationsSpec, ProjectSpec

log = logging.getLogger(__name__)

SENSOR_STARTED = "claro_run_started"
SENSOR_COMPLETED = "claro_run_completed"
SENSOR_FAILED = "claro_run_failed"
SENSOR_NAMES: tuple[str, ...] = (SENSOR_STARTED, SENSOR_COMPLETED, SENSOR_FAILED)

RUN_STARTED = "run.started"
RUN_COMPLETED = "run.completed"
RUN_FAILED = "run.failed"

TAG_DAGSTER_SCHEDULE = "dagster/schedule_name"  # set by Dagster on every scheduled run
TAG_PARTITION = "dagster/partition"

#: What each onboarding stage does, in the words Slack routes filter on (`operations: [validate]`).
STAGE_OPERATIONS = {"batch_raw": "read", "batch_mapped": "map", "batch_validated": "validate",
                    "batch_normalized": "normalize", "batch_enriched": "enrich", "records": "publish"}
_CHECK_FAILED = "DagsterAssetCheckFailedError"
_QUALIFIED_CLASS = re.compile(r"(?:[A-Za-z_]\w*\.)+[A-Z]\w*")
_SHOWN_ASSETS = 50  # asset keys listed in a payload; more are counted ("assets_total")


# ---------------------------------------------------------------------------------------------- run facts
@dataclass
class RunFacts:
    """What a notification says about a run, read once per evaluation."""

    run_id: str
    job: str
    url: str
    catalogue: str | None
    pipeline: str | None
    assets: list[str]
    step_assets: dict[str, str]  # step key -> "catalogue/stage" of the asset it materializes
    partition: str | None
    batch: str | None
    source: str | None
    schedule: str | None
    filter: str | None

    @property
    def operation(self) -> str | None:
        """The operation when the run is one catalogue operation (`products/analyse`), else None."""
        if len(self.assets) != 1:
            return None
        return _operation(self.assets[0].rsplit("/", 1)[-1])


def _operation(stage: str) -> str:
    return STAGE_OPERATIONS.get(stage, stage)


def _key(asset_key: dg.AssetKey) -> str:
    return "/".join(asset_key.path)


def _step_assets(instance: dg.DagsterInstance, run: dg.DagsterRun) -> dict[str, str]:
    """step key -> asset key, from the run's execution plan (runs of `materialize` have no asset selection)."""
    out: dict[str, str] = {}
    snapshot_id = run.execution_plan_snapshot_id
    snapshot = instance.get_execution_plan_snapshot(snapshot_id) if snapshot_id else None
    for step in snapshot.steps if snapshot else []:
        for output in step.outputs:
            key = output.properties.asset_key if output.properties else None
            if key is not None:
                out.setdefault(step.key, _key(key))
    return out


def _run_filter(run: dg.DagsterRun) -> str | None:
    """The record filter a run applied: its `claro/filter` tag, else a `filter` in its op config."""
    if run.tags.get(TAG_FILTER):
        return run.tags[TAG_FILTER]
    ops = (run.run_config or {}).get("ops") or {}
    for op in ops.values():
        value = ((op or {}).get("config") or {}).get("filter") if isinstance(op, dict) else None
        if value:
            return str(value)
    return None


def run_facts(instance: dg.DagsterInstance, run: dg.DagsterRun, spec: ProjectSpec, webserver_url: str) -> RunFacts:
    step_assets = _step_assets(instance, run)
    selected = sorted(_key(k) for k in run.asset_selection or ())
    assets = selected or sorted(set(step_assets.values()))
    catalogue = run.tags.get(TAG_CATALOGUE)
    if not catalogue:
        firsts = [a.split("/", 1)[0] for a in assets]
        catalogue = next((c for c in firsts if c in spec.catalogues), firsts[0] if firsts else None)
    onboarding = any(a.split("/", 1)[-1] in (*STAGES, "batch_enriched") for a in assets
                     if a.startswith(f"{catalogue}/"))
    pipeline = next((name for name, p in spec.pipelines.items() if p.catalogue == catalogue), None) \
        if onboarding else None
    partition = run.tags.get(TAG_PARTITION)
    batch = run.tags.get(TAG_BATCH) or (partition if onboarding else None)
    return RunFacts(run_id=run.run_id, job=run.job_name, url=run_url(webserver_url, run.run_id), catalogue=catalogue,
                    pipeline=pipeline, assets=assets, step_assets=step_assets, partition=partition, batch=batch,
                    source=run.tags.get(TAG_SOURCE),
                    schedule=run.tags.get(TAG_SCHEDULE) or run.tags.get(TAG_DAGSTER_SCHEDULE), filter=_run_filter(run))


def event_payload(facts: RunFacts, status: str, **extra: Any) -> dict[str, Any]:
    """The outbox payload of a run event: the same keys for every run (None when not known)."""
    return {"run_id": facts.run_id, "job": facts.job, "status": status, "catalogue": facts.catalogue,
            "pipeline": facts.pipeline, "assets": facts.assets[:_SHOWN_ASSETS], "assets_total": len(facts.assets),
            "partition": facts.partition, "batch": facts.batch, "source": facts.source,
            "schedule": facts.schedule, "filter": facts.filter, "url": facts.url, **extra}


# ---------------------------------------------------------------------------------------------- outbox
def run_change_set(run_id: str) -> str:
    """The `change_set` column of a run's events: `run:<run_id>` (indexed: the idempotency lookup)."""
    return f"run:{run_id}"


def write_run_event(store: CatalogueStore, event_type: str, catalogue: str | None, payload: dict[str, Any], *,
                    started: dict[str, Any] | None = None) -> bool:
    """Insert a run event unless this run already has one of this type; True when it was written.

    `started` is the run's `run.started` payload: given with a `run.completed`/`run.failed`, it is inserted
    first when the run has no `run.started` yet, in the same transaction, so the outbox never shows a run
    ending before it started. Every run event goes through the store's one writer.
    """
    return store.append_event(event_type, change_set=run_change_set(payload["run_id"]), payload=payload,
                              catalogue=catalogue, preceded_by=(RUN_STARTED, started) if started is not None else None)


def _record(store: CatalogueStore, event_type: str, facts: RunFacts, payload: dict[str, Any],
            logger: logging.Logger) -> tuple[bool, Exception | None]:
    """(announce?, outbox error): announce when the event is new, or when it could not be written (Slack
    is then the only trace; the caller raises the error afterwards so the tick shows it)."""
    try:
        if write_run_event(store, event_type, facts.catalogue, payload,
                           started=event_payload(facts, "STARTED")):
            return True, None
    except Exception as exc:
        logger.exception(f"run {facts.run_id}: could not write {event_type} to the outbox")
        return True, exc
    logger.info(f"run {facts.run_id}: {event_type} was recorded (and announced) before")
    return False, None


# ---------------------------------------------------------------------------------------------- failures
@dataclass(frozen=True)
class StepFailure:
    step_key: str
    asset: str | None  # "catalogue/stage"
    error: str  # first line of what went wrong
    gate_failed: bool  # the blocking validation gate failed (the step's asset was stored)


def first_line(text: str | None) -> str:
    """The first non-empty line of a text."""
    return next((s.strip() for s in (text or "").splitlines() if s.strip()), "")


def _exception_line(message: str | None) -> str:
    """An exception's first line without its module path (`dagster._core.errors.X: m` -> `X: m`)."""
    line = first_line(message)
    head, sep, rest = line.partition(": ")
    if sep and _QUALIFIED_CLASS.fullmatch(head):
        line = f"{head.rsplit('.', 1)[-1]}: {rest}"
    return line


def _error_summary(error: Any, user_failure: Any) -> str:
    if user_failure is not None and getattr(user_failure, "description", None):
        return first_line(user_failure.description)  # dg.Failure: its description is the message for people
    # An exception in user code arrives wrapped ("Error occurred while executing op ..."): its cause says why.
    while error is not None and error.cause is not None and error.cls_name == "DagsterExecutionStepExecutionError":
        error = error.cause
    return _exception_line(error.message) if error is not None else ""


def step_failures(instance: dg.DagsterInstance, facts: RunFacts) -> list[StepFailure]:
    out = []
    for record in instance.all_logs(facts.run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        event = record.dagster_event
        data = event.step_failure_data
        step_key = event.step_key or ""
        asset = facts.step_assets.get(step_key) or (step_key.replace("__", "/") if "__" in step_key else None)
        out.append(StepFailure(step_key, asset, _error_summary(data.error, data.user_failure_data),
                               data.error is not None and data.error.cls_name == _CHECK_FAILED
                               and f": {GATE}" in (data.error.message or "")))
    return out


def _run_failure_summary(event: dg.DagsterEvent | None) -> str:
    data = getattr(event, "event_specific_data", None) if event is not None else None
    error = getattr(data, "error", None)
    if error is not None:
        return _error_summary(error, None)
    return first_line(event.message) if event is not None and event.message else "the run failed"


# ---------------------------------------------------------------------------------------------- materializations
@dataclass
class Materialized:
    asset: str
    metadata: dict[str, Any] = field(default_factory=dict)


def materializations(instance: dg.DagsterInstance, run_id: str) -> list[Materialized]:
    out = []
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        mat = record.dagster_event.event_specific_data.materialization
        out.append(Materialized(_key(mat.asset_key), {k: getattr(v, "value", v) for k, v in mat.metadata.items()}))
    return out


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------- Slack
def opted_in(notifications: NotificationsSpec) -> NotificationsSpec:
    """Only the routes that list events: a route with no `events` hears every alert but not every success."""
    return notifications.model_copy(update={"slack": [r for r in notifications.slack if r.events]})


def _notify(slack: SlackNotifier | None, notifications: NotificationsSpec, alert: Alert,
            logger: logging.Logger) -> None:
    if slack is None:
        return
    try:
        report = slack.notify(notifications, alert)
        logger.info("Slack: %s", report.summary())
    except Exception:  # notify never raises; a bug in it must still not fail the tick
        logger.exception("Slack: the %s alert %r was not sent", alert.event, alert.title)


def _review_alerts(store: CatalogueStore, facts: RunFacts, mats: Sequence[Materialized]) -> list[Alert]:
    """One `review.queued` alert per `records` materialization of the run that queued changes."""
    alerts = []
    queue: ReviewQueue | None = None
    for mat in mats:
        catalogue, _, stage = mat.asset.rpartition("/")
        queued = _int(mat.metadata.get("queued_for_review")) or 0
        if stage != "records" or queued <= 0 or mat.metadata.get("already_published") is True:
            continue
        queue = queue or ReviewQueue(store)
        items = [i for i in queue.list(catalogue=catalogue) if i.run_id == facts.run_id]
        count = len(items) or queued
        pending = queue.pending_counts().get(catalogue, 0)
        noun = "change" if count == 1 else "changes"
        alerts.append(Alert(
            event="review.queued", title=f"{count} {noun} wait for review in {catalogue}", catalogue=catalogue,
            operation="publish", pipeline=facts.pipeline, source=facts.source, stage=stage, run_id=facts.run_id,
            batch=facts.batch,
            counts={"queued by this run": count, "open in the review queue": pending},
            records=[f"{i.record} · {i.field}: {_short(i.old)} → {_short(i.new)} ({i.confidence:g}%)"
                     for i in items]))
    return alerts


def slack_configured(spec: ProjectSpec) -> bool:
    """Slack is on when the spec names the token's variable and it is set where the daemon runs: without it
    the sensors still write the outbox (webhooks) rather than failing every tick."""
    name = spec.notifications.slack_token_env
    return bool(name and os.environ.get(name))


def alert_routes(spec: ProjectSpec) -> NotificationsSpec:
    """The notifications with the routes pipeline routing rules add (see `ProjectSpec.alert_routes`)."""
    return spec.notifications.model_copy(update={"slack": spec.alert_routes()})


def _short(value: Any, limit: int = 60) -> str:
    text = "—" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _halted_alert(facts: RunFacts, batch: Batch, mats: Sequence[Materialized]) -> Alert:
    validated = next((m for m in mats if m.asset == f"{batch.catalogue}/batch_validated"), None)
    counts = {}
    if validated is not None:
        for label, key in (("rows", "rows_in"), ("rows failed", "rows_rejected")):
            if _int(validated.metadata.get(key)) is not None:
                counts[label] = _int(validated.metadata[key])
    return batch_halted(batch, pipeline=facts.pipeline, run_id=facts.run_id, counts=counts)


# ---------------------------------------------------------------------------------------------- handlers
def _batch(store: CatalogueStore, facts: RunFacts) -> Batch | None:
    return BatchRegistry(store).get(facts.batch) if facts.batch else None


def _where(facts: RunFacts) -> str:
    where = facts.assets[0] if len(facts.assets) == 1 else (facts.pipeline or facts.catalogue or facts.job)
    return where + (f", batch {facts.batch}" if facts.batch else "")


def handle_started(instance: dg.DagsterInstance, run: dg.DagsterRun, store: CatalogueStore, spec: ProjectSpec,
                   webserver_url: str, logger: logging.Logger) -> None:
    facts = run_facts(instance, run, spec, webserver_url)
    if not write_run_event(store, RUN_STARTED, facts.catalogue, event_payload(facts, "STARTED")):
        logger.info(f"run {facts.run_id}: {RUN_STARTED} was recorded before")


def handle_completed(instance: dg.DagsterInstance, run: dg.DagsterRun, store: CatalogueStore,
                     slack: SlackNotifier | None, spec: ProjectSpec, webserver_url: str,
                     logger: logging.Logger) -> None:
    facts = run_facts(instance, run, spec, webserver_url)
    mats = materializations(instance, facts.run_id)
    published = [m for m in mats if m.asset.endswith("/records")]
    counts: dict[str, int] = {}
    for label, key in (("rows published", "rows_published"), ("records created", "records_created"),
                       ("values applied", "values_applied"), ("queued for review", "queued_for_review")):
        values = [_int(m.metadata.get(key)) for m in published]
        if any(v is not None for v in values):
            counts[label] = sum(v for v in values if v is not None)
    payload = event_payload(facts, "SUCCESS", materialized=sorted({m.asset for m in mats})[:_SHOWN_ASSETS],
                            counts=counts)
    announce, outbox_error = _record(store, RUN_COMPLETED, facts, payload, logger)
    if not announce:
        return
    _notify(slack, opted_in(alert_routes(spec)), Alert(
        event=RUN_COMPLETED, title=f"Run completed: {_where(facts)}", catalogue=facts.catalogue,
        operation=facts.operation, pipeline=facts.pipeline, source=facts.source, run_id=facts.run_id, batch=facts.batch,
        counts=counts), logger)
    for alert in _review_alerts(store, facts, mats):
        _notify(slack, alert_routes(spec), alert, logger)
    for alert, routes in enrichment_review_alerts(store, spec, facts, mats, alert_routes(spec)):
        _notify(slack, routes, alert, logger)
    if outbox_error is not None:
        raise outbox_error


def handle_failed(instance: dg.DagsterInstance, run: dg.DagsterRun, store: CatalogueStore,
                  slack: SlackNotifier | None, spec: ProjectSpec, webserver_url: str, logger: logging.Logger,
                  failure_event: dg.DagsterEvent | None = None) -> None:
    facts = run_facts(instance, run, spec, webserver_url)
    failures = step_failures(instance, facts)
    batch = _batch(store, facts)
    gate_asset = f"{batch.catalogue}/batch_validated" if batch else None
    halted = batch is not None and batch.status == "halted" and any(
        f.asset == gate_asset and (f.gate_failed or batch.stage == "batch_validated") for f in failures)
    others = [f for f in failures if not (halted and f.asset == gate_asset)]
    first = failures[0] if failures else None
    if halted:
        error = first_line(batch.message) or "the batch failed its validation gate"
    elif first is not None:
        error = first.error
    else:
        error = _run_failure_summary(failure_event or _run_failure_event(instance, facts.run_id))
    payload = event_payload(
        facts, "FAILURE", error=error, failed_stage=first.asset if first else None,
        failed_steps=[f.step_key for f in failures], halted=halted,
        batch_status=batch.status if batch else None, batch_message=batch.message if batch else None,
        rejected_rows=f"claro rejected {batch.key}" if halted else None)

    announce, outbox_error = _record(store, RUN_FAILED, facts, payload, logger)
    if not announce:
        return

    mats = materializations(instance, facts.run_id) if slack is not None else []
    if halted:
        _notify(slack, alert_routes(spec), _halted_alert(facts, batch, mats), logger)
    if others or not failures:
        failed = others[0] if others else None
        stage_key = failed.asset if failed else None
        catalogue = stage_key.split("/", 1)[0] if stage_key else facts.catalogue
        stage = stage_key.rsplit("/", 1)[-1] if stage_key else None
        _notify(slack, alert_routes(spec), Alert(
            event=RUN_FAILED, title=f"Run failed: {stage_key or _where(facts)}"
            + (f", batch {facts.batch}" if stage_key and facts.batch else ""),
            catalogue=catalogue, operation=_operation(stage) if stage else facts.operation,
            pipeline=facts.pipeline, source=facts.source, stage=stage, run_id=facts.run_id, batch=facts.batch,
            error=failed.error if failed else error,
            counts={"failed steps": len(others)} if len(others) > 1 else {}), logger)
    # Stages before the failure may have published: their queued changes still wait for a person.
    for alert in _review_alerts(store, facts, mats):
        _notify(slack, alert_routes(spec), alert, logger)
    for alert, routes in enrichment_review_alerts(store, spec, facts, mats, alert_routes(spec)):
        _notify(slack, routes, alert, logger)
    if outbox_error is not None:
        raise outbox_error


def _run_failure_event(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterEvent | None:
    records = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    return records[-1].dagster_event if records else None


def record_run(instance: dg.DagsterInstance, run: dg.DagsterRun, store: CatalogueStore, spec: ProjectSpec,
               webserver_url: str, *, slack: SlackNotifier | None = None,
               logger: logging.Logger = log) -> str | None:
    """Record a run's events from its record in the instance, and tell Slack as the sensors do; the event
    type written for its status (None for a run that is neither started nor finished, e.g. canceled).

    For runs the sensors do not see: `claro run` and `claro rerun` call it after each in-process run.
    Idempotent like the sensors, so recording a run both ways writes and announces each event once.
    """
    run = instance.get_run_by_id(run.run_id) or run  # the stored record has the final status
    if run.status == dg.DagsterRunStatus.SUCCESS:
        handle_completed(instance, run, store, slack, spec, webserver_url, logger)
        return RUN_COMPLETED
    if run.status == dg.DagsterRunStatus.FAILURE:
        handle_failed(instance, run, store, slack, spec, webserver_url, logger)
        return RUN_FAILED
    if run.status == dg.DagsterRunStatus.STARTED:
        handle_started(instance, run, store, spec, webserver_url, logger)
        return RUN_STARTED
    return None


def default_webserver_url() -> str:
    """The Dagster UI that alerts and payloads link runs to: $CLARO_WEBSERVER_URL, else the local `claro dev`."""
    return os.environ.get("CLARO_WEBSERVER_URL", "http://127.0.0.1:3000")


# ---------------------------------------------------------------------------------------------- sensors
def build_notification_sensors(spec: ProjectSpec, webserver_url: str, *,
                               minimum_interval_seconds: int = 15) -> list[dg.SensorDefinition]:
    """The three run-status sensors, RUNNING by default, watching the runs of this code location.

    They need the `claro` resource (CatalogueResource) and, when the spec names a Slack token
    (`notifications.slack_token_env`), the `slack` resource (SlackNotifier); without a token the
    Slack parts are left out and `slack` is not required.
    """
    common = dict(minimum_interval_seconds=minimum_interval_seconds, monitor_all_code_locations=False,
                  default_status=dg.DefaultSensorStatus.RUNNING)
    with_slack = slack_configured(spec)

    def started(context: dg.RunStatusSensorContext, claro: CatalogueResource) -> None:
        handle_started(context.instance, context.dagster_run, claro.store, spec, webserver_url, context.log)

    if with_slack:
        def completed(context: dg.RunStatusSensorContext, claro: CatalogueResource, slack: SlackNotifier) -> None:
            handle_completed(context.instance, context.dagster_run, claro.store, slack, spec, webserver_url,
                             context.log)

        def failed(context: dg.RunFailureSensorContext, claro: CatalogueResource, slack: SlackNotifier) -> None:
            handle_failed(context.instance, context.dagster_run, claro.store, slack, spec, webserver_url,
                          context.log, context.failure_event)
    else:
        def completed(context: dg.RunStatusSensorContext, claro: CatalogueResource) -> None:
            handle_completed(context.instance, context.dagster_run, claro.store, None, spec, webserver_url,
                             context.log)

        def failed(context: dg.RunFailureSensorContext, claro: CatalogueResource) -> None:
            handle_failed(context.instance, context.dagster_run, claro.store, None, spec, webserver_url,
                          context.log, context.failure_event)

    slack_note = " and posts to Slack" if with_slack else ""
    return [
        dg.run_status_sensor(run_status=dg.DagsterRunStatus.STARTED, name=SENSOR_STARTED, **common,
                             description="Writes a run.started event to the outbox.")(started),
        dg.run_status_sensor(run_status=dg.DagsterRunStatus.SUCCESS, name=SENSOR_COMPLETED, **common,
                             description=f"Writes a run.completed event to the outbox{slack_note} "
                                         "(run.completed, review.queued).")(completed),
        dg.run_failure_sensor(name=SENSOR_FAILED, **common,
                              description=f"Writes a run.failed event to the outbox{slack_note} "
                                          "(run.failed, batch.halted).")(failed),
    ]


__all__ = ["RUN_COMPLETED", "RUN_FAILED", "RUN_STARTED", "SENSOR_NAMES", "RunFacts", "build_notification_sensors",
           "event_payload", "default_webserver_url", "record_run", "run_facts",
           "write_run_event"]
