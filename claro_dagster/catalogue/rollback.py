"""Rollback: undo what one run wrote, field by field, to the exact value and provenance before it.

A run's writes are every change set carrying its run id: what its stages applied and what reviewers
approved or edited of the changes it proposed (review change sets keep the proposing run). Fields
written again by something else after that run are left alone and reported as conflicts. Changes the
run proposed that still wait for review are withdrawn, so nobody approves a rolled-back run's value
later. The rollback is itself a change set, written through the one writer.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from claro_dagster.catalogue.changes import OPEN, ChangeSet, StoreError
from claro_dagster.catalogue.common import loads
from claro_dagster.catalogue.schema import prov_column
from claro_dagster.catalogue.writer import ChangeSetWriter


@dataclass
class RollbackResult:
    change_set: str
    restored: int
    deleted_records: int
    conflicts: list[str]
    withdrawn: int = 0

    def summary(self) -> str:
        text = f"restored {self.restored} field values, removed {self.deleted_records} records created by the run"
        if self.withdrawn:
            text += f", withdrew {self.withdrawn} of its changes that waited for review"
        if self.conflicts:
            text += f"; skipped {len(self.conflicts)} fields changed again after that run"
        return text


class NothingToRollBack(StoreError):
    """The run wrote change sets, but none of its values can be restored (the message says why)."""

    def __init__(self, message: str, conflicts: list[str]):
        super().__init__(message)
        self.conflicts = conflicts


def rollback_run_id(run_id: str) -> str:
    """The run id a rollback's change sets carry."""
    return f"rollback-of-{run_id}"


def rollback(writer: ChangeSetWriter, run_id: str, *, record: str | None = None, fields: Sequence[str] | None = None,
             by: str = "claro", catalogue: str | None = None) -> RollbackResult:
    """Restore every field a run wrote (optionally one record, some fields). Raises StoreError when the
    run wrote nothing, and NothingToRollBack (writing nothing) when none of its values can be restored."""
    schema = writer.schema
    cs_t = writer.t["change_sets"]
    rollback_id = f"rollback:{run_id}:{uuid.uuid4().hex[:12]}"
    with writer.transaction() as tx:
        run_sets = tx.conn.execute(sa.select(cs_t.c.id, cs_t.c.catalogue, cs_t.c.operation)
                                   .where(cs_t.c.run_id == run_id).order_by(cs_t.c.seq)).fetchall()
        if catalogue:
            run_sets = [r for r in run_sets if r.catalogue == catalogue]
        if not run_sets:
            raise StoreError(f"no change set was written by run {run_id!r}; `claro history RECORD` shows run ids")
        result = RollbackResult(rollback_id, 0, 0, [])
        names = sorted({r.catalogue for r in run_sets})
        for cat_name in names:
            for f in fields or []:
                schema.check_field(cat_name, f)
            cs = ChangeSet(f"{rollback_id}:{cat_name}" if len(names) > 1 else rollback_id, cat_name, "rollback",
                           run_id=rollback_run_id(run_id), reviewer=by)
            opened = tx.open(cs)
            _rollback_catalogue(writer, opened, [r.id for r in run_sets if r.catalogue == cat_name], record, fields,
                                result)
        if result.restored == 0 and result.deleted_records == 0 and result.withdrawn == 0:
            # Raising rolls the transaction back: an empty rollback leaves no change set behind.
            raise NothingToRollBack(_why_nothing(writer, tx.conn, run_id, run_sets, record, fields, result),
                                    result.conflicts)
    return result


def _rollback_catalogue(writer: ChangeSetWriter, opened, run_cs: list[str], record: str | None,
                        fields: Sequence[str] | None, result: RollbackResult) -> None:
    conn = opened.conn
    cat = writer.schema.catalogue(opened.catalogue)
    table = writer.schema.rec[opened.catalogue]
    h = writer.t["history"]
    p = writer.t["provenance"]
    run_provs = {r.id for r in conn.execute(sa.select(p.c.id).where(p.c.change_set.in_(run_cs)))}
    query = sa.select(h).where(h.c.catalogue == opened.catalogue, h.c.change_set.in_(run_cs)).order_by(h.c.id)
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
    rows = opened.rows([k for k, _ in before] + created_keys)
    reason = f"rollback of {', '.join(run_cs)}"

    def restore(key: str, field: str, value: Any, pid: int | None) -> None:
        if rows[key][prov_column(field)] not in run_provs:
            result.conflicts.append(f"{key}.{field}")
            return
        opened.set_exact(key, field, value, pid, kind="rollback", reason=reason)
        result.restored += 1

    for (key, field), (value, pid) in before.items():
        if key in rows:
            restore(key, field, value, pid)
    delete = []
    for key in created_keys:
        row = rows[key]
        for f in fields or [a for a in cat.attributes if a != cat.key]:
            if (key, f) not in before and row[prov_column(f)] is not None:
                restore(key, f, None, None)
        others = [a for a in cat.attributes if a != cat.key and row[prov_column(a)] is not None]
        if not fields and not others:
            delete.append(key)
    opened.delete_records(delete)
    result.deleted_records += len(delete)
    result.withdrawn += _withdraw_open_proposals(opened, run_cs, record, fields, reason)
    opened.finish()


def _withdraw_open_proposals(opened, run_cs: list[str], record: str | None, fields: Sequence[str] | None,
                             reason: str) -> int:
    """Close the run's changes still waiting for review (status `withdrawn`), each with a change.rejected event."""
    pr = opened.t["proposals"]
    query = sa.select(pr).where(pr.c.catalogue == opened.catalogue, pr.c.change_set.in_(run_cs),
                                pr.c.status.in_(OPEN)).order_by(pr.c.id)
    if record:
        query = query.where(pr.c.record == record)
    if fields:
        query = query.where(pr.c.field.in_(list(fields)))
    by = opened.cs.reviewer
    note = f"withdrawn: {reason}"
    items = opened.conn.execute(query).fetchall()
    for item in items:
        opened.event("change.rejected", record=item.record, field=item.field, proposal=item.id,
                     payload={"record": item.record, "field": item.field, "old": loads(item.old),
                              "new": loads(item.new), "confidence": item.confidence, "operation": item.operation,
                              "run_id": item.run_id, "by": by, "note": note})
        opened.tx.decide(item.id, "withdrawn", by=by, note=note)
    return len(items)


def _why_nothing(writer: ChangeSetWriter, conn, run_id: str, run_sets, record: str | None,
                 fields: Sequence[str] | None, result: RollbackResult) -> str:
    scope = (f" for record {record!r}" if record else "") + (f" in field(s) {', '.join(fields)}" if fields else "")
    cs_t, pr = writer.t["change_sets"], writer.t["proposals"]
    earlier = conn.execute(sa.select(cs_t.c.id, cs_t.c.reviewer).where(cs_t.c.run_id == rollback_run_id(run_id))
                           .order_by(cs_t.c.seq.desc())).first()
    if result.conflicts:
        shown = ", ".join(result.conflicts[:10]) + (" ..." if len(result.conflicts) > 10 else "")
        if earlier is not None:
            return (f"nothing to roll back: run {run_id!r} was already rolled back (change set {earlier.id} by "
                    f"{earlier.reviewer}); the values it wrote{scope} have been replaced since: {shown}")
        return (f"nothing to roll back: every value run {run_id!r} wrote{scope} was written again after it ({shown}); "
                "roll back the later runs first (`claro history RECORD` shows them)")
    waiting = conn.execute(sa.select(sa.func.count()).select_from(pr).where(
        pr.c.change_set.in_([r.id for r in run_sets]), pr.c.status.in_(OPEN))).scalar_one()
    text = f"nothing to roll back: run {run_id!r} wrote no values{scope}"
    if waiting:
        text += f"; {waiting} change(s) it proposed still wait for review (`claro review list`)"
    return text
