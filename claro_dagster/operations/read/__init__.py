"""Reading supplier files (CSV and XLSX) into text-only frames: the pure core of ``batch_raw``.

Every cell stays text exactly as the supplier wrote it (identifiers keep their leading zeros); each
row keeps the physical line (CSV) or sheet row (XLSX) it came from, so later stages can say "line 7:
..." to the supplier. Identifier cells that look damaged by Excel (scientific notation, lost leading
zeros, codes stored as numbers) are reported in ``RawBatch.flags`` and never silently "fixed".

Rules worth knowing (documented here because a supplier will meet them):

* Cells are ``CELL_DTYPE`` (pandas ``str`` dtype backed by pyarrow, NaN for empty cells). Empty means
  zero characters; ``"N/A"``, ``"null"`` or ``" "`` are kept as text.
* Header names are stripped of surrounding whitespace. An empty header cell is named after its
  column letter (``column_D``); a repeated name gets a suffix (``Price``, ``Price (2)``).
* CSV: the header is the first non-blank line (after Excel's ``sep=;`` hint line, if any); title
  lines above it are not skipped. Rows whose cells are all empty or blank are dropped (they carry
  no data); a row with fewer cells than the header is padded with empty cells; a row with more
  cells is an error unless the extra cells are empty (trailing delimiters). The encoding is UTF-8
  when every byte is valid UTF-8, else charset-normalizer's guess on the lines that are not (with
  Windows-1252 preferred when it reads as cleanly, since that is what Excel writes).
* XLSX: the header is the first row (of the first 30) in which at least half of the widest row's
  cells are text, so title rows above it are skipped. A header cell merged across k columns names
  each of them ``"<text> (1)"`` ... ``"<text> (k)"``; when the row below it holds a sub-header under
  every merged column (e.g. "L", "W", "H"), the names become ``"<text> L"`` and so on, and data
  starts one row lower. Cells with data right of the header get ``column_<letter>`` names.
  Formulas read as the value Excel cached; dates as ``YYYY-MM-DD``, date-times as
  ``YYYY-MM-DDTHH:MM:SS``; numbers as Excel shows them (15 significant digits, whole numbers without
  ``.0``, never scientific notation); booleans as ``TRUE``/``FALSE``. A workbook is refused before it
  is opened when it would expand past 1 GiB or a part over 1 MiB is compressed more than 100:1.
* Files are untrusted: before any parser sees one, a cheap pre-scan refuses what is built to exhaust
  a parser (see ``ReadLimits``: huge declared sheets, shared-strings bombs, thousands of sheets, external
  links, XML entities, deep nesting, zip bombs, encrypted parts, gigantic lines, headers with more
  columns than a spreadsheet holds); then a workbook is parsed in a child process with a memory and a
  time limit (``contained=True``, the default), so a native crash of the spreadsheet library, a runaway
  allocation or a hang becomes a ``SupplierFileError`` with its reason instead of taking the process
  down. A CSV is parsed in this process: pandas and pyarrow report bad input as exceptions, a CSV
  cannot expand beyond its own size, and the pre-scan has bounded its lines and columns, so the child
  (whose fork server costs seconds to start in every fresh run process) would buy nothing.
* Flags cover the columns named in ``identifier_columns`` (case-insensitive) and columns whose
  header has the word gtin, ean, upc, jan, barcode/bar code, isbn, mpn or sku, or a code noun with a
  number word ("Part No.", "Item number", "Product code"). Any of them: scientific notation, and
  (XLSX) numbers stored in number cells. GTIN-like ones also: digits-only values shorter than the
  length the header implies (UPC 12, EAN 8/13, GTIN-14 14; a plain barcode/GTIN column 8/12/13/14,
  or 14 when most of its values have 14 digits).
"""


from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa

from claro_dagster.operations.read.common import (
    CELL_DTYPE,
    FLAG_COLUMNS,
    LINE_COLUMN,
    RawBatch,
    ReadLimits,
    SupplierFileError,
    check_file,
)
from claro_dagster.operations.read.contained import contained
from claro_dagster.operations.read.csv import iter_csv, prescan_csv, read_csv
from claro_dagster.operations.read.xlsx import read_xlsx
from claro_dagster.operations.read.xlsx_scan import diagnose_workbook, prescan_workbook

__all__ = [
    "CELL_DTYPE",
    "LINE_COLUMN",
    "RawBatch",
    "ReadLimits",
    "SupplierFileError",
    "iter_supplier_file",
    "read_supplier_file",
]


def read_supplier_file(
    path: str | Path,
    *,
    sheet: str | int | None = None,
    encoding: str | None = None,
    delimiter: str | None = None,
    identifier_columns: Iterable[str] = (),
    max_bytes: int = 2_000_000_000,
    limits: ReadLimits | None = None,
    contained: bool = True,
) -> RawBatch:
    """Read a whole CSV or XLSX supplier file; raises SupplierFileError when it cannot be read.

    ``contained=False`` parses a workbook in this process too (tests, trusted files): a hostile one can then
    abort it.
    """
    path, kind, limits = _prepare(path, max_bytes, limits)
    ids = tuple(identifier_columns)
    if not contained or kind == "csv":
        return _read(path, kind, sheet, encoding, delimiter, ids, limits)
    with _contained(_read_job, (path, kind, sheet, encoding, delimiter, ids, limits), path, kind, limits) as (
        meta, out
    ):
        return RawBatch(frame=_load_frame(out / "frame.arrow"), flags=_load_flags(out / "flags.arrow"), **meta)


def iter_supplier_file(
    path: str | Path,
    *,
    chunk_rows: int = 100_000,
    sheet: str | int | None = None,
    encoding: str | None = None,
    delimiter: str | None = None,
    identifier_columns: Iterable[str] = (),
    max_bytes: int = 2_000_000_000,
    limits: ReadLimits | None = None,
    contained: bool = True,
) -> Iterator[RawBatch]:
    """Read a supplier file in chunks of at most ``chunk_rows`` rows, each with its true source lines.

    CSV is streamed with bounded memory; a workbook is loaded whole (Excel caps sheets at about a
    million rows) and handed out in chunks. All chunks of one file have the same columns. A contained
    workbook (the default) is read by the child, which writes the chunks to a temporary folder; they are
    handed out from there once it is done.
    """
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be at least 1")
    path, kind, limits = _prepare(path, max_bytes, limits)
    ids = tuple(identifier_columns)
    if not contained or kind == "csv":
        yield from _iter(path, kind, chunk_rows, sheet, encoding, delimiter, ids, limits)
        return
    args = (path, kind, chunk_rows, sheet, encoding, delimiter, ids, limits)
    with _contained(_chunks_job, args, path, kind, limits) as (result, out):
        for i, meta in enumerate(result["chunks"]):
            yield RawBatch(frame=_load_frame(out / f"frame-{i:06d}.arrow"),
                           flags=_load_flags(out / f"flags-{i:06d}.arrow"), **meta)
        if result["error"] is not None:
            raise result["error"]


# --------------------------------------------------------------------------------------------
# in this process


def _prepare(path: str | Path, max_bytes: int, limits: ReadLimits | None) -> tuple[Path, str, ReadLimits]:
    """File checks and the format's pre-scan: cheap, in this process, before any parser runs."""
    path = Path(path)
    limits = limits or ReadLimits()
    kind = check_file(path, max_bytes)
    if kind == "xlsx":
        prescan_workbook(path, path.name, limits)
    else:
        prescan_csv(path, path.name, limits)
    return path, kind, limits


def _read(path: Path, kind: str, sheet, encoding, delimiter, ids: tuple[str, ...], limits: ReadLimits) -> RawBatch:
    if kind == "xlsx":
        return read_xlsx(path, sheet, ids)
    return read_csv(path, encoding, delimiter, ids, limits)


def _iter(path: Path, kind: str, chunk_rows: int, sheet, encoding, delimiter, ids: tuple[str, ...],
          limits: ReadLimits) -> Iterator[RawBatch]:
    if kind == "csv":
        yield from iter_csv(path, chunk_rows, encoding, delimiter, ids, limits)
        return
    whole = read_xlsx(path, sheet, ids)
    frame = whole.frame
    for start in range(0, len(frame), chunk_rows):
        part = frame.iloc[start : start + chunk_rows].reset_index(drop=True)
        flags = whole.flags[whole.flags["line"].isin(part[LINE_COLUMN])].reset_index(drop=True)
        yield RawBatch(part, whole.file, None, None, whole.sheet, whole.header_line, flags)


# --------------------------------------------------------------------------------------------
# contained: the jobs run in the child; frames travel as Arrow IPC files

_FLAGS_SCHEMA = pa.schema([("line", pa.int64()), ("column", pa.string()), ("value", pa.string()),
                           ("reason", pa.string())])


def _contained(job, args: tuple, path: Path, kind: str, limits: ReadLimits):
    size = path.stat().st_size
    diagnose = (lambda: diagnose_workbook(path, path.name, limits)) if kind == "xlsx" else None
    return contained(job, args, file=path.name, limits=limits, seconds=limits.timeout(size), diagnose=diagnose)


def _meta(batch: RawBatch) -> dict:
    return {"file": batch.file, "encoding": batch.encoding, "delimiter": batch.delimiter, "sheet": batch.sheet,
            "header_line": batch.header_line}


def _read_job(out: Path, *args) -> dict:
    batch = _read(*args)
    _save_frame(batch.frame, out / "frame.arrow")
    _save_flags(batch.flags, out / "flags.arrow")
    return _meta(batch)


def _chunks_job(out: Path, *args) -> dict:
    chunks: list[dict] = []
    try:
        for i, batch in enumerate(_iter(*args)):
            _save_frame(batch.frame, out / f"frame-{i:06d}.arrow")
            _save_flags(batch.flags, out / f"flags-{i:06d}.arrow")
            chunks.append(_meta(batch))
    except SupplierFileError as exc:  # the chunks before the bad line are handed out, then the error
        return {"chunks": chunks, "error": exc}
    return {"chunks": chunks, "error": None}


def _save_frame(frame: pd.DataFrame, path: Path) -> None:
    _save(pa.Table.from_pandas(frame, preserve_index=False), path)


def _save_flags(flags: pd.DataFrame, path: Path) -> None:
    _save(pa.Table.from_pandas(flags[FLAG_COLUMNS], schema=_FLAGS_SCHEMA, preserve_index=False), path)


def _save(table: pa.Table, path: Path) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def _read_table(path: Path) -> pa.Table:
    with pa.OSFile(str(path), "rb") as source:
        return pa.ipc.open_file(source).read_all()


def _load_frame(path: Path) -> pd.DataFrame:
    return _read_table(path).to_pandas(types_mapper={pa.large_string(): CELL_DTYPE}.get)


def _load_flags(path: Path) -> pd.DataFrame:
    return _read_table(path).to_pandas()
