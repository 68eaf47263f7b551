"""`claro run` in-process (`run_everything`): what it does is in the instance `claro dev` shows, under the jobs of
the pipelines and operations, and the sensors of `claro dev` find it done instead of doing it again."""

from __future__ import annotations

import os
import shutil
import time
from types import SimpleNamespace

import dagster as dg
import psycopg
import pytest

# The daemon's own decision (dagster/_daemon/sensor.py): which of a tick's run keys a run already answered.
from dagster._daemon.sensor import fetch_existing_runs

from claro_dagster.definitions import build_definitions
from claro_dagster.local import instance_for, run_everything
from claro_dagster.spec import DEMO_DIR

INBOX = DEMO_DIR / "inbox"
FILES = {"suppliers_csv": INBOX / "suppliers" / "suppliers.csv",
         "acme_csv": INBOX / "acme" / "acme_products_cp1252.csv"}
JOBS = {"suppliers_onboarding", "products_onboarding", "suppliers_analyse", "suppliers_export", "products_analyse",
        "products_export", "products_onboarding_destinations", "products_revalidation", "products_enrichment"}


@pytest.fixture
def demo(tmp_path, monkeypatch, pg_url):
    """A copy of the demo spec with the warehouse destination on the real PostgreSQL (the S3 dump left
    unconfigured), and two supplier files waiting in their inboxes."""
    monkeypatch.setenv("CLARO_WAREHOUSE_URL", pg_url)
    monkeypatch.delenv("CLARO_S3_ENDPOINT_URL", raising=False)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS catalogue_products")
    spec = tmp_path / "claro.yaml"
    shutil.copyfile(DEMO_DIR / "claro.yaml", spec)
    defs = build_definitions(spec, tmp_path / "home")
    claro = defs.resources["claro"]
    for source, path in FILES.items():
        inbox = claro.inbox_dir(source)
        inbox.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, inbox / path.name)
        os.utime(inbox / path.name, (time.time() - 60, time.time() - 60))  # older than the sensors' minimum age
    return SimpleNamespace(spec=spec, home=tmp_path / "home", defs=defs)


def evaluate(defs: dg.Definitions, instance: dg.DagsterInstance, name: str) -> list[dg.RunRequest]:
    """One tick of a sensor, as the first tick of `claro dev` evaluates it (no cursor yet)."""
    sensor = defs.resolve_sensor_def(name)
    context = dg.build_sensor_context(instance=instance, instance_ref=instance.get_ref(), definitions=defs,
                                      resources={k: defs.resources[k] for k in sensor.required_resource_keys})
    return list(sensor.evaluate_tick(context).run_requests or [])


def already_launched(instance: dg.DagsterInstance, sensor: str, requests: list[dg.RunRequest]) -> set[str]:
    """The run keys the sensor daemon would not launch, because a run answered them already."""
    return set(fetch_existing_runs(instance, SimpleNamespace(name=sensor), requests))


def test_claro_run_is_in_the_instance_under_its_jobs_and_the_sensors_find_it_done(demo):
    with instance_for(demo.home) as instance:
        inbound = {name: evaluate(demo.defs, instance, name) for name in ("suppliers_csv_inbox", "acme_csv_inbox")}
    assert all(len(requests) == 1 for requests in inbound.values())  # each file waits for a run

    summary = run_everything(demo.spec, demo.home, progress=lambda message: None, bar=False)

    assert {b.source: b.status for b in summary.batches} == {"suppliers_csv": "published", "acme_csv": "published"}
    assert summary.destinations == {
        "shopify_store": "skipped: set CLARO_SHOPIFY_SHOP_URL and CLARO_SHOPIFY_TOKEN to enable it",
        "amazon_listings": "skipped: set CLARO_AMAZON_CLIENT_ID and CLARO_AMAZON_CLIENT_SECRET and "
                           "CLARO_AMAZON_REFRESH_TOKEN to enable it",
        "catalogue_dump": "skipped: set CLARO_S3_ENDPOINT_URL to enable it", "warehouse": "synced"}
    assert summary.chained == {"products_enrichment": "done", "products_revalidation": "done"}
    with instance_for(demo.home) as instance:
        runs = instance.get_runs()
        # every step is a run of the job of its pipeline or operation, none of Dagster's ephemeral job
        assert {run.job_name for run in runs} == JOBS
        assert len(runs) == len(summary.runs) == 9
        # the UI shows the quality report `claro run` printed
        analysed = instance.get_latest_materialization_event(dg.AssetKey(["products", "analyse"]))
        assert analysed is not None
        score = analysed.asset_materialization.metadata["score"].value
        assert score == pytest.approx(summary.reports["products"].score)
        assert instance.get_latest_materialization_event(dg.AssetKey(["products", "warehouse"])) is not None
        batch_runs = [r for r in runs if r.job_name == "products_onboarding"]
        assert [r.tags["dagster/partition"] for r in batch_runs] == [summary.batches[1].key]

        # `claro dev` afterwards: what its sensors ask for on their first tick was already done by `claro run`
        for name, requests in inbound.items():
            assert already_launched(instance, name, requests) == {r.run_key for r in requests}
            assert evaluate(demo.defs, instance, name) == []  # and the files are no longer waiting
        for name in ("products_onboarding_destinations", "products_revalidation", "products_enrichment"):
            requests = evaluate(demo.defs, instance, name)
            assert len(requests) == 1, name
            assert already_launched(instance, name, requests) == {requests[0].run_key}, name


def test_a_second_claro_run_with_nothing_new_answers_the_same_completions(demo):
    run_everything(demo.spec, demo.home, progress=lambda message: None, bar=False)
    again = run_everything(demo.spec, demo.home, progress=lambda message: None, bar=False)
    assert again.batches == [] and again.reports["products"].records == 10
    with instance_for(demo.home) as instance:
        assert {run.job_name for run in instance.get_runs()} == JOBS
        for name in ("products_onboarding_destinations", "products_revalidation", "products_enrichment"):
            assert already_launched(instance, name, evaluate(demo.defs, instance, name))
