"""Inbound sensors evaluated tick by tick against a real inbox folder and a real (moto) S3 server.

Between ticks the test does what the sensor daemon does with a tick's result: it stores the cursor
and applies the dynamic-partition add requests to the instance.
"""

from __future__ import annotations

import builtins
import io
import json
import os
from pathlib import Path

import dagster as dg
import pytest

from claro_dagster.catalogue.batches import batch_key, receipt_version
from claro_dagster.resources.inbox import Inbox
from claro_dagster.resources.s3 import S3Connection, S3Cursor
from claro_dagster.sensors.inbound import build_inbox_sensor, build_s3_sensor

PARTS = dg.DynamicPartitionsDefinition(name="products_batches")
BATCH_RAW = dg.AssetKey(["products", "batch_raw"])


@dg.asset(partitions_def=PARTS, key=["products", "batch_raw"])
def batch_raw(context) -> str:
    return context.run.tags.get("claro/uri", "")


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


class Ticker:
    """Evaluates a sensor like the daemon: cursor carried over, partition adds applied."""

    def __init__(self, sensor: dg.SensorDefinition, instance: dg.DagsterInstance, resources=None):
        self.sensor = sensor
        self.instance = instance
        self.resources = resources or {}
        self.cursor: str | None = None
        self.defs = dg.Definitions(assets=[batch_raw], sensors=[sensor], resources=self.resources)

    def tick(self):
        context = dg.build_sensor_context(
            instance=self.instance, instance_ref=self.instance.get_ref(), cursor=self.cursor,
            definitions=self.defs, resources=self.resources,
        )
        result = self.sensor.evaluate_tick(context)
        self.cursor = result.cursor
        for request in result.dynamic_partitions_requests or []:
            self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        return result


def _added(result) -> list[str]:
    return [k for r in result.dynamic_partitions_requests or [] for k in r.partition_keys]


# -- inbox -------------------------------------------------------------------------------------------

def _receipt(path: Path) -> str:
    stat = path.stat()
    return receipt_version(path.name, stat.st_size, stat.st_mtime_ns)


def _inbox_sensor(root: Path, **kwargs) -> dg.SensorDefinition:
    return build_inbox_sensor("acme_inbox", "acme", root, target=[BATCH_RAW], partitions_def=PARTS, **kwargs)


def test_inbox_sensor_definition(tmp_path):
    sensor = _inbox_sensor(tmp_path)
    assert sensor.name == "acme_inbox"
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 5
    defs = dg.Definitions(assets=[batch_raw], sensors=[sensor])
    dg.Definitions.validate_loadable(defs)
    assert defs.resolve_job_def(sensor.job_name).asset_layer.selected_asset_keys == {BATCH_RAW}


def test_inbox_sensor_requests_one_run_per_file(tmp_path, instance):
    ticker = Ticker(_inbox_sensor(tmp_path), instance)
    assert ticker.tick().skip_message.startswith("no pending files")

    path = tmp_path / "products.csv"
    path.write_text("sku,name\n001,Chair\n")
    (tmp_path / "next.csv.part").write_text("half a fi")
    (tmp_path / ".DS_Store").write_text("x")
    result = ticker.tick()

    version = _receipt(path)
    key = batch_key("acme", "products.csv", version)
    [request] = result.run_requests
    assert request.run_key == key and request.partition_key == key
    assert {k: v for k, v in request.tags.items() if k.startswith("claro/")} == {
        "claro/source": "acme", "claro/uri": str(path.resolve()),
        "claro/content_version": version, "claro/batch": key}
    assert _added(result) == [key]
    assert instance.get_dynamic_partitions("products_batches") == [key]
    assert json.loads(ticker.cursor)["files"]["products.csv"] == version


def test_inbox_same_file_twice_gives_same_run_key_changed_file_a_new_one(tmp_path, instance):
    ticker = Ticker(_inbox_sensor(tmp_path), instance)
    path = tmp_path / "products.csv"
    path.write_text("sku\n001\n")
    first = ticker.tick()
    again = ticker.tick()  # still pending (the run has not moved it yet)

    assert [r.run_key for r in again.run_requests] == [r.run_key for r in first.run_requests]
    assert _added(again) == []  # partition already exists: no add request

    path.write_text("sku\n001\n002\n")
    changed = ticker.tick()
    [request] = changed.run_requests
    assert request.run_key != first.run_requests[0].run_key
    assert request.run_key == batch_key("acme", "products.csv", _receipt(path))
    assert _added(changed) == [request.run_key]
    assert len(instance.get_dynamic_partitions("products_batches")) == 2


def test_inbox_sensor_ignores_files_moved_by_the_run(tmp_path, instance):
    ticker = Ticker(_inbox_sensor(tmp_path), instance)
    path = tmp_path / "products.csv"
    path.write_text("sku\n001\n")
    [request] = ticker.tick().run_requests

    Inbox(tmp_path).mark_processed(path, request.partition_key)  # what the run does
    result = ticker.tick()
    assert result.run_requests == [] and result.skip_message
    assert json.loads(ticker.cursor)["files"] == {}


def test_inbox_sensor_several_files_and_materialize_the_requested_partition(tmp_path, instance):
    ticker = Ticker(_inbox_sensor(tmp_path), instance)
    for name in ["a.csv", "b.csv", "c.xlsx"]:
        (tmp_path / name).write_bytes(name.encode())
    result = ticker.tick()
    assert len(result.run_requests) == 3
    assert sorted(_added(result)) == sorted(r.run_key for r in result.run_requests)

    request = result.run_requests[0]
    run = dg.materialize([batch_raw], instance=instance, partition_key=request.partition_key,
                         tags={k: v for k, v in request.tags.items() if k.startswith("claro/")})
    assert run.success and run.output_for_node("products__batch_raw") == request.tags["claro/uri"]


def test_inbox_sensor_a_file_dropped_again_after_it_was_settled_is_a_new_receipt(tmp_path, instance):
    ticker = Ticker(_inbox_sensor(tmp_path), instance)
    path = tmp_path / "products.csv"

    def send(mtime: int) -> None:  # the supplier sends the same bytes (again), stamped `mtime`
        path.write_text("sku\n001\n")
        os.utime(path, ns=(mtime, mtime))

    send(1_700_000_000_000_000_000)
    [first] = ticker.tick().run_requests
    key = first.partition_key
    assert first.run_key == key
    Inbox(tmp_path).quarantine(path, key, "no price column")  # what the run does with a bad file

    send(1_700_000_000_000_000_000)  # a copy that kept its time (cp -p, rsync -t): the same batch key
    [second] = ticker.tick().run_requests
    assert (second.partition_key, second.run_key) == (key, f"{key}:2")  # same batch, a run of its own
    assert [r.run_key for r in ticker.tick().run_requests] == [f"{key}:2"]  # until the run moves it
    Inbox(tmp_path).mark_processed(path, key)
    send(1_700_000_000_000_000_000)
    assert [r.run_key for r in ticker.tick().run_requests] == [f"{key}:3"]
    Inbox(tmp_path).mark_processed(path, key)

    send(1_700_000_100_000_000_000)  # sent again later: a receipt of its own (the run tells if it is a copy)
    [later] = ticker.tick().run_requests
    assert later.partition_key != key and later.run_key == later.partition_key


def test_inbox_tick_never_reads_a_file_whatever_its_size(tmp_path, instance, monkeypatch):
    big = tmp_path / "catalogue.csv"
    with open(big, "wb") as handle:  # 4 GiB, sparse: nothing to read in a tick
        handle.truncate(4 << 30)
    inbox = str(tmp_path.resolve())
    opened: list[str] = []

    def guarded(original):
        def open_(file, *args, **kwargs):
            if isinstance(file, str | os.PathLike) and os.path.realpath(file).startswith(inbox):
                opened.append(str(file))
                raise AssertionError(f"a sensor tick opened {file}")
            return original(file, *args, **kwargs)
        return open_

    for module, name in ((builtins, "open"), (io, "open"), (os, "open")):
        monkeypatch.setattr(module, name, guarded(getattr(module, name)))
    ticker = Ticker(_inbox_sensor(tmp_path), instance)
    [request] = ticker.tick().run_requests
    [again] = ticker.tick().run_requests
    monkeypatch.undo()
    assert opened == []
    assert request.partition_key == again.partition_key == batch_key("acme", "catalogue.csv", _receipt(big))


def test_inbox_sensor_survives_unreadable_cursor(tmp_path, instance):
    ticker = Ticker(_inbox_sensor(tmp_path), instance)
    (tmp_path / "a.csv").write_text("a")
    ticker.cursor = "not json"
    assert len(ticker.tick().run_requests) == 1


# -- S3 ----------------------------------------------------------------------------------------------

def _s3_sensor(bucket: str, **kwargs) -> dg.SensorDefinition:
    return build_s3_sensor("acme_s3", "acme", bucket, "incoming/", target=[BATCH_RAW], partitions_def=PARTS,
                           **kwargs)


def _put(s3: S3Connection, bucket: str, key: str, body: bytes) -> str:
    return s3.client().put_object(Bucket=bucket, Key=key, Body=body)["ETag"].strip('"')


def test_s3_sensor_definition(bucket, s3):
    sensor = _s3_sensor(bucket)
    assert sensor.required_resource_keys == {"s3"}
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 30
    dg.Definitions.validate_loadable(dg.Definitions(assets=[batch_raw], sensors=[sensor], resources={"s3": s3}))


def test_s3_sensor_pages_across_ticks(bucket, s3, instance):
    etags = {f"incoming/p{i}.csv": _put(s3, bucket, f"incoming/p{i}.csv", f"file {i}".encode())
             for i in range(5)}
    _put(s3, bucket, "elsewhere/x.csv", b"not under the prefix")
    ticker = Ticker(_s3_sensor(bucket, page_size=2), instance, resources={"s3": s3})

    ticks = [ticker.tick() for _ in range(3)]
    assert [len(t.run_requests) for t in ticks] == [2, 2, 1]
    assert [S3Cursor.from_json(t.cursor).in_pass for t in ticks] == [True, True, False]
    requests = [r for t in ticks for r in t.run_requests]
    expected = {batch_key("acme", k.rsplit("/", 1)[1], etag): (k, etag) for k, etag in etags.items()}
    assert {r.partition_key for r in requests} == set(expected)
    for request in requests:
        key, etag = expected[request.partition_key]
        assert request.run_key.startswith(f"{request.partition_key}@")  # this upload of that content
        assert request.tags["claro/uri"] == f"s3://{bucket}/{key}"
        assert request.tags["claro/content_version"] == etag
        assert request.tags["claro/source"] == "acme"
    assert sorted(instance.get_dynamic_partitions("products_batches")) == sorted(expected)

    for _ in range(3):  # another full pass: nothing new
        quiet = ticker.tick()
        assert quiet.run_requests == [] and quiet.skip_message


def test_s3_sensor_reupload(bucket, s3, instance):
    for name in ["a.csv", "b.csv", "c.csv"]:
        _put(s3, bucket, f"incoming/{name}", name.encode())
    ticker = Ticker(_s3_sensor(bucket), instance, resources={"s3": s3})
    first = {r.run_key for r in ticker.tick().run_requests}
    assert len(first) == 3

    _put(s3, bucket, "incoming/a.csv", b"a.csv")  # identical bytes: same ETag, not requested again
    new_etag = _put(s3, bucket, "incoming/b.csv", b"b.csv, corrected")
    [request] = ticker.tick().run_requests
    assert request.partition_key == batch_key("acme", "b.csv", new_etag) and request.run_key not in first
    assert _added(ticker.tick()) == [] and ticker.tick().run_requests == []


def test_s3_sensor_skips_folder_markers(bucket, s3, instance):
    _put(s3, bucket, "incoming/", b"")
    _put(s3, bucket, "incoming/sub/", b"")
    ticker = Ticker(_s3_sensor(bucket), instance, resources={"s3": s3})
    assert ticker.tick().run_requests == []
