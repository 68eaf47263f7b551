"""The inbound flow of batches through the real sensors and the real stage assets.

The daemon is emulated as it behaves: a sensor tick's cursor is kept, its partitions are added, and a run
key it launched once is never launched again. The catalogue database and S3 are made to fail the way they
do in production (a locked database, a connection that cannot be made) to show what a transient failure
does to a batch: nothing that a retry cannot undo.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from botocore.exceptions import EndpointConnectionError
from sqlalchemy import exc as sa_exc

from claro_dagster.assets import onboarding
from claro_dagster.catalogue.batches import BatchRegistry, batch_key, content_version
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.definitions import build_definitions
from claro_dagster.local import receive, run_batch
from claro_dagster.resources.s3 import S3Connection
from claro_dagster.spec import DEMO_DIR
from tests.e2e.harness import wait_until

HEADER = "sku,title,brand,gtin,price,weight,colour,size,supplier,status\n"
ROW = "TST-{i:04d},Trail mug {i},Acme Outdoor,{gtin},{i}.50,0.3,grey,M,SUP-0001,active"
SUPPLIERS = DEMO_DIR / "inbox" / "suppliers" / "suppliers.csv"
SHIPPED_RETRY = onboarding.STAGE_RETRY


def gtin(i: int) -> str:
    from stdnum import ean

    body = f"506012399{i:03d}"
    return body + ean.calc_check_digit(body)


def rows(start: int, n: int = 2) -> str:
    return HEADER + "\n".join(ROW.format(i=i, gtin=gtin(i)) for i in range(start, start + n)) + "\n"


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    """The stages keep their retry policy, without the real one's 15 s and more between attempts."""
    monkeypatch.setattr(onboarding, "STAGE_RETRY", dg.RetryPolicy(max_retries=2))


def project(tmp_path: Path, extra_sources: str = "", extra_pipeline_sources: str = ""):
    spec = tmp_path / "claro.yaml"
    text = (DEMO_DIR / "claro.yaml").read_text(encoding="utf-8")
    text = text.replace("\nsources:\n", "\nsources:\n" + extra_sources, 1)
    text = text.replace("sources: [acme_csv, globex_xlsx]", f"sources: [acme_csv, globex_xlsx{extra_pipeline_sources}]")
    spec.write_text(text, encoding="utf-8")
    return build_definitions(spec, tmp_path / "home")


class Daemon:
    """Ticks sensors like the sensor daemon and launches what they request, in this process."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance):
        self.defs, self.instance = defs, instance
        self.cursors: dict[str, str | None] = {}
        self.launched: set[str] = set()
        self.claro = defs.resources["claro"]

    def tick(self, name: str) -> list[dg.ExecuteInProcessResult]:
        sensor = self.defs.resolve_sensor_def(name)
        context = dg.build_sensor_context(instance=self.instance, instance_ref=self.instance.get_ref(),
                                          cursor=self.cursors.get(name), definitions=self.defs,
                                          resources={k: self.defs.resources[k] for k in sensor.required_resource_keys})
        result = sensor.evaluate_tick(context)
        self.cursors[name] = result.cursor
        for request in result.dynamic_partitions_requests or []:
            self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        selection = self.defs.resolve_job_def(sensor.job_name).asset_layer.selected_asset_keys
        runs = []
        for request in result.run_requests or []:
            if request.run_key in self.launched:  # Dagster remembers run keys forever
                continue
            self.launched.add(request.run_key)
            runs.append(dg.materialize(list(self.defs.assets), selection=list(selection),
                                       partition_key=request.partition_key, instance=self.instance,
                                       resources=self.defs.resources, tags=request.tags, raise_on_error=False))
        return runs

    def batch(self, key: str):
        return BatchRegistry(self.claro.store).get(key)


def settled(path: Path) -> Path:
    """Older than the inbox sensors' minimum age: not a file still being written."""
    os.utime(path, (time.time() - 60, time.time() - 60))
    return path


def drop(claro, source: str, name: str, text: str, folder: str = "") -> Path:
    inbox = claro.inbox_dir(source) / folder
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / name).write_text(text, encoding="utf-8")
    return settled(inbox / name)


def retried(result: dg.ExecuteInProcessResult) -> int:
    return sum(1 for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY")


def failures(result) -> str:
    return "\n".join(e.step_failure_data.error.to_string() for e in result.all_events if e.is_step_failure)


def locked_database(monkeypatch, times: int | None) -> list[str]:
    """The catalogue database answers as a locked SQLite file does: the first `times` reads fail (None: all)."""
    original = CatalogueStore.catalogue
    calls: list[str] = []

    def catalogue(self, name):
        calls.append(name)
        if times is None or len(calls) <= times:
            raise sa_exc.OperationalError("SELECT ...", {}, sqlite3.OperationalError("database is locked"))
        return original(self, name)

    monkeypatch.setattr(CatalogueStore, "catalogue", catalogue)
    return calls


@pytest.fixture
def demo(tmp_path):
    defs = project(tmp_path)
    with dg.instance_for_test() as instance:
        daemon = Daemon(defs, instance)
        suppliers = drop(daemon.claro, "suppliers_csv", "suppliers.csv", SUPPLIERS.read_text())
        assert run_batch(defs, instance, receive(daemon.claro, "suppliers_csv", suppliers)).success
        yield daemon


# -- item 5: transient failures never quarantine -------------------------------------------------------------

def test_stages_retry_with_backoff_and_data_failures_are_not_retried(tmp_path, monkeypatch):
    monkeypatch.setattr(onboarding, "STAGE_RETRY", SHIPPED_RETRY)
    defs = build_definitions(DEMO_DIR / "claro.yaml", tmp_path / "home")
    for key in [dg.AssetKey(["products", s]) for s in (*onboarding.STAGES, onboarding.CHECKPOINT)]:
        policy = defs.resolve_assets_def(key).op.retry_policy
        assert policy.max_retries >= 2 and policy.delay >= 5 and policy.backoff == dg.Backoff.EXPONENTIAL, key
    assert onboarding.BatchDataError("x").allow_retries is False
    assert onboarding.BatchRefused("x").allow_retries is False


def test_a_database_locked_for_a_moment_is_retried_and_the_batch_publishes(demo, monkeypatch):
    path = drop(demo.claro, "acme_csv", "weekly.csv", rows(1))
    calls = locked_database(monkeypatch, times=1)
    [run] = demo.tick("acme_csv_inbox")
    assert run.success and retried(run) == 1 and calls
    key = run.dagster_run.tags["claro/batch"]
    # The tick named the batch without reading the file; the run recorded its content hash.
    assert demo.batch(key).content_version == content_version(path.parent / "processed" / key / "weekly.csv")
    assert demo.batch(key).status == "published"
    assert (demo.claro.inbox_dir("acme_csv") / "processed" / key / "weekly.csv").exists() and not path.exists()
    assert not (demo.claro.inbox_dir("acme_csv") / "quarantine").exists()


def test_a_database_that_stays_locked_fails_the_run_and_leaves_the_file(demo, monkeypatch):
    path = drop(demo.claro, "acme_csv", "weekly.csv", rows(1))
    locked_database(monkeypatch, times=None)
    [run] = demo.tick("acme_csv_inbox")
    assert not run.success and retried(run) == 2  # the policy's attempts, then the run fails
    assert "database is locked" in failures(run) and "not a problem of the file" in failures(run)
    monkeypatch.undo()
    key = run.dagster_run.tags["claro/batch"]
    assert path.exists()  # where the supplier put it
    assert not (demo.claro.inbox_dir("acme_csv") / "quarantine").exists()
    assert demo.batch(key).status != "quarantined"
    # Once the database answers, the same batch goes through (as a re-execution of the run would).
    rerun = run_batch(demo.defs, demo.instance, demo.batch(key))
    assert rerun.success and demo.batch(key).status == "published" and not path.exists()


def test_a_defect_in_a_stage_fails_the_batch_without_quarantine_or_retry(demo, monkeypatch):
    path = drop(demo.claro, "acme_csv", "weekly.csv", rows(1))

    def broken(*args, **kwargs):
        raise KeyError("unit")

    monkeypatch.setattr(onboarding, "normalize_batch", broken)
    [run] = demo.tick("acme_csv_inbox")
    assert not run.success and retried(run) == 0
    key = run.dagster_run.tags["claro/batch"]
    batch = demo.batch(key)
    assert (batch.status, batch.stage) == ("failed", "batch_normalized")
    assert "unexpected KeyError" in failures(run) and f"claro rerun {key} batch_normalized" in failures(run)
    assert path.exists() and not (demo.claro.inbox_dir("acme_csv") / "quarantine").exists()


def test_a_file_dropped_again_after_quarantine_is_processed_again(demo):
    drop(demo.claro, "acme_csv", "empty.csv", "")
    [first] = demo.tick("acme_csv_inbox")
    assert not first.success
    key = first.dagster_run.tags["claro/batch"]
    assert demo.batch(key).status == "quarantined"
    assert "empty" in (demo.claro.inbox_dir("acme_csv") / "quarantine" / key / "empty.csv.reason.txt").read_text()
    assert retried(first) == 0  # a data failure fails the same way every time: not retried

    again = drop(demo.claro, "acme_csv", "empty.csv", "", folder="resent")  # the supplier sends it again
    [second] = demo.tick("acme_csv_inbox")
    resent = second.dagster_run.tags["claro/batch"]  # a new receipt (new modification time): a batch of its own
    assert resent != key and not second.success
    assert demo.batch(resent).status == "quarantined"
    assert demo.batch(resent).content_version == demo.batch(key).content_version  # the same content, again
    assert not again.exists()
    assert (demo.claro.inbox_dir("acme_csv") / "quarantine" / resent / "empty.csv").exists()
    assert demo.tick("acme_csv_inbox") == []


def test_an_identical_file_after_publishing_is_acknowledged_by_the_sensor_path(demo):
    drop(demo.claro, "acme_csv", "weekly.csv", rows(1))
    [first] = demo.tick("acme_csv_inbox")
    assert first.success
    key = first.dagster_run.tags["claro/batch"]
    events = len(demo.claro.store.events())

    again = drop(demo.claro, "acme_csv", "weekly.csv", rows(1))
    [second] = demo.tick("acme_csv_inbox")
    assert second.success
    assert [e.asset_key for e in second.get_asset_materialization_events()] == []  # nothing processed again
    assert not again.exists()
    receipt = second.dagster_run.tags["claro/batch"]  # named by the tick from name, size and time: not `key`
    assert receipt != key and demo.batch(receipt) is None  # the run found the content published: no new batch
    note = demo.claro.inbox_dir("acme_csv") / "processed" / receipt / "weekly.csv.note.txt"
    assert note.read_text().startswith(f"already published: this file holds the same content as batch {key}")
    assert demo.batch(key).status == "published"
    assert len(demo.claro.store.events()) == events
    assert demo.tick("acme_csv_inbox") == []


def test_a_file_changed_under_the_same_name_is_a_new_batch(demo):
    path = drop(demo.claro, "acme_csv", "weekly.csv", rows(1))
    [first] = demo.tick("acme_csv_inbox")
    assert first.success
    drop(demo.claro, "acme_csv", "weekly.csv", rows(3))  # the supplier corrects the file: other content
    [second] = demo.tick("acme_csv_inbox")
    assert second.success and second.get_asset_materialization_events()  # processed
    key, changed = first.dagster_run.tags["claro/batch"], second.dagster_run.tags["claro/batch"]
    assert changed != key and demo.batch(changed).status == "published"
    assert demo.batch(changed).content_version != demo.batch(key).content_version
    assert demo.claro.store.record("products", "TST-0004") is not None and not path.exists()


def test_other_content_under_a_published_receipt_is_refused_until_touched(demo):
    """Name, size and modification time alike, bytes not (a rewrite within the file system's clock tick): the run
    hashes the file, so it is neither acknowledged as a copy nor mistaken for the published batch."""
    stamp = 1_700_000_000_000_000_000
    path = drop(demo.claro, "acme_csv", "weekly.csv", rows(1))
    os.utime(path, ns=(stamp, stamp))
    [first] = demo.tick("acme_csv_inbox")
    assert first.success
    key = first.dagster_run.tags["claro/batch"]
    path = drop(demo.claro, "acme_csv", "weekly.csv", rows(5))  # as long as rows(1)
    os.utime(path, ns=(stamp, stamp))
    [second] = demo.tick("acme_csv_inbox")
    assert second.dagster_run.tags["claro/batch"] == key and not second.success
    assert "touch the file" in failures(second) and path.exists()
    assert demo.claro.store.record("products", "TST-0005") is None and demo.batch(key).status == "published"
    settled(path)  # touched: a new receipt, processed
    [third] = demo.tick("acme_csv_inbox")
    assert third.success and third.dagster_run.tags["claro/batch"] != key
    assert demo.claro.store.record("products", "TST-0005") is not None and not path.exists()


# -- item 7: upload sources are processed ---------------------------------------------------------------------

def test_an_upload_source_receives_files_through_claro_upload(tmp_path):
    defs = project(tmp_path, extra_sources="  portal:\n    catalogue: products\n", extra_pipeline_sources=", portal")
    claro = defs.resources["claro"]
    assert claro.spec.sources["portal"].kind == "upload"
    with dg.instance_for_test() as instance:
        daemon = Daemon(defs, instance)
        suppliers = drop(claro, "suppliers_csv", "suppliers.csv", SUPPLIERS.read_text())
        assert run_batch(defs, instance, receive(claro, "suppliers_csv", suppliers)).success
        file = tmp_path / "from_the_portal.csv"
        file.write_text(rows(5), encoding="utf-8")
        env = {**os.environ, "CLARO_HOME": str(tmp_path / "home")}
        done = subprocess.run([sys.executable, "-m", "claro_dagster.cli", "--spec", str(tmp_path / "claro.yaml"),
                               "upload", str(file), "--source", "portal"], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert "portal_upload sensor" in done.stdout
        settled(claro.inbox_dir("portal") / "from_the_portal.csv")
        [run] = daemon.tick("portal_upload")
        assert run.success
        assert daemon.batch(run.dagster_run.tags["claro/batch"]).status == "published"
        assert claro.store.provenance("products", "TST-0005", "price").source == "portal"


def test_claro_run_processes_upload_sources(tmp_path):
    from claro_dagster.local import run_everything

    project(tmp_path, extra_sources="  portal:\n    catalogue: products\n", extra_pipeline_sources=", portal")
    claro = build_definitions(tmp_path / "claro.yaml", tmp_path / "home").resources["claro"]
    drop(claro, "suppliers_csv", "suppliers.csv", SUPPLIERS.read_text())
    drop(claro, "portal", "from_the_portal.csv", rows(7))
    summary = run_everything(tmp_path / "claro.yaml", tmp_path / "home", progress=lambda m: None)
    assert {b.source: b.status for b in summary.batches} == {"suppliers_csv": "published", "portal": "published"}
    assert claro.store.record("products", "TST-0007") is not None


def test_claro_upload_refuses_an_s3_source(tmp_path):
    project(tmp_path, extra_sources="  bucket_feed:\n    catalogue: products\n    kind: s3\n    bucket: feed\n")
    file = tmp_path / "f.csv"
    file.write_text(rows(1), encoding="utf-8")
    env = {**os.environ, "CLARO_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-m", "claro_dagster.cli", "--spec", str(tmp_path / "claro.yaml"),
                           "upload", str(file), "--source", "bucket_feed"], env=env, capture_output=True, text=True)
    assert done.returncode == 1 and "receives its files from s3://feed/" in done.stderr


# -- item 12: keys and tags never become arbitrary paths ---------------------------------------------------

def test_a_run_tag_naming_a_file_outside_the_inbox_is_refused(demo, tmp_path):
    secret = tmp_path / "secret.csv"
    secret.write_text(rows(1), encoding="utf-8")
    link = demo.claro.inbox_dir("acme_csv") / "innocent.csv"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(secret)
    for uri in (str(secret), str(link), "s3://any-bucket/x.csv"):
        key = batch_key("acme_csv", "x.csv", uuid.uuid4().hex)
        demo.instance.add_dynamic_partitions("products_batches", [key])
        result = dg.materialize(list(demo.defs.assets), selection=[dg.AssetKey(["products", "batch_raw"])],
                                partition_key=key, instance=demo.instance, resources=demo.defs.resources,
                                tags={"claro/source": "acme_csv", "claro/uri": uri}, raise_on_error=False)
        assert not result.success and "batches are received from there only" in failures(result), uri
        assert demo.batch(key) is None and not (demo.claro.home_dir / "batches" / key).exists()
    assert secret.exists() and link.is_symlink()
    assert demo.tick("acme_csv_inbox") == []  # the link is not a pending file either


@pytest.mark.parametrize("key", ["../../escape", "..", "a/b"])
def test_a_partition_key_that_is_a_path_is_refused(demo, key):
    demo.instance.add_dynamic_partitions("products_batches", [key])
    result = dg.materialize(list(demo.defs.assets), selection=[dg.AssetKey(["products", "batch_raw"])],
                            partition_key=key, instance=demo.instance, resources=demo.defs.resources,
                            raise_on_error=False)
    assert not result.success and "is not a batch key" in failures(result)
    home = demo.claro.home_dir
    assert not (home / "escape").exists() and not (home.parent / "escape").exists()


def test_batch_keys_are_checked_where_they_enter(demo, tmp_path):
    from claro_dagster.catalogue.batches import InvalidBatchKey
    from claro_dagster.resources.catalogue import BatchFrameIOManager

    with pytest.raises(InvalidBatchKey):
        BatchRegistry(demo.claro.store).register("../x", catalogue="products", source="acme_csv", filename="x.csv",
                                                 uri=str(tmp_path / "x.csv"))
    with pytest.raises(InvalidBatchKey):
        demo.claro.batch_dir("../../x")
    frames = BatchFrameIOManager(base_dir=str(tmp_path / "stages"))
    with pytest.raises(dg.Failure, match="is not a batch key"):
        frames.handle_output(dg.build_output_context(asset_key=dg.AssetKey(["products", "batch_raw"]),
                                                     partition_key="../../../outside"), pd.DataFrame({"a": [1]}))
    assert not (tmp_path / "outside.parquet").exists()
    env = {**os.environ, "CLARO_HOME": str(demo.claro.home_dir)}
    done = subprocess.run([sys.executable, "-m", "claro_dagster.cli", "--spec", demo.claro.spec_path, "rerun",
                           "../x", "batch_raw"], env=env, capture_output=True, text=True)
    assert done.returncode == 1 and "is not a batch key" in done.stderr


# -- item 6: S3 sources onboard, each through its own endpoint ---------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def second_endpoint():
    """A second, separate S3 server (its own process, so its own buckets)."""
    port = _free_port()
    server = subprocess.Popen([shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server",
                               "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def listening() -> tuple[bool, str]:
        socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
        return True, "listening"

    def alive() -> None:
        assert server.poll() is None, "moto_server did not start"

    try:
        wait_until(listening, timeout=10, interval=0.05, what=f"moto_server on port {port}", guard=alive)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


S3_SOURCES = """\
  acme_bucket:
    catalogue: products
    kind: s3
    bucket: {a}
    prefix: incoming/
    endpoint_url_env: CLARO_TEST_ACME_S3
  globex_bucket:
    catalogue: products
    kind: s3
    bucket: {b}
    endpoint_url_env: CLARO_TEST_GLOBEX_S3
"""


def test_s3_sources_onboard_each_through_its_own_endpoint(tmp_path, monkeypatch, moto_endpoint, second_endpoint):
    from conftest import s3_connection

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("CLARO_TEST_ACME_S3", moto_endpoint)
    monkeypatch.setenv("CLARO_TEST_GLOBEX_S3", second_endpoint)
    a, b = (f"claro-test-{uuid.uuid4().hex[:10]}" for _ in range(2))
    acme, globex = s3_connection(moto_endpoint), s3_connection(second_endpoint)
    acme.ensure_bucket(a)
    globex.ensure_bucket(b)
    acme.client().put_object(Bucket=a, Key="incoming/weekly.csv", Body=rows(11).encode())
    acme.client().put_object(Bucket=a, Key="elsewhere/other.csv", Body=rows(90).encode())  # not under the prefix
    globex.client().put_object(Bucket=b, Key="drop/globex.csv", Body=rows(21).encode())
    defs = project(tmp_path, extra_sources=S3_SOURCES.format(a=a, b=b),
                   extra_pipeline_sources=", acme_bucket, globex_bucket")
    claro = defs.resources["claro"]
    with dg.instance_for_test() as instance:
        daemon = Daemon(defs, instance)
        suppliers = drop(claro, "suppliers_csv", "suppliers.csv", SUPPLIERS.read_text())
        assert run_batch(defs, instance, receive(claro, "suppliers_csv", suppliers)).success

        # S3 times out once while the batch is fetched: retried, published, nothing quarantined.
        download = S3Connection.download
        calls = []

        def flaky(self, bucket, key, dest):
            calls.append(key)
            if len(calls) == 1:
                raise EndpointConnectionError(endpoint_url=self.endpoint())
            return download(self, bucket, key, dest)

        monkeypatch.setattr(S3Connection, "download", flaky)
        [run_a] = daemon.tick("acme_bucket_s3")
        assert run_a.success and retried(run_a) == 1
        [run_b] = daemon.tick("globex_bucket_s3")
        assert run_b.success, failures(run_b)
        for run, source, sku in ((run_a, "acme_bucket", "TST-0011"), (run_b, "globex_bucket", "TST-0021")):
            batch = daemon.batch(run.dagster_run.tags["claro/batch"])
            assert batch.status == "published" and batch.source == source
            assert claro.store.provenance("products", sku, "price").source == source
        assert claro.store.record("products", "TST-0090") is None
        assert globex.client().list_buckets()["Buckets"] != acme.client().list_buckets()["Buckets"]

        # The same object uploaded again after it was published is acknowledged, not processed again.
        events = len(claro.store.events())
        acme.client().put_object(Bucket=a, Key="incoming/weekly.csv", Body=rows(11).encode())
        daemon.cursors["acme_bucket_s3"] = None  # a pass that lists it again (after the cursor forgot it)
        [again] = daemon.tick("acme_bucket_s3")
        assert again.success and again.get_asset_materialization_events() == []
        assert len(claro.store.events()) == events
