"""Chained pipelines: completion of one operation starts the next; review checkpoints resume a batch.

Both are sensors that only look and decide. Each run they request has a run key naming what it
answers (a materialization, or a batch and its checkpoint), so it is launched exactly once.
"""

from typing import TYPE_CHECKING

import dagster as dg

from claro_dagster.catalogue.batches import BatchRegistry
from claro_dagster.catalogue.review import DECIDED, OPEN, ReviewQueue
from claro_dagster.resources.catalogue import CatalogueResource

if TYPE_CHECKING:
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

AWAITING_REVIEW = "awaiting_review"


def completion_run_key(name: str, run_id: str, partition: str | None) -> str:
    """The run key of completion sensor `name` answering the materialization of `watched` in run `run_id`."""
    return f"{name}:{run_id}:{partition or ''}"


def build_completion_sensor(name: str, watched: dg.AssetKey, targets: list[dg.AssetKey], *, run_config: dict,
                            tags: dict[str, str], description: str, minimum_interval_seconds: int = 10,
                            job: "UnresolvedAssetJobDefinition | None" = None) -> dg.SensorDefinition:
    """Request a run of `targets` (as `job`, default `<name>_job`) after every materialization of `watched`."""

    job = job or dg.define_asset_job(f"{name}_job", selection=targets, description=description)

    @dg.asset_sensor(name=name, asset_key=watched, job=job, default_status=dg.DefaultSensorStatus.RUNNING,
                     minimum_interval_seconds=minimum_interval_seconds, description=description)
    def _completion(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
        partition = asset_event.dagster_event.partition if asset_event.dagster_event else None
        # One materialization per (run, partition): that pair names the completion this run answers.
        return dg.RunRequest(run_key=completion_run_key(name, asset_event.run_id, partition), run_config=run_config,
                             tags={**tags, "claro/after": watched.to_user_string(),
                                   **({"claro/after_batch": partition} if partition else {})})

    return _completion


def open_items_of_batch(queue: ReviewQueue, catalogue: str, batch: str) -> list:
    """Open review items that publishing this batch queued (its change sets are `publish:<batch>:...`)."""
    prefix = f"publish:{batch}:"
    return [i for i in queue.list(catalogue=catalogue, status=("queued", "suggested", "skipped", "snoozed"))
            if i.change_set.startswith(prefix)]


def latest_proposal_of_batch(queue: ReviewQueue, catalogue: str, batch: str) -> int:
    """Id of the newest review item publishing this batch queued, open or decided (0 if none)."""
    prefix = f"publish:{batch}:"
    return max((i.id for i in queue.list(catalogue=catalogue, status=OPEN + DECIDED)
                if i.change_set.startswith(prefix)), default=0)


def checkpoint_run_key(queue: ReviewQueue, catalogue: str, batch: str) -> str:
    """`<batch>:review_checkpoint:<newest proposal id>`. Run keys are remembered forever: a batch that
    reaches its checkpoint again waits on new proposals, so its next resume gets a key of its own."""
    return f"{batch}:review_checkpoint:{latest_proposal_of_batch(queue, catalogue, batch)}"


def build_review_checkpoint_sensor(pipeline: str, catalogue: str, checkpoint: dg.AssetKey,
                                   minimum_interval_seconds: int = 10,
                                   job: "UnresolvedAssetJobDefinition | None" = None) -> dg.SensorDefinition:
    """Resume each batch waiting at its review checkpoint once every item it queued is decided (a run of `job`,
    the pipeline's, on the checkpoint alone)."""

    @dg.sensor(name=f"{pipeline}_review_checkpoint", target=job if job is not None else [checkpoint],
               minimum_interval_seconds=minimum_interval_seconds, default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"Resumes batches of {pipeline} whose review items are all decided")
    def _resume(context: dg.SensorEvaluationContext, claro: CatalogueResource):
        store = claro.store
        queue = ReviewQueue(store)
        waiting = BatchRegistry(store).list(catalogue, status=AWAITING_REVIEW)
        ready = [b for b in waiting if not open_items_of_batch(queue, catalogue, b.key)]
        if not ready:
            return dg.SkipReason(f"{len(waiting)} batch(es) of {catalogue} still wait for review decisions")
        return [dg.RunRequest(run_key=checkpoint_run_key(queue, catalogue, b.key), partition_key=b.key,
                              asset_selection=[checkpoint] if job is not None else None,
                              tags={"claro/source": b.source, "claro/batch": b.key}) for b in ready]

    return _resume
