"""Inbound sensors: an inbox folder, an S3 prefix or a Google Drive folder becomes a stream of batch runs.

(The Drive sensor, `build_drive_sensor`, follows Drive's changes feed and downloads each file itself: see its
docstring. What follows describes the inbox and S3 sensors.)

Each file (or object) becomes one batch: a dynamic partition whose key is
`batch_key(source, filename, version)`. Ticks only list: they never read a file. The version is therefore
the inbox file's `receipt_version` (name, size and modification time), or the object's ETag (S3). A changed
file is a new batch. The run (`batch_raw`) hashes the file's content: a copy of content already published
under this source and file name (dropped again, so with a new modification time and a new batch key) is
acknowledged there and not processed again.

Each receipt of a file is one run request. Dagster never launches a run key twice for a sensor, so the
run key names the receipt, not only the content:

* inbox: the batch key for the first copy, `<batch key>:<n>` for the n-th copy with the same name, size
  and modification time (n - 1 copies already moved to processed/ or quarantine/ under that batch key). A
  pending file keeps its run key until the run moves it; a file dropped again after it was quarantined is
  processed again, and one dropped again after it was published gets a run that acknowledges it (moved to
  processed/ with a note).
* S3: `<batch key>@<LastModified>`; an object is listed once per upload, so an identical re-upload is a
  new receipt (processed again if its batch was quarantined, acknowledged if it was published).

Sensors only list and decide: they never move, download or delete anything (the run does that).
Tags on every run request:

    claro/source           the source's name in the spec
    claro/uri              the file's absolute path, or s3://bucket/key
    claro/content_version  the full receipt version (inbox) or ETag (S3) the batch key was made from
    claro/batch            the batch key (also the partition key)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import dagster as dg

from claro_dagster.catalogue.batches import batch_key
from claro_dagster.resources.drive import DriveClient, DriveConnection, DriveError, DriveFile, DriveFileRejected
from claro_dagster.resources.inbox import Inbox
from claro_dagster.resources.s3 import DEFAULT_SETTLE_SECONDS, S3Connection, S3Cursor

TAG_SOURCE = "claro/source"
TAG_URI = "claro/uri"
TAG_VERSION = "claro/content_version"
TAG_BATCH = "claro/batch"

Target = dg.AssetSelection | Sequence[dg.AssetKey] | Sequence[str]


def _new_partitions(
    context: dg.SensorEvaluationContext, partitions_def: dg.DynamicPartitionsDefinition, keys: list[str]
) -> list[dg.AddDynamicPartitionsRequest]:
    """One add request for the keys not yet in the partition set (none when all exist)."""
    existing = set(context.instance.get_dynamic_partitions(partitions_def.name)) if keys else set()
    new = [k for k in dict.fromkeys(keys) if k not in existing]
    return [partitions_def.build_add_request(new)] if new else []


def inbox_run_key(inbox: Inbox, key: str) -> str:
    """The run key of the next receipt of batch `key` from `inbox` (see the module docstring)."""
    settled = inbox.times_settled(key)
    return key if not settled else f"{key}:{settled + 1}"


def build_inbox_sensor(
    name: str,
    source_name: str,
    inbox_dir: Path,
    *,
    target: Target,
    partitions_def: dg.DynamicPartitionsDefinition,
    minimum_interval_seconds: int = 5,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
    min_age_seconds: float = 0.0,
    description: str | None = None,
) -> dg.SensorDefinition:
    """A sensor that requests one run per pending file of `Inbox(inbox_dir)`.

    Every tick re-emits the run requests of all pending files (Dagster skips run keys it already
    launched), and adds only the partitions that do not exist yet. A tick lists the folder and reads no
    file, whatever its size. The cursor (relative path -> receipt version of the files pending at the last
    tick) is only informative. `min_age_seconds` > 0 ignores files modified more recently than that.
    """
    if not partitions_def.name:
        raise ValueError("partitions_def must be a named DynamicPartitionsDefinition")
    inbox_path = Path(inbox_dir)

    @dg.sensor(
        name=name,
        target=target,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description=description or f"Requests one batch run per new or changed file in {inbox_path}",
        tags={TAG_SOURCE: source_name},
    )
    def _inbox_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        inbox = Inbox(inbox_path)
        files = inbox.pending(min_age_seconds=min_age_seconds, read_contents=False)
        cursor = json.dumps({"v": 2, "files": {f.relative: f.version for f in files}},
                            sort_keys=True, separators=(",", ":"))
        if not files:
            return dg.SensorResult(skip_reason=f"no pending files in {inbox_path}", cursor=cursor)
        keys: list[str] = []
        requests: list[dg.RunRequest] = []
        for item in files:
            key = batch_key(source_name, item.name, item.version)
            if key in keys:  # same name and content in two sub-folders: one batch
                continue
            keys.append(key)
            requests.append(dg.RunRequest(
                run_key=inbox_run_key(inbox, key),
                partition_key=key,
                tags={TAG_SOURCE: source_name, TAG_URI: str(item.path.resolve()),
                      TAG_VERSION: item.version, TAG_BATCH: key},
            ))
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=_new_partitions(context, partitions_def, keys),
            cursor=cursor,
        )

    return _inbox_sensor


def build_s3_sensor(
    name: str,
    source_name: str,
    bucket: str,
    prefix: str,
    *,
    target: Target,
    partitions_def: dg.DynamicPartitionsDefinition,
    minimum_interval_seconds: int = 30,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
    page_size: int = 1000,
    settle_seconds: float = DEFAULT_SETTLE_SECONDS,
    description: str | None = None,
    resource_key: str = "s3",
) -> dg.SensorDefinition:
    """A sensor that requests one run per new or changed object under `s3://bucket/prefix`.

    Needs the resource `resource_key` (an `S3Connection`: each S3 source has its own, with its own
    endpoint). Each tick lists ONE page (`page_size` keys) with
    `S3Connection.list_since`, so a large prefix is paged across ticks; the sensor cursor is the
    `S3Cursor` JSON. Objects whose key ends in `/` (folder markers) are skipped.
    """
    if not partitions_def.name:
        raise ValueError("partitions_def must be a named DynamicPartitionsDefinition")

    @dg.sensor(
        name=name,
        target=target,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description=description or f"Requests one batch run per new or changed object in s3://{bucket}/{prefix}",
        tags={TAG_SOURCE: source_name},
        required_resource_keys={resource_key},
    )
    def _s3_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        s3: S3Connection = getattr(context.resources, resource_key)
        objects, cursor = s3.list_since(bucket, prefix, S3Cursor.from_json(context.cursor), page_size,
                                        settle_seconds=settle_seconds)
        objects = [o for o in objects if not o.key.endswith("/")]
        if not objects:
            state = "listing continues next tick" if cursor.in_pass else "listing pass complete"
            return dg.SensorResult(skip_reason=f"no new objects in s3://{bucket}/{prefix} ({state})",
                                   cursor=cursor.to_json())
        keys: list[str] = []
        requests: list[dg.RunRequest] = []
        for obj in objects:
            key = batch_key(source_name, obj.name, obj.etag)
            if key in keys:  # same name and ETag under two folders: one batch
                continue
            keys.append(key)
            requests.append(dg.RunRequest(
                run_key=f"{key}@{obj.last_modified.strftime('%Y%m%dT%H%M%S.%fZ')}",
                partition_key=key,
                tags={TAG_SOURCE: source_name, TAG_URI: obj.uri, TAG_VERSION: obj.etag, TAG_BATCH: key},
            ))
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=_new_partitions(context, partitions_def, keys),
            cursor=cursor.to_json(),
        )

    return _s3_sensor


# -- Google Drive ------------------------------------------------------------------------------------

TAG_DRIVE_FILE = "claro/drive_file"
DEFAULT_DRIVE_MAX_BYTES = 100 * 1024 * 1024


def drive_run_key(key: str, file: DriveFile) -> str:
    """`<batch key>@<file id>:<MD5 or v<version>>`: a changed file is a new run, an unchanged one never twice."""
    return f"{key}@{file.id}:{file.content_version}"


def build_drive_sensor(
    name: str,
    source_name: str,
    folder_id: str,
    receive_dir: Path,
    *,
    target: Target,
    partitions_def: dg.DynamicPartitionsDefinition,
    resource_key: str,
    drive_id: str | None = None,
    max_file_bytes: int = DEFAULT_DRIVE_MAX_BYTES,
    minimum_interval_seconds: int = 60,
    max_pages_per_tick: int = 50,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
    description: str | None = None,
) -> dg.SensorDefinition:
    """A sensor that follows a Drive folder through the changes feed and requests one run per new or changed
    CSV, XLSX or Google Sheets file in it.

    The cursor is Drive's page token. The first tick asks for the start page token, then lists the folder
    (`files.list`), so files already there are received; later ticks page through the changes from the token
    (at most `max_pages_per_tick` pages: a long feed continues next tick). A change counts when its file is not
    trashed or removed and the folder is among its parents. Unlike the inbox and S3 sensors, this one downloads:
    Drive has no path the run could read, and the content must be the version the run key names. Each file is
    streamed into `<receive_dir>/<batch key>/<name>` (a Google Sheet exported as `<name>.xlsx`), once per
    version, and the run reads it from there like an inbox file. A file that is not a spreadsheet or is too
    large is not received: it is logged and kept as `<receive_dir>/quarantine/<batch key>/<name>.reason.txt`
    with the reason, as the inbox keeps refused files. Needs the resource `resource_key` (a `DriveConnection`).
    """
    if not partitions_def.name:
        raise ValueError("partitions_def must be a named DynamicPartitionsDefinition")
    receive_path = Path(receive_dir)

    @dg.sensor(
        name=name,
        target=target,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description=description or f"Requests one batch run per new or changed spreadsheet in Drive folder "
                                   f"{folder_id}",
        tags={TAG_SOURCE: source_name},
        required_resource_keys={resource_key},
    )
    def _drive_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        connection: DriveConnection = getattr(context.resources, resource_key)
        client = connection.client()
        try:
            token = _drive_token(context.cursor)
            if token is None:  # first tick: where the feed starts now, then what is already in the folder
                token = client.start_page_token(drive_id)
                candidates = list(client.list_folder(folder_id, drive_id))
                state = "folder listed"
            else:
                candidates = []
                for _ in range(max_pages_per_tick):
                    page = client.changes(token, drive_id)
                    token = page.token
                    candidates += [c.file for c in page.changes if c.file is not None and not c.removed]
                    if page.caught_up:
                        break
                state = "changes feed caught up" if page.caught_up else "changes continue next tick"
            keys: list[str] = []
            requests: list[dg.RunRequest] = []
            for file in candidates:
                if file.trashed or file.is_folder or folder_id not in file.parents:
                    continue
                key = batch_key(source_name, file.filename, drive_version(file))
                if key in keys:  # the same version twice in one tick (a feed lists a file once per change)
                    continue
                received = _receive_drive_file(context, client, file, key, receive_path, max_file_bytes)
                if received is None:
                    continue
                keys.append(key)
                requests.append(dg.RunRequest(
                    run_key=drive_run_key(key, file),
                    partition_key=key,
                    tags={TAG_SOURCE: source_name, TAG_URI: str(received.resolve()), TAG_VERSION: file.content_version,
                          TAG_BATCH: key, TAG_DRIVE_FILE: file.id},
                ))
        finally:
            client.close()
        cursor = json.dumps({"v": 1, "token": token}, sort_keys=True, separators=(",", ":"))
        if not requests:
            return dg.SensorResult(skip_reason=f"no new spreadsheets in Drive folder {folder_id} ({state})",
                                   cursor=cursor)
        return dg.SensorResult(run_requests=requests,
                               dynamic_partitions_requests=_new_partitions(context, partitions_def, keys),
                               cursor=cursor)

    return _drive_sensor


def drive_version(file: DriveFile) -> str:
    """The hex version a Drive file's batch key is made from: its id and its MD5 (or Sheet version) together."""
    return hashlib.sha256(f"{file.id}\0{file.content_version}".encode()).hexdigest()


def _drive_token(cursor: str | None) -> str | None:
    if not cursor:
        return None
    try:
        data = json.loads(cursor)
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict) or data.get("v") != 1 or not data.get("token"):
        # Starting over would list the folder again (harmless: run keys repeat) but hides the fault; say it.
        raise ValueError(f"not a Drive sensor cursor: {cursor[:80]!r}; reset the sensor's cursor in the UI to "
                         "start over from the folder's current content")
    return str(data["token"])


def _receive_drive_file(context: dg.SensorEvaluationContext, client: DriveClient, file: DriveFile, key: str,
                        receive_dir: Path, max_file_bytes: int) -> Path | None:
    """The file's local copy (downloaded once per version), or None when it is refused (noted, logged once)."""
    target = receive_dir / key / file.filename
    if target.exists():
        return target
    note = receive_dir / "quarantine" / key / f"{file.filename}.reason.txt"
    if note.exists():
        return None
    try:
        return client.download(file, target, max_bytes=max_file_bytes)
    except DriveFileRejected as exc:
        reason = exc.reason
    except DriveError as exc:
        if getattr(exc, "status", None) != 404:
            raise
        reason = f"{file.describe()} could not be downloaded ({exc}); it was deleted or moved meanwhile"
    context.log.warning(reason)
    note.parent.mkdir(parents=True, exist_ok=True)
    note.write_text(f"{reason}\n\nbatch: {key}\nfile: drive file {file.id} ({file.name}, {file.mime_type})\n"
                    f"version: {file.content_version}\n", encoding="utf-8")
    return None


def bigquery_source_resource_key(source_name: str) -> str:
    return f"source_{source_name}_bigquery"


def bigquery_cursor_name(source_name: str) -> str:
    """The store cursor of a BigQuery source: the last watermark pulled and the keys pulled at exactly it."""
    return f"source:{source_name}:bigquery"


def pull_bigquery_source(store, inbox_dir: Path, source_name: str, source, table) -> Path | None:
    """Pull the rows newer than the source's watermark into ONE new CSV file in its inbox folder, then move the
    watermark (so a failure before the file is written pulls the same rows again). None when nothing is new."""
    import hashlib
    import os
    import time

    from claro_dagster.resources.bigquery import cursor_json

    cursor_text = store.get_cursor(bigquery_cursor_name(source_name))
    cursor = json.loads(cursor_text) if cursor_text else None
    sql_from = f"({source.query})" if source.query else f"`{source.project}.{source.dataset}.{source.table}`"
    frame, new_cursor = table.pull(sql_from, source.key, source.watermark, cursor, limit=BIGQUERY_PULL_ROWS)
    if new_cursor is None:
        return None
    data = frame.to_csv(index=False).encode()
    digest = hashlib.sha256(data).hexdigest()
    inbox_dir.mkdir(parents=True, exist_ok=True)
    path = inbox_dir / f"{source_name}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{digest[:10]}.csv"
    # where the rows came from: the query and the watermark range, next to the file (kept with the pull)
    path.with_suffix(".pull.json").write_text(json.dumps({
        "source": source_name, "from": sql_from, "key": source.key, "watermark": source.watermark,
        "after": cursor, "upto": new_cursor, "rows": len(frame)}, indent=1, default=str), encoding="utf-8")
    partial = path.with_suffix(".part")
    partial.write_bytes(data)
    os.replace(partial, path)  # complete or absent: a tick never emits a half-written file
    store.set_cursor(bigquery_cursor_name(source_name), cursor_json(new_cursor))
    return path


def pulled_file_requests(registry, source_name: str, inbox_dir: Path, patterns: Sequence[str] = ("*.csv",)) \
        -> tuple[list[str], list[dg.RunRequest]]:
    """One run request per pulled file in `inbox_dir` whose batch was not received yet (pulling sources). The
    pull named each file after its content's hash: the tick lists, it never reads a file. Run keys are the batch
    keys, so Dagster never launches one twice. `patterns`: the pulled files' names (the email source adds XLSX)."""
    keys, requests = [], []
    paths = sorted({p for pattern in patterns for p in inbox_dir.glob(pattern)}) if inbox_dir.exists() else []
    for path in paths:
        digest = path.stem.rsplit("-", 1)[-1]
        key = batch_key(source_name, path.name, digest)
        if registry.get(key) is not None:
            continue
        keys.append(key)
        requests.append(dg.RunRequest(run_key=key, partition_key=key, tags={
            TAG_SOURCE: source_name, TAG_URI: str(path.resolve()), TAG_VERSION: digest, TAG_BATCH: key}))
    return keys, requests


def pulled_batches(context: dg.SensorEvaluationContext, source_name: str, inbox_dir: Path,
                   partitions_def: dg.DynamicPartitionsDefinition, *, pulled: str, nothing: str,
                   cursor: str | None = None, patterns: Sequence[str] = ("*.csv",)) -> dg.SensorResult:
    """The end of a pulling sensor's tick: a run for each pulled file whose batch was not received yet (see
    `pulled_file_requests`), or `nothing` as the skip reason. `pulled` says what this tick pulled, in the log."""
    from claro_dagster.catalogue.batches import BatchRegistry

    keys, requests = pulled_file_requests(BatchRegistry(context.resources.claro.store), source_name, inbox_dir,
                                          patterns)
    if not requests:
        return dg.SensorResult(skip_reason=nothing, cursor=cursor)
    context.log.info(f"{pulled}; {len(requests)} batch(es) to receive")
    return dg.SensorResult(run_requests=requests, cursor=cursor,
                           dynamic_partitions_requests=_new_partitions(context, partitions_def, keys))


def _pulled(path: Path | None) -> str:
    return f"pulled {path.name if path else 'nothing new'}"


BIGQUERY_PULL_ROWS = 100_000  # rows per pull (one batch); more wait for the next tick


def build_bigquery_sensor(
    name: str,
    source_name: str,
    source,
    *,
    target: Target,
    partitions_def: dg.DynamicPartitionsDefinition,
    resource_key: str,
    minimum_interval_seconds: int = 300,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
) -> dg.SensorDefinition:
    """A sensor that pulls a BigQuery table or query incrementally (by its watermark column) and turns each pull
    into one batch: the rows are written as a CSV file into the source's inbox folder, then the watermark moves
    (stored per source in the catalogue store). Every tick also requests a run for each pulled file whose batch
    was not received yet, so a tick that failed after writing its file loses nothing (run keys are the batch
    keys: Dagster never launches one twice)."""
    if not partitions_def.name:
        raise ValueError("partitions_def must be a named DynamicPartitionsDefinition")
    what = source.query and "its query" or f"{source.project}.{source.dataset}.{source.table}"

    @dg.sensor(name=name, target=target, minimum_interval_seconds=minimum_interval_seconds,
               default_status=default_status, tags={TAG_SOURCE: source_name},
               required_resource_keys={"claro", resource_key},
               description=f"Pulls the rows of {what} newer than {source.watermark!r} into a batch")
    def _bigquery_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        claro = context.resources.claro
        inbox_dir = claro.inbox_dir(source_name)
        pulled = pull_bigquery_source(claro.store, inbox_dir, source_name, source,
                                      getattr(context.resources, resource_key).table())
        return pulled_batches(context, source_name, inbox_dir, partitions_def, pulled=_pulled(pulled),
                              nothing=f"no rows newer than the watermark in {what}")

    return _bigquery_sensor


# -- PostgreSQL / Supabase ---------------------------------------------------------------------------

def db_cursor_name(source_name: str) -> str:
    """The store cursor of a PostgreSQL or Supabase source: the last watermark pulled and the keys at exactly it."""
    return f"source:{source_name}:db"


def db_source_settings(source_name: str, source):
    """The `DbSource` of a `kind: postgres` / `kind: supabase` spec block."""
    from claro_dagster.resources.db_source import DbSource

    return DbSource(name=source_name, url_env=source.url_env or "", key=source.key or "",
                    watermark=source.watermark or "", table=source.table, query=source.query,
                    soft_delete=source.soft_delete, soft_delete_sets=dict(source.soft_delete_sets),
                    chunk_rows=source.chunk_rows, max_rows=source.max_rows_per_pull)


def pull_db_source(store, inbox_dir: Path, settings, *, environ=None, on_chunk=None):
    """Pull the rows newer than the source's stored cursor into one new CSV file in its inbox folder
    (`claro_dagster.resources.db_source.pull`), then store the cursor: a failure before the file is complete
    leaves the cursor, so the next pull takes the same rows again. Returns the `PullResult`."""
    from claro_dagster.resources import db_source
    from claro_dagster.resources.watermark import cursor_json, parse_cursor

    name = db_cursor_name(settings.name)
    result = db_source.pull(settings, parse_cursor(store.get_cursor(name)), inbox_dir, environ=environ,
                            on_chunk=on_chunk)
    if result.cursor is not None:
        store.set_cursor(name, cursor_json(result.cursor))
    return result


def build_db_source_sensor(
    name: str,
    source_name: str,
    source,
    *,
    target: Target,
    partitions_def: dg.DynamicPartitionsDefinition,
    minimum_interval_seconds: int = 300,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
) -> dg.SensorDefinition:
    """A sensor that pulls a PostgreSQL / Supabase table or query incrementally (by its watermark column) and turns
    each pull into one batch: the rows are streamed into a CSV file in the source's inbox folder, then the cursor
    moves (stored per source in the catalogue store). Every tick also requests a run for each pulled file whose
    batch was not received yet, so a tick that failed after writing its file loses nothing. Warnings of the pull
    (the source went backwards, soft-deleted rows left out) are logged."""
    if not partitions_def.name:
        raise ValueError("partitions_def must be a named DynamicPartitionsDefinition")
    settings = db_source_settings(source_name, source)

    @dg.sensor(name=name, target=target, minimum_interval_seconds=minimum_interval_seconds,
               default_status=default_status, tags={TAG_SOURCE: source_name}, required_resource_keys={"claro"},
               description=f"Pulls the rows of {settings.what} (database in {settings.url_env}) newer than "
                           f"{settings.watermark!r} into a batch")
    def _db_source_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        claro = context.resources.claro
        inbox_dir = claro.inbox_dir(source_name)
        result = pull_db_source(claro.store, inbox_dir, settings)
        for warning in result.warnings:
            context.log.warning(warning)
        if result.soft_deleted:
            done = "archived" if settings.soft_delete_sets else "left out of the batch (no soft_delete_sets)"
            context.log.warning(f"source {source_name}: {len(result.soft_deleted)} soft-deleted row(s) {done}; "
                                f"keys in {result.note}")
        return pulled_batches(context, source_name, inbox_dir, partitions_def, pulled=_pulled(result.path),
                              nothing=f"no rows newer than the cursor in {settings.what}")

    return _db_source_sensor


# -- HTTPS scraping (`kind: scrape`) -----------------------------------------------------------------------------

def scrape_source_resource_key(source_name: str) -> str:
    return f"source_{source_name}_scrape"


def scrape_cursor_name(source_name: str) -> str:
    """The store cursor of a scrape source: ETag / Last-Modified per page URL (a 304 page is not extracted)."""
    return f"source:{source_name}:scrape"


class ScrapeConnection(dg.ConfigurableResource):
    """How a scrape source fetches: its user agent, the delay between requests to a host, hosts allowed at private
    addresses (`claro_dagster.resources.scrape.Scraper`)."""

    user_agent: str | None = None
    delay_seconds: float = 1.0
    allow_hosts: list[str] = []

    def scraper(self):
        from claro_dagster.resources.scrape import DEFAULT_USER_AGENT, Scraper

        return Scraper(user_agent=self.user_agent or DEFAULT_USER_AGENT, delay_seconds=self.delay_seconds,
                       allow_hosts=self.allow_hosts)


def scrape_urls(store, catalogue: str, source, scraper) -> list[str]:
    """The pages to scrape: the spec's `urls`, the `sitemap`'s, or `url_template` filled per record of `filter`."""
    from claro_dagster.resources.scrape import fill_template

    if source.urls:
        return list(source.urls)
    if source.sitemap:
        return scraper.urls_from_sitemap(source.sitemap)
    records = store.records(catalogue, filter=source.filter)
    return [url for url in (fill_template(source.url_template, r) for r in records.to_dict("records")) if url]


def pull_scrape_source(store, inbox_dir: Path, source_name: str, source, scraper) -> tuple[Path | None, list]:
    """Scrape the source's pages into ONE CSV file (a row per page that gave values) in its inbox folder, named by
    its content's hash, with `<file>.pull.json` beside it: each row's page URL (line -> URL) and each page that
    failed, with its reason (read by batch_validated into the batch's rejected rows). The ETag cache moves only
    after the file is written. (None, pages) when no page gave new values."""
    import csv
    import hashlib
    import io
    import os
    import time

    from claro_dagster.resources.scrape import PageCache

    cache = PageCache.from_json(store.get_cursor(scrape_cursor_name(source_name)))
    urls = scrape_urls(store, source.catalogue, source, scraper)
    pages = scraper.pages(urls, source.extract, source.selectors, cache)
    rows = [p for p in pages if p.values]
    if not rows:
        if any(p.not_modified for p in pages):
            store.set_cursor(scrape_cursor_name(source_name), cache.to_json())
        return None, pages
    columns = list(dict.fromkeys(c for p in rows for c in p.values))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(p.values for p in rows)
    data = buffer.getvalue().encode()
    digest = hashlib.sha256(data).hexdigest()
    inbox_dir.mkdir(parents=True, exist_ok=True)
    existing = sorted(inbox_dir.glob(f"{source_name}-*-{digest[:10]}.csv"))
    if existing:  # the same values as a file pulled before (pages without ETag): no new batch
        store.set_cursor(scrape_cursor_name(source_name), cache.to_json())
        return None, pages
    path = inbox_dir / f"{source_name}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{digest[:10]}.csv"
    path.with_suffix(".pull.json").write_text(json.dumps({
        "source": source_name, "user_agent": scraper.user_agent,
        "rows": record_lines(data, [p.url for p in rows]),
        "failed": [{"url": p.url, "status": p.status, "reason": p.reason} for p in pages if p.failed],
        "not_modified": [p.url for p in pages if p.not_modified]}, indent=1), encoding="utf-8")
    partial = path.with_suffix(".part")
    partial.write_bytes(data)
    os.replace(partial, path)
    store.set_cursor(scrape_cursor_name(source_name), cache.to_json())
    return path, pages


def record_lines(data: bytes, urls: Sequence[str]) -> dict[str, str]:
    """Physical line of each record of a pulled CSV file -> the URL of the page it came from (`urls`: one per
    record, in file order), for the pull's note: the onboarding stages cite that URL on every value of the record.
    Counted by reading the file back, as a value holding line breaks makes a record span several lines."""
    import csv
    import io

    reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
    next(reader, None)  # the header
    out, start = {}, reader.line_num + 1
    for url, _ in zip(urls, reader, strict=True):
        out[str(start)] = url
        start = reader.line_num + 1
    return out


def pulled_rows(received: str | Path) -> dict[str, str]:
    """Line -> the URL of the page a pulled row came from (scrape and http pulls), from the note beside its file
    ({} otherwise)."""
    note = Path(received).with_suffix(".pull.json")
    if not note.is_file():
        return {}
    rows = json.loads(note.read_text(encoding="utf-8")).get("rows")
    return {str(k): str(v) for k, v in rows.items()} if isinstance(rows, dict) else {}


def failed_pages(received: str | Path) -> list[dict]:
    """The pages a scrape pull could not take values from ({url, status, reason}), from the note beside its file."""
    note = Path(received).with_suffix(".pull.json")
    if not note.is_file():
        return []
    return list(json.loads(note.read_text(encoding="utf-8")).get("failed", []))


def failures_summary(pages: list, shown: int = 5) -> str:
    """`; N failed: <url>: <reason>; ...` (the first `shown`), or "" when every page gave values or was unchanged."""
    failed = [p for p in pages if p.failed]
    if not failed:
        return ""
    listed = "; ".join(f"{p.url}: {p.reason}" for p in failed[:shown])
    more = f"; and {len(failed) - shown} more (see the tick's log)" if len(failed) > shown else ""
    return f"; {len(failed)} failed: {listed}{more}"


def build_scrape_sensor(
    name: str,
    source_name: str,
    source,
    *,
    target: Target,
    partitions_def: dg.DynamicPartitionsDefinition,
    resource_key: str,
    minimum_interval_seconds: int = 3600,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
) -> dg.SensorDefinition:
    """A sensor that scrapes a source's pages (through the `ScrapeConnection` at `resource_key`) into one batch
    file per pull and requests a run for every pulled file whose batch was not received yet."""
    if not partitions_def.name:
        raise ValueError("partitions_def must be a named DynamicPartitionsDefinition")

    @dg.sensor(name=name, target=target, minimum_interval_seconds=minimum_interval_seconds,
               default_status=default_status, tags={TAG_SOURCE: source_name},
               required_resource_keys={"claro", resource_key},
               description=f"Scrapes the product pages of source {source_name} into a batch")
    def _scrape_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        claro = context.resources.claro
        inbox_dir = claro.inbox_dir(source_name)
        scraper = getattr(context.resources, resource_key).scraper()
        try:
            pulled, pages = pull_scrape_source(claro.store, inbox_dir, source_name, source, scraper)
        finally:
            scraper.close()
        for page in pages:
            if page.failed:
                context.log.warning(f"{source_name}: {page.url}: {page.reason}")
        return pulled_batches(context, source_name, inbox_dir, partitions_def, pulled=_pulled(pulled),
                              nothing=f"no new values on {len(pages)} page(s)" + failures_summary(pages))

    return _scrape_sensor


# -- HTTP pulls (`kind: http`) -----------------------------------------------------------------------------

def http_cursor_name(source_name: str) -> str:
    """The store cursor of an HTTP source: its watermark, ETag and Last-Modified (JSON)."""
    return f"source:{source_name}:http"


def pull_http_source(store, inbox_dir: Path, source_name: str, source, client, *, env=None) -> Path | None:
    """Pull every page of the source's feed into ONE new CSV file in its inbox folder (named by its content hash,
    with a `.pull.json` beside it naming each page's URL and the records it gave), then store the new watermark,
    ETag and Last-Modified. A pull that fails (a page times out, a loop, bad content) writes nothing and moves
    nothing, so the next tick starts again from the stored cursor. None when the feed is unchanged (304) or empty."""
    import os
    import time

    from claro_dagster.resources.http_source import pull, records_csv

    spec = source.http
    name = http_cursor_name(source_name)
    text = store.get_cursor(name)
    state = json.loads(text) if text else {}
    base_url = (env if env is not None else os.environ).get(spec.url_env) if spec.url_env else None
    if spec.url_env and not base_url:
        raise ValueError(f"source {source_name!r}: http.url_env names {spec.url_env!r}, which is not set")
    result = pull(spec, client, state, env=env, base_url=base_url)
    if result.not_modified or not result.records:
        if result.state != state and not result.not_modified:
            store.set_cursor(name, json.dumps(result.state, sort_keys=True))
        return None
    data = records_csv(result.records, result.urls, spec.source_url_column)
    digest = hashlib.sha256(data).hexdigest()
    inbox_dir.mkdir(parents=True, exist_ok=True)
    path = inbox_dir / f"{source_name}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{digest[:10]}.csv"
    # provenance: the URL of each page and how many records (in file order) it gave, next to the file
    path.with_suffix(".pull.json").write_text(json.dumps({
        "source": source_name, "method": spec.method, "pages": result.pages, "after": state, "upto": result.state,
        "records": len(result.records), "rows": record_lines(data, result.urls)}, indent=1, default=str),
        encoding="utf-8")
    partial = path.with_suffix(".part")
    partial.write_bytes(data)
    os.replace(partial, path)  # complete or absent: a tick never emits a half-written file
    store.set_cursor(name, json.dumps(result.state, sort_keys=True, default=str))
    return path


def build_http_sensor(
    name: str,
    source_name: str,
    source,
    *,
    target: Target,
    partitions_def: dg.DynamicPartitionsDefinition,
    minimum_interval_seconds: int | None = None,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
    client_factory=None,
) -> dg.SensorDefinition:
    """A sensor that pulls an HTTP feed every `http.every` / `http.interval_seconds` (hourly by default) and turns
    each pull into one batch (see `pull_http_source`). Every tick also requests a run for each pulled file whose
    batch was not received yet, so a tick that failed after writing its file loses nothing. `client_factory`
    builds the `HttpClient` (tests inject one that never sleeps)."""
    from claro_dagster.resources.http import HttpClient, safe_url
    from claro_dagster.resources.http_source import interval_seconds

    if not partitions_def.name:
        raise ValueError("partitions_def must be a named DynamicPartitionsDefinition")
    spec = source.http
    make_client = client_factory or (lambda: HttpClient(timeout=spec.timeout_seconds, max_attempts=spec.max_attempts))

    @dg.sensor(name=name, target=target, default_status=default_status, tags={TAG_SOURCE: source_name},
               minimum_interval_seconds=minimum_interval_seconds or interval_seconds(spec),
               required_resource_keys={"claro"},
               description=f"Pulls {safe_url(spec.url)} into a batch ({spec.paginate.style} pagination)")
    def _http_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        claro = context.resources.claro
        inbox_dir = claro.inbox_dir(source_name)
        due, cursor = http_pull_due(spec, context.cursor, _http_now())
        pulled = None
        if due:
            with make_client() as client:
                pulled = pull_http_source(claro.store, inbox_dir, source_name, source, client)
        why = "nothing new" if due else f"next pull at {json.loads(cursor)['due']} ({spec.cron})"
        return pulled_batches(context, source_name, inbox_dir, partitions_def, pulled=_pulled(pulled),
                              nothing=f"{why} at {safe_url(spec.url)}", cursor=cursor)

    return _http_sensor


def _http_now():
    import datetime as dt

    return dt.datetime.now(dt.UTC)


def http_pull_due(spec, cursor: str | None, now) -> tuple[bool, str | None]:
    """(whether this tick pulls, the sensor cursor to keep). Without `cron` every tick pulls (the sensor's interval
    is the schedule). With it, the first tick pulls, and later ones once the next cron time stored in the cursor
    has come."""
    import datetime as dt

    if not spec.cron:
        return True, cursor
    from claro_dagster.spec.cron import next_run_times

    due_at = json.loads(cursor).get("due") if cursor else None
    if due_at and now < dt.datetime.fromisoformat(due_at):
        return False, cursor
    [following] = next_run_times(spec.cron, spec.timezone, now, 1)
    return True, json.dumps({"due": following.isoformat()})


# -- email (`kind: email`) ---------------------------------------------------------------------------------

def email_cursor_name(source_name: str) -> str:
    """The store cursor of an email source: the mailbox folder's UIDVALIDITY, the last UID handled, the UIDs handled
    but not moved yet and the Message-IDs handled (JSON)."""
    return f"source:{source_name}:email"


def pull_email_source(store, inbox_dir: Path, source_name: str, settings, *, log=None, catalogue: str | None = None,
                      alert=None) -> list:
    """Poll the source's mailbox (resources/email_source.py): each spreadsheet of each new mail is written into the
    inbox folder (named `<source>-m<message hash>-<n>-<content hash>.csv|.xlsx`, so a mail handled again after a
    broken connection writes the same names) with a `.pull.json` beside it (Message-ID, sender, subject, and each
    line citing `mid:<Message-ID>`); a quarantined mail's reason is kept in `quarantined-mail/<message hash>.json`
    and announced once as a `mail.quarantined` outbox event (change set `mail:<source>:<message hash>`), then
    passed to `alert` (the sensor's Slack alert). The state moves after the files are written and before the mail
    is moved. Returns the mails handled."""
    import os

    from claro_dagster.resources.email_source import MAIL_QUARANTINED, poll

    name = email_cursor_name(source_name)
    text = store.get_cursor(name)
    log = log or (lambda _: None)

    def accept(mail) -> None:
        tag = hashlib.sha256(mail.message_id.encode()).hexdigest()[:12]
        if mail.quarantine:
            folder = inbox_dir / "quarantined-mail"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{tag}.json").write_text(json.dumps({"source": source_name, **mail.summary()}, indent=1),
                                                encoding="utf-8")
            log(f"{source_name}: mail {mail.message_id} from {mail.sender} ({mail.subject!r}) quarantined: "
                f"{mail.quarantine}")
            if store.append_event(MAIL_QUARANTINED, change_set=f"mail:{source_name}:{tag}", catalogue=catalogue,
                                  payload={"source": source_name, "folder": settings.quarantine_folder,
                                           **mail.summary()}) and alert is not None:
                alert(mail)
            return
        inbox_dir.mkdir(parents=True, exist_ok=True)
        for n, sheet in enumerate(mail.spreadsheets, 1):
            digest = hashlib.sha256(sheet.data).hexdigest()
            path = inbox_dir / f"{source_name}-m{tag}-{n}-{digest[:10]}{sheet.suffix}"
            path.with_suffix(".pull.json").write_text(json.dumps({
                "source": source_name, **mail.summary(), "attachment": sheet.name, "citation": mail.citation,
                "rows": {str(line): mail.citation for line in range(1, sheet.rows + 1)}}, indent=1),
                encoding="utf-8")
            partial = path.with_suffix(".part")
            partial.write_bytes(sheet.data)
            os.replace(partial, path)  # complete or absent: a tick never emits a half-written file

    def save(state: dict) -> None:
        store.set_cursor(name, json.dumps(state, sort_keys=True))

    return poll(settings, json.loads(text) if text else None, accept, save, log=log)


def build_email_sensor(
    name: str,
    source_name: str,
    source,
    *,
    target: Target,
    partitions_def: dg.DynamicPartitionsDefinition,
    minimum_interval_seconds: int | None = None,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
    environ=None,
) -> dg.SensorDefinition:
    """A sensor that polls a mailbox every `email.interval_seconds` (see `pull_email_source`): each mailed
    spreadsheet becomes a batch; a quarantined mail is logged as a warning with its reason, written to the outbox as
    `mail.quarantined` and alerted on Slack (routed by the source's catalogue and name). Every tick also requests
    a run for each pulled file whose batch was not received yet. The user and password are read from the variables
    the spec names at each tick, so a missing one fails the tick, naming it."""
    import os

    if not partitions_def.name:
        raise ValueError("partitions_def must be a named DynamicPartitionsDefinition")
    spec = source.email

    @dg.sensor(name=name, target=target, default_status=default_status, tags={TAG_SOURCE: source_name},
               minimum_interval_seconds=minimum_interval_seconds or spec.interval_seconds,
               required_resource_keys={"claro"},
               description=f"Polls {spec.folder} at {spec.host} for mailed spreadsheets, each a batch")
    def _email_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        from claro_dagster.resources import alerts
        from claro_dagster.resources.email_source import quarantine_alert, settings_from_spec

        claro = context.resources.claro
        inbox_dir = claro.inbox_dir(source_name)
        settings = settings_from_spec(spec, os.environ if environ is None else environ)
        mails = pull_email_source(claro.store, inbox_dir, source_name, settings, log=context.log.warning,
                                  catalogue=source.catalogue, alert=lambda mail: alerts.send(
                                      claro.store.spec, quarantine_alert(source_name, source, mail)))
        if spec.reply is not None:  # a reply that cannot be sent never holds back the batches: retried next tick
            try:
                for line in reply_to_senders(claro.store, source_name, spec.reply,
                                             os.environ if environ is None else environ):
                    context.log.info(line)
            except Exception as exc:  # SMTP refused, unreachable, login: named in the tick's log
                context.log.warning(f"{source_name}: the reply could not be sent through {spec.reply.host} "
                                    f"({type(exc).__name__}: {exc}); the next tick tries again")
        quarantined = [m for m in mails if m.quarantine]
        why = f"; {len(quarantined)} mail(s) quarantined" if quarantined else ""
        return pulled_batches(context, source_name, inbox_dir, partitions_def,
                              pulled=f"{len(mails)} mail(s) handled ({len(quarantined)} quarantined)",
                              nothing=f"no new spreadsheet in {spec.folder} at {spec.host}{why}",
                              patterns=("*.csv", "*.xlsx"))

    return _email_sensor


def reply_to_senders(store, source_name: str, reply, env) -> list[str]:
    """Mail each finished batch's result to the sender of its file, once (the batch keys replied to are the cursor
    `source:<name>:email-replies`, saved after each mail). A batch whose file has no mail note is left alone."""
    from claro_dagster.catalogue.batches import BatchRegistry
    from claro_dagster.resources.email_source import FINAL_STATUSES, reply_message, send_mail

    name = email_cursor_name(source_name) + "-replies"
    replied = set(json.loads(store.get_cursor(name) or "[]"))
    registry, sent = BatchRegistry(store), []
    for batch in registry.list():
        if batch.source != source_name or batch.key in replied or batch.status not in FINAL_STATUSES:
            continue
        note_path = Path(batch.uri).with_suffix(".pull.json")
        if not note_path.is_file():
            continue
        note = json.loads(note_path.read_text(encoding="utf-8"))
        rejected = registry.rejected_rows(batch.key)
        csv = rejected.to_csv(index=False).encode() if len(rejected) else None
        send_mail(reply, env, reply_message(note, batch.status, batch.message, csv, len(rejected),
                                            reply.from_address))
        replied.add(batch.key)
        store.set_cursor(name, json.dumps(sorted(replied)))
        sent.append(f"replied to {note['sender']} about {note.get('attachment')}: {batch.status}, "
                    f"{len(rejected)} row(s) rejected")
    return sent
