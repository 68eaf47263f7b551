"""BigQuery: load catalogue records into a table (append, replace, merge) and pull rows from a table or query.

Built on google-cloud-bigquery's `Client`, not on dagster-gcp's `BigQueryResource`: that resource builds its
client from `project`, `location` and base64 `gcp_credentials` only, so it can neither take a service-account
key *file* named by a variable (`credentials_env`) nor an endpoint (`client_options={"api_endpoint": ...}`,
which the tests need to reach the local contract-checked fake). The SDK keeps its own transport (auth, upload
protocols); its own retries are switched off (`retry=None`, `num_retries=0`) and every call goes through
`BigQueryTable._call`, which retries 429, 5xx and the 403 `rateLimitExceeded` / `quotaExceeded` answers with
the project's policy (`claro_dagster.resources.http`: Retry-After first, else full-jitter exponential backoff,
`max_attempts`), then fails saying what to do.

What a push does (`BigQueryTable.push`):

1. the dataset is created if missing; the table is created with the schema from the catalogue's attribute
   types (text, image, enum, reference -> STRING; number -> FLOAT, or INTEGER for an integer-range partition
   column; date -> DATE), its partitioning and clustering; the key column is REQUIRED;
2. a table that exists already is compared with that schema: a column whose type differs is refused
   (`BigQuerySchemaError`, pointing at `claro schema-diff`), a new attribute becomes a new NULLABLE column;
3. the rows are written as ONE Parquet file (pyarrow) and sent as ONE load job (never streaming inserts):
   * append: WRITE_APPEND with ALLOW_FIELD_ADDITION. The job id is deterministic per destination and cursor
     range (`claro_<destination>_<since>_<upto>`): BigQuery refuses a second job with an id it has seen (409
     Already Exists), so a retried push finds the first load instead of loading the rows twice. A job
     found DONE without error counts as this push's load; one found failed is retried under `<id>_r<n>`;
   * replace: WRITE_TRUNCATE of the whole (filtered) catalogue; BigQuery keeps the table's partitioning and
     clustering and replaces its rows (and schema) atomically;
   * merge: WRITE_TRUNCATE into a staging table `_claro_stage_<table>_<random>` (created expiring in a day, so
     it goes away even if the process dies), then one MERGE statement on the catalogue key (matched rows
     updated, new rows inserted), then the staging table is dropped;
4. every job is polled (jobs.get) until DONE; `errorResult` fails the push with the job id, and a bad row that
   BigQuery reports by its row number is mapped back to the record's key.

The caller moves its cursor only after `push` returned.
"""

from __future__ import annotations

import io
import os
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from claro_dagster.resources.http import parse_retry_after
from claro_dagster.resources.watermark import NextCursor, already_taken, taken_keys
from claro_dagster.resources.watermark import cursor_json as cursor_json  # re-exported: the sensors' import

# BigQuery column types per catalogue attribute type (legacy names, as the REST API's TableFieldSchema uses).
COLUMN_TYPES = {"text": "STRING", "image": "STRING", "enum": "STRING", "reference": "STRING", "date": "DATE",
                "number": "FLOAT"}
_ARROW = {"STRING": pa.string(), "FLOAT": pa.float64(), "INTEGER": pa.int64(), "DATE": pa.date32()}
_RETRY_REASONS = frozenset({"rateLimitExceeded", "quotaExceeded", "backendError", "internalError"})
_JOB_ID = re.compile(r"[^A-Za-z0-9_-]")
_ROW = re.compile(r"\brow (\d+)\b", re.IGNORECASE)
SCOPES = ("https://www.googleapis.com/auth/bigquery",)


class BigQueryError(Exception):
    """A push or pull that failed: what BigQuery said and what to do next."""


class BigQuerySchemaError(BigQueryError):
    """The table holds a column whose type differs from what the catalogue now says."""


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    mode: str = "NULLABLE"
    max_length: int | None = None

    def api_repr(self) -> dict[str, Any]:
        out = {"name": self.name, "type": self.type, "mode": self.mode}
        if self.max_length is not None:
            out["maxLength"] = str(self.max_length)
        return out


@dataclass(frozen=True)
class Layout:
    """Partitioning and clustering of the destination table (already checked by `claro check`)."""

    partition_field: str | None = None
    granularity: str | None = None  # DAY, HOUR, MONTH, YEAR (time partitioning)
    range: tuple[int, int, int] | None = None  # start, end, interval (integer-range partitioning)
    ingestion_time: bool = False
    cluster_by: tuple[str, ...] = ()


@dataclass
class PushResult:
    mode: str
    rows: int
    jobs: list[str] = field(default_factory=list)
    added_columns: list[str] = field(default_factory=list)
    created_table: bool = False
    found_existing_job: bool = False
    inserted: int | None = None
    updated: int | None = None


def table_columns(catalogue_spec: Any, columns: Sequence[str], layout: Layout) -> list[Column]:
    """The BigQuery columns of the pushed attributes, in push order (the key first, REQUIRED)."""
    out = []
    for name in columns:
        attr = catalogue_spec.attributes[name]
        kind = COLUMN_TYPES[attr.type]
        if layout.range is not None and name == layout.partition_field:
            kind = "INTEGER"
        max_length = attr.max_length if kind == "STRING" else None
        out.append(Column(name, kind, "REQUIRED" if name == catalogue_spec.key else "NULLABLE", max_length))
    return out


def to_parquet(frame: pd.DataFrame, columns: Sequence[Column], key: str) -> bytes:
    """The frame as one Parquet file typed like the table. A value that does not fit its column (a date that
    is not a date, a fraction in an integer partition column) is refused here, naming the record."""
    arrays, fields = [], []
    for col in columns:
        series = frame[col.name]
        arrow = pa.array(series, from_pandas=True) if isinstance(series.dtype, pd.ArrowDtype) else None
        if isinstance(arrow, pa.ChunkedArray):
            arrow = arrow.combine_chunks()
        if col.type == "DATE":
            parsed = pd.to_datetime(series.astype(object), errors="coerce", format="ISO8601")
            bad = series.notna() & parsed.isna()
            _refuse(frame, bad, key, col, "is not a date (YYYY-MM-DD)")
            values = pa.array(parsed.dt.date.where(parsed.notna(), None), type=pa.date32(), from_pandas=True)
        elif col.type in ("FLOAT", "INTEGER"):
            if arrow is not None and (pa.types.is_floating(arrow.type) or pa.types.is_integer(arrow.type)):
                values = arrow.cast(pa.float64())  # typed by the store already: no per-value parsing
                numbers = None
            else:
                numbers = pd.to_numeric(series.astype(object), errors="coerce")
                _refuse(frame, series.notna() & numbers.isna(), key, col, "is not a number")
                values = pa.array(numbers, type=pa.float64(), from_pandas=True)
            if col.type == "INTEGER":
                whole = pd.Series(values.to_numpy(zero_copy_only=False))
                _refuse(frame, whole.notna() & (whole % 1 != 0), key, col,
                        "is not a whole number (the integer-range partition column)")
                values = values.cast(pa.int64())
        elif arrow is not None:
            values = arrow.cast(pa.string())
        else:
            values = pa.array(series.astype(object).where(series.notna(), None), type=pa.string(), from_pandas=True)
        arrays.append(values)
        fields.append(pa.field(col.name, _ARROW[col.type], nullable=col.mode != "REQUIRED"))
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_arrays(arrays, schema=pa.schema(fields)), sink, compression="snappy")
    return sink.getvalue()


def _refuse(frame: pd.DataFrame, bad: pd.Series, key: str, col: Column, what: str) -> None:
    if bool(bad.any()):
        first = frame.loc[bad.to_numpy()].iloc[0]
        raise BigQueryError(f"record {first[key]!r}: {col.name} = {first[col.name]!r} {what}, so it cannot be "
                            f"loaded into the {col.type} column {col.name!r} ({int(bad.sum())} record(s) like it); "
                            "fix the value in the catalogue and push again")


def job_id_for(destination: str, since: int, upto: int) -> str:
    """The deterministic load job id of one (destination, cursor range): a retried push finds its first load."""
    return _JOB_ID.sub("_", f"claro_{destination}_{since}_{upto}")[:1024]


class BigQueryTable:
    """One BigQuery client with the project's retry policy; `sleep` and `rng` are injectable so tests never
    wait. `credentials_env` names the variable holding a service-account key file (None: application default
    credentials, or anonymous when an endpoint is given without a key, as the local fake accepts)."""

    def __init__(self, project: str, *, endpoint_url: str | None = None, credentials_env: str | None = None,
                 location: str | None = None, max_attempts: int = 5, backoff_base: float = 0.5,
                 backoff_max: float = 60, poll_interval: float = 0.2, poll_max: float = 5,
                 job_timeout: float = 3600, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None):
        self.project = project
        self.endpoint_url = endpoint_url
        self.credentials_env = credentials_env
        self.location = location
        self.max_attempts = max_attempts
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self.poll_interval, self.poll_max, self.job_timeout = poll_interval, poll_max, job_timeout
        self.sleep, self.clock = sleep, clock
        self.rng = rng or random.Random()
        self._client = None

    # -- client and calls -------------------------------------------------------------------------------------

    @property
    def client(self):
        if self._client is None:
            from google.cloud import bigquery

            options = {"api_endpoint": self.endpoint_url} if self.endpoint_url else None
            self._client = bigquery.Client(project=self.project, credentials=self._credentials(),
                                           location=self.location, client_options=options)
        return self._client

    def _credentials(self):
        if self.credentials_env:
            path = os.environ.get(self.credentials_env)
            if not path:
                raise BigQueryError(f"{self.credentials_env} is not set: set it to the path of a service-account "
                                    "key file (JSON) with BigQuery access, or remove credentials_env from the "
                                    "destination to use application default credentials")
            from google.oauth2 import service_account

            try:
                return service_account.Credentials.from_service_account_file(path, scopes=SCOPES)
            except (OSError, ValueError, KeyError) as exc:
                raise BigQueryError(f"{self.credentials_env}={path} is not a readable service-account key file "
                                    f"({exc}); download a JSON key for the service account and point "
                                    f"{self.credentials_env} at it") from exc
        if self.endpoint_url:
            from google.auth.credentials import AnonymousCredentials

            return AnonymousCredentials()
        import google.auth

        try:
            credentials, _ = google.auth.default(scopes=SCOPES)
        except google.auth.exceptions.DefaultCredentialsError as exc:
            raise BigQueryError("no Google credentials: set credentials_env on the destination (a variable "
                                "holding a service-account key file) or configure application default "
                                f"credentials (gcloud auth application-default login): {exc}") from exc
        return credentials

    def _backoff(self, attempt: int) -> float:
        return self.rng.uniform(0, min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1)))

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run one API call with the project's retry policy; turn auth and quota failures into clear errors."""
        from google.api_core import exceptions as gexc
        from google.auth import exceptions as auth_exc

        for attempt in range(1, self.max_attempts + 1):
            try:
                return fn()
            except auth_exc.RefreshError as exc:
                raise BigQueryError(self._auth_message(what, exc)) from exc
            except gexc.Unauthorized as exc:
                raise BigQueryError(self._auth_message(what, exc)) from exc
            except gexc.BadRequest as exc:
                raise BigQueryError(f"{what}: BigQuery refused the request ({exc.message}); nothing was "
                                    "written or marked as done") from exc
            except (gexc.TooManyRequests, gexc.ServerError, gexc.Forbidden) as exc:
                reasons = {e.get("reason") for e in (exc.errors or []) if isinstance(e, dict)}
                if isinstance(exc, gexc.Forbidden) and not reasons & _RETRY_REASONS:
                    raise BigQueryError(f"{what}: BigQuery refused access ({exc.message}); give the "
                                        f"{self._who()} the BigQuery Data Editor and Job User roles") from exc
                if attempt == self.max_attempts:
                    kind = "quota" if reasons & {"rateLimitExceeded", "quotaExceeded"} or exc.code == 429 else \
                        "server errors"
                    raise BigQueryError(
                        f"{what}: BigQuery still refused after {attempt} attempts ({kind}: HTTP {exc.code} "
                        f"{exc.message}); wait for the quota to reset (or raise it in the Google Cloud console) "
                        "and run the push again: nothing was marked as sent") from exc
                response = getattr(exc, "response", None)
                told = parse_retry_after(response.headers.get("Retry-After"), self.clock()) \
                    if response is not None and getattr(response, "headers", None) is not None else None
                self.sleep(min(told, self.backoff_max) if told is not None else self._backoff(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def _who(self) -> str:
        return f"service account in {self.credentials_env}" if self.credentials_env else "credentials in use"

    def _auth_message(self, what: str, exc: Exception) -> str:
        if self.credentials_env:
            return (f"{what}: Google refused the service-account key in {self.credentials_env} ({exc}); the key "
                    f"was probably revoked or deleted: create a new key and point {self.credentials_env} at it")
        return (f"{what}: Google refused the application default credentials ({exc}); refresh them "
                "(gcloud auth application-default login) or set credentials_env to a service-account key file")

    # -- tables -----------------------------------------------------------------------------------------------

    def ensure_table(self, dataset: str, table: str, columns: Sequence[Column], layout: Layout,
                     add_columns: bool = True) -> tuple[Any, bool, list[str]]:
        """(table, created, added columns): create the dataset and table if missing; refuse a type change;
        add new columns with tables.patch when `add_columns` (else the load job adds them)."""
        from google.api_core import exceptions as gexc
        from google.cloud import bigquery

        ref = f"{self.project}.{dataset}.{table}"
        try:
            existing = self._call(f"read table {ref}", lambda: self.client.get_table(ref, retry=None))
        except gexc.NotFound:
            existing = None
        if existing is None:
            try:
                self._call(f"read dataset {self.project}.{dataset}",
                           lambda: self.client.get_dataset(f"{self.project}.{dataset}", retry=None))
            except gexc.NotFound:
                ds = bigquery.Dataset(f"{self.project}.{dataset}")
                ds.location = self.location or "US"
                self._call(f"create dataset {self.project}.{dataset}",
                           lambda: self.client.create_dataset(ds, exists_ok=True, retry=None))
            new = bigquery.Table(ref, schema=[_field(c) for c in columns])
            _apply_layout(new, layout)
            created = self._call(f"create table {ref}", lambda: self.client.create_table(new, retry=None))
            return created, True, []
        have = {f.name.lower(): f for f in existing.schema}
        changed = [(c, have[c.name.lower()].field_type) for c in columns
                   if c.name.lower() in have and _normal(have[c.name.lower()].field_type) != _normal(c.type)]
        if changed:
            detail = ", ".join(f"{c.name} is {was} in the table but {c.type} from the catalogue"
                               for c, was in changed)
            raise BigQuerySchemaError(
                f"table {ref}: {detail}. BigQuery cannot change a column's type in place, so nothing was loaded. "
                "Run `claro schema-diff` to see the catalogue's pending type changes; if the catalogue is right, "
                "recreate or migrate the BigQuery column (e.g. CREATE TABLE ... AS SELECT CAST(...)), then push "
                "again")
        added = [c for c in columns if c.name.lower() not in have]
        if added and add_columns:
            existing.schema = [*existing.schema, *(_field(c, nullable=True) for c in added)]
            existing = self._call(f"add columns to {ref}",
                                  lambda: self.client.update_table(existing, ["schema"], retry=None))
        return existing, False, [c.name for c in added]

    # -- jobs -------------------------------------------------------------------------------------------------

    def load(self, data: bytes, dataset: str, table: str, columns: Sequence[Column], *, write: str,
             job_id: str | None = None, allow_field_addition: bool = False, frame: pd.DataFrame | None = None,
             key: str | None = None) -> Any:
        """One Parquet load job, polled to completion. With `job_id`, a job BigQuery already has under that id
        (409) is looked up and returned when it succeeded; when it failed, `<job_id>_r<n>` is tried."""
        from google.api_core import exceptions as gexc
        from google.cloud import bigquery

        config = bigquery.LoadJobConfig(source_format=bigquery.SourceFormat.PARQUET, write_disposition=write,
                                        schema=[_field(c) for c in columns],
                                        create_disposition=bigquery.CreateDisposition.CREATE_IF_NEEDED)
        if allow_field_addition:
            config.schema_update_options = [bigquery.SchemaUpdateOption.ALLOW_FIELD_ADDITION]
        ref = f"{self.project}.{dataset}.{table}"
        attempt_id = job_id
        for n in range(1, 100):
            try:
                job = self._call(f"load into {ref}", lambda jid=attempt_id: self.client.load_table_from_file(
                    io.BytesIO(data), ref, job_id=jid, job_id_prefix=None if jid else "claro_load_",
                    job_config=config, size=len(data), num_retries=0))
            except gexc.Conflict:
                if job_id is None:
                    raise
                found = self._call(f"read job {attempt_id}",
                                   lambda jid=attempt_id: self.client.get_job(jid, retry=None))
                self._wait(found)
                if found.error_result is None:
                    found._claro_found = True
                    return found
                attempt_id = f"{job_id}_r{n + 1}"
                continue
            self._wait(job)
            self._raise_job_error(job, f"load into {ref}", frame, key)
            return job
        raise BigQueryError(f"load into {ref}: 99 earlier attempts of job {job_id} failed; look at them in the "
                            "BigQuery console")

    def query(self, sql: str, what: str, params: Sequence[Any] = (), job_id_prefix: str = "claro_query_") -> Any:
        from google.cloud import bigquery

        config = bigquery.QueryJobConfig(query_parameters=list(params), use_legacy_sql=False)
        job = self._call(what, lambda: self.client.query(sql, job_config=config, job_id_prefix=job_id_prefix,
                                                         retry=None, job_retry=None))
        self._wait(job)
        self._raise_job_error(job, what)
        return job

    def _wait(self, job: Any) -> None:
        """Poll jobs.get until the job is DONE (backing off from `poll_interval` to `poll_max`)."""
        start, delay = self.clock(), self.poll_interval
        while job.state != "DONE":
            if self.clock() - start > self.job_timeout:
                raise BigQueryError(f"job {job.job_id} is still {job.state} after {self.job_timeout:.0f}s; look "
                                    "at it in the BigQuery console (it may still finish)")
            self.sleep(delay)
            delay = min(delay * 2, self.poll_max)
            self._call(f"read job {job.job_id}", lambda: job.reload(retry=None))

    def _raise_job_error(self, job: Any, what: str, frame: pd.DataFrame | None = None,
                         key: str | None = None) -> None:
        if job.error_result is None:
            return
        messages = []
        for err in job.errors or [job.error_result]:
            text = err.get("message", "")
            record = _record_of(text, frame, key)
            messages.append((f"record {record!r}: " if record is not None else "") + text)
        raise BigQueryError(f"{what}: job {job.job_id} failed ({job.error_result.get('reason')}): "
                            + "; ".join(dict.fromkeys(messages))
                            + ". Nothing was marked as sent; fix the record(s) and push again")

    def _create_staging(self, dataset: str, stage: str, columns: Sequence[Column]) -> None:
        """The staging table, set to expire in a day: dropped after the MERGE, and gone by itself should the
        process die before that."""
        import datetime as dt

        from google.cloud import bigquery

        ref = f"{self.project}.{dataset}.{stage}"
        staging = bigquery.Table(ref, schema=[_field(c) for c in columns])
        staging.expires = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
        self._call(f"create staging table {ref}", lambda: self.client.create_table(staging, retry=None))

    def delete_table(self, dataset: str, table: str) -> None:
        ref = f"{self.project}.{dataset}.{table}"
        self._call(f"drop {ref}", lambda: self.client.delete_table(ref, not_found_ok=True, retry=None))

    # -- push and pull ----------------------------------------------------------------------------------------

    def push(self, dataset: str, table: str, frame: pd.DataFrame, columns: Sequence[Column], key: str,
             mode: str, layout: Layout = Layout(), job_id: str | None = None) -> PushResult:
        """Write `frame` (columns in `columns` order) with `mode` (see the module docstring)."""
        result = PushResult(mode=mode, rows=len(frame))
        _, created, added = self.ensure_table(dataset, table, columns, layout, add_columns=mode == "merge")
        result.created_table, result.added_columns = created, added
        if not len(frame) and mode != "replace":
            return result
        data = to_parquet(frame, columns, key)
        if mode == "append":
            job = self.load(data, dataset, table, columns, write="WRITE_APPEND", job_id=job_id,
                            allow_field_addition=True, frame=frame, key=key)
            result.jobs.append(job.job_id)
            result.found_existing_job = bool(getattr(job, "_claro_found", False))
            result.inserted = len(frame)
            return result
        if mode == "replace":
            job = self.load(data, dataset, table, columns, write="WRITE_TRUNCATE", frame=frame, key=key)
            result.jobs.append(job.job_id)
            return result
        stage = f"_claro_stage_{table}_{random.getrandbits(48):012x}"[:1024]
        try:
            self._create_staging(dataset, stage, columns)
            job = self.load(data, dataset, stage, columns, write="WRITE_TRUNCATE", frame=frame, key=key)
            result.jobs.append(job.job_id)
            merge = self.query(merge_statement(self.project, dataset, table, stage, [c.name for c in columns], key),
                               f"merge into {self.project}.{dataset}.{table}", job_id_prefix="claro_merge_")
            result.jobs.append(merge.job_id)
            affected = merge.num_dml_affected_rows
            stats = (merge._properties.get("statistics", {}).get("query", {}).get("dmlStats") or {})
            result.inserted = int(stats["insertedRowCount"]) if "insertedRowCount" in stats else None
            result.updated = int(stats["updatedRowCount"]) if "updatedRowCount" in stats else \
                (affected - result.inserted if affected is not None and result.inserted is not None else None)
        finally:
            self.delete_table(dataset, stage)
        return result

    def pull(self, sql_from: str, key: str, watermark: str, cursor: dict | None,
             limit: int) -> tuple[pd.DataFrame, dict | None]:
        """Rows of `sql_from` (a table reference or a parenthesised query) with watermark >= the cursor's, in
        (watermark, key) order, less the keys already pulled at exactly the cursor's watermark (shared with the
        PostgreSQL source: claro_dagster.resources.watermark); at most `limit`. Returns (rows, the next cursor or
        None when nothing new)."""
        from google.cloud import bigquery

        wm, k = _quote(watermark), _quote(key)
        params, where = [], ""
        if cursor:
            params.append(bigquery.ScalarQueryParameter("watermark", cursor["type"], cursor["value"]))
            where = f"WHERE src.{wm} >= @watermark"
        seen = taken_keys(cursor)
        params.append(bigquery.ScalarQueryParameter("row_limit", "INT64", limit + len(seen)))
        sql = f"SELECT * FROM {sql_from} AS src {where} ORDER BY src.{wm}, src.{k} LIMIT @row_limit"
        job = self.query(sql, f"pull from {sql_from}", params, job_id_prefix="claro_pull_")
        rows = job.result(retry=None)
        schema = {f.name: f.field_type for f in rows.schema}
        if watermark not in schema or key not in schema:
            raise BigQueryError(f"pull from {sql_from}: the result has no column {watermark!r} or {key!r} "
                                f"(columns: {', '.join(schema)}); fix 'watermark' or 'key' in the source")
        records = [dict(r.items()) for r in rows]
        records = [r for r in records
                   if not already_taken(cursor, seen, _wire(r[watermark]), str(r[key]))][:limit]
        if not records:
            return pd.DataFrame(columns=list(schema)), None
        following = NextCursor(cursor)
        for r in records:
            following.see(_wire(r[watermark]), str(r[key]))
        return pd.DataFrame(records, columns=list(schema)), following.cursor(_param_type(schema[watermark]))


def merge_statement(project: str, dataset: str, table: str, stage: str, columns: Sequence[str], key: str) -> str:
    """One MERGE on the key: matched rows take the staged values, new keys are inserted."""
    target, source = f"`{project}.{dataset}.{table}`", f"`{project}.{dataset}.{stage}`"
    sets = ", ".join(f"{_quote(c)} = S.{_quote(c)}" for c in columns if c != key)
    cols = ", ".join(_quote(c) for c in columns)
    vals = ", ".join(f"S.{_quote(c)}" for c in columns)
    matched = f" WHEN MATCHED THEN UPDATE SET {sets}" if sets else ""
    return (f"MERGE {target} T USING {source} S ON T.{_quote(key)} = S.{_quote(key)}{matched}"
            f" WHEN NOT MATCHED THEN INSERT ({cols}) VALUES ({vals})")


def _quote(name: str) -> str:
    return "`" + name.replace("`", "") + "`"


def _wire(value: Any) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _param_type(field_type: str) -> str:
    return {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL"}.get(field_type, field_type)


def _normal(kind: str) -> str:
    return {"INT64": "INTEGER", "FLOAT64": "FLOAT", "BOOL": "BOOLEAN"}.get(kind.upper(), kind.upper())


def _field(col: Column, nullable: bool = False):
    from google.cloud import bigquery

    return bigquery.SchemaField(col.name, col.type, mode="NULLABLE" if nullable else col.mode,
                                max_length=col.max_length)


def _apply_layout(table: Any, layout: Layout) -> None:
    from google.cloud import bigquery

    if layout.ingestion_time:
        table.time_partitioning = bigquery.TimePartitioning(type_=layout.granularity or "DAY")
    elif layout.range is not None:
        start, end, interval = layout.range
        table.range_partitioning = bigquery.RangePartitioning(
            field=layout.partition_field, range_=bigquery.PartitionRange(start=start, end=end, interval=interval))
    elif layout.partition_field:
        table.time_partitioning = bigquery.TimePartitioning(type_=layout.granularity or "DAY",
                                                            field=layout.partition_field)
    if layout.cluster_by:
        table.clustering_fields = list(layout.cluster_by)


def _record_of(message: str, frame: pd.DataFrame | None, key: str | None) -> Any:
    """The key of the record a BigQuery row error names (`row N`, 1-based in the loaded file), if any."""
    match = _ROW.search(message or "")
    if frame is None or key is None or not match:
        return None
    row = int(match.group(1)) - 1
    return frame[key].iloc[row] if 0 <= row < len(frame) else None


def layout_of(dest: Any) -> Layout:
    part = dest.partition_by
    if part is None:
        return Layout(cluster_by=tuple(dest.cluster_by))
    rng = (part.start, part.end, part.interval) if part.interval is not None else None
    return Layout(partition_field=part.attribute, granularity=part.granularity, range=rng,
                  ingestion_time=part.ingestion_time, cluster_by=tuple(dest.cluster_by))


class BigQueryConnection(dg.ConfigurableResource):
    """A destination's or source's BigQuery project. The variables are read when a client is made (a run or a
    sensor tick), so a missing one fails there, naming it."""

    project: str
    endpoint_url_env: str | None = None
    credentials_env: str | None = None
    location: str | None = None
    max_attempts: int = 5

    def table(self, **kwargs: Any) -> BigQueryTable:
        endpoint = None
        if self.endpoint_url_env:
            endpoint = os.environ.get(self.endpoint_url_env)
            if not endpoint:
                raise BigQueryError(f"{self.endpoint_url_env} is not set: set it to the BigQuery endpoint to use "
                                    "(or remove endpoint_url_env to use Google's)")
        return BigQueryTable(self.project, endpoint_url=endpoint, credentials_env=self.credentials_env,
                             location=self.location, max_attempts=self.max_attempts, **kwargs)
