"""Issue 9's "done when" for Shopify, on the demo spec as shipped (`shopify_store` in claro_dagster/demo/claro.yaml).

The fake (tests/shopify_fake.py) validates every request against the Admin GraphQL schema 2025-01 copied into
tests/contracts/shopify/ and keeps the products it is sent; the test compares them with the catalogue's records,
written out here from the demo's mapping (not from the connector's own payload builder).
"""

from __future__ import annotations

import shutil

import dagster as dg
import pytest
from batches import publish_demo_products

from claro_dagster.catalogue.changes import Change, ChangeSet
from claro_dagster.catalogue.channels import ChannelState
from claro_dagster.definitions import build_definitions
from claro_dagster.local import receive, run_batch
from claro_dagster.spec import DEMO_DIR
from tests.shopify_fake import FakeShopify

JOB = "products_shopify_store"


@pytest.fixture
def demo(tmp_path, monkeypatch):
    """The demo as shipped, its Shopify variables pointed at the fake, the demo's batches published."""
    with FakeShopify() as fake:
        for name in ("CLARO_S3_ENDPOINT_URL", "CLARO_WAREHOUSE_URL", "SLACK_BOT_TOKEN"):
            monkeypatch.delenv(name, raising=False)  # the demo's other destinations and Slack stay idle
        monkeypatch.setenv("CLARO_SHOPIFY_SHOP_URL", fake.url)
        monkeypatch.setenv("CLARO_SHOPIFY_TOKEN", fake.token)
        defs = build_definitions(DEMO_DIR / "claro.yaml", tmp_path / "home")
        claro = defs.resources["claro"]
        with dg.instance_for_test() as instance:
            publish_demo_products(defs, instance)
            # ...and Acme's current export, whose records have images and sizes (the first batch has neither)
            inbox = claro.inbox_dir("acme_csv")
            shutil.copyfile(DEMO_DIR / "inbox" / "acme" / "acme_products.csv", inbox / "acme_products.csv")
            assert run_batch(defs, instance, receive(claro, "acme_csv", inbox / "acme_products.csv"),
                             quiet=True).success
            yield defs, claro, instance, fake


def push(defs, instance) -> dict:
    result = defs.resolve_job_def(JOB).execute_in_process(instance=instance, raise_on_error=True)
    [event] = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()}


def product_sets(fake) -> list[dict]:
    """The `input` of every productSet the fake received, in order."""
    return [r.json()["variables"]["input"] for r in fake.server.requests
            if "productSet" in r.json().get("query", "")]


def number(value) -> str:
    return f"{value:g}"


def expected_product(row: dict) -> dict:
    """What the demo's `shopify_store` mapping should put on the shop for one record (one product per SKU)."""
    product = {"handle": row["sku"].lower(), "title": row["title"], "vendor": row["brand"],
               "productType": row["category"], "status": row["status"].upper(),
               "options": [{"name": "Colour", "position": 1, "values": [{"name": row["colour"]}]}]}
    if row["description"]:
        product["descriptionHtml"] = row["description"]
    variant = {"sku": row["sku"], "price": f"{row['price']:.2f}",
               "optionValues": [{"optionName": "Colour", "name": row["colour"]}]}
    if row["gtin"]:
        variant["barcode"] = row["gtin"]
    product["variants"] = [variant]
    product["metafields"] = [m for m in (
        {"namespace": "custom", "key": "weight_kg", "type": "number_decimal",
         "value": number(row["weight"]) if row["weight"] is not None else None},
        {"namespace": "custom", "key": "mpn", "type": "single_line_text_field", "value": row["mpn"]},
        {"namespace": "custom", "key": "size", "type": "single_line_text_field", "value": row["size"]},
    ) if m["value"] is not None]
    product["media"] = [{"originalSource": row["image_url"], "contentType": "IMAGE", "alt": row["title"]}] \
        if row["image_url"] else []
    return product


def on_shop(stored: dict) -> dict:
    """A product as the fake keeps it, without the ids it assigned."""
    out = {k: stored[k] for k in ("handle", "title", "vendor", "productType", "status", "options") if k in stored}
    if "descriptionHtml" in stored:
        out["descriptionHtml"] = stored["descriptionHtml"]
    out["variants"] = [{k: v for k, v in variant.items() if k != "id"} for variant in stored["variants"]]
    out["metafields"] = stored.get("metafields", [])
    # the fake keeps the input as the schema coerces it: `duplicateResolutionMode` is FileSetInput's default
    out["media"] = [{k: v for k, v in m.items() if k not in ("duplicateResolutionMode", *FakeShopify.MEDIA_STATE)}
                    for m in stored["media"]]
    return out


def test_the_demo_pushes_its_catalogue_to_shopify_then_nothing_then_only_a_price(demo):
    defs, claro, instance, fake = demo
    records = claro.store.records("products").astype(object)
    rows = [{k: (None if v != v else v) for k, v in row.items()} for row in records.to_dict("records")]
    assert len(rows) > 10 and any(r["image_url"] for r in rows) and any(r["size"] for r in rows)

    first = push(defs, instance)
    assert fake.contract_errors == []
    assert (first["created"], first["failed"]) == (len(rows), 0)
    assert ChannelState(claro.store).counts("shopify_store") == {"pushed": len(rows)}
    shop = {p["handle"]: on_shop(p) for p in fake.products.values()}
    assert sorted(shop) == sorted(r["sku"].lower() for r in rows)  # one product per SKU, none twice
    for row in rows:
        assert shop[row["sku"].lower()] == expected_product(row), row["sku"]
    assert sum(len(p["media"]) for p in shop.values()) == sum(1 for r in rows if r["image_url"]) > 0
    assert sum(len(p["metafields"]) for p in shop.values()) > len(rows)

    sent = len(fake.server.requests)
    second = push(defs, instance)
    assert (second["calls"], second["created"], second["updated"]) == (0, 0, 0)
    assert product_sets(fake)[len(rows):] == [] and len(fake.server.requests) == sent  # nothing sent at all

    target = next(r for r in rows if r["image_url"])
    before = next(p for p in product_sets(fake) if p["handle"] == target["sku"].lower())
    new_price = round(target["price"] + 10.25, 2)
    claro.store.apply(ChangeSet("demo-reprice", "products", "enrich",
                                [Change(target["sku"], "price", new_price, 100)]))
    third = push(defs, instance)
    after = product_sets(fake)[len(rows):]
    assert (third["updated"], third["calls"], len(after)) == (1, 1, 1)
    [sent_input] = after
    assert sent_input.pop("id") == next(p["id"] for p in fake.products.values() if p["handle"] == before["handle"])
    assert sent_input["variants"][0].pop("price") == f"{new_price:.2f}"
    assert before["variants"][0].pop("price") == f"{target['price']:.2f}"
    assert sent_input == before  # the price was the only difference
    assert shop_price(fake, target["sku"]) == f"{new_price:.2f}"


def shop_price(fake, sku: str) -> str:
    return next(v["price"] for p in fake.products.values() for v in p["variants"] if v["sku"] == sku)
