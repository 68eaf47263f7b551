"""The dedupe asset in the demo: run by its weekly schedule or a chained pipeline, its proposals wait for review."""

from __future__ import annotations

import shutil

import dagster as dg
import pytest
import yaml

from claro_dagster.catalogue.duplicates import Duplicates
from claro_dagster.catalogue.review import ReviewQueue
from claro_dagster.definitions import build_definitions
from claro_dagster.local import receive, run_batch
from claro_dagster.spec import DEMO_DIR

SUPPLIERS = DEMO_DIR / "inbox" / "suppliers" / "suppliers.csv"


@pytest.fixture
def demo(tmp_path):
    spec = tmp_path / "claro.yaml"
    shutil.copyfile(DEMO_DIR / "claro.yaml", spec)
    raw = yaml.safe_load(spec.read_text())
    raw["pipelines"]["supplier_duplicates"] = {"catalogue": "suppliers", "operations": ["dedupe"],
                                               "after": {"catalogue": "suppliers", "operation": "records"}}
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    defs = build_definitions(spec, tmp_path / "home")
    claro = defs.resources["claro"]
    with dg.instance_for_test() as instance:
        inbox = claro.inbox_dir("suppliers_csv")
        inbox.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SUPPLIERS, inbox / "suppliers.csv")
        assert run_batch(defs, instance, receive(claro, "suppliers_csv", inbox / "suppliers.csv")).success
        yield defs, claro, instance


def test_the_weekly_schedule_finds_the_demo_duplicate_supplier(demo):
    defs, claro, instance = demo
    schedule = defs.resolve_schedule_def("weekly_supplier_duplicates")
    assert schedule.cron_schedule == "0 6 * * 1"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    job = defs.resolve_job_def(schedule.job_name)
    assert job.asset_layer.selected_asset_keys == {dg.AssetKey(["suppliers", "dedupe"])}
    result = dg.materialize(list(defs.assets), selection=[dg.AssetKey(["suppliers", "dedupe"])], instance=instance,
                            resources=defs.resources)
    [event] = result.get_asset_materialization_events()
    metadata = event.materialization.metadata
    assert metadata["new_proposals"].value == 1 and metadata["records_compared"].value == 6
    [item] = ReviewQueue(claro.store).list(operation="dedupe")
    assert (item.catalogue, item.record, item.field, item.new) == ("suppliers", "SUP-0006", "merged_into", "SUP-0001")
    # A second run proposes nothing new: the pair already waits for review.
    again = dg.materialize(list(defs.assets), selection=[dg.AssetKey(["suppliers", "dedupe"])], instance=instance,
                           resources=defs.resources)
    assert again.get_asset_materialization_events()[0].materialization.metadata["new_proposals"].value == 0
    assert len(Duplicates(claro.store).list()) == 1


def test_a_chained_pipeline_runs_dedupe_after_suppliers_are_published(demo):
    defs, claro, instance = demo
    context = dg.build_sensor_context(instance=instance, instance_ref=instance.get_ref(), definitions=defs,
                                      resources={"claro": claro})
    [request] = defs.resolve_sensor_def("supplier_duplicates").evaluate_tick(context).run_requests
    job = defs.resolve_job_def("supplier_duplicates")
    assert job.asset_layer.selected_asset_keys == {dg.AssetKey(["suppliers", "dedupe"])}
    assert request.tags["claro/after"] == "suppliers/records"
