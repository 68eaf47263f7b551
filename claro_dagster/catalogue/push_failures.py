"""`push.failed`: the records a sales-channel push left refused or held back, as outbox events.

A push rewrites each record's channel state (`catalogue.channels`); comparing the failed and held entries
before and after it tells which records failed *newly* (they were pushed, or never sent, before) or fail
*differently* (their error changed). Only those are announced: a record the channel refuses the same way on
every push is sent again each time (until accepted) but reported once, not at every run.

Each announced record becomes one `push.failed` event in the store's outbox (`claro_events`), all of a push
in one transaction, so webhook subscriptions listing `push.failed` (or `push.*`) receive them signed like
every other event. The payload names the destination and its kind, the catalogue, the record, the channel
object it belongs to (a Shopify product handle, an Amazon SKU), the error and, inside a Dagster run, the run id.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from claro_dagster.catalogue.channels import ChannelState, channel_state

PUSH_FAILED = "push.failed"
FAILING = ("failed", "held")


@dataclass(frozen=True)
class PushFailure:
    """One record a push left refused (`failed`) or held back before sending (`held`)."""

    record: str
    status: str
    channel_object: str | None  # the channel object it belongs to: a Shopify product handle, an Amazon SKU
    error: str
    previous_error: str | None = None  # the error it had before this push, if it was failing already

    def line(self) -> str:
        """`record (object): error`, as alerts and `claro push status` list it."""
        where = f" ({self.channel_object})" if self.channel_object and self.channel_object != self.record else ""
        return f"{self.record}{where}: {self.error}"


def failing(store: Any, destination: str) -> dict[str, PushFailure]:
    """The destination's records whose channel state is failed or held, by record key (one query)."""
    ChannelState(store)  # creates the table on a store that has never pushed
    c = channel_state
    query = sa.select(c.c.record, c.c.status, c.c.group_key, c.c.error).where(
        c.c.destination == destination, c.c.status.in_(FAILING))
    with store.engine.connect() as conn:
        return {row.record: PushFailure(row.record, row.status, row.group_key, row.error or "refused (no message)")
                for row in conn.execute(query)}


def new_failures(before: dict[str, PushFailure], after: dict[str, PushFailure]) -> list[PushFailure]:
    """The failures of `after` that `before` did not have with the same error, in record order."""
    out = []
    for record in sorted(after):
        now, then = after[record], before.get(record)
        if then is None or then.error != now.error:
            out.append(PushFailure(now.record, now.status, now.channel_object, now.error,
                                   then.error if then else None))
    return out


def event_payload(failure: PushFailure, destination: str, dest: Any, run_id: str | None) -> dict[str, Any]:
    """The data of one `push.failed` event (the outbox adds event_id, catalogue, record and change_set)."""
    payload: dict[str, Any] = {
        "destination": destination, "destination_kind": dest.kind, "catalogue": dest.catalogue,
        "record": failure.record, "channel_object": failure.channel_object, "status": failure.status,
        "error": failure.error}
    if failure.previous_error is not None:
        payload["previous_error"] = failure.previous_error
    if run_id:
        payload["run_id"] = run_id
    return payload


def write_events(store: Any, destination: str, dest: Any, failures: list[PushFailure], *,
                 run_id: str | None = None) -> str | None:
    """Write one `push.failed` event per failure, in one transaction; the change set they share (None when
    there was nothing to write). Events of a push inside a run share `push:<destination>:<run id>`."""
    if not failures:
        return None
    change_set = f"push:{destination}:{run_id or uuid.uuid4().hex}"
    with store.writer.transaction() as tx:
        for failure in failures:
            tx.append_event(PUSH_FAILED, change_set=change_set, catalogue=dest.catalogue, record=failure.record,
                            payload=event_payload(failure, destination, dest, run_id))
    return change_set


__all__ = ["FAILING", "PUSH_FAILED", "PushFailure", "event_payload", "failing", "new_failures", "write_events"]
