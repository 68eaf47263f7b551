"""Export: write a catalogue's records to a file in one of several layouts.

`export_records(frame, catalogue, fmt, path)` writes ``frame`` (one column per attribute, keyed by
the catalogue key as a column or as the index) to ``path`` and returns an `ExportResult`. ``frame`` may
also be an iterable of such frames (e.g. `CatalogueStore.record_chunks`): they are written as they
come, so memory stays near one chunk whatever the number of records; the first frame decides which
columns are numbers. ``on_progress`` is called after each chunk with the number of records it wrote.

Formats (`EXPORT_FORMATS`):

- ``csv``: UTF-8 without BOM, one header row, key first then the attributes. Text cells are
  always quoted (pyarrow's writer), numbers never are, missing values are empty.
- ``xlsx``: one sheet named ``records``, streamed into the package chunk by chunk (see `_write_xlsx`);
  numbers as numbers, text always as text (never a formula); empty text leaves the cell empty.
- ``jsonl``: one JSON object per record (orjson when installed); missing values are ``null``.
- ``parquet``: pyarrow; numeric columns keep their type, everything else is string.
- ``shopify_csv``: Shopify's product CSV: exactly the 48 columns of its product template, in order.
- ``amazon_flat``: an Amazon-style tab-separated inventory flat file: a ``TemplateType`` row, the
  label row and the attribute-name row, then one unquoted line per record.

Generic formats export the key and every attribute of the spec, in spec order (attributes absent
from the frame as empty columns); ``columns`` picks and orders them, and may also name frame
columns outside the spec. The key always comes first.

Layouts map catalogue attributes by name (`LAYOUT_FIELDS`); an attribute that is missing (or left
out by ``columns``) leaves its layout columns empty, as do layout columns with no source at all:

=================  ========================================  =======================================
field              shopify_csv                               amazon_flat
=================  ========================================  =======================================
sku                Handle (slug), Variant SKU                item_sku
title              Title                                     item_name
description        Body (HTML)                               product_description
brand              Vendor                                    brand_name
gtin               Variant Barcode                           external_product_id, _type (by length:
                                                             8/13 EAN, 12 UPC, 14 GTIN)
price              Variant Price (2 decimals)                standard_price (2 decimals)
weight             Variant Grams (via pint from the          item_weight + _unit_of_measure (GR, KG,
                   attribute's unit, kg if none),            LB, OZ, MG as the attribute's unit;
                   Variant Weight Unit                       other units converted to KG)
image_url          Image Src                                 main_image_url
colour / color     Option1 Name "Color" + Value              color_name
size               Option1 or Option2 Name "Size" + Value    size_name
status             Status (active/draft/archived; unknown    -
                   words -> draft), Published TRUE iff active
=================  ========================================  =======================================

Text cells of csv, xlsx, shopify_csv and amazon_flat go through `neutralise_formula` (CSV/formula
injection); jsonl and parquet carry values unchanged. Records are written in chunks of
`CHUNK_ROWS`, so memory stays near one converted chunk (plus the frame, when a whole frame is
given), and the file appears at ``path`` only once complete (written as ``<name>.partial``, then
renamed).
"""

from __future__ import annotations

import csv
import difflib
import functools
import io
import itertools
import json
import math
import numbers
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from claro_dagster.operations.read.common import column_letter
from claro_dagster.spec.models import CatalogueSpec

try:  # orjson is a project dependency; the stdlib fallback keeps the module importable without it.
    import orjson
except ImportError:  # pragma: no cover - exercised only where orjson is missing
    orjson = None

__all__ = [
    "AMAZON_COLUMNS",
    "CHUNK_ROWS",
    "EXPORT_FORMATS",
    "LAYOUT_FIELDS",
    "SHOPIFY_COLUMNS",
    "ExportError",
    "ExportResult",
    "export_records",
    "neutralise_formula",
]

EXPORT_FORMATS = ("csv", "xlsx", "jsonl", "parquet", "shopify_csv", "amazon_flat")
CHUNK_ROWS = 50_000
XLSX_MAX_ROWS = 1_048_576  # Excel's sheet limit, header row included

#: Layout field -> catalogue attribute names that feed it, first present wins. Fallbacks when none
#: is present: ``sku`` -> the catalogue key; ``gtin`` -> the first attribute with ``format: gtin``;
#: ``image_url`` -> the first attribute of type ``image``.
LAYOUT_FIELDS: dict[str, tuple[str, ...]] = {
    "sku": ("sku",),
    "title": ("title",),
    "description": ("description",),
    "brand": ("brand",),
    "gtin": ("gtin",),
    "price": ("price",),
    "weight": ("weight",),
    "image_url": ("image_url",),
    "colour": ("colour", "color"),
    "size": ("size",),
    "status": ("status",),
}

#: Header of Shopify's product CSV template (help.shopify.com product_template.csv), in order.
SHOPIFY_COLUMNS: tuple[str, ...] = (
    "Handle", "Title", "Body (HTML)", "Vendor", "Product Category", "Type", "Tags", "Published",
    "Option1 Name", "Option1 Value", "Option2 Name", "Option2 Value", "Option3 Name", "Option3 Value",
    "Variant SKU", "Variant Grams", "Variant Inventory Tracker", "Variant Inventory Qty",
    "Variant Inventory Policy", "Variant Fulfillment Service", "Variant Price", "Variant Compare At Price",
    "Variant Requires Shipping", "Variant Taxable", "Variant Barcode", "Image Src", "Image Position",
    "Image Alt Text", "Gift Card", "SEO Title", "SEO Description", "Google Shopping / Google Product Category",
    "Google Shopping / Gender", "Google Shopping / Age Group", "Google Shopping / MPN",
    "Google Shopping / Condition", "Google Shopping / Custom Product", "Variant Image", "Variant Weight Unit",
    "Variant Tax Code", "Cost per item", "Included / United States", "Price / United States",
    "Compare At Price / United States", "Included / International", "Price / International",
    "Compare At Price / International", "Status",
)

#: Amazon flat-file columns: (attribute-name row, label row).
AMAZON_COLUMNS: tuple[tuple[str, str], ...] = (
    ("item_sku", "Seller SKU"),
    ("item_name", "Product Name"),
    ("brand_name", "Brand Name"),
    ("external_product_id", "Product ID"),
    ("external_product_id_type", "Product ID Type"),
    ("standard_price", "Standard Price"),
    ("item_weight", "Item Weight"),
    ("item_weight_unit_of_measure", "Item Weight Unit Of Measure"),
    ("main_image_url", "Main Image URL"),
    ("color_name", "Color"),
    ("size_name", "Size"),
    ("product_description", "Product Description"),
)
AMAZON_TEMPLATE_ROW = (
    "TemplateType=fptcustom",
    "Version=2024.0101",
    "The top 3 rows are for Amazon.com use only. Do not modify or delete the top 3 rows.",
)

# Shopify status values and the words catalogues use for them; anything else exports as draft.
_SHOPIFY_STATUS = {
    "active": "active", "published": "active", "live": "active", "enabled": "active", "online": "active",
    "draft": "draft", "inactive": "draft", "disabled": "draft", "unpublished": "draft", "offline": "draft",
    "archived": "archived", "discontinued": "archived",
}
_SHOPIFY_WEIGHT_UNIT = {"gram": "g", "kilogram": "kg", "pound": "lb", "ounce": "oz"}
_AMAZON_WEIGHT_UNIT = {"gram": "GR", "kilogram": "KG", "pound": "LB", "ounce": "OZ", "milligram": "MG"}
_GTIN_TYPE_BY_LENGTH = {8: "EAN", 12: "UPC", 13: "EAN", 14: "GTIN"}

# OWASP "CSV Injection": cells starting with these may be run as formulas by spreadsheet software.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_FORMULA_START_RE = r"^[=+\-@\t\r]"
# A bare negative number ("-5", "-0.25", "-1e3") is read back as that number; nothing to run.
# [0-9], not \d: the same pattern runs in RE2 (pyarrow) and Python re, whose \d differ.
_NEGATIVE_NUMBER = re.compile(r"-(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_NEGATIVE_NUMBER_RE = f"^{_NEGATIVE_NUMBER.pattern}$"  # RE2's $ is end of text, like fullmatch
_XLSX_ILLEGAL_RE = r"[\x00-\x08\x0b\x0c\x0e-\x1f]"  # control characters XML 1.0 cannot hold
_NULL = pa.scalar(None, pa.string())


class ExportError(ValueError):
    """An export that cannot be written as asked (unknown format or column, bad weight unit, ...)."""


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str
    rows: int
    columns: tuple[str, ...]


def neutralise_formula(text: object) -> str:
    """The cell text with a leading apostrophe when a spreadsheet could read it as a formula.

    Text starting with ``= + - @``, tab or carriage return gets ``'`` in front (OWASP CSV-injection
    guidance). Numbers stay numbers: a numeric value, or text that is just a negative number such
    as ``-5`` or ``-0.25``, is returned unchanged. ``None``/NaN become the empty string.
    """
    if text is None:
        return ""
    if isinstance(text, numbers.Real) and not isinstance(text, bool):
        return "" if isinstance(text, float) and math.isnan(text) else str(text)
    value = str(text)
    if value.startswith(_FORMULA_START) and not _NEGATIVE_NUMBER.fullmatch(value):
        return "'" + value
    return value


def export_records(
    frame: pd.DataFrame | Iterable[pd.DataFrame],
    catalogue: CatalogueSpec,
    fmt: str,
    path: Path,
    *,
    columns: Sequence[str] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ExportResult:
    """Write ``frame`` (or each frame of an iterable, in order) to ``path`` in format ``fmt`` (one of
    `EXPORT_FORMATS`). ``on_progress(n)`` is called after each chunk with the number of records it wrote."""
    records = _Records(frame, on_progress)
    try:
        if fmt not in EXPORT_FORMATS:
            raise ExportError(f"unknown export format {fmt!r}{_did_you_mean(fmt, EXPORT_FORMATS)}; "
                              f"formats: {', '.join(EXPORT_FORMATS)}")
        path = Path(path)
        selected = _select_columns(records.sample, catalogue, columns)
        if fmt == "xlsx":
            records.limit(XLSX_MAX_ROWS - 1, "one Excel sheet", "export csv or parquet instead")
        if fmt in ("shopify_csv", "amazon_flat"):
            layout = _Layout(records.sample, catalogue, selected)
            writer, header = (_write_shopify, SHOPIFY_COLUMNS) if fmt == "shopify_csv" else (
                _write_amazon, tuple(name for name, _ in AMAZON_COLUMNS))
            args: tuple = (layout,)
        else:
            writer = {"csv": _write_csv, "xlsx": _write_xlsx, "jsonl": _write_jsonl, "parquet": _write_parquet}[fmt]
            header = tuple(selected)
            args = (catalogue.key, selected)

        partial = path.with_name(path.name + ".partial")
        try:
            writer(records, partial, *args)
            partial.replace(path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    finally:
        records.close()
    return ExportResult(path=path, format=fmt, rows=records.rows, columns=header)


# ---------------------------------------------------------------------------------------------
# column selection and chunked access


def _select_columns(frame: pd.DataFrame, catalogue: CatalogueSpec, columns: Sequence[str] | None) -> list[str]:
    key = catalogue.key
    if columns is None:
        return [key, *(a for a in catalogue.attributes if a != key)]
    if isinstance(columns, str):
        columns = [columns]
    allowed = list(dict.fromkeys([key, *catalogue.attributes, *map(str, frame.columns)]))
    for name in columns:
        if name not in allowed:
            raise ExportError(f"unknown column {name!r}{_did_you_mean(name, allowed)}; "
                              f"columns: {', '.join(allowed)}")
    return [key, *(c for c in dict.fromkeys(columns) if c != key)]


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _chunks(frame: pd.DataFrame) -> Iterator[pd.DataFrame]:
    """Slices of CHUNK_ROWS records (views, no copy); one empty slice for an empty frame."""
    for start in range(0, max(len(frame), 1), CHUNK_ROWS):
        yield frame.iloc[start: start + CHUNK_ROWS]


class _Records:
    """The records to write: a whole frame or a stream of frames, handed out in chunks of at most CHUNK_ROWS.

    ``sample`` decides the columns and which of them are numbers: the whole frame, or the first frame of a
    stream. ``rows`` counts the records written so far; ``on_progress`` hears of each chunk once it is written.
    """

    def __init__(self, frame: pd.DataFrame | Iterable[pd.DataFrame], on_progress: Callable[[int], None] | None):
        self.on_progress = on_progress
        self.rows = 0
        self._max: tuple[int, str, str] | None = None
        if isinstance(frame, pd.DataFrame):
            self.sample, self._frames, self._stream = frame, iter([frame]), None
        else:
            self._stream = iter(frame)
            first = next(self._stream, None)
            self.sample = first if first is not None else pd.DataFrame()
            self._frames = itertools.chain([first] if first is not None else [], self._stream)

    def limit(self, most: int, where: str, instead: str) -> None:
        """Refuse more than ``most`` records: at once for a whole frame, else when the stream gets there."""
        self._max = (most, where, instead)
        if self._stream is None:
            self._check(len(self.sample))

    def _check(self, total: int) -> None:
        if self._max is not None and total > self._max[0]:
            most, where, instead = self._max
            counted = f"{total:,}" if self._stream is None else f"more than {most:,}"
            raise ExportError(f"{counted} records do not fit in {where} (at most {most:,}); {instead}")

    def chunks(self) -> Iterator[pd.DataFrame]:
        for frame in self._frames:
            for chunk in _chunks(frame):
                self._check(self.rows + len(chunk))
                yield chunk
                self.rows += len(chunk)  # the consumer asked for the next chunk: this one is written
                if self.on_progress is not None and len(chunk):
                    self.on_progress(len(chunk))

    def close(self) -> None:
        """Release the stream early (e.g. a database cursor) when writing stopped before its end."""
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


def _source(frame: pd.DataFrame, name: str, key: str) -> pd.Series | None:
    """Column ``name`` of ``frame``; the key may live in the index; None when absent."""
    if name in frame.columns:
        return frame[name]
    if name == key:
        return pd.Series(frame.index, index=frame.index, name=key)
    return None


def _is_number(series: pd.Series | None) -> bool:
    return (series is not None and pd.api.types.is_numeric_dtype(series.dtype)
            and not pd.api.types.is_bool_dtype(series.dtype))


def _texts(series: pd.Series | None, length: int) -> pa.Array:
    """A string array, null where missing. Integral floats print as integers (GTINs, SKUs)."""
    if series is None:
        return pa.nulls(length, pa.string())
    if _is_number(series):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        missing = np.isnan(values)
        integral = ~missing & (np.mod(np.where(missing, 0, values), 1) == 0) & (np.abs(values) < 2**53)
        as_int = pa.array(np.where(integral, values, 0).astype(np.int64)).cast(pa.string())
        as_float = pa.array(values, mask=missing).cast(pa.string())
        return pc.if_else(pa.array(integral), as_int, as_float)
    try:
        return _flat(pa.array(series, type=pa.string(), from_pandas=True))
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed objects: print each like str() does
        missing = series.isna().to_numpy()
        return pa.array([str(v) for v in series.to_numpy(dtype=object)], type=pa.string(), mask=missing)


def _numbers(series: pd.Series | None, length: int) -> np.ndarray:
    """Float array, NaN where missing or not a number."""
    if series is None:
        return np.full(length, np.nan)
    if _is_number(series):
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _present(text: pa.Array) -> np.ndarray:
    """Non-null and not blank."""
    return pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0), False).to_numpy(
        zero_copy_only=False)


def _neutralise(text: pa.Array) -> pa.Array:
    """`neutralise_formula` over a string array (the same rule, in pyarrow kernels)."""
    starts = pc.fill_null(pc.match_substring_regex(text, _FORMULA_START_RE), False)
    if not pc.any(starts).as_py():
        return text
    flagged = pc.and_(starts, pc.invert(pc.match_substring_regex(text, _NEGATIVE_NUMBER_RE)))
    return pc.if_else(flagged, pc.binary_join_element_wise("'", text, ""), text)


def _decimals(values: np.ndarray, places: int = 2) -> pa.Array:
    """Fixed-point text ("25.00"), null for NaN, halves rounded away from zero (12.5 g -> "13").

    Goes through integer units because pyarrow has no printf-style formatting.
    """
    missing = np.isnan(values)
    scaled = np.where(missing, 0, values) * 10**places
    units = (np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)).astype(np.int64)
    if places == 0:
        return pa.array(units, mask=missing).cast(pa.string())
    digits = pc.utf8_lpad(pa.array(np.abs(units)).cast(pa.string()), width=places + 1, padding="0")
    text = pc.binary_join_element_wise(pc.utf8_slice_codeunits(digits, 0, -places),
                                       pc.utf8_slice_codeunits(digits, -places), ".")
    text = pc.if_else(pa.array(units < 0), pc.binary_join_element_wise("-", text, ""), text)
    return pc.if_else(pa.array(missing), _NULL, text)


def _flat(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


# ---------------------------------------------------------------------------------------------
# generic formats


def _kinds(frame: pd.DataFrame, key: str, selected: list[str]) -> dict[str, bool]:
    """Per selected column: numeric? Decided once on the whole frame so every chunk agrees."""
    return {c: _is_number(_source(frame, c, key)) for c in selected}


def _cells(chunk: pd.DataFrame, key: str, column: str, numeric: bool) -> pa.Array:
    """A column for a spreadsheet-bound format: numbers as numbers, text neutralised."""
    series = _source(chunk, column, key)
    if numeric:
        return pa.array(series.to_numpy(), from_pandas=True)
    return _neutralise(_texts(series, len(chunk)))


def _write_csv(records: _Records, path: Path, key: str, selected: list[str]) -> None:
    numeric = _kinds(records.sample, key, selected)
    with open(path, "wb") as fh:
        _csv_rows(fh, selected, (
            [_cells(chunk, key, c, numeric[c]) for c in selected] for chunk in records.chunks()))


def _csv_rows(fh: BinaryIO, header: Sequence[str], chunks: Iterator[list[pa.Array]]) -> None:
    """Header through the csv module (quoted only where needed, like the files users compare it
    with), data through pyarrow's CSV writer (~10x pandas.to_csv)."""
    line = io.StringIO()
    csv.writer(line, lineterminator="\n").writerow(header)
    fh.write(line.getvalue().encode("utf-8"))
    names = [str(i) for i in range(len(header))]  # the writer needs unique names; header is written
    options = pa_csv.WriteOptions(include_header=False)
    for arrays in chunks:
        pa_csv.write_csv(pa.Table.from_arrays(arrays, names=names), fh, write_options=options)


# The package around the one sheet: fixed parts, as every spreadsheet application expects them.
_XLSX_NS = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_REL_NS = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_PKG_REL_NS = "http://schemas.openxmlformats.org/package/2006/relationships"
_XML_HEAD = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
_XLSX_PARTS: dict[str, str] = {
    "[Content_Types].xml": _XML_HEAD + (
        '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        '<Override PartName="/xl/workbook.xml" '
        'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
        '<Override PartName="/xl/worksheets/sheet1.xml" '
        'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
        '<Override PartName="/xl/styles.xml" '
        'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.styles+xml"/>'
        '</Types>'),
    "_rels/.rels": _XML_HEAD + (
        f'<Relationships xmlns="{_PKG_REL_NS}"><Relationship Id="rId1" '
        f'Type="{_REL_NS}/officeDocument" Target="xl/workbook.xml"/></Relationships>'),
    "xl/workbook.xml": _XML_HEAD + (
        f'<workbook xmlns="{_XLSX_NS}" xmlns:r="{_REL_NS}"><sheets>'
        '<sheet name="records" sheetId="1" r:id="rId1"/></sheets></workbook>'),
    "xl/_rels/workbook.xml.rels": _XML_HEAD + (
        f'<Relationships xmlns="{_PKG_REL_NS}">'
        f'<Relationship Id="rId1" Type="{_REL_NS}/worksheet" Target="worksheets/sheet1.xml"/>'
        f'<Relationship Id="rId2" Type="{_REL_NS}/styles" Target="styles.xml"/></Relationships>'),
    "xl/styles.xml": _XML_HEAD + (
        f'<styleSheet xmlns="{_XLSX_NS}">'
        '<fonts count="1"><font><sz val="11"/><name val="Calibri"/><family val="2"/></font></fonts>'
        '<fills count="2"><fill><patternFill patternType="none"/></fill>'
        '<fill><patternFill patternType="gray125"/></fill></fills>'
        '<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>'
        '<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs>'
        '<cellXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/></cellXfs>'
        '<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles>'
        '</styleSheet>'),
}
_SHEET = "xl/worksheets/sheet1.xml"
_SHEET_HEAD = (_XML_HEAD + f'<worksheet xmlns="{_XLSX_NS}"><sheetData>').encode()
_SHEET_TAIL = b"</sheetData></worksheet>"
XLSX_MAX_CELL = 32_767  # Excel's limit on the characters of one cell
# Deflate level of the sheet: level 1 is ~3x faster than the default 6 on sheet XML, for a file ~25% larger.
_XLSX_COMPRESSION = 1


def _write_xlsx(records: _Records, path: Path, key: str, selected: list[str]) -> None:
    """The sheet's XML is built a chunk at a time with pyarrow kernels, one column at a time, and streamed into
    the zip package: memory stays near one chunk, and 1M rows take seconds. Writers that build cells one by one
    in Python (openpyxl write-only, xlsxwriter constant_memory) cost about 5 us per cell here: over a minute
    for 1M rows of 15 columns, 7-8x a CSV export of the same rows. Text is written as inline strings, never
    formulas; cells that would be empty are left out."""
    numeric = _kinds(records.sample, key, selected)
    letters = [column_letter(i) for i in range(len(selected))]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=_XLSX_COMPRESSION) as package:
        for name, text in _XLSX_PARTS.items():
            package.writestr(name, text)
        with package.open(_SHEET, "w", force_zip64=True) as sheet:
            sheet.write(_SHEET_HEAD)
            header = pa.array(list(selected), pa.string())
            sheet.write(_xlsx_rows(1, [_xlsx_text(header.slice(i, 1), letters[i], pa.array(["1"]))
                                       for i in range(len(selected))]))
            row = 2
            for chunk in records.chunks():
                if not len(chunk):
                    continue
                numbers_ = pa.array(np.arange(row, row + len(chunk))).cast(pa.string())
                cells = []
                for c, letter in zip(selected, letters, strict=True):
                    if numeric[c]:
                        cells.append(_xlsx_number(_source(chunk, c, key), letter, numbers_))
                    else:
                        cells.append(_xlsx_text(_cells(chunk, key, c, False), letter, numbers_))
                sheet.write(_xlsx_rows(row, cells, numbers_))
                row += len(chunk)
            sheet.write(_SHEET_TAIL)


def _xlsx_rows(first: int, cells: list[pa.Array], numbers_: pa.Array | None = None) -> bytes:
    """``<row r="n">cells</row>`` for each row, as one block of bytes."""
    if numbers_ is None:
        numbers_ = pa.array([str(first)])
    rows = pc.binary_join_element_wise('<row r="', numbers_, '">', *cells, "</row>", "")
    return _joined_bytes(rows)


def _xlsx_text(text: pa.Array, letter: str, numbers_: pa.Array) -> pa.Array:
    """Inline-string cells; "" where the text is missing or empty. Text is already neutralised."""
    text = _flat(text)
    if pc.any(pc.fill_null(pc.match_substring_regex(text, _XLSX_ILLEGAL_RE), False)).as_py():
        text = pc.replace_substring_regex(text, _XLSX_ILLEGAL_RE, "")  # XML 1.0 cannot hold them
    if pc.any(pc.greater(pc.utf8_length(text), XLSX_MAX_CELL)).as_py():
        text = pc.utf8_slice_codeunits(text, 0, XLSX_MAX_CELL)
    for character, entity in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ("\r", "&#13;")):  # CR: not read as LF
        if pc.any(pc.match_substring(text, character)).as_py():  # looking is ~8x cheaper than replacing
            text = pc.replace_substring(text, character, entity)
    if pc.any(pc.match_substring(text, "_x")).as_py():
        # Excel reads _xHHHH_ as an escaped character: escape the underscore so such text stays as written.
        text = pc.replace_substring_regex(text, r"_(x[0-9A-Fa-f]{4}_)", r"_x005F_\1")
    # Leading or trailing spaces survive only with xml:space="preserve".
    spaced = pc.fill_null(pc.not_equal(pc.binary_length(text), pc.binary_length(pc.ascii_trim_whitespace(text))),
                          False)
    opening = pc.if_else(spaced, '<t xml:space="preserve">', "<t>")
    cells = pc.binary_join_element_wise(f'<c r="{letter}', numbers_, '" t="inlineStr"><is>', opening, text,
                                        "</t></is></c>", "")
    return pc.fill_null(pc.if_else(pc.equal(text, ""), _NULL, cells), "")


def _xlsx_number(series: pd.Series, letter: str, numbers_: pa.Array) -> pa.Array:
    """Number cells (shortest text that reads back as the same number); "" where missing or not finite."""
    values = pa.array(series.to_numpy(), from_pandas=True)
    if pa.types.is_floating(values.type):
        values = pc.if_else(pc.is_finite(values), values, pa.scalar(None, values.type))
    cells = pc.binary_join_element_wise(f'<c r="{letter}', numbers_, '"><v>', values.cast(pa.string()), "</v></c>",
                                        "")
    return pc.fill_null(cells, "")


def _write_jsonl(records: _Records, path: Path, key: str, selected: list[str]) -> None:
    with open(path, "wb") as fh:
        for chunk in records.chunks():
            cols = []
            for c in selected:
                series = _source(chunk, c, key)
                if series is None:
                    cols.append([None] * len(chunk))
                    continue
                values = series.to_numpy(dtype=object, copy=True)  # Python floats/ints/str
                values[series.isna().to_numpy()] = None
                cols.append(values.tolist())
            rows = zip(*cols, strict=True)
            fh.write(b"".join(_json_line(dict(zip(selected, row, strict=True))) for row in rows))


def _json_line(record: dict) -> bytes:
    if orjson is not None:
        return orjson.dumps(record, default=str, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY)
    return (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode()  # pragma: no cover


def _write_parquet(records: _Records, path: Path, key: str, selected: list[str]) -> None:
    types = {}
    for c in selected:
        series = _source(records.sample, c, key)
        if _is_number(series):
            types[c] = pa.int64() if pd.api.types.is_integer_dtype(series.dtype) else pa.float64()
        elif series is not None and pd.api.types.is_bool_dtype(series.dtype):
            types[c] = pa.bool_()
        else:
            types[c] = pa.string()
    schema = pa.schema([(c, types[c]) for c in selected])
    with pq.ParquetWriter(path, schema) as writer:
        for chunk in records.chunks():
            arrays = []
            for c in selected:
                series = _source(chunk, c, key)
                if types[c] == pa.string():
                    arrays.append(_texts(series, len(chunk)))
                else:
                    arrays.append(pa.array(series.to_numpy(), type=types[c], from_pandas=True))
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))


# ---------------------------------------------------------------------------------------------
# channel layouts


@functools.cache
def _units():
    import pint  # building the registry takes ~0.5 s; only layouts with a weight need it

    return pint.UnitRegistry()


class _Layout:
    """Where each layout field comes from, and the weight unit, resolved once per export."""

    def __init__(self, frame: pd.DataFrame, catalogue: CatalogueSpec, selected: list[str]):
        self.key = catalogue.key
        present = [c for c in selected if c == self.key or c in frame.columns]
        self.sources: dict[str, str | None] = {
            field: next((n for n in names if n in present), None) for field, names in LAYOUT_FIELDS.items()
        }
        attrs = catalogue.attributes
        if self.sources["sku"] is None:
            self.sources["sku"] = self.key
        if self.sources["gtin"] is None:
            self.sources["gtin"] = next((n for n in present if n in attrs and attrs[n].format == "gtin"), None)
        if self.sources["image_url"] is None:
            self.sources["image_url"] = next((n for n in present if n in attrs and attrs[n].type == "image"), None)

        self.weight_unit = "kilogram"
        self.grams_per_unit = 1000.0
        weight = self.sources["weight"]
        unit = attrs[weight].unit if weight in attrs else None
        if unit:
            registry = _units()
            try:
                parsed = registry.Unit(unit)
                self.grams_per_unit = float(registry.Quantity(1, parsed).to("gram").magnitude)
            except Exception as exc:  # pint raises several unrelated types for bad units
                raise ExportError(
                    f"attribute {weight!r} has unit {unit!r}, which is not a unit of mass ({exc}); "
                    "set its unit to one such as kg, g, lb or oz") from exc
            self.weight_unit = str(parsed)

    def texts(self, chunk: pd.DataFrame, field: str) -> pa.Array:
        name = self.sources[field]
        return _texts(None if name is None else _source(chunk, name, self.key), len(chunk))

    def numbers(self, chunk: pd.DataFrame, field: str) -> np.ndarray:
        name = self.sources[field]
        return _numbers(None if name is None else _source(chunk, name, self.key), len(chunk))


def _handles(skus: pa.Array) -> pa.Array:
    """Shopify handles: lowercase ASCII letters and digits joined by single hyphens."""
    text = pc.replace_substring_regex(pc.utf8_normalize(skus, "NFKD"), r"\p{M}", "")  # é -> e
    text = pc.replace_substring_regex(pc.utf8_lower(text), r"[^a-z0-9]+", "-")
    return pc.utf8_trim(text, characters="-")


def _shopify_status(status: pa.Array) -> pa.Array:
    """Catalogue status words -> active / draft / archived; blank stays null."""
    words = pc.utf8_lower(pc.utf8_trim_whitespace(status))
    words = pc.if_else(pc.equal(words, ""), _NULL, words)
    encoded = _flat(pc.dictionary_encode(words))
    mapped = pa.array([_SHOPIFY_STATUS.get(w, "draft") for w in encoded.dictionary.to_pylist()], pa.string())
    return mapped.take(encoded.indices)


def _write_shopify(records: _Records, path: Path, layout: _Layout) -> None:
    shopify_unit = _SHOPIFY_WEIGHT_UNIT.get(layout.weight_unit, "g")

    def rows(chunk: pd.DataFrame) -> list[pa.Array]:
        n = len(chunk)
        sku = layout.texts(chunk, "sku")
        weight = layout.numbers(chunk, "weight")
        has_weight = pa.array(~np.isnan(weight))
        colour, size = layout.texts(chunk, "colour"), layout.texts(chunk, "size")
        has_colour, has_size = pa.array(_present(colour)), pa.array(_present(size))
        both = pc.and_(has_colour, has_size)
        status = _shopify_status(layout.texts(chunk, "status"))
        out = {
            "Handle": _handles(sku),
            "Title": layout.texts(chunk, "title"),
            "Body (HTML)": layout.texts(chunk, "description"),
            "Vendor": layout.texts(chunk, "brand"),
            "Published": pc.if_else(pc.equal(status, "active"), "TRUE", "FALSE"),
            # Options: Color then Size, whichever the record has, in that order.
            "Option1 Name": pc.if_else(has_colour, "Color", pc.if_else(has_size, "Size", _NULL)),
            "Option1 Value": pc.if_else(has_colour, colour, pc.if_else(has_size, size, _NULL)),
            "Option2 Name": pc.if_else(both, "Size", _NULL),
            "Option2 Value": pc.if_else(both, size, _NULL),
            "Variant SKU": sku,
            "Variant Grams": _decimals(weight * layout.grams_per_unit, places=0),
            "Variant Price": _decimals(layout.numbers(chunk, "price")),
            "Variant Barcode": layout.texts(chunk, "gtin"),
            "Image Src": layout.texts(chunk, "image_url"),
            "Variant Weight Unit": pc.if_else(has_weight, shopify_unit, _NULL),
            "Status": status,
        }
        empty = pa.nulls(n, pa.string())
        return [_neutralise(out[c].cast(pa.string())) if c in out else empty for c in SHOPIFY_COLUMNS]

    with open(path, "wb") as fh:
        _csv_rows(fh, SHOPIFY_COLUMNS, (rows(chunk) for chunk in records.chunks()))


def _write_amazon(records: _Records, path: Path, layout: _Layout) -> None:
    names = [name for name, _ in AMAZON_COLUMNS]
    header = [
        [*AMAZON_TEMPLATE_ROW, *[""] * (len(names) - len(AMAZON_TEMPLATE_ROW))],
        [label for _, label in AMAZON_COLUMNS],
        names,
    ]
    amazon_unit = _AMAZON_WEIGHT_UNIT.get(layout.weight_unit)
    factor = 1.0 if amazon_unit else layout.grams_per_unit / 1000.0  # other units: export in KG
    amazon_unit = amazon_unit or "KG"
    gtin_types = np.array([_GTIN_TYPE_BY_LENGTH.get(i) for i in range(16)], dtype=object)

    with open(path, "wb") as fh:
        fh.write("".join("\t".join(row) + "\n" for row in header).encode("utf-8"))
        for chunk in records.chunks():
            gtin = pc.utf8_trim_whitespace(layout.texts(chunk, "gtin"))
            digits = pc.fill_null(pc.ascii_is_decimal(gtin), False).to_numpy(zero_copy_only=False)
            lengths = np.clip(pc.fill_null(pc.utf8_length(gtin), 0).to_numpy(zero_copy_only=False), 0, 15)
            weight = layout.numbers(chunk, "weight") * factor
            has_weight = ~np.isnan(weight)
            cols = {
                "item_sku": layout.texts(chunk, "sku"),
                "item_name": layout.texts(chunk, "title"),
                "brand_name": layout.texts(chunk, "brand"),
                "external_product_id": gtin,
                "external_product_id_type": pa.array(np.where(digits, gtin_types[lengths], None), pa.string()),
                "standard_price": _decimals(layout.numbers(chunk, "price")),
                "item_weight": _texts(pd.Series(weight), len(chunk)),
                "item_weight_unit_of_measure": pc.if_else(pa.array(has_weight), amazon_unit, _NULL),
                "main_image_url": layout.texts(chunk, "image_url"),
                "color_name": layout.texts(chunk, "colour"),
                "size_name": layout.texts(chunk, "size"),
                "product_description": layout.texts(chunk, "description"),
            }
            # Unquoted tab-separated lines: tabs and line breaks inside a cell become spaces.
            cells = [_neutralise(pc.replace_substring_regex(cols[c], r"[\t\r\n]+", " ")) for c in names]
            lines = pc.binary_join_element_wise(*cells, "\t", null_handling="replace", null_replacement="")
            fh.write(_joined_bytes(pc.binary_join_element_wise(lines, "", "\n")))


def _joined_bytes(text: pa.Array) -> bytes:
    """All values of a string array back to back, straight from its data buffer."""
    text = _flat(text)
    if not len(text):
        return b""
    width = np.int64 if pa.types.is_large_string(text.type) else np.int32
    offsets = np.frombuffer(text.buffers()[1], dtype=width)[text.offset: text.offset + len(text) + 1]
    return memoryview(text.buffers()[2])[offsets[0]: offsets[-1]].tobytes()
