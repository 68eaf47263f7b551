"""MappingBook: saved column mappings per source and column shape, as YAML a user edits by hand."""

from __future__ import annotations

import re

import pytest

from claro_dagster.catalogue.mappings import MappingBook, MappingFileError
from claro_dagster.operations.mapping import propose_mapping, shape_of
from claro_dagster.spec.models import AttributeSpec, CatalogueSpec

HEADERS = ["Product Code", "Product Name", "EAN", "Price (GBP)", "Net weight (g)", "Colour", "Item No.", "Barcode"]


@pytest.fixture
def products() -> CatalogueSpec:
    return CatalogueSpec(key="sku", attributes={
        "sku": AttributeSpec(type="text", required=True),
        "title": AttributeSpec(type="text", required=True),
        "gtin": AttributeSpec(type="text", format="gtin"),
        "price": AttributeSpec(type="number"),
        "weight": AttributeSpec(type="number", unit="kg"),
        "colour": AttributeSpec(type="enum", values=["red", "grey"]),
    })


@pytest.fixture
def book(tmp_path) -> MappingBook:
    return MappingBook(tmp_path / "mappings")


def test_save_and_get_round_trip(book, products):
    mapping = propose_mapping(HEADERS, products)
    path = book.save("acme", mapping, catalogue=products)
    assert path == book.root / "acme" / f"{mapping.shape}.yaml"
    text = path.read_text()
    assert "# Attributes: sku, title, gtin, price, weight, colour" in text
    assert "Item No.: null" in text and "status: draft" in text
    loaded = book.get("acme", mapping.shape)
    assert loaded.attribute_for == mapping.attribute_for
    assert loaded.source_columns == mapping.source_columns
    assert loaded.scores == pytest.approx(mapping.scores)
    assert loaded.status == "draft"
    assert book.get("acme", "0000000000000000") is None


def test_awkward_column_names_survive_the_yaml_file(book, products):
    headers = ["no", "2024", "Price: GBP", "#tag", "Ürün adı", "  spaced  ", "null"]
    mapping = propose_mapping(headers, products)
    book.save("acme", mapping)
    loaded = book.get("acme", mapping.shape, catalogue=products, columns=headers)
    assert loaded.source_columns == tuple(headers)
    assert loaded.attribute_for == mapping.attribute_for


def test_same_shape_is_reused_and_a_new_shape_is_drafted(book, products):
    first, drafted = book.resolve("acme", HEADERS, products)
    assert drafted and first.status == "draft"
    again, drafted_again = book.resolve("acme", list(reversed(HEADERS)), products)  # same columns, new order
    assert not drafted_again and again.attribute_for == first.attribute_for

    new_shape = [*HEADERS, "Brand"]
    other, drafted_other = book.resolve("acme", new_shape, products)
    assert drafted_other and other.shape == shape_of(new_shape) != first.shape
    assert [(src, status) for src, _, _, status in book.list()] == [("acme", "draft"), ("acme", "draft")]


def test_a_users_edit_is_what_gets_reused(book, products):
    mapping, _ = book.resolve("acme", HEADERS, products)
    path = book.path_for("acme", mapping.shape)
    edited = path.read_text().replace("Item No.: null", "Item No.: sku").replace(
        "Product Code: sku", "Product Code: null").replace("status: draft", "status: confirmed")
    path.write_text(edited)
    reused, drafted = book.resolve("acme", HEADERS, products)
    assert not drafted and reused.status == "confirmed"
    assert reused.attribute_for["Item No."] == "sku" and reused.attribute_for["Product Code"] is None
    assert book.list("acme") == [("acme", mapping.shape, path, "confirmed")]


def test_confirming_keeps_the_created_time(book, products):
    mapping = propose_mapping(HEADERS, products)
    path = book.save("acme", mapping)
    created = next(line for line in path.read_text().splitlines() if line.startswith("created:"))
    book.save("acme", mapping, status="confirmed")
    assert created in path.read_text() and "status: confirmed" in path.read_text()


def test_unknown_attribute_in_a_hand_edited_file_names_file_line_column_and_attributes(book, products):
    mapping, _ = book.resolve("acme", HEADERS, products)
    path = book.path_for("acme", mapping.shape)
    lines = path.read_text().splitlines()
    number = next(i for i, line in enumerate(lines, 1) if line.startswith("  Colour:"))
    path.write_text(path.read_text().replace("Colour: colour", "Colour: color"))
    with pytest.raises(MappingFileError) as caught:
        book.resolve("acme", HEADERS, products)
    assert str(caught.value) == (
        f"{path}:{number} column 'Colour': 'color' is not an attribute of this catalogue; "
        "attributes are: sku, title, gtin, price, weight, colour (or null to ignore it)"
    )


def test_broken_yaml_names_the_file_and_line(book, products):
    mapping, _ = book.resolve("acme", HEADERS, products)
    path = book.path_for("acme", mapping.shape)
    path.write_text(path.read_text().replace("  EAN: gtin", "  EAN: [gtin"))
    with pytest.raises(MappingFileError, match=rf"^{re.escape(str(path))}:\d+: not valid YAML"):
        book.get("acme", mapping.shape)
    assert book.list("acme")[0][3] == "invalid"


def test_two_columns_for_one_attribute_is_an_error(book, products):
    mapping, _ = book.resolve("acme", HEADERS, products)
    path = book.path_for("acme", mapping.shape)
    path.write_text(path.read_text().replace("Barcode: null", "Barcode: gtin"))
    with pytest.raises(MappingFileError, match="column 'Barcode': 'gtin' is already mapped from column 'EAN'"):
        book.resolve("acme", HEADERS, products)


def test_a_misspelt_column_in_the_file_is_named(book, products):
    mapping, _ = book.resolve("acme", HEADERS, products)
    path = book.path_for("acme", mapping.shape)
    path.write_text(path.read_text().replace("  Colour: colour", "  Colur: colour"))
    with pytest.raises(MappingFileError, match="column 'Colur': the batch has no such column; its columns are"):
        book.resolve("acme", HEADERS, products)


def test_a_non_name_value_is_refused(book, products):
    mapping, _ = book.resolve("acme", HEADERS, products)
    path = book.path_for("acme", mapping.shape)
    path.write_text(path.read_text().replace("EAN: gtin", "EAN: 13"))
    with pytest.raises(MappingFileError, match="column 'EAN': expected an attribute name or null, got 13"):
        book.get("acme", mapping.shape, catalogue=products)


def test_unsafe_source_names_are_refused(book):
    with pytest.raises(ValueError, match="not a safe file name"):
        book.path_for("../etc", "abc")


def test_list_is_empty_before_anything_is_saved(book):
    assert book.list() == [] and book.list("acme") == []
