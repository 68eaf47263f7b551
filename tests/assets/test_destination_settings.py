"""A run needs only the settings of what it runs: what a pipeline publishes (analyse, export, its destinations) runs
as one run of Dagster's asset job with none of the destinations' variables set, each unconfigured destination saying
which variable to set; run alone (its own job), such a destination fails naming it. And a destination outside every
pipeline still has its asset and job."""

from __future__ import annotations

import shutil

import dagster as dg
import pandas as pd
import psycopg
import pytest

from claro_dagster.definitions import build_definitions
from claro_dagster.spec import DEMO_DIR

DEMO_VARIABLES = ("CLARO_WAREHOUSE_URL", "CLARO_S3_ENDPOINT_URL", "CLARO_SHOPIFY_SHOP_URL", "CLARO_SHOPIFY_TOKEN",
                  "CLARO_AMAZON_REFRESH_TOKEN")
ONBOARDING_DESTINATIONS = "    destinations: [shopify_store, amazon_listings, catalogue_dump, warehouse]\n"
PUBLISHED = [dg.AssetKey(["products", k]) for k in
             ("analyse", "export", "shopify_store", "amazon_listings", "catalogue_dump", "warehouse")]


@pytest.fixture
def unset(monkeypatch):
    for name in DEMO_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("CLARO_DBT_PROJECT", raising=False)
    monkeypatch.delenv("CLARO_DATABASE_URL", raising=False)


def demo_defs(tmp_path, text: str | None = None) -> dg.Definitions:
    spec = tmp_path / "claro.yaml"
    if text is None:
        shutil.copyfile(DEMO_DIR / "claro.yaml", spec)
    else:
        spec.write_text(text)
    defs = build_definitions(spec, tmp_path / "home")
    defs.resources["claro"].store.import_records(
        "products", pd.DataFrame([{"sku": "AB-1", "title": "Mug"}, {"sku": "AB-2", "title": "Cup"}]),
        change_set_id="settings-test")
    return defs


def materialized(result: dg.ExecuteInProcessResult) -> set[str]:
    return {e.asset_key.path[-1] for e in result.get_asset_materialization_events()}


def test_what_a_pipeline_publishes_runs_without_the_destinations_settings(tmp_path, unset, monkeypatch, pg_url):
    monkeypatch.setenv("CLARO_WAREHOUSE_URL", pg_url)  # only the warehouse is configured here
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS catalogue_products")
    defs = demo_defs(tmp_path)
    with dg.instance_for_test() as instance:
        job = defs.resolve_implicit_global_asset_job_def()  # as `DagsterLauncher.launch` submits a pipeline
        result = job.execute_in_process(instance=instance, asset_selection=PUBLISHED, raise_on_error=False)
        logs = [r.user_message for r in instance.all_logs(result.run_id) if r.level >= 30]
    assert result.success
    assert materialized(result) == {"analyse", "export", "warehouse"}
    skipped = [m for m in logs if m.startswith("skipped: destination")]
    assert len(skipped) == 3, logs
    assert any("set CLARO_S3_ENDPOINT_URL in the environment of the code location" in m for m in skipped), skipped
    assert any("destination shopify_store is not configured" in m and "CLARO_SHOPIFY" in m for m in skipped)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM catalogue_products").fetchone()[0] == 2
        conn.execute("DROP TABLE catalogue_products")


def test_an_unconfigured_destination_run_alone_fails_naming_its_variable(tmp_path, unset):
    defs = demo_defs(tmp_path)
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("products_warehouse").execute_in_process(instance=instance,
                                                                               raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert ("destination warehouse is not configured where Dagster runs: set CLARO_WAREHOUSE_URL"
            in failure.step_failure_data.error.message)


def test_a_destination_outside_every_pipeline_has_its_asset_and_job(tmp_path, unset, monkeypatch, pg_url):
    text = (DEMO_DIR / "claro.yaml").read_text()
    assert ONBOARDING_DESTINATIONS in text, "the demo's products_onboarding changed: update this test"
    text = text.replace(ONBOARDING_DESTINATIONS, "    destinations: [catalogue_dump]\n")
    monkeypatch.setenv("CLARO_WAREHOUSE_URL", pg_url)
    monkeypatch.setenv("CLARO_S3_ENDPOINT_URL", "http://127.0.0.1:9")  # configured (never reached here)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS catalogue_products")
    defs = demo_defs(tmp_path, text)
    graph = defs.resolve_asset_graph()
    for name in ("warehouse", "shopify_store", "amazon_listings"):  # listed by no pipeline now
        key = dg.AssetKey(["products", name])
        assert graph.get(key).parent_keys == {dg.AssetKey(["products", "records"])}
        assert defs.resolve_job_def(f"products_{name}").asset_layer.selected_asset_keys == {key}
    # the automatic sync after each batch is the pipeline's own destinations only
    assert defs.resolve_job_def("products_onboarding_destinations").asset_layer.selected_asset_keys == {
        dg.AssetKey(["products", "catalogue_dump"])}
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("products_warehouse").execute_in_process(instance=instance)
    assert result.success and materialized(result) == {"warehouse"}
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM catalogue_products").fetchone()[0] == 2
        conn.execute("DROP TABLE catalogue_products")
