"""Monitor state in the catalogue store: price history, detections, open flags and drift baselines.

Tables (created on first use, like the channel state and the webhook outbox):

- `claro_price_observations`: one row per observed price: catalogue, record, source (`catalogue` for the
  catalogue's own price, a destination, a competitor file, an HTTP or scrape source), listing ('' for the
  record's own price, else the competitor listing), price and the time it was true at the source. Unique on
  (catalogue, record, source, listing, observed_at): the time is the source's own (when the catalogue value was
  written, when the channel state was last updated, the file's date), so two monitors reading the same state
  write one row, and an insert that meets an existing row is skipped by the database (ON CONFLICT DO NOTHING),
  never failed: concurrent monitors neither duplicate nor lose an observation.
- `claro_monitor_detections`: what each monitor run found; unique per monitor and identity: the observation
  judged (threshold, anomaly: each observation is judged once per monitor, whichever run sees it), else the run,
  rule, record, source and listing, so re-running a run's step records and announces nothing twice. Each new
  detection is written in the same transaction as its `monitor.drift` outbox event (webhooks deliver it like
  every other event).
- `claro_monitor_flags`: records a state rule (absolute, competitor_gap) currently holds for: a record is
  announced when it starts to hold, not at every run while it keeps holding.
- `claro_monitor_snapshots`: each drift run's catalogue profile; the next runs compare with them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from claro_dagster.catalogue.common import now
from claro_dagster.operations.monitor import Detection, Observation, Profile

MONITOR_DRIFT = "monitor.drift"

metadata = sa.MetaData()
observations = sa.Table(
    "claro_price_observations", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("catalogue", sa.Text, nullable=False),
    sa.Column("record", sa.Text, nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("listing", sa.Text, nullable=False, default=""),
    sa.Column("competitor", sa.Text, nullable=False, default=""),
    sa.Column("price", sa.Float, nullable=False),
    sa.Column("observed_at", sa.Text, nullable=False),  # ISO 8601 UTC, fixed width: compares as text
    sa.Column("matched_by", sa.Text),  # gtin | mpn | name+brand | url (a scrape of the record's own page)
    sa.Column("url", sa.Text),
    sa.Column("monitor", sa.Text),  # the monitor that wrote it first
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("catalogue", "record", "source", "listing", "observed_at", name="uq_claro_price_observation"),
    sa.Index("ix_claro_price_observations_record", "catalogue", "record"),
)
detections = sa.Table(
    "claro_monitor_detections", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("monitor", sa.Text, nullable=False),
    sa.Column("catalogue", sa.Text, nullable=False),
    sa.Column("run_key", sa.Text, nullable=False),
    sa.Column("rule", sa.Text, nullable=False),
    sa.Column("record", sa.Text, nullable=False, default=""),  # '' for a catalogue-wide drift
    sa.Column("source", sa.Text, nullable=False, default=""),
    sa.Column("listing", sa.Text, nullable=False, default=""),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("value", sa.Float),
    sa.Column("reference", sa.Float),
    sa.Column("detail", sa.Text),  # JSON
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    # what makes a detection the same one: the observation judged (threshold, anomaly), else the run and what
    # was found (state rules, drift)
    sa.Column("identity", sa.Text, nullable=False),
    sa.UniqueConstraint("monitor", "identity", name="uq_claro_monitor_detection"),
    sa.Index("ix_claro_monitor_detections_record", "catalogue", "record"),
)
flags = sa.Table(
    "claro_monitor_flags", metadata,
    sa.Column("monitor", sa.Text, primary_key=True),
    sa.Column("rule", sa.Text, primary_key=True),
    sa.Column("record", sa.Text, primary_key=True),
    sa.Column("listing", sa.Text, primary_key=True),
)
snapshots = sa.Table(
    "claro_monitor_snapshots", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("monitor", sa.Text, nullable=False),
    sa.Column("run_key", sa.Text, nullable=False),
    sa.Column("profile", sa.Text, nullable=False),  # JSON of operations.monitor.Profile
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("monitor", "run_key", name="uq_claro_monitor_snapshot"),
)


def iso(moment: datetime | str) -> str:
    """A time as the observations store it: UTC, `YYYY-MM-DDTHH:MM:SS.ffffffZ` (fixed width, sorts as text)."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class StoredDetection:
    id: int
    monitor: str
    catalogue: str
    run_key: str
    detection: Detection
    at: datetime


def _insert_ignoring_duplicates(conn: sa.Connection, table: sa.Table, rows: list[dict]) -> int:
    """Insert rows, skipping those a unique constraint already holds (another writer's); how many were new."""
    return len(_insert_returning(conn, table, rows, list(table.primary_key.columns)[0]))


def _insert_returning(conn: sa.Connection, table: sa.Table, rows: list[dict], column: sa.Column) -> list:
    """`column` of the rows an insert wrote, skipping those a unique constraint already holds. RETURNING says what
    was written (a DO NOTHING insert's rowcount is -1 on psycopg); one executemany, which SQLAlchemy sends as
    multi-row INSERTs ("insertmanyvalues") with one compiled statement."""
    if not rows:
        return []
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    statement = insert(table).on_conflict_do_nothing().returning(column)
    return [row[0] for row in conn.execute(statement, rows).all()]


class MonitorStore:
    """Read and write monitor state in one catalogue store."""

    def __init__(self, store: Any):
        self.store = store
        self.engine: sa.Engine = store.engine
        for attempt in range(len(metadata.tables) + 1):
            try:
                metadata.create_all(self.engine)
                break
            except sa.exc.DBAPIError:  # another monitor created one between the check and the CREATE: go on
                if attempt == len(metadata.tables):
                    raise

    # ------------------------------------------------------------------ price history
    def add_observations(self, catalogue: str, items: Iterable[Observation], *, monitor: str | None = None,
                         matched_by: dict[tuple[str, str], str] | None = None,
                         urls: dict[tuple[str, str], str] | None = None) -> int:
        """Add observations to the history; those already there are skipped. How many were new."""
        matched_by, urls = matched_by or {}, urls or {}
        stamp = now()
        rows = {(o.record, o.source, o.listing, iso(o.observed_at)): {
            "catalogue": catalogue, "record": o.record, "source": o.source, "listing": o.listing,
            "competitor": o.competitor, "price": float(o.price), "observed_at": iso(o.observed_at),
            "matched_by": matched_by.get((o.record, o.listing)), "url": urls.get((o.record, o.listing)),
            "monitor": monitor, "recorded_at": stamp} for o in items}
        with self.engine.begin() as conn:
            return _insert_ignoring_duplicates(conn, observations, list(rows.values()))

    def history(self, catalogue: str, *, records: Sequence[str] | None = None, sources: Sequence[str] | None = None,
                after_id: int | None = None, recorded_since: datetime | None = None) -> list[Observation]:
        """Observations, oldest first (by the time they were true, then by id); with both `after_id` and
        `recorded_since`, those after the id or recorded since the time."""
        o = observations
        query = sa.select(o).where(o.c.catalogue == catalogue)
        if sources is not None:
            query = query.where(o.c.source.in_(list(sources)))
        if after_id is not None and recorded_since is not None:
            query = query.where(sa.or_(o.c.id > after_id, o.c.recorded_at >= recorded_since))
        elif after_id is not None:
            query = query.where(o.c.id > after_id)
        if records is None:
            return self._observations(query)
        records = sorted(set(records))
        found = [obs for i in range(0, len(records), 500)
                 for obs in self._observations(query.where(o.c.record.in_(records[i:i + 500])))]
        return sorted(found, key=lambda x: (x.observed_at, x.id or 0))

    def _observations(self, query: sa.Select) -> list[Observation]:
        o = observations
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(o.c.observed_at, o.c.id)).mappings().all()
        return [Observation(r["record"], r["source"], r["price"], r["observed_at"], r["listing"], r["competitor"],
                            r["id"]) for r in rows]

    def history_rows(self, catalogue: str, record: str) -> list[dict[str, Any]]:
        o = observations
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.select(o).where(o.c.catalogue == catalogue, o.c.record == record)
                                                  .order_by(o.c.observed_at, o.c.id)).mappings()]

    def latest(self, catalogue: str, sources: Sequence[str] | None = None) -> list[Observation]:
        """The newest observation of each (record, source, listing), in one query."""
        o = observations
        where = [o.c.catalogue == catalogue] + ([o.c.source.in_(list(sources))] if sources is not None else [])
        newest = (sa.select(o.c.record, o.c.source, o.c.listing, sa.func.max(o.c.observed_at).label("at"))
                  .where(*where).group_by(o.c.record, o.c.source, o.c.listing).subquery())
        query = sa.select(o).join(newest, sa.and_(o.c.record == newest.c.record, o.c.source == newest.c.source,
                                                  o.c.listing == newest.c.listing, o.c.observed_at == newest.c.at)
                                  ).where(*where)
        return self._observations(query)

    def last_id(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.coalesce(sa.func.max(observations.c.id), 0))).scalar_one()

    def matched(self, catalogue: str) -> dict[tuple[str, str], tuple[str | None, str | None]]:
        """(record, listing) -> (matched_by, url) of every competitor listing seen."""
        o = observations
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(o.c.record, o.c.listing, o.c.matched_by, o.c.url)
                                .where(o.c.catalogue == catalogue, o.c.listing != "")).all()
        return {(r.record, r.listing): (r.matched_by, r.url) for r in rows}

    # ------------------------------------------------------------------ flags (state rules)
    def flags(self, monitor: str, rule: str) -> set[tuple[str, str]]:
        """The (record, listing) pairs a state rule held for at the monitor's last run."""
        f = flags
        with self.engine.connect() as conn:
            return {(r.record, r.listing) for r in conn.execute(
                sa.select(f.c.record, f.c.listing).where(f.c.monitor == monitor, f.c.rule == rule))}

    def set_flags(self, monitor: str, rule: str, holding: Iterable[tuple[str, str]]) -> None:
        """Remember the (record, listing) pairs a state rule holds for now (after its detections are written)."""
        holding = set(holding)
        f = flags
        with self.engine.begin() as conn:
            before = {(r.record, r.listing) for r in conn.execute(
                sa.select(f.c.record, f.c.listing).where(f.c.monitor == monitor, f.c.rule == rule))}
            for record, listing in before - holding:
                conn.execute(f.delete().where(f.c.monitor == monitor, f.c.rule == rule, f.c.record == record,
                                              f.c.listing == listing))
            _insert_ignoring_duplicates(conn, f, [{"monitor": monitor, "rule": rule, "record": r, "listing": li}
                                                  for r, li in sorted(holding - before)])

    # ------------------------------------------------------------------ detections
    def record_detections(self, monitor: str, kind: str, catalogue: str, run_key: str, found: Sequence[Detection],
                          *, run_id: str | None = None) -> list[Detection]:
        """Write the detections of one run with one `monitor.drift` event each, in one transaction; return those
        that were new (a run's step executed again finds its detections there and announces nothing)."""
        if not found:
            return []
        stamp = now()
        change_set = f"monitor:{monitor}:{run_key}"
        rows = {identity(run_key, d): {
            "monitor": monitor, "catalogue": catalogue, "run_key": run_key, "rule": d.rule, "record": d.record or "",
            "source": d.source, "listing": d.listing, "message": d.message, "value": d.value,
            "reference": d.reference, "detail": json.dumps(d.detail, sort_keys=True), "at": stamp,
            "identity": identity(run_key, d)} for d in found}
        with self.store.writer.transaction() as tx:
            written = set(_insert_returning(tx.conn, detections, list(rows.values()), detections.c.identity))
            new = [d for key, d in {identity(run_key, d): d for d in found}.items() if key in written]
            for d in new:
                tx.append_event(MONITOR_DRIFT, change_set=change_set, catalogue=catalogue, record=d.record,
                                payload=event_payload(monitor, kind, catalogue, d, run_id))
        return new

    def detections(self, *, monitor: str | None = None, catalogue: str | None = None, record: str | None = None,
                   limit: int | None = None) -> list[StoredDetection]:
        d = detections
        query = sa.select(d)
        if monitor is not None:
            query = query.where(d.c.monitor == monitor)
        if catalogue is not None:
            query = query.where(d.c.catalogue == catalogue)
        if record is not None:
            query = query.where(d.c.record == record)
        query = query.order_by(d.c.id.desc())
        if limit:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [StoredDetection(r["id"], r["monitor"], r["catalogue"], r["run_key"], Detection(
            r["rule"], r["record"] or None, r["message"], r["source"], r["listing"], r["value"], r["reference"],
            json.loads(r["detail"] or "{}")), r["at"]) for r in reversed(rows)]

    # ------------------------------------------------------------------ drift baselines
    def snapshots(self, monitor: str, limit: int) -> list[Profile]:
        """The last `limit` profiles of a drift monitor, oldest first."""
        s = snapshots
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(s.c.profile).where(s.c.monitor == monitor).order_by(s.c.id.desc())
                                .limit(limit)).scalars().all()
        return [Profile.from_json(json.loads(text)) for text in reversed(rows)]

    def add_snapshot(self, monitor: str, run_key: str, profile: Profile) -> bool:
        with self.engine.begin() as conn:
            return bool(_insert_ignoring_duplicates(conn, snapshots, [{
                "monitor": monitor, "run_key": run_key, "profile": json.dumps(profile.to_json(), sort_keys=True),
                "at": now()}]))

    def snapshot_of(self, monitor: str, run_key: str) -> Profile | None:
        s = snapshots
        with self.engine.connect() as conn:
            text = conn.execute(sa.select(s.c.profile).where(s.c.monitor == monitor, s.c.run_key == run_key)
                                ).scalar_one_or_none()
        return Profile.from_json(json.loads(text)) if text else None

    def snapshots_before(self, monitor: str, run_key: str, limit: int) -> list[Profile]:
        """The `limit` profiles written before run `run_key`'s (all of them when it has none), oldest first."""
        s = snapshots
        with self.engine.connect() as conn:
            own = conn.execute(sa.select(s.c.id).where(s.c.monitor == monitor, s.c.run_key == run_key)
                               ).scalar_one_or_none()
            query = sa.select(s.c.profile).where(s.c.monitor == monitor)
            if own is not None:
                query = query.where(s.c.id < own)
            rows = conn.execute(query.order_by(s.c.id.desc()).limit(limit)).scalars().all()
        return [Profile.from_json(json.loads(text)) for text in reversed(rows)]


def identity(run_key: str, d: Detection) -> str:
    """What makes two detections of one monitor the same (see `claro_monitor_detections`)."""
    if d.observation is not None:
        return f"{d.rule}|observation:{d.observation}"
    return "|".join((run_key, d.rule, d.record or "", d.source, d.listing, str(d.detail.get("attribute", ""))))


def event_payload(monitor: str, kind: str, catalogue: str, d: Detection, run_id: str | None) -> dict[str, Any]:
    """The data of one `monitor.drift` event (the outbox adds event_id, catalogue, record and change_set)."""
    payload: dict[str, Any] = {"monitor": monitor, "monitor_kind": kind, "catalogue": catalogue, "record": d.record,
                               "rule": d.rule, "message": d.message, "source": d.source or None,
                               "listing": d.listing or None, "value": d.value, "reference": d.reference,
                               "detail": d.detail}
    if run_id:
        payload["run_id"] = run_id
    return payload


__all__ = ["MONITOR_DRIFT", "MonitorStore", "StoredDetection", "event_payload", "iso"]
