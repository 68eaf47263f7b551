"""Alerts raised outside a run's status (a push that left records failed, a quarantined mail): tell Slack.

Run events reach Slack through the run-status sensors (`sensors/notifications.py`). Connectors that find
something worth a person's attention during a run or a sensor tick build a `slack.Alert` and call `send`:
it is routed with the spec's Slack routes and pipeline routing rules (`spec.alert_routes()`), exactly as a
run's alerts are, and it never raises: Slack trouble is logged, never a failed push or tick.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from claro_dagster.spec.models import ProjectSpec

log = logging.getLogger(__name__)


def slack_notifier(spec: ProjectSpec) -> Any | None:
    """A SlackNotifier when the spec routes alerts to Slack and the token's variable is set, else None."""
    notes = spec.notifications
    token = os.environ.get(notes.slack_token_env) if notes.slack_token_env else None
    if not token or not spec.alert_routes():
        return None
    from claro_dagster.dev import webserver_url
    from claro_dagster.resources.slack import SlackNotifier

    return SlackNotifier(token=token, base_url=notes.slack_api_url, webserver_url=webserver_url())


def batch_halted(batch: Any, *, pipeline: str | None = None, run_id: str | None = None,
                 stage: str = "batch_validated", counts: dict[str, int] | None = None) -> Any:
    """The `batch.halted` alert of a batch (a `batches.Batch`) that failed its gate, in a run or in the portal."""
    from claro_dagster.resources.slack import Alert

    command = f"claro rejected {batch.key}"
    # The message goes into a code block in Slack: inline backticks would end it early.
    message = (batch.message or "the batch failed its validation gate").replace("`", "")
    if command not in message:
        message += f"\nRejected rows, with line numbers and reasons: {command}"
    return Alert(event="batch.halted", title=f"Batch halted: {batch.filename} ({batch.source})",
                 catalogue=batch.catalogue, operation="validate", pipeline=pipeline, source=batch.source,
                 stage=stage, run_id=run_id, batch=batch.key, error=message, counts=counts or {})


def send(spec: ProjectSpec, alert: Any, *, logger: logging.Logger = log) -> None:
    """Post `alert` (a `slack.Alert`) to the routes that want it; log, never raise."""
    try:
        slack = slack_notifier(spec)
        if slack is not None:
            routes = spec.notifications.model_copy(update={"slack": spec.alert_routes()})
            logger.info("Slack: %s", slack.notify(routes, alert).summary())
    except Exception:  # notify never raises; a bug around it must still not fail the caller
        logger.exception("Slack: the %s alert %r was not sent", alert.event, alert.title)


__all__ = ["batch_halted", "send", "slack_notifier"]
