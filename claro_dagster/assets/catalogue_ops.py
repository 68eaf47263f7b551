"""Catalogue-level operations as assets: Analyse, Export, and the outbound destinations."""


import os
from datetime import UTC, datetime

import dagster as dg

from claro_dagster.catalogue.channels import ChannelState, cursor_name
from claro_dagster.catalogue.intake import known_references
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.operations.analyse import analyse_catalogue
from claro_dagster.operations.export import CHUNK_ROWS as EXPORT_CHUNK_ROWS
from claro_dagster.operations.export import EXPORT_FORMATS, export_records
from claro_dagster.operations.validate import validate_batch
from claro_dagster.resources import bigquery as bq
from claro_dagster.resources import sales_channels
from claro_dagster.resources.catalogue import CatalogueResource
from claro_dagster.resources.postgres import PostgresDestination
from claro_dagster.resources.s3 import S3Connection
from claro_dagster.spec.models import DestinationSpec


class AnalyseConfig(dg.Config):
    filter: str | None = None


class ValidateConfig(dg.Config):
    filter: str | None = None


def build_validate(catalogue: str, after: list[dg.AssetKey]) -> dg.AssetsDefinition:
    key = dg.AssetKey([catalogue, "validate"])

    @dg.asset(key=key, group_name=catalogue, deps=after, kinds={"python"},
              check_specs=[dg.AssetCheckSpec("records_valid", asset=key,
                                             description="Every stored record passes the spec's rules.")],
              description="Re-validate stored records against the spec (e.g. after the catalogues they reference "
                          "changed).")
    def validate(context: dg.AssetExecutionContext, config: ValidateConfig, claro: CatalogueResource):
        store = claro.store
        frame = store.records(catalogue, filter=config.filter)
        # Stored values are typed; the rules read values as suppliers send them, i.e. as text.
        as_text = frame.astype(object).where(frame.notna(), None).map(lambda v: None if v is None else str(v))
        result = validate_batch(as_text, store.catalogue(catalogue),
                                known_references=known_references(store, catalogue))
        failing = len(result.rejected)
        yield dg.MaterializeResult(metadata={
            "records_checked": len(frame), "records_failing": failing, "filter": config.filter or "",
            "errors": dg.MetadataValue.md(result.errors.head(20).to_markdown(index=False)) if failing else "none"})
        yield dg.AssetCheckResult(check_name="records_valid", passed=failing == 0, severity=dg.AssetCheckSeverity.WARN,
                                  description=f"{failing} of {len(frame)} record(s) fail the spec's rules",
                                  metadata={"records_failing": failing})

    return validate


class DestinationConfig(dg.Config):
    filter: str | None = None  # narrows the destination's own filter (both apply)


class ExportConfig(dg.Config):
    format: str = "csv"
    filter: str | None = None
    columns: list[str] | None = None


def build_analyse(catalogue: str, after: list[dg.AssetKey]) -> dg.AssetsDefinition:
    @dg.asset(key=[catalogue, "analyse"], group_name=catalogue, deps=after, kinds={"python"},
              description="Data-quality report: fill rates, uniqueness, distributions, critical issues, score.")
    def analyse(context: dg.AssetExecutionContext, config: AnalyseConfig,
                claro: CatalogueResource) -> dg.MaterializeResult:
        report = run_analyse(claro, catalogue, config.filter)
        fields = report.fields_table()
        metadata = {
            "score": dg.MetadataValue.float(float(report.score)), "records": report.records,
            "unique_entries": report.unique_entries, "duplicate_estimate": report.duplicate_estimate,
            "columns_analysed": report.columns_analysed, "critical_issues": len(report.critical),
            "report": dg.MetadataValue.md(report.to_markdown()),
            "fields": dg.MetadataValue.md(fields.to_markdown(index=False)),
            "filter": config.filter or "",
        }
        # One numeric entry per field so the UI plots each fill rate across runs.
        metadata.update({f"fill_rate/{f.attribute}": dg.MetadataValue.float(float(f.fill_rate))
                         for f in report.fields})
        return dg.MaterializeResult(metadata=metadata)

    return analyse


def run_analyse(claro: CatalogueResource, catalogue: str, filter: str | None):
    frame = claro.store.records(catalogue, filter=filter)
    return analyse_catalogue(frame, claro.store.catalogue(catalogue), name=catalogue, filter=filter)


def build_export(catalogue: str, after: list[dg.AssetKey]) -> dg.AssetsDefinition:
    @dg.asset(key=[catalogue, "export"], group_name=catalogue, deps=after, kinds={"python"},
              description=f"Export the catalogue as one of {', '.join(EXPORT_FORMATS)}, with filter and columns.")
    def export(context: dg.AssetExecutionContext, config: ExportConfig,
               claro: CatalogueResource) -> dg.MaterializeResult:
        result = run_export(claro, catalogue, config.format, config.filter, config.columns, context.run_id)
        return dg.MaterializeResult(metadata={
            "path": str(result.path), "format": result.format, "rows": result.rows,
            "columns": dg.MetadataValue.json(list(result.columns)), "filter": config.filter or ""})

    return export


def run_export(claro: CatalogueResource, catalogue: str, fmt: str, filter: str | None, columns, run_id: str,
               path=None, on_progress=None):
    """Export a catalogue, streamed from the store in chunks; `on_progress(n)` after each chunk of n records."""
    frames = claro.store.record_chunks(catalogue, filter=filter, chunk_rows=EXPORT_CHUNK_ROWS)
    if path is None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        ext = {"shopify_csv": "shopify.csv", "amazon_flat": "amazon.txt"}.get(fmt, fmt)
        path = claro.home_dir / "exports" / catalogue / f"{catalogue}_{stamp}_{run_id[:8]}.{ext}"
    path.parent.mkdir(parents=True, exist_ok=True)
    return export_records(frames, claro.store.catalogue(catalogue), fmt, path, columns=columns,
                          on_progress=on_progress)


def _bigquery_what(dest: DestinationSpec) -> str:
    table = f"{dest.project}.{dest.dataset}.{dest.table}"
    return {"append": f"load jobs appending to {table} the records changed since its cursor",
            "replace": f"load jobs replacing {table} with the whole filtered catalogue",
            "merge": f"load job + MERGE on the key into {table} of the records changed since its cursor"}[dest.mode]


def push_bigquery(table: bq.BigQueryTable, store: CatalogueStore, name: str, dest: DestinationSpec,
                  where: str | None, moves_cursor: bool = True) -> dg.MaterializeResult:
    """One BigQuery push: replace sends the whole filtered catalogue, append and merge what changed since the
    destination's cursor; the cursor moves only after the load (and the MERGE) succeeded."""
    spec = store.catalogue(dest.catalogue)
    key = spec.key
    columns = [key, *[c for c in (dest.columns or list(spec.attributes)) if c != key]]
    since = int(store.get_cursor(cursor_name(name), "0"))
    upto = store.last_seq(dest.catalogue)
    if dest.mode == "replace":
        frame = store.records(dest.catalogue, filter=where, columns=columns)
    else:
        frame = store.changed_since(dest.catalogue, since, filter=where, columns=columns)
    frame = frame[columns]
    layout = bq.layout_of(dest)
    result = table.push(dest.dataset, dest.table, frame, bq.table_columns(spec, columns, layout), key, dest.mode,
                        layout, job_id=bq.job_id_for(name, since, upto) if dest.mode == "append" else None)
    if moves_cursor:  # an ad-hoc narrower run must not move the cursor past records it skipped
        store.set_cursor(cursor_name(name), str(upto))
    metadata = {"rows_sent": len(frame), "mode": dest.mode, "jobs": dg.MetadataValue.json(result.jobs),
                "table": f"{dest.project}.{dest.dataset}.{dest.table}", "cursor": upto,
                "added_columns": dg.MetadataValue.json(result.added_columns),
                "created_table": result.created_table, "found_existing_job": result.found_existing_job}
    if result.inserted is not None:
        metadata["inserted"] = result.inserted
    if result.updated is not None:
        metadata["updated"] = result.updated
    return dg.MaterializeResult(metadata=metadata)


def push_supabase_rest(store: CatalogueStore, name: str, dest: DestinationSpec, where: str | None,
                       moves_cursor: bool = True, **http_options) -> dg.MaterializeResult:
    """Supabase through PostgREST: the records changed since the destination's cursor, upserted in batches of
    `batch_size` (resources/supabase.py); the cursor moves only after every batch was accepted."""
    from claro_dagster.resources.supabase import PostgrestTable, frame_rows

    spec = store.catalogue(dest.catalogue)
    key = spec.key
    since = int(store.get_cursor(cursor_name(name), "0"))
    upto = store.last_seq(dest.catalogue)
    frame = store.changed_since(dest.catalogue, since, filter=where, columns=dest.columns)
    if dest.columns:
        frame = frame[[key, *[c for c in dest.columns if c != key]]]
    result = PostgrestTable.from_env(dest, **http_options).upsert(frame_rows(frame), key, dest.batch_size) \
        if len(frame) else None
    if moves_cursor:  # an ad-hoc narrower run must not move the cursor past records it skipped
        store.set_cursor(cursor_name(name), str(upto))
    return dg.MaterializeResult(metadata={"rows_sent": len(frame), "requests": result.requests if result else 0,
                                          "table": dest.table, "mode": "rest", "cursor": upto})


def destination_resource_key(name: str) -> str:
    return f"destination_{name}"


def destination_resource(dest: DestinationSpec):
    # Each connection reads its variables when it connects, never through `dg.EnvVar`: Dagster resolves an
    # EnvVar when it checks a run's config, for every resource the run's assets need, so a pipeline run would be
    # refused as a whole for one destination whose variable is unset (see `skip_unconfigured`).
    if dest.kind == "s3":
        return S3Connection(endpoint_url_env=dest.endpoint_url_env)
    if dest.kind == "postgres" or (dest.kind == "supabase" and dest.mode == "sql"):
        return PostgresDestination.from_env(dest.url_env)
    if dest.kind == "supabase":  # rest: the PostgREST client is built from the environment per push
        return dg.ResourceDefinition.hardcoded_resource(dest)
    if dest.kind == "bigquery":
        return bq.BigQueryConnection(project=dest.project, endpoint_url_env=dest.endpoint_url_env,
                                     credentials_env=dest.credentials_env)
    if dest.kind in sales_channels.CHANNEL_KINDS:  # the client is built from the environment when a push runs
        return dg.ResourceDefinition.hardcoded_resource(dest)
    if dest.kind == "sheets":
        return dg.ResourceDefinition.hardcoded_resource(dest)  # the client is built from the environment per sync
    return None


def missing_env(dest: DestinationSpec) -> str | None:
    """The environment variables a destination needs that are not set (`A and B`), if any."""
    if dest.kind in sales_channels.CHANNEL_KINDS:
        return sales_channels.missing_env(dest)
    if dest.kind == "bigquery":  # credentials_env unset means application default credentials
        names = [n for n in (dest.endpoint_url_env, dest.credentials_env) if n]
        return next((n for n in names if not os.environ.get(n)), None)
    if dest.kind == "sheets":
        from claro_dagster.resources.sheets import missing_env as sheets_missing_env

        return sheets_missing_env(dest)
    if dest.kind == "supabase":
        from claro_dagster.resources.supabase import required_env as supabase_required_env

        return next((n for n in supabase_required_env(dest) if not os.environ.get(n)), None)
    name = dest.url_env if dest.kind == "postgres" else dest.endpoint_url_env if dest.kind == "s3" else None
    return name if name and not os.environ.get(name) else None


def operation_job_name(catalogue: str, operation: str) -> str:
    """The job of one catalogue operation or destination (`products_analyse`), as the UI lists its runs; a run of a
    destination's own job is that destination run by hand (`claro run`, the API, Slack, its own schedule)."""
    return f"{catalogue}_{operation}"


def not_configured_message(name: str, dest: DestinationSpec, needed: str) -> str:
    return (f"destination {name} is not configured where Dagster runs: set {needed} in the environment of the "
            f"code location (its webserver, daemon and run workers) to sync {dest.catalogue} to it")


def skip_unconfigured(context: dg.AssetExecutionContext, name: str, dest: DestinationSpec) -> bool:
    """Whether to skip this destination in this run because its settings are missing here. Run alone (its own
    job), it fails naming the variable; in a run of several assets (a pipeline, a schedule, a chained pipeline)
    it says so in the run's log and is not materialized, and the rest of the run goes on."""
    needed = missing_env(dest)
    if not needed:
        return False
    message = not_configured_message(name, dest, needed)
    if context.job_name == operation_job_name(dest.catalogue, name):
        raise dg.Failure(description=message, allow_retries=False)
    context.log.warning(f"skipped: {message}")
    return True


def build_destination(name: str, dest: DestinationSpec, after: list[dg.AssetKey]) -> dg.AssetsDefinition | None:
    """Outbound sync: S3 gets a full snapshot per run under a versioned key; PostgreSQL gets an upsert of only
    the records changed since its cursor; BigQuery a load job (append, replace or merge, see resources/bigquery);
    Google Sheets a two-way sync (see resources/sheets)."""
    if dest.kind == "sheets":
        return build_sheets_destination(name, dest, after)
    if dest.kind not in ("s3", "postgres", "supabase", "bigquery", *sales_channels.CHANNEL_KINDS):
        return None  # the other connectors arrive with their own issues
    catalogue = dest.catalogue
    resource_key = destination_resource_key(name)
    what = "snapshot" if dest.kind == "s3" else _bigquery_what(dest) if dest.kind == "bigquery" else \
        "incremental upsert"

    asset_key = dg.AssetKey([catalogue, name])
    # One asset, as a multi-asset only so that it may end without materializing (and without its check's result)
    # when skipped for missing settings (skip_unconfigured): `can_subset` is what makes a check's output optional.
    @dg.multi_asset(name="__".join(asset_key.path), can_subset=True,
                    specs=[dg.AssetSpec(asset_key, group_name=catalogue, deps=after, kinds={dest.kind}, skippable=True,
                                        description=f"Outbound {dest.kind}: {what} of {catalogue}"
                                                    + (f" where {dest.filter}" if dest.filter else ""))],
                    required_resource_keys={resource_key, "claro"}, op_tags={"claro/destination": name},
                    check_specs=[dg.AssetCheckSpec("all_pushed", asset=asset_key,
                                                   description="every record that should be on the channel was "
                                                               "accepted by its last push")]
                    if dest.kind in sales_channels.CHANNEL_KINDS else None)
    def destination(context: dg.AssetExecutionContext, config: DestinationConfig):
        if not skip_unconfigured(context, name, dest):
            yield push(context, config)

    def push(context: dg.AssetExecutionContext, config: DestinationConfig) -> dg.MaterializeResult:
        connector = getattr(context.resources, resource_key)
        store = context.resources.claro.store
        columns = dest.columns
        filters = [f"({f})" for f in (dest.filter, config.filter) if f]
        where = " and ".join(filters) or None
        if dest.kind == "s3":
            frame = store.records(catalogue, filter=where, columns=columns)
            key = connector.put_snapshot(frame, dest.bucket, dest.prefix, catalogue, dest.format, context.run_id,
                                         ensure_bucket=True)
            return dg.MaterializeResult(metadata={"rows": len(frame), "uri": f"s3://{dest.bucket}/{key}"})
        if dest.kind in sales_channels.CHANNEL_KINDS:
            plan = sales_channels.push_destination(store, name, dest, filter=config.filter)
            expected = len(store.records(catalogue, filter=dest.filter, columns=[store.catalogue(catalogue).key]))
            counts = ChannelState(store).counts(name)
            accepted = counts.get("pushed", 0) + counts.get("archived", 0)
            check = dg.AssetCheckResult(check_name="all_pushed", passed=accepted == expected, metadata={
                "should_be_on_channel": expected, "accepted": accepted, "failed": counts.get("failed", 0),
                "held": counts.get("held", 0)})
            return dg.MaterializeResult(metadata={
                "created": len(plan.create), "updated": len(plan.update), "archived": len(plan.archive),
                "unchanged": len(plan.unchanged), "failed": len(plan.failed), "calls": plan.sent},
                check_results=[check] if dg.AssetCheckKey(asset_key, "all_pushed") in context.selected_asset_check_keys
                else [])
        if dest.kind == "bigquery":
            return push_bigquery(connector.table(), store, name, dest, where, moves_cursor=not config.filter)
        if dest.kind == "supabase" and dest.mode == "rest":
            return push_supabase_rest(store, name, dest, where, moves_cursor=not config.filter)
        since = int(store.get_cursor(cursor_name(name), "0"))
        upto = store.last_seq(catalogue)
        frame = store.changed_since(catalogue, since, filter=where, columns=columns)
        key = store.catalogue(catalogue).key
        if columns:
            frame = frame[[key, *[c for c in columns if c != key]]]
        result = connector.upsert(dest.table, frame, key) if len(frame) else None
        if not config.filter:  # an ad-hoc narrower run must not move the cursor past records it skipped
            store.set_cursor(cursor_name(name), str(upto))
        return dg.MaterializeResult(metadata={
            "rows_sent": len(frame), "inserted": result.inserted if result else 0,
            "updated": result.updated if result else 0, "table": dest.table, "cursor": upto})

    return destination


def build_sheets_destination(name: str, dest: DestinationSpec, after: list[dg.AssetKey]) -> dg.AssetsDefinition:
    """Two-way sync with a Google Sheets named range: pull the edits people made (as changes through validation and
    the gate, conflicts for review), then push what the catalogue changed, in one batchUpdate."""
    catalogue = dest.catalogue
    resource_key = destination_resource_key(name)

    @dg.asset(key=[catalogue, name], group_name=catalogue, deps=after, kinds={"googlesheets"},
              required_resource_keys={resource_key, "claro"}, op_tags={"claro/destination": name},
              description=f"Two-way sync of {catalogue} with named range {dest.named_range!r} of Google spreadsheet "
                          f"{dest.spreadsheet_id}" + (f" where {dest.filter}" if dest.filter else ""),
              output_required=False)  # not materialized when skipped for missing settings (skip_unconfigured)
    def destination(context: dg.AssetExecutionContext):
        if not skip_unconfigured(context, name, dest):
            yield sync(context)

    def sync(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        from claro_dagster.resources.sheets import client_from_env, sync_sheet

        store = context.resources.claro.store
        result = sync_sheet(store, name, dest, client_from_env(dest), run_id=context.run_id)
        for problem in result.problems:
            context.log.warning(problem)
        if result.deleted_rows:
            context.log.warning(f"rows deleted in the sheet, kept in the catalogue and written back: "
                                f"{', '.join(result.deleted_rows)}")
        p = result.pulled
        return dg.MaterializeResult(metadata={
            "pulled_applied": p.applied, "pulled_queued": p.queued, "conflicts": result.conflicts,
            "invalid": len(p.invalid), "new_rows": result.new_rows, "deleted_in_sheet": len(result.deleted_rows),
            "waiting_for_review": result.pending, "rows": result.rows, "rows_written": result.rows_written,
            "batch_updates": result.calls,
            "details": dg.MetadataValue.md("\n".join(f"- {line}" for line in [
                *(f"invalid: {i}" for i in p.invalid), *(f"deleted in the sheet: {k}" for k in result.deleted_rows),
                *result.problems]) or "nothing to report")})

    return destination
