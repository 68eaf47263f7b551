"""`claro push DEST [--filter F] [--dry-run]` and `claro push status DEST`, through the real entry point."""

from __future__ import annotations

import os

import pytest

from claro_dagster.catalogue.changes import Change, ChangeSet
from claro_dagster.catalogue.opening import open_store
from claro_dagster.spec import load_spec
from tests.cli_project import claro, write_spec
from tests.shopify_fake import FakeShopify

SHOP = """\
destinations:
  shop:
    kind: shopify
    catalogue: products
    shop_url_env: CLI_TEST_SHOP_URL
    token_env: CLI_TEST_SHOP_TOKEN
    title: title
    status: status
    price: price
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    spec = write_spec(tmp_path / "claro.yaml")
    spec.write_text(spec.read_text(encoding="utf-8") + SHOP, encoding="utf-8")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("CLARO_HOME", str(home))
    store = open_store(load_spec(spec), home=home)
    store.apply(ChangeSet("load", "products", "enrich", [
        Change(sku, field, value, 100) for sku, title, price in (("SKU-1", "Mug", 4.5), ("SKU-2", "Cup", -3))
        for field, value in (("title", title), ("price", price), ("status", "active"))]))
    store.dispose()
    return spec, home


def run(*args, project, shop):
    spec, home = project
    # not CLARO_*: cli_project.claro drops those from the child's environment
    os.environ["CLI_TEST_SHOP_URL"] = shop.url
    os.environ["CLI_TEST_SHOP_TOKEN"] = shop.token
    try:
        return claro(*args, home=home, spec=spec)
    finally:
        del os.environ["CLI_TEST_SHOP_URL"], os.environ["CLI_TEST_SHOP_TOKEN"]


def test_dry_run_sends_nothing_then_push_then_status(project):
    with FakeShopify() as shop:
        dry = run("push", "shop", "--dry-run", project=project, shop=shop)
        assert dry.returncode == 0, dry.stderr
        assert "would create sku-1" in dry.stdout and "would create sku-2" in dry.stdout
        assert shop.operations == [] and shop.server.requests == []

        pushed = run("push", "shop", project=project, shop=shop)
        assert pushed.returncode == 1, pushed.stderr  # one record was refused
        assert "create sku-1" in pushed.stdout
        assert "failed SKU-2: input.variants.0.price: Price must be greater than or equal to 0" in pushed.stdout
        assert [p["title"] for p in shop.products.values()] == ["Mug"] and shop.contract_errors == []

        status = run("push", "status", "shop", project=project, shop=shop)
        assert status.returncode == 0, status.stderr
        assert "shop: 1 failed, 1 pushed" in status.stdout
        assert "push.failed SKU-2 (sku-2): input.variants.0.price: Price must be greater than or equal to 0" \
            in status.stdout

        shop.operations.clear()
        spec, home = project
        store = open_store(load_spec(spec), home=home)
        store.apply(ChangeSet("cheaper", "products", "enrich", [Change("SKU-1", "price", 4, 100)]))
        store.dispose()
        dry = run("push", "shop", "--dry-run", project=project, shop=shop)
        assert 'would update sku-1\n  variant SKU-1 price: "4.50" -> "4.00"' in dry.stdout, dry.stdout
        shop.operations.clear()
        again = run("push", "shop", "--filter", 'sku == "SKU-2"', project=project, shop=shop)  # the refused one
        assert again.returncode == 1 and shop.operations == ["productByIdentifier", "productSet"]
        assert "1 unchanged" not in again.stdout and len(shop.products) == 1


def test_push_names_what_is_missing(project):
    spec, home = project
    result = claro("push", "shop", home=home, spec=spec)
    assert result.returncode == 1 and "set CLI_TEST_SHOP_URL and CLI_TEST_SHOP_TOKEN" in result.stderr + result.stdout
    unknown = claro("push", "shops", home=home, spec=spec)
    assert "unknown destination 'shops'; destinations are: shop" in unknown.stderr + unknown.stdout


# ------------------------------------------------------------------------------------------------ amazon
AMAZON = """\
  amazon:
    kind: amazon
    catalogue: products
    seller_id: A2SELLERTEST
    marketplace_ids: [ATVPDKIKX0DER]
    client_id_env: CLI_TEST_AMZ_ID
    client_secret_env: CLI_TEST_AMZ_SECRET
    refresh_token_env: CLI_TEST_AMZ_REFRESH
    endpoint_url_env: CLI_TEST_AMZ_ENDPOINT
    token_url_env: CLI_TEST_AMZ_TOKEN_URL
    product_type: LUGGAGE
    language_tag: en_US
    currency: USD
    attributes:
      item_name: title
      brand: brand
      externally_assigned_product_identifier: gtin
      purchasable_offer: price
"""


@pytest.fixture
def amazon_project(project):
    spec, home = project
    text = spec.read_text(encoding="utf-8").replace(
        "      status: {type: enum, values: [active, draft]}\n",
        "      status: {type: enum, values: [active, draft]}\n      brand: {type: text}\n      gtin: {type: text}\n")
    spec.write_text(text + AMAZON, encoding="utf-8")
    store = open_store(load_spec(spec), home=home)
    store.apply(ChangeSet("brands", "products", "enrich", [
        Change(sku, field, value, 100) for sku, gtin in (("SKU-1", "4006381333931"), ("SKU-2", "4006381333948"))
        for field, value in (("brand", "Claro"), ("gtin", gtin))]))
    store.dispose()
    return spec, home


def run_amazon(*args, project, fake):
    from tests.amazon_fake import CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN

    spec, home = project
    names = {"CLI_TEST_AMZ_ID": CLIENT_ID, "CLI_TEST_AMZ_SECRET": CLIENT_SECRET,
             "CLI_TEST_AMZ_REFRESH": REFRESH_TOKEN, "CLI_TEST_AMZ_ENDPOINT": fake.url,
             "CLI_TEST_AMZ_TOKEN_URL": fake.token_url}
    os.environ.update(names)
    try:
        return claro(*args, home=home, spec=spec)
    finally:
        for name in names:
            del os.environ[name]


def test_amazon_dry_run_push_status_and_a_price_patch(amazon_project):
    from tests.amazon_fake import FakeAmazon

    refused = ("SCHEMA_EXCLUSIVEMINIMUM: -3 is less than or equal to the minimum of 0 "
               "(/purchasable_offer/0/our_price/0/schedule/0/value_with_tax)")
    with FakeAmazon() as fake:
        dry = run_amazon("push", "amazon", "--dry-run", project=amazon_project, fake=fake)
        assert dry.returncode == 0, dry.stderr
        assert "would create SKU-1" in dry.stdout and "would create SKU-2" in dry.stdout
        assert fake.server.requests == []

        pushed = run_amazon("push", "amazon", project=amazon_project, fake=fake)
        assert pushed.returncode == 1, pushed.stderr  # the negative price was refused locally
        assert "create SKU-1" in pushed.stdout and f"failed SKU-2: {refused}" in pushed.stdout
        assert list(fake.listings) == ["SKU-1"] and fake.calls.count("putListingsItem") == 1
        assert fake.listings["SKU-1"]["attributes"]["item_name"][0]["value"] == "Mug"

        status = run_amazon("push", "status", "amazon", project=amazon_project, fake=fake)
        assert status.returncode == 0, status.stderr
        assert "amazon: 1 failed, 1 pushed" in status.stdout
        assert f"push.failed SKU-2 (SKU-2): {refused}" in status.stdout

        spec, home = amazon_project
        store = open_store(load_spec(spec), home=home)
        store.apply(ChangeSet("cheaper", "products", "enrich", [Change("SKU-1", "price", 4, 100)]))
        store.dispose()
        dry = run_amazon("push", "amazon", "--dry-run", project=amazon_project, fake=fake)
        assert ('would update SKU-1\n  purchasable_offer: [{"currency": "USD", "marketplace_id": "ATVPDKIKX0DER", '
                '"our_price": [{"schedule": [{"value_with_tax": 4.5}]}]}] -> [{"currency": "USD", "marketplace_id": '
                '"ATVPDKIKX0DER", "our_price": [{"schedule": [{"value_with_tax": 4}]}]}]') in dry.stdout, dry.stdout
        fake.calls.clear()
        again = run_amazon("push", "amazon", "--filter", 'sku == "SKU-1"', project=amazon_project, fake=fake)
        assert again.returncode == 0, again.stdout + again.stderr
        assert fake.calls == ["getDefinitionsProductType", "patchListingsItem"] and fake.violations == []
        assert fake.listings["SKU-1"]["attributes"]["purchasable_offer"][0]["our_price"] == [
            {"schedule": [{"value_with_tax": 4}]}]


def test_amazon_push_names_the_missing_variables(amazon_project):
    spec, home = amazon_project
    result = claro("push", "amazon", home=home, spec=spec)
    assert result.returncode == 1
    assert "Set CLI_TEST_AMZ_ID, CLI_TEST_AMZ_SECRET, CLI_TEST_AMZ_REFRESH to push listings to Amazon" in \
        result.stderr + result.stdout
