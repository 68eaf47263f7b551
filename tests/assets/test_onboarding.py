"""The onboarding asset graph on the demo spec: the gate halts bad batches, good ones publish once."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from claro_dagster.catalogue.batches import BatchRegistry
from claro_dagster.catalogue.review import ReviewQueue
from claro_dagster.definitions import build_definitions
from claro_dagster.local import receive, run_batch
from claro_dagster.spec import DEMO_DIR

DEMO_INBOX = DEMO_DIR / "inbox"
SUPPLIERS = DEMO_INBOX / "suppliers" / "suppliers.csv"
HEADER = "sku,title,brand,gtin,price,weight,colour,size,supplier,status\n"


@pytest.fixture
def project(tmp_path):
    """A copy of the demo spec with its own home and Dagster instance; suppliers already published."""
    spec = tmp_path / "claro.yaml"
    shutil.copyfile(DEMO_DIR / "claro.yaml", spec)
    defs = build_definitions(spec, tmp_path / "home")
    claro = defs.resources["claro"]
    with dg.instance_for_test() as instance:
        p = Project(defs, claro, instance, tmp_path)
        assert p.run("suppliers_csv", SUPPLIERS).success
        yield p


class Project:
    def __init__(self, defs, claro, instance, root: Path):
        self.defs, self.claro, self.instance, self.root = defs, claro, instance, root
        self.registry = BatchRegistry(claro.store)

    def drop(self, source: str, src: Path | None = None, *, name: str | None = None, text: str | None = None,
             data: bytes | None = None) -> Path:
        inbox = self.claro.inbox_dir(source)
        inbox.mkdir(parents=True, exist_ok=True)
        target = inbox / (name or src.name)
        if src is not None:
            shutil.copyfile(src, target)
        elif text is not None:
            target.write_text(text, encoding="utf-8")
        else:
            target.write_bytes(data)
        return target

    def run(self, source: str, src: Path | None = None, **kw):
        path = self.drop(source, src, **kw)
        self.batch = receive(self.claro, source, path)
        return run_batch(self.defs, self.instance, self.batch)

    def status(self):
        return self.registry.get(self.batch.key)


def failures(result) -> str:
    """What the failed steps said (their error messages), as a person reads them in the run's log."""
    return "\n".join(e.step_failure_data.error.to_string() for e in result.all_events if e.is_step_failure)


def good_rows(n: int = 4, start: int = 1) -> str:
    rows = [f"TST-{i:04d},Trail mug {i},Acme Outdoor,{gtin(i)},{i}.50,0.3,grey,M,SUP-0001,active"
            for i in range(start, start + n)]
    return HEADER + "\n".join(rows) + "\n"


def gtin(i: int) -> str:
    from stdnum import ean

    body = f"506012399{i:03d}"
    return body + ean.calc_check_digit(body)


def test_graph_snapshot(monkeypatch):
    """Asset keys and their dependencies: an accidental change to the graph shows up here."""
    monkeypatch.setenv("CLARO_S3_ENDPOINT_URL", "http://127.0.0.1:9")  # destinations configured: synced
    monkeypatch.setenv("CLARO_WAREHOUSE_URL", "postgresql://127.0.0.1:9/x")
    defs = build_definitions(DEMO_DIR / "claro.yaml")
    graph = defs.resolve_asset_graph()
    edges = {"/".join(k.path): sorted("/".join(p.path) for p in graph.get(k).parent_keys)
             for k in graph.get_all_asset_keys()}
    stages = ["batch_raw", "batch_mapped", "batch_validated", "batch_normalized", "records"]
    expected = {}
    for catalogue in ("products", "suppliers"):
        previous = []
        for stage in stages:
            expected[f"{catalogue}/{stage}"] = previous
            previous = [f"{catalogue}/{stage}"]
        for operation in ("analyse", "export", "validate", "enrich", "dedupe"):
            expected[f"{catalogue}/{operation}"] = [f"{catalogue}/records"]
    expected["products/review_checkpoint"] = ["products/records"]  # products_onboarding has a review checkpoint
    expected["products/shopify_store"] = ["products/review_checkpoint"]  # its variables unset: runnable by hand
    expected["products/amazon_listings"] = ["products/review_checkpoint"]
    expected["products/catalogue_dump"] = ["products/review_checkpoint"]
    expected["products/warehouse"] = ["products/review_checkpoint"]
    expected["products/price_watch"] = expected["products/catalogue_drift"] = []  # monitors: scheduled, no inputs
    assert edges == expected
    checks = {(tuple(c.asset_key.path), c.name) for c in graph.asset_check_keys}
    assert checks == {(("products", "batch_validated"), "within_error_budget"),
                      (("suppliers", "batch_validated"), "within_error_budget"),
                      (("products", "validate"), "records_valid"), (("suppliers", "validate"), "records_valid"),
                      (("products", "shopify_store"), "all_pushed"), (("products", "amazon_listings"), "all_pushed")}
    sensors = sorted(s.name for s in defs.sensors)
    assert sensors == ["acme_csv_inbox", "claro_run_completed", "claro_run_failed", "claro_run_started",
                       "claro_stuck_batches", "globex_xlsx_inbox", "products_enrichment",
                       "products_onboarding_destinations", "products_onboarding_review_checkpoint",
                       "products_revalidation", "suppliers_csv_inbox"]


def test_good_batch_passes_the_gate_and_publishes_once(project):
    result = project.run("acme_csv", name="weekly.csv", text=good_rows())
    assert result.success
    [check] = result.get_asset_check_evaluations()
    assert check.passed
    assert project.status().status == "published"
    assert project.claro.store.record("products", "TST-0002")["title"] == "Trail mug 2"
    assert project.claro.store.provenance("products", "TST-0002", "price").source == "acme_csv"
    processed = project.claro.inbox_dir("acme_csv") / "processed" / project.batch.key / "weekly.csv"
    assert processed.exists()
    changes = [e for e in project.claro.store.events() if not e["type"].startswith("run.")]  # run.*: per run
    rerun = run_batch(project.defs, project.instance, project.batch, stages=("records",))
    assert rerun.success
    [mat] = rerun.get_asset_materialization_events()
    assert mat.materialization.metadata["already_published"].value is True
    # a retried stage never duplicates anything
    assert [e for e in project.claro.store.events() if not e["type"].startswith("run.")] == changes


def test_gate_halts_a_bad_batch_and_records_refuses_it(project):
    rows = good_rows(2) + "TST-0100,,Acme Outdoor,5060123000048,abc,0.3,teal,M,SUP-9999,active\n" * 1
    rows += "TST-0101,No price,Acme Outdoor,1234,free,heavy,pink,XXXL,SUP-0001,active\n"
    result = project.run("acme_csv", name="bad.csv", text=rows)
    assert not result.success
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    materialized = {tuple(e.asset_key.path) for e in result.get_asset_materialization_events()}
    assert ("products", "batch_validated") in materialized
    assert ("products", "batch_normalized") not in materialized and ("products", "records") not in materialized
    batch = project.status()
    assert batch.status == "halted" and "2 of 4 rows failed validation" in batch.message
    assert project.claro.store.record("products", "TST-0001") is None  # nothing of the batch published
    rejected = project.registry.rejected_rows(batch.key)
    assert list(rejected["line"]) == [4, 5]
    assert "supplier" in rejected["reasons"][0] and "gtin" in rejected["reasons"][1]
    quarantined = project.claro.inbox_dir("acme_csv") / "quarantine" / batch.key
    assert (quarantined / "bad.csv").exists()
    assert "failed validation" in (quarantined / "bad.csv.reason.txt").read_text()
    # Running the stages after the gate by hand cannot bypass it: normalized runs, records refuses.
    again = run_batch(project.defs, project.instance, project.batch, stages=("batch_normalized", "records"))
    assert not again.success
    assert "will not publish it until batch_validated passes" in failures(again)
    assert project.claro.store.record("products", "TST-0001") is None


def test_duplicate_sku_in_one_file_names_both_lines(project):
    rows = good_rows(8) + good_rows(1, start=2).split("\n", 1)[1]  # 2 of 9 rows fail: within the 25% budget
    assert project.run("acme_csv", name="dupes.csv", text=rows).success
    rejected = project.registry.rejected_rows(project.batch.key)
    assert list(rejected["line"]) == [3, 10]
    assert all("appears on lines 3 and 10" in r for r in rejected["reasons"]), list(rejected["reasons"])
    assert project.claro.store.record("products", "TST-0002") is None  # neither line silently wins
    assert project.claro.store.record("products", "TST-0001") is not None


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("empty.csv", b"", "empty"),
    ("header_only.csv", HEADER.encode(), "no data rows"),
    ("binary.csv", b"\x00\x01\x02PK\x03\x04" * 200, "not a text file"),
    ("locked.xlsx", bytes.fromhex("D0CF11E0A1B11AE1") + b"\x00" * 512, "password-protected"),
])
def test_unreadable_files_are_quarantined_with_their_reason(project, name, content, expected):
    result = project.run("acme_csv", name=name, data=content)
    assert not result.success
    batch = project.status()
    assert batch.status == "quarantined" and expected in batch.message and name in batch.message
    folder = project.claro.inbox_dir("acme_csv") / "quarantine" / batch.key
    assert (folder / name).read_bytes() == content  # kept, never deleted
    assert expected in (folder / f"{name}.reason.txt").read_text()
    # Other batches keep working.
    assert project.run("acme_csv", name="next.csv", text=good_rows()).success


def test_spec_edited_while_a_batch_is_in_flight(project):
    project.drop("acme_csv", name="flight.csv", text=good_rows())
    project.batch = receive(project.claro, "acme_csv", project.claro.inbox_dir("acme_csv") / "flight.csv")
    first = run_batch(project.defs, project.instance, project.batch, stages=("batch_raw", "batch_mapped",
                                                                               "batch_validated"))
    assert first.success
    spec = Path(project.claro.spec_path)
    spec.write_text(spec.read_text().replace("error_budget: 0.25", "error_budget: 0.3"))
    # The definitions of a new run load the edited spec; publishing refuses rules it was not validated under.
    defs = build_definitions(spec, project.root / "home")
    rest = run_batch(defs, project.instance, project.batch, stages=("batch_normalized", "records"))
    assert not rest.success
    assert "changed after batch" in failures(rest) and "re-run batch_validated" in failures(rest)
    again = run_batch(defs, project.instance, project.batch, stages=("batch_validated", "batch_normalized", "records"))
    assert again.success and project.status().status == "published"


def test_overwrites_wait_for_review_with_demo_thresholds(project):
    assert project.run("acme_csv", name="first.csv", text=good_rows()).success
    changed = good_rows().replace("Trail mug 1,", "Trail mug one,")
    assert project.run("globex_xlsx", name="second.csv", text=changed).success
    items = ReviewQueue(project.claro.store).list()
    assert [(i.record, i.field, i.new) for i in items] == [("TST-0001", "title", "Trail mug one")]


def test_inbox_sensor_requests_a_run_per_new_file(project):
    path = project.drop("acme_csv", name="sensor.csv", text=good_rows())
    os.utime(path, (path.stat().st_atime - 60, path.stat().st_mtime - 60))  # settled: not still being written
    sensor = project.defs.resolve_sensor_def("acme_csv_inbox")
    context = dg.build_sensor_context(instance=project.instance, instance_ref=project.instance.get_ref(),
                                      definitions=project.defs)
    result = sensor.evaluate_tick(context)
    [request] = result.run_requests
    assert request.partition_key.startswith("acme_csv.sensor.csv.")
    assert request.tags["claro/uri"] == str(path.resolve())


def test_normalized_reads_what_validated_carries_and_reruns_alone(project):
    rows = good_rows(3).replace("Trail mug 2,Acme Outdoor", "  Trail   mug 2 ,Acme Outdoor").replace(
        ",grey,M,", ",Gray,medium,").replace("0.3,", "300 g,")
    assert project.run("acme_csv", name="messy.csv", text=rows).success
    stages = project.root / "home" / "stages" / "products"
    validated = pd.read_parquet(stages / "batch_validated" / f"{project.batch.key}.parquet")
    # the verdict and each attribute's normalized value travel with the batch to batch_normalized
    assert validated["__rejected__"].tolist() == [False, False, False]
    assert validated["__normalized__:weight"].tolist() == [0.3, 0.3, 0.3]
    assert validated["__change__:colour"].tolist() == ["synonym 'Gray' -> 'grey'"] * 3
    log = project.claro.batch_dir(project.batch.key) / "normalizations.csv"
    first = log.read_text()
    assert "converted 300 g to kg" in first and "trimmed whitespace" in first
    normalized = pd.read_parquet(stages / "batch_normalized" / f"{project.batch.key}.parquet")
    assert normalized["title"].tolist() == ["Trail mug 1", "Trail mug 2", "Trail mug 3"]
    assert normalized["weight"].tolist() == [0.3, 0.3, 0.3] and normalized["size"].tolist() == ["M"] * 3
    assert not any(c.startswith("__normalized__") or c == "__rejected__" for c in normalized.columns)
    # re-running one stage from the stored batch_validated gives the same batch and change log
    log.unlink()
    assert run_batch(project.defs, project.instance, project.batch, stages=("batch_normalized",)).success
    assert log.read_text() == first
    pd.testing.assert_frame_equal(pd.read_parquet(stages / "batch_normalized" / f"{project.batch.key}.parquet"),
                                  normalized)
