"""Monitors as assets: a run of `<catalogue>/<monitor>` stores history and detections, writes `monitor.drift`
events that webhook subscriptions receive (signed, verified with `standardwebhooks`), and alerts the Slack routes
that want it (FakeSlack checks every request against chat.postMessage's contract); schedules and `after:` chains
target monitors; the metadata the UI plots is there."""

from __future__ import annotations

import dagster as dg
import pytest

from claro_dagster.catalogue.changes import Change, ChangeSet
from claro_dagster.definitions import build_definitions
from claro_dagster.resources.webhooks import WebhookSender
from claro_dagster.spec.loader import load_spec
from tests.resources.test_push_alerts import SECRET, Receiver
from tests.resources.test_slack import FakeSlack, limit_problems, postmessage_problems

TOKEN_ENV = "MONITOR_TEST_SLACK_TOKEN"
SECRET_ENV = "PUSH_ALERTS_WEBHOOK_SECRET"  # the Receiver verifies with test_push_alerts' secret

SPEC = """\
name: monitors
catalogues:
  products:
    key: sku
    attributes:
      sku: {type: text, identifier: true}
      title: {type: text}
      brand: {type: text}
      gtin: {type: text, identifier: true}
      price: {type: number}
      colour: {type: enum, values: [red, blue]}
schedules:
  daily_prices:
    target: products/prices
    every: daily
pipelines:
  after_prices:
    catalogue: products
    after: {catalogue: products, operation: prices}
    operations: [quality]
monitors:
  prices:
    kind: price
    catalogue: products
    price: price
    observe: [{file: rivals.csv, name: rivals}]
    rules:
      - {kind: competitor_gap, percent: 10}
      - {kind: threshold, percent: 20}
  quality:
    kind: drift
    catalogue: products
notifications:
  slack_token_env: %(token_env)s
  slack_api_url: %(slack_url)s
  slack:
    - channel: "#pricing"
      catalogues: [products]
      operations: [prices]
      verbosity: per_record
    - channel: "#drift"
      events: [monitor.drift]
    - channel: "#validation"
      operations: [validate]
  webhooks:
    erp:
      url: %(hook_url)s
      events: ["monitor.*"]
      secret_env: %(secret_env)s
"""
RIVALS = "competitor,gtin,name,brand,price\nRival,4006381333931,,,7.50\nRival,,Canvas Tote,Globex,9.99\n"


@pytest.fixture
def world(tmp_path, monkeypatch):
    receiver = Receiver()
    with FakeSlack() as slack:
        spec_path = tmp_path / "claro.yaml"
        spec_path.write_text(SPEC % {"token_env": TOKEN_ENV, "slack_url": slack.base_url, "hook_url": receiver.url,
                                     "secret_env": SECRET_ENV}, encoding="utf-8")
        (tmp_path / "rivals.csv").write_text(RIVALS, encoding="utf-8")
        monkeypatch.setenv(TOKEN_ENV, "xoxb-test")
        monkeypatch.setenv(SECRET_ENV, SECRET)
        defs = build_definitions(spec_path, tmp_path / "home")
        store = defs.resources["claro"].store
        store.apply(ChangeSet("load", "products", "import", [
            Change(sku, f, v, 100) for sku, values in (
                ("S1", {"title": "Runner", "brand": "Acme", "gtin": "4006381333931", "price": 10.0, "colour": "red"}),
                ("S2", {"title": "Canvas Tote", "brand": "Globex", "price": 10.0, "colour": "blue"}))
            for f, v in values.items()]))
        with dg.instance_for_test() as instance:
            yield defs, store, slack, receiver, instance
        for request in slack.posts():
            assert postmessage_problems(request) == [], request.json()
            assert limit_problems(request.json()) == [], request.json()
    receiver.close()


def heard(slack) -> list[tuple[str, str]]:
    return [(p["channel"], p["blocks"][0]["text"]["text"]) for p in (r.json() for r in slack.posts())
            if "thread_ts" not in p]


def test_a_price_monitor_run_alerts_slack_routes_and_webhooks_and_records_plottable_metadata(world):
    defs, store, slack, receiver, instance = world
    result = defs.resolve_job_def("products_prices").execute_in_process(instance=instance)
    assert result.success
    [mat] = result.asset_materializations_for_node("products__prices")
    meta = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
    assert meta["detections"] == 1 and meta["detections/competitor_gap"] == 1 and meta["detections/threshold"] == 0
    assert meta["mean_price/catalogue"] == 10.0 and meta["mean_price/rivals"] == pytest.approx((7.5 + 9.99) / 2)
    assert "Rival sells it for 7.5, 25.0% under our 10" in meta["detections_table"]

    # Slack: the route for this monitor (operation = the monitor's name) with the record in its thread, and the
    # route listening to monitor.drift; not the route for validate.
    title = ":chart_with_downwards_trend: Monitor prices: 1 price detection"
    assert sorted(heard(slack)) == [("#drift", title), ("#pricing", title)]
    posts = [r.json() for r in slack.posts()]
    thread = "\n".join(b["text"]["text"] for p in posts if p["channel"] == "#pricing" and "thread_ts" in p
                       for b in p["blocks"] if b["type"] == "section")
    assert "S1: Rival sells it for 7.5, 25.0% under our 10 (more than 10%)" in thread
    summary = next(p for p in posts if p["channel"] == "#drift")
    [button] = [b for b in summary["blocks"] if b["type"] == "actions"][0]["elements"]
    assert button["url"].endswith(f"/runs/{result.run_id}") and "claro monitor show prices" in str(summary)

    # Webhooks: one signed monitor.drift event per detection.
    sender = WebhookSender(timeout=5)
    report = sender.deliver_due(store, load_spec(store.spec.spec_path))
    sender.close()
    assert (report.delivered, report.failed) == (1, 0)
    [payload] = receiver.payloads
    assert payload["type"] == "monitor.drift"
    data = payload["data"]
    assert (data["monitor"], data["rule"], data["record"], data["run_id"]) == ("prices", "competitor_gap", "S1",
                                                                             result.run_id)
    assert data["detail"]["competitor"] == "Rival" and data["value"] == 7.5 and data["reference"] == 10.0

    # The next run sees nothing new: no alert, no event.
    posts_before = len(slack.posts())
    again = defs.resolve_job_def("products_prices").execute_in_process(instance=instance)
    assert again.success and len(slack.posts()) == posts_before
    [mat] = again.asset_materializations_for_node("products__prices")
    assert mat.metadata["detections"].value == 0 and mat.metadata["observations_added"].value == 0


def test_drift_alerts_after_a_baseline_and_a_schedule_and_a_chain_target_monitors(world):
    defs, store, slack, receiver, instance = world
    job = defs.resolve_job_def("products_quality")
    first = job.execute_in_process(instance=instance)
    [mat] = first.asset_materializations_for_node("products__quality")
    assert mat.metadata["baseline"].value is True and mat.metadata["detections"].value == 0
    assert mat.metadata["fill_rate/gtin"].value == 0.5 and slack.posts() == []

    store.apply(ChangeSet("more", "products", "import", [
        Change(f"N{i}", "colour", "green", 100) for i in range(4)]))
    second = job.execute_in_process(instance=instance)
    [mat] = second.asset_materializations_for_node("products__quality")
    assert mat.metadata["detections"].value >= 3 and mat.metadata["detections/new_value"].value == 1
    assert [c for c, _ in heard(slack)] == ["#drift"]  # #pricing listens to the prices monitor only
    assert "catalogue drift detection" in heard(slack)[0][1]

    schedule = defs.resolve_schedule_def("daily_prices")
    assert schedule.job_name == "products_prices" and schedule.cron_schedule == "0 2 * * *"
    chain = defs.resolve_sensor_def("after_prices")
    assert chain.asset_key == dg.AssetKey(["products", "prices"])  # the chain starts when the monitor completes
    assert defs.resolve_job_def("after_prices").asset_layer.executable_asset_keys == {dg.AssetKey(["products",
                                                                                                  "quality"])}
