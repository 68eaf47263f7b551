"""Stuck batches: work that stopped moving, found and announced once (`batch.stuck`).

A batch is stuck when it is still unfinished (`received` or `validated`) longer than the configured age after
its last step, or when the run that would process it waits in Dagster's run queue longer than that (a queued
run has no batch record yet: the batch is registered when its run starts). The age is one setting,
`notifications.batch_stuck_after_seconds` of the spec (default 3600); $CLARO_BATCH_STUCK_AFTER_SECONDS, when set,
overrides it for every process that reads it (the `claro_stuck_batches` sensor and `claro serve`'s `/metrics`).

Each stuck batch is written once to the outbox as a `batch.stuck` event, keyed by the batch and the moment it
last moved (`stuck:<batch>:<since>`), or by the queued run (`stuck:run:<run id>`): a later check finds it there
and says nothing, while a batch that moves on and gets stuck again is a new episode and announced again.
No Dagster here: the sensor hands the queued runs in as plain `QueuedRun`s.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from claro_dagster.catalogue.common import aware
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.spec.models import ProjectSpec

BATCH_STUCK = "batch.stuck"
STUCK_AFTER_ENV = "CLARO_BATCH_STUCK_AFTER_SECONDS"
#: Statuses of a batch that is neither published nor settled (halted, failed, quarantined).
UNFINISHED = ("received", "validated")


def stuck_after_seconds(spec: ProjectSpec, env: Mapping[str, str] | None = None) -> float:
    """The age after which an unfinished batch is stuck: $CLARO_BATCH_STUCK_AFTER_SECONDS when set, else the
    spec's `notifications.batch_stuck_after_seconds`. ValueError naming the variable when it is not a number."""
    env = os.environ if env is None else env
    raw = (env.get(STUCK_AFTER_ENV) or "").strip()
    if not raw:
        return float(spec.notifications.batch_stuck_after_seconds)
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{STUCK_AFTER_ENV}={raw!r}: give the age in seconds after which an unfinished batch counts "
                         "as stuck, or unset it to use the spec's notifications.batch_stuck_after_seconds")
    return value


def age_seconds(now: datetime, value: datetime | str) -> float:
    """Seconds from `value` to `now`, never negative (a naive time is UTC: SQLite drops the offset)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return max(0.0, (now - aware(value)).total_seconds())


@dataclass(frozen=True)
class QueuedRun:
    """A Dagster run still waiting in the run queue, as the sensor read it."""

    run_id: str
    job: str
    created_at: datetime
    batch: str | None
    source: str | None
    catalogue: str | None


@dataclass(frozen=True)
class StuckBatch:
    batch: str
    catalogue: str | None
    source: str | None
    filename: str | None
    status: str  # received | validated | queued (a run not started)
    stage: str | None  # the last stage that ran, when one did
    since: datetime  # when it last moved
    age_seconds: float
    run_id: str | None = None  # the queued run

    @property
    def change_set(self) -> str:
        """The outbox key that makes the announcement once per stuck episode."""
        if self.run_id:
            return f"stuck:run:{self.run_id}"
        return f"stuck:{self.batch}:{self.since.astimezone(UTC).isoformat()}"

    def payload(self, stuck_after: float) -> dict[str, Any]:
        return {"batch": self.batch, "catalogue": self.catalogue, "source": self.source, "filename": self.filename,
                "status": self.status, "stage": self.stage, "since": self.since.astimezone(UTC).isoformat(),
                "age_seconds": round(self.age_seconds), "stuck_after_seconds": stuck_after, "run_id": self.run_id}


def stuck_batches(store: CatalogueStore, now: datetime, stuck_after: float,
                  queued: Iterable[QueuedRun] = ()) -> list[StuckBatch]:
    """Batches unfinished, or runs queued, for longer than `stuck_after` seconds, oldest first. A queued run of a
    batch already stuck in the registry is not listed twice."""
    t = store.t["batches"]
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(t).where(t.c.status.in_(UNFINISHED)).order_by(t.c.updated_at)).fetchall()
    out = [StuckBatch(r.key, r.catalogue, r.source, r.filename, r.status, r.stage, aware(r.updated_at),
                      age_seconds(now, r.updated_at)) for r in rows if age_seconds(now, r.updated_at) > stuck_after]
    seen = {s.batch for s in out}
    for run in queued:
        age = age_seconds(now, run.created_at)
        if age > stuck_after and (run.batch is None or run.batch not in seen):
            out.append(StuckBatch(run.batch or run.job, run.catalogue, run.source, None, "queued", None,
                                  aware(run.created_at), age, run_id=run.run_id))
    return sorted(out, key=lambda s: s.since)


def record_stuck(store: CatalogueStore, stuck: StuckBatch, stuck_after: float) -> bool:
    """Write the `batch.stuck` event unless this episode was announced before; True when it is new."""
    return store.append_event(BATCH_STUCK, change_set=stuck.change_set, payload=stuck.payload(stuck_after),
                              catalogue=stuck.catalogue)


def describe_age(seconds: float) -> str:
    """`2 h 5 min`, `45 min`, `30 s`: an age for people."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    hours, minutes = divmod(seconds // 60, 60)
    if hours >= 48:
        return f"{hours // 24} days"
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


__all__ = ["BATCH_STUCK", "STUCK_AFTER_ENV", "UNFINISHED", "QueuedRun", "StuckBatch", "age_seconds",
           "describe_age", "record_stuck", "stuck_after_seconds", "stuck_batches"]
