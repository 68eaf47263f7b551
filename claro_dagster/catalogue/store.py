"""The catalogue store: records with per-field provenance and history, gated change sets, rollback.

Every write happens inside one transaction together with its history rows, its review proposals
and its outbox events, so a crash never leaves a value without its trail or an event without its
change. Change sets are idempotent by identity: applying one twice changes nothing.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import sqlalchemy as sa

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
from claro_dagster.catalogue.filters import compile_filter
from claro_dagster.catalogue.schema import (
    build_metadata,
    column_type,
    create_engine,
    database_url,
    normalise_url,
    prov_column,
    record_table,
)
from claro_dagster.spec.models import AttributeSpec, CatalogueSpec, ProjectSpec, Thresholds

_CHUNK = 500  # keys per IN (...) clause: well under SQLite's and PostgreSQL's parameter limits


def now() -> datetime:
    return datetime.now(UTC)


def dumps(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def loads(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def values_equal(a: Any, b: Any) -> bool:
    if is_missing(a) and is_missing(b):
        return True
    return a == b


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
    kind: str  # created | update | review | rollback | schema
    change_set: str
    provenance: Provenance | None
    reason: str | None
    at: datetime


@dataclass
class RollbackResult:
    change_set: str
    restored: int
    deleted_records: int
    conflicts: list[str]

    def summary(self) -> str:
        text = f"restored {self.restored} field values, removed {self.deleted_records} records created by the run"
        if self.conflicts:
            text += f"; skipped {len(self.conflicts)} fields changed again after that run"
        return text


@dataclass(frozen=True)
class _Prov:
    operation: str
    run_id: str | None
    source: str | None
    model: str | None
    reviewer: str | None
    confidence: float


class CatalogueStore:
    """Records of every catalogue in the spec, on SQLite (default) or PostgreSQL."""

    def __init__(self, spec: ProjectSpec, url: str | None = None, *, home: Path | None = None):
        self.spec = spec
        self.url = normalise_url(url or database_url(home))
        self.engine = create_engine(self.url)
        self.metadata, self.t, self.rec = build_metadata(spec)
        self.metadata.create_all(self.engine)
        self._effective: dict[str, CatalogueSpec] = {}
        self._sync_schema()

    # ------------------------------------------------------------------ schema
    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def _sync_schema(self) -> None:
        """Add new attributes (never loses data); keep stored types until a type change is confirmed."""
        inspector = sa.inspect(self.engine)
        attrs = self.t["attributes"]
        with self.engine.begin() as conn:
            stored = {(r.catalogue, r.attribute): r.type for r in conn.execute(sa.select(attrs))}
            for name, cat in self.spec.catalogues.items():
                table = self.rec[name]
                present = {c["name"] for c in inspector.get_columns(table.name)}
                preparer = self.engine.dialect.identifier_preparer
                for attr_name, attr in cat.attributes.items():
                    for col_name, col_type in ((attr_name, column_type(attr)), (prov_column(attr_name), sa.Integer())):
                        if col_name not in present:
                            conn.execute(sa.text(
                                f"ALTER TABLE {preparer.quote(table.name)} ADD COLUMN {preparer.quote(col_name)} "
                                f"{col_type.compile(dialect=self.engine.dialect)}"))
                    if (name, attr_name) not in stored:
                        conn.execute(attrs.insert().values(catalogue=name, attribute=attr_name, type=attr.type))
                        stored[(name, attr_name)] = attr.type
                effective = {a: (s if stored[(name, a)] == s.type else s.model_copy(update={"type": stored[(name, a)]}))
                             for a, s in cat.attributes.items()}
                self._effective[name] = cat.model_copy(update={"attributes": effective})
                if any(effective[a] is not cat.attributes[a] for a in effective):
                    # Bind the table to the stored types so writes keep working until the change is confirmed.
                    meta = sa.MetaData()
                    self.rec[name] = record_table(meta, name, self._effective[name])

    def catalogue(self, name: str) -> CatalogueSpec:
        """The catalogue as stored (attribute types whose change is not yet confirmed stay as they were)."""
        if name not in self._effective:
            raise StoreError(f"unknown catalogue {name!r}; catalogues are: {', '.join(self.spec.catalogues)}")
        return self._effective[name]

    def pending_type_changes(self) -> list[tuple[str, str, str, str]]:
        """(catalogue, attribute, stored type, spec type) for every unconfirmed type change."""
        out = []
        for name, cat in self.spec.catalogues.items():
            for attr_name, attr in cat.attributes.items():
                stored = self._effective[name].attributes[attr_name].type
                if stored != attr.type:
                    out.append((name, attr_name, stored, attr.type))
        return out

    # ------------------------------------------------------------------ reading
    def _columns(self, catalogue: str) -> dict[str, sa.Column]:
        table = self.rec[catalogue]
        return {a: table.c[a] for a in self.catalogue(catalogue).attributes}

    def records(self, catalogue: str, filter: str | None = None, columns: Sequence[str] | None = None,
                limit: int | None = None, with_seq: bool = False) -> pd.DataFrame:
        """Records as a DataFrame (one column per attribute, in spec order), optionally filtered."""
        cat = self.catalogue(catalogue)
        table = self.rec[catalogue]
        cols = self._columns(catalogue)
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
        with self.engine.connect() as conn:
            frame = pd.DataFrame(conn.execute(query).fetchall(), columns=[c.name for c in select_cols])
        return self._canonical(catalogue, frame)

    def count(self, catalogue: str) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(self.rec[catalogue])).scalar_one()

    def record(self, catalogue: str, key: str) -> dict[str, Any] | None:
        rows = self._fetch_rows(self.engine, catalogue, [key])
        if key not in rows:
            return None
        return {a: rows[key][a] for a in self.catalogue(catalogue).attributes}

    def provenance(self, catalogue: str, key: str, field: str) -> Provenance | None:
        rows = self._fetch_rows(self.engine, catalogue, [key])
        if key not in rows:
            raise StoreError(f"no record {key!r} in {catalogue}")
        self._check_field(catalogue, field)
        pid = rows[key][prov_column(field)]
        return self._provenances([pid]).get(pid)

    def _provenances(self, ids: Iterable[int | None]) -> dict[int, Provenance]:
        wanted = sorted({i for i in ids if i is not None})
        out: dict[int, Provenance] = {}
        p = self.t["provenance"]
        with self.engine.connect() as conn:
            for chunk in _chunks(wanted):
                for r in conn.execute(sa.select(p).where(p.c.id.in_(chunk))):
                    out[r.id] = Provenance(r.operation, r.change_set, r.run_id, r.source, r.model, r.reviewer,
                                           r.confidence, _aware(r.at))
        return out

    def history(self, catalogue: str, key: str, field: str | None = None) -> list[HistoryEntry]:
        """Every value a record's fields have had, oldest first, each with its provenance."""
        cat = self.catalogue(catalogue)
        if field is not None:
            self._check_field(catalogue, field)
        h = self.t["history"]
        query = sa.select(h).where(h.c.catalogue == catalogue, h.c.record == key).order_by(h.c.id)
        if field:
            query = query.where(h.c.field == field)
        with self.engine.connect() as conn:
            rows = conn.execute(query).fetchall()
            current = self._fetch_rows(conn, catalogue, [key]).get(key)
            created_at = None
            if current is not None:
                cs = self.t["change_sets"]
                created_at = conn.execute(sa.select(cs.c.at).where(cs.c.id == current["_created_cs"])).scalar()
        if current is None and not rows:
            raise StoreError(f"no record {key!r} in {catalogue}")
        provs = self._provenances([r.new_prov for r in rows] + [r.old_prov for r in rows] +
                                  ([current[prov_column(a)] for a in cat.attributes] if current else []))
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
                                            prov.at if prov else _aware(created_at)))
        for r in rows:
            entries.append(HistoryEntry(key, r.field, loads(r.old), loads(r.new), r.kind, r.change_set,
                                        provs.get(r.new_prov), r.reason, _aware(r.at)))
        entries.sort(key=lambda e: e.at)
        return entries

    def events(self, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Outbox events after an id, oldest first (delivered as webhooks and Slack messages)."""
        e = self.t["events"]
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(e).where(e.c.id > after).order_by(e.c.id).limit(limit)).fetchall()
        return [{"id": r.id, "type": r.type, "catalogue": r.catalogue, "record": r.record, "field": r.field,
                 "change_set": r.change_set, "proposal": r.proposal, "payload": loads(r.payload),
                 "at": _aware(r.at)} for r in rows]

    def change_set(self, change_set_id: str) -> ApplyResult | None:
        cs = self.t["change_sets"]
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(cs).where(cs.c.id == change_set_id)).first()
        if r is None:
            return None
        return ApplyResult(r.id, r.applied, r.queued, r.suggested, r.rejected, r.unchanged, r.created)

    # ------------------------------------------------------------------ helpers
    def _check_field(self, catalogue: str, field: str) -> AttributeSpec:
        cat = self.catalogue(catalogue)
        if field not in cat.attributes:
            close = difflib.get_close_matches(field, list(cat.attributes), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise StoreError(f"unknown field {field!r} in {catalogue}{hint}; fields are: {', '.join(cat.attributes)}")
        return cat.attributes[field]

    @functools.cache  # noqa: B019 - one store per spec; resolving builds pydantic models, too slow per change
    def _thresholds(self, catalogue: str, operation: str, attribute: str, source: str | None) -> Thresholds:
        return self.spec.thresholds_for(operation, self.spec.catalogues[catalogue].attributes[attribute], source)

    def _canonical(self, catalogue: str, frame: pd.DataFrame) -> pd.DataFrame:
        """Numbers as float64, everything else as object with None: one shape for hashing and comparing."""
        cat = self.catalogue(catalogue)
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

    def _row_hash(self, catalogue: str, frame: pd.DataFrame) -> np.ndarray:
        cat = self.catalogue(catalogue)
        ordered = frame[list(cat.attributes)]
        # categorize=False: factorizing first only pays when values repeat a lot; catalogue rows rarely do.
        return pd.util.hash_pandas_object(ordered, index=False, categorize=False).to_numpy().view(np.int64)

    def _fetch_rows(self, conn, catalogue: str, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        table = self.rec[catalogue]
        key_col = table.c[self.catalogue(catalogue).key]
        out: dict[str, dict[str, Any]] = {}
        keys = list(dict.fromkeys(keys))
        ctx = conn.connect() if isinstance(conn, sa.Engine) else contextlib.nullcontext(conn)
        with ctx as c:
            for chunk in _chunks(keys):
                for r in c.execute(sa.select(table).where(key_col.in_(chunk))).mappings():
                    row = dict(r)
                    for attr in self.catalogue(catalogue).attributes:
                        if row[prov_column(attr)] is None and row[attr] is not None:
                            row[prov_column(attr)] = row["_created_prov"]
                    out[r[key_col.name]] = row
        return out

    def _start_change_set(self, conn, cs: ChangeSet) -> int | None:
        """Insert the change-set row; None if it exists already (the idempotency guard)."""
        t = self.t["change_sets"]
        if conn.execute(sa.select(t.c.seq).where(t.c.id == cs.id)).first() is not None:
            return None
        result = conn.execute(t.insert().values(
            id=cs.id, catalogue=cs.catalogue, operation=cs.operation, run_id=cs.run_id, source=cs.source,
            model=cs.model, reviewer=cs.reviewer, at=now()))
        return result.inserted_primary_key[0]

    def _finish_change_set(self, conn, result: ApplyResult) -> None:
        t = self.t["change_sets"]
        conn.execute(t.update().where(t.c.id == result.change_set).values(
            applied=result.applied, queued=result.queued, suggested=result.suggested,
            rejected=result.rejected, unchanged=result.unchanged, created=result.created))

    class _ProvCache:
        def __init__(self, store: CatalogueStore, conn, change_set: str):
            self.store, self.conn, self.change_set, self.ids = store, conn, change_set, {}

        def __call__(self, prov: _Prov) -> int:
            if prov not in self.ids:
                p = self.store.t["provenance"]
                self.ids[prov] = self.conn.execute(p.insert().values(
                    change_set=self.change_set, operation=prov.operation, run_id=prov.run_id, source=prov.source,
                    model=prov.model, reviewer=prov.reviewer, confidence=float(prov.confidence), at=now()
                )).inserted_primary_key[0]
            return self.ids[prov]

    # ------------------------------------------------------------------ writing: bulk import
    def import_records(self, catalogue: str, frame: pd.DataFrame, *, change_set_id: str, operation: str = "import",
                       run_id: str | None = None, source: str | None = None, model: str | None = None,
                       confidence: float = 100.0, overwrite_confidence: float | None = None,
                       reason: str = "imported") -> ApplyResult:
        """Write whole rows (one per record key) as one change set, through the gate.

        New records are bulk-inserted; existing ones are compared by content hash first so an
        unchanged re-import costs one read of (key, hash); changed fields go through the same
        per-field path as any other change set. `overwrite_confidence` (default: `confidence`) scores a
        value that replaces a different existing one, so a less trusted source's overwrites can wait
        for review while its new records and filled gaps go straight in.
        """
        overwrite = confidence if overwrite_confidence is None else overwrite_confidence
        cat = self.catalogue(catalogue)
        key = cat.key
        unknown = [c for c in frame.columns if c not in cat.attributes]
        if unknown:
            raise StoreError(f"{catalogue}: unknown column(s) {', '.join(map(str, unknown))}; "
                             f"attributes are: {', '.join(cat.attributes)}")
        if key not in frame.columns:
            raise StoreError(f"{catalogue}: the rows have no {key!r} column, the catalogue key")
        data = self._coerce_frame(catalogue, frame)
        if data[key].isna().any():
            missing = int(data[key].isna().sum())
            raise StoreError(f"{catalogue}: {missing} row(s) have no {key!r}; every record needs its key")
        dup = data[key][data[key].duplicated()]
        if len(dup):
            raise StoreError(f"{catalogue}: key {dup.iloc[0]!r} appears more than once in the change set "
                             f"({len(dup)} duplicate keys); deduplicate before importing")
        cs = ChangeSet(change_set_id, catalogue, operation, run_id=run_id, source=source, model=model)
        result = ApplyResult(change_set_id)
        with self.engine.begin() as conn:
            seq = self._start_change_set(conn, cs)
            if seq is None:
                stored = self.change_set(change_set_id)
                stored.already_applied = True
                return stored
            prov = self._ProvCache(self, conn, change_set_id)
            base = _Prov(operation, run_id, source, model, None, confidence)
            outcomes = {a: gate(confidence, self._thresholds(catalogue, operation, a, source))
                        for a in data.columns if a != key}
            existing = self._existing_hashes(conn, catalogue, data[key])
            # One hash-table lookup gives both "is it new" and "where is its stored hash".
            position = existing.index.get_indexer(data[key]) if len(existing) else np.full(len(data), -1)
            is_new = position < 0
            new = data[is_new]
            if len(new):
                result.created = len(new)
                self._insert_new(conn, catalogue, new, outcomes, prov(base), change_set_id, seq)
                applied_cols = [a for a, o in outcomes.items() if o == "applied"]
                result.applied += int(new[applied_cols].notna().to_numpy().sum()) if applied_cols else 0
                # Fields the gate held back on new records become proposals like any other change.
                held = [Change(str(k), a, v, confidence, reason) for a, o in outcomes.items() if o != "applied"
                        for k, v in zip(new[key], new[a], strict=True) if not is_missing(v)]
                if held:
                    self._apply_changes(conn, cs, seq, held, prov, result, kind="update")
            old = data[~is_new]
            if len(old):
                if set(data.columns) == set(cat.attributes):
                    hashes = self._row_hash(catalogue, old)
                    changed = old[hashes != existing.to_numpy()[position[~is_new]]]
                else:
                    changed = old
                result.unchanged += (len(old) - len(changed)) * (len(data.columns) - 1)
                if len(changed):
                    current = self._fetch_rows(conn, catalogue, changed[key])
                    changes = [Change(str(k), a, v, confidence if current[k][a] is None else overwrite, reason)
                               for a in data.columns if a != key
                               for k, v in zip(changed[key], changed[a], strict=True)
                               if not values_equal(current[k][a], v)]
                    result.unchanged += len(changed) * (len(data.columns) - 1) - len(changes)
                    self._apply_changes(conn, cs, seq, changes, prov, result, kind="update", current=current)
            self._finish_change_set(conn, result)
        return result

    def _coerce_frame(self, catalogue: str, frame: pd.DataFrame) -> pd.DataFrame:
        cat = self.catalogue(catalogue)
        data = frame.reset_index(drop=True).copy()
        for col in data.columns:
            attr = cat.attributes[col]
            if attr.type == "number":
                numbers = pd.to_numeric(data[col], errors="coerce")
                bad = numbers.isna() & data[col].notna()
                if bad.any():
                    i = int(np.flatnonzero(bad.to_numpy())[0])
                    raise StoreError(f"{catalogue} record {data[cat.key].iloc[i]!r} field {col!r}: "
                                     f"{data[col].iloc[i]!r} is not a number; normalize it first "
                                     f"({int(bad.sum())} such value(s))")
                data[col] = numbers.astype("float64")
            else:
                series = data[col]
                if series.dtype.kind == "f":  # whole floats read as text must not gain ".0"
                    series = series.map(lambda v, a=attr, c=col: None if is_missing(v) else coerce_value(v, a, where=c))
                else:
                    series = series.astype(object).where(series.notna(), None)
                    if pd.api.types.infer_dtype(series, skipna=True) not in ("string", "empty"):
                        series = series.map(lambda v: v if v is None or isinstance(v, str) else str(v))
                data[col] = series
        return data

    def _existing_hashes(self, conn, catalogue: str, keys: pd.Series) -> pd.Series:
        table = self.rec[catalogue]
        key_col = table.c[self.catalogue(catalogue).key]
        total = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
        if total == 0:
            return pd.Series(dtype="int64")
        if len(keys) * 4 >= total:  # most of the table: one sequential read on the driver's own cursor
            quote = self.engine.dialect.identifier_preparer.quote
            cur = conn.connection.driver_connection.cursor()
            cur.execute(f"SELECT {quote(key_col.name)}, _hash FROM {quote(table.name)}")
            rows = cur.fetchall()
            cur.close()
        else:
            rows = []
            for chunk in _chunks(list(keys)):
                rows.extend(conn.execute(sa.select(key_col, table.c._hash).where(key_col.in_(chunk))).fetchall())
        if not rows:
            return pd.Series(dtype="int64")
        k, h = zip(*rows, strict=True)
        return pd.Series(np.array(h, dtype=np.int64), index=pd.Index(k))  # _hash is never NULL

    def _insert_new(self, conn, catalogue: str, new: pd.DataFrame, outcomes: dict[str, Outcome], pid: int,
                    change_set_id: str, seq: int) -> None:
        cat = self.catalogue(catalogue)
        table = self.rec[catalogue]
        stored = new.copy()
        for a in cat.attributes:
            if a not in stored.columns or (a != cat.key and outcomes.get(a) != "applied"):
                stored[a] = np.nan if cat.attributes[a].type == "number" else None
        stored = stored[list(cat.attributes)]
        hashes = self._row_hash(catalogue, stored)
        n = len(stored)
        columns = [*cat.attributes, "_hash", "_created_cs", "_created_prov", "_seq"]
        arrays = [_to_db_list(stored[a]) for a in cat.attributes]
        arrays += [hashes.tolist(), [change_set_id] * n, [pid] * n, [seq] * n]
        self._bulk_insert(conn, table, columns, arrays)
        e = self.t["events"]
        payload = dumps({"created": True})
        conn.execute(e.insert().from_select(
            ["type", "catalogue", "record", "change_set", "payload", "at"],
            sa.select(sa.literal("change.applied"), sa.literal(catalogue), table.c[cat.key],
                      sa.literal(change_set_id), sa.literal(payload), sa.literal(now(), sa.DateTime(timezone=True)))
            .where(table.c._created_cs == change_set_id)))

    def _bulk_insert(self, conn, table: sa.Table, columns: list[str], arrays: list[list]) -> None:
        """Dialect-specific bulk path: COPY on PostgreSQL, executemany on SQLite's raw cursor."""
        raw = conn.connection.driver_connection
        rows = zip(*arrays, strict=True)
        if self.dialect == "postgresql":
            quote = self.engine.dialect.identifier_preparer.quote
            cols = ", ".join(quote(c) for c in columns)
            with raw.cursor() as cur, cur.copy(f"COPY {quote(table.name)} ({cols}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            quote = self.engine.dialect.identifier_preparer.quote
            sql = (f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in columns)}) "
                   f"VALUES ({', '.join('?' * len(columns))})")
            cur = raw.cursor()
            cur.executemany(sql, rows)
            cur.close()

    # ------------------------------------------------------------------ writing: per-field change sets
    def apply(self, change_set: ChangeSet) -> ApplyResult:
        """Gate and write a change set; a change set already applied is a no-op."""
        self.catalogue(change_set.catalogue)
        result = ApplyResult(change_set.id)
        with self.engine.begin() as conn:
            seq = self._start_change_set(conn, change_set)
            if seq is None:
                stored = self.change_set(change_set.id)
                stored.already_applied = True
                return stored
            prov = self._ProvCache(self, conn, change_set.id)
            self._apply_changes(conn, change_set, seq, change_set.changes, prov, result, kind="update")
            self._finish_change_set(conn, result)
        return result

    def _apply_changes(self, conn, cs: ChangeSet, seq: int, changes: Sequence[Change], prov: _ProvCache,
                       result: ApplyResult, *, kind: str,
                       current: dict[str, dict[str, Any]] | None = None,
                       decide: Callable[[Change, AttributeSpec], Outcome] | None = None,
                       provenance_of: Callable[[Change], _Prov] | None = None,
                       proposal_of: Callable[[Change], int | None] | None = None,
                       event_type: str = "change.applied") -> None:
        cat = self.catalogue(cs.catalogue)
        rows = dict(current or {})
        missing = {c.record for c in changes} - rows.keys()
        if missing:
            rows.update(self._fetch_rows(conn, cs.catalogue, missing))
        created: dict[str, dict[str, Any]] = {}
        writes: dict[str, dict[str, Any]] = defaultdict(dict)
        history, events = [], []
        stamp = now()
        for ch in changes:
            attr = self._check_field(cs.catalogue, ch.field)
            where = f"{cs.catalogue} record {ch.record!r} field {ch.field!r}"
            if ch.field == cat.key:
                raise StoreError(f"{where}: the key cannot be changed by a change set")
            new = coerce_value(ch.new, attr, where=where)
            row = rows.get(ch.record)
            old = row[ch.field] if row is not None else None
            if values_equal(old, new):
                result.unchanged += 1
                continue
            p = provenance_of(ch) if provenance_of else _Prov(cs.operation, cs.run_id, cs.source, cs.model,
                                                              cs.reviewer, ch.confidence)
            outcome = decide(ch, attr) if decide else gate(
                ch.confidence, self._thresholds(cs.catalogue, cs.operation, ch.field, cs.source))
            payload = {"record": ch.record, "field": ch.field, "old": old, "new": new, "confidence": ch.confidence,
                       "reason": ch.reason, "operation": p.operation, "source": p.source, "run_id": p.run_id}
            if outcome != "applied":
                self._propose(conn, cs, ch, old, new, outcome, attr, result, stamp)
                continue
            pid = prov(p)
            if row is None:
                row = {cat.key: ch.record, **{a: None for a in cat.attributes if a != cat.key},
                       **{prov_column(a): None for a in cat.attributes}}
                rows[ch.record] = row
                created[ch.record] = row
                result.created += 1
            elif ch.record not in created:
                history.append(dict(catalogue=cs.catalogue, record=ch.record, field=ch.field, old=dumps(old),
                                    new=dumps(new), old_prov=row[prov_column(ch.field)], new_prov=pid,
                                    change_set=cs.id, kind=kind, reason=ch.reason, citation=ch.citation, at=stamp))
            row[ch.field] = new
            row[prov_column(ch.field)] = pid
            writes[ch.record][ch.field] = new
            writes[ch.record][prov_column(ch.field)] = pid
            events.append(dict(type=event_type, catalogue=cs.catalogue, record=ch.record, field=ch.field,
                               change_set=cs.id, proposal=proposal_of(ch) if proposal_of else None,
                               payload=dumps(payload), at=stamp))
            result.applied += 1
        self._write_rows(conn, cs.catalogue, seq, cs.id, rows, writes, created)
        if history:
            conn.execute(self.t["history"].insert(), history)
        if events:
            conn.execute(self.t["events"].insert(), events)

    def _write_rows(self, conn, catalogue: str, seq: int, change_set_id: str, rows: dict[str, dict[str, Any]],
                    writes: dict[str, dict[str, Any]], created: dict[str, dict[str, Any]]) -> None:
        """Insert created records and update changed ones, refreshing content hash and seq."""
        if not writes and not created:
            return
        cat = self.catalogue(catalogue)
        table = self.rec[catalogue]
        touched = list(dict.fromkeys([*created, *writes]))
        frame = self._canonical(catalogue, pd.DataFrame([{a: rows[k][a] for a in cat.attributes} for k in touched]))
        hashes = dict(zip(touched, self._row_hash(catalogue, frame).tolist(), strict=True))
        if created:
            conn.execute(table.insert(), [
                {**{c: v for c, v in rows[k].items() if c in table.c and not c.startswith("_")},
                 "_hash": hashes[k], "_created_cs": change_set_id, "_seq": seq} for k in created])
        by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
        for k, values in writes.items():
            if k in created:
                continue
            by_columns[tuple(sorted(values))].append({**{f"v_{c}": v for c, v in values.items()},
                                                      "k": k, "h": hashes[k]})
        key_col = table.c[cat.key]
        for cols, params in by_columns.items():
            stmt = table.update().where(key_col == sa.bindparam("k")).values(
                {**{c: sa.bindparam(f"v_{c}") for c in cols}, "_hash": sa.bindparam("h"), "_seq": seq})
            conn.execute(stmt, params)

    def _propose(self, conn, cs: ChangeSet, ch: Change, old: Any, new: Any, outcome: Outcome,
                 attr: AttributeSpec, result: ApplyResult, stamp: datetime) -> None:
        th = self._thresholds(cs.catalogue, cs.operation, ch.field, cs.source)
        status = {"queued": "queued", "suggested": "suggested", "discarded": "discarded"}[outcome]
        gate_reason = None
        if outcome == "discarded":
            gate_reason = f"confidence {ch.confidence:g} is below the reject threshold {th.reject:g}"
            result.rejected += 1
        elif outcome == "queued":
            result.queued += 1
        else:
            result.suggested += 1
        routed = self.spec.reviewers_for(cs.catalogue, ch.field, ch.confidence, cs.source)  # branch on outcome
        reviewers = routed if routed is not None else attr.reviewers or []
        pid = conn.execute(self.t["proposals"].insert().values(
            change_set=cs.id, catalogue=cs.catalogue, record=ch.record, field=ch.field, old=dumps(old),
            new=dumps(new), confidence=ch.confidence, reason=ch.reason, citation=ch.citation,
            operation=cs.operation, source=cs.source, run_id=cs.run_id, model=cs.model,
            reviewers=",".join(reviewers) or None, status=status, gate_reason=gate_reason, at=stamp,
        )).inserted_primary_key[0]
        event = {"queued": "change.queued_for_review", "discarded": "change.rejected"}.get(outcome)
        if event:
            payload = {"record": ch.record, "field": ch.field, "old": old, "new": new, "confidence": ch.confidence,
                       "reason": ch.reason, "operation": cs.operation, "source": cs.source, "run_id": cs.run_id,
                       "reviewers": reviewers, "by": "gate" if outcome == "discarded" else None,
                       "gate_reason": gate_reason}
            conn.execute(self.t["events"].insert().values(
                type=event, catalogue=cs.catalogue, record=ch.record, field=ch.field, change_set=cs.id,
                proposal=pid, payload=dumps(payload), at=stamp))

    # ------------------------------------------------------------------ rollback
    def rollback(self, run_id: str, *, record: str | None = None, fields: Sequence[str] | None = None,
                 by: str = "claro", catalogue: str | None = None) -> RollbackResult:
        """Restore every field a run wrote (optionally one record, some fields) to its exact previous value
        and provenance. Fields written again by a later run are left alone and reported as conflicts.
        The rollback is itself a change set with its own history rows and events."""
        cs_t = self.t["change_sets"]
        rollback_id = f"rollback:{run_id}:{uuid.uuid4().hex[:12]}"
        with self.engine.begin() as conn:
            run_sets = conn.execute(sa.select(cs_t.c.id, cs_t.c.catalogue, cs_t.c.seq)
                                    .where(cs_t.c.run_id == run_id)).fetchall()
            if catalogue:
                run_sets = [r for r in run_sets if r.catalogue == catalogue]
            if not run_sets:
                raise StoreError(f"no change set was written by run {run_id!r}; `claro history RECORD` shows run ids")
            result = RollbackResult(rollback_id, 0, 0, [])
            for cat_name in sorted({r.catalogue for r in run_sets}):
                ids = [r.id for r in run_sets if r.catalogue == cat_name]
                for f in fields or []:
                    self._check_field(cat_name, f)
                several = len({r.catalogue for r in run_sets}) > 1
                cs = ChangeSet(f"{rollback_id}:{cat_name}" if several else rollback_id, cat_name, "rollback",
                               run_id=f"rollback-of-{run_id}", reviewer=by)
                seq = self._start_change_set(conn, cs)
                self._rollback_catalogue(conn, cs, seq, ids, record, fields, result)
        return result

    def _rollback_catalogue(self, conn, cs: ChangeSet, seq: int, run_cs: list[str], record: str | None,
                            fields: Sequence[str] | None, result: RollbackResult) -> None:
        cat = self.catalogue(cs.catalogue)
        table = self.rec[cs.catalogue]
        h = self.t["history"]
        p = self.t["provenance"]
        run_provs = {r.id for r in conn.execute(sa.select(p.c.id).where(p.c.change_set.in_(run_cs)))}
        query = sa.select(h).where(h.c.catalogue == cs.catalogue, h.c.change_set.in_(run_cs)).order_by(h.c.id)
        if record:
            query = query.where(h.c.record == record)
        if fields:
            query = query.where(h.c.field.in_(list(fields)))
        before: dict[tuple[str, str], tuple[Any, int | None]] = {}
        for r in conn.execute(query):
            before.setdefault((r.record, r.field), (loads(r.old), r.old_prov))  # earliest write of the run wins
        created_query = sa.select(table.c[cat.key]).where(table.c._created_cs.in_(run_cs))
        if record:
            created_query = created_query.where(table.c[cat.key] == record)
        created_keys = [r[0] for r in conn.execute(created_query)]
        rows = self._fetch_rows(conn, cs.catalogue, [k for k, _ in before] + created_keys)
        writes: dict[str, dict[str, Any]] = defaultdict(dict)
        history, events, delete = [], [], []
        stamp = now()

        def restore(key: str, field: str, value: Any, pid: int | None) -> None:
            row = rows[key]
            if row[prov_column(field)] not in run_provs:
                result.conflicts.append(f"{key}.{field}")
                return
            history.append(dict(catalogue=cs.catalogue, record=key, field=field, old=dumps(row[field]),
                                new=dumps(value), old_prov=row[prov_column(field)], new_prov=pid,
                                change_set=cs.id, kind="rollback", reason=f"rollback of {', '.join(run_cs)}",
                                citation=None, at=stamp))
            events.append(dict(type="change.applied", catalogue=cs.catalogue, record=key, field=field,
                               change_set=cs.id, payload=dumps({"record": key, "field": field, "old": row[field],
                                                                "new": value, "operation": "rollback",
                                                                "by": cs.reviewer}), at=stamp))
            row[field], row[prov_column(field)] = value, pid
            writes[key][field], writes[key][prov_column(field)] = value, pid
            result.restored += 1

        for (key, field), (value, pid) in before.items():
            if key in rows:
                restore(key, field, value, pid)
        for key in created_keys:
            row = rows[key]
            targets = fields or [a for a in cat.attributes if a != cat.key]
            for f in targets:
                if (key, f) not in before and row[prov_column(f)] is not None:
                    restore(key, f, None, None)
            others = [a for a in cat.attributes if a != cat.key and row[prov_column(a)] is not None]
            if not fields and not others:
                delete.append(key)
        self._write_rows(conn, cs.catalogue, seq, cs.id, rows, {k: v for k, v in writes.items() if k not in delete}, {})
        if delete:
            for chunk in _chunks(delete):
                conn.execute(table.delete().where(table.c[cat.key].in_(chunk)))
            result.deleted_records += len(delete)
        if history:
            conn.execute(h.insert(), history)
        if events:
            conn.execute(self.t["events"].insert(), events)
        self._finish_change_set(conn, ApplyResult(cs.id, applied=len(history)))

    def rehash(self, catalogue: str) -> None:
        """Recompute every record's content hash (after a type change altered how values are stored)."""
        cat = self.catalogue(catalogue)
        table = self.rec[catalogue]
        frame = self.records(catalogue)
        hashes = self._row_hash(catalogue, frame)
        params = [{"k": k, "h": h} for k, h in zip(frame[cat.key], hashes.tolist(), strict=True)]
        if params:
            with self.engine.begin() as conn:
                stmt = table.update().where(table.c[cat.key] == sa.bindparam("k")).values(_hash=sa.bindparam("h"))
                conn.execute(stmt, params)

    # ------------------------------------------------------------------ cursors (outbound connectors)
    def get_cursor(self, name: str, default: str | None = None) -> str | None:
        c = self.t["cursors"]
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(c.c.value).where(c.c.name == name)).scalar()
        return default if value is None else value

    def set_cursor(self, name: str, value: str) -> None:
        c = self.t["cursors"]
        with self.engine.begin() as conn:
            if conn.execute(c.update().where(c.c.name == name).values(value=value, updated_at=now())).rowcount == 0:
                conn.execute(c.insert().values(name=name, value=value, updated_at=now()))

    def last_seq(self) -> int:
        cs = self.t["change_sets"]
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.coalesce(sa.func.max(cs.c.seq), 0))).scalar_one()

    def changed_since(self, catalogue: str, seq: int, filter: str | None = None) -> pd.DataFrame:
        """Records written after a change-set seq (an outbound destination's cursor)."""
        frame = self.records(catalogue, filter=filter, with_seq=True)
        return frame[frame["_seq"] > seq].drop(columns="_seq").reset_index(drop=True)

    def dispose(self) -> None:
        self.engine.dispose()


def _to_db_list(series: pd.Series) -> list:
    if series.dtype.kind == "f":
        values = series.to_numpy()
        return [None if v != v else v for v in values.tolist()]
    return series.tolist()


def _chunks(items: list, size: int = _CHUNK):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)  # SQLite drops the offset; we only ever write UTC
    return value



__all__ = ["CatalogueStore", "Provenance", "HistoryEntry", "RollbackResult"]
