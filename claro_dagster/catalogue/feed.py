"""What an external system reads: records a page at a time, and the change feed.

Record pages are keyed, never offset: a page is "the next `limit` records whose key sorts after the cursor's",
so records written, created or deleted while a client pages never make it skip or repeat a record that exists
from its first page to its last (a record created behind the cursor is seen on the next full read, or in the
change feed).

The change feed is the outbox (`claro_events`) read in id order: every applied change with its values
(`change.applied`, and `change.approved` for a value a reviewer or a merge applied: a field's old and new value;
a created record's values; a deleted record). A new record is one `created` change whichever path created it (the
writer writes one event per new record, see `writer.created_payload`), never updates from null. Its sequence is
the event id. On PostgreSQL an id is taken when a transaction inserts and becomes visible when it commits, so a
later id can be visible before an earlier one: the feed stops before a gap in the ids unless the event after
the gap is older than `gap_grace` (then the gap is a rolled-back transaction), so a receiver that resumes from
the `next` sequence never misses an event committed late. SQLite never leaves such gaps.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa

from claro_dagster.catalogue.changes import StoreError
from claro_dagster.catalogue.common import aware, loads, now
from claro_dagster.catalogue.filters import compile_filter
from claro_dagster.catalogue.reader import HistoryEntry, Provenance

MAX_PAGE = 1000
FEED_TYPES = ("change.applied", "change.approved")  # the events that apply a value


class BadCursor(StoreError):
    """A pagination cursor or a feed sequence the store cannot resume from; the message says why."""


@dataclass(frozen=True)
class RecordPage:
    records: list[dict[str, Any]]
    next_cursor: str | None  # None: this was the last page


@dataclass(frozen=True)
class FeedPage:
    changes: list[dict[str, Any]]
    next: int  # the sequence to ask for next (`since=`)
    last: int  # the newest sequence in the store when read


def encode_cursor(key: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"k": key})).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        data = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        key = data["k"]
        if not isinstance(key, str):
            raise TypeError
        return key
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise BadCursor(f"cursor {cursor!r} is not one this API handed out; start again without a cursor "
                        "and pass on the `next_cursor` of each page") from None


def check_catalogue(store: Any, catalogue: str) -> None:
    if catalogue not in store.spec.catalogues:
        raise LookupError(f"no catalogue {catalogue!r}; catalogues are: {', '.join(store.spec.catalogues)}")


def _plain(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def records_page(store: Any, catalogue: str, *, filter: str | None = None, columns: list[str] | None = None,
                 cursor: str | None = None, limit: int = 100) -> RecordPage:
    """One page of records in key order after `cursor`, matching `filter` (FilterError with its position when
    it does not parse), with `columns` (and the key) only."""
    check_catalogue(store, catalogue)
    if not 1 <= limit <= MAX_PAGE:
        raise StoreError(f"limit {limit} is out of range: give 1 to {MAX_PAGE}")
    cat = store.catalogue(catalogue)
    cols, wanted = store.reader.selection(catalogue, columns)
    key_col = cols[cat.key]
    query = sa.select(*[cols[c] for c in wanted]).order_by(key_col).limit(limit + 1)
    if filter:
        query = query.where(compile_filter(filter, cols))
    if cursor:
        query = query.where(key_col > decode_cursor(cursor))
    with store.engine.connect() as conn:
        rows = conn.execute(query).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    records = [{c: _plain(v) for c, v in zip(wanted, row, strict=True)} for row in rows]
    return RecordPage(records, encode_cursor(records[-1][cat.key]) if more else None)


def provenance_json(p: Provenance | None) -> dict[str, Any] | None:
    if p is None:
        return None
    return {"operation": p.operation, "change_set": p.change_set, "run_id": p.run_id, "source": p.source,
            "model": p.model, "reviewer": p.reviewer, "confidence": p.confidence, "at": p.at.isoformat(),
            "citation": p.citation}


def history_json(h: HistoryEntry) -> dict[str, Any]:
    return {"field": h.field, "old": _plain(h.old), "new": _plain(h.new), "kind": h.kind, "change_set": h.change_set,
            "provenance": provenance_json(h.provenance), "reason": h.reason,
            "at": h.at.isoformat() if h.at else None, "by": h.by, "proposal": h.proposal,
            "proposed_in": h.proposed_in}


def record_detail(store: Any, catalogue: str, key: str) -> dict[str, Any]:
    """One record: its values, each field's provenance (its last write) and its history, oldest first."""
    check_catalogue(store, catalogue)
    values = store.record(catalogue, key)
    if values is None:
        raise LookupError(f"no record {key!r} in {catalogue}")
    cat = store.catalogue(catalogue)
    return {"catalogue": catalogue, "key": key, "values": {a: _plain(v) for a, v in values.items()},
            "provenance": {a: provenance_json(store.provenance(catalogue, key, a))
                           for a in cat.attributes if values.get(a) is not None},
            "history": [history_json(h) for h in store.history(catalogue, key)]}


def last_sequence(store: Any) -> int:
    e = store.t["events"]
    with store.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.coalesce(sa.func.max(e.c.id), 0))).scalar_one()


def change_feed(store: Any, since: int, *, limit: int = 500, catalogue: str | None = None,
                gap_grace: timedelta = timedelta(seconds=120), at: datetime | None = None) -> FeedPage:
    """Applied changes after sequence `since`, in order (see the module's docstring for gaps)."""
    if catalogue is not None:
        check_catalogue(store, catalogue)
    if not 1 <= limit <= MAX_PAGE:
        raise StoreError(f"limit {limit} is out of range: give 1 to {MAX_PAGE}")
    if since < 0:
        raise BadCursor(f"since={since} is negative: start from 0 (the beginning) or a `next` the feed gave")
    last = last_sequence(store)
    if since > last:
        raise BadCursor(f"since={since} is ahead of the newest change (sequence {last}): this cursor was not "
                        "handed out by this catalogue store. Resume from a `next` the feed gave, or from 0.")
    at = at or now()
    e = store.t["events"]
    query = sa.select(e).where(e.c.id > since).order_by(e.c.id).limit(limit)
    changes = []
    expected = since
    with store.engine.connect() as conn:
        rows = conn.execute(query).fetchall()
    kept = []
    for r in rows:
        if r.id != expected + 1 and aware(r.at) > at - gap_grace:
            break  # an earlier id may still commit (PostgreSQL): stop here, the receiver resumes from `expected`
        expected = r.id
        if r.type in FEED_TYPES and (catalogue is None or r.catalogue == catalogue):
            kept.append(r)
    created = _values_as_created(store, [r for r in kept if (loads(r.payload) or {}).get("created")])
    for r in kept:
        payload = loads(r.payload) or {}
        change = {"sequence": r.id, "type": r.type, "catalogue": r.catalogue, "record": r.record,
                  "field": r.field, "change_set": r.change_set, "at": aware(r.at).isoformat()}
        if payload.get("created"):
            change["kind"] = "created"
            change["values"] = created.get(r.id)
        elif payload.get("deleted"):
            change["kind"] = "deleted"
        else:
            change["kind"] = "updated"
            change["old"], change["new"] = _plain(payload.get("old")), _plain(payload.get("new"))
        for name in ("operation", "source", "run_id", "confidence", "reason", "by"):
            if payload.get(name) is not None:
                change[name] = payload[name]
        changes.append(change)
    return FeedPage(changes, expected, last)


def _values_as_created(store: Any, events: list[Any]) -> dict[int, dict[str, Any] | None]:
    """The values each created record had when its `created` event was written, by event id: a value
    changed since is the `old` of its first later history row, else the value stored now. None for a record
    deleted since (its `deleted` change follows in the feed)."""
    out: dict[int, dict[str, Any] | None] = {}
    by_catalogue: dict[str, list[Any]] = {}
    for e in events:
        by_catalogue.setdefault(e.catalogue, []).append(e)
    h = store.t["history"]
    for name, group in by_catalogue.items():
        if name not in store.spec.catalogues:
            out.update({e.id: None for e in group})
            continue
        attributes = list(store.catalogue(name).attributes)
        keys = sorted({e.record for e in group})
        with store.engine.connect() as conn:
            rows = store.reader.fetch_rows(conn, name, keys)
            later: dict[str, list[Any]] = {}
            for chunk in (keys[i:i + 500] for i in range(0, len(keys), 500)):
                query = (sa.select(h.c.record, h.c.field, h.c.old, h.c.at).where(h.c.catalogue == name,
                                                                                 h.c.record.in_(chunk))
                         .order_by(h.c.id))
                for hr in conn.execute(query):
                    later.setdefault(hr.record, []).append(hr)
        for e in group:
            row = rows.get(e.record)
            if row is None:
                out[e.id] = None
                continue
            values = {a: _plain(row[a]) for a in attributes}
            seen: set[str] = set()
            for hr in later.get(e.record, []):
                if hr.field in values and hr.field not in seen and aware(hr.at) >= aware(e.at):
                    seen.add(hr.field)
                    values[hr.field] = _plain(loads(hr.old))
            out[e.id] = values
    return out
