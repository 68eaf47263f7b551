"""Webhook delivery state: the store's change-event outbox turned into deliveries, retries and a dead letter.

The catalogue writes every change event (`claro_events`) in the same transaction as the change
itself. This module keeps, in the same database, what each webhook subscription has received:

* `claro_webhook_cursors`: per subscription, the last event id already planned into a delivery.
* `claro_webhook_deliveries`: one row per HTTP message (one event, or a batch of events) with its
  Standard Webhooks `webhook-id`, its status and its retry schedule.

Planning (`WebhookOutbox.plan`) reads the events after a subscription's cursor, keeps the types
the subscription asked for, groups them by the subscription's mode, inserts the deliveries and
advances the cursor, all in one transaction guarded by a compare-and-set on the cursor, so two
planners never plan the same events twice and a crash before the commit leaves nothing behind.
The `webhook-id` is derived from (subscription, first event id, last event id, first event time):
planning the same events again yields the same id, which is what receivers deduplicate on. The
event time is part of it so that a database rebuilt from scratch, whose event ids start again at
1, never reuses an id a receiver has already seen for different events.

Modes: `per_change` = one event per delivery; `batched` = up to `max_batch` events per delivery,
and a partial batch waits until its oldest event is `max_wait_seconds` old; `scheduled` =
everything pending when planned (the sender plans it at the subscription's cron ticks), in
deliveries of at most `max_batch` events so one message never grows without bound.

Ordering: `due()` returns, per subscription, deliveries in event order starting at the oldest one
not yet delivered, and nothing of a subscription whose oldest undelivered delivery is waiting
for its next attempt. A later delivery is therefore never sent while an earlier one of the same
subscription is failing: receivers see each subscription's events in order, at the price of
head-of-line blocking while a receiver is down (it catches up as soon as the head succeeds).
A delivery that exhausts its attempts becomes `dead` (the dead-letter list) and stops blocking;
`retry()` makes it due again, with the same `webhook-id`.

A subscription seen for the first time starts at the beginning of the outbox (its backlog is
delivered); `seek()` moves its cursor, e.g. to the newest event so that only new events go out.

Several delivery processes may share one database: each pass claims the subscriptions it serves
(`claim`: `FOR UPDATE SKIP LOCKED` on PostgreSQL, an atomic conditional update on SQLite, with a
lease in `claro_webhook_cursors.claimed_by/claimed_until`), so a delivery is sent by one process
and a subscription's deliveries stay in order; the subscriptions are spread over the processes.

Bodies: once the outbox exists, the database renders each event's message as the event is written
(a trigger filling `claro_webhook_messages`), and a delivery's body is its messages joined in SQL;
events written before that (or whose payload the database cannot render) are rendered by the sender.

On PostgreSQL, event ids are allocated before their transaction commits, so a later id can
become visible before an earlier one. Planning stops at a gap in the ids unless the event after
the gap is older than `gap_grace_seconds` (then the gap is a rolled-back transaction), so an event
committed late is never skipped. SQLite never leaves such gaps.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa

from claro_dagster.catalogue.changes import StoreError
from claro_dagster.spec.models import WebhookSpec

log = logging.getLogger(__name__)

STATUSES: tuple[str, ...] = ("pending", "delivered", "failed", "dead")
_OPEN = ("pending", "failed")  # not delivered yet and still to be tried
_PAGE = 10_000  # event ids examined per page while planning
_ERROR_CHARS = 500


def _ts(name: str, **kw: Any) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), **kw)


metadata = sa.MetaData()

cursors = sa.Table(
    "claro_webhook_cursors", metadata,
    sa.Column("subscription", sa.Text, primary_key=True),
    sa.Column("last_event_id", sa.Integer, nullable=False),
    _ts("planned_at"),  # when the subscription was last planned (scheduled mode plans at cron ticks)
    # The delivery process serving the subscription now, and until when (see `WebhookOutbox.claim`).
    sa.Column("claimed_by", sa.Text),
    _ts("claimed_until"),
)

deliveries = sa.Table(
    "claro_webhook_deliveries", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("subscription", sa.Text, nullable=False),
    sa.Column("webhook_id", sa.Text, nullable=False, unique=True),
    sa.Column("event_ids", sa.Text, nullable=False),  # JSON list of claro_events ids, ascending
    sa.Column("status", sa.Text, nullable=False),  # pending | delivered | failed | dead
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    _ts("next_attempt_at"),
    sa.Column("last_status_code", sa.Integer),
    sa.Column("last_error", sa.Text),
    _ts("created_at", nullable=False),
    _ts("delivered_at"),
    sa.Index("ix_claro_webhook_deliveries_queue", "subscription", "status", "id"),
)


# Each event's webhook message (the single-event JSON body), rendered by the database as the event is
# written (see `WebhookOutbox._install_renderer`), so sending reads finished bodies instead of
# rendering every event again in Python: the delivery loop then costs little more than the POSTs.
messages = sa.Table(
    "claro_webhook_messages", metadata,
    sa.Column("event_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("message", sa.Text, nullable=False),
)

RENDERER = "claro_webhook_message"  # the trigger (and on PostgreSQL its function)

# SQLite: the JSON1 functions render the same object `build_payload` does: the payload's keys, then the
# event's own (json_set overwrites a key in place, as dict.update does). Timestamps are stored as
# 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC. Payloads are the writer's JSON objects (`dumps` of a dict); one
# that is not an object gets no message (the sender renders it). The check is on the first character:
# validating the JSON as well about doubled what the trigger costs a write (measured on 100,000 events).
_SQLITE_RENDERER = f"""
CREATE TRIGGER IF NOT EXISTS {RENDERER} AFTER INSERT ON claro_events
WHEN NEW.payload IS NULL OR substr(NEW.payload, 1, 1) = '{{'
BEGIN
  INSERT OR REPLACE INTO claro_webhook_messages (event_id, message) VALUES (NEW.id,
    '{{"type":' || json_quote(NEW.type) || ',"timestamp":"' || replace(NEW.at, ' ', 'T') || 'Z","data":'
    || json_set(coalesce(NEW.payload, '{{}}'), '$.event_id', NEW.id, '$.catalogue', NEW.catalogue,
                '$.record', NEW.record, '$.field', NEW.field, '$.change_set', NEW.change_set,
                '$.proposal', NEW.proposal) || '}}');
END
"""

# PostgreSQL: one statement-level trigger renders every row an INSERT (or COPY) wrote, set-based. jsonb
# orders keys its own way: the same object, other bytes, rendered once and sent as stored. A payload
# jsonb refuses (e.g. a NUL character in a string) leaves the whole statement to the sender's renderer.
_POSTGRES_RENDERER = [f"""
CREATE OR REPLACE FUNCTION {RENDERER}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  BEGIN
    INSERT INTO claro_webhook_messages (event_id, message)
    SELECT n.id, json_build_object(
      'type', n.type,
      'timestamp', to_char(n.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
      'data', coalesce(n.payload, '{{}}')::jsonb || jsonb_build_object(
        'event_id', n.id, 'catalogue', n.catalogue, 'record', n.record, 'field', n.field,
        'change_set', n.change_set, 'proposal', n.proposal))::text
    FROM claro_new_events n
    WHERE n.payload IS NULL OR left(ltrim(n.payload), 1) = '{{'
    ON CONFLICT (event_id) DO UPDATE SET message = EXCLUDED.message;
  EXCEPTION WHEN others THEN
    NULL;
  END;
  RETURN NULL;
END $$
""", f"DROP TRIGGER IF EXISTS {RENDERER} ON claro_events", f"""
CREATE TRIGGER {RENDERER} AFTER INSERT ON claro_events REFERENCING NEW TABLE AS claro_new_events
FOR EACH STATEMENT EXECUTE FUNCTION {RENDERER}()
"""]


class OutboxError(StoreError):
    """A webhook-outbox request that cannot be done (unknown delivery, nothing to retry, ...)."""


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed delivery is tried again, and when it is given up (dead-lettered).

    After the n-th failed attempt the next one is `schedule[n-1]` seconds later (the last entry
    repeats), spread by +/- `jitter` so receivers coming back up are not hit by every sender at
    once. After `max_attempts` failed attempts the delivery is dead. The default schedule spans
    about 2.9 days: 30 s, 2 min, 10 min, 1 h, 3 h, 6 h, 12 h, 24 h, 24 h.
    """

    max_attempts: int = 10
    schedule: tuple[float, ...] = (30, 120, 600, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 24 * 3600, 24 * 3600)
    jitter: float = 0.2

    def delay(self, attempts: int, rng: random.Random | None = None) -> float:
        """Seconds until the next attempt after `attempts` failed ones."""
        base = self.schedule[min(max(attempts, 1), len(self.schedule)) - 1]
        return base * (rng or random).uniform(1 - self.jitter, 1 + self.jitter)


@dataclass(frozen=True)
class Delivery:
    """One webhook message: the events it carries and where it stands."""

    id: int
    subscription: str
    webhook_id: str
    event_ids: tuple[int, ...]
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None

    @property
    def first_event_id(self) -> int:
        return self.event_ids[0]

    @property
    def last_event_id(self) -> int:
        return self.event_ids[-1]


def webhook_id(subscription: str, first_event_id: int, last_event_id: int, first_event_at: datetime) -> str:
    """The stable `webhook-id` of the delivery carrying events first..last of a subscription."""
    at = _aware(first_event_at).astimezone(UTC).isoformat()
    digest = hashlib.sha256(f"{subscription}\x1f{first_event_id}\x1f{last_event_id}\x1f{at}".encode()).hexdigest()
    return f"msg_{digest[:32]}"


def event_matches(event_type: str, patterns: Sequence[str]) -> bool:
    """Whether a subscription listing `patterns` wants this event type (`*` wildcards allowed)."""
    return any(p == event_type or fnmatch.fnmatchcase(event_type, p) for p in patterns)


class WebhookOutbox:
    """Delivery state of every webhook subscription, in the catalogue store's database."""

    def __init__(self, store: Any, *, gap_grace_seconds: float = 120.0, rng: random.Random | None = None):
        self.store = store
        self.engine: sa.Engine = store.engine
        self.events_table: sa.Table = store.t["events"]
        self.gap_grace = timedelta(seconds=gap_grace_seconds)
        self.rng = rng or random.Random()
        e = self.events_table
        self._event_columns = sa.select(e.c.id, e.c.type, e.c.catalogue, e.c.record, e.c.field, e.c.change_set,
                                        e.c.proposal, e.c.payload, _raw(e.c.at))
        self._range_query = self._event_columns.where(
            e.c.id.between(sa.bindparam("first"), sa.bindparam("last"))).order_by(e.c.id)
        m, in_range = messages, messages.c.event_id.between(sa.bindparam("first"), sa.bindparam("last"))
        if self.engine.dialect.name == "postgresql":
            self._rendered_range = sa.select(sa.func.count(), _utf8(sa.func.string_agg(
                m.c.message, sa.literal_column("',' ORDER BY event_id")), postgres=True)).where(in_range)
        else:  # SQLite 3.40 has no ORDER BY inside group_concat: it joins in the order the subquery yields
            inner = sa.select(m.c.message).where(in_range).order_by(m.c.event_id).subquery()
            self._rendered_range = sa.select(sa.func.count(), _utf8(sa.func.group_concat(inner.c.message, ","),
                                                                    postgres=False))
        metadata.create_all(self.engine)
        self._add_missing_columns()
        spec = getattr(store, "spec", None)
        self._install_renderer(bool(spec is None or spec.notifications.webhooks))

    def _add_missing_columns(self) -> None:
        """Bring outbox tables created by an earlier version up to date (columns are only ever added)."""
        present = {c["name"] for c in sa.inspect(self.engine).get_columns(cursors.name)}
        missing = [c for c in cursors.columns if c.name not in present]
        if not missing:
            return
        quote = self.engine.dialect.identifier_preparer.quote
        for column in missing:
            kind = column.type.compile(dialect=self.engine.dialect)
            try:
                with self.engine.begin() as conn:
                    conn.execute(sa.text(f"ALTER TABLE {quote(cursors.name)} ADD COLUMN {quote(column.name)} {kind}"))
            except sa.exc.DBAPIError:  # pragma: no cover - another process added it at the same moment
                pass

    def _install_renderer(self, wanted: bool) -> None:
        """Have the database render each event's webhook message as the event is written (once per database),
        while the spec has webhook subscriptions: without any, the trigger is removed, so writes cost nothing
        extra (the daily retention job opens the outbox of every project).

        Events written before (or whose payload the database cannot render) have no message; the sender
        renders those itself, to the same JSON."""
        dialect = self.engine.dialect.name
        if dialect not in ("sqlite", "postgresql"):
            return
        with self.engine.connect() as conn:
            if dialect == "sqlite":
                present = conn.execute(sa.text("SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = :n"),
                                       {"n": RENDERER}).first()
            else:
                present = conn.execute(sa.text(
                    "SELECT 1 FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                    "WHERE t.tgname = :n AND c.oid = to_regclass('claro_events')"), {"n": RENDERER}).first()
        if not wanted:
            if present:
                with self.engine.begin() as conn:
                    conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {RENDERER}"
                                         + (" ON claro_events" if dialect == "postgresql" else ""))
            return
        if present:
            return
        try:
            with self.engine.begin() as conn:
                if dialect == "sqlite":
                    conn.exec_driver_sql(_SQLITE_RENDERER)
                else:
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(7243150518)"))  # one installer at a time
                    for statement in _POSTGRES_RENDERER:
                        conn.exec_driver_sql(statement)
        except sa.exc.DBAPIError as exc:  # e.g. no right to create triggers: the sender renders every message
            log.warning("webhook messages are rendered while sending (the database refused the trigger: %s)",
                        str(exc).splitlines()[0])

    # ------------------------------------------------------------------ cursors
    def cursor(self, subscription: str) -> int:
        """The last event id planned for a subscription (0 before its first plan)."""
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(cursors.c.last_event_id)
                                 .where(cursors.c.subscription == subscription)).scalar()
        return value or 0

    def planned_at(self, subscription: str) -> datetime | None:
        """When the subscription was last planned; None if never."""
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(cursors.c.planned_at)
                                 .where(cursors.c.subscription == subscription)).scalar()
        return _aware(value)

    def touch(self, subscription: str, now: datetime) -> datetime:
        """Register a subscription (cursor 0, planned now) if it is new; return when it was last planned."""
        self._ensure_cursor(subscription, now)
        return self.planned_at(subscription) or now

    def seek(self, subscription: str, last_event_id: int | None = None) -> int:
        """Move a subscription's cursor (default: to the newest event, so only new events are sent)."""
        if last_event_id is None:
            with self.engine.connect() as conn:
                last_event_id = conn.execute(sa.select(sa.func.coalesce(sa.func.max(self.events_table.c.id), 0))
                                             ).scalar_one()
        self._ensure_cursor(subscription, None)
        with self.engine.begin() as conn:
            conn.execute(cursors.update().where(cursors.c.subscription == subscription)
                         .values(last_event_id=last_event_id))
        return last_event_id

    def _ensure_cursor(self, subscription: str, now: datetime | None) -> None:
        with self.engine.connect() as conn:
            exists = conn.execute(sa.select(cursors.c.subscription)
                                  .where(cursors.c.subscription == subscription)).first()
        if exists:
            return
        try:
            with self.engine.begin() as conn:
                conn.execute(cursors.insert().values(subscription=subscription, last_event_id=0, planned_at=now))
        except sa.exc.IntegrityError:
            pass  # another planner registered it first: same row, nothing to do

    # ------------------------------------------------------------------ claims (several delivery processes)
    def waiting(self, subscriptions: Iterable[str], now: datetime) -> dict[str, tuple[bool, bool]]:
        """Per subscription: (events after its cursor, a delivery due now). Read-only, so an idle
        delivery process polls without writing."""
        names = list(subscriptions)
        if not names:
            return {}
        now = _aware(now)
        d = deliveries
        with self.engine.connect() as conn:
            newest = conn.execute(sa.select(sa.func.coalesce(sa.func.max(self.events_table.c.id), 0))).scalar_one()
            planned = dict(conn.execute(sa.select(cursors.c.subscription, cursors.c.last_event_id)
                                        .where(cursors.c.subscription.in_(names))).all())
            due = set(conn.execute(sa.select(d.c.subscription).where(
                d.c.subscription.in_(names), d.c.status.in_(_OPEN),
                sa.or_(d.c.next_attempt_at.is_(None), d.c.next_attempt_at <= now)).distinct()).scalars())
        return {n: (newest > planned.get(n, 0), n in due) for n in names}

    def claim(self, subscriptions: Iterable[str], owner: str, now: datetime, lease_seconds: float, *,
              gone: Iterable[str] = ()) -> list[str]:
        """Claim the subscriptions no other delivery process is serving, for `lease_seconds`; return
        those `owner` now holds.

        The claim is per subscription, not per delivery, because a subscription's deliveries must
        reach its receiver in order: one process at a time sends them, and several processes share
        the subscriptions between them. PostgreSQL locks the free cursor rows `FOR UPDATE SKIP
        LOCKED` (a process never waits for another's claim, it takes what is free); SQLite has one
        writer at a time, so the conditional update below is atomic there. A process that dies
        keeps its claim until the lease runs out; then another takes the subscription over.
        `gone` names owners known to have ended (a dead process on this host): their claims are free.
        """
        names = list(dict.fromkeys(subscriptions))
        if not names:
            return []
        now = _aware(now)
        for name in names:
            self._ensure_cursor(name, None)
        c = cursors
        free = sa.or_(c.c.claimed_by.is_(None), c.c.claimed_by.in_([owner, *gone]), c.c.claimed_until.is_(None),
                      c.c.claimed_until < now)
        with self.engine.begin() as conn:
            if self.engine.dialect.name == "postgresql":
                names = list(conn.execute(sa.select(c.c.subscription).where(c.c.subscription.in_(names), free)
                                          .with_for_update(skip_locked=True)).scalars())
                if not names:
                    return []
            conn.execute(c.update().where(c.c.subscription.in_(names), free).values(
                claimed_by=owner, claimed_until=now + timedelta(seconds=lease_seconds)))
            return sorted(conn.execute(sa.select(c.c.subscription).where(c.c.subscription.in_(names),
                                                                         c.c.claimed_by == owner)).scalars())

    def renew(self, subscription: str, owner: str, now: datetime, lease_seconds: float) -> bool:
        """Extend `owner`'s claim on a subscription; False if it no longer holds it (its lease ran out
        and another process took the subscription over): it must stop sending."""
        c = cursors
        with self.engine.begin() as conn:
            return conn.execute(c.update().where(c.c.subscription == subscription, c.c.claimed_by == owner).values(
                claimed_until=_aware(now) + timedelta(seconds=lease_seconds))).rowcount == 1

    def release(self, subscriptions: Iterable[str], owner: str) -> None:
        """Give up `owner`'s claims, so another process may serve the subscriptions at once."""
        names = list(subscriptions)
        if not names:
            return
        c = cursors
        with self.engine.begin() as conn:
            conn.execute(c.update().where(c.c.subscription.in_(names), c.c.claimed_by == owner)
                         .values(claimed_by=None, claimed_until=None))

    def claims(self) -> dict[str, tuple[str, datetime]]:
        """Subscription -> (process, until when) of the claims held now."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(cursors.c.subscription, cursors.c.claimed_by, cursors.c.claimed_until)
                                .where(cursors.c.claimed_by.is_not(None))).all()
        return {s: (by, _aware(until)) for s, by, until in rows}

    # ------------------------------------------------------------------ planning
    def plan(self, subscription_name: str, spec: WebhookSpec, now: datetime, *, limit: int = 1000) -> list[Delivery]:
        """Turn the subscription's new events into at most `limit` deliveries and advance its cursor.

        Returns the deliveries created by this call (none if another planner got there first).
        """
        now = _aware(now)
        self._ensure_cursor(subscription_name, None)
        size = 1 if spec.mode == "per_change" else max(1, spec.max_batch)
        wanted = limit * size
        e = self.events_table
        with self.engine.begin() as conn:
            start = conn.execute(sa.select(cursors.c.last_event_id)
                                 .where(cursors.c.subscription == subscription_name)).scalar_one()
            ids, scanned, complete = self._scan(conn, start, spec.events, wanted, now)
            bounds = [(i, min(i + size, len(ids))) for i in range(0, len(ids), size)]  # [start, end) of each
            # The time of each delivery's first event (part of its webhook-id), read for those events only.
            firsts = [ids[a] for a, _ in bounds]
            times: dict[int, datetime] = {}
            for chunk in _chunks(firsts):
                times.update((i, stored_time(at)) for i, at in conn.execute(
                    sa.select(e.c.id, _raw(e.c.at)).where(e.c.id.in_(chunk))))
            cursor = scanned
            if bounds and bounds[-1][1] - bounds[-1][0] < size and spec.mode == "batched":
                oldest = times[ids[bounds[-1][0]]]
                if not complete or now - oldest < timedelta(seconds=spec.max_wait_seconds):
                    cursor = ids[bounds.pop()[0]] - 1  # the partial batch waits for more events
            if cursor == start:
                if spec.mode == "scheduled":  # the sender plans it once per cron tick: remember this one
                    conn.execute(cursors.update().where(cursors.c.subscription == subscription_name)
                                 .values(planned_at=now))
                return []
            advanced = conn.execute(cursors.update().where(cursors.c.subscription == subscription_name,
                                                           cursors.c.last_event_id == start)
                                    .values(last_event_id=cursor, planned_at=now)).rowcount
            if advanced != 1:
                return []  # another planner advanced the cursor first and planned these events
            carried = {webhook_id(subscription_name, ids[a], ids[b - 1], times[ids[a]]): tuple(ids[a:b])
                       for a, b in bounds}
            rows = [dict(subscription=subscription_name, webhook_id=w, event_ids=orjson.dumps(e).decode(),
                         status="pending", attempts=0, next_attempt_at=now, created_at=now)
                    for w, e in carried.items()]
            if not rows:
                return []
            seen = set()
            for chunk in _chunks([r["webhook_id"] for r in rows]):
                seen.update(conn.execute(sa.select(deliveries.c.webhook_id)
                                         .where(deliveries.c.webhook_id.in_(chunk))).scalars())
            rows = [r for r in rows if r["webhook_id"] not in seen]  # planned before (cursor moved back)
            if not rows:
                return []
            # The new ids come back with the insert: the deliveries are built from what was written, not read again.
            # (Asking for them in parameter order would make SQLAlchemy insert row by row.)
            new_ids = conn.execute(deliveries.insert().returning(deliveries.c.webhook_id, deliveries.c.id), rows).all()
        return sorted((Delivery(i, subscription_name, w, carried[w], "pending", 0, now, None, None, now, None)
                       for w, i in new_ids), key=lambda d: d.id)

    def _scan(self, conn: sa.Connection, start: int, patterns: Sequence[str], wanted: int, now: datetime
              ) -> tuple[list[int], int, bool]:
        """Ids of up to `wanted` events after `start` whose type matches, the last id scanned, and
        whether every event visible now was scanned.

        Works a page of ids at a time in SQL (count and max to find gaps, the distinct types to
        match the patterns, then the matching ids), so planning costs little per event. A page
        with a gap in its ids is walked row by row to stop at a gap that may still fill.
        """
        e = self.events_table
        ids: list[int] = []
        scanned = start
        wants: dict[str, bool] = {}

        def wanted_types(types: Iterable[str]) -> list[str]:
            for t in types:
                if t not in wants:
                    wants[t] = event_matches(t, patterns)
            return [t for t in types if wants[t]]

        while True:
            page = sa.select(e.c.id).where(e.c.id > scanned).order_by(e.c.id).limit(_PAGE).subquery()
            count, top = conn.execute(sa.select(sa.func.count(), sa.func.max(page.c.id))).one()
            if not count:
                return ids, scanned, True
            if top - scanned == count:  # no gap: let the database filter
                in_page = (e.c.id > scanned) & (e.c.id <= top)
                present = list(conn.execute(sa.select(e.c.type).where(in_page).distinct()).scalars())
                types = wanted_types(present)
                if len(types) == len(present):  # every event of the page is wanted: its ids are a range
                    ids.extend(range(scanned + 1, min(top, scanned + wanted - len(ids)) + 1))
                    if len(ids) >= wanted:
                        return ids, ids[-1], False
                elif types:
                    found = conn.execute(sa.select(e.c.id).where(in_page, e.c.type.in_(types)).order_by(e.c.id)
                                         .limit(wanted - len(ids))).scalars().all()
                    ids.extend(found)
                    if len(ids) >= wanted:
                        return ids, ids[-1], False
                scanned = top
            else:
                rows = conn.execute(sa.select(e.c.id, e.c.type, _raw(e.c.at)).where(e.c.id > scanned)
                                    .order_by(e.c.id).limit(_PAGE)).all()
                for event_id, event_type, at in rows:
                    if event_id != scanned + 1 and stored_time(at) > now - self.gap_grace:
                        return ids, scanned, True  # an earlier id may still commit: wait for it
                    scanned = event_id
                    if wanted_types([event_type]):
                        ids.append(event_id)
                        if len(ids) >= wanted:
                            return ids, scanned, False
            if count < _PAGE:
                return ids, scanned, True

    # ------------------------------------------------------------------ sending state
    def due(self, now: datetime, *, subscriptions: Iterable[str] | None = None, limit: int = 100) -> list[Delivery]:
        """Deliveries to send now: per subscription, in event order, at most `limit` each.

        A subscription whose oldest undelivered delivery is waiting for a retry contributes nothing.
        """
        now = _aware(now)
        d = deliveries
        out: list[Delivery] = []
        with self.engine.connect() as conn:
            if subscriptions is None:
                names = sorted(conn.execute(sa.select(d.c.subscription).where(d.c.status.in_(_OPEN))
                                            .distinct()).scalars())
            else:
                names = list(subscriptions)
            for name in names:
                rows = conn.execute(sa.select(d).where(d.c.subscription == name, d.c.status.in_(_OPEN))
                                    .order_by(d.c.id).limit(limit)).fetchall()
                for r in rows:
                    if r.next_attempt_at is not None and _aware(r.next_attempt_at) > now:
                        break
                    out.append(_delivery(r))
        return out

    def mark_delivered(self, delivery_id: int, status_code: int, now: datetime) -> None:
        """Record a 2xx answer: the delivery is done."""
        self.mark_delivered_many([(delivery_id, status_code)], now)

    def mark_delivered_many(self, answers: Sequence[tuple[int, int]], now: datetime) -> None:
        """Record several 2xx answers, (delivery id, status code) each, in one transaction."""
        if not answers:
            return
        d = deliveries
        by_code: dict[int, list[int]] = {}
        for delivery_id, code in answers:
            by_code.setdefault(code, []).append(delivery_id)
        with self.engine.begin() as conn:
            for code, ids in by_code.items():
                for chunk in _chunks(ids):
                    conn.execute(d.update().where(d.c.id.in_(chunk), d.c.status.in_(_OPEN)).values(
                        status="delivered", attempts=d.c.attempts + 1, last_status_code=code, last_error=None,
                        next_attempt_at=None, delivered_at=_aware(now)))

    def mark_failed(self, delivery_id: int, status_code: int | None, error: str, now: datetime,
                    policy: RetryPolicy | None = None) -> Delivery:
        """Record a failed attempt: schedule the next one, or dead-letter it after the last attempt."""
        policy = policy or RetryPolicy()
        now = _aware(now)
        d = deliveries
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(d.c.attempts, d.c.status).where(d.c.id == delivery_id)).first()
            if row is None:
                raise OutboxError(f"no webhook delivery {delivery_id}; `claro webhooks log` lists them")
            if row.status not in _OPEN:
                return self._get(conn, delivery_id)  # answered twice (e.g. two senders): keep the first
            attempts = row.attempts + 1
            dead = attempts >= policy.max_attempts
            conn.execute(d.update().where(d.c.id == delivery_id).values(
                status="dead" if dead else "failed", attempts=attempts, last_status_code=status_code,
                last_error=(error or "")[:_ERROR_CHARS],
                next_attempt_at=None if dead else now + timedelta(seconds=policy.delay(attempts, self.rng))))
            return self._get(conn, delivery_id)

    def retry(self, delivery_id: int, now: datetime | None = None) -> Delivery:
        """Make a dead or failed delivery due now, with a fresh retry schedule and the same webhook-id."""
        now = _aware(now or datetime.now(UTC))
        d = deliveries
        with self.engine.begin() as conn:
            current = self._get(conn, delivery_id)
            if current is None:
                raise OutboxError(f"no webhook delivery {delivery_id}; `claro webhooks log` lists them")
            if current.status not in ("dead", "failed"):
                when = f" at {current.delivered_at:%Y-%m-%d %H:%M:%S} UTC" if current.delivered_at else ""
                raise OutboxError(f"webhook delivery {delivery_id} is {current.status}{when}: only failed or dead "
                                  "deliveries can be retried")
            conn.execute(d.update().where(d.c.id == delivery_id).values(
                status="pending", attempts=0, next_attempt_at=now))
            return self._get(conn, delivery_id)

    # ------------------------------------------------------------------ reading
    def get(self, delivery_id: int) -> Delivery | None:
        with self.engine.connect() as conn:
            return self._get(conn, delivery_id)

    def log(self, subscription: str | None = None, status: str | None = None, limit: int = 50) -> list[Delivery]:
        """Deliveries, newest first, optionally of one subscription and one status (`claro webhooks log`)."""
        if status is not None and status not in STATUSES:
            raise OutboxError(f"unknown delivery status {status!r}; statuses are: {', '.join(STATUSES)}")
        d = deliveries
        query = sa.select(d).order_by(d.c.id.desc()).limit(limit)
        if subscription is not None:
            query = query.where(d.c.subscription == subscription)
        if status is not None:
            query = query.where(d.c.status == status)
        with self.engine.connect() as conn:
            return [_delivery(r) for r in conn.execute(query)]

    def counts(self, subscription: str | None = None) -> dict[str, int]:
        """Number of deliveries per status."""
        d = deliveries
        query = sa.select(d.c.status, sa.func.count()).group_by(d.c.status)
        if subscription is not None:
            query = query.where(d.c.subscription == subscription)
        out = dict.fromkeys(STATUSES, 0)
        with self.engine.connect() as conn:
            out.update({s: n for s, n in conn.execute(query)})
        return out

    def event_rows(self, delivery: Delivery) -> list[tuple]:
        """The events of a delivery as raw rows, in id order: (id, type, catalogue, record, field,
        change_set, proposal, payload JSON text, at) with `at` as the database returns it (see `stored_time`)."""
        wanted = set(delivery.event_ids)
        contiguous = len(wanted) == delivery.last_event_id - delivery.first_event_id + 1
        with self.engine.connect() as conn:
            if contiguous:  # the common case: one range scan with a statement compiled once
                return conn.execute(self._range_query, {"first": delivery.first_event_id,
                                                        "last": delivery.last_event_id}).fetchall()
            rows = conn.execute(self._event_columns.where(self.events_table.c.id.in_(sorted(wanted)))
                                .order_by(self.events_table.c.id)).fetchall()
        return [r for r in rows if r[0] in wanted]

    def event_rows_many(self, items: Sequence[Delivery]) -> dict[int, list[tuple]]:
        """`event_rows` of several deliveries (delivery id -> rows), read with one range query.

        For the deliveries a sender is about to send, which follow each other: one query instead
        of one per delivery (a per-change subscription sends hundreds of one-event deliveries).
        """
        if not items:
            return {}
        first = min(d.first_event_id for d in items)
        last = max(d.last_event_id for d in items)
        owner = {event_id: d.id for d in items for event_id in d.event_ids}
        if last - first + 1 > 4 * len(owner) + 1000:  # scattered: a range read would mostly be waste
            return {d.id: self.event_rows(d) for d in items}
        out: dict[int, list[tuple]] = {d.id: [] for d in items}
        with self.engine.connect() as conn:
            for row in conn.execute(self._range_query, {"first": first, "last": last}):
                delivery_id = owner.get(row[0])
                if delivery_id is not None:
                    out[delivery_id].append(row)
        return out

    def rendered(self, items: Sequence[Delivery]) -> dict[int, bytes]:
        """The database-rendered messages of each delivery's events, joined by commas in event order
        (delivery id -> bytes), for the deliveries whose every event has one; the others are missing."""
        out: dict[int, bytes] = {}
        if not items:
            return out
        m = messages
        postgres = self.engine.dialect.name == "postgresql"
        with self.engine.connect() as conn:
            singles = [d for d in items if len(d.event_ids) == 1]
            if len(singles) > 1:  # per-change deliveries: one range read for all of them
                owner = {d.first_event_id: d.id for d in singles}
                first, last = min(owner), max(owner)
                if last - first < 4 * len(owner) + 1000:
                    for event_id, message in conn.execute(sa.select(m.c.event_id, m.c.message)
                                                          .where(m.c.event_id.between(first, last))):
                        if event_id in owner:
                            out[owner[event_id]] = message.encode()
                    items = [d for d in items if len(d.event_ids) != 1]
            for d in items:
                contiguous = len(d.event_ids) == d.last_event_id - d.first_event_id + 1
                if contiguous:  # the common case: a range, with statements compiled once
                    query, params = self._rendered_range, {"first": d.first_event_id, "last": d.last_event_id}
                else:
                    wanted = m.c.event_id.in_(d.event_ids)
                    if postgres:
                        query = sa.select(sa.func.count(), _utf8(sa.func.string_agg(
                            m.c.message, sa.literal_column("',' ORDER BY event_id")), postgres=True)).where(wanted)
                    else:
                        inner = sa.select(m.c.message).where(wanted).order_by(m.c.event_id).subquery()
                        query = sa.select(sa.func.count(), _utf8(sa.func.group_concat(inner.c.message, ","),
                                                                 postgres=False))
                    params = {}
                count, joined = conn.execute(query, params).one()
                if count == len(d.event_ids) and joined is not None:
                    out[d.id] = bytes(joined)
        return out

    def events_of(self, delivery: Delivery) -> list[dict[str, Any]]:
        """The events a delivery carries, in id order, shaped like `CatalogueStore.events()`."""
        return [{"id": i, "type": t, "catalogue": c, "record": r, "field": f, "change_set": cs, "proposal": p,
                 "payload": orjson.loads(payload) if payload is not None else None, "at": stored_time(at)}
                for i, t, c, r, f, cs, p, payload, at in self.event_rows(delivery)]

    def prune(self, delivered_before: datetime) -> int:
        """Forget delivered deliveries older than a date (failed and dead ones are kept); returns how many."""
        d = deliveries
        with self.engine.begin() as conn:
            return conn.execute(d.delete().where(d.c.status == "delivered",
                                                 d.c.delivered_at < _aware(delivered_before))).rowcount

    def prune_events(self, before: datetime, subscriptions: Iterable[str]) -> int:
        """Forget outbox events older than a date that no webhook subscription still needs; returns how many.
        Their rendered messages go as soon as every subscription has received them.

        An event is still needed while a subscription has not planned it (its cursor is behind, or it has
        never run: it starts at the beginning of the outbox) or while a delivery carrying it is not
        delivered (pending, failed, or dead and retryable). Subscriptions no longer in the spec are not
        waited for. History and rollback never read events.
        """
        names = list(subscriptions)
        e, d = self.events_table, deliveries
        with self.engine.begin() as conn:
            keep_from: int | None = None  # the oldest event id still needed
            if names:
                planned = dict(conn.execute(sa.select(cursors.c.subscription, cursors.c.last_event_id)
                                            .where(cursors.c.subscription.in_(names))).all())
                keep_from = min(planned.get(n, 0) for n in names) + 1
                for chunk in conn.execute(sa.select(d.c.event_ids).where(
                        d.c.subscription.in_(names), d.c.status != "delivered")).scalars().partitions(500):
                    firsts = [orjson.loads(ids)[0] for ids in chunk]
                    keep_from = min([keep_from, *firsts])
            # The newest event always stays: SQLite gives a new row the largest id + 1, so an emptied table
            # would hand out ids again from 1, below every subscription's cursor.
            newest = conn.execute(sa.select(sa.func.max(e.c.id))).scalar()
            if newest is None:
                return 0
            keep_from = newest if keep_from is None else min(keep_from, newest)
            # Rendered messages serve delivery only: every subscription has those below keep_from, whatever
            # their age.
            conn.execute(messages.delete().where(messages.c.event_id < keep_from))
            return conn.execute(e.delete().where(e.c.at < _aware(before), e.c.id < keep_from)).rowcount

    def _get(self, conn: sa.Connection, delivery_id: int) -> Delivery | None:
        row = conn.execute(sa.select(deliveries).where(deliveries.c.id == delivery_id)).first()
        return _delivery(row) if row is not None else None


RUN_EVENTS: tuple[str, ...] = ("run.started", "run.completed", "run.failed")


@dataclass(frozen=True)
class RecordedRun:
    """A run as the outbox last recorded it (its newest `run.*` event)."""

    run_id: str
    status: str  # started | completed | failed (the event's)
    at: datetime
    payload: dict[str, Any]


def recent_runs(store: Any, limit: int = 5) -> list[RecordedRun]:
    """The last `limit` runs recorded in the outbox, newest first: what `/claro status` shows when the
    Dagster webserver is down. Read through the indexed `change_set` column (`run:<run id>`)."""
    e = store.t["events"]
    # change_set >= 'run:' and < 'run;' is the prefix 'run:' as a range the index serves on both backends.
    query = (sa.select(e.c.change_set, e.c.type, e.c.payload, _raw(e.c.at))
             .where(e.c.change_set >= "run:", e.c.change_set < "run;", e.c.type.in_(RUN_EVENTS))
             .order_by(e.c.id.desc()).limit(max(limit, 1) * 3 + 50))
    runs: dict[str, RecordedRun] = {}
    with store.engine.connect() as conn:
        for change_set, event_type, payload, at in conn.execute(query):
            run_id = change_set[len("run:"):]
            if run_id not in runs:
                runs[run_id] = RecordedRun(run_id, event_type.split(".", 1)[1], stored_time(at),
                                           orjson.loads(payload) if payload else {})
            if len(runs) >= limit:
                break
    return list(runs.values())


def _delivery(r: Any) -> Delivery:
    return Delivery(r.id, r.subscription, r.webhook_id, tuple(orjson.loads(r.event_ids)), r.status, r.attempts,
                    _aware(r.next_attempt_at), r.last_status_code, r.last_error, _aware(r.created_at),
                    _aware(r.delivered_at))


def _utf8(text: Any, *, postgres: bool) -> Any:
    # The joined messages as bytes straight from the database: a 100 kB body is neither decoded nor encoded.
    if postgres:
        return sa.type_coerce(sa.func.convert_to(text, "UTF8"), sa.LargeBinary)
    return sa.type_coerce(sa.cast(text, sa.LargeBinary), sa.LargeBinary)


def _raw(column: sa.Column) -> Any:
    # Timestamps as the database returns them (SQLite: text), without SQLAlchemy parsing each row:
    # the events of a 500-event body mostly share one change set's time, which is converted once.
    return sa.type_coerce(column, sa.Text)


def stored_time(value: str | datetime) -> datetime:
    """A timestamp read through `_raw` as an aware UTC datetime."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return _aware(value)


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)  # SQLite drops the offset; only UTC is ever written
    return value


def _chunks(items: list, size: int = 500):
    for i in range(0, len(items), size):
        yield items[i:i + size]


__all__ = ["Delivery", "OutboxError", "RecordedRun", "RetryPolicy", "STATUSES", "WebhookOutbox", "event_matches",
           "recent_runs", "stored_time", "webhook_id"]
