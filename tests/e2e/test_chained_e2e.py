"""End to end on the real Dagster processes: chained pipelines, the review checkpoint and a halted batch.

On a copy of the demo project, with the real `dagster-webserver` and `dagster-daemon` (harness.py):

1. suppliers published -> the `products_revalidation` sensor runs `products/validate` on the active products;
2. an Acme products file with nothing to review is published and released by its checkpoint at once;
3. a Globex file changing one title (overwrite confidence 80 < Globex's auto_apply 97) queues the change
   for review: the batch waits at `products/review_checkpoint`, the item is routed to merchandising;
4. approving the item through the store lets the `products_onboarding_review_checkpoint` sensor resume the
   batch, exactly once;
5. an Acme file whose rows all fail validation halts its batch (outbox `run.failed` with `halted: true`);
   re-running `batch_validated` alone for it runs that one stage and the batch stays halted.

Everything is observed from outside: GraphQL on the webserver (runs, materializations, sensor ticks), the
catalogue store (batches, review queue, records, outbox) and the inbox folders. Waits are deadline-bounded polls.

Slack: the demo spec names `slack_token_env: SLACK_BOT_TOKEN`, and with that variable unset the three run-status
sensors fail every tick (their `slack` resource cannot be configured), so no `run.*` event ever reaches the
outbox. The processes here get a dummy token and a proxy that refuses connections (`HTTPS_PROXY` to a loopback
port that never listens; loopback itself exempt via `NO_PROXY`): Slack is configured but unreachable, nothing
leaves the machine, and the outbox must be written anyway ("Slack trouble never fails a tick").
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from stdnum import ean

from claro_dagster.catalogue.batches import BatchRegistry
from claro_dagster.catalogue.review import ReviewQueue
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.spec import load_spec
from tests.e2e.harness import (
    DEMO,
    FIRST_BATCH_TIMEOUT,
    LOCATION,
    RUN_TIMEOUT,
    TERMINAL,
    DagsterStack,
    brief,
    drop_file,
    metadata_of,
    receipt_key,
    tags_of,
)

PRODUCTS, SUPPLIERS = "products", "suppliers"
ONBOARDING = "products_onboarding"
REVALIDATION = "products_revalidation"  # the chained pipeline: its sensor has the pipeline's name
CHECKPOINT_SENSOR = f"{ONBOARDING}_review_checkpoint"
PRODUCT_STAGES = ("batch_raw", "batch_mapped", "batch_validated", "batch_normalized", "records", "review_checkpoint")
ACTIVE = 'status == "active"'
SENSOR_INTERVAL = 10  # minimum_interval_seconds of the completion and review-checkpoint sensors
TICK_TIMEOUT = 4 * SENSOR_INTERVAL  # room for a busy daemon (it evaluates its sensors one after another)
OUTBOX_TIMEOUT = 90  # the run-status sensors tick every 15 s
HEADER = "sku,title,brand,gtin,price,weight,colour,size,supplier,status"


# ------------------------------------------------------------------------------------------------ processes

@pytest.fixture
def dagster_env():
    """Overrides conftest's: a dummy Slack token, and every outbound HTTP(S) request refused (see the docstring)."""
    with socket.socket() as refusing:
        refusing.bind(("127.0.0.1", 0))  # bound and never listening: connecting to it is refused at once
        proxy = f"http://127.0.0.1:{refusing.getsockname()[1]}"
        loopback = "127.0.0.1,localhost,::1"
        yield {"SLACK_BOT_TOKEN": "xoxb-e2e-not-a-real-token", "HTTPS_PROXY": proxy, "https_proxy": proxy,
               "HTTP_PROXY": proxy, "http_proxy": proxy, "NO_PROXY": loopback, "no_proxy": loopback}


# ------------------------------------------------------------------------------------------------ files

def gtin13(n: int) -> str:
    body = f"50612340{n:04d}"
    return body + ean.calc_check_digit(body)


def bad_gtin13(n: int) -> str:
    good = gtin13(n)
    return good[:-1] + str((int(good[-1]) + 1) % 10)  # wrong check digit


def product_rows(titles: dict[int, str] | None = None) -> list[str]:
    titles = titles or {}
    return [f"TST-{n:04d},{titles.get(n, f'Trail mug {n}')},Acme Outdoor,{gtin13(n)},1.50,0.3,grey,M,SUP-0001,active"
            for n in range(1, 5)]


def csv_bytes(rows: list[str]) -> bytes:
    return ("\n".join([HEADER, *rows]) + "\n").encode()


# ------------------------------------------------------------------------------------------------ helpers

def step_key(asset: str) -> str:
    return asset.replace("/", "__")


def steps_of(run: dict) -> dict[str, str]:
    return {s["stepKey"]: s["status"] for s in run["stepStats"]}


def outbox(store: CatalogueStore) -> list[dict]:
    """Every outbox event, oldest first (`store.events` pages by id)."""
    events: list[dict] = []
    while page := store.events(after=events[-1]["id"] if events else 0):
        events += page
    return events


def batch_run(stack: DagsterStack, key: str, *, expect: str = "SUCCESS") -> Callable[[], dict | None]:
    """The first run the inbox sensor launched for a batch, once finished; stops the wait if it ends otherwise."""
    def current() -> dict | None:
        runs = [r for r in stack.runs(**{"claro/batch": key}) if r["parentRunId"] is None
                and tags_of(r).get("dagster/sensor_name", "").endswith("_inbox")]
        if not runs or runs[0]["status"] not in TERMINAL:
            return None
        if runs[0]["status"] != expect:
            raise AssertionError(f"the run of batch {key} ended {runs[0]['status']}, not {expect}: "
                                 f"{stack.failure_messages(runs[0]['runId'])}")
        return runs[0]
    return current


def ticks_after(stack: DagsterStack, sensor: str, after: float) -> list[dict]:
    """The sensor's ticks that started after `after` (epoch seconds), oldest first."""
    return sorted((t for t in stack.sensor_ticks(sensor, limit=50) if t["timestamp"] > after),
                  key=lambda t: t["timestamp"])


def brief_ticks(ticks: list[dict]) -> list[tuple]:
    return [(round(t["timestamp"], 1), t["status"], [r[:8] for r in t["runIds"]], t["skipReason"]) for t in ticks]


# ------------------------------------------------------------------------------------------------ the test

@pytest.mark.e2e
@pytest.mark.timeout(420)
def test_chained_pipelines_review_checkpoint_and_halt(dagster_stack: DagsterStack):
    stack = dagster_stack
    spec = load_spec(stack.spec_path)
    assert spec.pipelines[REVALIDATION].after.catalogue == SUPPLIERS
    assert spec.pipelines[ONBOARDING].review_checkpoint
    inbox = {name: stack.home / spec.sources[name].path for name in ("suppliers_csv", "acme_csv", "globex_xlsx")}
    assert inbox["acme_csv"] == stack.home / "inbox" / "acme"
    assert inbox["globex_xlsx"] == stack.home / "inbox" / "globex"
    started = time.monotonic()
    lap = {"t": started}

    def mark(step: str) -> None:
        now = time.monotonic()
        print(f"{step}: {now - lap['t']:.1f} s (total {now - started:.1f} s)")
        lap["t"] = now

    # 1. Suppliers published -> the products_revalidation sensor runs products/validate on the active products.
    suppliers = (DEMO / "inbox" / "suppliers" / "suppliers.csv").read_bytes()
    skey = receipt_key("suppliers_csv", drop_file(inbox["suppliers_csv"], "suppliers.csv", suppliers))
    suppliers_run = batch_run(stack, skey)

    def suppliers_published() -> tuple[bool, Any]:
        run, mats = suppliers_run(), stack.materializations(f"{SUPPLIERS}/records", skey)
        return run is not None and bool(mats), {"run": run and brief([run]), "records": mats}

    stack.wait(suppliers_published, FIRST_BATCH_TIMEOUT, f"suppliers/records for {skey}", interval=1.0)

    def revalidated() -> tuple[bool, Any]:
        runs = stack.runs(**{"claro/pipeline": REVALIDATION})
        done = [r for r in runs if r["status"] in TERMINAL]
        for run in done:
            assert run["status"] == "SUCCESS", f"{REVALIDATION} run failed: {stack.failure_messages(run['runId'])}"
        mats = stack.materializations(f"{PRODUCTS}/validate")
        return bool(done) and bool(mats), {"runs": brief(runs), "validate materializations": mats}

    state = stack.wait(revalidated, RUN_TIMEOUT, f"the {REVALIDATION} sensor's run of products/validate", interval=1.0)
    [validate_mat] = state["validate materializations"]
    [reval] = stack.runs(**{"claro/pipeline": REVALIDATION})
    assert validate_mat["runId"] == reval["runId"]
    assert validate_mat["partition"] is None
    tags = tags_of(reval)
    assert tags["claro/pipeline"] == REVALIDATION
    assert tags["claro/filter"] == ACTIVE
    assert tags["claro/catalogue"] == PRODUCTS
    assert tags["claro/after"] == f"{SUPPLIERS}/records"
    assert tags["claro/after_batch"] == skey
    assert tags["dagster/sensor_name"] == REVALIDATION
    assert tags["dagster/run_key"].startswith(f"{REVALIDATION}:")
    assert reval["jobName"] == REVALIDATION  # the job is named after its pipeline
    assert steps_of(reval) == {"products__validate": "SUCCESS"}
    meta = metadata_of(validate_mat)
    assert meta["filter"] == ACTIVE, meta  # the record filter reached the op through the run config
    assert meta["records_checked"] == 0, meta  # no products yet
    mark("1. suppliers published, products re-validated")

    store = CatalogueStore(spec, home=stack.home)
    try:
        registry, queue = BatchRegistry(store), ReviewQueue(store)
        assert store.count(SUPPLIERS) == 6  # SUP-0006 is Acme again: the demo's duplicate for Find Duplicates

        # 2. An Acme file with nothing to review: published, and its checkpoint releases it in the same run.
        acme = csv_bytes(product_rows())
        akey = receipt_key("acme_csv", drop_file(inbox["acme_csv"], "acme_mugs.csv", acme))
        acme_run = batch_run(stack, akey)

        def acme_released() -> tuple[bool, Any]:
            run, batch = acme_run(), registry.get(akey)
            mats = stack.materializations(f"{PRODUCTS}/review_checkpoint", akey)
            return (run is not None and batch is not None and batch.status == "published" and bool(mats),
                    {"run": run and brief([run]), "batch": batch and (batch.status, batch.stage), "checkpoint": mats})

        state = stack.wait(acme_released, RUN_TIMEOUT, f"batch {akey} to be published and released", interval=1.0)
        run = acme_run()
        assert steps_of(run) == {step_key(f"{PRODUCTS}/{s}"): "SUCCESS" for s in PRODUCT_STAGES}
        assert [m["runId"] for m in state["checkpoint"]] == [run["runId"]]
        assert metadata_of(state["checkpoint"][0])["released"] is True
        assert registry.get(akey).stage == "review_checkpoint"
        assert store.count(PRODUCTS) == 4
        assert store.record(PRODUCTS, "TST-0001")["title"] == "Trail mug 1"
        assert queue.list(catalogue=PRODUCTS) == []
        assert not (inbox["acme_csv"] / "acme_mugs.csv").exists()
        mark("2. acme batch published and released")

        # 3. Globex contradicts one title: the overwrite (confidence 80 < auto_apply 97) waits for review.
        changed = "Trail mug 1 (Globex)"
        globex = csv_bytes(product_rows({1: changed}))
        gkey = receipt_key("globex_xlsx", drop_file(inbox["globex_xlsx"], "globex_mugs.csv", globex))
        globex_run = batch_run(stack, gkey)

        def globex_waiting() -> tuple[bool, Any]:
            run, batch = globex_run(), registry.get(gkey)
            mats = stack.materializations(f"{PRODUCTS}/records", gkey)
            return (run is not None and batch is not None and batch.status == "awaiting_review" and bool(mats),
                    {"run": run and brief([run]), "batch": batch and (batch.status, batch.stage), "records": mats})

        state = stack.wait(globex_waiting, RUN_TIMEOUT, f"batch {gkey} to wait at its review checkpoint", interval=1.0)
        run = globex_run()
        assert [m["runId"] for m in state["records"]] == [run["runId"]]
        assert metadata_of(state["records"][0])["queued_for_review"] == 1
        # the checkpoint step ran and held the batch: no materialization, so nothing downstream started
        assert steps_of(run)[step_key(f"{PRODUCTS}/review_checkpoint")] == "SUCCESS"
        assert stack.materializations(f"{PRODUCTS}/review_checkpoint", gkey) == []
        [item] = queue.list(catalogue=PRODUCTS)
        assert (item.record, item.field, item.old, item.new) == ("TST-0001", "title", "Trail mug 1", changed)
        assert item.confidence == 80
        assert item.source == "globex_xlsx"
        assert item.change_set.startswith(f"publish:{gkey}:")
        assert item.reviewers == ("merchandising",)  # routing: confidence_below 85 -> merchandising
        assert item.status == "queued"
        assert store.record(PRODUCTS, "TST-0001")["title"] == "Trail mug 1"

        # ... and the checkpoint sensor, ticking after the batch started waiting, holds it.
        waiting_since = registry.get(gkey).updated_at.timestamp()

        def held() -> tuple[bool, Any]:
            ticks = ticks_after(stack, CHECKPOINT_SENSOR, waiting_since)
            return bool(ticks) and ticks[0]["status"] in ("SKIPPED", "SUCCESS", "FAILURE"), brief_ticks(ticks)

        stack.wait(held, TICK_TIMEOUT, f"a tick of {CHECKPOINT_SENSOR} after {gkey} started waiting")
        [tick] = ticks_after(stack, CHECKPOINT_SENSOR, waiting_since)[:1]
        assert tick["status"] == "SKIPPED" and tick["runIds"] == [], brief_ticks([tick])
        assert "1 batch(es) of products still wait for review decisions" in tick["skipReason"], tick
        assert stack.runs(**{"dagster/run_key": f"{gkey}:review_checkpoint:{item.id}"}) == []
        assert registry.get(gkey).status == "awaiting_review"
        mark("3. globex batch waits for review")

        # 4. Approve through the store: the checkpoint sensor resumes the batch, exactly once.
        result = queue.approve([item.id], by="e2e")
        assert result.applied == 1
        run_key = f"{gkey}:review_checkpoint:{item.id}"  # versioned by the batch's newest proposal

        def resumed() -> tuple[bool, Any]:
            runs = stack.runs(**{"dagster/run_key": run_key})
            done = [r for r in runs if r["status"] in TERMINAL]
            for r in done:
                assert r["status"] == "SUCCESS", f"the checkpoint run failed: {stack.failure_messages(r['runId'])}"
            mats = stack.materializations(f"{PRODUCTS}/review_checkpoint", gkey)
            batch = registry.get(gkey)
            return bool(done) and bool(mats) and batch.status == "published", {
                "runs": brief(runs), "checkpoint": mats, "batch": (batch.status, batch.stage)}

        state = stack.wait(resumed, TICK_TIMEOUT + RUN_TIMEOUT, f"the {CHECKPOINT_SENSOR} sensor to resume {gkey}",
                           interval=1.0)
        [resume] = stack.runs(**{"dagster/run_key": run_key})
        assert [m["runId"] for m in state["checkpoint"]] == [resume["runId"]]
        assert metadata_of(state["checkpoint"][0])["released"] is True
        tags = tags_of(resume)
        assert tags["dagster/sensor_name"] == CHECKPOINT_SENSOR
        assert tags["dagster/partition"] == gkey
        assert tags["claro/batch"] == gkey
        assert tags["claro/source"] == "globex_xlsx"
        assert steps_of(resume) == {step_key(f"{PRODUCTS}/review_checkpoint"): "SUCCESS"}
        assert registry.get(gkey).message == "review decided; batch released"
        assert store.record(PRODUCTS, "TST-0001")["title"] == changed
        decided = queue.get(item.id)
        assert (decided.status, decided.decided_by) == ("approved", "e2e")
        mark("4. globex batch resumed after approval")

        # ... exactly once: two more ticks after the resume run ended launch nothing.
        launching = [t for t in stack.sensor_ticks(CHECKPOINT_SENSOR, limit=50) if resume["runId"] in t["runIds"]]
        assert len(launching) == 1, brief_ticks(launching)
        assert launching[0]["runKeys"] == [run_key]
        ended = stack.run(resume["runId"])["endTime"]

        def two_more_ticks() -> tuple[bool, Any]:
            later = ticks_after(stack, CHECKPOINT_SENSOR, ended)
            return len(later) >= 2, brief_ticks(later)

        stack.wait(two_more_ticks, 2 * TICK_TIMEOUT, f"two ticks of {CHECKPOINT_SENSOR} after the resume run")
        since_launch = ticks_after(stack, CHECKPOINT_SENSOR, launching[0]["timestamp"] - 0.001)
        assert [t["runIds"] for t in since_launch[1:]] == [[] for _ in since_launch[1:]], brief_ticks(since_launch)
        assert [r["runId"] for r in stack.runs(**{"dagster/run_key": run_key})] == [resume["runId"]]
        assert len(stack.materializations(f"{PRODUCTS}/review_checkpoint", gkey)) == 1
        assert {r["runId"] for r in stack.runs(**{"claro/batch": gkey})} == {run["runId"], resume["runId"]}
        assert registry.get(gkey).status == "published"
        mark("4. ... and only once")

        # 5. An Acme file whose rows all fail validation: the batch halts, the outbox says so.
        broken = csv_bytes([f"TST-{n:04d},Broken mug {n},Acme Outdoor,{bad_gtin13(n)},1.50,0.3,grey,M,SUP-9999,active"
                            for n in range(101, 105)])
        hkey = receipt_key("acme_csv", drop_file(inbox["acme_csv"], "acme_broken.csv", broken))
        halted_run = batch_run(stack, hkey, expect="FAILURE")

        def halted() -> tuple[bool, Any]:
            run, batch = halted_run(), registry.get(hkey)
            events = [e for e in outbox(store) if e["type"] == "run.failed" and e["payload"].get("batch") == hkey]
            return (run is not None and batch is not None and batch.status == "halted" and bool(events),
                    {"run": run and brief([run]), "batch": batch and (batch.status, batch.stage), "events": events})

        state = stack.wait(halted, RUN_TIMEOUT + OUTBOX_TIMEOUT, f"batch {hkey} to halt and its run.failed event",
                           interval=1.0)
        run = halted_run()
        [event] = state["events"]
        payload = event["payload"]
        assert payload["halted"] is True, payload
        assert payload["run_id"] == run["runId"]
        assert payload["status"] == "FAILURE"
        assert payload["failed_stage"] == f"{PRODUCTS}/batch_validated"
        assert payload["pipeline"] == ONBOARDING and payload["source"] == "acme_csv"
        assert payload["batch_status"] == "halted"
        assert payload["rejected_rows"] == f"claro rejected {hkey}"
        steps = steps_of(run)
        assert steps[step_key(f"{PRODUCTS}/batch_validated")] == "FAILURE", steps
        assert {s: steps.get(step_key(f"{PRODUCTS}/{s}")) for s in ("batch_raw", "batch_mapped")} == \
            {"batch_raw": "SUCCESS", "batch_mapped": "SUCCESS"}, steps
        for stage in ("batch_normalized", "records", "review_checkpoint"):
            assert steps.get(step_key(f"{PRODUCTS}/{stage}")) != "SUCCESS", steps
            assert stack.materializations(f"{PRODUCTS}/{stage}", hkey) == []
        assert len(registry.rejected_rows(hkey)) == 4
        assert (inbox["acme_csv"] / "quarantine" / hkey / "acme_broken.csv").read_bytes() == broken
        before = stack.materializations(f"{PRODUCTS}/batch_validated", hkey)
        assert [m["runId"] for m in before] == [run["runId"]]
        mark("5. broken acme batch halted")

        # ... re-run ONE stage (batch_validated) for it through GraphQL: only that stage runs; still halted.
        rerun_id = stack.client.submit_job_execution(
            "__ASSET_JOB", repository_location_name=LOCATION, asset_selection=[[PRODUCTS, "batch_validated"]],
            tags={"dagster/partition": hkey})
        status = stack.wait_for_run(rerun_id)
        rerun = stack.run(rerun_id)
        assert status == "FAILURE", (status, stack.failure_messages(rerun_id))  # the gate fails again
        assert any("within_error_budget" in m for m in stack.failure_messages(rerun_id)), \
            stack.failure_messages(rerun_id)
        assert rerun["jobName"] == "__ASSET_JOB"
        assert tags_of(rerun)["dagster/partition"] == hkey
        assert rerun["stepKeysToExecute"] == [step_key(f"{PRODUCTS}/batch_validated")]
        assert rerun["assetSelection"] == [{"path": [PRODUCTS, "batch_validated"]}]
        assert steps_of(rerun) == {step_key(f"{PRODUCTS}/batch_validated"): "FAILURE"}
        assert not rerun["eventConnection"]["hasMore"]
        stepped = {e["stepKey"] for e in rerun["eventConnection"]["events"] if e.get("stepKey")}
        assert stepped == {step_key(f"{PRODUCTS}/batch_validated")}, stepped
        assert [(m["assetKey"]["path"], m["partition"]) for m in rerun["assetMaterializations"]] == \
            [([PRODUCTS, "batch_validated"], hkey)]
        after = stack.materializations(f"{PRODUCTS}/batch_validated", hkey)
        assert sorted(m["runId"] for m in after) == sorted([run["runId"], rerun_id])
        for stage in ("batch_raw", "batch_mapped"):
            assert [m["runId"] for m in stack.materializations(f"{PRODUCTS}/{stage}", hkey)] == [run["runId"]]
        for stage in ("batch_normalized", "records", "review_checkpoint"):
            assert stack.materializations(f"{PRODUCTS}/{stage}", hkey) == []
        batch = registry.get(hkey)
        assert (batch.status, batch.stage) == ("halted", "batch_validated")
        assert store.count(PRODUCTS) == 4
        assert store.record(PRODUCTS, "TST-0101") is None
        mark("5. ... one stage re-run, still halted")

        # The chain fired once for the one suppliers batch; the Acme and Globex batches stay published.
        assert [r["runId"] for r in stack.runs(**{"claro/pipeline": REVALIDATION})] == [reval["runId"]]
        assert registry.get(akey).status == "published" and registry.get(gkey).status == "published"
    finally:
        store.dispose()
