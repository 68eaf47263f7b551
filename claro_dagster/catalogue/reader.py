"""Reading the catalogue: records, provenance, per-field history, outbox events, change sets.

Nothing here writes. The writer reuses `fetch_rows`, `canonical` and `row_hash` so what it compares
and hashes is exactly what readers see.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from claro_dagster.catalogue.changes import ApplyResult, StoreError
from claro_dagster.catalogue.common import aware, chunks, loads
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

    def _records_query(self, catalogue: str, filter: str | None, columns: Sequence[str] | None,
                       limit: int | None, with_seq: bool) -> tuple[sa.Select, list[str]]:
        cat = self.schema.catalogue(catalogue)
        table = self.rec[catalogue]
        cols = {a: table.c[a] for a in cat.attributes}
        wanted = list(columns) if columns else list(cat.attributes)
        unknown = [c for c in wanted if c not in cols]
        if unknown:
            raise StoreError(f"unknown field(s) {', '.join(unknown)} in {catalogue}; fields are: {', '.join(cols)}")
        if cat.key not in wanted:
            wanted.insert(0, cat.key)
        select_cols = [cols[c] for c in wanted] + ([table.c._seq] if with_seq else [])
        query = sa.select(*select_cols).order_by(table.c[cat.key])
        if filter:
            query = query.where(compile_filter(filter, cols))
        if limit:
            query = query.limit(limit)
        return query, [c.name for c in select_cols]

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
                                           r.confidence, aware(r.at))
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

    def row_hash(self, catalogue: str, frame: pd.DataFrame) -> np.ndarray:
        cat = self.schema.catalogue(catalogue)
        ordered = frame[list(cat.attributes)]
        # categorize=False: factorizing first only pays when values repeat a lot; catalogue rows rarely do.
        return pd.util.hash_pandas_object(ordered, index=False, categorize=False).to_numpy().view(np.int64)

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
