"""The one writer of the catalogue: values, their provenance, per-field history, review proposals and
`change.*` events, always together in one transaction.

Everything that changes a catalogue value goes through an `OpenChangeSet`: the bulk import, per-field
change sets, review approvals and edits (and rejections, which write only their event), rollback and
schema type migrations. A change set is opened once: opening an id that exists returns None, which
makes every writer idempotent by change-set identity.

Concurrency: any number of processes may publish batches of one catalogue at once (several Dagster workers,
the CLI, the web app). Every change set takes the catalogue's write lock when it is opened, before it reads
anything, and holds it to the end of its transaction: on PostgreSQL a transaction-scoped advisory lock
(`pg_advisory_xact_lock` on a hash of `claro:catalogue:<name>`), on SQLite the database's single write lock.
Change sets of one catalogue therefore commit one after another, each seeing everything committed before it;
change sets of different catalogues, and every stage before publishing (reading, mapping, validating,
normalising, enriching), still run in parallel.

Why a lock per catalogue and not row locks per record:
* The bulk import decides which rows are new, unchanged (by content hash) or changed from one read of the
  catalogue's keys and hashes. Row locks (`SELECT ... FOR UPDATE`) cannot lock a record that does not exist
  yet: two batches bringing the same new SKU would both insert it, and the unique key would fail one of them
  instead of turning its row into an update. Locking every key of a 100,000-row batch would also cost more
  than the write it protects, and two batches locking overlapping keys in different orders would deadlock.
* History records the old value a change replaced. Under the lock the old value read is the one committed
  last, so no update is lost and history chains without gaps or duplicates.
* Outbound destinations read "records written after change-set seq N". A change set's seq is allocated under
  the lock, so within a catalogue seqs commit in order and `Cursors.last_seq(catalogue)` never moves a
  destination's cursor past a change set still being written.
A publish holds the lock for the length of its write only (a few hundred milliseconds for thousands of
rows); the waiting batches queue in PostgreSQL, not in a retry loop. Advisory locks live in the session of
the transaction: a connection killed mid-publish (server restart, `pg_terminate_backend`) rolls the whole
change set back and releases the lock.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import itertools
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as sa_postgresql
from sqlalchemy.dialects import sqlite as sa_sqlite

from claro_dagster.catalogue.changes import (
    ApplyResult,
    Change,
    ChangeSet,
    Outcome,
    StoreError,
    coerce_value,
    gate,
    is_missing,
)
from claro_dagster.catalogue.common import ROW_HASH_VERSION, chunks, dumps, now, row_hash, values_equal
from claro_dagster.catalogue.reader import CatalogueReader
from claro_dagster.catalogue.schema import prov_column
from claro_dagster.catalogue.schema_sync import StoredSchema
from claro_dagster.spec.models import AttributeSpec, Thresholds

EmptyCells = Literal["ignore", "clear"]
#: Marker (in the cursors table) of the `row_hash` version a catalogue's stored hashes were made with.
MARK_PREFIX = "claro:row-hash:"
_COPY_ROWS = 1 << 16  # rows per CSV block sent through COPY
_INSERT_ROWS = 1 << 16  # rows per executemany: bounds the Python values alive at once
_SCAN_ROWS = 1 << 19  # rows of (key, hash) SQLite renders as one text


class CatalogueConnectionLost(ConnectionError):
    """The connection to the catalogue database was lost while a change set was being written (the server
    restarted or the connection was killed). The transaction did not commit, or (lost during COMMIT) committed
    whole; either way publishing the change set again is safe: it is written once. A ConnectionError, so the
    stages treat it as transient and retry."""

    def __init__(self, change_sets: Sequence[ChangeSet], cause: BaseException):
        self.change_sets = [cs.id for cs in change_sets]
        named = ", ".join(f"change set {cs.id} of catalogue {cs.catalogue}" for cs in change_sets) or "a change set"
        reason = str(getattr(cause, "orig", None) or cause).strip().splitlines()[0]
        super().__init__(
            f"the connection to the catalogue database was lost while writing {named} ({reason}): nothing of it "
            "is in the catalogue unless it committed whole just before. Once the database answers again, publish "
            "it again (re-run the stage, or let the run's retry do it): a change set is written once, so a retry "
            "never duplicates records or history")


@dataclass(frozen=True)
class ValueProvenance:
    """What a write records as the origin of a value (stored once per change set and distinct origin)."""

    operation: str
    run_id: str | None
    source: str | None
    model: str | None
    reviewer: str | None
    confidence: float
    citation: str | None = None  # where the value was read, e.g. a scraped page's URL


def created_payload(catalogue: str, operation: str, source: str | None, run_id: str | None) -> dict[str, Any]:
    """The payload of the `change.applied` (or `change.approved`) event of a new record, the same whichever path
    created it (a bulk import, or a change set setting its fields one by one). It carries no values (a per-row
    payload costs the bulk path dearly): `link` is where a webhook receiver fetches the record with its API token
    (`{record}`: the event's record key, URL-encoded), and the API's change feed fills in the values as created
    (`catalogue.feed`)."""
    return {"created": True, "link": f"/api/v1/catalogues/{catalogue}/records/{{record}}", "operation": operation,
            "source": source, "run_id": run_id}


class ChangeSetWriter:
    def __init__(self, schema: StoredSchema, reader: CatalogueReader):
        self.schema = schema
        self.reader = reader
        self.engine = schema.engine
        self.t = schema.t

    @contextlib.contextmanager
    def transaction(self) -> Iterator[WriteTransaction]:
        """One database transaction for one or more change sets: all of it is written, or none. A connection
        lost on the way (the server restarted, the connection was killed) raises CatalogueConnectionLost."""
        tx = None
        try:
            with self.engine.begin() as conn:
                tx = WriteTransaction(self, conn)
                yield tx
        except sa.exc.DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            raise CatalogueConnectionLost(tx.opened if tx is not None else [], exc) from exc

    @functools.cache  # noqa: B019 - one writer per spec; resolving builds pydantic models, too slow per change
    def thresholds(self, catalogue: str, operation: str, attribute: str, source: str | None) -> Thresholds:
        return self.schema.spec.thresholds_for(operation, self.schema.spec.catalogues[catalogue].attributes[attribute],
                                               source)

    def ensure_row_hashes(self) -> None:
        """Rehash the catalogues whose stored content hashes were made by another version of `row_hash` (a store
        written by an earlier release), so re-imports compare like with like. A marker per catalogue records
        the version; checking it costs one small query when the store opens."""
        c = self.t["cursors"]
        marks = {f"{MARK_PREFIX}{name}": name for name in self.schema.spec.catalogues}
        with self.engine.connect() as conn:
            current = dict(conn.execute(sa.select(c.c.name, c.c.value).where(c.c.name.in_(list(marks)))).all())
        for mark, catalogue in marks.items():
            if current.get(mark) == ROW_HASH_VERSION:
                continue
            if self.reader.count(catalogue):
                rehash(self, catalogue)
            insert = (sa_postgresql.insert if self.schema.dialect == "postgresql" else sa_sqlite.insert)(c)
            with self.engine.begin() as conn:
                conn.execute(insert.values(name=mark, value=ROW_HASH_VERSION, updated_at=now()).on_conflict_do_update(
                    index_elements=[c.c.name], set_={"value": ROW_HASH_VERSION, "updated_at": now()}))

    # ------------------------------------------------------------------ per-field change sets
    def apply(self, change_set: ChangeSet) -> ApplyResult:
        """Gate and write a change set; a change set already applied is a no-op."""
        self.schema.catalogue(change_set.catalogue)
        with self.transaction() as tx:
            opened = tx.open(change_set)
            if opened is None:
                return tx.already_applied(change_set.id)
            opened.write(change_set.changes, kind="update")
            return opened.finish()

    # ------------------------------------------------------------------ events that are not value changes
    def append_event(self, event_type: str, *, change_set: str, payload: dict[str, Any], catalogue: str | None = None,
                     record: str | None = None, field: str | None = None, once: bool = True,
                     preceded_by: tuple[str, dict[str, Any]] | None = None) -> bool:
        """Append an outbox event that records no value change (e.g. `run.started` with change_set
        `run:<run_id>`). With `once`, an event of this type for this change set is written at most once,
        however many processes try at the same time; True when this call wrote it. `preceded_by`
        (type, payload) is written first, in the same transaction, when the change set has no event of
        that type yet (a run's end never shows before its start)."""
        with self.transaction() as tx:
            return tx.append_event(event_type, change_set=change_set, payload=payload, catalogue=catalogue,
                                   record=record, field=field, once=once, preceded_by=preceded_by)

    # ------------------------------------------------------------------ bulk import
    def import_records(self, catalogue: str, frame: pd.DataFrame | pa.Table, *, change_set_id: str,
                       operation: str = "import", run_id: str | None = None, source: str | None = None,
                       model: str | None = None, confidence: float = 100.0, overwrite_confidence: float | None = None,
                       reason: str = "imported", empty_cells: EmptyCells = "ignore",
                       clear_reason: str = "cleared: empty cell",
                       citations: Mapping[str, str] | None = None) -> ApplyResult:
        """Write whole rows (one per record key, a DataFrame or an Arrow table) as one change set, through the gate.

        `citations` (record key -> where its row was read, e.g. a scraped page's URL) goes into the provenance
        of each value the row writes.

        New records are bulk-inserted, with each attribute's `default` where the row gives no value;
        existing ones are compared by content hash first (hashed column-wise on Arrow data, compared with
        the stored hashes without a Python object per row), so an unchanged re-import costs one read of
        (key, hash); changed fields go through the same per-field path as any other change set.

        A column the frame lacks is no information: existing records keep their values. An empty cell
        on an existing record is ignored too, unless `empty_cells="clear"`: then it clears the value,
        a change like any other (scored by `overwrite_confidence`, so it may wait for review) with
        `clear_reason`. `overwrite_confidence` (default: `confidence`) scores a value that replaces a
        different existing one, so a less trusted source's overwrites can wait for review while its new
        records and filled gaps go straight in.
        """
        if empty_cells not in ("ignore", "clear"):
            raise StoreError(f"empty_cells must be 'ignore' or 'clear', not {empty_cells!r}")
        overwrite = confidence if overwrite_confidence is None else overwrite_confidence
        cat = self.schema.catalogue(catalogue)
        key = cat.key
        names = list(frame.column_names if isinstance(frame, pa.Table) else frame.columns)
        unknown = [c for c in names if c not in cat.attributes]
        if unknown:
            raise StoreError(f"{catalogue}: unknown column(s) {', '.join(map(str, unknown))}; "
                             f"attributes are: {', '.join(cat.attributes)}")
        if key not in names:
            raise StoreError(f"{catalogue}: the rows have no {key!r} column, the catalogue key")
        if len(set(names)) != len(names):
            raise StoreError(f"{catalogue}: a column appears more than once; each attribute needs one column")
        data = self._coerce_table(catalogue, frame)
        keys = data.column(key)
        if keys.null_count:
            raise StoreError(f"{catalogue}: {keys.null_count} row(s) have no {key!r}; every record needs its key")
        _refuse_duplicate_keys(catalogue, key, keys)
        whole = set(data.column_names) == set(cat.attributes)
        # A row's hash covers every attribute, its key too: a row whose hash is stored is a record stored as is.
        hashes = self.reader.row_hash(catalogue, data) if whole else None
        cs = ChangeSet(change_set_id, catalogue, operation, run_id=run_id, source=source, model=model)
        with self.transaction() as tx:
            opened = tx.open(cs)
            if opened is None:
                return tx.already_applied(change_set_id)
            result = opened.result
            fields = data.num_columns - 1
            total = tx.conn.execute(sa.select(sa.func.count()).select_from(self.schema.rec[catalogue])).scalar_one()
            if hashes is not None and total:
                same = pc.is_in(pa.array(hashes), value_set=pa.array(self._stored_hashes(tx.conn, catalogue)))
                same = same.to_numpy(zero_copy_only=False)
                result.unchanged += int(same.sum()) * fields
                if same.all():
                    return opened.finish()
                if same.any():
                    data, hashes = data.filter(pa.array(~same)), hashes[~same]
                    keys = data.column(key)
            stored_keys = self._existing_keys(tx.conn, catalogue, keys, total)
            is_new = (~pc.is_in(keys, value_set=stored_keys.cast(keys.type)).to_numpy(zero_copy_only=False)
                      if len(stored_keys) else np.ones(len(data), dtype=bool))
            if is_new.any():
                new = data.filter(pa.array(is_new)) if not is_new.all() else data
                new_hashes = None if hashes is None else hashes[is_new]
                new, defaulted = self._with_defaults(catalogue, new)
                outcomes = {a: gate(confidence, self.thresholds(catalogue, operation, a, source))
                            for a in new.column_names if a != key}
                result.created = new.num_rows
                reuse = new_hashes is not None and not defaulted and all(o == "applied" for o in outcomes.values())
                prov = ValueProvenance(operation, run_id, source, model, None, confidence)
                if citations:  # one provenance per cited origin: the new rows are inserted per citation
                    cited = np.array([citations.get(str(k)) for k in new.column(key).to_pylist()], dtype=object)
                    for citation in dict.fromkeys(cited.tolist()):
                        rows = cited == citation
                        opened.insert_new(new.filter(pa.array(rows)), outcomes, replace(prov, citation=citation),
                                          hashes=new_hashes[rows] if reuse else None)
                else:
                    opened.insert_new(new, outcomes, prov, hashes=new_hashes if reuse else None)
                result.applied += sum(new.num_rows - new.column(a).null_count
                                      for a, o in outcomes.items() if o == "applied")
                # Fields the gate held back on new records become proposals like any other change.
                held_cols = [a for a, o in outcomes.items() if o != "applied"]
                if held_cols:
                    held_frame = new.select([key, *held_cols]).to_pandas()
                    cite = (citations or {}).get
                    held = [Change(str(k), a, v, confidence, reason, citation=cite(str(k))) for a in held_cols
                            for k, v in zip(held_frame[key], held_frame[a], strict=True) if not is_missing(v)]
                    if held:
                        opened.write(held, kind="update")
            if not is_new.all():
                # Existing records whose content differs (or, for rows lacking some attributes, may differ).
                changed = data.filter(pa.array(~is_new)) if is_new.any() else data
                self._write_changed(opened, catalogue, changed.to_pandas(), confidence=confidence,
                                    overwrite=overwrite, reason=reason, empty_cells=empty_cells,
                                    clear_reason=clear_reason, citations=citations or {})
            return opened.finish()

    def _write_changed(self, opened: OpenChangeSet, catalogue: str, changed: pd.DataFrame, *, confidence: float,
                       overwrite: float, reason: str, empty_cells: EmptyCells, clear_reason: str,
                       citations: Mapping[str, str] | None = None) -> None:
        """Existing records whose content differs: compare field by field, write what changed through the gate."""
        cat = self.schema.catalogue(catalogue)
        key = cat.key
        current = self.reader.fetch_rows(opened.conn, catalogue, changed[key])
        keys = changed[key].tolist()
        changes = []
        for a in changed.columns:
            if a == key:
                continue
            # Compare whole columns first; only the cells that differ become changes.
            if cat.attributes[a].type == "number":
                new = changed[a].to_numpy(dtype=float, na_value=np.nan)
                stored = np.array([current[k][a] for k in keys], dtype=float)
                differ = ~((new == stored) | (np.isnan(new) & np.isnan(stored)))
            else:
                new = changed[a].to_numpy(dtype=object)
                stored = np.array([current[k][a] for k in keys], dtype=object)
                missing = pd.isna(new)
                differ = (missing != pd.isna(stored)) | (~missing & (new != stored))
            for i in np.flatnonzero(differ):
                k, v = keys[i], new[i]
                was = current[k][a]
                if values_equal(was, v):
                    continue
                if is_missing(v):
                    if empty_cells == "clear":
                        changes.append(Change(str(k), a, None, overwrite, clear_reason,
                                              citation=(citations or {}).get(str(k))))
                    continue  # an empty cell is no information: the value stays
                changes.append(Change(str(k), a, v, confidence if was is None else overwrite, reason,
                                      citation=(citations or {}).get(str(k))))
        opened.result.unchanged += len(changed) * (changed.shape[1] - 1) - len(changes)
        opened.write(changes, kind="update", current=current)

    def _with_defaults(self, catalogue: str, new: pa.Table) -> tuple[pa.Table, bool]:
        """New records get each attribute's `default` where the row has no value (column absent or cell empty);
        True when a default filled something. Defaults apply to new records only: on an existing record a
        missing value is no information."""
        cat = self.schema.catalogue(catalogue)
        defaulted = False
        for name, attr in cat.attributes.items():
            if attr.default is None or name == cat.key:
                continue
            value = coerce_value(attr.default, attr, where=f"{catalogue} attribute {name!r} default")
            if name not in new.column_names:
                kind = pa.float64() if attr.type == "number" else pa.large_string()
                new = new.append_column(pa.field(name, kind), pa.repeat(pa.scalar(value, kind), new.num_rows))
                defaulted = True
            else:
                i = new.column_names.index(name)
                if new.column(i).null_count:
                    kind = new.column(i).type
                    new = new.set_column(i, name, pc.fill_null(new.column(i), pa.scalar(value, kind)))
                    defaulted = True
        return new, defaulted

    def _coerce_table(self, catalogue: str, frame: pd.DataFrame | pa.Table) -> pa.Table:
        """The rows as an Arrow table in the store's types: float64 for numbers, large_string for the rest,
        nulls for missing values. Arrow columns already of those types are used as they are (no copy)."""
        cat = self.schema.catalogue(catalogue)
        if isinstance(frame, pd.DataFrame):
            frame = frame.reset_index(drop=True)
        columns, fields = [], []
        for name in (frame.column_names if isinstance(frame, pa.Table) else frame.columns):
            attr = cat.attributes[name]
            kind = pa.float64() if attr.type == "number" else pa.large_string()
            column = frame.column(name) if isinstance(frame, pa.Table) else _arrow_friendly(frame[name], attr.type)
            if column is not None and attr.type != "number" and pa.types.is_string(column.type):
                kind = pa.string()  # Arrow's default text type is as good as large_string: no copy
            if column is not None and pa.types.is_dictionary(column.type):
                column = column.cast(column.type.value_type)
            fast = column is not None and (
                (attr.type == "number" and (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)))
                or (attr.type != "number" and (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
                                               or pa.types.is_null(column.type))))
            if fast:
                column = column.cast(kind)
                if attr.type == "number" and column.null_count < len(column):
                    column = pc.if_else(pc.is_nan(column), pa.scalar(None, kind), column)  # NaN is no value
            else:
                series = column.to_pandas() if column is not None else frame[name]
                column = pa.chunked_array([pa.array(self._coerce_series(catalogue, cat.key, frame, name, series),
                                                    type=kind, from_pandas=True)], type=kind)
            columns.append(column)
            fields.append(pa.field(name, column.type))
        return pa.Table.from_arrays(columns, schema=pa.schema(fields))

    def _coerce_series(self, catalogue: str, key: str, frame, col: str, series: pd.Series) -> pd.Series:
        attr = self.schema.catalogue(catalogue).attributes[col]
        series = series.reset_index(drop=True)
        if attr.type == "number":
            numbers = pd.to_numeric(series, errors="coerce")
            bad = numbers.isna() & series.notna()
            if bad.any():
                i = int(np.flatnonzero(bad.to_numpy())[0])
                keys = frame.column(key).to_pandas() if isinstance(frame, pa.Table) else frame[key]
                raise StoreError(f"{catalogue} record {keys.iloc[i]!r} field {col!r}: "
                                 f"{series.iloc[i]!r} is not a number; normalize it first "
                                 f"({int(bad.sum())} such value(s))")
            return numbers.astype("float64")
        if series.dtype.kind == "f":  # whole floats read as text must not gain ".0"
            return series.map(lambda v, a=attr, c=col: None if is_missing(v) else coerce_value(v, a, where=c))
        series = series.astype(object).where(series.notna(), None)
        if pd.api.types.infer_dtype(series, skipna=True) not in ("string", "empty"):
            series = series.map(lambda v: v if v is None or isinstance(v, str) else str(v))
        return series

    def _existing_keys(self, conn, catalogue: str, keys: pa.ChunkedArray, total: int) -> pa.Array:
        """The stored keys among `keys` (all stored keys when `keys` are much of the table)."""
        table = self.schema.rec[catalogue]
        key_col = table.c[self.schema.catalogue(catalogue).key]
        key_type = pa.float64() if self.schema.catalogue(catalogue).attributes[key_col.name].type == "number" \
            else pa.large_string()
        if total == 0:
            return pa.array([], key_type)
        if len(keys) * 4 >= total:  # most of the table: one sequential read rendered as text, parsed by Arrow
            return self._scan(conn, table.name, key_col.name, key_type)
        found = []
        for chunk in chunks(keys.to_pylist()):
            found.extend(conn.execute(sa.select(key_col).where(key_col.in_(chunk))).scalars())
        return pa.array(found, key_type)

    def _stored_hashes(self, conn, catalogue: str) -> np.ndarray:
        """Every stored content hash of a catalogue, read in one pass without a Python object per row."""
        table = self.schema.rec[catalogue].name
        quote = self.engine.dialect.identifier_preparer.quote
        if self.schema.dialect == "postgresql":
            # The server joins the hashes into a few large texts (one per range of ids, well under its 1 GB
            # limit): a COPY would send a message, and psycopg make a Python call, per row.
            with conn.connection.driver_connection.cursor() as cur:
                blocks = cur.execute(f"SELECT string_agg(_hash::text, ',') FROM {quote(table)} "
                                     f"GROUP BY _id >> 20").fetchall()
            parts = [np.fromstring(block, dtype=np.int64, sep=",") for (block,) in blocks if block]
            return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        parts = [np.fromstring(block, dtype=np.int64, sep=",")
                 for block in _sqlite_blocks(conn, table, "CAST(_hash AS TEXT)", ",")]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def _scan(self, conn, table: str, key: str, key_type: pa.DataType) -> pa.Array:
        """Every stored key of a table as an Arrow array."""
        quote = self.engine.dialect.identifier_preparer.quote
        buffer = io.BytesIO()
        if self.schema.dialect == "postgresql":
            with conn.connection.driver_connection.cursor() as cur, \
                    cur.copy(f"COPY (SELECT {quote(key)} FROM {quote(table)}) TO STDOUT (FORMAT csv)") as copy:
                for block in copy:
                    buffer.write(block)
        else:
            text = f"'\"' || replace(CAST({quote(key)} AS TEXT), '\"', '\"\"') || '\"'"
            for block in _sqlite_blocks(conn, table, text, "\n"):
                buffer.write(block.encode())
                buffer.write(b"\n")
        if not buffer.tell():
            return pa.array([], key_type)
        buffer.seek(0)
        convert = pacsv.ConvertOptions(column_types={"k": pa.large_string()}, strings_can_be_null=False,
                                       quoted_strings_can_be_null=False)
        parsed = pacsv.read_csv(buffer, read_options=pacsv.ReadOptions(column_names=["k"]),
                                parse_options=pacsv.ParseOptions(newlines_in_values=True), convert_options=convert)
        return parsed.column("k").combine_chunks().cast(key_type)


def _arrow_friendly(series: pd.Series, kind: str) -> pa.ChunkedArray | None:
    """A pandas column Arrow can take as it is (Arrow-backed or string dtypes, numbers for a number attribute);
    None for the rest (object columns), which go through the per-value coercion."""
    dtype = series.dtype
    if isinstance(dtype, pd.ArrowDtype | pd.StringDtype) or (
            kind == "number" and pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)):
        array = pa.array(series, from_pandas=True)
        return array if isinstance(array, pa.ChunkedArray) else pa.chunked_array([array])
    return None


def _refuse_duplicate_keys(catalogue: str, key: str, keys: pa.ChunkedArray) -> None:
    # Equal keys hash equal: sorting the keys' hashes (fast for int64) proves most files duplicate-free at once.
    hashed = np.sort(row_hash(pa.table({key: keys})))
    if len(hashed) < 2 or not (hashed[1:] == hashed[:-1]).any():
        return
    counts = pc.value_counts(keys)
    dup = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(dup):
        raise StoreError(f"{catalogue}: key {dup.field('values')[0].as_py()!r} appears more than once in the "
                         f"change set ({sum(c.as_py() - 1 for c in dup.field('counts'))} duplicate keys); "
                         "deduplicate before importing")


def _sqlite_blocks(conn, table: str, expression: str, separator: str) -> Iterator[str]:
    """`expression` of every row of a SQLite table, joined by SQLite itself (group_concat) in ranges of `_id`:
    a million values cost one text per range instead of a Python tuple per row."""
    quote = conn.dialect.identifier_preparer.quote
    cur = conn.connection.driver_connection.cursor()
    low, high = cur.execute(f"SELECT min(_id), max(_id) FROM {quote(table)}").fetchone()
    if low is not None:
        for begin in range(low, high + 1, _SCAN_ROWS):
            block = cur.execute(f"SELECT group_concat({expression}, ?) FROM {quote(table)} WHERE _id >= ? AND _id < ?",
                                (separator, begin, begin + _SCAN_ROWS)).fetchone()[0]
            if block:
                yield block
    cur.close()


class WriteTransaction:
    """One open database transaction of the writer."""

    def __init__(self, writer: ChangeSetWriter, conn: sa.Connection):
        self.writer = writer
        self.conn = conn
        self.opened: list[ChangeSet] = []  # change sets this transaction writes (to name them in an error)

    def open(self, cs: ChangeSet) -> OpenChangeSet | None:
        """Record the change set; None if it exists already (the idempotency guard). Takes the catalogue's
        write lock first (see the module docstring), so the guard and every read after it see all change sets
        committed before."""
        self.opened.append(cs)
        self.lock_catalogue(cs.catalogue)
        t = self.writer.t["change_sets"]
        if self.conn.execute(sa.select(t.c.seq).where(t.c.id == cs.id)).first() is not None:
            return None
        seq = self.conn.execute(t.insert().values(
            id=cs.id, catalogue=cs.catalogue, operation=cs.operation, run_id=cs.run_id, source=cs.source,
            model=cs.model, reviewer=cs.reviewer, at=now())).inserted_primary_key[0]
        return OpenChangeSet(self, cs, seq)

    def already_applied(self, change_set_id: str) -> ApplyResult:
        stored = self.writer.reader.change_set(change_set_id, self.conn)
        stored.already_applied = True
        return stored

    def decide(self, proposal: int, decision: str, *, by: str, note: str | None, value: Any = None,
               **extra: Any) -> None:
        """Record a decision on a review item (its status, who and when) and keep it in the decision log."""
        stamp = now()
        self.conn.execute(self.writer.t["proposals"].update().where(self.writer.t["proposals"].c.id == proposal)
                          .values(status=decision, decided_by=by, decided_at=stamp, **extra))
        self.conn.execute(self.writer.t["decisions"].insert().values(
            proposal=proposal, decision=decision, by=by, value=dumps(value), note=note, at=stamp))

    def append_event(self, event_type: str, *, change_set: str, payload: dict[str, Any], catalogue: str | None = None,
                     record: str | None = None, field: str | None = None, proposal: int | None = None,
                     once: bool = False, preceded_by: tuple[str, dict[str, Any]] | None = None) -> bool:
        e = self.writer.t["events"]
        events = [(event_type, payload)]
        if once or preceded_by:
            # One lock per change set (not per type): the check below sees every writer of its events.
            self._lock(change_set)
            present = set(self.conn.execute(sa.select(e.c.type).where(e.c.change_set == change_set)).scalars())
            if once and event_type in present:
                return False
            if preceded_by is not None and preceded_by[0] not in present:
                events.insert(0, preceded_by)
        for kind, body in events:
            self.conn.execute(e.insert().values(type=kind, catalogue=catalogue or "", record=record, field=field,
                                                change_set=change_set, proposal=proposal, payload=dumps(body),
                                                at=now()))
        return True

    def lock_catalogue(self, catalogue: str) -> None:
        """Hold the catalogue's write lock until the transaction ends (once per transaction and catalogue)."""
        held = self.__dict__.setdefault("_held", set())
        if catalogue not in held:
            self._lock(f"claro:catalogue:{catalogue}")
            held.add(catalogue)

    def _lock(self, name: str) -> None:
        """Hold the database's write lock for `name` until the transaction ends."""
        if self.writer.schema.dialect == "postgresql":
            key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
            self.conn.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))
        else:
            # SQLite has one writer at a time; a write statement (matching no row) takes that lock now,
            # before the lookup, instead of at the insert.
            e = self.writer.t["events"]
            self.conn.execute(e.update().where(e.c.id == -1).values(type=e.c.type))


class OpenChangeSet:
    """A change set being written: every value it writes gets its provenance, history row and event."""

    def __init__(self, tx: WriteTransaction, cs: ChangeSet, seq: int):
        self.tx, self.cs, self.seq = tx, cs, seq
        self.conn = tx.conn
        self.writer = tx.writer
        self.schema = tx.writer.schema
        self.reader = tx.writer.reader
        self.t = tx.writer.t
        self.result = ApplyResult(cs.id)
        self._prov_ids: dict[ValueProvenance, int] = {}
        # Exact writes (rollback, schema) are buffered and written together by `finish`.
        self._rows: dict[str, dict[str, Any]] = {}
        self._writes: dict[str, dict[str, Any]] = defaultdict(dict)
        self._history: list[dict[str, Any]] = []
        self._events: list[dict[str, Any]] = []
        self._delete: list[str] = []
        self._stamp = now()

    @property
    def catalogue(self) -> str:
        return self.cs.catalogue

    def provenance(self, prov: ValueProvenance) -> int:
        if prov not in self._prov_ids:
            p = self.t["provenance"]
            self._prov_ids[prov] = self.conn.execute(p.insert().values(
                change_set=self.cs.id, operation=prov.operation, run_id=prov.run_id, source=prov.source,
                model=prov.model, reviewer=prov.reviewer, confidence=float(prov.confidence), at=now(),
                citation=prov.citation)).inserted_primary_key[0]
        return self._prov_ids[prov]

    def event(self, event_type: str, *, record: str | None, field: str | None, payload: dict[str, Any],
              proposal: int | None = None) -> None:
        """A `change.*` event of this change set (one that writes no value, e.g. a reviewer's rejection)."""
        self._events.append(dict(type=event_type, catalogue=self.cs.catalogue, record=record, field=field,
                                 change_set=self.cs.id, proposal=proposal, payload=dumps(payload), at=self._stamp))

    # ------------------------------------------------------------------ gated per-field writes
    def write(self, changes: Sequence[Change], *, kind: str, current: dict[str, dict[str, Any]] | None = None,
              decide: Callable[[Change, AttributeSpec], Outcome] | None = None,
              provenance_of: Callable[[Change], ValueProvenance] | None = None,
              proposal_of: Callable[[Change], int | None] | None = None,
              event_type: str = "change.applied") -> None:
        """Gate each change (or `decide` it) and write it: applied ones with provenance, history and an
        event; held-back ones as review proposals. A change to an unknown record creates the record: one event
        for the record (`created_payload`), none per field."""
        cs = self.cs
        cat = self.schema.catalogue(cs.catalogue)
        result = self.result
        rows = dict(current or {})
        missing = {c.record for c in changes} - rows.keys()
        if missing:
            rows.update(self.reader.fetch_rows(self.conn, cs.catalogue, missing))
        created: dict[str, dict[str, Any]] = {}
        writes: dict[str, dict[str, Any]] = defaultdict(dict)
        history, events = [], []
        stamp = now()
        for ch in changes:
            attr = self.schema.check_field(cs.catalogue, ch.field)
            where = f"{cs.catalogue} record {ch.record!r} field {ch.field!r}"
            if ch.field == cat.key:
                raise StoreError(f"{where}: the key cannot be changed by a change set")
            new = coerce_value(ch.new, attr, where=where)
            row = rows.get(ch.record)
            old = row[ch.field] if row is not None else None
            if values_equal(old, new):
                result.unchanged += 1
                continue
            p = provenance_of(ch) if provenance_of else ValueProvenance(cs.operation, cs.run_id, cs.source, cs.model,
                                                                        cs.reviewer, ch.confidence, ch.citation)
            outcome = decide(ch, attr) if decide else gate(
                ch.confidence, self.writer.thresholds(cs.catalogue, cs.operation, ch.field, cs.source))
            payload = {"record": ch.record, "field": ch.field, "old": old, "new": new, "confidence": ch.confidence,
                       "reason": ch.reason, "operation": p.operation, "source": p.source, "run_id": p.run_id}
            if outcome != "applied":
                self._propose(ch, old, new, outcome, attr, stamp)
                continue
            pid = self.provenance(p)
            proposal = proposal_of(ch) if proposal_of else None
            if row is None:
                row = {cat.key: ch.record, **{a: None for a in cat.attributes if a != cat.key},
                       **{prov_column(a): None for a in cat.attributes}}
                rows[ch.record] = row
                created[ch.record] = row
                result.created += 1
                # One event for the new record, as the bulk path writes (`insert_new`), not one per field from
                # null: webhooks and the change feed see a creation however the record came to be.
                events.append(dict(type=event_type, catalogue=cs.catalogue, record=ch.record, field=None,
                                   change_set=cs.id, proposal=proposal, at=stamp,
                                   payload=dumps(created_payload(cs.catalogue, p.operation, p.source, p.run_id))))
            elif ch.record not in created:
                history.append(dict(catalogue=cs.catalogue, record=ch.record, field=ch.field, old=dumps(old),
                                    new=dumps(new), old_prov=row[prov_column(ch.field)], new_prov=pid,
                                    change_set=cs.id, kind=kind, reason=ch.reason, citation=ch.citation, at=stamp,
                                    proposal=proposal))
            row[ch.field] = new
            row[prov_column(ch.field)] = pid
            writes[ch.record][ch.field] = new
            writes[ch.record][prov_column(ch.field)] = pid
            if ch.record not in created:
                events.append(dict(type=event_type, catalogue=cs.catalogue, record=ch.record, field=ch.field,
                                   change_set=cs.id, proposal=proposal, payload=dumps(payload), at=stamp))
            result.applied += 1
        self._write_rows(rows, writes, created)
        if history:
            self.conn.execute(self.t["history"].insert(), history)
        if events:
            self.conn.execute(self.t["events"].insert(), events)

    def _propose(self, ch: Change, old: Any, new: Any, outcome: Outcome, attr: AttributeSpec, stamp) -> None:
        cs, result = self.cs, self.result
        th = self.writer.thresholds(cs.catalogue, cs.operation, ch.field, cs.source)
        gate_reason = None
        if outcome == "discarded":
            gate_reason = f"confidence {ch.confidence:g} is below the reject threshold {th.reject:g}"
            result.rejected += 1
        elif outcome == "queued":
            result.queued += 1
        else:
            result.suggested += 1
        routed = self.schema.spec.reviewers_for(cs.catalogue, ch.field, ch.confidence, cs.source,
                                                 cs.operation)  # branch on outcome
        reviewers = routed if routed is not None else attr.reviewers or []
        pid = self.conn.execute(self.t["proposals"].insert().values(
            change_set=cs.id, catalogue=cs.catalogue, record=ch.record, field=ch.field, old=dumps(old),
            new=dumps(new), confidence=ch.confidence, reason=ch.reason, citation=ch.citation,
            operation=cs.operation, source=cs.source, run_id=cs.run_id, model=cs.model,
            reviewers=",".join(reviewers) or None, status=outcome, gate_reason=gate_reason, at=stamp,
        )).inserted_primary_key[0]
        event = {"queued": "change.queued_for_review", "discarded": "change.rejected"}.get(outcome)
        if event:
            payload = {"record": ch.record, "field": ch.field, "old": old, "new": new, "confidence": ch.confidence,
                       "reason": ch.reason, "operation": cs.operation, "source": cs.source, "run_id": cs.run_id,
                       "reviewers": reviewers, "by": "gate" if outcome == "discarded" else None,
                       "gate_reason": gate_reason}
            self.conn.execute(self.t["events"].insert().values(
                type=event, catalogue=cs.catalogue, record=ch.record, field=ch.field, change_set=cs.id,
                proposal=pid, payload=dumps(payload), at=stamp))

    # ------------------------------------------------------------------ bulk insert of new records
    def insert_new(self, new: pa.Table, outcomes: dict[str, Outcome], prov: ValueProvenance,
                   hashes: np.ndarray | None = None) -> None:
        """Bulk-insert new records (values the gate applies; the others wait as proposals), one event each.
        `hashes`: the rows' content hashes when the caller has them already (the rows are stored as given)."""
        catalogue, change_set_id = self.cs.catalogue, self.cs.id
        cat = self.schema.catalogue(catalogue)
        table = self.schema.rec[catalogue]
        columns, fields = [], []
        for a, attr in cat.attributes.items():
            kind = pa.float64() if attr.type == "number" else pa.large_string()
            if a not in new.column_names or (a != cat.key and outcomes.get(a) != "applied"):
                columns.append(pa.nulls(new.num_rows, kind))
            else:
                columns.append(new.column(a))
            fields.append(pa.field(a, kind))
        stored = pa.Table.from_arrays(columns, schema=pa.schema(fields))
        if hashes is None:
            hashes = self.reader.row_hash(catalogue, stored)
        stored = stored.append_column("_hash", pa.array(hashes))
        before = self.conn.execute(sa.select(sa.func.coalesce(sa.func.max(table.c._id), 0))).scalar_one()
        self._bulk_insert(table, stored, {"_created_cs": change_set_id, "_created_prov": self.provenance(prov),
                                          "_seq": self.seq})
        e = self.t["events"]
        # One constant payload for every new record: no per-row work on the bulk path.
        payload = dumps(created_payload(catalogue, prov.operation, prov.source, prov.run_id))
        self.conn.execute(e.insert().from_select(
            ["type", "catalogue", "record", "change_set", "payload", "at"],
            sa.select(sa.literal("change.applied"), sa.literal(catalogue), table.c[cat.key],
                      sa.literal(change_set_id), sa.literal(payload), sa.literal(now(), sa.DateTime(timezone=True)))
            # The new rows are past the largest id before the insert: a range of the primary key, not a scan.
            .where(table.c._id > before, table.c._created_cs == change_set_id)))

    def _bulk_insert(self, table: sa.Table, rows: pa.Table, constants: dict[str, Any]) -> None:
        """Dialect-specific bulk path: COPY of Arrow-written CSV on PostgreSQL (no Python object per value),
        executemany on SQLite's raw cursor (its driver takes Python values only). `constants`: columns with one
        value for every row."""
        raw = self.conn.connection.driver_connection
        quote = self.writer.engine.dialect.identifier_preparer.quote
        n = rows.num_rows
        cols = ", ".join(quote(c) for c in [*rows.column_names, *constants])
        if self.schema.dialect == "postgresql":
            for name, value in constants.items():
                rows = rows.append_column(name, pa.repeat(pa.scalar(value), n))
            # Every valid value quoted, nulls bare: COPY's CSV format tells NULL from the empty string that way.
            options = pacsv.WriteOptions(include_header=False, quoting_style="all_valid")
            with raw.cursor() as cur, cur.copy(f"COPY {quote(table.name)} ({cols}) FROM STDIN (FORMAT csv)") as copy:
                for begin in range(0, rows.num_rows, _COPY_ROWS):
                    sink = io.BytesIO()
                    pacsv.write_csv(rows.slice(begin, _COPY_ROWS), sink, options)
                    copy.write(sink.getbuffer())
        else:
            marks = ", ".join("?" * (rows.num_columns + len(constants)))
            sql = f"INSERT INTO {quote(table.name)} ({cols}) VALUES ({marks})"
            cur = raw.cursor()
            for batch in rows.to_batches(_INSERT_ROWS):
                values = [column.to_pylist() for column in batch.columns]
                fixed = [itertools.repeat(value, batch.num_rows) for value in constants.values()]
                cur.executemany(sql, zip(*values, *fixed, strict=True))
            cur.close()

    # ------------------------------------------------------------------ exact writes (rollback, schema)
    def rows(self, keys) -> dict[str, dict[str, Any]]:
        """Current rows (as this change set has left them so far) of the keys that exist."""
        wanted = [k for k in dict.fromkeys(keys) if k not in self._rows]
        if wanted:
            self._rows.update(self.reader.fetch_rows(self.conn, self.cs.catalogue, wanted))
        return {k: self._rows[k] for k in dict.fromkeys(keys) if k in self._rows}

    def set_exact(self, key: str, field: str, value: Any, pid: int | None, *, kind: str, reason: str) -> None:
        """Set a field of an existing record to exactly this value and provenance row (no gate): how a
        rollback restores what a run replaced and a type migration clears what cannot convert."""
        row = self.rows([key])[key]
        old, old_pid = row[field], row[prov_column(field)]
        self._history.append(dict(catalogue=self.cs.catalogue, record=key, field=field, old=dumps(old),
                                  new=dumps(value), old_prov=old_pid, new_prov=pid, change_set=self.cs.id,
                                  kind=kind, reason=reason, citation=None, at=self._stamp, proposal=None))
        self.event("change.applied", record=key, field=field, payload={
            "record": key, "field": field, "old": old, "new": value, "operation": self.cs.operation,
            "by": self.cs.reviewer})
        row[field], row[prov_column(field)] = value, pid
        self._writes[key][field], self._writes[key][prov_column(field)] = value, pid
        self.result.applied += 1

    def touch_all(self) -> None:
        """Count every record as written by this change set, so outbound destinations read them again (after a
        type migration changed how every value of a column is stored)."""
        self.conn.execute(self.schema.rec[self.cs.catalogue].update().values(_seq=self.seq))

    def delete_records(self, keys: Sequence[str]) -> None:
        """Remove records (a rollback of the run that created them), each with its event."""
        for key in keys:
            self._delete.append(key)
            self.event("change.applied", record=key, field=None, payload={
                "record": key, "deleted": True, "operation": self.cs.operation, "by": self.cs.reviewer})

    def finish(self) -> ApplyResult:
        """Write what is buffered and the change set's counts."""
        self.flush()
        r = self.result
        t = self.t["change_sets"]
        self.conn.execute(t.update().where(t.c.id == r.change_set).values(
            applied=r.applied, queued=r.queued, suggested=r.suggested, rejected=r.rejected, unchanged=r.unchanged,
            created=r.created))
        return r

    def flush(self) -> None:
        """Write the buffered exact writes, deletions and events now."""
        cat = self.schema.catalogue(self.cs.catalogue)
        table = self.schema.rec[self.cs.catalogue]
        deleted = set(self._delete)
        self._write_rows(self._rows, {k: v for k, v in self._writes.items() if k not in deleted}, {})
        for chunk in chunks(self._delete):
            self.conn.execute(table.delete().where(table.c[cat.key].in_(chunk)))
        if self._history:
            self.conn.execute(self.t["history"].insert(), self._history)
        if self._events:
            self.conn.execute(self.t["events"].insert(), self._events)
        self._writes.clear()
        self._history, self._events, self._delete = [], [], []

    def _write_rows(self, rows: dict[str, dict[str, Any]], writes: dict[str, dict[str, Any]],
                    created: dict[str, dict[str, Any]]) -> None:
        """Insert created records and update changed ones, refreshing content hash and seq."""
        if not writes and not created:
            return
        catalogue = self.cs.catalogue
        cat = self.schema.catalogue(catalogue)
        table = self.schema.rec[catalogue]
        touched = list(dict.fromkeys([*created, *writes]))
        hashes = dict(zip(touched, self.reader.row_hash(catalogue, self.reader.arrow_rows(
            catalogue, {a: [rows[k][a] for k in touched] for a in cat.attributes})).tolist(), strict=True))
        if created:
            self.conn.execute(table.insert(), [
                {**{c: v for c, v in rows[k].items() if c in table.c and not c.startswith("_")},
                 "_hash": hashes[k], "_created_cs": self.cs.id, "_seq": self.seq} for k in created])
        by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
        for k, values in writes.items():
            if k in created:
                continue
            by_columns[tuple(sorted(values))].append({**{f"v_{c}": v for c, v in values.items()},
                                                      "k": k, "h": hashes[k]})
        key_col = table.c[cat.key]
        for cols, params in by_columns.items():
            stmt = table.update().where(key_col == sa.bindparam("k")).values(
                {**{c: sa.bindparam(f"v_{c}") for c in cols}, "_hash": sa.bindparam("h"), "_seq": self.seq})
            self.conn.execute(stmt, params)


def rehash(writer: ChangeSetWriter, catalogue: str) -> None:
    """Recompute every record's content hash (after a type change altered how values are stored, or when the
    hashes were made by an earlier version of `row_hash`)."""
    cat = writer.schema.catalogue(catalogue)
    table = writer.schema.rec[catalogue]
    frame = writer.reader.records(catalogue)
    hashes = writer.reader.row_hash(catalogue, frame)
    params = [{"k": k, "h": h} for k, h in zip(frame[cat.key], hashes.tolist(), strict=True)]
    if params:
        with writer.engine.begin() as conn:
            stmt = table.update().where(table.c[cat.key] == sa.bindparam("k")).values(_hash=sa.bindparam("h"))
            conn.execute(stmt, params)
