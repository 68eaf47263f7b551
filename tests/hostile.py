"""Hostile supplier files, built by code (nothing binary is checked in), and child jobs for the runner tests.

Each workbook is a minimal but valid .xlsx (python-calamine reads the plain ones) with one thing made
hostile, the way a broken exporter or an attacker would make it.
"""

from __future__ import annotations

import ctypes
import os
import zipfile
from pathlib import Path

MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
PKG = "http://schemas.openxmlformats.org/package/2006/relationships"
XML = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'

GOOD_ROWS = ('<row r="1"><c r="A1" t="inlineStr"><is><t>sku</t></is></c><c r="B1" t="inlineStr"><is><t>title</t></is>'
             '</c></row><row r="2"><c r="A2" t="inlineStr"><is><t>GLX-1</t></is></c><c r="B2" t="inlineStr"><is>'
             '<t>Mug</t></is></c></row>')


def sheet_xml(rows: str = GOOD_ROWS, dimension: str | None = "A1:B2") -> str:
    dim = f'<dimension ref="{dimension}"/>' if dimension else ""
    return f'{XML}<worksheet xmlns="{MAIN}">{dim}<sheetData>{rows}</sheetData></worksheet>'


def workbook(path: Path, sheets: dict[str, str] | None = None, *, shared_strings: str | None = None,
             workbook_extra: str = "", parts: dict[str, str | bytes] | None = None,
             encrypted_parts: bool = False) -> Path:
    """An .xlsx with the given sheets (name -> sheet XML) and extra parts."""
    sheets = sheets if sheets is not None else {"Products": sheet_xml()}
    overrides = "".join(
        f'<Override PartName="/xl/worksheets/sheet{i}.xml" '
        'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
        for i in range(1, len(sheets) + 1)
    )
    content = {
        "[Content_Types].xml": (
            f'{XML}<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>'
            '<Override PartName="/xl/workbook.xml" '
            'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
            f"{overrides}</Types>"),
        "_rels/.rels": (f'{XML}<Relationships xmlns="{PKG}"><Relationship Id="rId1" '
                        f'Type="{REL}/officeDocument" Target="xl/workbook.xml"/></Relationships>'),
        "xl/workbook.xml": (
            f'{XML}<workbook xmlns="{MAIN}" xmlns:r="{REL}"><sheets>'
            + "".join(f'<sheet name="{name}" sheetId="{i}" r:id="rId{i}"/>' for i, name in enumerate(sheets, 1))
            + f"</sheets>{workbook_extra}</workbook>"),
        "xl/_rels/workbook.xml.rels": (
            f'{XML}<Relationships xmlns="{PKG}">'
            + "".join(f'<Relationship Id="rId{i}" Type="{REL}/worksheet" Target="worksheets/sheet{i}.xml"/>'
                      for i in range(1, len(sheets) + 1))
            + (f'<Relationship Id="rIdS" Type="{REL}/sharedStrings" Target="sharedStrings.xml"/>'
               if shared_strings is not None else "")
            + "</Relationships>"),
    }
    for i, xml in enumerate(sheets.values(), 1):
        content[f"xl/worksheets/sheet{i}.xml"] = xml
    if shared_strings is not None:
        content["xl/sharedStrings.xml"] = shared_strings
    content.update(parts or {})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in content.items():
            archive.writestr(name, data)
    if encrypted_parts:  # mark every part "encrypted" in the zip directory, as a zip password tool does
        data = bytearray(path.read_bytes())
        at = data.find(b"PK\x01\x02")
        while at >= 0:
            data[at + 8] |= 0x1
            at = data.find(b"PK\x01\x02", at + 4)
        path.write_bytes(bytes(data))
    return path


# --------------------------------------------------------------------------------------------
# the corpus


def far_away_cell(path: Path) -> Path:
    """The 1.7 KB workbook of issue 7: one cell at XFD1048576, no declared size to warn anyone."""
    rows = GOOD_ROWS + '<row r="1048576"><c r="XFD1048576" t="inlineStr"><is><t>x</t></is></c></row>'
    return workbook(path, {"Products": sheet_xml(rows, dimension=None)})


def huge_dimension(path: Path) -> Path:
    return workbook(path, {"Products": sheet_xml(dimension="A1:XFD1048576")})


def shared_strings_bomb(path: Path) -> Path:
    """A shared-strings part announcing four billion strings, so a reader reserves memory for them."""
    sst = (f'{XML}<sst xmlns="{MAIN}" count="4000000000" uniqueCount="4000000000">'
           "<si><t>sku</t></si><si><t>title</t></si></sst>")
    rows = '<row r="1"><c r="A1" t="s"><v>0</v></c><c r="B1" t="s"><v>1</v></c></row>'
    return workbook(path, {"Products": sheet_xml(rows, "A1:B1")}, shared_strings=sst)


def entity_bomb(path: Path) -> Path:
    """'Billion laughs': entities expanding each other ten times per level."""
    entities = '<!ENTITY a0 "lol">' + "".join(
        f'<!ENTITY a{i} "{f"&a{i - 1};" * 10}">' for i in range(1, 10))
    sst = (f'{XML}<!DOCTYPE sst [{entities}]><sst xmlns="{MAIN}" count="1" uniqueCount="1">'
           "<si><t>&a9;</t></si></sst>")
    rows = '<row r="1"><c r="A1" t="s"><v>0</v></c></row>'
    return workbook(path, {"Products": sheet_xml(rows, "A1:A1")}, shared_strings=sst)


def deeply_nested(path: Path, depth: int = 20_000) -> Path:
    """workbook.xml with an extension element nested twenty thousand levels deep."""
    nest = "<x:e>" * depth + "</x:e>" * depth
    extra = f'<extLst><ext uri="{{hostile}}" xmlns:x="urn:x">{nest}</ext></extLst>'
    return workbook(path, workbook_extra=extra)


def external_links(path: Path) -> Path:
    link = (f'{XML}<externalLink xmlns="{MAIN}"><externalBook xmlns:r="{REL}" r:id="rId1">'
            "<sheetNames><sheetName val=\"Prices\"/></sheetNames></externalBook></externalLink>")
    rels = (f'{XML}<Relationships xmlns="{PKG}"><Relationship Id="rId1" Type="{REL}/externalLinkPath" '
            'Target="file:///\\\\fileserver\\finance\\prices.xlsx" TargetMode="External"/></Relationships>')
    return workbook(path, workbook_extra='<externalReferences><externalReference r:id="rIdX"/></externalReferences>',
                    parts={"xl/externalLinks/externalLink1.xml": link,
                           "xl/externalLinks/_rels/externalLink1.xml.rels": rels})


def thousands_of_sheets(path: Path, count: int = 3000) -> Path:
    small = sheet_xml()
    return workbook(path, {f"S{i}": small for i in range(count)})


def zip_bomb(path: Path) -> Path:
    """A sheet of 50 MB of spaces that compresses to 50 KB."""
    head = f'{XML}<worksheet xmlns="{MAIN}"><dimension ref="A1:B2"/><sheetData>'.encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        with archive.open("xl/worksheets/sheet1.xml", "w", force_zip64=True) as sheet:
            sheet.write(head)
            block = b" " * (1024 * 1024)
            for _ in range(50):
                sheet.write(block)
            sheet.write(b"</sheetData></worksheet>")
    return path


def encrypted_parts(path: Path) -> Path:
    return workbook(path, encrypted_parts=True)


def password_protected(path: Path) -> Path:
    """What Excel writes for a workbook with a password to open: an OLE2 container, no zip."""
    path.write_bytes(bytes.fromhex("D0CF11E0A1B11AE1") + b"\x00" * 1024 + "EncryptedPackage".encode("utf-16-le"))
    return path


def csv_gigantic_line(path: Path, size: int) -> Path:
    path.write_bytes(b"sku,title\nA1," + b"x" * size + b"\nA2,y\n")
    return path


def csv_with_nul_bytes(path: Path) -> Path:
    path.write_bytes(b"sku,title\n" + b"A1,Mug\n" * 20_000 + b"A2,\x00\x00\x00\x01binary\n")
    return path


def csv_binary(path: Path) -> Path:
    path.write_bytes(bytes(range(256)) * 64)
    return path


def csv_million_columns(path: Path, columns: int = 1_000_000) -> Path:
    path.write_bytes(",".join(f"c{i}" for i in range(columns)).encode() + b"\n" + b"1," * (columns - 1) + b"1\n")
    return path


# --------------------------------------------------------------------------------------------
# child jobs for the runner tests (run in the child: importable, not defined in a test's __main__)


def job_returns(out: Path, value):
    (out / "note.txt").write_text("written by the child")
    return value


def job_aborts(out: Path):
    os.abort()


def job_segfaults(out: Path):
    ctypes.string_at(0)


def job_allocates(out: Path, size: int):
    return len(bytearray(size))


def job_spins(out: Path):
    while True:
        pass


def job_raises(out: Path):
    raise KeyError("a defect in the reader")
