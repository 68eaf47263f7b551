"""The demo's `products/amazon_listings` destination asset against the contract-checking SP-API fake
(tests/amazon_fake.py follows the Listings Items 2021-08-01 and Product Type Definitions 2020-09-01 models)."""

from __future__ import annotations

import dagster as dg
import pytest
from batches import publish_demo_products

from claro_dagster.catalogue.changes import Change, ChangeSet
from claro_dagster.definitions import build_definitions
from claro_dagster.spec import DEMO_DIR, load_spec
from tests.amazon_fake import CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, FakeAmazon

UK = "A1F83G8C2ARO7P"
VARIABLES = {"CLARO_AMAZON_CLIENT_ID": CLIENT_ID, "CLARO_AMAZON_CLIENT_SECRET": CLIENT_SECRET,
             "CLARO_AMAZON_REFRESH_TOKEN": REFRESH_TOKEN}


@pytest.fixture(autouse=True)
def fresh_schema_cache():
    """Product type schemas are cached per endpoint for the process: a fake on a reused port starts empty."""
    from claro_dagster.resources import amazon as amazon_module

    amazon_module._SCHEMAS.clear()


@pytest.fixture
def amazon(tmp_path, monkeypatch):
    """The demo's suppliers and Acme products published, its Amazon destination pointed at the fake."""
    with FakeAmazon() as fake:
        text = (DEMO_DIR / "claro.yaml").read_text(encoding="utf-8")
        for name in ("CLARO_S3_ENDPOINT_URL", "CLARO_WAREHOUSE_URL", *VARIABLES):  # the other destinations idle
            monkeypatch.delenv(name, raising=False)
        (tmp_path / "claro.yaml").write_text(text, encoding="utf-8")
        defs = build_definitions(tmp_path / "claro.yaml", tmp_path / "home")
        claro = defs.resources["claro"]
        for name, value in {**VARIABLES, "CLARO_AMAZON_ENDPOINT_URL": fake.url,
                            "CLARO_AMAZON_TOKEN_URL": fake.token_url}.items():
            monkeypatch.setenv(name, value)  # after the definitions: batches do not trigger a sync by themselves
        with dg.instance_for_test() as instance:
            publish_demo_products(defs, instance)
            yield defs, claro, instance, fake
    assert fake.violations == []


def sync(defs, instance):
    result = dg.materialize(list(defs.assets), selection=[dg.AssetKey(["products", "amazon_listings"])],
                            instance=instance, resources=defs.resources)
    [event] = result.get_asset_materialization_events()
    [check] = result.get_asset_check_evaluations()
    return {k: v.value for k, v in event.materialization.metadata.items()} | {"check_passed": check.passed}


def test_the_demo_lists_every_product_then_sends_nothing_then_one_patch_for_a_price(amazon):
    from claro_dagster.catalogue.channels import ChannelState

    defs, claro, instance, fake = amazon
    first = sync(defs, instance)
    records = claro.store.records("products").to_dict("records")
    assert first["created"] == len(fake.listings) == len(records) == 10 and first["failed"] == 0
    assert first["check_passed"]
    for row in records:  # what arrived, compared with the catalogue
        listing = fake.listings[row["sku"]]
        attributes = listing["attributes"]
        assert listing["productType"] == "LUGGAGE"
        assert attributes["item_name"] == [{"value": row["title"], "language_tag": "en_GB", "marketplace_id": UK}]
        assert attributes["brand"][0]["value"] == row["brand"] == "Acme Outdoor"
        assert attributes["externally_assigned_product_identifier"] == [
            {"type": "ean", "value": row["gtin"], "marketplace_id": UK}]
        offer = attributes["purchasable_offer"][0]
        assert (offer["currency"], offer["our_price"][0]["schedule"][0]["value_with_tax"]) == ("GBP", row["price"])
        assert attributes["product_description"][0]["value"] == row["description"]
        assert [b["value"] for b in attributes["bullet_point"]] == row["description"].split(" – ")
    fake.calls.clear()
    second = sync(defs, instance)
    assert (second["calls"], second["unchanged"], fake.calls) == (0, 0, [])  # cursor: nothing read at all
    claro.store.apply(ChangeSet("fix-1", "products", "enrich", [Change("ACM-10105", "price", 69.5, 99)]))
    fake.server.requests.clear()
    third = sync(defs, instance)
    assert (third["updated"], third["calls"]) == (1, 1)
    # each push asks which version of the product type is current; its schema was downloaded once
    assert fake.calls == ["getDefinitionsProductType", "patchListingsItem"] and fake.schema_downloads == 1
    [patch] = [r for r in fake.server.requests if r.method == "PATCH"]
    assert "/A1DEMOSELLER00/ACM-10105?" in patch.path
    assert [p["path"] for p in patch.json()["patches"]] == ["/attributes/purchasable_offer"]
    assert fake.listings["ACM-10105"]["attributes"]["purchasable_offer"][0]["our_price"][0]["schedule"] == [
        {"value_with_tax": 69.5}]
    assert ChannelState(claro.store).counts("amazon_listings") == {"pushed": 10}


def test_the_check_fails_while_a_listing_misses_a_required_attribute(amazon):
    defs, claro, instance, fake = amazon
    claro.store.apply(ChangeSet("nobrand", "products", "enrich", [Change("ACM-10102", "brand", None, 100)]))
    result = sync(defs, instance)
    assert result["failed"] == 1 and not result["check_passed"] and "ACM-10102" not in fake.listings
    from claro_dagster.catalogue.channels import ChannelState

    [failure] = ChannelState(claro.store).failures("amazon_listings")
    assert (failure.record, failure.error) == ("ACM-10102", "SCHEMA_REQUIRED: 'brand' is a required property (/)")


def test_the_demo_destination_is_checked_and_skipped_without_its_variables(monkeypatch):
    from claro_dagster.spec.checks import cross_check

    spec = load_spec(DEMO_DIR / "claro.yaml")
    assert cross_check(spec) == []
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    from claro_dagster.assets.catalogue_ops import missing_env

    assert missing_env(spec.destinations["amazon_listings"]) == \
        "CLARO_AMAZON_CLIENT_ID and CLARO_AMAZON_CLIENT_SECRET and CLARO_AMAZON_REFRESH_TOKEN"


def test_the_api_down_mid_sync_the_next_sync_sends_only_the_rest(amazon, monkeypatch):
    from claro_dagster.catalogue.channels import ChannelState
    from claro_dagster.resources import amazon as amazon_module
    from claro_dagster.resources.http import HttpClient

    defs, claro, instance, fake = amazon
    real = amazon_module.client_from_env

    def quick(dest):  # the real client, its retries not waiting on the wall clock
        client = real(dest)
        client.http = HttpClient(sleep=lambda seconds: None, max_attempts=2)
        return client

    monkeypatch.setattr(amazon_module, "client_from_env", quick)
    fake.go_down_after(5)  # the product type, then four listings
    failed = dg.materialize(list(defs.assets), selection=[dg.AssetKey(["products", "amazon_listings"])],
                            instance=instance, resources=defs.resources, raise_on_error=False)
    assert not failed.success and len(fake.listings) == 4
    assert ChannelState(claro.store).counts("amazon_listings") == {"pushed": 4}
    fake.come_back()
    resumed = sync(defs, instance)
    assert (resumed["created"], resumed["unchanged"], resumed["calls"]) == (6, 4, 6) and resumed["check_passed"]
    put = [r.path.split("?")[0].rsplit("/", 1)[1] for r in fake.server.requests if r.method == "PUT"
           and "/listings/" in r.path]
    assert len(fake.listings) == 10 and sorted(set(put)) == sorted(fake.listings)
    assert all(put.count(sku) == 1 for sku in put[:4])  # what arrived before the outage was not sent again


def test_the_destination_job_runs_one_at_a_time(amazon):
    assert amazon[0].resolve_job_def("products_amazon_listings").tags["claro/destination"] == "amazon_listings"
