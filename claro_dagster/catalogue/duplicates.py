"""Find Duplicates in the store: merge proposals as review items, their decisions, merges and their rollback.

`find` runs the pure operation (operations/dedupe.py) over a catalogue's records and stores each new proposal
twice, in one transaction: as a review item (`claro_proposals`: record = the duplicate, field `merged_into`, new
value = the survivor's key, confidence = the score, operation `dedupe`), so `claro review list` and the review
page show it, and as a `claro_duplicates` row with what the review item cannot hold: per-field similarity, the
value to keep per field with its reason, and the two records' content hashes when they were scored. The review
item's id is the proposal's id everywhere (`claro duplicates show ID`, `claro review approve ID`).

What a merge does, and why
--------------------------
Approving a proposal writes, through the change-set writer and under one run id (`merge-<id>-<hex>`):

- the survivor's fields the duplicate fills (the survivor had no value), each with provenance naming the
  duplicate and the reviewer;
- every reference to the duplicate, in any catalogue (attributes of type `reference` whose `target` is this
  catalogue), repointed to the survivor;
- when the catalogue's `dedupe.retire_attribute` is set, that attribute of the duplicate set to `retire_value`
  (e.g. `status: archived`, which the sales-channel destinations already turn into archived or deleted listings).

The duplicate is never deleted: its row keeps every value, and the `claro_duplicates` row (status `merged`) marks
it merged into the survivor (a merged record is not proposed again). Deleting would lose values and history and
could not be undone per field; every change above is an ordinary per-field change with history, so
`claro duplicates unmerge ID` (the store's rollback of the merge's run) restores the survivor's fields, the
duplicate's retire attribute and every repointed reference exactly, and marks the proposal `rolled_back`.

Approving a proposal whose records changed since they were scored (their content hash differs) applies nothing:
the pair is scored again on the current values, the proposal updated, and the reviewer asked to look again (or
the proposal withdrawn when the pair no longer reaches the threshold). A rejected pair is stored and never
proposed again, in either order.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from claro_dagster.catalogue.changes import OPEN, ApplyResult, Change, ChangeSet, StoreError
from claro_dagster.catalogue.common import aware, dumps, loads, now
from claro_dagster.catalogue.rollback import NothingToRollBack, rollback_run_id
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.catalogue.writer import ValueProvenance
from claro_dagster.operations.dedupe import DedupeConfig, KeptValue, compare, find_duplicates, plan_fields

OPERATION = "dedupe"
MERGE_FIELD = "merged_into"  # the review item's field: the duplicate is merged into the survivor (its new value)
STATUSES = ("open", "merged", "rejected", "withdrawn", "rolled_back")


class ProposalChanged(StoreError):
    """The records of a merge proposal changed since they were scored: nothing was merged; the message says what
    the new score is and what to do."""


@dataclass(frozen=True)
class DuplicateProposal:
    id: int  # the review item's id
    catalogue: str
    survivor: str
    duplicate: str
    score: float
    similarity: dict[str, float | None]
    keep: dict[str, dict[str, Any]]  # field -> {value, source, reason}
    blocked_by: tuple[str, ...]
    status: str
    run_id: str | None
    merge_run: str | None
    decided_by: str | None
    decided_at: datetime | None
    at: datetime


@dataclass
class FindResult:
    change_set: str
    proposed: int = 0
    already_proposed: int = 0
    skipped_rejected: int = 0
    records: int = 0
    already_applied: bool = False

    def summary(self) -> str:
        if self.already_applied:
            return f"change set {self.change_set} was already written: nothing new"
        return (f"{self.records} records compared: {self.proposed} new merge proposal(s) queued for review, "
                f"{self.already_proposed} already waiting")


def _reason(survivor: str, score: float, blocked_by) -> str:
    return f"duplicate of {survivor} (score {score:g}; paired by {', '.join(blocked_by)})"


class Duplicates:
    """Merge proposals of every catalogue in the store."""

    def __init__(self, store: CatalogueStore):
        self.store = store
        self.t = store.t["duplicates"]
        self.p = store.t["proposals"]

    def config(self, catalogue: str) -> DedupeConfig:
        return DedupeConfig.from_catalogue(self.store.catalogue(catalogue))

    # ------------------------------------------------------------------ reading
    def list(self, catalogue: str | None = None, status: str | None = "open") -> list[DuplicateProposal]:
        if status is not None and status not in STATUSES:
            raise StoreError(f"unknown duplicates status {status!r}; statuses are: {', '.join(STATUSES)}")
        query = self._query()
        if catalogue:
            self.store.catalogue(catalogue)
            query = query.where(self.t.c.catalogue == catalogue)
        with self.store.engine.connect() as conn:
            found = [self._proposal(r) for r in conn.execute(query)]
        return [p for p in found if status is None or p.status == status]

    def get(self, proposal: int) -> DuplicateProposal:
        with self.store.engine.connect() as conn:
            row = conn.execute(self._query().where(self.t.c.proposal == proposal)).first()
        if row is None:
            raise StoreError(f"no merge proposal {proposal}; `claro duplicates list` shows the open ones")
        return self._proposal(row)

    def _query(self) -> sa.Select:
        # The review item's status too: a rollback of the dedupe run withdraws its open items (rollback.py); and
        # whether the merge's run was rolled back by `claro rollback --run merge-...` rather than `unmerge`.
        cs = self.store.t["change_sets"]
        undone = sa.exists().where(cs.c.run_id == sa.literal(rollback_run_id("")) + self.t.c.merge_run)
        return (sa.select(self.t, self.p.c.status.label("item_status"), undone.label("undone"))
                .select_from(self.t.outerjoin(self.p, self.p.c.id == self.t.c.proposal)).order_by(self.t.c.proposal))

    @staticmethod
    def _proposal(r) -> DuplicateProposal:
        details = loads(r.details) or {}
        status = ("withdrawn" if r.status == "open" and r.item_status not in OPEN
                  else "rolled_back" if r.status == "merged" and r.undone else r.status)
        return DuplicateProposal(r.proposal, r.catalogue, r.survivor, r.duplicate, r.score,
                                 details.get("similarity", {}), details.get("keep", {}),
                                 tuple(details.get("blocked_by", ())), status, r.run_id, r.merge_run, r.decided_by,
                                 aware(r.decided_at), aware(r.at))

    def _pairs(self, conn, catalogue: str, statuses) -> set[frozenset[str]]:
        rows = conn.execute(self._query().where(self.t.c.catalogue == catalogue,
                                                self.t.c.status.in_(list(statuses))))
        return {frozenset((p.survivor, p.duplicate)) for p in map(self._proposal, rows) if p.status in statuses}

    def merged_records(self, catalogue: str, conn=None) -> set[str]:
        """Records merged into another (and not unmerged): never proposed again."""
        query = self._query().where(self.t.c.catalogue == catalogue, self.t.c.status == "merged")
        if conn is not None:
            return {p.duplicate for p in map(self._proposal, conn.execute(query)) if p.status == "merged"}
        with self.store.engine.connect() as c:
            return {p.duplicate for p in map(self._proposal, c.execute(query)) if p.status == "merged"}

    # ------------------------------------------------------------------ finding
    def find(self, catalogue: str, *, run_id: str, filter: str | None = None) -> FindResult:
        """Score the catalogue's records (optionally those matching `filter`) and queue new merge proposals."""
        store = self.store
        config = self.config(catalogue)
        frame = store.records(catalogue, filter=filter)
        change_set = f"{OPERATION}:{catalogue}:{run_id}"
        result = FindResult(change_set, records=len(frame))
        with store.engine.connect() as conn:
            merged = self.merged_records(catalogue, conn)
            rejected = self._pairs(conn, catalogue, ["rejected"])
        if merged:
            frame = frame[~frame[config.key].astype(str).isin(merged)]
        # Scored outside the write transaction (seconds on a large catalogue: other writers are not held up);
        # decisions made meanwhile are read again inside it.
        proposals = find_duplicates(frame, config, exclude=rejected)
        with store.writer.transaction() as tx:
            conn = tx.conn
            merged = self.merged_records(catalogue, conn)
            decided = self._pairs(conn, catalogue, ["rejected", "open"])
            new = [p for p in proposals if frozenset((p.survivor, p.duplicate)) not in decided
                   and not {p.survivor, p.duplicate} & merged]
            result.already_proposed = len(proposals) - len(new)
            opened = tx.open(ChangeSet(change_set, catalogue, OPERATION, run_id=run_id))
            if opened is None:
                result.already_applied = True
                return result
            rows = store.reader.fetch_rows(conn, catalogue, {k for p in new for k in (p.survivor, p.duplicate)})
            stamp = now()
            for p in new:
                self._queue(tx, opened, p, rows, run_id, stamp)
            opened.result.queued = result.proposed = len(new)
            opened.finish()
        return result

    def _queue(self, tx, opened, p, rows, run_id: str, stamp) -> None:
        catalogue = opened.catalogue
        reason = _reason(p.survivor, p.score, p.blocked_by)
        reviewers = self.store.spec.reviewers_for(catalogue, MERGE_FIELD, p.score, None) or []
        pid = tx.conn.execute(self.p.insert().values(
            change_set=opened.cs.id, catalogue=catalogue, record=p.duplicate, field=MERGE_FIELD, old=None,
            new=dumps(p.survivor), confidence=p.score, reason=reason, citation=None, operation=OPERATION,
            source=None, run_id=run_id, model=None, reviewers=",".join(reviewers) or None, status="queued",
            at=stamp)).inserted_primary_key[0]
        tx.conn.execute(self.t.insert().values(
            proposal=pid, catalogue=catalogue, survivor=p.survivor, duplicate=p.duplicate, score=p.score,
            details=dumps(_details(p.similarity, p.keep, p.blocked_by)), survivor_hash=rows[p.survivor]["_hash"],
            duplicate_hash=rows[p.duplicate]["_hash"], status="open", run_id=run_id, at=stamp))
        opened.event("change.queued_for_review", record=p.duplicate, field=MERGE_FIELD, proposal=pid, payload={
            "record": p.duplicate, "field": MERGE_FIELD, "old": None, "new": p.survivor, "confidence": p.score,
            "reason": reason, "operation": OPERATION, "source": None, "run_id": run_id, "reviewers": reviewers,
            "by": None, "gate_reason": None})

    # ------------------------------------------------------------------ deciding
    def _open(self, proposal: int) -> DuplicateProposal:
        found = self.get(proposal)
        if found.status != "open":
            raise StoreError(f"merge proposal {proposal} is {found.status}, not open; `claro duplicates list` "
                             "shows the open ones")
        return found

    def merge(self, proposal: int, *, by: str, note: str | None = None) -> ApplyResult:
        """Merge the duplicate into the survivor (see the module docstring). Raises ProposalChanged, merging
        nothing, when either record changed since the pair was scored."""
        found = self._open(proposal)
        store, catalogue = self.store, found.catalogue
        config = self.config(catalogue)
        spec = store.catalogue(catalogue).dedupe
        merge_run = f"merge-{proposal}-{uuid.uuid4().hex[:8]}"
        problem: StoreError | None = None
        with store.writer.transaction() as tx:
            conn = tx.conn
            rows = store.reader.fetch_rows(conn, catalogue, [found.survivor, found.duplicate])
            gone = [k for k in (found.survivor, found.duplicate) if k not in rows]
            merged = self.merged_records(catalogue, conn) & {found.survivor, found.duplicate}
            stored = conn.execute(sa.select(self.t.c.survivor_hash, self.t.c.duplicate_hash)
                                  .where(self.t.c.proposal == proposal)).one()
            if gone or merged:
                why = (f"record(s) {', '.join(gone)} no longer exist" if gone
                       else f"record(s) {', '.join(sorted(merged))} were merged into another record since")
                self._close(tx, found, "withdrawn", by=by, note=f"withdrawn: {why}")
                problem = StoreError(f"merge proposal {proposal} withdrawn: {why}; nothing was merged")
            elif (rows[found.survivor]["_hash"], rows[found.duplicate]["_hash"]) != tuple(stored):
                problem = self._rescore(tx, found, rows, config, by)
            else:
                attrs = store.catalogue(catalogue).attributes
                current = {k: {a: rows[k][a] for a in attrs} for k in rows}
                keep = plan_fields(current[found.survivor], current[found.duplicate], config,
                                   [a for a in attrs if a != config.key])
                result = self._write_merge(tx, found, keep, spec, merge_run, by)
                tx.decide(proposal, "approved", by=by, note=note)
                conn.execute(self.t.update().where(self.t.c.proposal == proposal).values(
                    status="merged", merge_run=merge_run, decided_by=by, decided_at=now()))
        if problem is not None:
            raise problem
        return result

    def _write_merge(self, tx, found: DuplicateProposal, keep: dict[str, KeptValue], spec, merge_run: str,
                     by: str) -> ApplyResult:
        store, catalogue = self.store, found.catalogue
        survivor, duplicate = found.survivor, found.duplicate
        changes: dict[str, list[Change]] = defaultdict(list)
        for f, kept in keep.items():
            if kept.source != survivor:
                changes[catalogue].append(Change(survivor, f, kept.value, found.score, kept.reason,
                                                 citation=f"{catalogue}/{duplicate}"))
        if spec is not None and spec.retire_attribute:
            changes[catalogue].append(Change(duplicate, spec.retire_attribute, spec.retire_value, 100.0,
                                             f"merged into {survivor}"))
        for name in store.spec.catalogues:
            table = store.rec[name]
            key_col = table.c[store.catalogue(name).key]
            for attr_name, attr in store.catalogue(name).attributes.items():
                if attr.type != "reference" or attr.target != catalogue:
                    continue
                for ref in tx.conn.execute(sa.select(key_col).where(table.c[attr_name] == duplicate)).scalars():
                    changes[name].append(Change(ref, attr_name, survivor, 100.0,
                                                f"{catalogue} {duplicate} merged into {survivor}"))
        total = ApplyResult(f"merge:{found.id}:{merge_run}")
        prov = ValueProvenance(OPERATION, merge_run, f"merge of {duplicate}", None, by, found.score)
        for name in [catalogue, *sorted(c for c in changes if c != catalogue)]:
            cs_id = total.change_set if name == catalogue else f"{total.change_set}:{name}"
            opened = tx.open(ChangeSet(cs_id, name, OPERATION, run_id=merge_run, reviewer=by))
            opened.write(changes.get(name, []), kind="merge", decide=lambda _c, _a: "applied",
                         provenance_of=lambda c, p=prov: p if c.record == survivor else
                         ValueProvenance(OPERATION, merge_run, f"merge of {duplicate}", None, by, 100.0),
                         proposal_of=lambda _c: found.id, event_type="change.approved")
            r = opened.finish()
            total.applied += r.applied
            total.unchanged += r.unchanged
        return total

    def _rescore(self, tx, found: DuplicateProposal, rows, config: DedupeConfig, by: str) -> StoreError:
        """Score the pair again on the records as they are now; update or withdraw the proposal. The error to
        raise after the transaction commits (nothing is merged)."""
        attrs = self.store.catalogue(found.catalogue).attributes
        current = {k: {a: rows[k][a] for a in attrs} for k in rows}
        score, similarity = compare(current[found.survivor], current[found.duplicate], config)
        keep = plan_fields(current[found.survivor], current[found.duplicate], config,
                           [a for a in attrs if a != config.key])
        conn = tx.conn
        conn.execute(self.t.update().where(self.t.c.proposal == found.id).values(
            score=score, details=dumps(_details(similarity, keep, found.blocked_by)),
            survivor_hash=rows[found.survivor]["_hash"], duplicate_hash=rows[found.duplicate]["_hash"]))
        conn.execute(self.p.update().where(self.p.c.id == found.id).values(
            confidence=score, reason=_reason(found.survivor, score, found.blocked_by)))
        changed = f"{found.survivor} or {found.duplicate} changed since the pair was scored ({found.score:g})"
        if score < config.threshold:
            self._close(tx, found, "withdrawn", by=by,
                        note=f"withdrawn: {changed}; it now scores {score:g}, below the threshold {config.threshold:g}")
            return ProposalChanged(f"merge proposal {found.id} withdrawn, nothing merged: {changed}; it now scores "
                                   f"{score:g}, below the threshold {config.threshold:g}")
        return ProposalChanged(f"nothing merged: {changed}; scored again: {score:g}. Look at it again "
                               f"(`claro duplicates show {found.id}`) and merge or reject it")

    def _close(self, tx, found: DuplicateProposal, status: str, *, by: str, note: str | None) -> None:
        """Decide the review item (rejected or withdrawn) with its change.rejected event, in a review change set of
        the proposing run, and record the decision on the pair."""
        opened = tx.open(ChangeSet(f"review:{uuid.uuid4().hex[:16]}", found.catalogue, "review",
                                   run_id=found.run_id, reviewer=by))
        opened.event("change.rejected", record=found.duplicate, field=MERGE_FIELD, proposal=found.id, payload={
            "record": found.duplicate, "field": MERGE_FIELD, "old": None, "new": found.survivor,
            "confidence": found.score, "operation": OPERATION, "run_id": found.run_id, "by": by, "note": note})
        opened.result.rejected = 1
        opened.finish()
        tx.decide(found.id, status, by=by, note=note)
        tx.conn.execute(self.t.update().where(self.t.c.proposal == found.id).values(
            status=status, decided_by=by, decided_at=now()))

    def reject(self, proposal: int, *, by: str, note: str | None = None) -> DuplicateProposal:
        """Not duplicates: the pair is stored as rejected and never proposed again."""
        found = self._open(proposal)
        with self.store.writer.transaction() as tx:
            self._close(tx, found, "rejected", by=by, note=note)
        return found

    def unmerge(self, proposal: int, *, by: str):
        """Roll back a merge: the survivor's filled fields, the duplicate's retire attribute and every repointed
        reference get their exact previous values (the store's rollback of the merge's run)."""
        found = self.get(proposal)
        if found.status != "merged" or not found.merge_run:
            raise StoreError(f"merge proposal {proposal} is {found.status}: only a merged proposal can be unmerged")
        try:
            result = self.store.rollback(found.merge_run, by=by)
        except NothingToRollBack as exc:
            if exc.conflicts:  # values written again since the merge: say which, change nothing
                raise
            result = None  # the merge changed no value (nothing to fill, retire or repoint): only the mark goes
        with self.store.engine.begin() as conn:
            conn.execute(self.t.update().where(self.t.c.proposal == proposal).values(
                status="rolled_back", decided_by=by, decided_at=now()))
        return result

    # ------------------------------------------------------------------ the review queue's entry point
    @staticmethod
    def is_merge_item(item) -> bool:
        """A review item that is a merge proposal (approving it merges, rejecting it rejects the pair)."""
        return item.operation == OPERATION and item.field == MERGE_FIELD


def _details(similarity, keep, blocked_by) -> dict[str, Any]:
    """The JSON of a proposal's details (column names from the store are str subclasses; JSON wants str)."""
    def plain(value: Any) -> Any:
        return value.item() if hasattr(value, "item") else value

    return {"similarity": {str(f): plain(v) for f, v in similarity.items()}, "blocked_by": list(blocked_by),
            "keep": {str(f): {"value": plain(k.value), "source": k.source, "reason": k.reason}
                     if isinstance(k, KeptValue) else k for f, k in keep.items()}}
