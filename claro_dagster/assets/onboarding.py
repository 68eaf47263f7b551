"""The onboarding pipeline of one catalogue as assets over a dynamic partition per batch.

raw -> mapped -> validated (blocking gate) -> normalized [-> enriched, with `batch_enrichment`] -> records.
Each stage's rows persist through the IO manager so one stage can be re-run for one batch; each writes the
metadata a person reads in the UI. `records` itself refuses a batch whose latest validation failed, so re-running it
by hand cannot bypass the gate.
"""


import hashlib
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path

import dagster as dg
import pandas as pd
from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import exc as sa_exc

from claro_dagster.catalogue.batches import Batch, BatchRegistry, InvalidBatchKey, check_batch_key, content_version
from claro_dagster.catalogue.intake import map_batch, read_batch, user_columns, validate_mapped, verdict
from claro_dagster.catalogue.mappings import MappingBook
from claro_dagster.operations.normalize import normalize_batch
from claro_dagster.operations.read import SupplierFileError
from claro_dagster.resources.catalogue import CatalogueResource
from claro_dagster.resources.inbox import Inbox
from claro_dagster.resources.s3 import S3Connection
from claro_dagster.sensors.inbound import TAG_SOURCE, TAG_URI, TAG_VERSION
from claro_dagster.spec.models import PipelineSpec

#: Source kinds whose files arrive in a local inbox folder (`upload`: through `claro upload` or the portal).
INBOX_KINDS = ("inbox", "upload")
STAGES = ("batch_raw", "batch_mapped", "batch_validated", "batch_normalized", "records")
CHECKPOINT = "review_checkpoint"
GATE = "within_error_budget"
PREVIEW_ROWS = 10


ENRICHED = "batch_enriched"


def stages_of(pipeline: PipelineSpec) -> tuple[str, ...]:
    """The batch stages of a pipeline: the five (batch_enriched before records with `batch_enrichment`), plus the
    review checkpoint when it has one."""
    stages = (*STAGES[:-1], ENRICHED, STAGES[-1]) if pipeline.batch_enrichment else STAGES
    return (*stages, CHECKPOINT) if pipeline.review_checkpoint else stages


def batches_partitions(catalogue: str) -> dg.DynamicPartitionsDefinition:
    return dg.DynamicPartitionsDefinition(name=f"{catalogue}_batches")


def preview(frame: pd.DataFrame) -> dg.MetadataValue:
    shown = frame.head(PREVIEW_ROWS).astype(object).where(frame.head(PREVIEW_ROWS).notna(), "")
    return dg.MetadataValue.md(shown.to_markdown(index=False) if len(shown) else "_no rows_")


class BatchDataError(dg.Failure):
    """The batch's own content is at fault (an unreadable file, columns that cannot be mapped): the file is
    quarantined with this reason, and the step is not retried, since it would fail the same way again."""

    def __init__(self, description: str, metadata: dict | None = None):
        super().__init__(description=description, metadata=metadata, allow_retries=False)


class BatchRefused(dg.Failure):
    """A stage will not do what the run asks (an unknown batch, a file outside its source, a gate not passed):
    nothing is moved and nothing retried; the message says what to do next."""

    def __init__(self, description: str, metadata: dict | None = None):
        super().__init__(description=description, metadata=metadata, allow_retries=False)


class BatchUnavailable(dg.Failure):
    """Something the stage depends on (the catalogue database, S3, the disk) failed, not the batch: the file
    stays where it is and the stage's retry policy runs it again."""


#: Failures of what a stage depends on rather than of the batch: a locked or unreachable database, S3 errors
#: and timeouts, the file system. They never quarantine a file.
TRANSIENT: tuple[type[BaseException], ...] = (
    sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError, sa_exc.DisconnectionError,
    BotoCoreError, ClientError, OSError, TimeoutError)

#: Each stage's retry policy for transient failures: 3 more attempts, 15 s then about 30 s and 60 s apart
#: (a locked SQLite file or a restarting database usually answers again within a minute).
STAGE_RETRY = dg.RetryPolicy(max_retries=3, delay=15, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


@contextmanager
def settling(claro: CatalogueResource, batch: Batch, stage: str) -> Iterator[None]:
    """Tell apart what a batch's file causes from what fails around it.

    A data error marks the batch (quarantined before mapping completes, failed after), moves its inbox file to
    quarantine/ with the reason and fails without retry. A transient failure (database, S3, disk) leaves the
    file and the batch's status as they were and fails the step for its retry policy. Anything else is a
    defect, not the file's fault: the batch is marked failed, the file stays, no retry.
    """
    try:
        yield
    except BatchDataError as exc:
        reason = exc.description or type(exc).__name__
        BatchRegistry(claro.store).set_status(
            batch.key, "quarantined" if stage in ("batch_raw", "batch_mapped") else "failed", stage=stage,
            message=reason)
        settle_inbox_file(claro, batch, reason=reason)
        raise
    except dg.Failure:
        raise
    except TRANSIENT as exc:
        raise BatchUnavailable(
            description=f"{stage} could not finish batch {batch.key} ({batch.filename}) because "
                        f"{type(exc).__name__}: {exc}. This is not a problem of the file: it stays where it is and "
                        "the step is retried; if the retries fail too, re-execute the run once the database or "
                        f"S3 answers again (or `claro rerun {batch.key} {stage}`)") from exc
    except Exception as exc:
        reason = str(exc) or type(exc).__name__
        with suppress(Exception):  # the report of a defect must not hide the defect
            BatchRegistry(claro.store).set_status(batch.key, "failed", stage=stage, message=reason)
        raise BatchRefused(description=f"{stage} failed for batch {batch.key} ({batch.filename}) with an "
                                       f"unexpected {type(exc).__name__}: {reason}. The file stays where it is; "
                                       f"once the cause is fixed, `claro rerun {batch.key} {stage}`") from exc


def settle_inbox_file(claro: CatalogueResource, batch: Batch, reason: str | None = None,
                      note: str | None = None) -> Path | None:
    """Move a batch's file in its inbox to processed/ (reason None, with an optional note) or to quarantine/
    with a reason file. Never deletes; never touches a file outside the source's inbox."""
    source = claro.spec.sources.get(batch.source)
    path = Path(batch.uri)
    if source is None or source.kind not in INBOX_KINDS or not path.exists():
        return None
    inbox = Inbox(claro.inbox_dir(batch.source))
    if inbox.root.resolve() not in path.resolve().parents:
        return None
    if reason is None:
        return inbox.mark_processed(path, batch.key, note=note)
    return inbox.quarantine(path, batch.key, reason)


def already_published_note(batch: Batch) -> str:
    return (f"already published: this file holds the same content as batch {batch.key}, published on "
            f"{batch.updated_at:%Y-%m-%d %H:%M} UTC ({batch.message or batch.status}); nothing new in it, so it "
            "was not processed again")


def acknowledge_duplicate(claro: CatalogueResource, batch: Batch, uri: str | Path) -> Path | None:
    """A copy (at `uri`) of a batch already published arrived again: move it to processed/ with a note saying so."""
    return settle_inbox_file(claro, replace(batch, uri=str(uri)), note=already_published_note(batch))


def published_copy(claro: CatalogueResource, batch: Batch, received: str | None) -> tuple[Batch | None, str | None]:
    """(The published batch whose content the received file holds, or None; the file's content hash, or None when
    it was not hashed.) Inbox files are hashed here, in the run: sensor ticks never read them. An S3 batch key holds
    the object's ETag already, so such a batch is its own copy once published."""
    if not received or received.startswith("s3://"):
        return (batch if batch.published and received else None), None
    path = Path(received)
    try:
        digest = content_version(path)
    except (FileNotFoundError, IsADirectoryError):
        return None, None  # moved away meanwhile (a re-execution): the batch's own copy is read
    copy = BatchRegistry(claro.store).copy_of(batch.source, path.name, digest)
    if copy is None and batch.published:
        raise BatchRefused(f"{received} has the name, size and modification time of batch {batch.key}, published, "
                           "but other content; touch the file (or drop it again) to receive it as a new batch")
    return copy, digest


def receipt_uri(claro: CatalogueResource, catalogue: str, source_name: str, uri: str) -> tuple[str, str]:
    """(uri, file name) of a file a run says it received, once it is known to lie where its source receives.

    A local file must lie inside its source's inbox with every link resolved; an object must lie in its
    source's bucket under its prefix. Anything else (a tag naming any file on the machine) is refused.
    """
    source = claro.spec.sources.get(source_name)
    if source is None or source.catalogue != catalogue:
        raise BatchRefused(f"the run names source {source_name!r}, which is not a source of catalogue "
                           f"{catalogue!r} in {claro.spec_path}")
    if source.kind == "s3":
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        if not uri.startswith("s3://") or bucket != source.bucket or not key.startswith(source.prefix):
            raise BatchRefused(f"{uri} is not in source {source_name!r}'s bucket "
                               f"(s3://{source.bucket}/{source.prefix}); batches are received from there only")
        name = key.rsplit("/", 1)[-1]
    else:
        inbox = Inbox(claro.inbox_dir(source_name))
        path = Path(uri)
        if uri.startswith("s3://") or not path.is_absolute() or not inbox.contains(path):
            raise BatchRefused(f"{uri} is not inside source {source_name!r}'s inbox ({inbox.root}); batches are "
                               "received from there only (links out of the inbox are not followed)")
        name = path.name
    if name in ("", ".", "..") or "\\" in name:
        raise BatchRefused(f"{uri} does not name a file")
    return uri, name


def resolve_batch(context: dg.AssetExecutionContext, claro: CatalogueResource, catalogue: str,
                  receiving: bool = False) -> Batch:
    """The batch of this partition: from the registry, else registered from the run's sensor tags.

    `receiving` (batch_raw): a run that carries a sensor's tags receives that copy of the file, so a batch
    quarantined before is received again from where the new copy lies.
    """
    registry = BatchRegistry(claro.store)
    try:
        key = check_batch_key(context.partition_key)
    except InvalidBatchKey as exc:
        raise BatchRefused(str(exc)) from None
    batch = registry.get(key)
    tags = context.run.tags
    if batch is not None and not (receiving and TAG_URI in tags):
        return batch
    if TAG_URI not in tags or TAG_SOURCE not in tags:
        raise BatchRefused(f"batch {key} is not registered and the run carries no {TAG_URI} tag: receive it "
                           "through an inbox, S3 or `claro upload` first")
    uri, name = receipt_uri(claro, catalogue, tags[TAG_SOURCE], tags[TAG_URI])
    if batch is not None and batch.source != tags[TAG_SOURCE]:
        raise BatchRefused(f"batch {key} belongs to source {batch.source!r}, not {tags[TAG_SOURCE]!r}")
    return registry.receive(key, catalogue=catalogue, source=tags[TAG_SOURCE], filename=name, uri=uri,
                            content_version=tags.get(TAG_VERSION))


def fetch(claro: CatalogueResource, batch: Batch, s3: S3Connection | None) -> Path:
    """Copy the received file into the batch's own folder (once), so later moves never lose it."""
    folder = claro.batch_dir(batch.key)
    target = folder / batch.filename
    if target.parent != folder or batch.filename in ("", ".", ".."):
        raise BatchRefused(f"batch {batch.key}: {batch.filename!r} is not a file name")
    if target.exists():
        return target
    if batch.uri.startswith("s3://"):
        if s3 is None:
            raise BatchRefused(f"batch {batch.key} comes from {batch.uri} but source {batch.source!r} has no S3 "
                               "connection in this code location; reload the definitions after editing the spec")
        bucket, _, key = batch.uri[len("s3://"):].partition("/")
        try:
            return s3.download(bucket, key, target)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                raise BatchRefused(f"the object of batch {batch.key} is gone from {batch.uri}; upload it "
                                   "again") from exc
            raise
    source = Path(batch.uri)
    inbox = Inbox(claro.inbox_dir(batch.source))
    if not inbox.contains(source):
        raise BatchRefused(f"the file of batch {batch.key} ({source}) is not inside source {batch.source!r}'s "
                           f"inbox ({inbox.root}); it is not read")
    if not source.exists():
        raise BatchRefused(f"the file of batch {batch.key} is gone from {source}; upload it again")
    tmp = target.with_suffix(target.suffix + ".part")
    shutil.copyfile(source.resolve(), tmp)
    tmp.rename(target)
    return target


def with_failed_pages(rejected: pd.DataFrame, batch: Batch) -> pd.DataFrame:
    """The rejected rows plus, for a scrape batch, each page that gave no row (no line; its URL and reason).
    They are kept with the batch's rejected rows but never count against the error budget: they were not rows."""
    from claro_dagster.sensors.inbound import failed_pages

    failed = failed_pages(batch.uri) if batch.uri and not batch.uri.startswith("s3://") else []
    if not failed:
        return rejected
    pages = pd.DataFrame([{"__line__": float("nan"), "url": p["url"], "status": p.get("status"),
                           "__reasons__": f"page {p['url']}: {p['reason']}"} for p in failed])
    return pd.concat([rejected, pages], ignore_index=True) if len(rejected) else pages


def page_citations(batch: Batch, frame: pd.DataFrame, key: str) -> dict[str, str] | None:
    """Record key -> the URL of the page its row was pulled or scraped from (the batch's pull note), else None."""
    from claro_dagster.sensors.inbound import pulled_rows

    pages = pulled_rows(batch.uri) if batch.uri and not batch.uri.startswith("s3://") else {}
    if not pages or "__line__" not in frame.columns:
        return None
    lines = frame["__line__"].map(lambda n: str(int(n)) if n == n and n is not None else None)
    return {str(k): pages[line] for k, line in zip(frame[key], lines, strict=True)
            if line in pages and k is not None and k == k}


def build_onboarding(pipeline_name: str, pipeline: PipelineSpec, partitions: dg.DynamicPartitionsDefinition,
                     s3_resources: Mapping[str, str] | None = None) -> list[dg.AssetsDefinition]:
    """The five stage assets of one pipeline, keyed `<catalogue>/<stage>`.

    `s3_resources`: source name -> the resource key of that S3 source's connection (each source its own
    endpoint); batch_raw requires them all and downloads a batch through its own source's connection.
    """
    catalogue = pipeline.catalogue
    group = catalogue
    s3_resources = dict(s3_resources or {})
    common = dict(partitions_def=partitions, group_name=group, io_manager_key="batch_frames",
                  tags={"claro/pipeline": pipeline_name}, kinds={"python", "pandas"}, retry_policy=STAGE_RETRY)

    def key(stage: str) -> dg.AssetKey:
        return dg.AssetKey([catalogue, stage])

    @dg.asset(key=key("batch_raw"), description="Rows as received, with source line numbers.",
              required_resource_keys={"claro", *s3_resources.values()}, output_required=False, **common)
    def batch_raw(context: dg.AssetExecutionContext) -> Iterator[dg.Output[pd.DataFrame]]:
        claro: CatalogueResource = context.resources.claro
        batch = resolve_batch(context, claro, catalogue, receiving=True)
        received = context.run.tags.get(TAG_URI)
        published, digest = published_copy(claro, batch, received)
        if published is not None:
            # The same content again, after it was published: acknowledged, not processed (no output, so the later
            # stages of this run are skipped). The copy goes to processed/ under this receipt's batch key, and a
            # receipt registered for it alone is forgotten: the published batch keeps its status.
            if published.key != batch.key:
                BatchRegistry(claro.store).forget_receipt(batch.key)
            moved = settle_inbox_file(claro, replace(batch, uri=received), note=already_published_note(published))
            context.log.info(f"{batch.filename}: {already_published_note(published)}"
                             + (f"; moved to {moved}" if moved else ""))
            return
        if digest and digest != batch.content_version:
            BatchRegistry(claro.store).record_content_version(batch.key, digest)
        with settling(claro, batch, "batch_raw"):
            source = claro.spec.sources.get(batch.source)
            if source is None:
                raise BatchRefused(f"batch {batch.key}: source {batch.source!r} is not in the spec; sources are: "
                                   f"{', '.join(claro.spec.sources)}")
            s3 = getattr(context.resources, s3_resources[batch.source]) if batch.source in s3_resources else None
            path = fetch(claro, batch, s3)
            try:
                raw = read_batch(path, source, claro.store.catalogue(catalogue))
            except SupplierFileError as exc:
                raise BatchDataError(str(exc)) from exc
            if len(raw.flags):
                raw.flags.to_csv(claro.batch_dir(batch.key) / "identifier_flags.csv", index=False)
        BatchRegistry(claro.store).set_status(batch.key, "received", stage="batch_raw")
        frame = raw.frame
        yield dg.Output(frame, metadata={
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
                matched = map_batch(raw, mapping, claro.store, catalogue, batch.source,
                                    claro.spec.sources[batch.source])
            except ValueError as exc:
                raise BatchDataError(str(exc)) from exc
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
            result = validate_mapped(mapped, claro.store, catalogue, claro.spec.sources.get(batch.source))
            rejected = registry.save_rejected(batch.key, with_failed_pages(result.rejected, batch))
        judged = verdict(result, rejected, pipeline.error_budget)
        passed, verdict_text = judged.passed, judged.text
        if passed:
            registry.set_status(batch.key, "validated", stage="batch_validated", message=verdict_text,
                                spec_version=claro.spec_version)
        else:
            registry.set_status(batch.key, "halted", stage="batch_validated", spec_version=claro.spec_version,
                                message=f"{verdict_text}. Fix the file and upload it again, or see `claro rejected "
                                        f"{batch.key}`")
            settle_inbox_file(claro, batch, reason=verdict_text)
        # `__rejected__`, `__reasons__` and each attribute's normalized values: batch_normalized reads them
        # instead of evaluating every rule again
        frame = result.carried()
        metadata = {"rows_in": result.rows_in, "rows_valid": result.rows_in - rejected, "rows_rejected": rejected,
                    "error_rate": float(result.error_rate), "error_budget": float(pipeline.error_budget),
                    "rejected_rows": f"claro rejected {batch.key}",
                    "errors": preview(result.errors) if len(result.errors) else "none"}
        yield dg.Output(frame, metadata=metadata)
        yield dg.AssetCheckResult(check_name=GATE, passed=passed, severity=dg.AssetCheckSeverity.ERROR,
                                  description=verdict_text, metadata={"error_rate": float(result.error_rate),
                                                                 "rows_rejected": rejected})

    @dg.asset(key=key("batch_normalized"), ins={"validated": dg.AssetIn(key("batch_validated"))},
              description="Units, casing, enums, numbers and dates normalized; each change with its reason.",
              **common)
    def batch_normalized(context: dg.AssetExecutionContext, claro: CatalogueResource,
                         validated: pd.DataFrame) -> dg.Output[pd.DataFrame]:
        batch = resolve_batch(context, claro, catalogue)
        with settling(claro, batch, "batch_normalized"):
            # the rows that passed, normalized from the outcomes batch_validated carries
            result = normalize_batch(validated, claro.store.catalogue(catalogue))
            log = claro.batch_dir(batch.key) / "normalizations.csv"
            result.changes.to_csv(log, index=False)
        per_attribute = result.changes["attribute"].value_counts()
        return dg.Output(result.frame, metadata={
            "rows": len(result.frame), "values_changed": len(result.changes), "change_log": str(log),
            "changes_by_attribute": dg.MetadataValue.json({str(k): int(v) for k, v in per_attribute.items()}),
            "changes": preview(result.changes), "preview": preview(result.frame),
        })

    enriched_stage = build_batch_enriched(catalogue, key, common) if pipeline.batch_enrichment else None

    @dg.asset(key=key("records"),
              ins={"normalized": dg.AssetIn(key(ENRICHED if pipeline.batch_enrichment else "batch_normalized"))},
              description="The batch's change set applied to the catalogue through the confidence gate.", **common)
    def records(context: dg.AssetExecutionContext, claro: CatalogueResource,
                normalized: pd.DataFrame) -> dg.MaterializeResult:
        batch = resolve_batch(context, claro, catalogue)
        registry = BatchRegistry(claro.store)
        if batch.status not in ("validated", "published") and not (batch.status == "failed" and
                                                                   batch.stage == "records"):
            raise BatchRefused(f"batch {batch.key} is {batch.status} ({batch.message or 'not validated'}); "
                               "records will not publish it until batch_validated passes its gate")
        if batch.spec_version != claro.spec_version:
            raise BatchRefused(f"the spec ({claro.spec_path}) changed after batch {batch.key} was "
                               "validated; re-run batch_validated (and batch_normalized) for it so the batch is "
                               "checked against the current rules before it is published")
        with settling(claro, batch, "records"):
            cat = claro.store.catalogue(catalogue)
            frame = normalized.copy()
            if "__record__" in frame.columns:  # rows matched by GTIN write to the record they matched
                frame[cat.key] = frame[cat.key].where(frame[cat.key].notna(), frame["__record__"])
            citations = page_citations(batch, frame, cat.key)
            frame = frame[[c for c in cat.attributes if c in frame.columns]]
            rows = pd.util.hash_pandas_object(frame, index=False, categorize=False)
            digest = hashlib.sha256(rows.to_numpy().tobytes()).hexdigest()
            result = claro.store.import_records(
                catalogue, frame, change_set_id=f"publish:{batch.key}:{digest[:16]}", operation="publish",
                run_id=context.run_id, source=batch.source, reason=f"published from {batch.filename}",
                overwrite_confidence=claro.spec.sources[batch.source].overwrite_confidence,
                empty_cells=claro.spec.sources[batch.source].empty_cells,
                clear_reason=f"cleared: empty cell in {batch.filename}", citations=citations)
            enriched = {}
            if pipeline.batch_enrichment:  # batch_enriched's proposals, written once the records exist
                from claro_dagster.catalogue.enrichment import write_batch_enrichment

                enriched = write_batch_enrichment(claro.store, catalogue, normalized, run_id=context.run_id,
                                                  batch=batch.key, digest=digest[:16])
        registry.set_status(batch.key, "published", stage="records", message=result.summary())
        settle_inbox_file(claro, batch)
        return dg.MaterializeResult(metadata={
            "rows_published": len(frame), "values_applied": result.applied, "records_created": result.created,
            "queued_for_review": result.queued, "rejected_by_gate": result.rejected, "unchanged": result.unchanged,
            "already_published": result.already_applied, "change_set": result.change_set,
            "catalogue_records": claro.store.count(catalogue), **enriched,
        })

    stages = [batch_raw, batch_mapped, batch_validated, batch_normalized, records]
    if enriched_stage is not None:
        stages.insert(4, enriched_stage)
    if not pipeline.review_checkpoint:
        return stages

    @dg.asset(key=key(CHECKPOINT), deps=[key("records")], partitions_def=partitions, group_name=group,
              tags={"claro/pipeline": pipeline_name}, kinds={"python"}, output_required=False,
              retry_policy=STAGE_RETRY,
              description="Holds the batch until the changes its publishing queued for review are decided; "
                          "the review-checkpoint sensor resumes it once they are.")
    def review_checkpoint(context: dg.AssetExecutionContext, claro: CatalogueResource):
        from claro_dagster.catalogue.review import ReviewQueue
        from claro_dagster.sensors.chaining import AWAITING_REVIEW, open_items_of_batch

        batch = resolve_batch(context, claro, catalogue)
        registry = BatchRegistry(claro.store)
        if batch.status not in ("published", AWAITING_REVIEW):
            raise BatchRefused(f"batch {batch.key} is {batch.status}: it has not been published")
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


def build_batch_enriched(catalogue: str, key, common: dict) -> dg.AssetsDefinition:
    """`batch_enriched`: the batch's missing values proposed by the attributes' `enrich` methods (carried to
    `records`, which writes them through the `enrich` gate after publishing the batch)."""
    from claro_dagster.assets.enrich import enrich_metadata
    from claro_dagster.catalogue.enrichment import enrich_batch
    from claro_dagster.operations.enrich import ModelUnavailable
    from claro_dagster.resources.model_endpoint import ChatCompletionsClient

    @dg.asset(key=key(ENRICHED), ins={"normalized": dg.AssetIn(key("batch_normalized"))},
              description="Gaps filled by Bulk Enrichment with confidence and citations; the values go in with "
                          "the batch at records, through the enrich gate (the review band to the queue).", **common)
    def batch_enriched(context: dg.AssetExecutionContext, claro: CatalogueResource,
                       normalized: pd.DataFrame) -> dg.Output[pd.DataFrame]:
        batch = resolve_batch(context, claro, catalogue)
        with settling(claro, batch, ENRICHED):
            client = ChatCompletionsClient()
            try:
                frame, report = enrich_batch(claro.store, catalogue, normalized, model=client)
            except ModelUnavailable as exc:
                raise BatchUnavailable(description=f"{ENRICHED} could not finish batch {batch.key}: {exc}") from exc
            finally:
                client.close()
        for note in report.notes:
            context.log.warning(note)
        metadata = enrich_metadata(report)
        metadata["queued_for_review"] = 0  # proposed here, queued when records publishes the batch
        return dg.Output(frame, metadata={**metadata, "rows": len(frame), "preview": preview(frame)})

    return batch_enriched
