"""Reading the catalogue: records, provenance, per-field history, outbox events, change sets.

Nothing here writes. The writer reuses `fetch_rows`, `canonical` and `row_hash` so what it compares
and hashes is exactly what readers see.
"""

from __future__ import annotations

import contextlib
import difflib
import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import sqlalchemy as sa

from claro_dagster.catalogue.changes import ApplyResult, StoreError
from claro_dagster.catalogue.common import aware, chunks, loads, row_hash
from claro_dagster.catalogue.filters import compile_filter
from claro_dagster.catalogue.schema import prov_column
from claro_dagster.catalogue.schema_sync import StoredSchema


@dataclass(frozen=True)
class Provenance:
    """Where a value came from: its last write."""

    operation: str
    change_set: str
    run_id: str | None
    source: str | None
    model: str | None
    reviewer: str | None
    confidence: float
    at: datetime
    citation: str | None = None  # where the value was read, e.g. a scraped page's URL


@dataclass(frozen=True)
class HistoryEntry:
    record: str
    field: str
    old: Any
    new: Any
    kind: str  # created | update | review | rollback | schema | rejected (a reviewer kept the value)
    change_set: str
    provenance: Provenance | None
    reason: str | None
    at: datetime
    by: str | None = None  # who decided: the reviewer of an approval or rejection, the author of a rollback
    proposal: int | None = None  # the review item decided
    proposed_in: str | None = None  # the change set that proposed what a reviewer decided (its run is the value's)


_COLUMNAR_FROM = 1 << 14  # changed rows from which SQLite hands them over column by column
_COLUMNAR_BLOCK = 1 << 18  # rows per column block


class CatalogueReader:
    def __init__(self, schema: StoredSchema):
        self.schema = schema
        self.engine = schema.engine
        self.t = schema.t

    @property
    def rec(self) -> dict[str, sa.Table]:
        return self.schema.rec

    # ------------------------------------------------------------------ records
    def records(self, catalogue: str, filter: str | None = None, columns: Sequence[str] | None = None,
                limit: int | None = None, with_seq: bool = False) -> pd.DataFrame:
        query, names = self._records_query(catalogue, filter, columns, limit, with_seq)
        with self.engine.connect() as conn:
            frame = pd.DataFrame(conn.execute(query).fetchall(), columns=names)
        return self.canonical(catalogue, frame)

    def record_chunks(self, catalogue: str, filter: str | None = None, columns: Sequence[str] | None = None,
                      chunk_rows: int = 50_000) -> Iterator[pd.DataFrame]:
        """`records` in frames of at most `chunk_rows`, fetched as they are needed (a server-side cursor on
        PostgreSQL), so a whole catalogue is never held at once; one empty frame when nothing matches."""
        query, names = self._records_query(catalogue, filter, columns, None, False)
        with self.engine.connect() as conn:
            result = conn.execution_options(yield_per=chunk_rows).execute(query)
            empty = True
            for rows in result.partitions(chunk_rows):
                empty = False
                yield self.canonical(catalogue, pd.DataFrame(rows, columns=names))
            if empty:
                yield self.canonical(catalogue, pd.DataFrame([], columns=names))

    def selection(self, catalogue: str, columns: Sequence[str] | None) -> tuple[dict[str, sa.Column], list[str]]:
        """The catalogue's columns by field name, and the fields a read selects: `columns` in the order given
        (each once; all fields when empty), with the key first unless it is among them. StoreError naming every
        unknown field (and the closest known one) otherwise."""
        cat = self.schema.catalogue(catalogue)
        table = self.rec[catalogue]
        cols = {a: table.c[a] for a in cat.attributes}
        wanted = list(dict.fromkeys(columns)) if columns else list(cat.attributes)
        unknown = [c for c in wanted if c not in cols]
        if unknown:
            named = []
            for c in unknown:
                close = difflib.get_close_matches(c, list(cols), n=1)
                named.append(f"{c!r} (did you mean {close[0]!r}?)" if close else repr(c))
            raise StoreError(f"unknown field(s) {', '.join(named)} in {catalogue}; fields are: {', '.join(cols)}")
        if cat.key not in wanted:
            wanted.insert(0, cat.key)
        return cols, wanted

    def _records_query(self, catalogue: str, filter: str | None, columns: Sequence[str] | None,
                       limit: int | None, with_seq: bool) -> tuple[sa.Select, list[str]]:
        cat = self.schema.catalogue(catalogue)
        table = self.rec[catalogue]
        cols, wanted = self.selection(catalogue, columns)
        select_cols = [cols[c] for c in wanted] + ([table.c._seq] if with_seq else [])
        query = sa.select(*select_cols).order_by(table.c[cat.key])
        if filter:
            query = query.where(compile_filter(filter, cols))
        if limit:
            query = query.limit(limit)
        return query, [c.name for c in select_cols]

    def changed(self, catalogue: str, since: int, filter: str | None = None,
                columns: Sequence[str] | None = None) -> pa.Table:
        """Records last written by a change set after seq `since` (and matching `filter`), as an Arrow table
        (float64 numbers, text as large_string), in no particular order (a destination needs none, and sorting
        a million rows is not free). The seq condition and the filter run in the database on the indexed `_seq`
        column; rows travel as CSV text the database renders (PostgreSQL COPY; on SQLite one text per row)
        and Arrow parses, so a million changed records cost no Python object per value."""
        cat = self.schema.catalogue(catalogue)
        table = self.rec[catalogue]
        cols, wanted = self.selection(catalogue, columns)
        types = {a: pa.float64() if cat.attributes[a].type == "number" else pa.large_string() for a in wanted}
        condition = table.c._seq > since
        if filter:
            condition = sa.and_(condition, compile_filter(filter, cols))
        buffer = io.BytesIO()
        if self.schema.dialect == "postgresql":
            query = sa.select(*[cols[a] for a in wanted]).where(condition)
            compiled = query.compile(dialect=self.engine.dialect, compile_kwargs={"render_postcompile": True})
            with self.engine.connect() as conn, conn.connection.driver_connection.cursor() as cur, \
                    cur.copy(f"COPY ({compiled}) TO STDOUT (FORMAT csv)", compiled.params) as copy:
                for block in copy:
                    buffer.write(block)
        else:
            columnar = self._sqlite_columns(table, wanted, types, condition)
            if columnar is not None:
                return columnar
            quote = self.engine.dialect.identifier_preparer.quote
            parts = []
            for a in wanted:
                c = quote(a)
                parts.append(f"CASE WHEN {c} IS NULL THEN '' ELSE " + (
                    f"printf('%!.17g', {c})" if cat.attributes[a].type == "number"  # 17 digits: exact round trip
                    else f"'\"' || replace({c}, '\"', '\"\"') || '\"'") + " END")
            line = sa.literal_column(" || ',' || ".join(parts))
            query = sa.select(line).where(condition)
            compiled = query.compile(dialect=self.engine.dialect, compile_kwargs={"render_postcompile": True})
            params = [compiled.params[name] for name in compiled.positiontup or []]
            with self.engine.connect() as conn:
                cur = conn.connection.driver_connection.cursor()
                cur.execute(str(compiled), params)
                while rows := cur.fetchmany(1 << 16):
                    buffer.write("\n".join(r[0] for r in rows).encode())
                    buffer.write(b"\n")
                cur.close()
        if not buffer.tell():
            return pa.table({a: pa.array([], types[a]) for a in wanted})
        buffer.seek(0)
        return pacsv.read_csv(buffer, read_options=pacsv.ReadOptions(column_names=wanted),
                              parse_options=pacsv.ParseOptions(newlines_in_values=True),
                              convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=True,
                                                                   quoted_strings_can_be_null=False))

    def _sqlite_columns(self, table: sa.Table, wanted: list[str], types: dict[str, pa.DataType],
                        condition: sa.ColumnElement) -> pa.Table | None:
        """Many changed records from SQLite, column by column: SQLite concatenates each column of a range of
        rows (group_concat: the text with its byte lengths, numbers as exact text) and Arrow arrays are built
        from those buffers, so neither a Python object per value nor per row is made. None when few rows
        match (one text per row is cheaper then)."""
        quote = self.engine.dialect.identifier_preparer.quote

        def compiled(query: sa.Select) -> tuple[str, list]:
            c = query.compile(dialect=self.engine.dialect, compile_kwargs={"render_postcompile": True})
            return str(c), [c.params[name] for name in c.positiontup or []]

        aggregates = []
        for a in wanted:
            c = quote(a)
            if pa.types.is_floating(types[a]):  # 17 digits: exact round trip; '' for NULL keeps rows aligned
                aggregates.append(f"group_concat(CASE WHEN {c} IS NULL THEN '' ELSE printf('%!.17g', {c}) END, "
                                  "char(10))")
            else:
                aggregates += [f"group_concat({c}, '')", f"group_concat(coalesce(length(CAST({c} AS BLOB)), -1))"]
        lo, hi = sa.bindparam("lo", type_=sa.Integer), sa.bindparam("hi", type_=sa.Integer)
        ids_sql, ids_params = compiled(sa.select(sa.literal_column("group_concat(_id)")).where(condition))
        block_compiled = sa.select(*map(sa.literal_column, aggregates)).where(
            condition, table.c._id.between(lo, hi)).compile(dialect=self.engine.dialect,
                                                            compile_kwargs={"render_postcompile": True})
        block_sql = str(block_compiled)
        columns: dict[str, list[pa.Array]] = {a: [] for a in wanted}
        with self.engine.connect() as conn:
            cur = conn.connection.driver_connection.cursor()
            text = cur.execute(ids_sql, ids_params).fetchone()[0]
            ids = np.sort(np.fromstring(text, dtype=np.int64, sep=",")) if text else np.zeros(0, dtype=np.int64)
            if len(ids) < _COLUMNAR_FROM:
                cur.close()
                return None
            for begin in range(0, len(ids), _COLUMNAR_BLOCK):
                bounds = {"lo": int(ids[begin]), "hi": int(ids[min(begin + _COLUMNAR_BLOCK, len(ids)) - 1])}
                params = [bounds.get(name, block_compiled.params.get(name)) for name in block_compiled.positiontup]
                values = list(cur.execute(block_sql, params).fetchone())
                for a in wanted:
                    if pa.types.is_floating(types[a]):
                        block = (values.pop(0) or "").encode()
                        columns[a].append(pacsv.read_csv(
                            io.BytesIO(block + b"\n"), read_options=pacsv.ReadOptions(column_names=["v"]),
                            parse_options=pacsv.ParseOptions(ignore_empty_lines=False),
                            convert_options=pacsv.ConvertOptions(column_types={"v": pa.float64()}))
                            .column("v").combine_chunks())
                    else:
                        data, lengths = (values.pop(0) or "").encode(), values.pop(0)
                        sizes = np.fromstring(lengths, dtype=np.int64, sep=",")
                        valid = sizes >= 0
                        offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
                        np.cumsum(np.where(valid, sizes, 0), out=offsets[1:])
                        if offsets[-1] != len(data):
                            cur.close()
                            return None  # not UTF-8 text as stored: let the row path handle it
                        columns[a].append(pa.LargeStringArray.from_buffers(
                            len(sizes), pa.py_buffer(offsets), pa.py_buffer(data),
                            pa.array(valid).buffers()[1], int((~valid).sum())))
            cur.close()
        return pa.table({a: pa.chunked_array(arrays, types[a]) for a, arrays in columns.items()})

    def count(self, catalogue: str) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(self.rec[catalogue])).scalar_one()

    def record(self, catalogue: str, key: str) -> dict[str, Any] | None:
        rows = self.fetch_rows(self.engine, catalogue, [key])
        if key not in rows:
            return None
        return {a: rows[key][a] for a in self.schema.catalogue(catalogue).attributes}

    def provenance(self, catalogue: str, key: str, field: str) -> Provenance | None:
        rows = self.fetch_rows(self.engine, catalogue, [key])
        if key not in rows:
            raise StoreError(f"no record {key!r} in {catalogue}")
        self.schema.check_field(catalogue, field)
        pid = rows[key][prov_column(field)]
        return self.provenances([pid]).get(pid)

    def provenances(self, ids: Iterable[int | None], conn=None) -> dict[int, Provenance]:
        wanted = sorted({i for i in ids if i is not None})
        out: dict[int, Provenance] = {}
        p = self.t["provenance"]
        with self._connection(conn) as c:
            for chunk in chunks(wanted):
                for r in c.execute(sa.select(p).where(p.c.id.in_(chunk))):
                    out[r.id] = Provenance(r.operation, r.change_set, r.run_id, r.source, r.model, r.reviewer,
                                           r.confidence, aware(r.at), r.citation)
        return out

    # ------------------------------------------------------------------ history
    def history(self, catalogue: str, key: str, field: str | None = None) -> list[HistoryEntry]:
        """Every value a record's fields have had, oldest first, each with its provenance and who decided it;
        with the changes reviewers rejected (kind `rejected`: the value stayed)."""
        cat = self.schema.catalogue(catalogue)
        if field is not None:
            self.schema.check_field(catalogue, field)
        h, cs, pr, dec = self.t["history"], self.t["change_sets"], self.t["proposals"], self.t["decisions"]
        query = sa.select(h).where(h.c.catalogue == catalogue, h.c.record == key).order_by(h.c.id)
        rejected_q = (sa.select(pr, dec.c.note).select_from(pr.outerjoin(dec, sa.and_(
            dec.c.proposal == pr.c.id, dec.c.decision == "rejected")))
            .where(pr.c.catalogue == catalogue, pr.c.record == key, pr.c.status == "rejected"))
        if field:
            query = query.where(h.c.field == field)
            rejected_q = rejected_q.where(pr.c.field == field)
        with self.engine.connect() as conn:
            rows = conn.execute(query).fetchall()
            rejected = conn.execute(rejected_q).fetchall()
            current = self.fetch_rows(conn, catalogue, [key]).get(key)
            sets = {r.change_set for r in rows} | ({current["_created_cs"]} if current else set())
            deciders, stamps = {}, {}
            for chunk in chunks(sorted(sets)):
                for r in conn.execute(sa.select(cs.c.id, cs.c.reviewer, cs.c.at).where(cs.c.id.in_(chunk))):
                    deciders[r.id], stamps[r.id] = r.reviewer, aware(r.at)
            proposals = sorted({r.proposal for r in rows if r.proposal is not None})
            proposed_in = {}
            for chunk in chunks(proposals):
                proposed_in.update(conn.execute(sa.select(pr.c.id, pr.c.change_set).where(pr.c.id.in_(chunk))).all())
            provs = self.provenances([r.new_prov for r in rows] + [r.old_prov for r in rows] +
                                     ([current[prov_column(a)] for a in cat.attributes] if current else []), conn)
        if current is None and not rows and not rejected:
            raise StoreError(f"no record {key!r} in {catalogue}")
        entries: list[HistoryEntry] = []
        fields = [field] if field else [a for a in cat.attributes if a != cat.key]
        if current is not None:
            # Creation is implicit (no history rows for the bulk path): the first value of a field is the
            # `old` of its first history row, or its current value if it never changed.
            first = {}
            for r in rows:
                first.setdefault(r.field, r)
            for f in fields:
                if f in first:
                    value, pid = loads(first[f].old), first[f].old_prov
                else:
                    value, pid = current[f], current[prov_column(f)]
                if value is None and pid is None:
                    continue
                prov = provs.get(pid)
                entries.append(HistoryEntry(key, f, None, value, "created", current["_created_cs"], prov, None,
                                            prov.at if prov else stamps.get(current["_created_cs"]),
                                            by=prov.reviewer if prov else deciders.get(current["_created_cs"])))
        for r in rows:
            entries.append(HistoryEntry(key, r.field, loads(r.old), loads(r.new), r.kind, r.change_set,
                                        provs.get(r.new_prov), r.reason, aware(r.at),
                                        by=deciders.get(r.change_set), proposal=r.proposal,
                                        proposed_in=proposed_in.get(r.proposal)))
        for r in rejected:
            entries.append(HistoryEntry(key, r.field, loads(r.old), loads(r.new), "rejected", r.change_set, None,
                                        r.note or r.reason, aware(r.decided_at or r.at), by=r.decided_by,
                                        proposal=r.id, proposed_in=r.change_set))
        entries.sort(key=lambda e: e.at)
        return entries

    # ------------------------------------------------------------------ outbox and change sets
    def events(self, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        e = self.t["events"]
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(e).where(e.c.id > after).order_by(e.c.id).limit(limit)).fetchall()
        return [{"id": r.id, "type": r.type, "catalogue": r.catalogue, "record": r.record, "field": r.field,
                 "change_set": r.change_set, "proposal": r.proposal, "payload": loads(r.payload),
                 "at": aware(r.at)} for r in rows]

    def change_set(self, change_set_id: str, conn=None) -> ApplyResult | None:
        cs = self.t["change_sets"]
        with self._connection(conn) as c:
            r = c.execute(sa.select(cs).where(cs.c.id == change_set_id)).first()
        if r is None:
            return None
        return ApplyResult(r.id, r.applied, r.queued, r.suggested, r.rejected, r.unchanged, r.created)

    # ------------------------------------------------------------------ shared with the writer
    def _connection(self, conn):
        if conn is None:
            return self.engine.connect()
        if isinstance(conn, sa.Engine):
            return conn.connect()
        return contextlib.nullcontext(conn)

    def canonical(self, catalogue: str, frame: pd.DataFrame) -> pd.DataFrame:
        """Numbers as float64, everything else as object with None: one shape for hashing and comparing."""
        cat = self.schema.catalogue(catalogue)
        for col in frame.columns:
            attr = cat.attributes.get(col)
            if attr is None:
                continue
            if attr.type == "number":
                frame[col] = pd.to_numeric(frame[col], errors="raise").astype("float64")
            else:
                series = frame[col].astype(object)
                frame[col] = series.where(series.notna(), None)
        return frame

    def arrow_rows(self, catalogue: str, frame: pd.DataFrame | dict[str, list] | pa.Table) -> pa.Table:
        """Rows in the store's Arrow types (float64 numbers, large_string text), every attribute in spec order;
        the input holds canonical values (as `canonical` or the writer's coercion leaves them)."""
        cat = self.schema.catalogue(catalogue)
        if isinstance(frame, pa.Table):
            return frame.select(list(cat.attributes))
        columns = []
        for a, attr in cat.attributes.items():
            values = frame[a]
            kind = pa.float64() if attr.type == "number" else pa.large_string()
            columns.append(pa.array(values, type=kind, from_pandas=True))
        return pa.Table.from_arrays(columns, names=list(cat.attributes))

    def row_hash(self, catalogue: str, frame: pd.DataFrame | pa.Table) -> np.ndarray:
        """The content hash of each row over every attribute (see `common.row_hash`)."""
        cat = self.schema.catalogue(catalogue)
        numbers = {a for a, attr in cat.attributes.items() if attr.type == "number"}
        return row_hash(self.arrow_rows(catalogue, frame), numbers)

    def fetch_rows(self, conn, catalogue: str, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Whole stored rows by key; a value written at creation gets `_created_prov` as its provenance."""
        table = self.rec[catalogue]
        attributes = self.schema.catalogue(catalogue).attributes
        key_col = table.c[self.schema.catalogue(catalogue).key]
        out: dict[str, dict[str, Any]] = {}
        keys = list(dict.fromkeys(keys))
        with self._connection(conn) as c:
            for chunk in chunks(keys):
                for r in c.execute(sa.select(table).where(key_col.in_(chunk))).mappings():
                    row = dict(r)
                    for attr in attributes:
                        if row[prov_column(attr)] is None and row[attr] is not None:
                            row[prov_column(attr)] = row["_created_prov"]
                    out[r[key_col.name]] = row
        return out
