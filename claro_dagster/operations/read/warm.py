"""Imported by the fork server only: reads a tiny CSV and a tiny workbook once, so the lazy set-up of
pandas, pyarrow and python-calamine (function registries, dtype caches) is done before the server
forks, and each child inherits it instead of redoing it per file; then freezes the server's objects
for the garbage collector."""

from __future__ import annotations

import gc
import tempfile
import zipfile
from pathlib import Path

_MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_PKG = "http://schemas.openxmlformats.org/package/2006/relationships"
_PARTS = {
    "[Content_Types].xml": (
        '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        '<Override PartName="/xl/workbook.xml" '
        'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
        '<Override PartName="/xl/worksheets/sheet1.xml" '
        'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/></Types>'),
    "_rels/.rels": (f'<Relationships xmlns="{_PKG}"><Relationship Id="rId1" Type="{_REL}/officeDocument" '
                    'Target="xl/workbook.xml"/></Relationships>'),
    "xl/workbook.xml": (f'<workbook xmlns="{_MAIN}" xmlns:r="{_REL}"><sheets><sheet name="S" sheetId="1" '
                        'r:id="rId1"/></sheets></workbook>'),
    "xl/_rels/workbook.xml.rels": (f'<Relationships xmlns="{_PKG}"><Relationship Id="rId1" '
                                   f'Type="{_REL}/worksheet" Target="worksheets/sheet1.xml"/></Relationships>'),
    "xl/worksheets/sheet1.xml": (
        f'<worksheet xmlns="{_MAIN}"><sheetData><row r="1"><c r="A1" t="inlineStr"><is><t>sku</t></is></c>'
        '<c r="B1" t="inlineStr"><is><t>ean</t></is></c></row><row r="2"><c r="A2" t="inlineStr"><is><t>A1</t>'
        '</is></c><c r="B2"><v>4006381333931</v></c></row></sheetData></worksheet>'),
}


def warm() -> None:
    from claro_dagster.operations.read import _read_job
    from claro_dagster.operations.read.common import ReadLimits

    limits = ReadLimits()
    with tempfile.TemporaryDirectory(prefix="claro-warm-") as folder:
        root = Path(folder)
        (root / "w.csv").write_text("sku,ean\nA1,4.00638E+12\n", encoding="utf-8")
        with zipfile.ZipFile(root / "w.xlsx", "w") as archive:
            for name, text in _PARTS.items():
                archive.writestr(name, text)
        for name, kind in (("w.csv", "csv"), ("w.xlsx", "xlsx")):
            out = root / f"out-{kind}"
            out.mkdir()
            _read_job(out, root / name, kind, None, None, None, (), limits)


try:
    warm()
except Exception:  # only an optimisation: a child then does the set-up itself
    pass
# Objects of the server are shared with every child until written to; a garbage collection in a child
# would touch (and so copy) all of them. Frozen, the collector leaves them alone (the gc.freeze use case).
gc.collect()
gc.freeze()
