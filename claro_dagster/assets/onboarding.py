"""The onboarding pipeline of one catalogue as assets over a dynamic partition per batch.

raw -> mapped -> validated (blocking gate) -> normalized -> records. Each stage's rows persist
through the IO manager so one stage can be re-run for one batch; each writes the metadata a person
reads in the UI. `records` itself refuses a batch whose latest validation failed, so re-running it
by hand cannot bypass the gate.
"""


import hashlib
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pandas as pd

from claro_dagster.assets.catalogue_ops import known_references
from claro_dagster.catalogue.batches import Batch, BatchRegistry
from claro_dagster.catalogue.mappings import MappingBook
from claro_dagster.operations.mapping import apply_mapping, match_records
from claro_dagster.operations.normalize import normalize_batch
from claro_dagster.operations.read import SupplierFileError, read_supplier_file
from claro_dagster.operations.validate import validate_batch
from claro_dagster.resources.catalogue import CatalogueResource
from claro_dagster.resources.inbox import Inbox
from claro_dagster.resources.s3 import S3Connection
from claro_dagster.sensors.inbound import TAG_SOURCE, TAG_URI, TAG_VERSION
from claro_dagster.spec.models import PipelineSpec

STAGES = ("batch_raw", "batch_mapped", "batch_validated", "batch_normalized", "records")
CHECKPOINT = "review_checkpoint"
GATE = "within_error_budget"
PREVIEW_ROWS = 10


def stages_of(pipeline: PipelineSpec) -> tuple[str, ...]:
    """The batch stages of a pipeline: the five, plus the review checkpoint when it has one."""
    return (*STAGES, CHECKPOINT) if pipeline.review_checkpoint else STAGES


def batches_partitions(catalogue: str) -> dg.DynamicPartitionsDefinition:
    return dg.DynamicPartitionsDefinition(name=f"{catalogue}_batches")


def preview(frame: pd.DataFrame) -> dg.MetadataValue:
    shown = frame.head(PREVIEW_ROWS).astype(object).where(frame.head(PREVIEW_ROWS).notna(), "")
    return dg.MetadataValue.md(shown.to_markdown(index=False) if len(shown) else "_no rows_")


def user_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if not str(c).startswith("__")]


class BatchFailed(dg.Failure):
    """A stage could not process a batch; the message says what to do next."""


@contextmanager
def settling(claro: CatalogueResource, batch: Batch, stage: str) -> Iterator[None]:
    """On failure: mark the batch, quarantine its inbox file with the reason, and fail with a clear message."""
    try:
        yield
    except Exception as exc:
        reason = str(exc.description if isinstance(exc, dg.Failure) else exc) or type(exc).__name__
        registry = BatchRegistry(claro.store)
        registry.set_status(batch.key, "quarantined" if stage in ("batch_raw", "batch_mapped") else "failed",
                            stage=stage, message=reason)
        settle_inbox_file(claro, batch, reason=reason)
        if isinstance(exc, dg.Failure):
            raise
        raise BatchFailed(description=f"{stage} failed for batch {batch.key} ({batch.filename}): {reason}") from exc


def settle_inbox_file(claro: CatalogueResource, batch: Batch, reason: str | None = None) -> Path | None:
    """Move an inbox file to processed/ (reason None) or quarantine/ with a reason file. Never deletes."""
    source = claro.spec.sources.get(batch.source)
    path = Path(batch.uri)
    if source is None or source.kind != "inbox" or not path.exists():
        return None
    inbox = Inbox(claro.inbox_dir(batch.source))
    if inbox.root.resolve() not in path.resolve().parents:
        return None
    if reason is None:
        return inbox.mark_processed(path, batch.key)
    return inbox.quarantine(path, batch.key, reason)


def resolve_batch(context: dg.AssetExecutionContext, claro: CatalogueResource, catalogue: str) -> Batch:
    """The batch of this partition: from the registry, else registered from the run's sensor tags."""
    registry = BatchRegistry(claro.store)
    key = context.partition_key
    batch = registry.get(key)
    if batch is not None:
        return batch
    tags = context.run.tags
    if TAG_URI not in tags or TAG_SOURCE not in tags:
        raise dg.Failure(f"batch {key} is not registered and the run carries no {TAG_URI} tag: receive it "
                         "through an inbox, S3 or `claro upload` first")
    uri = tags[TAG_URI]
    return registry.register(key, catalogue=catalogue, source=tags[TAG_SOURCE], filename=Path(uri).name
                             if not uri.startswith("s3://") else uri.rsplit("/", 1)[-1],
                             uri=uri, content_version=tags.get(TAG_VERSION))


def fetch(claro: CatalogueResource, batch: Batch, s3: S3Connection | None) -> Path:
    """Copy the received file into the batch's own folder (once), so later moves never lose it."""
    target = claro.batch_dir(batch.key) / batch.filename
    if target.exists():
        return target
    if batch.uri.startswith("s3://"):
        if s3 is None:
            raise dg.Failure(f"batch {batch.key} comes from {batch.uri} but no S3 connection is configured")
        bucket, _, key = batch.uri[len("s3://"):].partition("/")
        return s3.download(bucket, key, target)
    source = Path(batch.uri)
    if not source.exists():
        raise dg.Failure(f"the file of batch {batch.key} is gone from {source}; upload it again")
    tmp = target.with_suffix(target.suffix + ".part")
    shutil.copyfile(source, tmp)
    tmp.rename(target)
    return target


def build_onboarding(pipeline_name: str, pipeline: PipelineSpec, partitions: dg.DynamicPartitionsDefinition,
                     ) -> list[dg.AssetsDefinition]:
    """The five stage assets of one pipeline, keyed `<catalogue>/<stage>`."""
    catalogue = pipeline.catalogue
    group = catalogue
    common = dict(partitions_def=partitions, group_name=group, io_manager_key="batch_frames",
                  tags={"claro/pipeline": pipeline_name}, kinds={"python", "pandas"})

    def key(stage: str) -> dg.AssetKey:
        return dg.AssetKey([catalogue, stage])

    @dg.asset(key=key("batch_raw"), description="Rows as received, with source line numbers.", **common)
    def batch_raw(context: dg.AssetExecutionContext, claro: CatalogueResource) -> dg.Output[pd.DataFrame]:
        batch = resolve_batch(context, claro, catalogue)
        with settling(claro, batch, "batch_raw"):
            source = claro.spec.sources.get(batch.source)
            if source is None:
                raise dg.Failure(f"batch {batch.key}: source {batch.source!r} is not in the spec; sources are: "
                                 f"{', '.join(claro.spec.sources)}")
            s3 = S3Connection.from_env(source.endpoint_url_env) if source.kind == "s3" else None
            path = fetch(claro, batch, s3)
            cat = claro.store.catalogue(catalogue)
            identifiers = [n for n, a in cat.attributes.items() if a.identifier] + \
                [alias for a in cat.attributes.values() if a.identifier for alias in a.aliases]
            try:
                raw = read_supplier_file(path, sheet=source.sheet, encoding=source.encoding,
                                         delimiter=source.delimiter, identifier_columns=identifiers)
            except SupplierFileError as exc:
                raise dg.Failure(description=str(exc)) from exc
            if len(raw.flags):
                raw.flags.to_csv(claro.batch_dir(batch.key) / "identifier_flags.csv", index=False)
        BatchRegistry(claro.store).set_status(batch.key, "received", stage="batch_raw")
        frame = raw.frame
        return dg.Output(frame, metadata={
            "file": batch.filename, "source": batch.source, "rows": len(frame),
            "columns": dg.MetadataValue.json(user_columns(frame)), "encoding": raw.encoding or "",
            "delimiter": raw.delimiter or "", "sheet": raw.sheet or "", "header_line": raw.header_line,
            "damaged_identifiers": len(raw.flags),
            "damaged_identifier_cells": preview(raw.flags) if len(raw.flags) else "none",
            "preview": preview(frame),
        })

    @dg.asset(key=key("batch_mapped"), ins={"raw": dg.AssetIn(key("batch_raw"))},
              description="Columns mapped to attributes (saved mapping per source shape); rows matched to records.",
              **common)
    def batch_mapped(context: dg.AssetExecutionContext, claro: CatalogueResource,
                     raw: pd.DataFrame) -> dg.Output[pd.DataFrame]:
        batch = resolve_batch(context, claro, catalogue)
        with settling(claro, batch, "batch_mapped"):
            cat = claro.store.catalogue(catalogue)
            book = MappingBook(claro.home_dir / "mappings")
            mapping, drafted = book.resolve(batch.source, user_columns(raw), cat)
            try:
                mapped = apply_mapping(raw, mapping, cat, source=batch.source)
            except ValueError as exc:
                raise dg.Failure(description=str(exc)) from exc
            gtin = next((n for n, a in cat.attributes.items() if a.format == "gtin"), None)
            existing = claro.store.records(catalogue, columns=[gtin] if gtin else [cat.key])
            gtins = dict(zip(existing[gtin], existing[cat.key], strict=True)) if gtin else {}
            matched = match_records(mapped, cat, set(existing[cat.key]), {g: k for g, k in gtins.items() if g})
        counts = matched["__match__"].value_counts().to_dict()
        return dg.Output(matched, metadata={
            "rows": len(matched),
            "mapping": dg.MetadataValue.json({c: a for c, a in mapping.attribute_for.items()}),
            "mapping_status": "new draft: review with `claro mapping show " + batch.source + "`" if drafted
            else "saved mapping reused",
            "matched_by_key": int(counts.get("key", 0)), "matched_by_gtin": int(counts.get("gtin", 0)),
            "new_records": int(counts.get("new", 0)), "preview": preview(matched),
        })

    @dg.asset(key=key("batch_validated"), ins={"mapped": dg.AssetIn(key("batch_mapped"))},
              check_specs=[dg.AssetCheckSpec(GATE, asset=key("batch_validated"), blocking=True,
                                             description="Rows failing validation stay within the error budget.")],
              description="Every attribute rule of the spec; failing rows kept with reasons.", **common)
    def batch_validated(context: dg.AssetExecutionContext, claro: CatalogueResource, mapped: pd.DataFrame):
        batch = resolve_batch(context, claro, catalogue)
        registry = BatchRegistry(claro.store)
        with settling(claro, batch, "batch_validated"):
            cat = claro.store.catalogue(catalogue)
            result = validate_batch(mapped, cat, known_references=known_references(claro.store, catalogue))
            rejected = registry.save_rejected(batch.key, result.rejected)
        passed = result.error_rate <= pipeline.error_budget
        verdict = (f"{rejected} of {result.rows_in} rows failed validation ({result.error_rate:.1%}); "
                   f"the error budget is {pipeline.error_budget:.0%}")
        if passed:
            registry.set_status(batch.key, "validated", stage="batch_validated", message=verdict,
                                spec_version=claro.spec_version)
        else:
            registry.set_status(batch.key, "halted", stage="batch_validated", spec_version=claro.spec_version,
                                message=f"{verdict}. Fix the file and upload it again, or see `claro rejected "
                                        f"{batch.key}`")
            settle_inbox_file(claro, batch, reason=verdict)
        frame = mapped.copy()
        frame["__rejected__"] = False
        frame["__reasons__"] = None
        if len(result.rejected):
            bad = frame["__line__"].isin(result.rejected["__line__"])
            frame.loc[bad, "__rejected__"] = True
            frame.loc[bad, "__reasons__"] = frame.loc[bad, "__line__"].map(
                dict(zip(result.rejected["__line__"], result.rejected["__reasons__"], strict=True)))
        metadata = {"rows_in": result.rows_in, "rows_valid": len(result.valid), "rows_rejected": rejected,
                    "error_rate": float(result.error_rate), "error_budget": float(pipeline.error_budget),
                    "rejected_rows": f"claro rejected {batch.key}",
                    "errors": preview(result.errors) if len(result.errors) else "none"}
        yield dg.Output(frame, metadata=metadata)
        yield dg.AssetCheckResult(check_name=GATE, passed=passed, severity=dg.AssetCheckSeverity.ERROR,
                                  description=verdict, metadata={"error_rate": float(result.error_rate),
                                                                 "rows_rejected": rejected})

    @dg.asset(key=key("batch_normalized"), ins={"validated": dg.AssetIn(key("batch_validated"))},
              description="Units, casing, enums, numbers and dates normalized; each change with its reason.",
              **common)
    def batch_normalized(context: dg.AssetExecutionContext, claro: CatalogueResource,
                         validated: pd.DataFrame) -> dg.Output[pd.DataFrame]:
        batch = resolve_batch(context, claro, catalogue)
        with settling(claro, batch, "batch_normalized"):
            valid = validated[~validated["__rejected__"].astype(bool)].drop(columns=["__rejected__", "__reasons__"])
            result = normalize_batch(valid, claro.store.catalogue(catalogue))
            log = claro.batch_dir(batch.key) / "normalizations.csv"
            result.changes.to_csv(log, index=False)
        per_attribute = result.changes["attribute"].value_counts()
        return dg.Output(result.frame, metadata={
            "rows": len(result.frame), "values_changed": len(result.changes), "change_log": str(log),
            "changes_by_attribute": dg.MetadataValue.json({str(k): int(v) for k, v in per_attribute.items()}),
            "changes": preview(result.changes), "preview": preview(result.frame),
        })

    @dg.asset(key=key("records"), ins={"normalized": dg.AssetIn(key("batch_normalized"))},
              description="The batch's change set applied to the catalogue through the confidence gate.", **common)
    def records(context: dg.AssetExecutionContext, claro: CatalogueResource,
                normalized: pd.DataFrame) -> dg.MaterializeResult:
        batch = resolve_batch(context, claro, catalogue)
        registry = BatchRegistry(claro.store)
        if batch.status not in ("validated", "published") and not (batch.status == "failed" and
                                                                   batch.stage == "records"):
            raise dg.Failure(description=f"batch {batch.key} is {batch.status} ({batch.message or 'not validated'}); "
                             "records will not publish it until batch_validated passes its gate")
        if batch.spec_version != claro.spec_version:
            raise dg.Failure(description=f"the spec ({claro.spec_path}) changed after batch {batch.key} was "
                             "validated; re-run batch_validated (and batch_normalized) for it so the batch is "
                             "checked against the current rules before it is published")
        with settling(claro, batch, "records"):
            cat = claro.store.catalogue(catalogue)
            frame = normalized.copy()
            if "__record__" in frame.columns:  # rows matched by GTIN write to the record they matched
                frame[cat.key] = frame[cat.key].where(frame[cat.key].notna(), frame["__record__"])
            frame = frame[[c for c in cat.attributes if c in frame.columns]]
            rows = pd.util.hash_pandas_object(frame, index=False, categorize=False)
            digest = hashlib.sha256(rows.to_numpy().tobytes()).hexdigest()
            result = claro.store.import_records(
                catalogue, frame, change_set_id=f"publish:{batch.key}:{digest[:16]}", operation="publish",
                run_id=context.run_id, source=batch.source, reason=f"published from {batch.filename}",
                overwrite_confidence=claro.spec.sources[batch.source].overwrite_confidence,
                empty_cells=claro.spec.sources[batch.source].empty_cells,
                clear_reason=f"cleared: empty cell in {batch.filename}")
        registry.set_status(batch.key, "published", stage="records", message=result.summary())
        settle_inbox_file(claro, batch)
        return dg.MaterializeResult(metadata={
            "rows_published": len(frame), "values_applied": result.applied, "records_created": result.created,
            "queued_for_review": result.queued, "rejected_by_gate": result.rejected, "unchanged": result.unchanged,
            "already_published": result.already_applied, "change_set": result.change_set,
            "catalogue_records": claro.store.count(catalogue),
        })

    stages = [batch_raw, batch_mapped, batch_validated, batch_normalized, records]
    if not pipeline.review_checkpoint:
        return stages

    @dg.asset(key=key(CHECKPOINT), deps=[key("records")], partitions_def=partitions, group_name=group,
              tags={"claro/pipeline": pipeline_name}, kinds={"python"}, output_required=False,
              description="Holds the batch until the changes its publishing queued for review are decided; "
                          "the review-checkpoint sensor resumes it once they are.")
    def review_checkpoint(context: dg.AssetExecutionContext, claro: CatalogueResource):
        from claro_dagster.catalogue.review import ReviewQueue
        from claro_dagster.sensors.chaining import AWAITING_REVIEW, open_items_of_batch

        batch = resolve_batch(context, claro, catalogue)
        registry = BatchRegistry(claro.store)
        if batch.status not in ("published", AWAITING_REVIEW):
            raise dg.Failure(description=f"batch {batch.key} is {batch.status}: it has not been published")
        pending = open_items_of_batch(ReviewQueue(claro.store), catalogue, batch.key)
        if pending:
            registry.set_status(batch.key, AWAITING_REVIEW, stage=CHECKPOINT,
                                message=f"{len(pending)} change(s) wait for review (`claro review list`); the batch "
                                        "goes on to its destinations once they are decided")
            context.log.info(f"batch {batch.key} waits for {len(pending)} review decision(s)")
            return  # no output: the stages after the checkpoint do not run for this batch yet
        released = "review decided; batch released" if batch.status == AWAITING_REVIEW else batch.message
        registry.set_status(batch.key, "published", stage=CHECKPOINT, message=released)
        yield dg.MaterializeResult(metadata={"released": True})

    return [*stages, review_checkpoint]
