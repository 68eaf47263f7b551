"""End to end on the demo: products published -> the chained `products_enrichment` pipeline enriches the missing
suppliers (GTIN company prefix lookup) -> proposals under 85 wait for the merchandising reviewers, and the run's
review alert goes to their channel (#merchandising), through the real run-status sensor and a local Slack fake.
Also: the demo's nightly schedule runs products/enrich."""

import itertools
import shutil
from typing import Any

import dagster as dg
import pandas as pd
import pytest
from batches import publish_demo_products
from http_fakes import RecordingServer, Request

from claro_dagster.catalogue.review import ReviewQueue
from claro_dagster.definitions import build_definitions
from claro_dagster.local import execute
from claro_dagster.resources.slack import SlackNotifier
from claro_dagster.sensors.notifications import SENSOR_COMPLETED, build_notification_sensors
from claro_dagster.spec import DEMO_DIR


class FakeSlack(RecordingServer):
    """Slack's Web API on 127.0.0.1 (as in tests/sensors/test_notifications.py): answers chat.postMessage."""

    def __init__(self) -> None:
        self._ts = itertools.count(1)
        super().__init__(self._reply)

    def posts(self) -> list[dict[str, Any]]:
        return [r.json() for r in self.requests if r.path.endswith("/chat.postMessage")]

    def heard(self) -> list[tuple[str, str]]:
        return [(p["channel"], p["blocks"][0]["text"]["text"]) for p in self.posts() if "thread_ts" not in p]

    def _reply(self, request: Request):
        n = next(self._ts)
        ts = f"{1764300000 + n}.{n:06d}"
        return 200, {}, {"ok": True, "channel": "C0123456789", "ts": ts,
                         "message": {"type": "message", "text": request.json().get("text", ""), "ts": ts}}


@pytest.fixture
def demo(tmp_path, monkeypatch):
    # Slack is off while the definitions are built (their runs post nothing to slack.com); the run-status sensor
    # below is built with the token set, and posts to the local fake.
    monkeypatch.delenv("SLACK_BOT_TOKEN", raising=False)
    monkeypatch.delenv("CLARO_MODEL_URL", raising=False)  # offline, as the demo runs by default
    shutil.copyfile(DEMO_DIR / "claro.yaml", tmp_path / "claro.yaml")
    shutil.copytree(DEMO_DIR / "reference", tmp_path / "reference")
    return build_definitions(tmp_path / "claro.yaml", tmp_path / "home")


def test_enrichment_under_85_lands_with_merchandising_and_its_alert_in_their_channel(demo, monkeypatch):
    claro = demo.resources["claro"]
    with dg.instance_for_test() as instance, FakeSlack() as slack:
        publish_demo_products(demo, instance)  # the cp1252 file's 10 products name no supplier
        key = dg.AssetKey(["products", "enrich"])
        result = execute(demo, instance, "products_enrichment", selection=[key])
        assert result.success
        metadata = result.asset_materializations_for_node("products__enrich")[0].metadata
        assert metadata["filled/supplier"].value == 0 and metadata["queued/supplier"].value == 10
        assert metadata["queued"].value == 10 and metadata["rejected"].value == 0

        items = ReviewQueue(claro.store).list(operation="enrich")
        assert len(items) == 10
        assert {(i.field, i.new, i.confidence, i.reviewers) for i in items} == {
            ("supplier", "SUP-0001", 81.0, ("merchandising",))}  # 90 for a file x 0.9 for a prefix match
        assert all(i.citation == "reference/gtin_company_prefixes.csv line 2: prefix=5060123, brand=Acme Outdoor, "
                                 "supplier=SUP-0001" for i in items)

        monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-test")
        sensors = {s.name: s for s in build_notification_sensors(claro.spec, "http://dagster.test:3000")}
        notifier = SlackNotifier(token="xoxb-test", base_url=f"{slack.url}/api/",
                                 webserver_url="http://dagster.test:3000")
        context = dg.build_run_status_sensor_context(
            sensor_name=SENSOR_COMPLETED, dagster_instance=instance, dagster_run=result.dagster_run,
            dagster_event=result.get_run_success_event(), resources={"claro": claro, "slack": notifier})
        sensors[SENSOR_COMPLETED](context)
        heard = slack.heard()
        assert ("#merchandising", ":eyes: 10 enriched values wait for review in products (merchandising)") in heard
        # the reviewers' channel gets the records, each with its confidence and citation, in a thread
        replies = [p for p in slack.posts() if p["channel"] == "#merchandising" and "thread_ts" in p]
        assert replies and "ACM-10101 · supplier: → SUP-0001 (81%)" in str(replies[0]["blocks"])


def test_the_demo_schedules_enrichment_nightly(demo):
    schedule = demo.resolve_schedule_def("nightly_enrichment")
    assert schedule.job_name == "products_enrich"
    assert schedule.cron_schedule == "30 2 * * *" and schedule.execution_timezone == "Europe/London"
    job = demo.resolve_job_def("products_enrich")
    assert [k.to_user_string() for k in job.asset_layer.executable_asset_keys] == ["products/enrich"]


def gtin(i: int) -> str:
    from stdnum import ean

    body = f"506012399{i:03d}"
    return body + ean.calc_check_digit(body)


def test_batch_enrichment_proposes_at_batch_enriched_and_writes_at_records(tmp_path, monkeypatch):
    """`batch_enrichment: true`: batch_enriched proposes the batch's missing suppliers; records publishes the batch,
    then writes the proposals through the enrich gate in the same run (alerting the reviewers' channel)."""
    from claro_dagster.local import receive, run_batch

    monkeypatch.delenv("SLACK_BOT_TOKEN", raising=False)
    monkeypatch.delenv("CLARO_MODEL_URL", raising=False)
    text = (DEMO_DIR / "claro.yaml").read_text(encoding="utf-8")
    anchor = "    review_checkpoint: true\n"
    assert text.count(anchor) == 1
    (tmp_path / "claro.yaml").write_text(text.replace(anchor, anchor + "    batch_enrichment: true\n"))
    shutil.copytree(DEMO_DIR / "reference", tmp_path / "reference")
    defs = build_definitions(tmp_path / "claro.yaml", tmp_path / "home")
    claro = defs.resources["claro"]
    claro.store.import_records("suppliers", pd.DataFrame({"supplier_id": ["SUP-0001"], "name": ["Acme Outdoor Ltd"]}),
                               change_set_id="suppliers")  # the reference's target: a proposed key must exist
    rows = "".join(f"TST-{i:04d},Trail mug {i},Acme Outdoor,{gtin(i)},{i}.50,0.3,grey,M,,active\n" for i in (1, 2))
    inbox = claro.inbox_dir("acme_csv")
    inbox.mkdir(parents=True)
    (inbox / "mugs.csv").write_text("sku,title,brand,gtin,price,weight,colour,size,supplier,status\n" + rows)
    with dg.instance_for_test() as instance, FakeSlack() as slack:
        result = run_batch(defs, instance, receive(claro, "acme_csv", inbox / "mugs.csv"), quiet=True, notify=False)
        assert result.success
        enriched = result.asset_materializations_for_node("products__batch_enriched")[0].metadata
        assert enriched["queued/supplier"].value == 2 and enriched["queued_for_review"].value == 0
        published = result.asset_materializations_for_node("products__records")[0].metadata
        assert published["records_created"].value == 2 and published["enriched_queued"].value == 2
        items = ReviewQueue(claro.store).list(operation="enrich")
        assert {(i.record, i.new, i.confidence, i.reviewers, i.run_id) for i in items} == {
            (f"TST-000{n}", "SUP-0001", 81.0, ("merchandising",), result.run_id) for n in (1, 2)}
        assert claro.store.record("products", "TST-0001")["supplier"] is None  # waits for the merchandisers

        monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-test")
        sensors = {s.name: s for s in build_notification_sensors(claro.spec, "http://dagster.test:3000")}
        notifier = SlackNotifier(token="xoxb-test", base_url=f"{slack.url}/api/",
                                 webserver_url="http://dagster.test:3000")
        context = dg.build_run_status_sensor_context(
            sensor_name=SENSOR_COMPLETED, dagster_instance=instance, dagster_run=result.dagster_run,
            dagster_event=result.get_run_success_event(), resources={"claro": claro, "slack": notifier})
        sensors[SENSOR_COMPLETED](context)
        assert ("#merchandising", ":eyes: 2 enriched values wait for review in products (merchandising)") \
            in slack.heard()
