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


def send(spec: ProjectSpec, alert: Any, *, logger: logging.Logger = log) -> None:
    """Post `alert` (a `slack.Alert`) to the routes that want it; log, never raise."""
    try:
        slack = slack_notifier(spec)
        if slack is not None:
            routes = spec.notifications.model_copy(update={"slack": spec.alert_routes()})
            logger.info("Slack: %s", slack.notify(routes, alert).summary())
    except Exception:  # notify never raises; a bug around it must still not fail the caller
        logger.exception("Slack: the %s alert %r was not sent", alert.event, alert.title)


__all__ = ["send", "slack_notifier"]
