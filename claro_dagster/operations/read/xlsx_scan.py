"""A cheap look at a workbook before any parser expands it, and an explanation after a parser died.

The pre-scan reads the zip directory and the first kilobytes of each XML part, never whole sheets:
what it checks (declared sheet size, shared-strings count, sheet count, external links, XML entities,
nesting, zip bombs, encryption) is stated in the first elements of a part or in the directory. A cell far
away from the others is only visible by reading the whole sheet, which costs as much as parsing it; so
that is left to the contained parser, and ``diagnose_workbook`` reads the sheets only after the parser
crashed, ran out of memory or time, to tell the supplier why.
"""

from __future__ import annotations

import posixpath
import re
import time
import xml.etree.ElementTree as ET
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import iterparse as safe_iterparse

from claro_dagster.operations.read.common import (
    OLE2_MAGIC,
    ZIP_MAGIC,
    ReadLimits,
    SupplierFileError,
    column_letter,
    human_size,
)

RATIO_MIN_BYTES = 1024 * 1024
HEAD_BYTES = 64 * 1024
SMALL_PART_BYTES = 8 * 1024 * 1024
_RESAVE = "open it in Excel, save it again as .xlsx (or export CSV UTF-8) and send it again"
_DTD = re.compile(rb"<!(?:DOCTYPE|ENTITY)", re.IGNORECASE)


def prescan_workbook(path: Path, name: str, limits: ReadLimits) -> None:
    """Refuse what is not a plain .xlsx zip, and workbooks built to exhaust a parser, before one opens it."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        if head.startswith(OLE2_MAGIC):
            fh.seek(0)
            body = fh.read(8 * 1024 * 1024)
            if "EncryptedPackage".encode("utf-16-le") in body:
                reason = "password-protected workbook; open it in Excel, remove the password and save it again"
            elif "Workbook".encode("utf-16-le") in body or "Book".encode("utf-16-le") in body:
                reason = "legacy Excel 97-2003 workbook (.xls) named .xlsx; save it as .xlsx and send it again"
            else:
                reason = ("password-protected or legacy .xls workbook (not an .xlsx zip); remove the password "
                          "and save it as .xlsx, then send it again")
            raise SupplierFileError(name, reason)
    if not head.startswith(ZIP_MAGIC):
        raise SupplierFileError(name, "is not an Excel .xlsx workbook (not a zip file); send .xlsx or CSV")
    try:
        with zipfile.ZipFile(path) as archive:
            _check_directory(archive, name, limits)
            _check_parts(archive, name, limits)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError, zlib.error):
        raise SupplierFileError(
            name, "the workbook is damaged (broken zip); open it in Excel and save it again"
        ) from None


def _check_directory(archive: zipfile.ZipFile, name: str, limits: ReadLimits) -> None:
    infos = archive.infolist()
    if len(infos) > limits.workbook_parts:
        raise SupplierFileError(
            name, f"refused: the workbook holds {len(infos):,} parts (limit {limits.workbook_parts:,}), which looks "
            f"like a zip bomb; {_RESAVE}"
        )
    if any(info.flag_bits & 0x1 for info in infos):
        raise SupplierFileError(
            name, "password-protected workbook (its parts are encrypted); open it in Excel, remove the password "
            "and save it again"
        )
    total = sum(info.file_size for info in infos)
    if total > limits.workbook_bytes:
        raise SupplierFileError(
            name, f"refused: the workbook would expand to {human_size(total)} (limit "
            f"{human_size(limits.workbook_bytes)}), which looks like a zip bomb; split the data or send CSV"
        )
    for info in infos:
        if info.file_size < RATIO_MIN_BYTES:
            continue
        ratio = info.file_size / max(info.compress_size, 1)
        if ratio > limits.compression_ratio:
            raise SupplierFileError(
                name, f"refused: part {info.filename} expands {ratio:,.0f}:1 (limit {limits.compression_ratio}:1), "
                "which looks like a zip bomb; open it in Excel, save it again or send CSV"
            )
    links = [i.filename for i in infos if i.filename.lower().startswith("xl/externallinks/")
             and i.filename.lower().endswith(".xml") and "/_rels/" not in i.filename.lower()]
    if links:
        targets = _external_targets(archive)
        shown = f" ({', '.join(targets[:3])})" if targets else ""
        raise SupplierFileError(
            name, f"refused: the workbook links to {len(links)} other workbook{'s' if len(links) > 1 else ''}{shown}: "
            "its values may be copies of cells in files we cannot see, and the links point into your network; in Excel "
            "use Data > Edit Links > Break Link, save the workbook and send it again"
        )


def _external_targets(archive: zipfile.ZipFile) -> list[str]:
    targets = []
    for info in archive.infolist():
        low = info.filename.lower()
        if low.startswith("xl/externallinks/_rels/") and info.file_size <= SMALL_PART_BYTES:
            try:
                for _, element in safe_iterparse(archive.open(info)):
                    if _local(element.tag) == "Relationship" and element.get("Target"):
                        targets.append(element.get("Target"))
            except (ET.ParseError, DefusedXmlException):
                continue
    return targets


def _is_small(low: str) -> bool:
    return low == "xl/workbook.xml" or low.endswith(".rels") or low == "[content_types].xml"


def _is_sheet(low: str) -> bool:
    return low.startswith("xl/worksheets/") and low.endswith(".xml") and "/_rels/" not in low


def _check_parts(archive: zipfile.ZipFile, name: str, limits: ReadLimits) -> None:
    # the small parts first: once they are known to be safe, they tell the sheets' names
    parts = [i for i in archive.infolist() if not i.is_dir() and i.filename.lower().endswith((".xml", ".rels"))]
    sheets_seen = sum(_check_small_part(archive, i, name, limits) for i in parts if _is_small(i.filename.lower()))
    if sheets_seen > limits.sheets:
        raise SupplierFileError(
            name, f"refused: the workbook has {sheets_seen:,} sheets (limit {limits.sheets:,}); send the sheet with "
            "the products on its own (right-click the sheet > Move or Copy > new book) or export it as CSV"
        )
    names = sheet_names(archive)
    for info in parts:
        low = info.filename.lower()
        if _is_sheet(low):
            _check_sheet_head(archive, info, name, limits, names.get(info.filename))
        elif low == "xl/sharedstrings.xml":
            _check_shared_strings(archive, info, name, limits)
        elif not _is_small(low):  # styles, themes, properties: the head tells whether entities or nesting start it
            _check_head(archive, info, name, limits)


def sheet_names(archive: zipfile.ZipFile) -> dict[str, str]:
    """Sheet part -> the sheet's name in Excel ('xl/worksheets/sheet1.xml' -> 'Products'); {} if unknown."""
    try:
        targets = {}
        for _, element in safe_iterparse(archive.open("xl/_rels/workbook.xml.rels")):
            if _local(element.tag) == "Relationship":
                targets[element.get("Id")] = element.get("Target", "")
        names = {}
        for _, element in safe_iterparse(archive.open("xl/workbook.xml")):
            if _local(element.tag) != "sheet":
                continue
            rid = next((v for k, v in element.attrib.items() if k.endswith("}id")), None)
            target = targets.get(rid)
            if target:
                part = target.lstrip("/") if target.startswith("/") else posixpath.normpath("xl/" + target)
                names[part] = element.get("name", "")
        return names
    except (KeyError, ET.ParseError, DefusedXmlException, OSError):
        return {}


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _read_head(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    with archive.open(info) as fh:
        return fh.read(HEAD_BYTES)


def _refuse_dtd(head: bytes, part: str, name: str) -> None:
    if _DTD.search(head):
        raise SupplierFileError(
            name, f"refused: part {part} declares XML entities (<!DOCTYPE>/<!ENTITY>), which Excel never writes and "
            f"which can expand to gigabytes (an 'XML bomb'); {_RESAVE}"
        )


def _too_deep(part: str, name: str, limits: ReadLimits) -> SupplierFileError:
    return SupplierFileError(
        name, f"refused: the XML in part {part} is nested more than {limits.xml_depth} levels deep (Excel writes "
        f"fewer than 10), which is built to exhaust a parser; {_RESAVE}"
    )


def _head_events(head: bytes):
    """(event, element) of the start of a part, tolerating that it is cut off."""
    parser = ET.XMLPullParser(events=("start", "end"))
    try:
        parser.feed(head)
        yield from parser.read_events()
    except ET.ParseError:
        return


def _check_head(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, limits: ReadLimits, *,
                stop_at: str | None = None) -> list:
    """Depth check on the first kilobytes of a part; returns the start elements seen (up to ``stop_at``)."""
    head = _read_head(archive, info)
    _refuse_dtd(head, info.filename, name)
    depth, starts = 0, []
    for event, element in _head_events(head):
        if event == "start":
            depth += 1
            if depth > limits.xml_depth:
                raise _too_deep(info.filename, name, limits)
            if stop_at is not None and _local(element.tag) == stop_at:
                break
            starts.append(element)
        else:
            depth -= 1
    return starts


def _check_small_part(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, limits: ReadLimits) -> int:
    """workbook.xml, relationships, content types: small, read whole with defusedxml; returns sheets listed."""
    if info.file_size > SMALL_PART_BYTES:
        raise SupplierFileError(
            name, f"refused: part {info.filename} is {human_size(info.file_size)}, where Excel writes a few KB; "
            f"{_RESAVE}"
        )
    _refuse_dtd(_read_head(archive, info), info.filename, name)
    depth, sheets = 0, 0
    try:
        for event, element in safe_iterparse(archive.open(info), events=("start", "end")):
            if event == "start":
                depth += 1
                if depth > limits.xml_depth:
                    raise _too_deep(info.filename, name, limits)
                continue
            depth -= 1
            tag = _local(element.tag)
            if tag == "sheet" and info.filename.lower() == "xl/workbook.xml":
                sheets += 1
            if tag == "externalReference":
                raise SupplierFileError(
                    name, "refused: the workbook links to other workbooks: its values may be copies of cells in "
                    "files we cannot see; in Excel use Data > Edit Links > Break Link, save the workbook and "
                    "send it again"
                )
            element.clear()
    except DefusedXmlException:
        _refuse_dtd(b"<!DOCTYPE", info.filename, name)
    except ET.ParseError as exc:
        raise SupplierFileError(
            name, f"the workbook is damaged (part {info.filename}: {exc}); {_RESAVE}"
        ) from None
    return sheets


def _check_shared_strings(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, limits: ReadLimits) -> None:
    if info.file_size > limits.shared_strings_bytes:
        raise SupplierFileError(
            name, f"refused: the workbook's shared text (xl/sharedStrings.xml) is {human_size(info.file_size)} "
            f"(limit {human_size(limits.shared_strings_bytes)}); split the data or send CSV"
        )
    starts = _check_head(archive, info, name, limits, stop_at="si")
    sst = next((e for e in starts if _local(e.tag) == "sst"), None)
    if sst is None:
        return
    # every string takes at least "<si/>" (5 bytes): a count beyond that is a lie made to make a
    # parser reserve memory for billions of strings up front
    possible = info.file_size // 5 + 1
    declared = sst.get("uniqueCount")
    if declared is not None and (not declared.isdigit() or int(declared) > possible):
        raise SupplierFileError(
            name, f"refused: the workbook's shared text declares {_count(declared)} strings but its "
            f"{human_size(info.file_size)} can hold at most {possible:,}; a file built to exhaust the reader "
            f"(a 'shared-strings bomb'); {_RESAVE}"
        )


def _count(text: str) -> str:
    return f"{int(text):,}" if text.isdigit() else repr(text)


_REF = re.compile(r"^\$?([A-Za-z]{1,4})\$?(\d{1,9})$")
MAX_ROWS = 1_048_576
MAX_COLUMNS = 16_384


def parse_ref(ref: str) -> tuple[int, int] | None:
    """'XFD1048576' -> (row 1048576, column 16384), 1-based; None when it is not a cell reference."""
    m = _REF.match(ref.strip())
    if not m:
        return None
    col = 0
    for ch in m.group(1).upper():
        col = col * 26 + ord(ch) - 64
    return int(m.group(2)), col


def _span(rows: int, cols: int) -> str:
    return f"A1:{column_letter(cols - 1)}{rows}"


def _check_sheet_head(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, limits: ReadLimits,
                      sheet: str | None) -> None:
    starts = _check_head(archive, info, name, limits, stop_at="sheetData")
    dimension = next((e.get("ref") for e in starts if _local(e.tag) == "dimension" and e.get("ref")), None)
    if dimension is None:
        return
    last = parse_ref(dimension.split(":")[-1])
    if last is None:
        return
    rows, cols = last
    where = f"the sheet {sheet!r}" if sheet else f"the sheet in part {info.filename}"
    if rows > MAX_ROWS or cols > MAX_COLUMNS:
        raise SupplierFileError(
            name, f"refused: {where} declares the range {dimension}, beyond the largest sheet Excel can make "
            f"(A1:XFD1048576); {_RESAVE}"
        )
    if rows * cols > limits.sheet_cells:
        raise SupplierFileError(
            name, f"refused: {where} declares the range {dimension} ({_cells(rows * cols)}), more than the "
            f"{_cells(limits.sheet_cells)} a product sheet may span; delete the empty rows and columns after "
            "the data (Ctrl+End in Excel shows where the sheet ends), save the sheet again without the empty "
            "range, or export it as CSV"
        )


def _cells(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.0f} billion cells"
    if n >= 1e6:
        return f"{n / 1e6:.0f} million cells"
    return f"{n:,} cells"


# --------------------------------------------------------------------------------------------
# after the parser died: why


_CELL_REF = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?c\b[^>]*?\sr=[\"']([A-Za-z]{1,4})([0-9]{1,9})[\"']")
_SHEET_NAME = re.compile(r"sheet(\d+)\.xml$", re.IGNORECASE)


@dataclass
class SheetExtent:
    part: str
    cells: int = 0
    rows: int = 0
    cols: int = 0
    far_cell: str = ""


def diagnose_workbook(path: Path, name: str, limits: ReadLimits, budget_seconds: float = 60.0) -> str | None:
    """Why a parser could not cope with this workbook, by reading every cell reference of every sheet
    (streamed, bounded memory); None when nothing explains it."""
    deadline = time.monotonic() + budget_seconds
    try:
        with zipfile.ZipFile(path) as archive:
            names = sheet_names(archive)
            for info in archive.infolist():
                if not _is_sheet(info.filename.lower()):
                    continue
                sheet = names.get(info.filename)
                where = f"the sheet {sheet!r}" if sheet else f"the sheet in part {info.filename}"
                extent = _sheet_extent(archive, info, deadline)
                if extent is None:
                    return None
                span = extent.rows * extent.cols
                if span > limits.sheet_cells or extent.rows > MAX_ROWS or extent.cols > MAX_COLUMNS:
                    return (
                        f"{where} has a cell at {extent.far_cell}, far away from the others: the sheet "
                        f"then spans {_span(extent.rows, extent.cols)} ({_cells(span)}) but holds only "
                        f"{extent.cells:,} cells, and reading it needs memory for every cell of that range; delete "
                        f"that cell and the empty rows and columns before it (Ctrl+End in Excel jumps to it), save "
                        "the sheet again without the empty range, or export it as CSV"
                    )
    except (zipfile.BadZipFile, OSError, EOFError, zipfile.LargeZipFile, NotImplementedError, zlib.error):
        return None
    return None


def _sheet_extent(archive: zipfile.ZipFile, info: zipfile.ZipInfo, deadline: float) -> SheetExtent | None:
    extent = SheetExtent(info.filename)
    best = (0, 0)
    tail = b""
    with archive.open(info) as fh:
        while True:
            block = fh.read(1024 * 1024)
            if not block:
                break
            data = tail + block
            cut = data.rfind(b"<")  # a reference cut by the block end is read with the next block
            cut = cut if cut > 0 else len(data)
            for letters, digits in _CELL_REF.findall(data, 0, cut):
                extent.cells += 1
                ref = parse_ref((letters + digits).decode("ascii"))
                if ref is None:
                    continue
                row, col = ref
                extent.rows = max(extent.rows, row)
                extent.cols = max(extent.cols, col)
                if row * col > best[0] * best[1] or (row, col) > best:
                    best = (row, col)
                    extent.far_cell = f"{letters.decode().upper()}{row}"
            tail = data[cut:]
            if time.monotonic() > deadline:
                return None
    return extent
