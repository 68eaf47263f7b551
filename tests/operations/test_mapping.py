"""Data Source Mapping: proposing column mappings from supplier headers, applying them, matching rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from claro_dagster.operations.mapping import (
    ColumnMapping,
    MappingError,
    apply_mapping,
    header_unit,
    match_records,
    normalise_name,
    propose_mapping,
    shape_of,
)
from claro_dagster.operations.normalize import normalize_batch
from claro_dagster.spec.models import AttributeSpec, CatalogueSpec

SUPPLIER_HEADERS = ["Product Code", "Product Name", "EAN", "Price (GBP)", "Net weight (g)", "Colour",
                    "Item No.", "Barcode"]


@pytest.fixture
def products() -> CatalogueSpec:
    return CatalogueSpec(key="sku", attributes={
        "sku": AttributeSpec(type="text", required=True, identifier=True),
        "title": AttributeSpec(type="text", required=True),
        "gtin": AttributeSpec(type="text", format="gtin", identifier=True),
        "price": AttributeSpec(type="number", min=0),
        "weight": AttributeSpec(type="number", unit="kg"),
        "colour": AttributeSpec(type="enum", values=["red", "grey"]),
        "brand": AttributeSpec(type="reference", target="brands", aliases=["Marque", "Hersteller"]),
    })


def supplier_frame(columns: dict[str, list]) -> pd.DataFrame:
    rows = len(next(iter(columns.values())))
    frame = pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in columns.items()})
    frame["__line__"] = np.arange(2, rows + 2)
    return frame


def test_normalised_names_drop_units_punctuation_and_case():
    assert normalise_name("Net weight (g)") == "net weight"
    assert normalise_name("Item No.") == "item no"
    assert normalise_name("Price [GBP]") == "price"
    assert normalise_name("EAN_13") == "ean 13"
    assert normalise_name("  Colour ") == "colour"


def test_proposal_on_realistic_supplier_headers(products):
    mapping = propose_mapping(SUPPLIER_HEADERS, products)
    assert mapping.attribute_for == {
        "Product Code": "sku", "Product Name": "title", "EAN": "gtin", "Price (GBP)": "price",
        "Net weight (g)": "weight", "Colour": "colour",
        # one column per attribute: the second candidate for sku and for gtin is left unmapped
        "Item No.": None, "Barcode": None,
    }
    assert mapping.source_columns == tuple(SUPPLIER_HEADERS)
    assert mapping.scores["Price (GBP)"] == 100.0
    assert all(score >= 70 for col, score in mapping.scores.items() if mapping.attribute_for[col])
    assert mapping.shape == shape_of(SUPPLIER_HEADERS)


def test_proposal_uses_aliases_and_fuzzy_names(products):
    mapping = propose_mapping(["Item No.", "Barcode", "Hersteller", "Titel", "Color", "Internal memo"],
                              products)
    assert mapping.attribute_for == {"Item No.": "sku", "Barcode": "gtin", "Hersteller": "brand",
                                     "Titel": "title", "Color": "colour", "Internal memo": None}


def test_each_attribute_gets_at_most_one_column(products):
    mapping = propose_mapping(["EAN", "Barcode", "UPC"], products)
    assert [a for a in mapping.attribute_for.values() if a] == ["gtin"]


def test_shape_is_stable_and_ignores_order_case_and_line_column():
    assert shape_of(["B", "A"]) == shape_of(["a", "b ", "__line__"])
    assert shape_of(["Weight (g)"]) != shape_of(["Weight (kg)"])  # the values mean different things
    assert shape_of(["A", "B"]) != shape_of(["A", "B", "C"])
    assert len(shape_of(["A"])) == 16


def test_apply_mapping_renames_and_keeps_lines(products):
    frame = supplier_frame({"Product Code": ["ACM-1"], "Product Name": ["Widget"], "Item No.": ["99"],
                            "Colour": ["red"]})
    mapped = apply_mapping(frame, propose_mapping(list(frame.columns), products), products)
    assert list(mapped.columns) == ["__line__", "sku", "title", "colour"]
    assert mapped.to_dict("records") == [{"__line__": 2, "sku": "ACM-1", "title": "Widget", "colour": "red"}]


def test_header_unit_applies_to_bare_numbers(products):
    frame = supplier_frame({"Product Code": ["A", "B", "C", "D"], "Product Name": ["w", "x", "y", "z"],
                            "Net weight (g)": ["500", "1,250", "2 lb", None]})
    mapped = apply_mapping(frame, propose_mapping(list(frame.columns), products), products)
    assert mapped["weight"].tolist() == ["500 g", "1,250 g", "2 lb", None]
    weights = normalize_batch(mapped, products).frame["weight"].tolist()
    assert weights[:3] == pytest.approx([0.5, 1.25, 0.90718474]) and np.isnan(weights[3])
    assert header_unit("Price (GBP)", "kg") is None
    assert header_unit("Length (cm)", "kg") is None  # not a mass: left alone
    assert header_unit("Length (cm)", "cm") is None  # already the attribute's unit: nothing to add
    assert header_unit("Length (mm)", "cm") == "mm"


def test_missing_required_attribute_names_the_closest_columns(products):
    frame = supplier_frame({"Product Code": ["A"], "Description": ["x"], "Name2": ["y"]})
    mapping = ColumnMapping(("Product Code", "Description", "Name2"),
                            {"Product Code": "sku", "Description": None, "Name2": None},
                            {"Product Code": 95.0, "Description": 0.0, "Name2": 0.0},
                            shape_of(["Product Code", "Description", "Name2"]))
    with pytest.raises(MappingError) as caught:
        apply_mapping(frame, mapping, products, source="acme")
    message = str(caught.value)
    assert message.startswith("batch has no column for required attribute 'title'; closest columns: 'Name2' (")
    assert message.endswith("Map it with `claro mapping edit acme`.")
    assert caught.value.missing == ["title"]


def test_required_attribute_with_a_default_may_be_missing(products):
    products.attributes["title"].default = "Untitled"
    frame = supplier_frame({"Product Code": ["A"]})
    assert list(apply_mapping(frame, propose_mapping(["Product Code"], products), products).columns) == [
        "__line__", "sku"]


def test_mapping_to_an_unknown_attribute_is_refused(products):
    frame = supplier_frame({"Code": ["A"], "Name": ["x"]})
    mapping = ColumnMapping(("Code", "Name"), {"Code": "sku", "Name": "titel"}, {}, shape_of(["Code", "Name"]))
    with pytest.raises(MappingError, match="attributes the catalogue does not have: titel; attributes are: sku"):
        apply_mapping(frame, mapping, products)


def test_match_records_by_key_then_gtin(products):
    frame = supplier_frame({
        "sku": ["ACM-001", " ACM-002", None, None, "ACM-009"],
        "gtin": ["4006381333931", None, "4006381333931", "96385074", "036000291452"],
    })
    matched = match_records(frame, products, existing_keys={"ACM-001", "ACM-002", "ACM-003"},
                            existing_gtins={"04006381333931": "ACM-003"})
    assert matched["__match__"].tolist() == ["key", "key", "gtin", "new", "new"]
    assert matched["__record__"].tolist()[:3] == ["ACM-001", "ACM-002", "ACM-003"]
    assert pd.isna(matched["__record__"].iloc[3])
    assert matched["__record__"].iloc[4] == "ACM-009"  # a new record under its own key
    assert matched["__line__"].tolist() == [2, 3, 4, 5, 6]
