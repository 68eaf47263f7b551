"""Chained pipelines in-process: review checkpoint and its resume sensor, pipelines started by another's completion."""

from __future__ import annotations

import shutil

import dagster as dg
import pytest

from claro_dagster.catalogue.batches import BatchRegistry
from claro_dagster.catalogue.review import ReviewQueue
from claro_dagster.definitions import build_definitions
from claro_dagster.local import receive, run_batch
from claro_dagster.spec import DEMO_DIR

HEADER = "sku,title,brand,gtin,price,weight,colour,size,supplier,status\n"
ROWS = ["TST-0001,Trail mug 1,Acme Outdoor,5060123990010,1.50,0.3,grey,M,SUP-0001,active",
        "TST-0002,Trail mug 2,Acme Outdoor,5060123990027,2.50,0.3,grey,M,SUP-0001,draft"]


@pytest.fixture
def demo(tmp_path):
    spec = tmp_path / "claro.yaml"
    shutil.copyfile(DEMO_DIR / "claro.yaml", spec)
    defs = build_definitions(spec, tmp_path / "home")
    claro = defs.resources["claro"]
    with dg.instance_for_test() as instance:
        yield defs, claro, instance


def drop(claro, source, name, text):
    inbox = claro.inbox_dir(source)
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / name).write_text(text, encoding="utf-8")
    return receive(claro, source, inbox / name)


def tick(defs, instance, name, cursor=None):
    context = dg.build_sensor_context(instance=instance, instance_ref=instance.get_ref(), definitions=defs,
                                      cursor=cursor, resources={"claro": defs.resources["claro"]})
    return defs.resolve_sensor_def(name).evaluate_tick(context)


def test_suppliers_published_starts_the_revalidation_of_active_products(demo):
    defs, claro, instance = demo
    suppliers = DEMO_DIR / "inbox" / "suppliers" / "suppliers.csv"
    assert run_batch(defs, instance, drop(claro, "suppliers_csv", "suppliers.csv", suppliers.read_text())).success
    first = tick(defs, instance, "products_revalidation")
    [request] = first.run_requests
    assert request.tags["claro/filter"] == 'status == "active"'
    assert request.run_config == {"ops": {"products__validate": {"config": {"filter": 'status == "active"'}}}}
    assert tick(defs, instance, "products_revalidation", first.cursor).run_requests == []  # once per completion
    result = dg.materialize(list(defs.assets), selection=[dg.AssetKey(["products", "validate"])],
                            instance=instance, resources=defs.resources, run_config=request.run_config)
    [check] = result.get_asset_check_evaluations()
    assert check.passed  # no products yet


def test_review_checkpoint_holds_a_batch_until_its_reviews_are_decided(demo):
    defs, claro, instance = demo
    suppliers = DEMO_DIR / "inbox" / "suppliers" / "suppliers.csv"
    assert run_batch(defs, instance, drop(claro, "suppliers_csv", "suppliers.csv", suppliers.read_text())).success
    first = drop(claro, "acme_csv", "first.csv", HEADER + "\n".join(ROWS) + "\n")
    assert run_batch(defs, instance, first).success
    assert BatchRegistry(claro.store).get(first.key).status == "published"  # nothing queued: released at once

    update = drop(claro, "globex_xlsx", "update.csv", HEADER + ROWS[0].replace("Trail mug 1", "Trail mug one") + "\n")
    result = run_batch(defs, instance, update)
    assert result.success
    materialized = {tuple(e.asset_key.path) for e in result.get_asset_materialization_events()}
    assert ("products", "records") in materialized and ("products", "review_checkpoint") not in materialized
    assert BatchRegistry(claro.store).get(update.key).status == "awaiting_review"
    assert tick(defs, instance, "products_onboarding_review_checkpoint").run_requests == []

    queue = ReviewQueue(claro.store)
    [item] = queue.list()
    assert item.reviewers == ("merchandising",)  # routing rule: confidence 80 is below 85
    queue.approve([item.id], by="ann")
    [resume] = tick(defs, instance, "products_onboarding_review_checkpoint").run_requests
    assert (resume.run_key, resume.partition_key) == (f"{update.key}:review_checkpoint:{item.id}", update.key)
    # a run of the pipeline's job (as the batch's other runs), on the checkpoint alone
    assert defs.resolve_sensor_def("products_onboarding_review_checkpoint").job_name == "products_onboarding"
    assert resume.asset_selection == [dg.AssetKey(["products", "review_checkpoint"])]
    assert run_batch(defs, instance, BatchRegistry(claro.store).get(update.key),
                     stages=("review_checkpoint",)).success
    assert BatchRegistry(claro.store).get(update.key).status == "published"
    assert claro.store.record("products", "TST-0001")["title"] == "Trail mug one"
    assert tick(defs, instance, "products_onboarding_review_checkpoint").run_requests == []


def test_a_batch_that_waits_for_review_a_second_time_is_resumed_again(demo, tmp_path):
    """Run keys are remembered forever: the second resume of the same batch needs a key of its own."""
    defs, claro, instance = demo
    suppliers = DEMO_DIR / "inbox" / "suppliers" / "suppliers.csv"
    assert run_batch(defs, instance, drop(claro, "suppliers_csv", "suppliers.csv", suppliers.read_text())).success
    assert run_batch(defs, instance, drop(claro, "acme_csv", "first.csv", HEADER + ROWS[0] + "\n")).success
    update = drop(claro, "globex_xlsx", "update.csv", HEADER + ROWS[0].replace("Trail mug 1", "Trail mug one") + "\n")
    assert run_batch(defs, instance, update).success
    queue = ReviewQueue(claro.store)
    queue.approve([i.id for i in queue.list()], by="ann")
    launched = set()  # what the daemon remembers: a run key it launched is never launched again
    [first] = tick(defs, instance, "products_onboarding_review_checkpoint").run_requests
    launched.add(first.run_key)
    assert run_batch(defs, instance, BatchRegistry(claro.store).get(update.key), stages=("review_checkpoint",)).success
    assert BatchRegistry(claro.store).get(update.key).status == "published"

    # The spec now title-cases titles: the batch is checked and published again, and its new proposal waits.
    spec = tmp_path / "claro.yaml"
    spec.write_text(spec.read_text().replace("casing: none ", "casing: title"), encoding="utf-8")
    defs = build_definitions(spec, tmp_path / "home")
    claro = defs.resources["claro"]
    assert run_batch(defs, instance, BatchRegistry(claro.store).get(update.key),
                     stages=("batch_validated", "batch_normalized", "records", "review_checkpoint")).success
    assert BatchRegistry(claro.store).get(update.key).status == "awaiting_review"
    [item] = ReviewQueue(claro.store).list()
    assert item.new == "Trail Mug One"
    ReviewQueue(claro.store).approve([item.id], by="ann")

    [second] = tick(defs, instance, "products_onboarding_review_checkpoint").run_requests
    assert second.partition_key == update.key and second.run_key not in launched
    assert run_batch(defs, instance, BatchRegistry(claro.store).get(update.key), stages=("review_checkpoint",)).success
    assert BatchRegistry(claro.store).get(update.key).status == "published"
    assert claro.store.record("products", "TST-0001")["title"] == "Trail Mug One"
