"""Event names in Slack routes, pipeline routing rules and webhook subscriptions: a misspelt one would never fire,
so `claro check` refuses it with the line and the events there are; `push.failed` is one of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from claro_dagster.resources import slack
from claro_dagster.spec import SpecError, load_spec
from claro_dagster.spec.checks import ALERT_EVENTS, OUTBOX_EVENTS

BASE = """\
catalogues:
  products:
    key: sku
    attributes:
      sku: {type: text}
sources:
  feed: {catalogue: products, kind: upload}
pipelines:
  onboarding:
    catalogue: products
    sources: [feed]
    routing:
      - events: ["%(rule)s"]
        notify: "#alerts"
notifications:
  slack_token_env: SLACK_BOT_TOKEN
  slack:
    - channel: "#alerts"
      events: ["%(route)s"]
  webhooks:
    erp:
      url: https://erp.example.com/hook
      events: ["%(hook)s"]
      secret_env: ERP_SECRET
"""


def load(tmp_path: Path, rule: str = "batch.halted", route: str = "push.failed", hook: str = "push.failed"):
    path = Path("claro.yaml")
    path.write_text(BASE % {"rule": rule, "route": route, "hook": hook}, encoding="utf-8")
    return load_spec(path)


@pytest.fixture(autouse=True)
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # errors name the spec as given: relative to the working directory


def errors(tmp_path: Path, **names: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        load(tmp_path, **names)
    return str(info.value).splitlines()


def test_push_failed_and_patterns_that_match_known_events_pass(tmp_path):
    spec = load(tmp_path, rule="push.failed", route="push.*", hook="push.*")
    assert spec.notifications.webhooks["erp"].events == ["push.*"]
    load(tmp_path, rule="run.failed", route="change.*", hook="*")
    assert "push.failed" in OUTBOX_EVENTS and "push.failed" in ALERT_EVENTS and slack.EVENTS == ALERT_EVENTS


def test_a_misspelt_event_is_refused_with_its_line_and_the_events_there_are(tmp_path):
    assert errors(tmp_path, route="push.faild") == [
        "claro.yaml:19 notifications.slack[0].events[0]: 'push.faild' is not an event Slack alerts carry, did you "
        f"mean 'push.failed'? (events: {', '.join(ALERT_EVENTS)})"]
    assert errors(tmp_path, hook="batch.halted") == [  # an alert, not an outbox event: webhooks never get it
        f"claro.yaml:23 notifications.webhooks.erp.events[0]: 'batch.halted' is not an event webhooks carry, did "
        f"you mean 'batch.stuck'? (events: {', '.join(OUTBOX_EVENTS)})"]
    assert errors(tmp_path, rule="pushed.*") == [
        f"claro.yaml:13 pipelines.onboarding.routing[0].events[0]: 'pushed.*' matches no event Slack alerts carry "
        f"({', '.join(ALERT_EVENTS)})"]
