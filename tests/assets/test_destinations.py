"""Outbound destination assets against real servers: a moto S3 server and the real PostgreSQL."""

from __future__ import annotations

import shutil

import dagster as dg
import psycopg
import pytest
from batches import publish_demo_products

from claro_dagster.catalogue.changes import Change, ChangeSet
from claro_dagster.definitions import build_definitions
from claro_dagster.spec import DEMO_DIR

INBOX = DEMO_DIR / "inbox"


@pytest.fixture
def published(tmp_path, monkeypatch, moto_endpoint, s3, pg_url):
    """The demo's suppliers and Acme products published, destinations pointed at local servers."""
    monkeypatch.setenv("CLARO_S3_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("CLARO_WAREHOUSE_URL", pg_url)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS catalogue_products")
    spec = tmp_path / "claro.yaml"
    shutil.copyfile(DEMO_DIR / "claro.yaml", spec)
    defs = build_definitions(spec, tmp_path / "home")
    claro = defs.resources["claro"]
    with dg.instance_for_test() as instance:
        publish_demo_products(defs, instance)
        yield defs, claro, instance


def sync(defs, instance, name):
    result = dg.materialize(list(defs.assets), selection=[dg.AssetKey(["products", name])], instance=instance,
                            resources=defs.resources)
    [event] = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_s3_destination_writes_a_versioned_snapshot_per_run(published, s3):
    defs, claro, instance = published
    first = sync(defs, instance, "catalogue_dump")
    second = sync(defs, instance, "catalogue_dump")
    assert first["rows"] == second["rows"] == claro.store.count("products") == 10
    assert first["uri"] != second["uri"]  # never overwritten
    latest = s3.latest("claro-demo", "products/", "products")
    assert latest["uri"] == second["uri"]
    frame = s3.read_snapshot("claro-demo", latest["key"])
    assert sorted(frame["sku"]) == sorted(claro.store.records("products")["sku"])


def test_postgres_destination_upserts_only_what_changed_since_its_cursor(published, pg_url):
    defs, claro, instance = published
    first = sync(defs, instance, "warehouse")
    assert (first["rows_sent"], first["inserted"]) == (10, 10)
    assert sync(defs, instance, "warehouse")["rows_sent"] == 0  # nothing changed since
    claro.store.apply(ChangeSet("fix-1", "products", "enrich", [Change("ACM-10101", "price", 99.5, 99)]))
    third = sync(defs, instance, "warehouse")
    assert (third["rows_sent"], third["updated"]) == (1, 1)
    with psycopg.connect(pg_url) as conn:
        price = conn.execute("SELECT price FROM catalogue_products WHERE sku = 'ACM-10101'").fetchone()[0]
    assert price == 99.5
