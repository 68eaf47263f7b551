"""S3Connection against a real (moto) S3 server: cursor listing, downloads, versioned snapshots."""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime

import dagster as dg
import pandas as pd
import pytest
from botocore.exceptions import ClientError

import claro_dagster.resources.s3 as s3mod
from claro_dagster.resources.s3 import S3Connection, S3Cursor, S3Object


def _put(s3: S3Connection, bucket: str, key: str, body: bytes) -> str:
    return s3.client().put_object(Bucket=bucket, Key=key, Body=body)["ETag"].strip('"')


def _drain_pass(s3, bucket, prefix, cursor, page_size=2, **kwargs):
    """Run calls until the current pass completes; returns (objects per call, cursor)."""
    calls: list[list[S3Object]] = []
    for _ in range(100):
        objects, cursor = s3.list_since(bucket, prefix, cursor, page_size, **kwargs)
        cursor = S3Cursor.from_json(cursor.to_json())  # as stored by a sensor between ticks
        calls.append(objects)
        if not cursor.in_pass:
            return calls, cursor
    raise AssertionError("listing pass did not complete")


def test_list_since_pages_across_calls(s3, bucket):
    etags = {f"in/{c}.csv": _put(s3, bucket, f"in/{c}.csv", c.encode()) for c in "edcba"}
    _put(s3, bucket, "other/x.csv", b"x")

    calls, cursor = _drain_pass(s3, bucket, "in/", None)

    assert [len(c) for c in calls] == [2, 2, 1]  # one page per call
    returned = [o for call in calls for o in call]
    assert sorted(o.key for o in returned) == sorted(etags)
    assert {o.key: o.etag for o in returned} == etags
    for call in calls:
        assert call == sorted(call, key=lambda o: (o.last_modified, o.key))
    assert all(o.bucket == bucket and o.uri == f"s3://{bucket}/{o.key}" for o in returned)
    assert all(o.last_modified.tzinfo is not None and o.size == 1 for o in returned)
    assert cursor.last_modified is not None and not cursor.in_pass

    # Two more full passes: nothing is returned twice.
    for _ in range(2):
        calls, cursor = _drain_pass(s3, bucket, "in/", cursor)
        assert [o for call in calls for o in call] == []


def test_reupload_with_new_content_is_seen_again_unchanged_never(s3, bucket):
    for c in "abcde":
        _put(s3, bucket, f"in/{c}.csv", c.encode())
    _, cursor = _drain_pass(s3, bucket, "in/", None)

    new_etag = _put(s3, bucket, "in/b.csv", b"b, corrected")
    _put(s3, bucket, "in/d.csv", b"d")  # re-uploaded with identical bytes: same ETag
    calls, cursor = _drain_pass(s3, bucket, "in/", cursor)
    returned = [o for call in calls for o in call]
    assert [(o.key, o.etag) for o in returned] == [("in/b.csv", new_etag)]

    calls, cursor = _drain_pass(s3, bucket, "in/", cursor)
    assert [o for call in calls for o in call] == []


@pytest.mark.parametrize("settle_seconds", [0.0, 900.0])
def test_object_written_mid_pass_on_a_listed_page_is_found_next_pass(s3, bucket, settle_seconds):
    for c in "aceg":
        _put(s3, bucket, f"{c}.csv", c.encode())
    first, cursor = s3.list_since(bucket, "", None, 2, settle_seconds=settle_seconds)
    assert [o.key for o in first] == ["a.csv", "c.csv"] and cursor.in_pass

    late = _put(s3, bucket, "b.csv", b"late")  # sorts onto the page already listed
    calls, cursor = _drain_pass(s3, bucket, "", cursor, settle_seconds=settle_seconds)
    assert sorted(o.key for call in calls for o in call) == ["e.csv", "g.csv"]

    calls, cursor = _drain_pass(s3, bucket, "", cursor, settle_seconds=settle_seconds)
    assert [(o.key, o.etag) for call in calls for o in call] == [("b.csv", late)]
    calls, cursor = _drain_pass(s3, bucket, "", cursor, settle_seconds=settle_seconds)
    assert [o for call in calls for o in call] == []


def test_completed_pass_advances_watermark_and_forgets_old_objects(s3, bucket):
    _put(s3, bucket, "a.csv", b"a")
    stale = S3Cursor(last_modified="2000-01-01T00:00:00+00:00",
                     seen={"gone.csv": ["0" * 32, "2000-01-02T00:00:00+00:00"]})
    objects, cursor = s3.list_since(bucket, "", stale, 10, settle_seconds=0)

    assert [o.key for o in objects] == ["a.csv"]
    assert not cursor.in_pass
    watermark = datetime.fromisoformat(cursor.last_modified)
    assert watermark > datetime.fromisoformat("2000-01-02T00:00:00+00:00")
    assert "gone.csv" not in cursor.seen  # older than the watermark: forgotten
    assert all(datetime.fromisoformat(v[1]) >= watermark for v in cursor.seen.values())
    # The watermark never moves backwards, even with a huge settle window.
    _, again = s3.list_since(bucket, "", cursor, 10, settle_seconds=10**8)
    assert again.last_modified == cursor.last_modified


def test_objects_older_than_the_watermark_are_not_returned(s3, bucket):
    _put(s3, bucket, "old.csv", b"old")
    future = S3Cursor(last_modified="2999-01-01T00:00:00+00:00")
    objects, _ = s3.list_since(bucket, "", future, 10)
    assert objects == []


def test_cursor_json_round_trip_and_errors():
    cursor = S3Cursor(last_modified="2026-11-28T10:00:00+00:00", start_after="in/b.csv",
                      pass_started="2026-11-28T10:05:00+00:00",
                      seen={"in/a.csv": ["abc", "2026-11-28T10:01:00+00:00"]})
    text = cursor.to_json()
    assert json.loads(text)["start_after"] == "in/b.csv"
    assert S3Cursor.from_json(text) == cursor
    assert S3Cursor.from_json(None) == S3Cursor() == S3Cursor.from_json("")
    assert S3Cursor().in_pass is False and cursor.in_pass is True
    with pytest.raises(ValueError):
        S3Cursor.from_json("in/a.csv")
    with pytest.raises(ValueError):
        S3Cursor.from_json('{"v": 99}')


def test_list_since_rejects_bad_page_size(s3, bucket):
    with pytest.raises(ValueError):
        s3.list_since(bucket, "", None, 0)
    with pytest.raises(ValueError):
        s3.list_since(bucket, "", None, 1001)


def test_download_to_file_and_folder(s3, bucket, tmp_path):
    _put(s3, bucket, "in/sub/products.csv", b"sku,name\n001,Chair\n")
    target = s3.download(bucket, "in/sub/products.csv", tmp_path / "a" / "b" / "x.csv")
    assert target == tmp_path / "a" / "b" / "x.csv"
    assert target.read_bytes() == b"sku,name\n001,Chair\n"
    folder = tmp_path / "dl"
    folder.mkdir()
    target = s3.download(bucket, "in/sub/products.csv", folder)
    assert target == folder / "products.csv" and target.read_bytes().startswith(b"sku,name")
    assert sorted(p.name for p in folder.iterdir()) == ["products.csv"]  # no temporary file left


FRAME = pd.DataFrame({
    "sku": ["001", "002", "010"],
    "name": ["Chaise élégante", "Table, oak", 'Lamp "arc"'],
    "price": [12.5, 99.0, float("nan")],
})


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_put_snapshot_versioned_keys_and_latest_pointer(s3, bucket, fmt):
    first = s3.put_snapshot(FRAME, bucket, "exports/", "products", fmt, "run-1")
    second = s3.put_snapshot(FRAME.iloc[:2], bucket, "exports", "products", fmt, "run/2")

    pattern = rf"^exports/products/\d{{8}}T\d{{12}}Z_run-1\.{fmt}$"
    assert re.match(pattern, first), first
    assert re.match(rf"^exports/products/\d{{8}}T\d{{12}}Z_run_2\.{fmt}$", second), second
    assert first != second and first < second  # timestamps sort in write order
    listed = s3.client().list_objects_v2(Bucket=bucket, Prefix="exports/products/")["Contents"]
    assert sorted(o["Key"] for o in listed) == sorted([first, second, "exports/products/latest.json"])

    latest = s3.latest(bucket, "exports", "products")
    assert latest["key"] == second and latest["uri"] == f"s3://{bucket}/{second}"
    assert latest["rows"] == 2 and latest["columns"] == ["sku", "name", "price"] and latest["format"] == fmt
    assert latest["run_id"] == "run/2"

    raw = s3.client().get_object(Bucket=bucket, Key=first)["Body"].read()
    if fmt == "parquet":
        back = pd.read_parquet(io.BytesIO(raw))
        pd.testing.assert_frame_equal(back, FRAME)
    elif fmt == "csv":
        back = pd.read_csv(io.BytesIO(raw), dtype={"sku": str})
        pd.testing.assert_frame_equal(back, FRAME)
    else:
        lines = raw.decode("utf-8").splitlines()
        assert len(lines) == 3
        assert json.loads(lines[0]) == {"sku": "001", "name": "Chaise élégante", "price": 12.5}
        assert json.loads(lines[2])["price"] is None
    assert s3.read_snapshot(bucket, first)["sku"].tolist() == ["001", "002", "010"]


def test_latest_is_none_before_any_snapshot(s3, bucket):
    assert s3.latest(bucket, "exports", "nothing") is None


def test_put_snapshot_creates_bucket_only_when_asked(s3):
    missing = "claro-test-missing-bucket"
    with pytest.raises(ClientError):
        s3.put_snapshot(FRAME, missing, "", "products", "csv", "r1")
    key = s3.put_snapshot(FRAME, missing, "", "products", "csv", "r1", ensure_bucket=True)
    assert key.startswith("products/") and s3.latest(missing, "", "products")["key"] == key


@pytest.mark.parametrize("conditional", [True, False])
def test_put_snapshot_never_overwrites(s3, bucket, monkeypatch, conditional):
    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 11, 28, 12, 0, 0, 123456, tzinfo=UTC)

    monkeypatch.setattr(s3mod, "datetime", Frozen)
    conn = S3Connection(endpoint_url=s3.endpoint_url, aws_access_key_id="testing",
                        aws_secret_access_key="testing", conditional_writes=conditional)
    key = conn.put_snapshot(FRAME, bucket, "x", "products", "csv", "run-1")
    assert key == "x/products/20261128T120000123456Z_run-1.csv"
    with pytest.raises(FileExistsError):
        conn.put_snapshot(FRAME.iloc[:1], bucket, "x", "products", "csv", "run-1")
    body = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    assert body.count(b"\n") == 4  # the first snapshot is intact


def test_put_snapshot_rejects_bad_names(s3, bucket):
    with pytest.raises(ValueError):
        s3.put_snapshot(FRAME, bucket, "", "../products", "csv", "r")
    with pytest.raises(ValueError):
        s3.put_snapshot(FRAME, bucket, "", "products", "xlsx", "r")


def test_resource_in_an_asset_with_env_var_endpoint(moto_endpoint, bucket, monkeypatch):
    monkeypatch.setenv("CLARO_TEST_S3_ENDPOINT", moto_endpoint)
    resource = S3Connection.from_env("CLARO_TEST_S3_ENDPOINT", aws_access_key_id="testing",
                                     aws_secret_access_key="testing")

    @dg.asset
    def exported(s3: S3Connection) -> str:
        return s3.put_snapshot(FRAME, bucket, "exports", "products", "parquet", "asset-run")

    result = dg.materialize([exported], resources={"s3": resource})
    assert result.success
    key = result.output_for_node("exported")
    assert key.startswith("exports/products/")
    reader = S3Connection(endpoint_url=moto_endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    pd.testing.assert_frame_equal(reader.read_snapshot(bucket, key), FRAME)


def test_a_source_connection_reads_its_endpoint_variable_when_used(monkeypatch, moto_endpoint, bucket):
    """Each S3 source names its own endpoint variable; it is read when the connection is used, not before."""
    from claro_dagster.resources.s3 import S3NotConfigured

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("CLARO_TEST_FEED_S3", raising=False)
    connection = S3Connection(endpoint_url_env="CLARO_TEST_FEED_S3")  # building it needs nothing set
    with pytest.raises(S3NotConfigured, match="CLARO_TEST_FEED_S3 is not set"):
        connection.client()
    monkeypatch.setenv("CLARO_TEST_FEED_S3", moto_endpoint)
    assert connection.endpoint() == moto_endpoint
    assert bucket in [b["Name"] for b in connection.client().list_buckets()["Buckets"]]
