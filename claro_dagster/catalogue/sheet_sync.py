"""Two-way sync of a catalogue with a spreadsheet range: the three-way diff and what it writes (no Dagster, no HTTP).

A sync compares, cell by cell, three values: the one last synced (kept in the store, table `claro_sheet_cells`,
one row per destination and record, created when first used like the channel state), the one in the sheet now
and the one in the catalogue now:

- sheet == catalogue: in sync;
- only the catalogue changed (sheet == last synced, or the row was never synced): the catalogue's value is pushed;
- only the sheet changed (catalogue == last synced): a *pull*, a change with source `sheets:<destination>` through
  validation and the gate like any other change;
- both changed: a *conflict*, one review item whose old value is the catalogue's and new value the sheet's, never
  decided by the sync itself.

A value the sync has proposed is remembered (`proposed`), so a sync while it waits for review keeps the sheet's
value and proposes nothing again, and once a person rejected it the catalogue's value goes back to the sheet.
Rows added in the sheet become new records (through validation); rows deleted in the sheet are reported and
pushed again, never deleted from the catalogue. Values are compared as the text a sheet shows (`sheet_text`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa

from claro_dagster.catalogue.changes import Change, ChangeSet, StoreError
from claro_dagster.catalogue.channels import text_value
from claro_dagster.catalogue.common import dumps, now

metadata = sa.MetaData()
# One row per destination and record, its cells' values as a JSON object (attribute -> text, null for an empty
# cell): the (destination, record, attribute, value) of every cell, read fifteen times faster than a row per cell
# (150,000 cells: 0.1 s instead of 2.7 s on SQLite), which is most of a pull of a large sheet.
sheet_cells = sa.Table(
    "claro_sheet_cells", metadata,
    sa.Column("destination", sa.Text, primary_key=True),
    sa.Column("record", sa.Text, primary_key=True),
    sa.Column("synced", sa.Text, nullable=False),  # JSON: attribute -> the value last synced, of the synced cells
    sa.Column("proposed", sa.Text, nullable=False),  # JSON: attribute -> the sheet value last proposed
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

Cell = tuple[str, str]  # (record key, attribute)
_UNSET = object()


class SheetSyncError(Exception):
    """A sheet a sync cannot go on with (its key column or named range gone); the message says what to do."""


def sheet_text(value: Any) -> str | None:
    """A cell as text, the form every comparison uses: None for empty, whole numbers without `.0`."""
    if type(value) is str:  # the common case first: a sync compares every cell of the range
        return value or None
    if value is None:
        return None
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return text_value(float(value))
    return text_value(value)


# ---------------------------------------------------------------------------------------------- stored state
@dataclass
class SyncedState:
    """What the store remembers of one destination's sheet: the last synced value and the last proposal per cell."""

    values: dict[Cell, str | None] = field(default_factory=dict)
    proposed: dict[Cell, str | None] = field(default_factory=dict)

    @property
    def rows(self) -> set[str]:
        return {record for record, _ in self.values}


class SheetState:
    """Read and write the synced state of a store's sheet destinations."""

    def __init__(self, store: Any):
        self.engine: sa.Engine = store.engine
        metadata.create_all(self.engine)

    def load(self, destination: str) -> SyncedState:
        c = sheet_cells
        query = sa.select(c.c.record, c.c.synced, c.c.proposed).where(c.c.destination == destination)
        state = SyncedState()
        with self.engine.connect() as conn:
            for record, synced, proposed in conn.execute(query).all():
                state.values.update(((record, a), v) for a, v in orjson.loads(synced).items())
                state.proposed.update(((record, a), v) for a, v in orjson.loads(proposed).items())
        return state

    def save(self, destination: str, old: SyncedState, new: SyncedState) -> int:
        """Write the records whose cells' state changed (one transaction); return how many cells changed."""
        c = sheet_cells
        changed = set()
        for before, after in ((old.values, new.values), (old.proposed, new.proposed)):
            changed.update(cell for cell, v in after.items() if before.get(cell, _UNSET) != v)
            changed.update(cell for cell in before if cell not in after)
        if not changed:
            return 0
        stamp = now()
        records = {r for r, _ in changed}
        synced: dict[str, dict[str, Any]] = {r: {} for r in records}
        proposed: dict[str, dict[str, Any]] = {r: {} for r in records}
        for (r, a), v in new.values.items():
            if r in records:
                synced[r][a] = v
        for (r, a), v in new.proposed.items():
            if r in records:
                proposed[r][a] = v
        before = {r for r, _ in old.values} | {r for r, _ in old.proposed}
        gone = [{"r": r} for r in records if r in before]
        kept = [{"destination": destination, "record": r, "synced": orjson.dumps(synced[r]).decode(),
                 "proposed": orjson.dumps(proposed[r]).decode(), "updated_at": stamp}
                for r in records if synced[r] or proposed[r]]
        with self.engine.begin() as conn:
            if gone:
                conn.execute(c.delete().where((c.c.destination == destination) & (c.c.record == sa.bindparam("r"))),
                             gone)
            if kept:
                conn.execute(c.insert(), kept)
        return len(changed)

    def forget(self, destination: str) -> None:
        """Drop a destination's state (the next sync treats the sheet as never synced: the catalogue wins)."""
        with self.engine.begin() as conn:
            conn.execute(sheet_cells.delete().where(sheet_cells.c.destination == destination))


# ---------------------------------------------------------------------------------------------- the diff
@dataclass(frozen=True)
class SheetEdit:
    """A value a person put in the sheet that the catalogue does not have: a pull, a conflict or a new row's cell."""

    record: str
    attribute: str
    value: str | None  # the sheet's value, as text
    catalogue: str | None  # the catalogue's value now, as text
    synced: str | None  # the value last synced
    row: int  # 0-based data row of the range (header excluded)
    kind: str  # "pull" | "conflict" | "new"


@dataclass
class SheetDiff:
    """What one pull found (see the module doc)."""

    edits: list[SheetEdit] = field(default_factory=list)
    pending: set[Cell] = field(default_factory=set)  # sheet value kept: its proposal still waits for review
    deleted: list[str] = field(default_factory=list)  # synced records whose row a person deleted
    problems: list[str] = field(default_factory=list)  # rows that cannot be read (no key, key twice, ...)
    order: list[str] = field(default_factory=list)  # record keys in the sheet's order (first occurrence)
    sheet: dict[str, dict[str, str | None]] = field(default_factory=dict)  # key -> attribute -> sheet text
    pending_rows: set[str] = field(default_factory=set)  # new rows whose proposals still wait

    @property
    def pulls(self) -> list[SheetEdit]:
        return [e for e in self.edits if e.kind == "pull"]

    @property
    def conflicts(self) -> list[SheetEdit]:
        return [e for e in self.edits if e.kind == "conflict"]

    @property
    def new_rows(self) -> dict[str, list[SheetEdit]]:
        rows: dict[str, list[SheetEdit]] = {}
        for e in self.edits:
            if e.kind == "new":
                rows.setdefault(e.record, []).append(e)
        return rows


def check_header(header: Sequence[Any], columns: Sequence[str], *, where: str) -> None:
    """The range's first row must name the columns, key first: a person deleting or moving a column is an error,
    never a reason to clear a column of the catalogue."""
    got = [sheet_text(h) for h in header][:len(columns)] + [None] * max(0, len(columns) - len(header))
    if got == list(columns):
        return
    key = columns[0]
    if got[:1] != [key]:
        raise SheetSyncError(
            f"{where}: the key column {key!r} is not the first column of the range (its header row reads "
            f"{[g for g in got if g is not None]}); a column was deleted or moved. Restore it (Undo, or File > "
            f"Version history in Google Sheets) and sync again; nothing was changed in the catalogue")
    missing = [c for c in columns if c not in got]
    raise SheetSyncError(
        f"{where}: the header row should read {list(columns)} but reads {got}"
        + (f" (missing: {', '.join(missing)})" if missing else "")
        + "; restore the columns (Undo, or File > Version history) and sync again; nothing was changed in the "
          "catalogue")


def diff_sheet(columns: Sequence[str], rows: Sequence[Sequence[Any]], state: SyncedState,
               catalogue: Mapping[str, Mapping[str, str | None]], *, known: Iterable[str] = (),
               open_cells: Iterable[Cell] = ()) -> SheetDiff:
    """The three-way diff of the sheet's data rows (header excluded, values as the API gives them) against the
    synced state and the catalogue's records in the destination (key -> attribute -> text).

    `known`: every key the catalogue holds (a row whose record exists outside the destination's filter is not a
    new record); `open_cells`: cells with a proposal from this sheet still waiting for review.
    """
    key_attr = columns[0]
    known = set(known) | set(catalogue)
    open_cells = set(open_cells)
    synced_rows = state.rows
    diff = SheetDiff()
    for i, raw in enumerate(rows):
        cells = [sheet_text(v) for v in raw[:len(columns)]] + [None] * max(0, len(columns) - len(raw))
        if all(v is None for v in cells):
            continue  # an empty row (a person cleared it or inserted it): nothing to read
        key = cells[0]
        if key is None:
            diff.problems.append(f"row {i + 2} of the range has no {key_attr}: ignored (fill in the key to add "
                                 "a record)")
            continue
        if key in diff.sheet:
            diff.problems.append(f"{key_attr} {key!r} appears twice (rows {diff.order.index(key) + 2} and "
                                 f"{i + 2}): the second row is ignored and overwritten")
            continue
        diff.order.append(key)
        values = dict(zip(columns, cells, strict=True))
        diff.sheet[key] = values
        if key not in catalogue:
            if key in known:
                diff.problems.append(f"{key_attr} {key!r} (row {i + 2}) is outside the destination's filter: "
                                     "its row is removed from the sheet, the record is unchanged")
                continue
            proposed_before = any(state.proposed.get((key, a), _UNSET) == values[a] for a in columns[1:])
            if proposed_before:
                if any((key, a) in open_cells for a in columns[1:]):
                    diff.pending_rows.add(key)
                    diff.pending.update((key, a) for a in columns[1:])
                continue  # proposed before and decided: the row goes (the catalogue has no such record)
            diff.edits += [SheetEdit(key, a, values[a], None, None, i, "new") for a in columns[1:]
                           if values[a] is not None]
            if not any(values[a] is not None for a in columns[1:]):
                diff.edits.append(SheetEdit(key, key_attr, key, None, None, i, "new"))
            continue
        record = catalogue[key]
        for a in columns[1:]:
            s, c = values[a], record.get(a)
            if s == c:
                continue
            cell = (key, a)
            if state.proposed.get(cell, _UNSET) == s:
                if cell in open_cells:
                    diff.pending.add(cell)
                continue  # proposed and decided otherwise: the catalogue's value goes back to the sheet
            if key not in synced_rows:
                continue  # never synced: the catalogue's value is pushed
            b = state.values.get(cell)
            if s == b:
                continue  # only the catalogue changed: pushed
            kind = "pull" if c == b else "conflict"
            diff.edits.append(SheetEdit(key, a, s, c, b, i, kind))
    present = set(diff.sheet)
    diff.deleted = sorted(k for k in synced_rows if k in catalogue and k not in present)
    return diff


def target_rows(columns: Sequence[str], diff: SheetDiff, catalogue: Mapping[str, Mapping[str, str | None]],
                open_cells: Iterable[Cell]) -> list[list[str | None]]:
    """The data rows the sheet should hold after the sync: the catalogue's records in the sheet's order (new ones
    after), with the sheet's value kept where a proposal from it still waits, and new rows still under review."""
    open_cells = set(open_cells)
    order = [k for k in diff.order if k in catalogue or k in diff.pending_rows
             or any((k, a) in open_cells for a in columns[1:])]
    seen = set(order)
    order += [k for k in catalogue if k not in seen]
    out = []
    for key in order:
        record = catalogue.get(key)
        sheet = diff.sheet.get(key, {})
        row: list[str | None] = [key]
        for a in columns[1:]:
            keep = (key, a) in open_cells and a in sheet
            row.append(sheet[a] if keep or record is None else record.get(a))
        out.append(row)
    return out


def next_state(columns: Sequence[str], old: SyncedState, rows: Sequence[Sequence[str | None]],
               proposed: Mapping[Cell, str | None], open_cells: Iterable[Cell]) -> SyncedState:
    """The state after a sync wrote `rows`: each cell's synced value is what the sheet now holds, except cells kept
    for review, which keep their last synced value; `proposed` are this sync's proposals, kept with earlier ones
    still open."""
    open_cells = set(open_cells)
    new = SyncedState()
    for row in rows:
        key = row[0]
        if key is None:
            continue
        for a, v in zip(columns, row, strict=True):
            cell = (key, a)
            if cell in open_cells:
                if cell in old.values:
                    new.values[cell] = old.values[cell]
                if cell in old.proposed:
                    new.proposed[cell] = old.proposed[cell]
            else:
                new.values[cell] = v
    for cell, value in proposed.items():
        new.proposed[cell] = value
    # A pending new row is not a synced row until its record exists: keep only its proposals.
    return new


# ---------------------------------------------------------------------------------------------- writing a pull
@dataclass
class PullResult:
    """What a pull wrote: counts of the gate's outcomes and the validation errors, each with its cell."""

    applied: int = 0
    queued: int = 0
    discarded: int = 0  # below the reject threshold or invalid
    created: int = 0
    invalid: list[str] = field(default_factory=list)  # "record attribute: value: reason"
    proposed: dict[Cell, str | None] = field(default_factory=dict)


def write_pull(store: Any, diff: SheetDiff, *, destination: str, catalogue: str, change_set_id: str,
               confidence: float | None, where: str, cell_ref: Any, run_id: str | None = None,
               validate: Any) -> PullResult:
    """Write the diff's edits as one change set with source `sheets:<destination>`.

    `validate(record, attribute, text, whole_row)` returns (value, None) or (None, reason); invalid values are
    recorded as review items with status `discarded` and the reason next to them, never applied. A new row with
    any invalid value is refused whole. Conflicts always wait for review; other edits go through the gate with
    `confidence`, or wait for review when it is None. `cell_ref(edit)` names the edit's cell (e.g. `C7`).
    """
    source = f"sheets:{destination}"
    operation = "sheets"
    result = PullResult()
    if not diff.edits:
        return result
    cat = store.catalogue(catalogue)
    rows = diff.new_rows
    refused_rows: dict[str, list[str]] = {}
    checked: dict[tuple[str, str], tuple[Any, str | None]] = {}
    for edit in diff.edits:
        value, problem = validate(edit.record, edit.attribute, edit.value, edit.kind == "new")
        checked[(edit.record, edit.attribute)] = (value, problem)
        if problem and edit.kind == "new":
            refused_rows.setdefault(edit.record, []).append(f"{edit.attribute}: {problem}")
    for key in rows:
        value, problem = validate(key, cat.key, key, True)
        if problem:
            refused_rows.setdefault(key, []).insert(0, f"{cat.key}: {problem}")
    cs = ChangeSet(change_set_id, catalogue, operation, run_id=run_id, source=source)
    gated: list[Change] = []
    queued: list[Change] = []
    invalid: list[tuple[SheetEdit, str]] = []
    for edit in diff.edits:
        if edit.attribute == cat.key:
            if edit.record not in refused_rows:
                continue  # a row with only its key: nothing to propose
            invalid.append((edit, "; ".join(refused_rows[edit.record])))
            result.proposed[(edit.record, edit.attribute)] = edit.value
            continue
        value, problem = checked[(edit.record, edit.attribute)]
        result.proposed[(edit.record, edit.attribute)] = edit.value
        if edit.kind == "new" and edit.record in refused_rows:
            invalid.append((edit, "new row refused: " + "; ".join(refused_rows[edit.record])))
            continue
        if problem:
            invalid.append((edit, problem))
            continue
        ref = cell_ref(edit)
        if edit.kind == "conflict":
            reason = (f"conflict: changed in {where} (cell {ref}) to {edit.value!r} and in the catalogue to "
                      f"{edit.catalogue!r} since the last sync (then {edit.synced!r}); approve to take the sheet's "
                      "value, reject to keep the catalogue's")
        elif edit.kind == "new":
            reason = f"new row in {where} (row {ref})"
        else:
            reason = f"edited in {where} (cell {ref})"
        th = store.writer.thresholds(catalogue, operation, edit.attribute, source)
        if edit.kind == "conflict" or confidence is None:
            queued.append(Change(edit.record, edit.attribute, value, min(confidence or th.review, th.review),
                                 reason, ref))
        else:
            gated.append(Change(edit.record, edit.attribute, value, confidence, reason, ref))
    with store.writer.transaction() as tx:
        opened = tx.open(cs)
        if opened is None:
            raise StoreError(f"change set {change_set_id} was written already: a sheet pull must have its own id")
        if gated:
            opened.write(gated, kind="update")
        if queued:
            opened.write(queued, kind="update", decide=lambda _c, _a: "queued")
        if invalid:
            _record_invalid(opened, invalid, cell_ref, where, confidence)
        applied = opened.finish()
    result.applied, result.queued, result.created = applied.applied, applied.queued, applied.created
    result.discarded = applied.rejected
    result.invalid = [f"{e.record} {e.attribute}: {e.value!r}: {why}" for e, why in invalid]
    return result


def _record_invalid(opened: Any, invalid: list[tuple[SheetEdit, str]], cell_ref: Any, where: str,
                    confidence: float | None) -> None:
    """Invalid sheet values become review items already `discarded`, with the validation error as their reason and
    gate reason, and a `change.rejected` event: visible in `claro review list --status discarded`, never applied."""
    cs = opened.cs
    current = opened.reader.fetch_rows(opened.conn, cs.catalogue, list({e.record for e, _ in invalid}))
    stamp = now()
    for edit, why in invalid:
        old = (current.get(edit.record) or {}).get(edit.attribute)
        reason = f"not applied: validation error: {why} (edited in {where}, cell {cell_ref(edit)})"
        pid = opened.conn.execute(opened.t["proposals"].insert().values(
            change_set=cs.id, catalogue=cs.catalogue, record=edit.record, field=edit.attribute, old=dumps(old),
            new=dumps(edit.value), confidence=float(confidence if confidence is not None else 0), reason=reason,
            citation=cell_ref(edit), operation=cs.operation, source=cs.source, run_id=cs.run_id, model=None,
            reviewers=None, status="discarded", gate_reason=f"validation error: {why}", at=stamp,
        )).inserted_primary_key[0]
        opened.conn.execute(opened.t["events"].insert().values(
            type="change.rejected", catalogue=cs.catalogue, record=edit.record, field=edit.attribute,
            change_set=cs.id, proposal=pid, at=stamp, payload=dumps({
                "record": edit.record, "field": edit.attribute, "old": old, "new": edit.value, "reason": reason,
                "operation": cs.operation, "source": cs.source, "run_id": cs.run_id, "by": "validation",
                "gate_reason": f"validation error: {why}"})))
        opened.result.rejected += 1


def catalogue_texts(frame: Any, columns: Sequence[str]) -> dict[str, dict[str, str | None]]:
    """Records (a DataFrame of the destination's columns, key first) as key -> attribute -> sheet text."""
    out: dict[str, dict[str, str | None]] = {}
    data = {c: frame[c].tolist() for c in columns}
    for i, key in enumerate(data[columns[0]]):
        k = sheet_text(key)
        out[k] = {c: sheet_text(_plain(data[c][i])) for c in columns}
    return out


def _plain(value: Any) -> Any:
    if value is None or (isinstance(value, float) and value != value):
        return None
    try:
        import pandas as pd

        if value is pd.NA:
            return None
    except ImportError:  # pragma: no cover - pandas is a dependency
        pass
    return value


__all__ = ["PullResult", "SheetDiff", "SheetEdit", "SheetState", "SheetSyncError", "SyncedState", "catalogue_texts",
           "check_header", "diff_sheet", "next_state", "sheet_text", "target_rows", "write_pull"]
