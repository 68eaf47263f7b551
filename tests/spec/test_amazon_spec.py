"""The `kind: amazon` mapping is checked against its catalogue, each problem with its file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from claro_dagster.spec import SpecError, load_spec
from claro_dagster.spec.models import AmazonProductTypeFrom, amazon_attribute

CATALOGUE = """\
catalogues:
  products:
    key: sku
    attributes:
      sku: {type: text}
      title: {type: text}
      brand: {type: text}
      gtin: {type: text}
      price: {type: number}
      stock: {type: number}
      image: {type: image}
      kind: {type: enum, values: [LUGGAGE, SUITCASE]}
      state: {type: enum, values: [active, draft, archived]}
      launched: {type: date}
"""
GOOD = """\
destinations:
  amazon:
    kind: amazon
    catalogue: products
    seller_id: A2SELLER
    marketplace_ids: [A1F83G8C2ARO7P]
    client_id_env: AMZ_ID
    client_secret_env: AMZ_SECRET
    refresh_token_env: AMZ_REFRESH
    endpoint_url_env: AMZ_ENDPOINT
    token_url_env: AMZ_TOKEN_URL
    product_type: LUGGAGE
    language_tag: en_GB
    currency: GBP
    status: state
    attributes:
      item_name: title
      brand: brand
      externally_assigned_product_identifier: {attribute: gtin, type: upc}
      purchasable_offer: price
      fulfillment_availability: stock
      main_product_image_locator: image
      bullet_point: {attributes: [title, brand]}
"""


def load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> list[str]:
    monkeypatch.chdir(tmp_path)
    Path("claro.yaml").write_text(text, encoding="utf-8")
    try:
        load_spec("claro.yaml")
    except SpecError as error:
        return str(error).splitlines()
    return []


def test_a_good_mapping_has_no_problem_and_reads_into_the_model(tmp_path, monkeypatch) -> None:
    assert load(tmp_path, monkeypatch, CATALOGUE + GOOD) == []
    dest = load_spec("claro.yaml").destinations["amazon"]
    assert (dest.product_type, dest.marketplace_ids, dest.currency) == ("LUGGAGE", ["A1F83G8C2ARO7P"], "GBP")
    shapes = {name: amazon_attribute(name, entry).shape for name, entry in dest.attributes.items()}
    assert shapes == {"item_name": "text", "brand": "text", "externally_assigned_product_identifier": "identifier",
                      "purchasable_offer": "offer", "fulfillment_availability": "quantity",
                      "main_product_image_locator": "image", "bullet_point": "list"}
    assert amazon_attribute("externally_assigned_product_identifier", dest.attributes[
        "externally_assigned_product_identifier"]).type == "upc"
    assert amazon_attribute("other_product_image_locator_1", "image").shape == "image"


def test_the_product_type_can_come_from_each_record(tmp_path, monkeypatch) -> None:
    text = CATALOGUE + GOOD.replace("product_type: LUGGAGE", "product_type: {attribute: kind}")
    assert load(tmp_path, monkeypatch, text) == []
    assert load_spec("claro.yaml").destinations["amazon"].product_type == AmazonProductTypeFrom(attribute="kind")
    wrong = CATALOGUE + GOOD.replace("product_type: LUGGAGE", "product_type: {attribute: knd}")
    assert load(tmp_path, monkeypatch, wrong) == [
        "claro.yaml:26 destinations.amazon.product_type.attribute: 'knd' is not an attribute of catalogue "
        "'products', did you mean 'kind'? (defined: sku, title, brand, gtin, price, stock, image, kind, state, "
        "launched)"]


@pytest.mark.parametrize(("change", "expected"), [
    (("    client_secret_env: AMZ_SECRET\n", ""),
     "claro.yaml:16 destinations.amazon.client_secret_env: an amazon destination needs 'client_secret_env': the "
     "environment variable that holds the SP-API application's LWA client secret"),
    (("    marketplace_ids: [A1F83G8C2ARO7P]\n", ""),
     "claro.yaml:16 destinations.amazon.marketplace_ids: an amazon destination needs 'marketplace_ids': at least "
     "one, e.g. [ATVPDKIKX0DER] for amazon.com or [A1F83G8C2ARO7P] for amazon.co.uk"),
    (("    seller_id: A2SELLER\n", ""),
     "claro.yaml:16 destinations.amazon.seller_id: an amazon destination needs 'seller_id': the selling partner "
     "id (Seller Central: Settings > Account Info > Merchant Token)"),
    (("product_type: LUGGAGE", "product_type: luggage"),
     "claro.yaml:26 destinations.amazon.product_type: 'luggage' is not an Amazon product type name (upper case, "
     "e.g. LUGGAGE); to read it from each record write {attribute: <attr>}"),
    (("      brand: brand\n", "      brand: brnd\n"),
     "claro.yaml:32 destinations.amazon.attributes.brand: 'brnd' is not an attribute of catalogue 'products', did "
     "you mean 'brand'? (defined: sku, title, brand, gtin, price, stock, image, kind, state, launched)"),
    (("purchasable_offer: price", "purchasable_offer: title"),
     "claro.yaml:34 destinations.amazon.attributes.purchasable_offer: 'title' is a text attribute; shape 'offer' "
     "of 'purchasable_offer' takes number attributes"),
    (("fulfillment_availability: stock", "fulfillment_availability: {attribute: launched, shape: quantity}"),
     "claro.yaml:35 destinations.amazon.attributes.fulfillment_availability.attribute: 'launched' is a date "
     "attribute; shape 'quantity' of 'fulfillment_availability' takes number attributes"),
    (("    currency: GBP\n", ""),
     "claro.yaml:33 destinations.amazon.attributes.purchasable_offer: 'purchasable_offer' is money: set the "
     "destination's 'currency' (e.g. GBP)"),
    (("    language_tag: en_GB\n", ""),
     "claro.yaml:30 destinations.amazon.attributes.item_name: 'item_name' is text in a language: set the "
     "destination's 'language_tag' (e.g. en_GB), or give it `shape: value` if it has no language"),
    (("[A1F83G8C2ARO7P]", "[amazon.co.uk]"),
     "claro.yaml:20 destinations.amazon.marketplace_ids[0]: 'amazon.co.uk' is not an Amazon marketplace id (e.g. "
     "ATVPDKIKX0DER for amazon.com, A1F83G8C2ARO7P for amazon.co.uk)"),
    (("    status: state\n", "    status: stat\n"),
     "claro.yaml:29 destinations.amazon.status: 'stat' is not an attribute of catalogue 'products', did you mean "
     "'state'? (defined: sku, title, brand, gtin, price, stock, image, kind, state, launched)"),
])
def test_each_mistake_is_named_with_its_line(tmp_path, monkeypatch, change, expected) -> None:
    found = load(tmp_path, monkeypatch, CATALOGUE + GOOD.replace(*change))
    assert expected in found, found


def test_shape_errors_and_a_product_type_attribute_outside_amazon_are_refused(tmp_path, monkeypatch) -> None:
    both = CATALOGUE + GOOD.replace("bullet_point: {attributes: [title, brand]}",
                                    "bullet_point: {attribute: title, attributes: [brand]}")
    assert any("give either 'attribute' (one catalogue attribute) or 'attributes'" in line
               for line in load(tmp_path, monkeypatch, both))
    shopify = CATALOGUE + ("destinations:\n  shop:\n    kind: shopify\n    catalogue: products\n    shop_url_env: U\n"
                           "    token_env: T\n    title: title\n    product_type: {attribute: kind}\n")
    assert any("product_type {attribute: ...} is for amazon destinations; for shopify write the attribute's name"
               in line for line in load(tmp_path, monkeypatch, shopify))
