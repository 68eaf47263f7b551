"""Retention: a daily schedule prunes what only serves delivery and re-runs, once it is old (`retention:`).

What is pruned, each after its own age (`null` keeps it forever):

    webhook_deliveries_days  delivered webhook deliveries (failed and dead ones stay, for `webhooks retry`)
    events_days              outbox events every webhook subscription has received and no undelivered
                             delivery carries (the newest event always stays)
    stage_files_days         stage outputs (`<home>/stages/<catalogue>/<stage>/<batch>.parquet`) of batches
                             whose status is `published`; with the same age, the work folders of dbt runs
                             (`<home>/dbt/target/runs/<run>/`) and uploads the Supplier Portal never finished
                             receiving (`<home>/portal/<source>/incoming/`)
    batches_days             the Dagster dynamic partitions of `published` batches

What rollback and `claro history` read is never touched: history, provenance, change sets, proposals,
review decisions, the records, batch records and rejected rows; nor what the portal shows its suppliers (results,
halted and quarantined files). A batch waiting for review
(`awaiting_review`) or not finished keeps its stage files and partition: the run that resumes it needs them.
"""

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg

from claro_dagster.catalogue.batches import BatchRegistry
from claro_dagster.catalogue.outbox import WebhookOutbox
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.spec.models import ProjectSpec

JOB = "claro_retention"
SCHEDULE = "claro_retention_daily"
STAGE_SUFFIXES = (".parquet", ".pkl")


@dataclass
class RetentionReport:
    """What one prune removed."""

    webhook_deliveries: int = 0
    events: int = 0
    stage_files: int = 0
    work_files: int = 0  # dbt run folders and unfinished portal uploads
    partitions: dict[str, list[str]] = field(default_factory=dict)  # partitions definition -> batch keys

    def summary(self) -> str:
        partitions = sum(len(keys) for keys in self.partitions.values())
        return (f"pruned {self.webhook_deliveries:,} delivered webhook deliveries, {self.events:,} outbox events, "
                f"{self.stage_files:,} stage files, {self.work_files:,} dbt run folders and unfinished uploads "
                f"and {partitions:,} batch partitions")


def _cutoff(now: datetime, days: int | None) -> datetime | None:
    return None if days is None else now - timedelta(days=days)


def _older(folder: Path, before: datetime) -> Iterator[Path]:
    """The entries of `folder` last modified before `before` (none when it does not exist)."""
    for path in folder.iterdir() if folder.is_dir() else ():
        if datetime.fromtimestamp(path.stat().st_mtime, UTC) < before:
            yield path


def prune(store: CatalogueStore, spec: ProjectSpec, stages_dir: Path, now: datetime | None = None, *,
          instance: dg.DagsterInstance | None = None, home: Path | None = None) -> RetentionReport:
    """Prune what `spec.retention` says is old enough (see the module doc); partitions only with an instance,
    dbt run folders and unfinished portal uploads only with the project `home`."""
    now = now or datetime.now(UTC)
    keep = spec.retention
    report = RetentionReport()
    outbox = WebhookOutbox(store)
    if (before := _cutoff(now, keep.webhook_deliveries_days)) is not None:
        report.webhook_deliveries = outbox.prune(before)
    if (before := _cutoff(now, keep.events_days)) is not None:
        report.events = outbox.prune_events(before, spec.notifications.webhooks)
    published = BatchRegistry(store).list(status="published")
    if (before := _cutoff(now, keep.stage_files_days)) is not None:
        for batch in (b for b in published if b.updated_at < before):
            folder = Path(stages_dir) / batch.catalogue
            for suffix in STAGE_SUFFIXES:
                for path in folder.glob(f"*/{batch.key}{suffix}") if folder.is_dir() else ():
                    path.unlink(missing_ok=True)
                    report.stage_files += 1
        if home is not None:
            work = [*_older(Path(home) / "dbt" / "target" / "runs", before),
                    *(p for folder in Path(home).glob("portal/*/incoming") for p in _older(folder, before))]
            for path in work:
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            report.work_files += len(work)
    if instance is not None and (before := _cutoff(now, keep.batches_days)) is not None:
        for batch in (b for b in published if b.updated_at < before):
            name = f"{batch.catalogue}_batches"
            if instance.has_dynamic_partition(name, batch.key):
                instance.delete_dynamic_partition(name, batch.key)
                report.partitions.setdefault(name, []).append(batch.key)
    return report


@dg.op(name="prune_retention", required_resource_keys={"claro", "batch_frames"},
       description="Prunes delivered webhooks, outbox events, stage files and partitions of published batches "
                   "older than the spec's `retention:` ages; never what rollback or history read.")
def prune_retention(context: dg.OpExecutionContext) -> None:
    claro = context.resources.claro
    report = prune(claro.store, claro.spec, Path(context.resources.batch_frames.base_dir),
                   instance=context.instance, home=Path(claro.home))
    context.log.info(report.summary())


@dg.job(name=JOB, description="Daily prune of what only serves delivery and re-runs (the spec's `retention:`).")
def retention_job() -> None:
    prune_retention()


def build_retention_schedule(spec: ProjectSpec) -> dg.ScheduleDefinition:
    """The daily prune, running unless stopped in the UI (a schedule that never runs would prune nothing)."""
    return dg.ScheduleDefinition(name=SCHEDULE, job=retention_job, cron_schedule=spec.retention.cron,
                                 execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.RUNNING,
                                 description=f"Prunes old delivered webhooks, outbox events, stage files and "
                                             f"partitions of published batches ({spec.retention.cron} UTC)")


__all__ = ["JOB", "SCHEDULE", "RetentionReport", "build_retention_schedule", "prune", "retention_job"]
