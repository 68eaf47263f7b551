"""Channel state: what each sales channel (a destination such as Shopify) holds of each record.

One row per (destination, record): the channel's ids for it (product, variant, media), the hash of the
payload last pushed, the last status (`pushed`, `failed`, `archived`, `held`) and the error that came back.
A push compares the hash of what it would send with the stored one, so unchanged records send nothing; a
rejection lands on the record that caused it. The table lives beside the catalogue's own tables and is
created, like the webhook outbox's, when it is first used (`create_all` adds it to an existing store).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from claro_dagster.catalogue.common import now

metadata = sa.MetaData()
channel_state = sa.Table(
    "claro_channel_state", metadata,
    sa.Column("destination", sa.Text, primary_key=True),
    sa.Column("record", sa.Text, primary_key=True),
    sa.Column("group_key", sa.Text),  # the channel object the record belongs to (a Shopify product handle)
    sa.Column("remote_id", sa.Text),  # e.g. the Shopify product id
    sa.Column("remote_ids", sa.Text),  # JSON: variant and media ids
    sa.Column("hash", sa.Text),  # of the payload last pushed successfully
    sa.Column("payload", sa.Text),  # JSON of that payload: a dry run shows what changed field by field
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
STATUSES = ("pushed", "failed", "archived", "held")


class ChannelError(Exception):
    """A channel answer a push cannot go on with (refused credentials, the API down); the message says what to do."""


@dataclass
class ChannelRecord:
    destination: str
    record: str
    status: str
    group_key: str | None = None
    remote_id: str | None = None
    remote_ids: dict[str, Any] = field(default_factory=dict)
    hash: str | None = None
    error: str | None = None
    payload: dict[str, Any] | None = None


class ChannelState:
    """Read and write the channel state of one store's destinations."""

    def __init__(self, store: Any):
        self.engine: sa.Engine = store.engine
        metadata.create_all(self.engine)

    def get(self, destination: str, records: Iterable[str] | None = None) -> dict[str, ChannelRecord]:
        c = channel_state
        query = sa.select(c).where(c.c.destination == destination)
        if records is not None:
            query = query.where(c.c.record.in_(list(records)))
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return {row["record"]: ChannelRecord(row["destination"], row["record"], row["status"], row["group_key"],
                                             row["remote_id"], json.loads(row["remote_ids"] or "{}"), row["hash"],
                                             row["error"], json.loads(row["payload"]) if row["payload"] else None)
                for row in rows}

    def put(self, entries: Iterable[ChannelRecord]) -> int:
        """Insert or replace entries (one transaction); return how many were written."""
        c = channel_state
        rows = [{"destination": e.destination, "record": e.record, "group_key": e.group_key,
                 "remote_id": e.remote_id, "remote_ids": json.dumps(e.remote_ids, sort_keys=True), "hash": e.hash,
                 "status": e.status, "error": e.error, "updated_at": now(),
                 "payload": json.dumps(e.payload, sort_keys=True) if e.payload is not None else None}
                for e in entries]
        if not rows:
            return 0
        for row in rows:
            if row["status"] not in STATUSES:
                raise ValueError(f"channel status {row['status']!r} is not one of {', '.join(STATUSES)}")
        with self.engine.begin() as conn:
            for row in rows:
                key = (c.c.destination == row["destination"]) & (c.c.record == row["record"])
                if conn.execute(c.update().where(key).values(**row)).rowcount == 0:
                    conn.execute(c.insert().values(**row))
        return len(rows)

    def counts(self, destination: str) -> dict[str, int]:
        """How many records of the destination are in each status."""
        c = channel_state
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(c.c.status, sa.func.count()).where(c.c.destination == destination)
                                .group_by(c.c.status)).all()
        return {status: n for status, n in rows}

    def failures(self, destination: str) -> list[ChannelRecord]:
        return sorted((e for e in self.get(destination).values() if e.status in ("failed", "held")),
                      key=lambda e: e.record)


@dataclass
class PushPlan:
    """What a push does (or, dry, would do): channel objects (Shopify product handles, Amazon SKUs) by action,
    and records held back or refused with why."""

    create: list[str] = field(default_factory=list)
    update: list[str] = field(default_factory=list)
    archive: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # record key -> error (refused, held back)
    sent: int = 0  # calls that changed something on the channel
    changes: dict[str, list[str]] = field(default_factory=dict)  # object -> "field: old -> new" of an update

    def summary(self) -> str:
        return (f"{len(self.create)} to create, {len(self.update)} to update, {len(self.archive)} to archive, "
                f"{len(self.unchanged)} unchanged, {len(self.failed)} records failed")


def cursor_name(destination: str) -> str:
    """The store cursor of an outbound destination: the last change-set seq it has been sent."""
    return f"destination:{destination}"


@contextmanager
def records_to_push(store: Any, destination: str, dest: Any, *, filter: str | None = None, dry_run: bool = False,
                    group_by: str | None = None) -> Iterator[list[dict[str, Any]]]:
    """The records a push sends: those changed since the destination's cursor and those the channel refused or
    that were held back last time (sent again until accepted), within the destination's filter and `filter`.

    With `group_by`, every record of a touched group comes along (a channel object built from several records,
    such as a Shopify product and its variants, is sent whole). The cursor moves when the block ends without an
    error, and not for an ad-hoc `filter` or a dry run: a push that dies part way is resumed by the next one,
    which finds what already arrived unchanged in the channel state and sends only the rest.
    """
    where = " and ".join(f"({f})" for f in (dest.filter, filter) if f) or None
    since = int(store.get_cursor(cursor_name(destination), "0"))
    upto = store.last_seq(dest.catalogue)
    key = store.catalogue(dest.catalogue).key
    changed = store.changed_since(dest.catalogue, since, filter=where)
    retry = {e.record for e in ChannelState(store).failures(destination)}
    records: list[dict[str, Any]] = []
    if group_by is None:
        records = changed.to_dict("records")
        retry -= {text_value(r[key]) for r in records}
    if retry or (group_by is not None and len(changed)):
        by = group_by or key
        wanted = {text_value(v) for v in changed[by].tolist()} if len(changed) and group_by else set()
        # Reads the filtered catalogue once to find the retried records and the rest of each touched group;
        # a group-valued SQL filter would read less for very large catalogues.
        rows = store.records(dest.catalogue, filter=where).to_dict("records")
        wanted |= {text_value(r.get(by)) for r in rows if text_value(r.get(key)) in retry}
        records += [r for r in rows if text_value(r.get(by)) in wanted]
    yield records
    if not filter and not dry_run:
        store.set_cursor(cursor_name(destination), str(upto))


def payload_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any], *,
                    keyed: Mapping[str, tuple[str, str]] | None = None, ignore: Iterable[str] = ()) -> list[str]:
    """What differs between the payload last pushed and this one, field by field, as `name: old -> new`.

    `keyed` names list fields compared item by item: field -> (label, item key), e.g. Shopify's
    `{"variants": ("variant", "sku")}` gives `variant SKU-1 price: "4.50" -> "4.00"`. Fields in `ignore` are
    skipped (ids the channel assigned). Nothing is listed when there is no previous payload (a create)."""
    if old is None:
        return []
    keyed = keyed or {}
    out = []
    for name in sorted((set(old) | set(new)) - set(keyed) - set(ignore)):
        if old.get(name) != new.get(name):
            out.append(f"{name}: {json.dumps(old.get(name))} -> {json.dumps(new.get(name))}")
    for list_name, (label, item_key) in keyed.items():
        before = {v.get(item_key): v for v in old.get(list_name, [])}
        after = {v.get(item_key): v for v in new.get(list_name, [])}
        for item in sorted(set(before) | set(after), key=str):
            if item not in before or item not in after:
                out.append(f"{label} {item}: {'added' if item in after else 'removed'}")
                continue
            for name in sorted(set(before[item]) | set(after[item])):
                if before[item].get(name) != after[item].get(name):
                    out.append(f"{label} {item} {name}: {json.dumps(before[item].get(name))} -> "
                               f"{json.dumps(after[item].get(name))}")
    return out


def text_value(value: object) -> str | None:
    """A record's value as the text a channel is sent: None for missing, whole floats without `.0`."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
