"""`kind: bigquery` destination assets on the demo catalogue, against the contract-checked fake
(tests/bigquery_fake.py follows Google's BigQuery v2 discovery document, tests/contracts/google/bigquery.v2.json)."""

from __future__ import annotations

import datetime as dt
import math

import dagster as dg
import pytest
from batches import demo_spec_syncing, publish_demo_products

from claro_dagster.catalogue.changes import Change, ChangeSet
from claro_dagster.catalogue.channels import cursor_name
from claro_dagster.definitions import build_definitions
from claro_dagster.spec import DEMO_DIR
from tests.bigquery_fake import FakeBigQuery

PROJECT, DATASET = "acme-analytics", "catalogue"
DESTINATIONS = """\
  bq_append:
    kind: bigquery
    catalogue: products
    project: acme-analytics
    dataset: catalogue
    table: products_log
    mode: append
    endpoint_url_env: CLARO_BQ_ENDPOINT
  bq_replace:
    kind: bigquery
    catalogue: products
    project: acme-analytics
    dataset: catalogue
    table: products_snapshot
    mode: replace
    filter: 'status != "archived"'
    endpoint_url_env: CLARO_BQ_ENDPOINT
  bq_merge:
    kind: bigquery
    catalogue: products
    project: acme-analytics
    dataset: catalogue
    table: products
    mode: merge
    partition_by: {attribute: launch_date, granularity: MONTH}
    cluster_by: [category, brand]
    endpoint_url_env: CLARO_BQ_ENDPOINT
"""


def demo_spec(extra_attribute: str = "") -> str:
    text = (DEMO_DIR / "claro.yaml").read_text(encoding="utf-8")
    text = demo_spec_syncing("bq_append", "bq_replace", "bq_merge", text=text)
    text = text.replace("    table: catalogue_products\n", "    table: catalogue_products\n" + DESTINATIONS)
    if extra_attribute:
        text = text.replace("      status:\n        type: enum\n        values: [active, draft, archived]\n",
                            extra_attribute + "      status:\n        type: enum\n        values: [active, draft, "
                                              "archived]\n", 1)
    return text


@pytest.fixture
def published(tmp_path, monkeypatch):
    with FakeBigQuery(reads_until_done=2) as fake:
        monkeypatch.setenv("CLARO_BQ_ENDPOINT", fake.url)
        spec = tmp_path / "claro.yaml"
        spec.write_text(demo_spec(), encoding="utf-8")
        defs = build_definitions(spec, tmp_path / "home")
        with dg.instance_for_test() as instance:
            publish_demo_products(defs, instance)
            yield defs, defs.resources["claro"], instance, fake
        assert fake.contract_errors == []


def sync(defs, instance, name, raise_on_error=True):
    result = dg.materialize(list(defs.assets), selection=[dg.AssetKey(["products", name])], instance=instance,
                            resources=defs.resources, raise_on_error=raise_on_error)
    if not raise_on_error and not result.success:
        return result
    [event] = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()}


def same_as_catalogue(rows: list[dict], claro, filter: str | None = None) -> None:
    """Every loaded row equals its record in the catalogue, column by column."""
    records = claro.store.records("products", filter=filter)
    assert sorted(r["sku"] for r in rows) == sorted(records["sku"])
    by_sku = {r["sku"]: r for r in rows}
    for record in records.to_dict("records"):
        row = by_sku[record["sku"]]
        for name, value in record.items():
            got = row[name]
            if value is None or (isinstance(value, float) and math.isnan(value)):
                assert got is None, (record["sku"], name)
            elif isinstance(got, dt.date):
                assert got.isoformat() == str(value)[:10], (record["sku"], name)
            else:
                assert got == value, (record["sku"], name, got, value)


def reprice(claro, sku: str, old: float, new: float, run: str) -> None:
    claro.store.apply(ChangeSet(run, "products", "enrich", [Change(sku, "price", new)]))


def test_merge_loads_the_catalogue_then_only_what_changed(published) -> None:
    defs, claro, instance, fake = published
    first = sync(defs, instance, "bq_merge")
    assert (first["rows_sent"], first["inserted"], first["updated"]) == (10, 10, 0) and first["created_table"]
    same_as_catalogue(fake.rows(PROJECT, DATASET, "products"), claro)
    resource = fake.tables[(PROJECT, DATASET, "products")]["resource"]
    assert resource["timePartitioning"] == {"type": "MONTH", "field": "launch_date"}
    assert resource["clustering"] == {"fields": ["category", "brand"]}
    jobs = len(fake.calls("bigquery.jobs.insert"))
    assert sync(defs, instance, "bq_merge")["rows_sent"] == 0  # nothing changed: nothing sent
    assert len(fake.calls("bigquery.jobs.insert")) == jobs
    reprice(claro, "ACM-10101", 99, 99.5, "fix-1")
    third = sync(defs, instance, "bq_merge")
    assert (third["rows_sent"], third["inserted"], third["updated"]) == (1, 0, 1)
    [staged] = [t for j, t in fake.uploads.items() if j == third["jobs"][0]]
    assert staged.column("sku").to_pylist() == ["ACM-10101"]  # exactly that record was loaded
    same_as_catalogue(fake.rows(PROJECT, DATASET, "products"), claro)
    assert [k for k in fake.tables if k[2].startswith("_claro_stage")] == []


def test_append_sends_each_change_once(published) -> None:
    defs, claro, instance, fake = published
    assert sync(defs, instance, "bq_append")["rows_sent"] == 10
    assert sync(defs, instance, "bq_append")["rows_sent"] == 0
    reprice(claro, "ACM-10101", 99, 99.5, "fix-1")
    third = sync(defs, instance, "bq_append")
    assert third["rows_sent"] == 1
    rows = fake.rows(PROJECT, DATASET, "products_log")
    assert len(rows) == 11 and [r["price"] for r in rows if r["sku"] == "ACM-10101"][-1] == 99.5
    assert third["jobs"][0].startswith("claro_bq_append_")


def test_an_append_retried_after_a_lost_cursor_does_not_duplicate(published) -> None:
    defs, claro, instance, fake = published
    first = sync(defs, instance, "bq_append")
    claro.store.set_cursor(cursor_name("bq_append"), "0")  # as if the run died after the load, before the cursor
    again = sync(defs, instance, "bq_append")
    assert again["found_existing_job"] and again["jobs"] == first["jobs"]
    assert len(fake.rows(PROJECT, DATASET, "products_log")) == 10


def test_replace_writes_the_whole_filtered_catalogue_each_time(published) -> None:
    defs, claro, instance, fake = published
    assert sync(defs, instance, "bq_replace")["rows_sent"] == claro.store.count("products", ) - len(
        claro.store.records("products", filter='status == "archived"'))
    reprice(claro, "ACM-10101", 99, 99.5, "fix-1")
    sync(defs, instance, "bq_replace")
    same_as_catalogue(fake.rows(PROJECT, DATASET, "products_snapshot"), claro, filter='status != "archived"')
    loads = [c.body["metadata"]["configuration"]["load"] for c in fake.calls("bigquery.jobs.insert")]
    assert [c["writeDisposition"] for c in loads] == ["WRITE_TRUNCATE", "WRITE_TRUNCATE"]


def test_a_failed_load_names_the_record_and_leaves_the_cursor(published) -> None:
    defs, claro, instance, fake = published
    sync(defs, instance, "bq_merge")
    cursor = claro.store.get_cursor(cursor_name("bq_merge"))
    old = claro.store.record("products", "ACM-10102")["title"]
    long_title = "Stainless steel " * 12  # 192 characters; the column is STRING(150) like the attribute
    claro.store.apply(ChangeSet("enrich-1", "products", "enrich", [Change("ACM-10102", "title", long_title)]))
    result = sync(defs, instance, "bq_merge", raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.cause.message if failure.step_failure_data.error.cause else \
        failure.step_failure_data.error.message
    assert "record 'ACM-10102'" in message and "title" in message and "Nothing was marked as sent" in message
    assert claro.store.get_cursor(cursor_name("bq_merge")) == cursor
    assert fake.rows(PROJECT, DATASET, "products")  # the earlier load is intact
    claro.store.apply(ChangeSet("enrich-2", "products", "enrich", [Change("ACM-10102", "title", old)]))
    assert sync(defs, instance, "bq_merge")["rows_sent"] == 1


def test_a_type_change_is_refused_pointing_at_schema_diff(published) -> None:
    defs, claro, instance, fake = published
    sync(defs, instance, "bq_merge")
    for f in fake.tables[(PROJECT, DATASET, "products")]["resource"]["schema"]["fields"]:
        if f["name"] == "weight":
            f["type"] = "STRING"
    reprice(claro, "ACM-10101", 99, 99.5, "fix-1")
    result = sync(defs, instance, "bq_merge", raise_on_error=False)
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "claro schema-diff" in str(failure.step_failure_data.error.to_string())
    assert "weight is STRING in the table but FLOAT" in str(failure.step_failure_data.error.to_string())


def test_a_new_attribute_becomes_a_new_column(published, tmp_path) -> None:
    defs, claro, instance, fake = published
    sync(defs, instance, "bq_merge")
    (tmp_path / "claro.yaml").write_text(demo_spec("      season:\n        type: text\n"), encoding="utf-8")
    defs = build_definitions(tmp_path / "claro.yaml", tmp_path / "home")
    claro = defs.resources["claro"]
    claro.store.apply(ChangeSet("season-1", "products", "enrich", [Change("ACM-10101", "season", "SS26")]))
    result = sync(defs, instance, "bq_merge")
    assert result["added_columns"] == ["season"] and result["rows_sent"] == 1
    assert fake.schema(PROJECT, DATASET, "products")["season"] == "STRING"
    assert {r["sku"]: r["season"] for r in fake.rows(PROJECT, DATASET, "products")}["ACM-10101"] == "SS26"


def test_a_destination_whose_key_variable_is_unset_is_left_out_of_the_automatic_sync(tmp_path, monkeypatch) -> None:
    from claro_dagster.assets.catalogue_ops import missing_env

    monkeypatch.delenv("CLARO_BQ_KEY", raising=False)
    monkeypatch.setenv("CLARO_BQ_ENDPOINT", "http://127.0.0.1:9")
    spec = tmp_path / "claro.yaml"
    spec.write_text(demo_spec().replace("    endpoint_url_env: CLARO_BQ_ENDPOINT\n  bq_replace:",
                                        "    endpoint_url_env: CLARO_BQ_ENDPOINT\n    credentials_env: CLARO_BQ_KEY\n"
                                        "  bq_replace:"), encoding="utf-8")
    defs = build_definitions(spec, tmp_path / "home")
    dests = defs.resources["claro"].spec.destinations
    assert missing_env(dests["bq_append"]) == "CLARO_BQ_KEY" and missing_env(dests["bq_merge"]) is None
    synced = defs.resolve_job_def("products_onboarding_destinations").asset_layer.selected_asset_keys
    assert dg.AssetKey(["products", "bq_merge"]) in synced and dg.AssetKey(["products", "bq_append"]) not in synced
    assert dg.AssetKey(["products", "bq_append"]) in {k for a in defs.assets for k in a.keys}  # runnable by hand
