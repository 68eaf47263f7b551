"""`kind: bigquery` sources: incremental pulls by watermark (ties at the boundary kept) that become batches through the
onboarding stages, against the contract-checked fake (tests/bigquery_fake.py, BigQuery v2 discovery document)."""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg
import pytest
from batches import tick

from claro_dagster.catalogue.batches import BatchRegistry
from claro_dagster.definitions import build_definitions
from claro_dagster.resources.bigquery import BigQueryTable
from claro_dagster.sensors.inbound import bigquery_cursor_name
from claro_dagster.spec import DEMO_DIR
from tests.bigquery_fake import FakeBigQuery

PROJECT, DATASET, TABLE = "acme-erp", "exports", "items"
FIELDS = [{"name": "sku", "type": "STRING", "mode": "REQUIRED"}, {"name": "title", "type": "STRING"},
          {"name": "price", "type": "FLOAT"}, {"name": "updated_at", "type": "TIMESTAMP"}]
T0 = dt.datetime(2026, 11, 30, 9, 0, tzinfo=dt.UTC)


def item(sku: str, title: str, price: float, minutes: int) -> dict:
    return {"sku": sku, "title": title, "price": price, "updated_at": T0 + dt.timedelta(minutes=minutes)}


@pytest.fixture
def fake():
    with FakeBigQuery(reads_until_done=1) as server:
        yield server
        assert server.contract_errors == []


def pull(fake, cursor, limit=100):
    table = BigQueryTable(PROJECT, endpoint_url=fake.url, sleep=lambda s: None)
    return table.pull(f"`{PROJECT}.{DATASET}.{TABLE}`", "sku", "updated_at", cursor, limit)


def test_a_pull_takes_rows_newer_than_the_watermark_and_a_second_pull_takes_nothing(fake) -> None:
    fake.create_table(PROJECT, DATASET, TABLE, FIELDS, [item("ACM-20001", "Kettle", 20.0, 0),
                                                         item("ACM-20002", "Toaster", 30.0, 5)])
    rows, cursor = pull(fake, None)
    assert list(rows["sku"]) == ["ACM-20001", "ACM-20002"]
    assert cursor["keys"] == ["ACM-20002"] and cursor["type"] == "TIMESTAMP"
    rows, again = pull(fake, cursor)
    assert again is None and rows.empty
    fake.tables[(PROJECT, DATASET, TABLE)]["rows"].append(item("ACM-20003", "Mug", 5.0, 10))
    rows, _ = pull(fake, cursor)
    assert list(rows["sku"]) == ["ACM-20003"]
    # every query was a job with the watermark as a typed parameter, never pasted into the SQL
    last = [c for c in fake.calls("bigquery.jobs.insert")][-1].body["configuration"]["query"]
    assert "@watermark" in last["query"] and str(T0.year) not in last["query"]
    assert last["queryParameters"][0]["parameterType"] == {"type": "TIMESTAMP"}


def test_rows_sharing_the_watermark_at_the_boundary_are_not_lost(fake) -> None:
    same = [item(f"ACM-2000{i}", f"Item {i}", float(i), 0) for i in (1, 2, 3)]
    fake.create_table(PROJECT, DATASET, TABLE, FIELDS, same)
    rows, cursor = pull(fake, None, limit=2)  # the page ends between rows of the same watermark
    assert list(rows["sku"]) == ["ACM-20001", "ACM-20002"]
    rows, cursor = pull(fake, cursor, limit=2)
    assert list(rows["sku"]) == ["ACM-20003"]
    # a row written later with the very same watermark (and a smaller key) still arrives
    fake.tables[(PROJECT, DATASET, TABLE)]["rows"].append(item("ACM-20000", "Late", 1.0, 0))
    rows, cursor = pull(fake, cursor)
    assert list(rows["sku"]) == ["ACM-20000"]
    assert pull(fake, cursor)[1] is None


SOURCE = f"""\
  erp_bq:
    kind: bigquery
    catalogue: products
    project: {PROJECT}
    dataset: {DATASET}
    table: {TABLE}
    key: sku
    watermark: updated_at
    endpoint_url_env: CLARO_BQ_ENDPOINT
"""




def test_each_pull_becomes_a_batch_through_the_onboarding_stages(fake, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CLARO_BQ_ENDPOINT", fake.url)
    fake.create_table(PROJECT, DATASET, TABLE, FIELDS, [item("ACM-20001", "Enamel kettle", 24.5, 0),
                                                         item("ACM-20002", "Steel toaster", 39.0, 5)])
    text = (DEMO_DIR / "claro.yaml").read_text(encoding="utf-8")
    text = text.replace("\nsources:\n", "\nsources:\n" + SOURCE, 1)
    text = text.replace("sources: [acme_csv, globex_xlsx]", "sources: [acme_csv, globex_xlsx, erp_bq]")
    (tmp_path / "claro.yaml").write_text(text, encoding="utf-8")
    defs = build_definitions(tmp_path / "claro.yaml", tmp_path / "home")
    claro = defs.resources["claro"]
    with dg.instance_for_test() as instance:
        [run] = tick(defs, instance, "erp_bq_bigquery")
        assert run.success
        [batch] = [b for b in BatchRegistry(claro.store).list() if b.source == "erp_bq"]
        assert batch.status == "published"
        record = claro.store.record("products", "ACM-20002")
        assert (record["title"], record["price"]) == ("Steel toaster", 39.0)
        assert claro.store.get_cursor(bigquery_cursor_name("erp_bq"))  # the watermark moved with the batch
        assert tick(defs, instance, "erp_bq_bigquery") == []  # nothing new: no pull file, no batch
        fake.tables[(PROJECT, DATASET, TABLE)]["rows"].append(item("ACM-20001", "Enamel kettle", 22.0, 9))
        [run] = tick(defs, instance, "erp_bq_bigquery")
        assert run.success and claro.store.record("products", "ACM-20001")["price"] == 22.0
        assert len([b for b in BatchRegistry(claro.store).list() if b.source == "erp_bq"]) == 2


def test_a_query_source_is_pulled_as_a_subquery(fake) -> None:
    fake.create_table(PROJECT, DATASET, TABLE, FIELDS, [item("ACM-20001", "Kettle", 20.0, 0),
                                                         item("ACM-20002", "Toaster", 5.0, 5)])
    table = BigQueryTable(PROJECT, endpoint_url=fake.url, sleep=lambda s: None)
    rows, cursor = table.pull(f"(SELECT sku, title, price, updated_at FROM `{PROJECT}.{DATASET}.{TABLE}` "
                              "WHERE price > 10)", "sku", "updated_at", None, 100)
    assert list(rows["sku"]) == ["ACM-20001"] and cursor["keys"] == ["ACM-20001"]


def test_a_pulled_file_is_requested_again_until_its_batch_is_received(fake, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CLARO_BQ_ENDPOINT", fake.url)
    fake.create_table(PROJECT, DATASET, TABLE, FIELDS, [item("ACM-20001", "Enamel kettle", 24.5, 0)])
    text = (DEMO_DIR / "claro.yaml").read_text(encoding="utf-8")
    text = text.replace("\nsources:\n", "\nsources:\n" + SOURCE, 1)
    text = text.replace("sources: [acme_csv, globex_xlsx]", "sources: [acme_csv, globex_xlsx, erp_bq]")
    (tmp_path / "claro.yaml").write_text(text, encoding="utf-8")
    defs = build_definitions(tmp_path / "claro.yaml", tmp_path / "home")
    claro = defs.resources["claro"]
    sensor = defs.resolve_sensor_def("erp_bq_bigquery")
    with dg.instance_for_test() as instance:
        def evaluate():
            context = dg.build_sensor_context(instance=instance, instance_ref=instance.get_ref(), definitions=defs,
                                              resources={
                k: defs.resources[k] for k in sensor.required_resource_keys})
            return sensor.evaluate_tick(context)

        first = evaluate()  # the run it requests never starts (e.g. the daemon stopped)
        second = evaluate()
        assert [r.run_key for r in first.run_requests] == [r.run_key for r in second.run_requests]
        [pulled] = claro.inbox_dir("erp_bq").glob("*.csv")  # pulled once, requested twice
        note = json.loads(pulled.with_suffix(".pull.json").read_text())
        assert (note["from"], note["after"], note["upto"]["keys"], note["rows"]) == (
            f"`{PROJECT}.{DATASET}.{TABLE}`", None, ["ACM-20001"], 1)
        fake.fail("bigquery.jobs.insert", 400, "invalidQuery")
        cursor = claro.store.get_cursor(bigquery_cursor_name("erp_bq"))
        with pytest.raises(Exception) as failed:
            evaluate()
        chain = [failed.value, failed.value.__cause__, failed.value.__context__]
        assert any("pull from `acme-erp.exports.items`" in str(e) for e in chain)
        assert claro.store.get_cursor(bigquery_cursor_name("erp_bq")) == cursor  # a failed pull moves nothing
