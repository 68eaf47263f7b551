"""End to end on the real Dagster processes: `dagster-webserver` + `dagster-daemon` on a copy of the demo.

A supplier file dropped into an inbox is picked up by the inbox sensor (run by the daemon), onboarded
through the five stage assets and published to the catalogue; one stage is then re-executed for that
batch through GraphQL, and a binary file is quarantined with its reason while the good batch stays
published. Everything is observed from outside, as a person or a script would: GraphQL on the
webserver, the catalogue store and the inbox folders.

The processes, GraphQL and polling helpers are in harness.py; the `dagster_stack` fixture in conftest.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from claro_dagster.assets.onboarding import STAGES
from claro_dagster.catalogue.batches import BatchRegistry
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.spec import load_spec
from tests.e2e.harness import (
    DEMO,
    FIRST_BATCH_TIMEOUT,
    LOCATION,
    RUN_TIMEOUT,
    DagsterStack,
    brief,
    drop_file,
    receipt_key,
    tags_of,
)

SOURCE = "suppliers_csv"
CATALOGUE = "suppliers"


def step_key(stage: str) -> str:
    return f"{CATALOGUE}__{stage}"


def asset(stage: str) -> str:
    return f"{CATALOGUE}/{stage}"


# ------------------------------------------------------------------------------------------------ the test

@pytest.mark.e2e
@pytest.mark.timeout(480)
def test_inbox_batch_through_real_webserver_and_daemon(dagster_stack: DagsterStack):
    stack = dagster_stack
    spec = load_spec(stack.spec_path)
    assert spec.sources[SOURCE].path == "inbox/suppliers"
    inbox = stack.home / "inbox" / "suppliers"

    # 1. A supplier file arrives; the inbox sensor (RUNNING by default) requests a run for its batch.
    demo_file = DEMO / "inbox" / "suppliers" / "suppliers.csv"
    good = drop_file(inbox, "suppliers.csv", demo_file.read_bytes())
    key = receipt_key(SOURCE, good)

    def published() -> tuple[bool, Any]:
        mats = stack.materializations(asset("records"), key)
        runs = stack.runs(**{"claro/batch": key})
        failed = [r for r in runs if r["status"] == "FAILURE"]
        if not mats and failed:  # the good file never fails: stop at once and say why
            raise AssertionError(f"the run for {key} failed: {stack.failure_messages(failed[0]['runId'])}")
        return bool(mats), {"records materializations": mats, "runs": brief(runs)}

    state = stack.wait(published, FIRST_BATCH_TIMEOUT, f"a materialization of suppliers/records for {key}",
                       interval=1.0)
    mats = state["records materializations"]
    assert [m["partition"] for m in mats] == [key]
    first_run_id = mats[0]["runId"]
    assert stack.wait_for_run(first_run_id) == "SUCCESS", stack.failure_messages(first_run_id)

    first_run = stack.run(first_run_id)
    assert tags_of(first_run)["claro/batch"] == key
    assert tags_of(first_run)["claro/source"] == SOURCE
    assert tags_of(first_run)["dagster/partition"] == key
    assert {s["stepKey"]: s["status"] for s in first_run["stepStats"]} == {step_key(s): "SUCCESS" for s in STAGES}
    assert sorted((tuple(m["assetKey"]["path"]), m["partition"]) for m in first_run["assetMaterializations"]) == \
        sorted(((CATALOGUE, s), key) for s in STAGES)

    # ... the 6 suppliers are in the catalogue and the file was moved to processed/<batch>/
    store = CatalogueStore(spec, home=stack.home)
    try:
        registry = BatchRegistry(store)
        assert store.count(CATALOGUE) == 6
        assert registry.get(key).status == "published"
        assert not good.exists(), "the inbox file should have been moved out of the inbox"
        processed = inbox / "processed" / key / "suppliers.csv"
        assert processed.read_bytes() == demo_file.read_bytes()

        before = {stage: stack.materializations(asset(stage), key) for stage in STAGES}
        assert {stage: len(m) for stage, m in before.items()} == dict.fromkeys(STAGES, 1)

        # 2. A broken file arrives while one stage of the good batch is re-executed (the instance allows two runs).
        junk = b"supplier_id,name\n\x00\x01\x02\x03PK\x00\x00binary\xff\xfe\x00junk\n" * 64
        broken = drop_file(inbox, "broken.csv", junk)
        broken_key = receipt_key(SOURCE, broken)

        # 3. Re-execute ONE stage (batch_normalized) for the good batch through GraphQL.
        rerun_id = stack.client.submit_job_execution(
            "__ASSET_JOB", repository_location_name=LOCATION, asset_selection=[[CATALOGUE, "batch_normalized"]],
            tags={"dagster/partition": key})
        assert stack.wait_for_run(rerun_id) == "SUCCESS", stack.failure_messages(rerun_id)
        rerun = stack.run(rerun_id)
        assert rerun["jobName"] == "__ASSET_JOB"
        assert tags_of(rerun)["dagster/partition"] == key
        assert rerun["stepKeysToExecute"] == [step_key("batch_normalized")]
        assert rerun["assetSelection"] == [{"path": [CATALOGUE, "batch_normalized"]}]
        assert [(s["stepKey"], s["status"]) for s in rerun["stepStats"]] == [(step_key("batch_normalized"), "SUCCESS")]
        assert not rerun["eventConnection"]["hasMore"]
        stepped = {e["stepKey"] for e in rerun["eventConnection"]["events"] if e.get("stepKey")}
        assert stepped == {step_key("batch_normalized")}, f"steps seen in the event log of the re-run: {stepped}"
        assert [(m["assetKey"]["path"], m["partition"]) for m in rerun["assetMaterializations"]] == \
            [([CATALOGUE, "batch_normalized"], key)]

        after = {stage: stack.materializations(asset(stage), key) for stage in STAGES}
        assert len(after["batch_normalized"]) == 2
        assert rerun_id in {m["runId"] for m in after["batch_normalized"]}
        for stage in ("batch_raw", "batch_mapped", "batch_validated", "records"):
            assert after[stage] == before[stage], f"{stage} was materialized again by the one-stage re-run"

        # 4. The broken file is quarantined with its reason; its run failed; the good batch stays published.
        quarantined = inbox / "quarantine" / broken_key / "broken.csv"
        reason_file = quarantined.with_name("broken.csv.reason.txt")

        def refused() -> tuple[bool, Any]:
            runs = stack.runs(**{"claro/batch": broken_key})
            first = [r for r in runs if r["parentRunId"] is None]
            failed = bool(first) and first[0]["status"] == "FAILURE"
            return failed and quarantined.exists() and reason_file.exists(), {
                "runs": brief(runs), "quarantined": quarantined.exists(), "reason": reason_file.exists()}

        stack.wait(refused, RUN_TIMEOUT, f"the run of {broken_key} to fail and quarantine broken.csv")
        broken_runs = stack.runs(**{"claro/batch": broken_key})
        assert all(r["status"] in ("FAILURE", "QUEUED", "STARTING", "STARTED", "NOT_STARTED") for r in broken_runs), \
            brief(broken_runs)  # a retry (run_retries in dagster.yaml) may still be on its way: it must not succeed
        original = next(r for r in broken_runs if r["parentRunId"] is None)
        steps = {s["stepKey"]: s["status"] for s in original["stepStats"]}
        assert steps[step_key("batch_raw")] == "FAILURE", steps
        assert all(status != "SUCCESS" for status in steps.values()), steps
        failures = stack.failure_messages(original["runId"])
        assert any(m.startswith(step_key("batch_raw")) and "not a text file" in m for m in failures), failures

        reason = reason_file.read_text(encoding="utf-8")
        assert "broken.csv" in reason and "not a text file" in reason, reason
        assert quarantined.read_bytes() == junk
        assert not broken.exists()
        assert registry.get(broken_key).status == "quarantined"
        assert stack.materializations(asset("records"), broken_key) == []

        assert registry.get(key).status == "published"
        assert store.count(CATALOGUE) == 6
        assert processed.exists()
        assert stack.materializations(asset("records"), key) == before["records"]
        good_runs = stack.runs(**{"claro/batch": key})
        assert [r["runId"] for r in good_runs] == [first_run_id], "the sensor must not request the same batch twice"
    finally:
        store.dispose()
