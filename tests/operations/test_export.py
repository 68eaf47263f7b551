"""Export: every format read back with the reader a user would use, layouts against their contracts."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import openpyxl
import pandas as pd
import pyarrow.parquet as pq
import pytest

import claro_dagster.operations.export as export_module
from claro_dagster.operations.export import (
    EXPORT_FORMATS,
    ExportError,
    export_records,
    neutralise_formula,
)
from claro_dagster.spec.models import AttributeSpec, CatalogueSpec

SHOPIFY_TEMPLATE = Path(__file__).resolve().parents[1] / "contracts" / "samples" / "shopify_product_template.csv"

FORMULAS = ['=HYPERLINK("http://evil.example","click")', "+1", "-2+3", "@SUM(A1:A2)"]
NEUTRALISED = ["'" + f for f in FORMULAS]


def catalogue(weight_unit: str | None = "g") -> CatalogueSpec:
    return CatalogueSpec(
        key="sku",
        attributes={
            "title": AttributeSpec(type="text", required=True),
            "description": AttributeSpec(type="text"),
            "brand": AttributeSpec(type="text"),
            "gtin": AttributeSpec(type="text", format="gtin", identifier=True),
            "price": AttributeSpec(type="number", unit="EUR"),
            "weight": AttributeSpec(type="number", unit=weight_unit),
            "image_url": AttributeSpec(type="image", format="url"),
            "colour": AttributeSpec(type="enum", values=["red", "blue"]),
            "size": AttributeSpec(type="enum", values=["S", "M"]),
            "status": AttributeSpec(type="enum", values=["active", "draft"]),
            "launch_date": AttributeSpec(type="date"),  # never in the frame
        },
    )


def records() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sku": ["SKU 1/Blue", "sku-2", "SKU-3", "SKU-4", "Crème-5"],
            "title": FORMULAS + ["Plain hat"],
            "description": ["Line one\nline two\tand a tab", None, "-5", "", "Fine"],
            "brand": ["Acme", "Acme", None, "Zed", "Zed"],
            "gtin": ["0012345678905", "4006381333931", "036000291452", "12345678901231", "96385074"],
            "price": [10.0, -5.0, np.nan, 1234.5, 0.1],
            "weight": [250.0, np.nan, 1000.0, 12.5, 0.0],
            "image_url": ["https://cdn.example.com/1.jpg", None, None, None, None],
            "colour": ["red", None, "blue", None, "red"],
            "size": ["S", "M", None, None, "M"],
            "status": ["active", "draft", "Published", None, "weird"],
            "internal_note": ["a", "b", "c", "d", "e"],  # outside the spec
        }
    )


ALL_COLUMNS = ["sku", "title", "description", "brand", "gtin", "price", "weight", "image_url", "colour", "size",
               "status", "launch_date"]


def read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"gtin": str, "sku": str})


# --- generic formats -------------------------------------------------------------------------


def test_csv_round_trips_with_key_first_and_numbers_as_numbers(tmp_path):
    result = export_records(records(), catalogue(), "csv", tmp_path / "out.csv")
    assert (result.format, result.rows, list(result.columns)) == ("csv", 5, ALL_COLUMNS)
    back = read_csv(tmp_path / "out.csv")
    assert list(back.columns) == ALL_COLUMNS
    assert back["gtin"].tolist() == records()["gtin"].tolist()  # leading zeros kept
    assert back["price"].dtype == np.float64
    assert back["price"].tolist()[:2] == [10.0, -5.0]  # the number -5.0 stays a number
    assert back["launch_date"].isna().all()
    assert back["description"][0] == "Line one\nline two\tand a tab"
    assert not (tmp_path / "out.csv.partial").exists()


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_formulas_are_neutralised_for_spreadsheets(tmp_path, fmt):
    path = tmp_path / f"out.{fmt}"
    export_records(records(), catalogue(), fmt, path)
    if fmt == "csv":
        back = read_csv(path)
        titles, prices, descriptions = back["title"].tolist(), back["price"].tolist(), back["description"].tolist()
    else:
        rows = list(openpyxl.load_workbook(path, read_only=True).active.iter_rows(values_only=True))
        header = list(rows[0])
        assert header == ALL_COLUMNS
        titles = [r[header.index("title")] for r in rows[1:]]
        prices = [r[header.index("price")] for r in rows[1:]]
        descriptions = [r[header.index("description")] for r in rows[1:]]
        assert all(isinstance(r[header.index("gtin")], str) for r in rows[1:])  # text stays text
        assert rows[1][header.index("gtin")] == "0012345678905"
    assert titles == NEUTRALISED + ["Plain hat"]
    assert prices[1] == -5.0 and not isinstance(prices[1], str)
    assert str(descriptions[2]) in ("-5", "-5.0")  # text that is a bare negative number is not a formula


def test_xlsx_cells_are_typed(tmp_path):
    export_records(records(), catalogue(), "xlsx", tmp_path / "out.xlsx")
    sheet = openpyxl.load_workbook(tmp_path / "out.xlsx").active
    assert sheet.title == "records"
    assert sheet["F3"].value == -5.0 and sheet["F3"].data_type == "n"  # price of sku-2
    assert sheet["B2"].data_type == "s"  # neutralised formula is a string cell, not a formula
    assert sheet["F4"].value is None  # missing price


def test_xlsx_drops_control_characters_openpyxl_cannot_store(tmp_path):
    frame = records()
    frame.loc[0, "brand"] = "Ac\x00me\x1f"
    export_records(frame, catalogue(), "xlsx", tmp_path / "out.xlsx")
    rows = list(openpyxl.load_workbook(tmp_path / "out.xlsx", read_only=True).active.iter_rows(values_only=True))
    assert rows[1][3] == "Acme"


def test_jsonl_round_trips_values_unchanged(tmp_path):
    export_records(records(), catalogue(), "jsonl", tmp_path / "out.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(lines) == 5
    assert list(lines[0]) == ALL_COLUMNS
    assert lines[0]["title"] == FORMULAS[0]  # not a spreadsheet: no apostrophe
    assert lines[1]["price"] == -5.0 and lines[2]["price"] is None
    assert lines[0]["launch_date"] is None
    back = pd.read_json(tmp_path / "out.jsonl", lines=True, dtype={"gtin": str})
    assert back["gtin"].tolist() == records()["gtin"].tolist()


def test_parquet_round_trips_with_typed_columns(tmp_path):
    export_records(records(), catalogue(), "parquet", tmp_path / "out.parquet")
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column_names == ALL_COLUMNS
    assert str(table.schema.field("price").type) == "double"
    assert str(table.schema.field("gtin").type) == "string"
    back = table.to_pandas()
    assert back["title"].tolist() == FORMULAS + ["Plain hat"]
    assert back["price"].tolist()[:2] == [10.0, -5.0]
    assert back["launch_date"].isna().all()


def test_parquet_schema_holds_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "CHUNK_ROWS", 2)
    frame = records()
    frame["image_url"] = [None, None, None, None, "https://cdn.example.com/5.jpg"]  # first chunks all null
    export_records(frame, catalogue(), "parquet", tmp_path / "out.parquet")
    back = pq.read_table(tmp_path / "out.parquet").to_pandas()
    assert back["image_url"].tolist()[-1] == "https://cdn.example.com/5.jpg"
    assert back["sku"].tolist() == frame["sku"].tolist()


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_chunked_output_equals_single_chunk_output(tmp_path, monkeypatch, fmt):
    one, many = tmp_path / f"one.{fmt}", tmp_path / f"many.{fmt}"
    export_records(records(), catalogue(), fmt, one)
    monkeypatch.setattr(export_module, "CHUNK_ROWS", 2)
    export_records(records(), catalogue(), fmt, many)
    if fmt == "parquet":
        assert pq.read_table(one).equals(pq.read_table(many))
    elif fmt == "xlsx":
        def rows(p):
            return list(openpyxl.load_workbook(p, read_only=True).active.iter_rows(values_only=True))
        assert rows(one) == rows(many)
    else:
        assert one.read_bytes() == many.read_bytes()


def test_columns_pick_and_order_with_the_key_first(tmp_path):
    result = export_records(records(), catalogue(), "csv", tmp_path / "out.csv",
                            columns=["price", "sku", "title", "price", "internal_note"])
    assert list(result.columns) == ["sku", "price", "title", "internal_note"]
    assert list(read_csv(tmp_path / "out.csv").columns) == ["sku", "price", "title", "internal_note"]


def test_key_in_the_index_is_exported_first(tmp_path):
    export_records(records().set_index("sku"), catalogue(), "jsonl", tmp_path / "out.jsonl", columns=["title"])
    first = json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])
    assert first == {"sku": "SKU 1/Blue", "title": FORMULAS[0]}


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_zero_records_write_just_the_header(tmp_path, fmt):
    path = tmp_path / f"out.{fmt}"
    result = export_records(records().iloc[:0], catalogue(), fmt, path)
    assert result.rows == 0
    if fmt in ("csv", "shopify_csv"):
        back = pd.read_csv(path)
        assert back.empty and list(back.columns) == list(result.columns)
    elif fmt == "amazon_flat":
        back = pd.read_csv(path, sep="\t", header=2)
        assert back.empty and list(back.columns) == list(result.columns)
    elif fmt == "xlsx":
        rows = list(openpyxl.load_workbook(path, read_only=True).active.iter_rows(values_only=True))
        assert rows == [tuple(result.columns)]
    elif fmt == "jsonl":
        assert path.read_bytes() == b""
    else:
        table = pq.read_table(path)
        assert table.num_rows == 0 and table.column_names == list(result.columns)


# --- Shopify -----------------------------------------------------------------------------------


def shopify_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_shopify_header_is_exactly_the_template_header(tmp_path):
    result = export_records(records(), catalogue(), "shopify_csv", tmp_path / "products.csv")
    with open(SHOPIFY_TEMPLATE, newline="", encoding="utf-8") as fh:
        template = next(csv.reader(fh))
    with open(tmp_path / "products.csv", newline="", encoding="utf-8") as fh:
        ours = next(csv.reader(fh))
    assert ours == template == list(result.columns)
    assert (tmp_path / "products.csv").read_text().splitlines()[0] == ",".join(template)


def test_shopify_values_are_mapped_from_the_catalogue(tmp_path):
    export_records(records(), catalogue(), "shopify_csv", tmp_path / "products.csv")
    rows = shopify_rows(tmp_path / "products.csv")
    first, second = rows[0], rows[1]
    assert [r["Handle"] for r in rows] == ["sku-1-blue", "sku-2", "sku-3", "sku-4", "creme-5"]
    assert first["Variant SKU"] == "SKU 1/Blue"
    assert first["Title"] == NEUTRALISED[0]
    assert first["Body (HTML)"] == "Line one\nline two\tand a tab"
    assert first["Vendor"] == "Acme"
    assert first["Variant Barcode"] == "0012345678905"
    assert [r["Variant Price"] for r in rows] == ["10.00", "-5.00", "", "1234.50", "0.10"]
    assert [r["Variant Grams"] for r in rows] == ["250", "", "1000", "13", "0"]  # halves round up
    assert [r["Variant Weight Unit"] for r in rows] == ["g", "", "g", "g", "g"]
    assert first["Image Src"] == "https://cdn.example.com/1.jpg"
    assert [(r["Option1 Name"], r["Option1 Value"], r["Option2 Name"], r["Option2 Value"]) for r in rows] == [
        ("Color", "red", "Size", "S"), ("Size", "M", "", ""), ("Color", "blue", "", ""), ("", "", "", ""),
        ("Color", "red", "Size", "M")]
    assert [(r["Status"], r["Published"]) for r in rows] == [
        ("active", "TRUE"), ("draft", "FALSE"), ("active", "TRUE"), ("", ""), ("draft", "FALSE")]
    assert second["Product Category"] == second["Tags"] == second["Variant Inventory Qty"] == ""


@pytest.mark.parametrize(("unit", "grams", "shopify_unit"),
                         [("kg", "250000", "kg"), (None, "250000", "kg"), ("lb", "113398", "lb"), ("oz", "7087", "oz")])
def test_shopify_grams_convert_from_the_attribute_unit(tmp_path, unit, grams, shopify_unit):
    export_records(records(), catalogue(unit), "shopify_csv", tmp_path / "products.csv")
    first = shopify_rows(tmp_path / "products.csv")[0]  # weight 250 in the attribute's unit
    assert (first["Variant Grams"], first["Variant Weight Unit"]) == (grams, shopify_unit)


def test_shopify_columns_limit_the_sources(tmp_path):
    export_records(records(), catalogue(), "shopify_csv", tmp_path / "products.csv", columns=["title"])
    first = shopify_rows(tmp_path / "products.csv")[0]
    assert first["Title"] == NEUTRALISED[0]
    assert first["Variant Price"] == first["Vendor"] == ""
    assert first["Variant SKU"] == "SKU 1/Blue"  # the key is always there


def test_layout_without_mapped_attributes_leaves_columns_empty(tmp_path):
    only_key = CatalogueSpec(key="code", attributes={"name": AttributeSpec(type="text")})
    frame = pd.DataFrame({"code": ["A-1"], "name": ["Hat"]})
    export_records(frame, only_key, "shopify_csv", tmp_path / "products.csv")
    row = shopify_rows(tmp_path / "products.csv")[0]
    assert (row["Handle"], row["Variant SKU"]) == ("a-1", "A-1")
    assert [c for c, v in row.items() if v] == ["Handle", "Variant SKU"]


# --- Amazon ------------------------------------------------------------------------------------


def amazon(path: Path) -> tuple[list[list[str]], pd.DataFrame]:
    lines = path.read_text(encoding="utf-8").split("\n")
    head = [line.split("\t") for line in lines[:3]]
    body = pd.read_csv(path, sep="\t", header=2, dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)
    return head, body


def test_amazon_flat_file_has_the_three_header_rows(tmp_path):
    result = export_records(records(), catalogue(), "amazon_flat", tmp_path / "flat.txt")
    head, body = amazon(tmp_path / "flat.txt")
    assert head[0][0] == "TemplateType=fptcustom" and head[0][1].startswith("Version=")
    assert head[1][:3] == ["Seller SKU", "Product Name", "Brand Name"]
    assert head[2] == list(result.columns) == [
        "item_sku", "item_name", "brand_name", "external_product_id", "external_product_id_type", "standard_price",
        "item_weight", "item_weight_unit_of_measure", "main_image_url", "color_name", "size_name",
        "product_description"]
    assert len({len(row) for row in head}) == 1  # rectangular
    assert list(body.columns) == head[2] and len(body) == 5


def test_amazon_values(tmp_path):
    export_records(records(), catalogue(), "amazon_flat", tmp_path / "flat.txt")
    _, body = amazon(tmp_path / "flat.txt")
    assert body["item_sku"].tolist() == records()["sku"].tolist()
    assert body["item_name"].tolist() == NEUTRALISED + ["Plain hat"]
    assert body["external_product_id"].tolist() == records()["gtin"].tolist()
    assert body["external_product_id_type"].tolist() == ["EAN", "EAN", "UPC", "GTIN", "EAN"]
    assert body["standard_price"].tolist() == ["10.00", "-5.00", "", "1234.50", "0.10"]
    assert body["item_weight"].tolist() == ["250", "", "1000", "12.5", "0"]
    assert body["item_weight_unit_of_measure"].tolist() == ["GR", "", "GR", "GR", "GR"]
    assert body["product_description"][0] == "Line one line two and a tab"  # one line per record


def test_amazon_weight_in_an_unlisted_unit_is_converted_to_kg(tmp_path):
    export_records(records(), catalogue("tonne"), "amazon_flat", tmp_path / "flat.txt")
    _, body = amazon(tmp_path / "flat.txt")
    assert (body["item_weight"][0], body["item_weight_unit_of_measure"][0]) == ("250000", "KG")


# --- neutralise_formula and errors ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('=HYPERLINK("x")', '\'=HYPERLINK("x")'),
        ("+1", "'+1"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("-", "'-"),
        ("-5\n", "'-5\n"),
        ("-5", "-5"),
        ("-0.25", "-0.25"),
        ("-1e3", "-1e3"),
        (" =1", " =1"),
        ("a=b", "a=b"),
        ("", ""),
        (-5.0, "-5.0"),
        (-5, "-5"),
        (None, ""),
        (float("nan"), ""),
    ],
)
def test_neutralise_formula(value, expected):
    assert neutralise_formula(value) == expected


def test_csv_cells_follow_neutralise_formula_exactly(tmp_path):
    tricky = ["=1", "+1", "-1", "-1.5", "-.5", "-1e-3", "-1-1", "@x", "\t=1", "\r=1", "-5\n", " =1", "x", "−5"]
    frame = pd.DataFrame({"sku": [str(i) for i in range(len(tricky))], "title": tricky})
    export_records(frame, catalogue(), "csv", tmp_path / "out.csv", columns=["title"])
    back = pd.read_csv(tmp_path / "out.csv", dtype=str, keep_default_na=False)
    assert back["title"].tolist() == [neutralise_formula(v) for v in tricky]


def test_unknown_format_suggests_and_lists(tmp_path):
    with pytest.raises(ExportError, match=r"unknown export format 'xls' \(did you mean 'xlsx'\?\); formats: csv, "):
        export_records(records(), catalogue(), "xls", tmp_path / "out.xls")
    assert issubclass(ExportError, ValueError)


def test_unknown_column_suggests_and_lists(tmp_path):
    with pytest.raises(ExportError, match=r"unknown column 'titel' \(did you mean 'title'\?\); columns: sku, title"):
        export_records(records(), catalogue(), "csv", tmp_path / "out.csv", columns=["titel"])
    assert list(tmp_path.iterdir()) == []


def test_weight_unit_that_is_not_a_mass_is_an_error(tmp_path):
    with pytest.raises(ExportError, match="'weight' has unit 'cm', which is not a unit of mass"):
        export_records(records(), catalogue("cm"), "shopify_csv", tmp_path / "products.csv")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def broken(*args):
        Path(args[1]).write_text("half")
        raise OSError("disk full")

    monkeypatch.setattr(export_module, "_write_csv", broken)
    with pytest.raises(OSError, match="disk full"):
        export_records(records(), catalogue(), "csv", tmp_path / "out.csv")
    assert list(tmp_path.iterdir()) == []


def test_too_many_rows_for_excel(tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "XLSX_MAX_ROWS", 5)
    with pytest.raises(ExportError, match="do not fit in one Excel sheet"):
        export_records(records(), catalogue(), "xlsx", tmp_path / "out.xlsx")


# --- streamed records ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_a_stream_of_frames_writes_what_the_whole_frame_writes(tmp_path, monkeypatch, fmt):
    whole, streamed = tmp_path / f"whole.{fmt}", tmp_path / f"streamed.{fmt}"
    export_records(records(), catalogue(), fmt, whole)
    monkeypatch.setattr(export_module, "CHUNK_ROWS", 2)  # stream frames are re-chunked too
    frames = (records().iloc[i:i + 3] for i in range(0, 5, 3))
    result = export_records(frames, catalogue(), fmt, streamed)
    assert result.rows == 5
    if fmt == "parquet":
        assert pq.read_table(whole).equals(pq.read_table(streamed))
    elif fmt == "xlsx":
        def rows(p):
            return list(openpyxl.load_workbook(p, read_only=True).active.iter_rows(values_only=True))
        assert rows(whole) == rows(streamed)
    else:
        assert whole.read_bytes() == streamed.read_bytes()


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_progress_hears_of_each_chunk_once_it_is_written(tmp_path, monkeypatch, fmt):
    monkeypatch.setattr(export_module, "CHUNK_ROWS", 2)
    seen = []
    path = tmp_path / f"out.{fmt}"
    export_records(iter([records(), records().iloc[:0]]), catalogue(), fmt, path, on_progress=seen.append)
    assert seen == [2, 2, 1]
    assert path.exists()


def test_an_empty_stream_writes_just_the_header(tmp_path):
    result = export_records(iter([]), catalogue(), "csv", tmp_path / "out.csv")
    assert result.rows == 0
    assert (tmp_path / "out.csv").read_text().splitlines() == [",".join(ALL_COLUMNS)]


def test_a_stream_too_long_for_excel_is_refused_and_closed(tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "XLSX_MAX_ROWS", 6)
    closed = []

    def frames():
        try:
            for _ in range(3):
                yield records()
        finally:
            closed.append(True)

    with pytest.raises(ExportError, match=r"more than 5 records do not fit in one Excel sheet"):
        export_records(frames(), catalogue(), "xlsx", tmp_path / "out.xlsx")
    assert list(tmp_path.iterdir()) == [] and closed == [True]


def test_xlsx_text_is_escaped_and_read_back_as_written(tmp_path):
    frame = pd.DataFrame({"sku": ["a", "b", "c"], "title": ["x & <y>", "  spaced  ", "line\r\nbreak"],
                          "price": [1e20, np.inf, 0.1 + 0.2]})
    export_records(frame, catalogue(), "xlsx", tmp_path / "out.xlsx", columns=["title", "price"])
    back = pd.read_excel(tmp_path / "out.xlsx", engine="calamine")
    assert back["title"].tolist() == ["x & <y>", "  spaced  ", "line\r\nbreak"]
    assert back["price"].tolist()[0] == 1e20 and np.isnan(back["price"][1]) and back["price"][2] == 0.1 + 0.2


def test_xlsx_cells_longer_than_excel_allows_are_cut(tmp_path):
    frame = pd.DataFrame({"sku": ["a"], "title": ["x" * 40_000]})
    export_records(frame, catalogue(), "xlsx", tmp_path / "out.xlsx", columns=["title"])
    back = pd.read_excel(tmp_path / "out.xlsx", engine="calamine")
    assert len(back["title"][0]) == export_module.XLSX_MAX_CELL
