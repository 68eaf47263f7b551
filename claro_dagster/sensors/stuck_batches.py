"""`claro_stuck_batches`: a batch stuck beyond the configured age is announced once (`batch.stuck`).

Every minute the sensor reads the batches still received or validated and the runs of this spec's sources still
queued in Dagster (`catalogue/stuck_batches.py` decides which are stuck: older than the spec's
`notifications.batch_stuck_after_seconds`, or $CLARO_BATCH_STUCK_AFTER_SECONDS). Each stuck batch is written to the
outbox as a `batch.stuck` event (webhook subscriptions listing it receive it) and, when it was new, alerted on
Slack through the spec's routes (`resources/alerts.py`). The outbox is the sensor's memory: a later tick, a
restarted daemon or a second daemon finds the event there and says nothing, so each stuck batch is announced once.
The sensor launches no run.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import dagster as dg

from claro_dagster.catalogue.stuck_batches import (
    BATCH_STUCK,
    QueuedRun,
    StuckBatch,
    describe_age,
    record_stuck,
    stuck_after_seconds,
    stuck_batches,
)
from claro_dagster.resources.catalogue import CatalogueResource
from claro_dagster.sensors.inbound import TAG_BATCH, TAG_SOURCE
from claro_dagster.spec.models import ProjectSpec

SENSOR_STUCK = "claro_stuck_batches"
TAG_PARTITION = "dagster/partition"


def queued_runs(instance: dg.DagsterInstance, spec: ProjectSpec, created_before: datetime) -> list[QueuedRun]:
    """Runs of this spec's sources still in the run queue, created before `created_before`."""
    records = instance.get_run_records(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED],
                                                             created_before=created_before))
    out = []
    for record in records:
        tags = record.dagster_run.tags
        source = tags.get(TAG_SOURCE)
        if source not in spec.sources:
            continue  # another code location's run, or not a batch's
        out.append(QueuedRun(run_id=record.dagster_run.run_id, job=record.dagster_run.job_name,
                             created_at=record.create_timestamp, batch=tags.get(TAG_BATCH) or tags.get(TAG_PARTITION),
                             source=source, catalogue=spec.sources[source].catalogue))
    return out


def pipeline_of_source(spec: ProjectSpec, source: str | None) -> str | None:
    names = [name for name, pipe in spec.pipelines.items() if source and source in pipe.sources]
    return names[0] if len(names) == 1 else None


def stuck_alert(spec: ProjectSpec, stuck: StuckBatch, stuck_after: float):
    """The Slack alert of one stuck batch (`slack.Alert`): how long, where it stopped, and what to look at."""
    from claro_dagster.resources.slack import Alert

    age, limit = describe_age(stuck.age_seconds), describe_age(stuck_after)
    since = stuck.since.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    if stuck.run_id:
        title = f"Batch stuck in the run queue: {stuck.batch}"
        error = (f"Its run {stuck.run_id} has waited in Dagster's run queue for {age} (since {since}; the limit is "
                 f"{limit}). Check that the Dagster daemon runs and which runs hold the queue's limits "
                 f"(claro/source allows one run per source at a time): the Runs page, filter Queued.")
    else:
        where = f"after {stuck.stage}" if stuck.stage else "before its first stage ran"
        title = f"Batch stuck: {stuck.filename or stuck.batch} ({stuck.source})"
        error = (f"Batch {stuck.batch} has been {stuck.status} {where} for {age} (since {since}; the limit is "
                 f"{limit}): its run crashed or never started. `claro batches` shows how far it got; find its run "
                 f"in the Dagster UI (partition {stuck.batch}) and re-execute it, or `claro rerun {stuck.batch} "
                 "<stage>`.")
    return Alert(event=BATCH_STUCK, title=title, catalogue=stuck.catalogue, pipeline=pipeline_of_source(
        spec, stuck.source), source=stuck.source, stage=stuck.stage, run_id=stuck.run_id, batch=stuck.batch,
        error=error, counts={"minutes waiting": int(stuck.age_seconds // 60)})


def check_stuck_batches(instance: dg.DagsterInstance, claro: CatalogueResource, *, now: datetime | None = None,
                        logger: logging.Logger | None = None) -> list[StuckBatch]:
    """One tick: find the stuck batches, write each new one to the outbox and alert it; the new ones."""
    from claro_dagster.resources import alerts

    logger = logger or logging.getLogger(__name__)
    store, spec = claro.store, claro.spec
    now = now or datetime.now(UTC)
    after = stuck_after_seconds(spec)
    found = stuck_batches(store, now, after, queued_runs(instance, spec, now - timedelta(seconds=after)))
    new = []
    for stuck in found:
        if not record_stuck(store, stuck, after):
            continue
        new.append(stuck)
        logger.warning(f"{BATCH_STUCK}: {stuck.batch} ({stuck.status}) for {describe_age(stuck.age_seconds)}")
        alerts.send(spec, stuck_alert(spec, stuck, after), logger=logger)
    return new


def build_stuck_batch_sensor(minimum_interval_seconds: int = 60) -> dg.SensorDefinition:
    """The sensor (RUNNING by default); it needs the `claro` resource, and Slack's token when routes are set."""

    @dg.sensor(name=SENSOR_STUCK, minimum_interval_seconds=minimum_interval_seconds,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Announces each batch stuck beyond notifications.batch_stuck_after_seconds once: "
                           "a batch.stuck event in the outbox and a Slack alert.")
    def _stuck_batches(context: dg.SensorEvaluationContext, claro: CatalogueResource) -> dg.SkipReason:
        new = check_stuck_batches(context.instance, claro, logger=context.log)
        return dg.SkipReason(f"{len(new)} stuck batch(es) announced" if new else "no batch newly stuck")

    return _stuck_batches


__all__ = ["SENSOR_STUCK", "build_stuck_batch_sensor", "check_stuck_batches", "stuck_alert"]
