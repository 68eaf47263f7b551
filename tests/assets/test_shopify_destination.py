"""The `<catalogue>/<destination>` asset of a Shopify destination, against the schema-checking fake."""

from __future__ import annotations

import dagster as dg
import pytest
import yaml
from batches import demo_spec_syncing, publish_demo_products

from claro_dagster.catalogue.changes import Change, ChangeSet
from claro_dagster.definitions import build_definitions
from claro_dagster.spec import DEMO_DIR
from tests.shopify_fake import FakeShopify

INBOX = DEMO_DIR / "inbox"
SHOP = {"kind": "shopify", "catalogue": "products", "shop_url_env": "TEST_SHOP_URL", "token_env": "TEST_SHOP_TOKEN",
        "title": "title", "description": "description", "vendor": "brand", "product_type": "category",
        "status": "status", "price": "price", "sku": "sku", "barcode": "gtin",
        "metafields": [{"namespace": "custom", "key": "weight", "type": "number_decimal", "attribute": "weight"}],
        "images": {"attributes": ["image_url"], "alt": "title"}}


@pytest.fixture
def shop(tmp_path, monkeypatch):
    """The demo's suppliers and Acme products published, with a Shopify destination pointed at the fake."""
    with FakeShopify() as fake:
        text = (DEMO_DIR / "claro.yaml").read_text(encoding="utf-8")
        for name in ("CLARO_S3_ENDPOINT_URL", "CLARO_WAREHOUSE_URL"):  # the demo's other destinations stay idle
            monkeypatch.delenv(name, raising=False)
        shop_yaml = "\n".join("  " + line for line in yaml.safe_dump({"shop": SHOP}).splitlines())
        text = text.replace("\ndestinations:\n", "\ndestinations:\n" + shop_yaml + "\n", 1)
        text = demo_spec_syncing("shop", text=text)
        assert "shop_url_env" in text and "warehouse, shop]" in text
        (tmp_path / "claro.yaml").write_text(text, encoding="utf-8")
        defs = build_definitions(tmp_path / "claro.yaml", tmp_path / "home")
        claro = defs.resources["claro"]
        # set after the definitions are built: the asset exists, but batches do not trigger a sync by themselves
        monkeypatch.setenv("TEST_SHOP_URL", fake.url)
        monkeypatch.setenv("TEST_SHOP_TOKEN", fake.token)
        with dg.instance_for_test() as instance:
            publish_demo_products(defs, instance)
            yield defs, claro, instance, fake


def sync(defs, instance):
    result = dg.materialize(list(defs.assets), selection=[dg.AssetKey(["products", "shop"])], instance=instance,
                            resources=defs.resources)
    [event] = result.get_asset_materialization_events()
    [check] = result.get_asset_check_evaluations()
    return {k: v.value for k, v in event.materialization.metadata.items()} | {"check_passed": check.passed}


def test_shopify_destination_pushes_then_sends_nothing_then_only_the_change(shop):
    from claro_dagster.catalogue.channels import ChannelState

    defs, claro, instance, fake = shop
    first = sync(defs, instance)
    records = claro.store.records("products")
    assert first["created"] == len(fake.products) == len(records) == 10 and first["failed"] == 0
    assert first["check_passed"]
    assert fake.contract_errors == []
    by_sku = {v["sku"]: (p, v) for p in fake.products.values() for v in p["variants"]}
    for row in records.to_dict("records"):
        product, variant = by_sku[row["sku"]]
        assert product["title"] == row["title"] and variant["price"] == f"{row['price']:.2f}"
    fake.operations.clear()
    second = sync(defs, instance)
    assert (second["calls"], second["unchanged"], fake.operations) == (0, 0, [])  # cursor: nothing read at all
    claro.store.apply(ChangeSet("fix-1", "products", "enrich", [Change("ACM-10101", "price", 99.5, 99)]))
    third = sync(defs, instance)
    assert (third["updated"], third["calls"]) == (1, 1) and fake.operations == ["productSet"]
    assert by_sku["ACM-10101"][0]["id"] in fake.products
    assert {v["sku"]: v["price"] for p in fake.products.values() for v in p["variants"]}["ACM-10101"] == "99.50"
    assert ChannelState(claro.store).counts("shop") == {"pushed": 10}


def test_a_destination_job_runs_one_at_a_time_in_production(shop):
    """The destination's job carries the run tag that dagster.prod.yaml's queue limits to one run per value."""
    from pathlib import Path

    defs = shop[0]
    job = defs.resolve_job_def("products_shop")
    assert job.tags["claro/destination"] == "shop"
    prod = yaml.safe_load((Path(__file__).parents[2] / "dagster.prod.yaml").read_text(encoding="utf-8"))
    limits = prod["run_coordinator"]["config"]["tag_concurrency_limits"]
    assert {"key": "claro/destination", "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in limits


def test_the_check_fails_while_a_record_is_refused(shop):
    defs, claro, instance, fake = shop
    claro.store.apply(ChangeSet("neg", "products", "enrich", [Change("ACM-10101", "price", -1, 99)]))
    result = sync(defs, instance)
    assert result["failed"] == 1 and not result["check_passed"]
