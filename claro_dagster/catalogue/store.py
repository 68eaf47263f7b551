"""The catalogue store: records with per-field provenance and history, gated change sets, rollback.

`CatalogueStore` is the facade; the work is split by responsibility:

- `schema_sync.StoredSchema`: the tables, kept in step with the spec when the store opens;
- `reader.CatalogueReader`: records, provenance, history, events, change sets (reads only);
- `writer.ChangeSetWriter`: the one writer of values, provenance, history, proposals and events;
- `rollback`: undoing a run, through the writer;
- `cursors.Cursors`: outbound connectors' read positions.

Every write happens inside one transaction together with its history rows, its review proposals
and its outbox events, so a crash never leaves a value without its trail or an event without its
change. Change sets are idempotent by identity: applying one twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from claro_dagster.catalogue import rollback as _rollback
from claro_dagster.catalogue.changes import ApplyResult, ChangeSet
from claro_dagster.catalogue.common import aware, dumps, loads, now  # noqa: F401 - re-exported for callers
from claro_dagster.catalogue.cursors import Cursors
from claro_dagster.catalogue.reader import CatalogueReader, HistoryEntry, Provenance
from claro_dagster.catalogue.rollback import NothingToRollBack, RollbackResult
from claro_dagster.catalogue.schema import create_engine, database_url, normalise_url
from claro_dagster.catalogue.schema_sync import StoredSchema
from claro_dagster.catalogue.writer import ChangeSetWriter, EmptyCells, ValueProvenance, rehash
from claro_dagster.spec.models import CatalogueSpec, ProjectSpec

_aware = aware  # the name older callers import


class CatalogueStore:
    """Records of every catalogue in the spec, on SQLite (default) or PostgreSQL."""

    def __init__(self, spec: ProjectSpec, url: str | None = None, *, home: Path | None = None):
        self.spec = spec
        self.url = normalise_url(url or database_url(home))
        self.engine = create_engine(self.url)
        self.schema = StoredSchema(spec, self.engine)
        self.reader = CatalogueReader(self.schema)
        self.writer = ChangeSetWriter(self.schema, self.reader)
        self.writer.ensure_row_hashes()
        self.cursors = Cursors(self.reader)

    # ------------------------------------------------------------------ schema
    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def metadata(self) -> sa.MetaData:
        return self.schema.metadata

    @property
    def t(self) -> dict[str, sa.Table]:
        return self.schema.t

    @property
    def rec(self) -> dict[str, sa.Table]:
        return self.schema.rec

    def catalogue(self, name: str) -> CatalogueSpec:
        """The catalogue as stored (attribute types whose change is not yet confirmed stay as they were)."""
        return self.schema.catalogue(name)

    def pending_type_changes(self) -> list[tuple[str, str, str, str]]:
        """(catalogue, attribute, stored type, spec type) for every unconfirmed type change."""
        return self.schema.pending_type_changes()

    # ------------------------------------------------------------------ reading
    def records(self, catalogue: str, filter: str | None = None, columns: Sequence[str] | None = None,
                limit: int | None = None, with_seq: bool = False) -> pd.DataFrame:
        """Records as a DataFrame (one column per attribute, in spec order), optionally filtered."""
        return self.reader.records(catalogue, filter, columns, limit, with_seq)

    def record_chunks(self, catalogue: str, filter: str | None = None, columns: Sequence[str] | None = None,
                      chunk_rows: int = 50_000) -> Iterator[pd.DataFrame]:
        """`records` as frames of at most `chunk_rows`, read as they are consumed (exports of large catalogues)."""
        return self.reader.record_chunks(catalogue, filter, columns, chunk_rows)

    def count(self, catalogue: str) -> int:
        return self.reader.count(catalogue)

    def record(self, catalogue: str, key: str) -> dict[str, Any] | None:
        return self.reader.record(catalogue, key)

    def provenance(self, catalogue: str, key: str, field: str) -> Provenance | None:
        return self.reader.provenance(catalogue, key, field)

    def history(self, catalogue: str, key: str, field: str | None = None) -> list[HistoryEntry]:
        """Every value a record's fields have had, oldest first, with provenance and who decided it."""
        return self.reader.history(catalogue, key, field)

    def events(self, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Outbox events after an id, oldest first (delivered as webhooks and Slack messages)."""
        return self.reader.events(after, limit)

    def change_set(self, change_set_id: str) -> ApplyResult | None:
        return self.reader.change_set(change_set_id)

    # ------------------------------------------------------------------ writing (all through the writer)
    def import_records(self, catalogue: str, frame: pd.DataFrame, *, change_set_id: str, operation: str = "import",
                       run_id: str | None = None, source: str | None = None, model: str | None = None,
                       confidence: float = 100.0, overwrite_confidence: float | None = None,
                       reason: str = "imported", empty_cells: EmptyCells = "ignore",
                       clear_reason: str = "cleared: empty cell",
                       citations: Mapping[str, str] | None = None) -> ApplyResult:
        """Write whole rows as one change set through the gate (see `ChangeSetWriter.import_records`)."""
        return self.writer.import_records(
            catalogue, frame, change_set_id=change_set_id, operation=operation, run_id=run_id, source=source,
            model=model, confidence=confidence, overwrite_confidence=overwrite_confidence, reason=reason,
            empty_cells=empty_cells, clear_reason=clear_reason, citations=citations)

    def apply(self, change_set: ChangeSet) -> ApplyResult:
        """Gate and write a change set; a change set already applied is a no-op."""
        return self.writer.apply(change_set)

    def append_event(self, event_type: str, *, change_set: str, payload: dict[str, Any],
                     catalogue: str | None = None, once: bool = True,
                     preceded_by: tuple[str, dict[str, Any]] | None = None) -> bool:
        """Append an outbox event that changes no value (e.g. a run event); with `once`, at most one event
        of this type per change set; `preceded_by` (type, payload) is written first when missing. True when
        this call wrote the event."""
        return self.writer.append_event(event_type, change_set=change_set, payload=payload, catalogue=catalogue,
                                        once=once, preceded_by=preceded_by)

    def rollback(self, run_id: str, *, record: str | None = None, fields: Sequence[str] | None = None,
                 by: str = "claro", catalogue: str | None = None) -> RollbackResult:
        """Restore every field a run wrote, including what reviewers approved of its proposals (optionally
        one record, some fields), to its exact previous value and provenance. Fields written again later
        are left alone and reported as conflicts; a rollback that can restore nothing raises and says why."""
        return _rollback.rollback(self.writer, run_id, record=record, fields=fields, by=by, catalogue=catalogue)

    def rehash(self, catalogue: str) -> None:
        """Recompute every record's content hash (after a type change altered how values are stored)."""
        rehash(self.writer, catalogue)

    # ------------------------------------------------------------------ cursors (outbound connectors)
    def get_cursor(self, name: str, default: str | None = None) -> str | None:
        return self.cursors.get(name, default)

    def set_cursor(self, name: str, value: str) -> None:
        self.cursors.set(name, value)

    def last_seq(self, catalogue: str | None = None) -> int:
        return self.cursors.last_seq(catalogue)

    def changed_since(self, catalogue: str, seq: int, filter: str | None = None,
                      columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Records written after a change-set seq (an outbound destination's cursor), filtered in SQL; the key
        and `columns` (default: every attribute), Arrow-backed columns."""
        return self.cursors.changed_since(catalogue, seq, filter, columns)

    def dispose(self) -> None:
        self.engine.dispose()


__all__ = ["CatalogueStore", "Provenance", "HistoryEntry", "RollbackResult", "NothingToRollBack", "ValueProvenance"]
