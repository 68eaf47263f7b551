"""The `kind: shopify` mapping is checked against its catalogue, each problem with its file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from claro_dagster.spec import SpecError, load_spec

CATALOGUE = """\
catalogues:
  products:
    key: sku
    attributes:
      sku: {type: text}
      style: {type: text}
      title: {type: text}
      colour: {type: enum, values: [red, blue]}
      size: {type: enum, values: [S, M, L]}
      fit: {type: enum, values: [slim, regular]}
      price: {type: number}
      image: {type: image}
      state: {type: enum, values: [active, draft, archived]}
      weight: {type: number}
"""
GOOD = """\
destinations:
  shop:
    kind: shopify
    catalogue: products
    shop_url_env: SHOP_URL
    token_env: SHOP_TOKEN
    group_by: style
    options: [colour, size]
    title: title
    status: state
    price: price
    sku: sku
    metafields:
      - {namespace: custom, key: weight, type: number_decimal, attribute: weight}
    images: {attributes: [image], alt: title}
"""


def load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> list[str]:
    monkeypatch.chdir(tmp_path)
    Path("claro.yaml").write_text(text, encoding="utf-8")
    try:
        load_spec("claro.yaml")
    except SpecError as error:
        return [line for line in str(error).splitlines() if "is not available yet" not in line]
    return []


def test_a_good_mapping_has_no_problem(tmp_path, monkeypatch) -> None:
    assert load(tmp_path, monkeypatch, CATALOGUE + GOOD) == []


def test_the_mapping_is_read_into_the_model(tmp_path, monkeypatch) -> None:
    from claro_dagster.spec.models import DestinationSpec

    dest = DestinationSpec.model_validate({"kind": "shopify", "catalogue": "products", "options": ["colour"],
                                           "metafields": [{"namespace": "custom", "key": "weight",
                                                           "type": "number_decimal", "attribute": "weight"}],
                                           "images": {"attributes": ["image"]}})
    assert dest.api_version == "2025-01" and dest.metafields[0].key == "weight" and dest.images.attributes == ["image"]


CASES = {
    "four_options": (GOOD.replace("[colour, size]", "[colour, size, fit, style]").replace("group_by: style",
                                                                                         "group_by: sku"),
                     "claro.yaml:22 destinations.shop.options: Shopify allows at most 3 options per product, got 4: "
                     "keep three of colour, size, fit, style"),
    "unknown_option": (GOOD.replace("[colour, size]", "[colour, sise]"),
                       "claro.yaml:22 destinations.shop.options[1]: 'sise' is not an attribute of catalogue "
                       "'products', did you mean 'size'?"),
    "number_title": (GOOD.replace("title: title", "title: price"),
                     "claro.yaml:23 destinations.shop.title: 'price' is a number attribute; this key takes text or "
                     "enum or reference attributes"),
    "status_values": (CATALOGUE.replace("[active, draft, archived]", "[live, draft]") + GOOD,
                      "claro.yaml:24 destinations.shop.status: values 'live' of 'state' are not Shopify statuses "
                      "(active, draft, archived)"),
    "metafield_type_unknown": (GOOD.replace("number_decimal", "decimal"),
                               "claro.yaml:28 destinations.shop.metafields[0].type: 'decimal' is not a Shopify "
                               "metafield type"),
    "metafield_type_mismatch": (GOOD.replace("type: number_decimal, attribute: weight",
                                             "type: number_decimal, attribute: colour"),
                                "claro.yaml:28 destinations.shop.metafields[0].attribute: 'colour' is a enum "
                                "attribute; this key takes number attributes"),
    "image_not_an_image": (GOOD.replace("attributes: [image]", "attributes: [image, price]"),
                           "claro.yaml:29 destinations.shop.images.attributes[1]: 'price' is a number attribute; "
                           "this key takes image or text attributes"),
    "no_token": (GOOD.replace("    token_env: SHOP_TOKEN\n", ""),
                 "destinations.shop.token_env: a shopify destination needs 'token_env'"),
    "group_by_is_option": (GOOD.replace("group_by: style", "group_by: colour"),
                           "claro.yaml:21 destinations.shop.group_by: 'colour' groups records into products"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_mapping_problems_name_the_line(tmp_path, monkeypatch, case: str) -> None:
    text, expected = CASES[case]
    found = load(tmp_path, monkeypatch, CATALOGUE + text if not text.startswith("catalogues") else text)
    assert any(expected in line for line in found), found


def test_a_destination_cannot_be_named_status(tmp_path, monkeypatch) -> None:
    problems = load(tmp_path, monkeypatch, CATALOGUE + GOOD.replace("  shop:", "  status:"))
    assert len(problems) == 1
    assert problems[0].startswith("claro.yaml:16 destinations.status: a destination cannot be named 'status'")
