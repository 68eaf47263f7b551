"""The review queue: changes the gate held back wait here for a person's decision.

Every decision (approve, reject, edit, skip, snooze) is recorded with who and when. Approving,
editing and rejecting go through the store's one writer, in change sets that keep the run that
proposed the change (so rolling back that run undoes what reviewers approved of it) and name the
reviewer; a value gets history, provenance and an outbox event in the same transaction.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from claro_dagster.catalogue.changes import DECIDED, OPEN, ApplyResult, Change, ChangeSet, StoreError
from claro_dagster.catalogue.common import aware, loads, now
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.catalogue.writer import ValueProvenance


@dataclass(frozen=True)
class ReviewItem:
    id: int
    change_set: str
    catalogue: str
    record: str
    field: str
    old: Any
    new: Any
    confidence: float
    reason: str | None
    citation: str | None
    operation: str
    source: str | None
    run_id: str | None
    model: str | None
    reviewers: tuple[str, ...]
    status: str
    snoozed_until: datetime | None
    decided_by: str | None
    at: datetime


class ReviewQueue:
    def __init__(self, store: CatalogueStore):
        self.store = store
        self.t = store.t["proposals"]

    # ------------------------------------------------------------------ reading
    def list(self, *, catalogue: str | None = None, operation: str | None = None, attribute: str | None = None,
             source: str | None = None, min_confidence: float | None = None, max_confidence: float | None = None,
             reviewer: str | None = None, status: Sequence[str] | str | None = None, ids: Iterable[int] | None = None,
             at: datetime | None = None, limit: int | None = None) -> list[ReviewItem]:
        """Items matching every criterion given. By default the open items due now: queued, suggested,
        skipped, and snoozed ones whose time has come (skipped ones sort last)."""
        p = self.t
        at = at or now()
        query = sa.select(p)
        statuses = [status] if isinstance(status, str) else list(status or [])
        for s in statuses:
            if s not in OPEN + DECIDED:
                raise StoreError(f"unknown review status {s!r}; statuses are: {', '.join(OPEN + DECIDED)}")
        if statuses:
            query = query.where(p.c.status.in_(statuses))
        else:
            query = query.where(sa.or_(p.c.status.in_(["queued", "suggested", "skipped"]),
                                       sa.and_(p.c.status == "snoozed", p.c.snoozed_until <= at)))
        for column, value in ((p.c.catalogue, catalogue), (p.c.operation, operation), (p.c.field, attribute),
                              (p.c.source, source)):
            if value is not None:
                query = query.where(column == value)
        if min_confidence is not None:
            query = query.where(p.c.confidence >= min_confidence)
        if max_confidence is not None:
            query = query.where(p.c.confidence <= max_confidence)
        if ids is not None:
            query = query.where(p.c.id.in_(list(ids)))
        query = query.order_by(sa.case((p.c.status == "skipped", 1), else_=0), p.c.id)
        with self.store.engine.connect() as conn:
            rows = conn.execute(query).fetchall()
        items = [self._item(r) for r in rows]
        if reviewer is not None:
            items = [i for i in items if self._may_decide(i, reviewer)]
        return items[:limit] if limit else items

    def get(self, item_id: int) -> ReviewItem:
        items = self.list(ids=[item_id], status=OPEN + DECIDED)
        if not items:
            raise StoreError(f"no review item {item_id}; `claro review list` shows the open ones")
        return items[0]

    def pending_counts(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for item in self.list():
            counts[item.catalogue] += 1
        return dict(counts)

    def _may_decide(self, item: ReviewItem, reviewer: str) -> bool:
        if not item.reviewers:
            return True
        groups = self.store.spec.reviewers
        return any(r == reviewer or reviewer in groups.get(r, []) for r in item.reviewers)

    @staticmethod
    def _item(r) -> ReviewItem:
        return ReviewItem(r.id, r.change_set, r.catalogue, r.record, r.field, loads(r.old), loads(r.new),
                          r.confidence, r.reason, r.citation, r.operation, r.source, r.run_id, r.model,
                          tuple(x for x in (r.reviewers or "").split(",") if x), r.status,
                          aware(r.snoozed_until), r.decided_by, aware(r.at))

    # ------------------------------------------------------------------ deciding
    def approve(self, ids: Iterable[int], *, by: str, note: str | None = None) -> ApplyResult:
        """Apply the proposed values; provenance keeps the operation, source and confidence, plus the reviewer.
        A merge proposal (operation dedupe) is merged by catalogue/duplicates.py."""
        ids = list(ids)
        merges, ids = self._merges(ids)
        total = self._apply(ids, by=by, note=note, decision="approved") if ids else ApplyResult("review")
        if merges:
            from claro_dagster.catalogue.duplicates import Duplicates

            for item in merges:
                merged = Duplicates(self.store).merge(item.id, by=by, note=note)
                total.applied += merged.applied
                total.unchanged += merged.unchanged
        return total

    def _merges(self, ids: list[int]) -> tuple[list[ReviewItem], list[int]]:
        """The open merge proposals among `ids`, and the other ids."""
        from claro_dagster.catalogue.duplicates import Duplicates

        merges = [i for i in self._open(ids) if Duplicates.is_merge_item(i)]
        return merges, [i for i in ids if i not in {m.id for m in merges}]

    def edit(self, item_id: int, value: Any, *, by: str, note: str | None = None) -> ApplyResult:
        """Apply a corrected value instead of the proposal: the reviewer becomes the value's source."""
        if self._merges([item_id])[0]:
            raise StoreError(f"review item {item_id} is a merge proposal: approve (merge) or reject it; "
                             "`claro duplicates show` shows it side by side")
        return self._apply([item_id], by=by, note=note, decision="edited", value=value)

    def reject(self, ids: Iterable[int], *, by: str, note: str | None = None) -> int:
        """Keep the current values; each rejection is an event of a review change set of the proposing run. A
        rejected merge proposal's pair is never proposed again."""
        merges, ids = self._merges(list(ids))
        if merges:
            from claro_dagster.catalogue.duplicates import Duplicates

            for item in merges:
                Duplicates(self.store).reject(item.id, by=by, note=note)
        items = self._open(ids) if ids else []
        with self.store.writer.transaction() as tx:
            for opened, group in self._change_sets(tx, items, by, f"review:{uuid.uuid4().hex[:16]}"):
                for item in group:
                    opened.event("change.rejected", record=item.record, field=item.field, proposal=item.id,
                                 payload={"record": item.record, "field": item.field, "old": item.old,
                                          "new": item.new, "confidence": item.confidence,
                                          "operation": item.operation, "run_id": item.run_id, "by": by,
                                          "note": note})
                    tx.decide(item.id, "rejected", by=by, note=note)
                opened.result.rejected = len(group)
                opened.finish()
        return len(items) + len(merges)

    def skip(self, ids: Iterable[int], *, by: str, note: str | None = None) -> int:
        """Leave items for later or for someone else: they stay open and sort last."""
        return self._mark(ids, "skipped", by, note)

    def snooze(self, ids: Iterable[int], until: datetime, *, by: str, note: str | None = None) -> int:
        """Hide items until a time; they come back to the open list then."""
        if until.tzinfo is None:
            raise StoreError("snooze needs a time with a timezone, e.g. 2026-12-01T09:00+00:00")
        return self._mark(ids, "snoozed", by, note, snoozed_until=until)

    def approve_where(self, *, by: str, note: str | None = None, **criteria) -> ApplyResult:
        return self.approve([i.id for i in self.list(**criteria)], by=by, note=note)

    def reject_where(self, *, by: str, note: str | None = None, **criteria) -> int:
        return self.reject([i.id for i in self.list(**criteria)], by=by, note=note)

    # ------------------------------------------------------------------ internals
    def _open(self, ids: Iterable[int]) -> list[ReviewItem]:
        ids = list(ids)
        items = self.list(ids=ids, status=OPEN)
        missing = set(ids) - {i.id for i in items}
        if missing:
            raise StoreError(f"review item(s) {', '.join(map(str, sorted(missing)))} are not open "
                             "(unknown or already decided); `claro review list` shows the open ones")
        return items

    def _mark(self, ids: Iterable[int], status: str, by: str, note: str | None, **extra) -> int:
        items = self._open(ids)
        with self.store.writer.transaction() as tx:
            for item in items:
                tx.decide(item.id, status, by=by, note=note, **extra)
        return len(items)

    @staticmethod
    def _change_sets(tx, items: list[ReviewItem], by: str, review_id: str):
        """One review change set per catalogue and proposing run: the decision keeps the run (and, per
        value, the proposal and so the change set) that proposed the change."""
        groups: dict[tuple[str, str | None], list[ReviewItem]] = defaultdict(list)
        for item in items:
            groups[(item.catalogue, item.run_id)].append(item)
        # Catalogues in name order: each change set takes its catalogue's write lock, and two reviews locking
        # the same catalogues in different orders would deadlock.
        ordered = sorted(groups.items(), key=lambda item: (item[0][0], item[0][1] or ""))
        for n, ((catalogue, run_id), group) in enumerate(ordered):
            cs = ChangeSet(f"{review_id}:{n}" if len(groups) > 1 else review_id, catalogue, "review",
                           run_id=run_id, reviewer=by)
            yield tx.open(cs), group

    def _apply(self, ids: list[int], *, by: str, note: str | None, decision: str, value: Any = None) -> ApplyResult:
        items = self._open(ids)
        review_id = f"review:{uuid.uuid4().hex[:16]}"
        total = ApplyResult(review_id)
        with self.store.writer.transaction() as tx:
            for opened, group in self._change_sets(tx, items, by, review_id):
                changes, proposal, provs = [], {}, {}
                for item in group:
                    new = value if decision == "edited" else item.new
                    ch = Change(item.record, item.field, new, 100.0 if decision == "edited" else item.confidence,
                                note or item.reason or "", item.citation)
                    changes.append(ch)
                    proposal[id(ch)] = item.id
                    provs[id(ch)] = (ValueProvenance("review", item.run_id, f"reviewer:{by}", None, by, 100.0)
                                     if decision == "edited"
                                     else ValueProvenance(item.operation, item.run_id, item.source, item.model, by,
                                                          item.confidence, item.citation))
                opened.write(changes, kind="review", decide=lambda _c, _a: "applied",
                             provenance_of=lambda c, p=provs: p[id(c)], proposal_of=lambda c, p=proposal: p[id(c)],
                             event_type="change.approved")
                result = opened.finish()
                total.applied += result.applied
                total.unchanged += result.unchanged
                total.created += result.created
                for item in group:
                    tx.decide(item.id, decision, by=by, note=note, value=value if decision == "edited" else None)
        return total
