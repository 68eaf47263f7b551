"""The REST API and `ClaroClient` against a real Dagster webserver and daemon: a run started through the API
runs in Dagster and the client waits for its end; a pipeline runs with none of its destinations' variables set, each
such destination saying which variable to set, and run alone such a destination fails naming it."""

from __future__ import annotations

import pytest

from claro_dagster.client import RunFailed, TargetUnavailable
from tests.e2e.orchestrators import client, run_warnings, served_api

pytestmark = pytest.mark.e2e


def test_a_run_started_through_the_api_is_awaited_by_the_client(dagster_stack):
    with served_api(dagster_stack, "ci") as (url, token):
        api = client(url, token)
        run_id = api.run("products", "analyse")
        done = api.wait(run_id, timeout=300, poll=1)
    assert (done.status, done.done) == ("SUCCESS", True)
    (run,) = [r for r in dagster_stack.runs() if r["runId"] == run_id]
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert tags["claro/launched_by"] == "api:ci" and tags["claro/target"] == "analyse"


def test_a_pipeline_needs_only_the_settings_of_what_it_runs(dagster_stack):
    """The demo's products_onboarding publishes to Shopify, Amazon, S3 and a warehouse table, and the stack has none
    of their variables (the conftest's stack: no extra environment)."""
    with served_api(dagster_stack, "ci", [{"sku": "AB-1234", "title": "Mug"}]) as (url, token):
        api = client(url, token)
        pipeline_run = api.run("products", "products_onboarding")
        done = api.wait(pipeline_run, timeout=300, poll=1)
        alone = api.run("products", "warehouse")
        with pytest.raises(RunFailed) as failed:
            api.wait(alone, timeout=300, poll=1)
        with pytest.raises(TargetUnavailable) as no_dbt:  # the code location has no dbt project
            api.run("products", "dbt_build")
    assert done.status == "SUCCESS"
    assert {m["assetKey"]["path"][-1] for m in dagster_stack.graphql(MATERIALIZED, runId=pipeline_run)[
        "runOrError"]["assetMaterializations"]} == {"analyse", "export"}
    skipped = [m for m in run_warnings(dagster_stack, pipeline_run) if m.startswith("skipped: destination")]
    assert sorted(m.split()[2] for m in skipped) == ["amazon_listings", "catalogue_dump", "shopify_store",
                                                    "warehouse"], skipped
    assert any("set CLARO_WAREHOUSE_URL in the environment of the code location" in m for m in skipped)
    assert any("set CLARO_S3_ENDPOINT_URL" in m for m in skipped)
    assert "destination warehouse is not configured where Dagster runs: set CLARO_WAREHOUSE_URL" in str(failed.value)
    assert dagster_stack.run(alone)["status"] == "FAILURE"
    assert no_dbt.value.target == "dbt_build" and "set CLARO_DBT_PROJECT" in str(no_dbt.value)


MATERIALIZED = """
query Materialized($runId: ID!) {
  runOrError(runId: $runId) { ... on Run { assetMaterializations { assetKey { path } } } }
}"""
