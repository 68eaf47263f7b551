"""`push.failed`: records a Shopify push leaves refused or held back reach webhooks (signed outbox events) and
Slack (routed like any failure), once per new failure or changed error, from the CLI's path and the asset's.

Shopify is tests/shopify_fake.py (requests validated against the Admin GraphQL schema in tests/contracts/shopify/);
Slack is tests/resources/test_slack.py's FakeSlack, whose requests are checked against chat.postMessage's
contract (tests/contracts/slack/); webhooks are verified with the `standardwebhooks` library.
"""

from __future__ import annotations

import json

import dagster as dg
import pytest
from http_fakes import RecordingServer, closed_port
from standardwebhooks.webhooks import Webhook

from claro_dagster.catalogue.changes import Change, ChangeSet
from claro_dagster.catalogue.channels import ChannelState
from claro_dagster.catalogue.opening import open_store
from claro_dagster.catalogue.push_failures import PUSH_FAILED
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.definitions import build_definitions
from claro_dagster.resources.sales_channels import push_destination
from claro_dagster.resources.webhooks import WebhookSender
from claro_dagster.spec.loader import load_spec
from tests.cli_project import claro
from tests.resources.test_slack import FakeSlack, limit_problems, postmessage_problems
from tests.shopify_fake import FakeShopify

TOKEN_ENV = "PUSH_ALERTS_SLACK_TOKEN"
SECRET_ENV = "PUSH_ALERTS_WEBHOOK_SECRET"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

SPEC = """\
name: push-alerts
catalogues:
  products:
    key: sku
    attributes:
      sku: {type: text, identifier: true, required: true}
      title: {type: text}
      price: {type: number}
      status: {type: enum, values: [active, draft, archived]}
sources:
  shop_csv: {catalogue: products, kind: inbox, path: inbox/shop}
pipelines:
  products_onboarding:
    catalogue: products
    sources: [shop_csv]
    destinations: [shop]
destinations:
  shop:
    kind: shopify
    catalogue: products
    shop_url_env: PUSH_ALERTS_SHOP_URL
    token_env: PUSH_ALERTS_SHOP_TOKEN
    title: title
    status: status
    price: price
notifications:
  slack_token_env: %(token_env)s
  slack_api_url: %(slack_url)s
  slack:
    - channel: "#shop"
      catalogues: [products]
      operations: [shop]
      verbosity: per_record
    - channel: "#push-summary"
      events: [push.failed]
    - channel: "#validation"
      operations: [validate]
    - channel: "#onboarding"
      pipelines: [products_onboarding]
      events: ["push.*"]
  webhooks:
    erp:
      url: %(hook_url)s
      events: ["push.*"]
      secret_env: %(secret_env)s
"""


class Receiver:
    """A webhook endpoint that verifies each message with the Standard Webhooks library."""

    def __init__(self) -> None:
        self.verifier = Webhook(SECRET)
        self.payloads: list[dict] = []
        self.server = RecordingServer(self._reply)
        self.url = self.server.url

    def _reply(self, request):
        self.payloads.append(self.verifier.verify(request.body, request.headers))  # raises on a bad signature
        return 204, {}, b""

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A store with three products (one priced below zero, one untitled), Shopify, Slack and a webhook receiver."""
    receiver = Receiver()
    with FakeShopify() as shop, FakeSlack() as slack:
        spec_path = tmp_path / "claro.yaml"
        spec_path.write_text(SPEC % {"token_env": TOKEN_ENV, "slack_url": slack.base_url, "hook_url": receiver.url,
                                     "secret_env": SECRET_ENV}, encoding="utf-8")
        monkeypatch.setenv("PUSH_ALERTS_SHOP_URL", shop.url)
        monkeypatch.setenv("PUSH_ALERTS_SHOP_TOKEN", shop.token)
        monkeypatch.setenv(TOKEN_ENV, "xoxb-test")
        monkeypatch.setenv(SECRET_ENV, SECRET)
        spec = load_spec(spec_path)
        store = CatalogueStore(spec, f"sqlite:///{tmp_path / 'catalogue.db'}")
        store.apply(ChangeSet("load", "products", "import", [
            Change(sku, field, value, 100)
            for sku, title, price in (("SKU-1", "Mug", 4.5), ("SKU-2", "Cup", -3), ("SKU-3", None, 2))
            for field, value in (("title", title), ("price", price), ("status", "active")) if value is not None]))
        yield spec_path, spec, store, shop, slack, receiver
        store.dispose()
    receiver.close()
    for request in slack.posts():
        assert postmessage_problems(request) == [], request.json()
        assert limit_problems(request.json()) == [], request.json()


def events(store) -> list[dict]:
    e = store.t["events"]
    with store.engine.connect() as conn:
        rows = conn.execute(e.select().where(e.c.type == PUSH_FAILED).order_by(e.c.id)).mappings().all()
    return [dict(row, payload=json.loads(row["payload"])) for row in rows]


def heard(slack) -> list[tuple[str, str]]:
    """(channel, header) of each top-level message."""
    return [(p["channel"], p["blocks"][0]["text"]["text"]) for p in (r.json() for r in slack.posts())
            if "thread_ts" not in p]


def fix(store, cs: str, sku: str, **values) -> None:
    store.apply(ChangeSet(cs, "products", "enrich", [Change(sku, f, v, 100) for f, v in values.items()]))


def test_a_push_announces_each_new_failure_once_to_the_outbox_webhooks_and_slack(world):
    _, spec, store, shop, slack, receiver = world
    dest = spec.destinations["shop"]
    plan = push_destination(store, "shop", dest)
    assert sorted(plan.failed) == ["SKU-2", "SKU-3"] and shop.contract_errors == []

    first = events(store)
    assert [(e["record"], e["catalogue"]) for e in first] == [("SKU-2", "products"), ("SKU-3", "products")]
    assert first[0]["payload"] == {
        "destination": "shop", "destination_kind": "shopify", "catalogue": "products", "record": "SKU-2",
        "channel_object": "sku-2", "status": "failed",
        "error": "input.variants.0.price: Price must be greater than or equal to 0"}  # no run: no run_id
    assert first[1]["payload"]["error"] == "input.title: Title can't be blank"
    assert len({e["change_set"] for e in first}) == 1 and first[0]["change_set"].startswith("push:shop:")

    # Slack: routes by catalogue + operation (the destination's name), by event and by pipeline (the one that
    # lists the destination); not the route for another operation.
    title = ":no_entry: Push failed: 2 records to shop"
    assert sorted(heard(slack)) == [("#onboarding", title), ("#push-summary", title), ("#shop", title)]
    posts = [r.json() for r in slack.posts()]
    thread = [p for p in posts if p["channel"] == "#shop" and "thread_ts" in p]
    listed = "\n".join(b["text"]["text"] for p in thread for b in p["blocks"] if b["type"] == "section")
    assert "SKU-2 (sku-2): input.variants.0.price: Price must be greater than or equal to 0" in listed
    assert "SKU-3 (sku-3): input.title: Title can" in listed
    summary = next(p for p in posts if p["channel"] == "#push-summary")
    assert [b for b in summary["blocks"] if b["type"] == "actions"] == []  # no run to link to
    assert "claro push status shop" in str(summary["blocks"])

    # Signed webhook deliveries, one per event, to the subscription listing `push.*`.
    sender = WebhookSender(timeout=5)
    report = sender.deliver_due(store, spec)
    sender.close()
    assert (report.delivered, report.failed) == (2, 0)
    assert [(p["type"], p["data"]["record"], p["data"]["destination"]) for p in receiver.payloads] == [
        (PUSH_FAILED, "SKU-2", "shop"), (PUSH_FAILED, "SKU-3", "shop")]
    assert receiver.payloads[1]["data"]["error"] == "input.title: Title can't be blank"

    # The same failures on the next push (they are sent again): nothing new to say.
    posts_before = len(slack.posts())
    again = push_destination(store, "shop", dest)
    assert sorted(again.failed) == ["SKU-2", "SKU-3"] and again.sent == 2
    assert len(events(store)) == 2 and len(slack.posts()) == posts_before

    # SKU-2 fixed, SKU-3's error changes: one event, for SKU-3, with what it said before.
    fix(store, "fix-2", "SKU-2", price=3.0)
    fix(store, "break-3", "SKU-3", price=-1.0)
    third = push_destination(store, "shop", dest)
    assert list(third.failed) == ["SKU-3"]
    [changed] = events(store)[2:]
    assert changed["record"] == "SKU-3" and changed["payload"]["previous_error"] == \
        "input.title: Title can't be blank"
    assert "Price must be greater than or equal to 0" in changed["payload"]["error"]
    assert sorted(heard(slack)[3:]) == [(channel, ":no_entry: Push failed: 1 record to shop")
                                        for channel in ("#onboarding", "#push-summary", "#shop")]

    # SKU-2 breaks again after being accepted: it failed newly, so it is announced again.
    fix(store, "break-2", "SKU-2", price=-2.0)
    push_destination(store, "shop", dest)
    assert [e["record"] for e in events(store)[3:]] == ["SKU-2"]
    assert ChannelState(store).counts("shop") == {"failed": 2, "pushed": 1}


def test_a_dry_run_announces_nothing(world):
    _, spec, store, shop, slack, _ = world
    plan = push_destination(store, "shop", spec.destinations["shop"], dry_run=True)
    assert sorted(plan.create) == ["sku-1", "sku-2", "sku-3"]
    assert events(store) == [] and slack.posts() == [] and shop.operations == []


def test_slack_down_or_unconfigured_never_fails_the_push_and_the_events_are_still_written(world, monkeypatch):
    spec_path, _, store, _, slack, _ = world
    down = spec_path.read_text(encoding="utf-8").replace(slack.base_url, f"http://127.0.0.1:{closed_port()}/api/")
    spec_path.write_text(down, encoding="utf-8")
    spec = load_spec(spec_path)
    store = CatalogueStore(spec, store.url)  # the same catalogue, under the spec whose Slack is down
    plan = push_destination(store, "shop", spec.destinations["shop"])
    assert sorted(plan.failed) == ["SKU-2", "SKU-3"]
    assert [e["record"] for e in events(store)] == ["SKU-2", "SKU-3"]

    monkeypatch.delenv(TOKEN_ENV)  # no token: Slack is not attempted at all
    fix(store, "break-1", "SKU-1", price=-9.0)
    push_destination(store, "shop", spec.destinations["shop"])
    assert [e["record"] for e in events(store)] == ["SKU-2", "SKU-3", "SKU-1"]
    assert slack.posts() == []


def test_the_destination_asset_announces_with_its_run(world, tmp_path):
    spec_path, _, _, _, slack, _ = world
    defs = build_definitions(spec_path, tmp_path / "home")
    claro = defs.resources["claro"]
    claro.store.apply(ChangeSet("load", "products", "import", [
        Change("SKU-9", "title", "Plate", 100), Change("SKU-9", "price", -4.0, 100)]))
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("products_shop").execute_in_process(instance=instance)
    assert result.success  # a refused record fails the asset's check, not the run
    [event] = events(claro.store)
    assert event["payload"]["run_id"] == result.run_id and event["change_set"] == f"push:shop:{result.run_id}"
    summary = next(r.json() for r in slack.posts() if r.json()["channel"] == "#push-summary")
    [button] = [b for b in summary["blocks"] if b["type"] == "actions"][0]["elements"]
    assert button["url"].endswith(f"/runs/{result.run_id}")


def test_claro_push_announces_too_and_status_lists_the_entries(world, tmp_path):
    """The CLI's push (a process of its own) goes through the same path: events, Slack, then `push status`."""
    spec_path, spec, _, shop, slack, _ = world
    home = tmp_path / "cli-home"
    home.mkdir()
    store = open_store(spec, home=home)
    store.apply(ChangeSet("load", "products", "import", [
        Change("SKU-7", "title", "Bowl", 100), Change("SKU-7", "price", -1.0, 100)]))
    pushed = claro("push", "shop", home=home, spec=spec_path)
    assert pushed.returncode == 1, pushed.stderr  # a record was refused
    [event] = events(store)
    assert event["record"] == "SKU-7" and "run_id" not in event["payload"]
    assert sorted(heard(slack)) == [(c, ":no_entry: Push failed: 1 record to shop")
                                    for c in ("#onboarding", "#push-summary", "#shop")]
    status = claro("push", "status", "shop", home=home, spec=spec_path)
    assert status.returncode == 0, status.stderr
    assert "push.failed SKU-7 (sku-7): input.variants.0.price: Price must be greater than or equal to 0" \
        in status.stdout
    again = claro("push", "shop", home=home, spec=spec_path)
    assert again.returncode == 1 and len(events(store)) == 1 and len(heard(slack)) == 3  # told once
    store.dispose()
