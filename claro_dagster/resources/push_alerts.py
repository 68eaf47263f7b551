"""Tell people when a sales-channel push leaves records refused or held back: `push.failed`.

`sales_channels.push_destination` (behind both the destination asset and `claro push`) wraps every real push
(not a dry run) in `alerting(...)`: the failed and held channel state is read before and after the push, and
each record that failed newly, or whose error changed, is announced once (see `catalogue.push_failures`):

- as a `push.failed` event in the outbox, which webhook subscriptions listing `push.failed` or `push.*`
  receive signed like every other event;
- as one Slack alert `push.failed`, when the spec has Slack routes and the token's variable is set. It is
  routed with `routes_for` like a failed run of the destination's asset: catalogue = the destination's
  catalogue, operation = the destination's name (the word a route's `operations` already uses for that
  asset's runs), pipeline = the run's `claro/pipeline` tag, else the one pipeline listing the destination.
  Routes without `events` hear it, as they hear every failure. A `summary` route lists the first records,
  a `per_record` route lists them all in a thread.

Slack trouble never fails the push; a push that raises part way (the API down) still announces what it
stored as failed before raising.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from claro_dagster.catalogue.push_failures import PUSH_FAILED, PushFailure, failing, new_failures, write_events
from claro_dagster.resources.alerts import send
from claro_dagster.spec.models import ProjectSpec

log = logging.getLogger(__name__)


def run_facts() -> tuple[str | None, str | None]:
    """(run id, `claro/pipeline` tag) of the Dagster run this code executes in; (None, None) outside one."""
    try:
        import dagster as dg

        context = dg.AssetExecutionContext.get()
        return context.run_id, context.run.tags.get("claro/pipeline")
    except Exception:  # no asset execution in scope (the CLI, a test calling push_destination directly)
        return None, None


def pipeline_of(spec: ProjectSpec, destination: str) -> str | None:
    """The pipeline that syncs a destination, when exactly one lists it."""
    names = [name for name, pipe in spec.pipelines.items() if destination in pipe.destinations]
    return names[0] if len(names) == 1 else None


def push_failed_alert(destination: str, dest: Any, failures: list[PushFailure], *, failing_total: int,
                      run_id: str | None = None, pipeline: str | None = None) -> Any:
    """The Slack alert for the records a push newly left failed or held (`slack.Alert`)."""
    from claro_dagster.resources.slack import Alert

    n = len(failures)
    noun = "record" if n == 1 else "records"
    refused = sum(f.status == "failed" for f in failures)
    held = n - refused
    parts = []
    if refused:
        parts.append(f"{refused} refused by the channel")
    if held:
        parts.append(f"{held} held back before sending")
    error = (f"{n} {noun} of {dest.catalogue} did not reach {dest.kind} destination {destination} "
             f"({', '.join(parts)}). Fix the records (or the mapping in claro.yaml); the next push sends them "
             f"again. All of them: claro push status {destination}")
    counts = {"newly failed": n, f"failing on {destination}": failing_total}
    return Alert(event=PUSH_FAILED, title=f"Push failed: {n} {noun} to {destination}", catalogue=dest.catalogue,
                 operation=destination, pipeline=pipeline, run_id=run_id, error=error,
                 counts=counts, records=[f.line() for f in failures])


def announce(store: Any, destination: str, dest: Any, failures: list[PushFailure], *, failing_total: int,
             run_id: str | None = None, pipeline: str | None = None, logger: logging.Logger = log) -> None:
    """Write the `push.failed` events, then tell Slack (never raising for Slack's sake)."""
    if not failures:
        return
    outbox_error: Exception | None = None
    try:
        write_events(store, destination, dest, failures, run_id=run_id)
    except Exception as exc:  # still try Slack, then let the caller see the store's trouble
        outbox_error = exc
    spec: ProjectSpec = store.spec
    send(spec, push_failed_alert(destination, dest, failures, failing_total=failing_total, run_id=run_id,
                                 pipeline=pipeline or pipeline_of(spec, destination)), logger=logger)
    if outbox_error is not None:
        raise outbox_error


@contextmanager
def alerting(store: Any, destination: str, dest: Any, *, dry_run: bool = False) -> Iterator[None]:
    """Around a push: announce the records it newly left failed or held (nothing for a dry run)."""
    if dry_run:
        yield
        return
    before = failing(store, destination)
    try:
        yield
    except BaseException:
        try:  # what the push stored as failed before it died is announced; its own error is the one raised
            _announce_changes(store, destination, dest, before)
        except Exception:
            log.exception("push.failed: the failures of the interrupted push to %s were not announced", destination)
        raise
    _announce_changes(store, destination, dest, before)


def _announce_changes(store: Any, destination: str, dest: Any, before: dict[str, PushFailure]) -> None:
    after = failing(store, destination)
    failures = new_failures(before, after)
    if failures:
        run_id, pipeline = run_facts()
        announce(store, destination, dest, failures, failing_total=len(after), run_id=run_id, pipeline=pipeline)


__all__ = ["alerting", "announce", "pipeline_of", "push_failed_alert", "run_facts"]
