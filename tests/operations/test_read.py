"""Reading supplier files: what a catalogue team sees when a supplier sends CSV or XLSX."""

from __future__ import annotations

import csv
import datetime as dt
import importlib.util
import io
import math
import pickle
import re
import tempfile
import zipfile
from pathlib import Path

import openpyxl
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from claro_dagster.operations.read import (
    LINE_COLUMN,
    RawBatch,
    ReadLimits,
    SupplierFileError,
    iter_supplier_file,
    read_supplier_file,
)
from claro_dagster.operations.read import csv as csv_reader
from claro_dagster.spec import DEMO_DIR

DEMO = DEMO_DIR  # the bundled demo (package data)
INBOX = DEMO / "inbox"


# --------------------------------------------------------------------------------------------
# helpers


def write(tmp_path: Path, name: str, content: str | bytes, encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode(encoding) if isinstance(content, str) else content)
    return path


def cells(batch: RawBatch) -> list[list[str | None]]:
    """Rows of the batch without the line column; NaN shown as None."""
    frame = batch.frame.drop(columns=LINE_COLUMN)
    return [[None if isinstance(v, float) and math.isnan(v) else v for v in row]
            for row in frame.astype(object).itertuples(index=False)]


def lines(batch: RawBatch) -> list[int]:
    return batch.frame[LINE_COLUMN].tolist()


def flag_map(batch: RawBatch) -> dict[tuple[int, str], str]:
    return {(row.line, row.column): row.reason for row in batch.flags.itertuples()}


def make_xlsx(
    path: Path,
    rows: list[list],
    *,
    merges: tuple[str, ...] = (),
    cached: dict[str, object] | None = None,
    extra_sheets: dict[str, list[list]] | None = None,
    first_sheet: str = "Products",
    hidden_first: bool = False,
) -> Path:
    """A workbook as Excel would save it: formulas carry the cached value given in ``cached``."""
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = first_sheet
    for r, row in enumerate(rows, start=1):
        for c, value in enumerate(row, start=1):
            if value is not None:
                ws.cell(row=r, column=c, value=value)
    for merge in merges:
        ws.merge_cells(merge)
    for name, sheet_rows in (extra_sheets or {}).items():
        other = wb.create_sheet(name)
        for row in sheet_rows:
            other.append(row)
    if hidden_first:
        ws.sheet_state = "hidden"
    buffer = io.BytesIO()
    wb.save(buffer)
    data = buffer.getvalue()
    if cached:
        data = _with_cached_values(data, cached)
    path.write_bytes(data)
    return path


def _with_cached_values(xlsx: bytes, cached: dict[str, object]) -> bytes:
    source = zipfile.ZipFile(io.BytesIO(xlsx))
    out_buffer = io.BytesIO()
    with zipfile.ZipFile(out_buffer, "w", zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename == "xl/worksheets/sheet1.xml":
                def fill(m: re.Match) -> str:
                    value = cached[m.group(1)]
                    kind = ' t="str"' if isinstance(value, str) else ""
                    return f'<c r="{m.group(1)}"{kind}><f>{m.group(3)}</f><v>{value}</v></c>'

                data = re.sub(r'<c r="([A-Z]+\d+)"([^>]*)><f>([^<]*)</f>(?:<v\s*/>|<v>\s*</v>)</c>', fill,
                              data.decode()).encode()
            out.writestr(info, data)
    return out_buffer.getvalue()


# --------------------------------------------------------------------------------------------
# CSV: values and line numbers


def test_cells_stay_text_and_keep_leading_zeros(tmp_path):
    path = write(tmp_path, "acme.csv", "SKU,EAN,Price\n00012345,0036000291452,1.50\n0007,0000000000017,2\n")
    batch = read_supplier_file(path)
    assert cells(batch) == [["00012345", "0036000291452", "1.50"], ["0007", "0000000000017", "2"]]
    assert all(str(batch.frame[c].dtype) == "str" for c in ("SKU", "EAN", "Price"))
    assert batch.frame[LINE_COLUMN].dtype == "int64"
    assert (batch.file, batch.encoding, batch.delimiter, batch.sheet, batch.header_line) == (
        "acme.csv", "utf-8", ",", None, 1)


def test_only_empty_cells_are_missing(tmp_path):
    path = write(tmp_path, "acme.csv", 'sku,colour,note,size\nA1,N/A,"",null\nA2, ,NaN,\n')
    batch = read_supplier_file(path)
    assert cells(batch) == [["A1", "N/A", None, "null"], ["A2", " ", "NaN", None]]
    assert batch.frame["note"].isna().tolist() == [True, False]


def test_line_numbers_are_physical_lines_with_quoted_newlines_and_blank_lines(tmp_path):
    text = (
        "\n"                                   # 1 blank line before the header
        'sku,"product\nname",price\n'          # 2-3 header with a quoted newline
        'A1,"two\nlines",1\n'                  # 4-5
        "\n"                                   # 6 blank
        "   \n"                                # 7 whitespace only
        'A2,"three\n\nlines",2\n'             # 8-10, with a blank line inside the quotes
        "A3,plain,3\n"                         # 11
        ",,\n"                                 # 12 all cells empty: no data
        'A4,"5"" screen",4\n'                  # 13
    )
    path = write(tmp_path, "acme.csv", text)
    batch = read_supplier_file(path)
    assert batch.header_line == 2
    assert list(batch.frame.columns) == ["sku", "product\nname", "price", LINE_COLUMN]
    assert lines(batch) == [4, 8, 11, 13]
    assert cells(batch)[1] == ["A2", "three\n\nlines", "2"]
    assert cells(batch)[3] == ["A4", '5" screen', "4"]


def test_crlf_file_with_bom(tmp_path):
    path = write(tmp_path, "acme.csv", '\ufeffsku,desc\r\nA1,"x\r\ny"\r\n\r\nA2,z\r\n')
    batch = read_supplier_file(path)
    assert batch.encoding == "utf-8-sig"
    assert list(batch.frame.columns)[0] == "sku"
    assert lines(batch) == [2, 5]
    assert cells(batch) == [["A1", "x\r\ny"], ["A2", "z"]]


def test_old_mac_line_endings(tmp_path):
    path = write(tmp_path, "acme.csv", "sku,name\rA1,one\r\rA2,two\r")
    batch = read_supplier_file(path)
    assert cells(batch) == [["A1", "one"], ["A2", "two"]]
    assert lines(batch) == [2, 4]


def test_quotes_inside_unquoted_cells_do_not_shift_lines(tmp_path):
    path = write(tmp_path, "acme.csv", 'sku,name,desc\nA1,24" monitor,"a\nb"\nA2,12" tablet,c\n')
    batch = read_supplier_file(path)
    assert cells(batch) == [["A1", '24" monitor', "a\nb"], ["A2", '12" tablet', "c"]]
    assert lines(batch) == [2, 4]


# --------------------------------------------------------------------------------------------
# CSV: encodings and delimiters


def test_cp1252_file_reads_right(tmp_path):
    text = "sku;title;price\nA1;Café crème – large;£4.50\nA2;Women’s “best” boot;£12,00\n"
    path = write(tmp_path, "acme.csv", text, encoding="cp1252")
    batch = read_supplier_file(path)
    assert batch.encoding == "cp1252"
    assert batch.delimiter == ";"
    assert cells(batch) == [["A1", "Café crème – large", "£4.50"], ["A2", "Women’s “best” boot", "£12,00"]]


def test_cp1252_found_past_the_first_kilobytes(tmp_path):
    rows = "".join(f"A{i},plain ascii product {i}\n" for i in range(8000))
    text = "sku,title\n" + rows + "A9999,Crème brûlée set – £12\n"
    path = write(tmp_path, "acme.csv", text, encoding="cp1252")
    assert path.stat().st_size > csv_reader.SAMPLE_BYTES
    batch = read_supplier_file(path)
    assert batch.encoding == "cp1252"
    assert cells(batch)[-1] == ["A9999", "Crème brûlée set – £12"]
    assert lines(batch)[-1] == 8002


def test_utf8_without_bom(tmp_path):
    path = write(tmp_path, "acme.csv", "sku,title\nA1,Zoë – naïve 日本\n")
    batch = read_supplier_file(path)
    assert batch.encoding == "utf-8"
    assert cells(batch) == [["A1", "Zoë – naïve 日本"]]


def test_utf16_export_with_bom(tmp_path):
    path = write(tmp_path, "acme.csv", "sku\tname\r\nA1\tCafé\r\nA2\tTée\r\n", encoding="utf-16")
    batch = read_supplier_file(path)
    assert batch.encoding == "utf-16"
    assert batch.delimiter == "\t"
    assert cells(batch) == [["A1", "Café"], ["A2", "Tée"]]
    assert lines(batch) == [2, 3]


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_delimiter_is_detected(tmp_path, delimiter):
    rows = [["sku", "title", "price"], ["A1", "Mug", "9.50"], ["A2", "Tent", "189.00"]]
    text = "".join(delimiter.join(r) + "\n" for r in rows)
    batch = read_supplier_file(write(tmp_path, "acme.csv", text))
    assert batch.delimiter == delimiter
    assert cells(batch) == rows[1:]


def test_semicolon_file_with_commas_in_values(tmp_path):
    text = "sku;title;price;weight\nA1;Mug, white, 350 ml;9,50;0,3\nA2;Tent, 2 person;189,00;2,4\n"
    batch = read_supplier_file(write(tmp_path, "acme.csv", text))
    assert batch.delimiter == ";"
    assert cells(batch)[0] == ["A1", "Mug, white, 350 ml", "9,50", "0,3"]


def test_given_encoding_and_delimiter_are_used(tmp_path):
    path = write(tmp_path, "acme.txt", "sku|name\nA1|Crème\n", encoding="latin-1")
    batch = read_supplier_file(path, encoding="latin-1", delimiter="|")
    assert (batch.encoding, batch.delimiter) == ("iso8859-1", "|")
    assert cells(batch) == [["A1", "Crème"]]


def test_excel_sep_hint_line(tmp_path):
    batch = read_supplier_file(write(tmp_path, "acme.csv", "sep=;\nsku;price\nA1;1,50\n\nA2;2\n"))
    assert (batch.delimiter, batch.header_line) == (";", 2)
    assert cells(batch) == [["A1", "1,50"], ["A2", "2"]]
    assert lines(batch) == [3, 5]


def test_utf16_without_bom_when_named(tmp_path):
    path = write(tmp_path, "acme.csv", "sku,name\nA1,Café\n", encoding="utf-16-le")
    batch = read_supplier_file(path, encoding="utf-16-le")
    assert cells(batch) == [["A1", "Café"]]


def test_single_column_file(tmp_path):
    batch = read_supplier_file(write(tmp_path, "skus.csv", "sku\n00001\n00002\n"))
    assert cells(batch) == [["00001"], ["00002"]]


# --------------------------------------------------------------------------------------------
# CSV: header names, short rows, blank rows


def test_header_names_are_stripped_made_unique_and_named_when_empty(tmp_path):
    path = write(tmp_path, "acme.csv", " SKU ,Price,,Price,__line__\nA1,1,x,2,9\n")
    batch = read_supplier_file(path)
    assert list(batch.frame.columns) == ["SKU", "Price", "column_C", "Price (2)", "__line__ (2)", LINE_COLUMN]
    assert cells(batch) == [["A1", "1", "x", "2", "9"]]
    assert lines(batch) == [2]


def test_short_rows_are_padded_and_trailing_empty_cells_allowed(tmp_path):
    path = write(tmp_path, "acme.csv", "sku,title,price\nA1,Mug\nA2,Tent,5,,\n\nA3,Cup,1\n")
    batch = read_supplier_file(path)
    assert cells(batch) == [["A1", "Mug", None], ["A2", "Tent", "5"], ["A3", "Cup", "1"]]
    assert lines(batch) == [2, 3, 5]


# --------------------------------------------------------------------------------------------
# CSV: bad input


def expect_error(path: Path, *fragments: str, line: int | None = None, **kwargs) -> SupplierFileError:
    with pytest.raises(SupplierFileError) as info:
        read_supplier_file(path, **kwargs)
    error = info.value
    assert error.file == path.name
    assert error.line == line
    for fragment in fragments:
        assert fragment in str(error), str(error)
    return error


def test_empty_file(tmp_path):
    error = expect_error(write(tmp_path, "acme.csv", b""), "acme.csv: ", "empty (0 bytes)")
    assert "export it again" in error.reason


def test_file_of_blank_lines(tmp_path):
    expect_error(write(tmp_path, "acme.csv", "\n  \n\n"), "no header", "only blank lines")


def test_header_without_rows(tmp_path):
    expect_error(write(tmp_path, "acme.csv", "sku,title,price\n\n,,\n"), "header (line 1) but no data rows")
    with pytest.raises(SupplierFileError, match="no data rows"):
        list(iter_supplier_file(write(tmp_path, "acme2.csv", "sku,title\n")))


def test_binary_file_named_csv(tmp_path):
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00"
    expect_error(write(tmp_path, "acme.csv", png), "acme.csv: is not a text file")


def test_workbook_named_csv(tmp_path):
    path = make_xlsx(tmp_path / "acme.csv", [["sku"], ["A1"]])
    expect_error(path, "is not a text file", "rename it to .xlsx")


def test_nul_bytes_deep_in_a_text_file(tmp_path):
    text = b"sku,title\n" + b"".join(b"A%d,t\n" % i for i in range(20000)) + b"A,\x00\x00\n"
    expect_error(write(tmp_path, "acme.csv", text), "not a text file", line=20002)


def test_bytes_not_in_the_given_encoding_name_the_line(tmp_path):
    text = "sku,title\nA1,ok\nA2,ok\nA3,Caf\xe9\n".encode("latin-1")
    expect_error(write(tmp_path, "acme.csv", text), "not valid utf-8", "save it as CSV UTF-8", line=4,
                 encoding="utf-8")


def test_unknown_encoding(tmp_path):
    expect_error(write(tmp_path, "acme.csv", "a\n1\n"), "unknown encoding 'klingon'", encoding="klingon")


def test_header_separated_by_another_delimiter_than_the_rows(tmp_path):
    path = write(tmp_path, "acme.csv", "sku;title;price\nA1\nA2\n")
    expect_error(path, "single column but looks separated by ';'", "delimiter=';'", line=1)


def test_given_delimiter_that_does_not_split_the_header(tmp_path):
    path = write(tmp_path, "acme.csv", "sku;title;price\nA1;Mug;2\n")
    expect_error(path, "looks separated by ';'", line=1, delimiter=",")


def test_rows_of_one_value_under_a_header_of_several(tmp_path):
    path = write(tmp_path, "acme.csv", "sku,title,price\nA1;Mug;2\nA2;Cup;3\n")
    expect_error(path, "every row has a single value", "look separated by ';'", line=1)


def test_row_with_more_cells_than_the_header_names_its_line(tmp_path):
    text = 'sku,title,price\nA1,"two\nlines",1\nA2,Mug,2\nA3,Mug, large,3\nA4,Cup,4\n'
    error = expect_error(write(tmp_path, "acme.csv", text), "4 cells but the header (line 1) has 3 columns",
                         "'A3', 'Mug', ' large', '3'", line=5)
    assert str(error).startswith("acme.csv line 5: ")


def test_file_larger_than_the_limit(tmp_path):
    path = write(tmp_path, "acme.csv", "sku\n" + "A1\n" * 500)
    expect_error(path, "1.5 KB (1,504 bytes)", "max_bytes=1,000", "split it", max_bytes=1000)
    with pytest.raises(SupplierFileError, match="over the limit"):
        next(iter_supplier_file(path, max_bytes=1000))


@pytest.mark.parametrize(("name", "fragment"), [
    ("acme.pdf", "unsupported file type '.pdf'"),
    ("acme", "unsupported file type without an extension"),
    ("acme.xls", "legacy Excel 97-2003 workbook (.xls)"),
])
def test_unsupported_files(tmp_path, name, fragment):
    expect_error(write(tmp_path, name, b"sku\nA1\n"), fragment)


def test_missing_file(tmp_path):
    with pytest.raises(SupplierFileError, match="file not found"):
        read_supplier_file(tmp_path / "nope.csv")


def test_error_is_picklable_and_reads_well():
    error = SupplierFileError("acme.csv", "the row has 4 cells", 3)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.file, copy.line, copy.reason, str(copy)) == (
        "acme.csv", 3, "the row has 4 cells", "acme.csv line 3: the row has 4 cells")
    assert str(SupplierFileError("a.xlsx", "x", 7, sheet="Products")) == "a.xlsx sheet 'Products' row 7: x"
    assert str(SupplierFileError("a.xlsx", "password-protected")) == "a.xlsx: password-protected"


# --------------------------------------------------------------------------------------------
# CSV: chunks


def test_chunks_are_bounded_and_keep_line_numbers(tmp_path):
    text = "sku,desc\n" + "".join(
        f'A{i},"line one\nline two"\n' if i % 3 == 0 else (f"A{i},x\n\n" if i % 4 == 0 else f"A{i},x\n")
        for i in range(25)
    )
    path = write(tmp_path, "acme.csv", text)
    whole = read_supplier_file(path)
    chunks = list(iter_supplier_file(path, chunk_rows=4))
    assert [len(c.frame) for c in chunks] == [4, 4, 4, 4, 4, 4, 1]
    assert sum((lines(c) for c in chunks), []) == lines(whole)
    assert sum((cells(c) for c in chunks), []) == cells(whole)
    assert all(c.header_line == 1 and c.encoding == "utf-8" for c in chunks)
    # the record starting on each reported line really starts there
    physical = text.split("\n")
    for sku, line in zip(whole.frame["sku"], lines(whole), strict=True):
        assert physical[line - 1].startswith(sku + ",")


def test_chunks_switch_to_the_careful_reader_without_losing_or_repeating_rows(tmp_path, monkeypatch):
    # small pyarrow blocks, so chunks are handed out before the short row near the end is met
    monkeypatch.setattr(csv_reader, "ARROW_BLOCK_BYTES", 256)  # in this process: the child would not see it
    body = "".join(f'A{i},"desc\n{i}",{i}\n' if i % 5 == 0 else f"A{i},d,{i}\n" for i in range(200))
    path = write(tmp_path, "acme.csv", "sku,desc,n\n" + body + "A200,short\nA201,d,201\n")
    chunks = list(iter_supplier_file(path, chunk_rows=16, contained=False))
    frame = pd.concat([c.frame for c in chunks], ignore_index=True)
    assert frame["sku"].tolist() == [f"A{i}" for i in range(202)]
    assert max(len(c.frame) for c in chunks) == 16
    expected_lines, line = [], 2
    for i in range(200):
        expected_lines.append(line)
        line += 2 if i % 5 == 0 else 1
    assert frame[LINE_COLUMN].tolist() == [*expected_lines, line, line + 1]
    assert frame["n"].iloc[200] is not None and pd.isna(frame["n"].iloc[200])


def test_chunk_rows_must_be_positive(tmp_path):
    with pytest.raises(ValueError):
        next(iter_supplier_file(write(tmp_path, "a.csv", "a\n1\n"), chunk_rows=0))


_cell = st.text(alphabet=['a', 'é', ' ', ',', '"', '\n', 'x', '0'], max_size=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ncols=st.integers(1, 4),
    rows=st.lists(st.lists(_cell, min_size=4, max_size=4), min_size=1, max_size=25),
    gaps=st.lists(st.sampled_from(["", "\n", "  \n", "\n\n"]), min_size=25, max_size=25),
    crlf=st.booleans(),
    chunk_rows=st.integers(1, 7),
)
def test_rows_and_lines_match_what_was_written(ncols, rows, gaps, crlf, chunk_rows):
    """Any CSV csv.writer can produce, with blank lines between records: the cells and the
    physical line of every record come back exactly, whole or in chunks."""
    newline = "\r\n" if crlf else "\n"
    header = [f"h{i}" for i in range(ncols)]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=newline)
    writer.writerow(header)
    expected_rows, expected_lines = [], []
    for row, gap in zip(rows, gaps, strict=False):
        out.write(gap.replace("\n", newline))
        row = row[:ncols]
        line = out.getvalue().count("\n") + 1
        writer.writerow(row)
        if any(c.strip() for c in row) and not (ncols == 1 and row[0] == ""):
            expected_rows.append([c if c else None for c in row])  # csv.writer keeps "\n" inside cells
            expected_lines.append(line)
    text = out.getvalue()
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder), "t.csv", text)
        if not expected_rows:
            with pytest.raises(SupplierFileError, match="no data rows"):
                read_supplier_file(path, delimiter=",")
            return
        batch = read_supplier_file(path, delimiter=",")
        assert cells(batch) == expected_rows
        assert lines(batch) == expected_lines
        # chunks in this process: the whole read above already went through the child and back
        chunks = list(iter_supplier_file(path, delimiter=",", chunk_rows=chunk_rows, contained=False))
        assert sum((lines(c) for c in chunks), []) == expected_lines
        assert all(len(c.frame) <= chunk_rows for c in chunks)
        # the careful reader (used when pyarrow refuses a file) agrees
        plan = csv_reader._plan_csv(path, None, ",")
        frame = next(csv_reader._stdlib_frames(plan, rows_per_frame=None, skip_records=0))
        assert frame[LINE_COLUMN].tolist() == expected_lines


# --------------------------------------------------------------------------------------------
# identifier flags


def test_scientific_notation_and_lost_zeros_are_flagged_not_fixed(tmp_path):
    text = (
        "SKU,Title,Variant Barcode,UPC,EAN-13,Weight,Ref\n"
        "A1,Mug,3.65275E+11,036000291452,4006381333931,1E+3,7.1E+5\n"   # line 2
        "A2,Cup,4006381333931,36000291452,400638133393,2,1\n"            # line 3: UPC and EAN lost a zero
        "1.2E+4,Pen,9638507,096385074,,,\n"                             # line 4: SKU in sci; 7-digit barcode
    )
    batch = read_supplier_file(write(tmp_path, "acme.csv", text), identifier_columns=["ref"])
    flags = flag_map(batch)
    assert set(flags) == {(2, "Variant Barcode"), (2, "Ref"), (3, "UPC"), (3, "EAN-13"), (4, "SKU"),
                          (4, "Variant Barcode"), (4, "UPC")}
    assert "scientific notation" in flags[(2, "Variant Barcode")]
    assert "6 significant digits" in flags[(2, "Variant Barcode")]
    assert flags[(3, "UPC")].startswith("11 digits where 12 expected: leading zeros were probably dropped")
    assert flags[(3, "EAN-13")].startswith("12 digits where 13 expected")
    assert flags[(4, "Variant Barcode")].startswith("7 digits where 8 expected")
    assert flags[(4, "UPC")].startswith("9 digits where 12 expected")
    assert (2, "Weight") not in flags  # not an identifier column
    row = batch.flags[(batch.flags["line"] == 2) & (batch.flags["column"] == "Variant Barcode")].iloc[0]
    assert row["value"] == "3.65275E+11"
    assert batch.frame.loc[0, "Variant Barcode"] == "3.65275E+11"  # never "fixed"
    assert list(batch.flags.columns) == ["line", "column", "value", "reason"]


def test_gtin14_column_flags_thirteen_digit_values(tmp_path):
    text = "gtin\n" + "".join(f"{10000000000000 + i * 7}\n" for i in range(5)) + "4006381333931\n"
    batch = read_supplier_file(write(tmp_path, "acme.csv", text))
    assert list(flag_map(batch)) == [(7, "gtin")]
    assert flag_map(batch)[(7, "gtin")].startswith("13 digits where 14 expected")


def test_shopify_template_rows_are_flagged(tmp_path):
    # two rows of Shopify's own product template (contracts/samples/shopify_product_template.csv):
    # its barcodes and MPNs were saved by Excel in scientific notation
    text = (
        "Handle,Title,Variant SKU,Variant Grams,Variant Barcode,Google Shopping / MPN\n"
        "example-shirt,Example T-Shirt,SRT_COT_111,145,3.65275E+11,3.65275E+11\n"
        "example-shirt,,SRT_COT_122,145,4.6347E+11,\n"
    )
    batch = read_supplier_file(write(tmp_path, "shopify.csv", text))
    assert set(flag_map(batch)) == {(2, "Variant Barcode"), (2, "Google Shopping / MPN"), (3, "Variant Barcode")}


def test_no_flags_gives_an_empty_frame_with_the_columns(tmp_path):
    batch = read_supplier_file(write(tmp_path, "acme.csv", "sku,ean\nA1,4006381333931\n"))
    assert batch.flags.empty and list(batch.flags.columns) == ["line", "column", "value", "reason"]


# --------------------------------------------------------------------------------------------
# XLSX


def globex_rows() -> list[list]:
    return [
        ["Globex price list March 2025"],                                        # 1 title (merged)
        ["Prices ex VAT"],                                                       # 2 note
        [],                                                                      # 3
        ["Item No.", "Barcode", "Dimensions cm", None, None, "Price", "Total", "Launch", "Updated", "Sale", "Qty"],
        ["00123", 4006381333931, 10, 20.5, 30, 9.99, "=F5*1.2", dt.date(2024, 3, 1),
         dt.datetime(2024, 3, 1, 13, 5), True, 3.0],
        [],                                                                      # 6 blank row
        ["00124", "4.00638E+12", 1, 2, 3, 0.1 + 0.2, "=F7*1.2", dt.date(2024, 3, 2), dt.time(10, 30), False,
         1e20],
        ["00125", "036000291452", None, None, None, 1.5e-7, "=F8*1.2", None, None, None, -2.0],
    ]


def test_xlsx_title_rows_merged_header_formulas_dates_numbers(tmp_path):
    path = make_xlsx(tmp_path / "globex.xlsx", globex_rows(), merges=("A1:K1", "C4:E4"),
                     cached={"G5": 11.988000000000001, "G7": 0.36, "G8": "n/a"})
    batch = read_supplier_file(path)
    assert (batch.sheet, batch.header_line, batch.encoding, batch.delimiter) == ("Products", 4, None, None)
    assert list(batch.frame.columns) == [
        "Item No.", "Barcode", "Dimensions cm (1)", "Dimensions cm (2)", "Dimensions cm (3)", "Price", "Total",
        "Launch", "Updated", "Sale", "Qty", LINE_COLUMN,
    ]
    assert lines(batch) == [5, 7, 8]
    assert cells(batch) == [
        ["00123", "4006381333931", "10", "20.5", "30", "9.99", "11.988", "2024-03-01", "2024-03-01T13:05:00",
         "TRUE", "3"],
        ["00124", "4.00638E+12", "1", "2", "3", "0.3", "0.36", "2024-03-02", "10:30:00", "FALSE",
         "100000000000000000000"],
        ["00125", "036000291452", None, None, None, "0.00000015", "n/a", None, None, None, "-2"],
    ]
    flags = flag_map(batch)
    assert set(flags) == {(5, "Barcode"), (7, "Barcode")}
    assert flags[(5, "Barcode")].startswith("stored as a number in the workbook")
    assert "scientific notation" in flags[(7, "Barcode")]


def test_xlsx_number_stored_code_that_lost_its_zero_gets_both_reasons(tmp_path):
    path = make_xlsx(tmp_path / "g.xlsx", [["sku", "UPC"], ["A1", 36000291452], ["A2", "036000291452"]])
    flags = flag_map(read_supplier_file(path))
    assert list(flags) == [(2, "UPC")]
    assert "stored as a number" in flags[(2, "UPC")] and "11 digits where 12 expected" in flags[(2, "UPC")]


def test_xlsx_formula_without_cached_value_is_empty(tmp_path):
    path = make_xlsx(tmp_path / "g.xlsx", [["sku", "total"], ["A1", "=1+1"]])
    assert cells(read_supplier_file(path)) == [["A1", None]]


def test_xlsx_two_row_header_under_a_merged_cell(tmp_path):
    rows = [
        ["Item", "Dimensions (cm)", None, None, "Price"],
        [None, "L", "W", "H", None],
        ["A1", 10, 20, 30, 5],
    ]
    path = make_xlsx(tmp_path / "g.xlsx", rows, merges=("B1:D1", "A1:A2", "E1:E2"))
    batch = read_supplier_file(path)
    assert list(batch.frame.columns) == [
        "Item", "Dimensions (cm) L", "Dimensions (cm) W", "Dimensions (cm) H", "Price", LINE_COLUMN]
    assert lines(batch) == [3]
    assert batch.header_line == 1


def test_xlsx_values_right_of_the_header_are_kept(tmp_path):
    rows = [["sku", "title", None, None], ["A1", "Mug", None, "call supplier"], ["A2", "Cup", None, None]]
    batch = read_supplier_file(make_xlsx(tmp_path / "g.xlsx", rows))
    assert list(batch.frame.columns) == ["sku", "title", "column_D", LINE_COLUMN]
    assert cells(batch) == [["A1", "Mug", "call supplier"], ["A2", "Cup", None]]


def test_xlsx_sheet_choice(tmp_path):
    path = make_xlsx(tmp_path / "g.xlsx", [["sku"], ["A1"]], extra_sheets={"Notes": [["note"], ["hello"]]})
    assert read_supplier_file(path).sheet == "Products"
    assert cells(read_supplier_file(path, sheet="Notes")) == [["hello"]]
    assert read_supplier_file(path, sheet=1).sheet == "Notes"
    assert read_supplier_file(path, sheet=" notes ").sheet == "Notes"
    with pytest.raises(SupplierFileError) as info:
        read_supplier_file(path, sheet="Prices")
    assert str(info.value) == "g.xlsx: there is no sheet named 'Prices'; the sheets are: 'Products', 'Notes'"
    with pytest.raises(SupplierFileError, match="no sheet number 2 .* 'Products', 'Notes'"):
        read_supplier_file(path, sheet=2)


def test_xlsx_default_sheet_skips_hidden_and_empty_sheets(tmp_path):
    path = make_xlsx(tmp_path / "g.xlsx", [["x"], ["hidden"]], hidden_first=True,
                     extra_sheets={"Empty": [], "Data": [["sku"], ["A1"]]})
    batch = read_supplier_file(path)
    assert batch.sheet == "Data" and cells(batch) == [["A1"]]


def test_xlsx_header_only_and_empty_sheet(tmp_path):
    path = make_xlsx(tmp_path / "g.xlsx", [["Title"], [], ["sku", "title"]], extra_sheets={"Blank": []})
    with pytest.raises(SupplierFileError) as info:
        read_supplier_file(path)
    assert info.value.line == 3 and "no data rows" in str(info.value)
    assert str(info.value).startswith("g.xlsx sheet 'Products' row 3: ")
    with pytest.raises(SupplierFileError, match="sheet 'Blank' is empty"):
        read_supplier_file(path, sheet="Blank")


def test_xlsx_chunks(tmp_path):
    rows = [["sku", "ean"]] + [[f"A{i}", 4006381333931 if i == 5 else "x"] for i in range(10)]
    path = make_xlsx(tmp_path / "g.xlsx", rows)
    chunks = list(iter_supplier_file(path, chunk_rows=4))
    assert [lines(c) for c in chunks] == [[2, 3, 4, 5], [6, 7, 8, 9], [10, 11]]
    assert [c.flags["line"].tolist() for c in chunks] == [[], [7], []]
    assert all(c.sheet == "Products" for c in chunks)


def test_xlsx_read_by_openpyxl_when_calamine_cannot(tmp_path, monkeypatch):
    import python_calamine

    path = make_xlsx(tmp_path / "globex.xlsx", globex_rows(), merges=("A1:K1", "C4:E4"),
                     cached={"G5": 11.988000000000001, "G7": 0.36, "G8": "n/a"})
    expected = read_supplier_file(path)

    def refuse(*args, **kwargs):
        raise python_calamine.CalamineError("cannot read")

    monkeypatch.setattr(python_calamine.CalamineWorkbook, "from_path", refuse)
    fallback = read_supplier_file(path, contained=False)  # in this process, where the patch applies
    pd.testing.assert_frame_equal(fallback.frame, expected.frame)
    pd.testing.assert_frame_equal(fallback.flags, expected.flags)


def test_password_protected_workbook(tmp_path):
    ole = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 1000 + "EncryptedPackage".encode("utf-16-le")
    expect_error(write(tmp_path, "acme.xlsx", ole), "acme.xlsx: password-protected workbook", "remove the password")


def test_legacy_xls_named_xlsx(tmp_path):
    ole = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 1000 + "Workbook".encode("utf-16-le")
    expect_error(write(tmp_path, "acme.xlsx", ole), "legacy Excel 97-2003 workbook (.xls) named .xlsx")
    bare = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 1000
    expect_error(write(tmp_path, "b.xlsx", bare), "password-protected or legacy .xls")


def test_zip_bomb_is_refused_before_opening(tmp_path):
    path = tmp_path / "bomb.xlsx"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("xl/worksheets/sheet1.xml", b"<" + b" " * (20 * 1024 * 1024))
    expect_error(path, "refused", "xl/worksheets/sheet1.xml expands", "zip bomb")


def test_workbook_expanding_past_the_limit_is_refused(tmp_path):
    path = make_xlsx(tmp_path / "g.xlsx", [["sku"], ["A1"]])
    with pytest.raises(SupplierFileError, match="would expand to .* looks like a zip bomb"):
        read_supplier_file(path, limits=ReadLimits(workbook_bytes=1000))


def test_not_a_workbook(tmp_path):
    expect_error(write(tmp_path, "g.xlsx", "sku,title\nA1,Mug\n"), "not an Excel .xlsx workbook (not a zip file)")
    expect_error(write(tmp_path, "h.xlsx", b"PK\x03\x04broken"), "damaged (broken zip)")
    expect_error(write(tmp_path, "e.xlsx", b""), "empty (0 bytes)")


# --------------------------------------------------------------------------------------------
# the demo supplier files


def test_demo_acme_csv():
    batch = read_supplier_file(INBOX / "acme" / "acme_products.csv")
    frame = batch.frame
    assert (len(frame), batch.encoding, batch.delimiter, batch.header_line) == (40, "utf-8", ",", 1)
    assert list(frame.columns)[:7] == ["Product Code", "Product Name", "Description", "Brand", "EAN", "MPN",
                                       "Price (GBP)"]
    assert frame["Product Name"].isna().sum() == 3
    assert frame["Product Code"].duplicated().sum() == 1
    assert lines(batch)[-1] == 42  # one description spans two lines
    assert {"500 g", "0.85kg", "3 lb"} & set(frame["Weight"]) == {"0.85kg", "3 lb"}
    assert {"Gray", "blk", "1.299,00", "£149.99"} <= set(frame.stack())
    assert frame["Description"].str.contains("<p>").sum() >= 2
    flags = flag_map(batch)
    assert list(flags) == [(12, "EAN")] and "scientific notation" in flags[(12, "EAN")]


def test_demo_acme_cp1252_csv():
    batch = read_supplier_file(INBOX / "acme" / "acme_products_cp1252.csv")
    assert (len(batch.frame), batch.encoding, batch.delimiter) == (10, "cp1252", ";")
    assert batch.frame["Product Name"].iloc[0] == "Après-ski Boot – Women’s"
    assert "Price (£)" in batch.frame.columns
    assert lines(batch) == list(range(2, 12))


def test_demo_globex_xlsx():
    batch = read_supplier_file(INBOX / "globex" / "globex_products.xlsx", sheet="Products")
    frame = batch.frame
    assert (len(frame), batch.sheet, batch.header_line) == (30, "Products", 4)
    assert {"Item No.", "Barcode", "Dimensions (cm) Length", "Dimensions (cm) Width", "Price inc. VAT",
            "Net weight (g)", "Available from"} <= set(frame.columns)
    assert lines(batch)[0] == 6 and 26 not in lines(batch) and lines(batch)[-1] == 36
    assert frame["Item No."].iloc[0] == "GLX-00421"
    assert frame["Price inc. VAT"].iloc[0] == "15.588"  # the cached value of =I6*1.2
    assert frame["Available from"].iloc[0] == "2025-01-01"
    flags = flag_map(batch)
    assert "scientific notation" in flags[(10, "Barcode")]
    assert "11 digits where 12 expected" in flags[(15, "Barcode")]
    assert "stored as a number" in flags[(23, "Mfr Part No.")]
    assert read_supplier_file(INBOX / "globex" / "globex_products.xlsx", sheet="Notes").frame.shape[0] == 2


def test_demo_suppliers_csv():
    batch = read_supplier_file(INBOX / "suppliers" / "suppliers.csv")
    assert list(batch.frame.columns) == ["supplier_id", "name", "contact_email", "country", "lead_time_days",
                                         LINE_COLUMN]
    assert batch.frame["supplier_id"].tolist() == [f"SUP-000{i}" for i in range(1, 7)]


def test_demo_files_are_what_make_files_writes(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("make_demo_files", DEMO / "make_files.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "OUT", tmp_path)
    module.main()
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(str(p.relative_to(INBOX)) for p in INBOX.rglob("*") if p.is_file())
    for name in written:
        assert (tmp_path / name).read_bytes() == (INBOX / name).read_bytes(), name
