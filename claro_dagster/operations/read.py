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
* Flags cover the columns named in ``identifier_columns`` (case-insensitive) and columns whose
  header has the word gtin, ean, upc, jan, barcode/bar code, isbn, mpn or sku, or a code noun with a
  number word ("Part No.", "Item number", "Product code"). Any of them: scientific notation, and
  (XLSX) numbers stored in number cells. GTIN-like ones also: digits-only values shorter than the
  length the header implies (UPC 12, EAN 8/13, GTIN-14 14; a plain barcode/GTIN column 8/12/13/14,
  or 14 when most of its values have 14 digits).
"""

from __future__ import annotations

import bisect
import codecs
import csv
import datetime as dt
import math
import re
import string
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

__all__ = [
    "CELL_DTYPE",
    "LINE_COLUMN",
    "RawBatch",
    "SupplierFileError",
    "iter_supplier_file",
    "read_supplier_file",
]

#: dtype of every cell column: text backed by pyarrow, NaN for empty cells (pandas 3's ``str``).
CELL_DTYPE = pd.StringDtype("pyarrow", na_value=np.nan)
#: name of the column holding the source line (CSV) or sheet row (XLSX) of each row.
LINE_COLUMN = "__line__"
FLAG_COLUMNS = ["line", "column", "value", "reason"]

CSV_EXTENSIONS = frozenset({".csv", ".tsv", ".txt"})
XLSX_EXTENSIONS = frozenset({".xlsx", ".xlsm"})
CSV_DELIMITERS = (",", ";", "\t", "|")

SAMPLE_BYTES = 64 * 1024
SCAN_BLOCK_BYTES = 16 * 1024 * 1024
ARROW_BLOCK_BYTES = 4 * 1024 * 1024
CSV_FIELD_LIMIT = 64 * 1024 * 1024
# A workbook may expand to at most this much XML, and no large part may be compressed more than
# XLSX_MAX_RATIO:1; real sheets compress 5-30:1, zip bombs 1000:1 and more.
XLSX_MAX_UNCOMPRESSED = 1024**3
XLSX_MAX_RATIO = 100
XLSX_RATIO_MIN_BYTES = 1024 * 1024
XLSX_MAX_ENTRIES = 10_000
HEADER_SCAN_ROWS = 30

_ZIP_MAGIC = b"PK\x03\x04"
_OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


class SupplierFileError(Exception):
    """A supplier file that cannot be read: says which file, where, and what to do next.

    ``str()`` reads ``"acme.csv line 3: ..."`` (``"globex.xlsx sheet 'Products' row 3: ..."`` for a
    workbook) or ``"acme.xlsx: ..."`` when there is no line.
    """

    def __init__(self, file: str, reason: str, line: int | None = None, *, sheet: str | None = None):
        self.file = file
        self.reason = reason
        self.line = line
        self.sheet = sheet
        super().__init__(self._message())

    def _message(self) -> str:
        where = self.file
        if self.sheet is not None:
            where += f" sheet {self.sheet!r}"
        if self.line is not None:
            where += f" {'row' if self.sheet is not None else 'line'} {self.line}"
        return f"{where}: {self.reason}"

    def __reduce__(self):
        return (_rebuild_error, (self.file, self.reason, self.line, self.sheet))


def _rebuild_error(file: str, reason: str, line: int | None, sheet: str | None) -> SupplierFileError:
    return SupplierFileError(file, reason, line, sheet=sheet)


@dataclass
class RawBatch:
    """Rows of one supplier file (or one chunk of it) as received, with their source lines."""

    frame: pd.DataFrame
    file: str
    encoding: str | None
    delimiter: str | None
    sheet: str | None
    header_line: int
    flags: pd.DataFrame


def read_supplier_file(
    path: str | Path,
    *,
    sheet: str | int | None = None,
    encoding: str | None = None,
    delimiter: str | None = None,
    identifier_columns: Iterable[str] = (),
    max_bytes: int = 2_000_000_000,
) -> RawBatch:
    """Read a whole CSV or XLSX supplier file; raises SupplierFileError when it cannot be read."""
    path = Path(path)
    kind = _check_file(path, max_bytes)
    ids = tuple(identifier_columns)
    if kind == "xlsx":
        return _read_xlsx(path, sheet, ids)
    plan = _plan_csv(path, encoding, delimiter)
    frame = _read_csv_whole(plan)
    return _csv_batch(plan, frame, ids)


def iter_supplier_file(
    path: str | Path,
    *,
    chunk_rows: int = 100_000,
    sheet: str | int | None = None,
    encoding: str | None = None,
    delimiter: str | None = None,
    identifier_columns: Iterable[str] = (),
    max_bytes: int = 2_000_000_000,
) -> Iterator[RawBatch]:
    """Read a supplier file in chunks of at most ``chunk_rows`` rows, each with its true source lines.

    CSV is streamed with bounded memory; a workbook is loaded whole (Excel caps sheets at about a
    million rows) and handed out in chunks. All chunks of one file have the same columns.
    """
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be at least 1")
    path = Path(path)
    kind = _check_file(path, max_bytes)
    ids = tuple(identifier_columns)
    if kind == "xlsx":
        whole = _read_xlsx(path, sheet, ids)
        frame = whole.frame
        for start in range(0, len(frame), chunk_rows):
            part = frame.iloc[start : start + chunk_rows].reset_index(drop=True)
            lines = part[LINE_COLUMN]
            flags = whole.flags[whole.flags["line"].isin(lines)].reset_index(drop=True)
            yield RawBatch(part, whole.file, None, None, whole.sheet, whole.header_line, flags)
        return
    plan = _plan_csv(path, encoding, delimiter)
    for frame in _iter_csv(plan, chunk_rows):
        yield _csv_batch(plan, frame, ids)


# --------------------------------------------------------------------------------------------
# file-level checks


def _check_file(path: Path, max_bytes: int) -> str:
    name = path.name
    ext = path.suffix.lower()
    if ext == ".xls":
        raise SupplierFileError(
            name, "legacy Excel 97-2003 workbook (.xls) is not supported; open it in Excel and "
            "save it as .xlsx (Excel Workbook) or CSV UTF-8, then send it again"
        )
    if ext in CSV_EXTENSIONS:
        kind = "csv"
    elif ext in XLSX_EXTENSIONS:
        kind = "xlsx"
    else:
        shown = f"'{ext}'" if ext else "without an extension"
        raise SupplierFileError(
            name, f"unsupported file type {shown}; send a CSV (.csv, .tsv, .txt) or an Excel "
            "workbook (.xlsx, .xlsm)"
        )
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise SupplierFileError(name, f"file not found at {path}") from None
    except OSError as exc:
        raise SupplierFileError(name, f"cannot be opened ({exc.strerror}); check the path and permissions") from None
    if path.is_dir():
        raise SupplierFileError(name, "is a folder, not a file")
    if size == 0:
        raise SupplierFileError(name, "the file is empty (0 bytes); export it again and resend it")
    if size > max_bytes:
        raise SupplierFileError(
            name, f"the file is {_human_size(size)} ({size:,} bytes), over the limit of "
            f"{_human_size(max_bytes)} (max_bytes={max_bytes:,}); split it into smaller files or raise the limit"
        )
    return kind


def _human_size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


# --------------------------------------------------------------------------------------------
# CSV: planning (encoding, delimiter, header, one scan of the bytes)


@dataclass
class _CsvPlan:
    path: Path
    file: str
    encoding: str  # Python codec name, reported in RawBatch.encoding
    delimiter: str
    columns: list[str]  # unique, cleaned header names
    header_line: int
    header_end_line: int  # last physical line of the header (a quoted header cell may span lines)
    has_quotes: bool
    bare_cr: bool  # old-Mac line endings: only the stdlib reader splits those
    blank_lines: list[tuple[int, bytes]]  # (line number, content) of empty/whitespace-only lines

    @property
    def wide(self) -> bool:
        return self.encoding.startswith(("utf-16", "utf-32"))

    @property
    def arrow_ok(self) -> bool:
        return not self.wide and not self.bare_cr

    @property
    def arrow_encoding(self) -> str:
        # pyarrow strips a UTF-8 BOM itself; anything but UTF-8 is transcoded through Python codecs.
        return "utf8" if self.encoding in ("utf-8", "utf-8-sig") else self.encoding


_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_BLANK_LINE = re.compile(rb"\n([ \t\r]*)(?=\n)")
_LEADING_BLANK = re.compile(rb"([ \t\r]*)\n")
_BARE_CR = re.compile(rb"\r(?!\n)")
_SEP_HINT = re.compile(r"sep=(.)")


def _plan_csv(path: Path, encoding: str | None, delimiter: str | None) -> _CsvPlan:
    name = path.name
    with open(path, "rb") as fh:
        head = fh.read(SAMPLE_BYTES)
    bom_encoding = next((enc for bom, enc in _BOMS if head.startswith(bom)), None)
    if encoding is not None:
        try:
            encoding = codecs.lookup(encoding).name
        except LookupError:
            raise SupplierFileError(
                name, f"unknown encoding {encoding!r}; use e.g. 'utf-8' or 'cp1252'"
            ) from None
    if (encoding or bom_encoding or "").startswith(("utf-16", "utf-32")):
        scan = _ByteScan(valid_utf8=False)  # NUL bytes and CR are normal in UTF-16/32
    else:
        _refuse_binary(name, head)
        scan = _scan_bytes(path, name, check_utf8=encoding is None)
    if encoding is None:
        encoding = bom_encoding or ("utf-8" if scan.valid_utf8 else _detect_encoding(name, head, scan.sample))
    text = _decode_sample(head, encoding, whole=len(head) < SAMPLE_BYTES)
    if "\x00" in text:
        raise SupplierFileError(
            name, "is not a text file (it contains NUL characters); send it as CSV text or .xlsx"
        )
    lines = _split_lines(text)
    # Excel's "sep=;" first line names the delimiter; it is not the header
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is not None:
        hint = _SEP_HINT.fullmatch(lines[first].strip().lstrip("\ufeff"))
        if hint:
            delimiter = delimiter or hint.group(1)
            lines[first] = "\n"
    if delimiter is None:
        delimiter = _detect_delimiter(lines)
    elif len(delimiter) != 1:
        raise SupplierFileError(name, f"delimiter must be one character, got {delimiter!r}")
    header, header_line, header_end = _first_record(lines, delimiter)
    if header is None:
        raise SupplierFileError(name, "the file has no header and no data (only blank lines); export it again")
    if len(header) == 1:
        other = next((d for d in CSV_DELIMITERS if d != delimiter and d in header[0]), None)
        if other is not None:
            raise SupplierFileError(
                name, f"the header {header[0][:80]!r} is a single column but looks separated by "
                f"{_delim_name(other)}; check the delimiter (pass delimiter={other!r}) or export the file "
                "again with one delimiter throughout",
                header_line,
            )
    columns = _unique_names([h.strip() for h in header])
    return _CsvPlan(
        path=path, file=name, encoding=encoding, delimiter=delimiter, columns=columns,
        header_line=header_line, header_end_line=header_end, has_quotes=scan.has_quotes,
        bare_cr=scan.bare_cr, blank_lines=scan.blank_lines,
    )


def _refuse_binary(name: str, head: bytes) -> None:
    if head.startswith(_ZIP_MAGIC):
        raise SupplierFileError(
            name, "is not a text file: it is a zip archive (probably an Excel workbook saved with a CSV "
            "name); rename it to .xlsx or export it as CSV"
        )
    if head.startswith(_OLE2_MAGIC):
        raise SupplierFileError(
            name, "is not a text file: it is an Excel 97-2003 or password-protected workbook; export it as CSV"
        )
    if b"\x00" in head:
        raise SupplierFileError(
            name, "is not a text file (it contains binary data: NUL bytes); send the data as CSV text or .xlsx"
        )


@dataclass
class _ByteScan:
    valid_utf8: bool
    has_quotes: bool = True
    bare_cr: bool = True
    blank_lines: list[tuple[int, bytes]] | None = None
    sample: bytes = b""  # lines around the first byte that is not UTF-8, for encoding detection

    def __post_init__(self):
        if self.blank_lines is None:
            self.blank_lines = []


def _scan_bytes(path: Path, name: str, *, check_utf8: bool) -> _ByteScan:
    """One pass over the bytes (block by block): NUL bytes, UTF-8 validity, quotes, CR-only line
    ends, and the positions of blank lines, which pyarrow skips without saying where."""
    scan = _ByteScan(valid_utf8=check_utf8, has_quotes=False, bare_cr=False)
    decoder = codecs.getincrementaldecoder("utf-8")()
    newlines = 0  # newlines before the current block
    carry = b""
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(SCAN_BLOCK_BYTES)
            data = carry + chunk
            if chunk:
                cut = data.rfind(b"\n") + 1
                if cut == 0:
                    carry = data
                    continue
                block, carry = data[:cut], data[cut:]
            else:
                block, carry = data, b""
            if not block:
                break
            nul = block.find(b"\x00")
            if nul >= 0:
                line = newlines + block.count(b"\n", 0, nul) + 1
                raise SupplierFileError(
                    name, "is not a text file (it contains NUL bytes); send the data as CSV text or .xlsx", line
                )
            if scan.valid_utf8 and not block.isascii():
                try:
                    decoder.decode(block, final=not chunk)
                except UnicodeDecodeError as exc:
                    scan.valid_utf8 = False
                    lo = block.rfind(b"\n", 0, max(exc.start - SAMPLE_BYTES // 2, 0)) + 1
                    hi = block.find(b"\n", exc.start + SAMPLE_BYTES // 2)
                    scan.sample = block[lo : hi if hi >= 0 else len(block)]
            if not scan.has_quotes and b'"' in block:
                scan.has_quotes = True
            if not scan.bare_cr and b"\r" in block and _BARE_CR.search(block):
                scan.bare_cr = True
            m = _LEADING_BLANK.match(block)  # blocks start at a line start: the regex below needs a \n before
            if m:
                scan.blank_lines.append((newlines + 1, m.group(1).rstrip(b"\r")))
            pos, count = 0, newlines
            for m in _BLANK_LINE.finditer(block):
                count += block.count(b"\n", pos, m.start() + 1)
                pos = m.start() + 1
                scan.blank_lines.append((count + 1, m.group(1).rstrip(b"\r")))
            newlines += block.count(b"\n")
            if not chunk:
                break
    return scan


def _detect_encoding(name: str, head: bytes, sample: bytes) -> str:
    """Encoding of a file that is not UTF-8, judged on the lines where UTF-8 failed."""
    from charset_normalizer import from_bytes
    from charset_normalizer.md import mess_ratio

    data = sample or head
    best = from_bytes(data).best()
    # Windows-1252 is what Excel writes for "CSV" on Western systems. On short samples
    # charset-normalizer often ranks a look-alike first (cp1250, mac_roman, ...), so cp1252 wins
    # whenever it decodes the bytes and reads about as cleanly as the best guess.
    try:
        cp1252_mess = mess_ratio(data.decode("cp1252"), 1.0)
    except UnicodeDecodeError:
        cp1252_mess = None
    if cp1252_mess is not None and (best is None or cp1252_mess <= best.chaos + 0.2):
        return "cp1252"
    if best is None:
        raise SupplierFileError(
            name, "is not a text file (its bytes are not text in any known encoding); send it as CSV UTF-8 or .xlsx"
        )
    return codecs.lookup(best.encoding).name


def _decode_sample(head: bytes, encoding: str, *, whole: bool) -> str:
    if not whole:
        # cut at the last line end so no multi-byte character is split
        if encoding.startswith("utf-16"):
            cut = max(head.rfind(b"\n\x00"), head.rfind(b"\x00\n"))
        elif encoding.startswith("utf-32"):
            cut = -1
        else:
            cut = head.rfind(b"\n")
        if cut > 0:
            head = head[: cut + 1]
    return head.decode(encoding, errors="replace")


_LINE_SPLIT = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")


def _split_lines(text: str) -> list[str]:
    return _LINE_SPLIT.findall(text)


def _detect_delimiter(lines: list[str]) -> str:
    """csv.Sniffer on the first lines, kept only if the rows agree with it; else the delimiter that
    splits the header into the most columns with the most rows agreeing."""
    sample = lines[:50]
    try:
        sniffed = csv.Sniffer().sniff("".join(sample), delimiters="".join(CSV_DELIMITERS)).delimiter
    except csv.Error:
        sniffed = None
    scores = {d: _delimiter_score(sample, d) for d in CSV_DELIMITERS}
    if sniffed in scores and scores[sniffed][1] >= 2 and scores[sniffed][0] >= 0.9:
        return sniffed
    best = max(CSV_DELIMITERS, key=lambda d: (scores[d][1] >= 2, scores[d][0], scores[d][1]))
    if scores[best][1] >= 2 and scores[best][0] >= 0.5:
        return best
    return ","


def _delimiter_score(lines: list[str], delimiter: str) -> tuple[float, int]:
    """(share of data rows with as many cells as the header, header cell count)."""
    rows = []
    try:
        for row in csv.reader(lines, delimiter=delimiter):
            if row and any(cell.strip() for cell in row):
                rows.append(len(row))
    except csv.Error:
        pass
    if not rows:
        return 0.0, 0
    header, data = rows[0], rows[1:]
    if not data:
        return 1.0, header
    return sum(n == header for n in data) / len(data), header


def _first_record(lines: list[str], delimiter: str) -> tuple[list[str] | None, int, int]:
    """First non-blank record: its cells, first and last physical line."""
    reader = csv.reader(lines, delimiter=delimiter)
    previous = 0
    try:
        for row in reader:
            if row and any(cell.strip() for cell in row):
                return row, previous + 1, reader.line_num
            previous = reader.line_num
    except csv.Error:
        pass
    return None, 0, 0


def _delim_name(delimiter: str) -> str:
    return {"\t": "tabs", ",": "','", ";": "';'", "|": "'|'"}.get(delimiter, repr(delimiter))


def _column_letter(index: int) -> str:
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = string.ascii_uppercase[rem] + letters
    return letters


def _unique_names(names: list[str], positions: list[int] | None = None) -> list[str]:
    """Header names made unique: empty -> column_<letter of its position>, repeats -> "name (2)", ..."""
    seen = {LINE_COLUMN}
    out = []
    for i, raw in enumerate(names):
        base = raw or f"column_{_column_letter(positions[i] if positions else i)}"
        name, k = base, 1
        while name in seen:
            k += 1
            name = f"{base} ({k})"
        seen.add(name)
        out.append(name)
    return out


# --------------------------------------------------------------------------------------------
# CSV: reading (pyarrow first, the csv module when pyarrow cannot parse the file)


class _ArrowCannotParse(Exception):
    """pyarrow refused the file (ragged row, bad bytes, huge cell): the csv module takes over."""


def _read_csv_whole(plan: _CsvPlan) -> pd.DataFrame:
    frame = None
    if plan.arrow_ok:
        try:
            frame = next(_arrow_frames(plan, whole=True))
        except _ArrowCannotParse:
            frame = None
    if frame is None:
        frame = next(_stdlib_frames(plan, rows_per_frame=None, skip_records=0))
    frame = frame.drop(columns="__record__")
    if frame.empty:
        raise _no_rows(plan)
    return frame


def _iter_csv(plan: _CsvPlan, chunk_rows: int) -> Iterator[pd.DataFrame]:
    done = 0  # records (blank ones included) already handed out, so a fallback can resume after them
    yielded = False
    if plan.arrow_ok:
        buffer = _Rechunker(chunk_rows)
        try:
            for frame in _arrow_frames(plan, whole=False):
                for chunk in buffer.add(frame):
                    done = int(chunk["__record__"].iloc[-1]) + 1
                    yielded = True
                    yield chunk.drop(columns="__record__")
            for chunk in buffer.flush():
                yielded = True
                yield chunk.drop(columns="__record__")
            if not yielded:
                raise _no_rows(plan)
            return
        except _ArrowCannotParse:
            pass
    buffer = _Rechunker(chunk_rows)
    for frame in _stdlib_frames(plan, rows_per_frame=chunk_rows, skip_records=done):
        for chunk in buffer.add(frame):
            yielded = True
            yield chunk.drop(columns="__record__")
    for chunk in buffer.flush():
        yielded = True
        yield chunk.drop(columns="__record__")
    if not yielded:
        raise _no_rows(plan)


def _no_rows(plan: _CsvPlan) -> SupplierFileError:
    return SupplierFileError(
        plan.file, f"the file has a header (line {plan.header_line}) but no data rows; check that the "
        "export included the rows"
    )


class _Rechunker:
    """Regroups frames into chunks of exactly ``size`` rows (the last one smaller)."""

    def __init__(self, size: int):
        self.size = size
        self.parts: list[pd.DataFrame] = []
        self.rows = 0

    def add(self, frame: pd.DataFrame) -> Iterator[pd.DataFrame]:
        if frame.empty:
            return
        self.parts.append(frame)
        self.rows += len(frame)
        while self.rows >= self.size:
            whole = pd.concat(self.parts, ignore_index=True) if len(self.parts) > 1 else self.parts[0]
            yield whole.iloc[: self.size].reset_index(drop=True)
            rest = whole.iloc[self.size :]
            self.parts = [rest] if len(rest) else []
            self.rows = len(rest)

    def flush(self) -> Iterator[pd.DataFrame]:
        if self.rows:
            whole = pd.concat(self.parts, ignore_index=True) if len(self.parts) > 1 else self.parts[0]
            self.parts, self.rows = [], 0
            yield whole.reset_index(drop=True)


class _LineNumbers:
    """Physical start line of each record pyarrow returns.

    pyarrow gives no line numbers. Records follow one another; each spans 1 + (newlines inside its
    quoted cells) physical lines; blank lines that pyarrow skips between records shift the rest.
    Blank lines *inside* a quoted cell belong to that record and shift nothing.
    """

    def __init__(self, first_line: int, skipped: np.ndarray):
        self.next_line = first_line
        self.skipped = skipped
        self.pos = 0

    def assign(self, extra: np.ndarray) -> np.ndarray:
        n = len(extra)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        offsets = np.arange(n, dtype=np.int64)
        offsets[1:] += np.cumsum(extra[:-1])
        starts = self.next_line + offsets
        ends = starts + extra
        if self.pos < len(self.skipped):
            shift = np.zeros(n, dtype=np.int64)
            total, lo = 0, 0
            while self.pos < len(self.skipped):
                line = int(self.skipped[self.pos])
                j = bisect.bisect_left(ends, line - total, lo)
                if j == n:
                    break  # after this batch's last record: the next batch decides
                if starts[j] + total >= line:  # a gap before record j, not a line inside it
                    shift[j] += 1
                    total += 1
                self.pos += 1
                lo = j
            cumulative = np.cumsum(shift)
            starts += cumulative
            ends += cumulative
        self.next_line = int(ends[-1]) + 1
        return starts


def _skipped_lines(plan: _CsvPlan) -> np.ndarray:
    """Blank lines after the header that pyarrow skips: empty ones, and whitespace-only ones with
    a wrong cell count (our invalid-row handler skips those; with the right count they are rows)."""
    ncols = len(plan.columns)
    delim = plan.delimiter.encode("utf-8" if plan.encoding.startswith("utf-8") else plan.encoding)
    lines = [
        line for line, content in plan.blank_lines
        if line > plan.header_end_line and (not content or content.count(delim) + 1 != ncols)
    ]
    return np.asarray(lines, dtype=np.int64)


def _skip_whitespace_rows(row: Any) -> str:
    return "skip" if not row.text.strip() else "error"


def _arrow_frames(plan: _CsvPlan, *, whole: bool) -> Iterator[pd.DataFrame]:
    names = [f"c{i}" for i in range(len(plan.columns))]
    read_options = pa_csv.ReadOptions(
        column_names=names, skip_rows=plan.header_end_line, encoding=plan.arrow_encoding,
        block_size=ARROW_BLOCK_BYTES, use_threads=whole,
    )
    parse_options = pa_csv.ParseOptions(
        delimiter=plan.delimiter, quote_char='"', double_quote=True, escape_char=False,
        newlines_in_values=plan.has_quotes, ignore_empty_lines=True, invalid_row_handler=_skip_whitespace_rows,
    )
    convert_options = pa_csv.ConvertOptions(
        # large_string is what pandas' pyarrow-backed str dtype holds: no copy when converting
        column_types={n: pa.large_string() for n in names}, null_values=[""], strings_can_be_null=True,
        quoted_strings_can_be_null=True,
    )
    lines = _LineNumbers(plan.header_end_line + 1, _skipped_lines(plan))
    record = 0
    try:
        if whole:
            table = pa_csv.read_csv(plan.path, read_options, parse_options, convert_options)
            batches: Iterable[pa.RecordBatch | pa.Table] = [table]
        else:
            batches = pa_csv.open_csv(plan.path, read_options, parse_options, convert_options)
        for batch in batches:
            n = batch.num_rows
            if plan.has_quotes:
                extra = np.zeros(n, dtype=np.int64)
                for column in batch.columns:
                    extra += pc.count_substring(column, "\n").fill_null(0).to_numpy().astype(np.int64)
            else:
                extra = np.zeros(n, dtype=np.int64)
            starts = lines.assign(extra)
            ordinals = np.arange(record, record + n, dtype=np.int64)
            record += n
            keep = _non_blank_mask(batch)
            if keep is not None:
                batch = batch.filter(keep)
                starts = starts[keep.to_numpy(zero_copy_only=False)]
                ordinals = ordinals[keep.to_numpy(zero_copy_only=False)]
            frame = batch.to_pandas(types_mapper={pa.large_string(): CELL_DTYPE}.get)
            frame.columns = plan.columns
            frame[LINE_COLUMN] = starts
            frame["__record__"] = ordinals
            yield frame
    except (pa.ArrowException, UnicodeError, ValueError) as exc:
        raise _ArrowCannotParse(str(exc)) from exc


def _non_blank_mask(batch: pa.RecordBatch | pa.Table) -> pa.Array | None:
    """True for rows with at least one non-blank cell; None when every row has one."""

    def blank(column) -> np.ndarray:
        cells = pc.or_kleene(pc.is_null(column), pc.utf8_is_space(column)).fill_null(True)
        return cells.to_numpy(zero_copy_only=False) if not isinstance(cells, pa.ChunkedArray) else np.concatenate(
            [c.to_numpy(zero_copy_only=False) for c in cells.chunks] or [np.zeros(0, dtype=bool)]
        )

    columns = batch.columns
    if not columns or batch.num_rows == 0:
        return None
    # only rows whose first cell is blank can be blank: check the other columns on those alone
    candidates = np.flatnonzero(blank(columns[0]))
    for column in columns[1:]:
        if not len(candidates):
            break
        candidates = candidates[blank(column.take(pa.array(candidates)))]
    if not len(candidates):
        return None
    keep = np.ones(batch.num_rows, dtype=bool)
    keep[candidates] = False
    return pa.array(keep)


_CR_PIECES = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")


def _decoded_lines(plan: _CsvPlan) -> Iterator[str]:
    """Physical lines (line ends kept) decoded one by one, so a bad byte is reported with its line."""
    if plan.wide:
        try:
            with open(plan.path, encoding=plan.encoding, newline="") as fh:
                yield from fh
        except UnicodeDecodeError:
            raise SupplierFileError(
                plan.file, f"is not valid {plan.encoding} text; save it as CSV UTF-8 and send it again"
            ) from None
        return
    line = 0
    encoding = plan.encoding
    with open(plan.path, "rb") as fh:
        for raw in fh:
            pieces = _CR_PIECES.findall(raw) if plan.bare_cr else (raw,)
            for piece in pieces:
                line += 1
                try:
                    yield piece.decode(encoding)
                except UnicodeDecodeError as exc:
                    bad = piece[exc.start : exc.start + 1].hex().upper()
                    raise SupplierFileError(
                        plan.file, f"byte 0x{bad} at character {exc.start + 1} is not valid {encoding} text "
                        "(the file mixes encodings); save it as CSV UTF-8 and send it again, or pass the "
                        "right encoding",
                        line,
                    ) from None
                if line == 1 and encoding == "utf-8-sig":
                    encoding = "utf-8"


def _stdlib_frames(plan: _CsvPlan, *, rows_per_frame: int | None, skip_records: int) -> Iterator[pd.DataFrame]:
    """The csv module's reader: slower, but exact line numbers, padding of short rows, and errors
    that name the line."""
    if csv.field_size_limit() < CSV_FIELD_LIMIT:
        csv.field_size_limit(CSV_FIELD_LIMIT)
    ncols = len(plan.columns)
    source = _decoded_lines(plan)
    reader = csv.reader(source, delimiter=plan.delimiter, quotechar='"', doublequote=True, strict=False)
    rows: list[list[str]] = []
    lines: list[int] = []
    ordinals: list[int] = []
    record = 0
    previous = 0
    checked_shape = False
    single_cell_rows = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise SupplierFileError(
                plan.file, f"cannot be parsed as CSV ({exc}); check for an unclosed quote (\") near this line",
                previous + 1,
            ) from None
        start, previous = previous + 1, reader.line_num
        if start <= plan.header_end_line:
            continue
        if not row or (len(row) != ncols and not any(cell.strip() for cell in row)):
            continue  # blank line
        number = record
        record += 1
        if number < skip_records:
            continue
        cells = len(row)
        if len(row) > ncols:
            extra = row[ncols:]
            if any(cell.strip() for cell in extra):
                shown = ", ".join(repr(c) for c in row)
                shown = shown if len(shown) <= 200 else shown[:200] + "..."
                raise SupplierFileError(
                    plan.file, f"the row has {len(row)} cells but the header (line {plan.header_line}) has "
                    f"{ncols} columns ({shown}); quote values that contain {_delim_name(plan.delimiter)} "
                    "or remove the extra cells, then send the file again",
                    start,
                )
            row = row[:ncols]
        elif len(row) < ncols:
            row = row + [""] * (ncols - len(row))
        if not any(cell.strip() for cell in row):
            continue  # all cells empty: no data
        single_cell_rows += cells == 1
        rows.append(row)
        lines.append(start)
        ordinals.append(number)
        if rows_per_frame is not None and len(rows) >= rows_per_frame:
            if not checked_shape:
                _check_single_cell_rows(plan, single_cell_rows, len(rows), rows)
                checked_shape = True
            yield _rows_frame(plan, rows, lines, ordinals)
            rows, lines, ordinals = [], [], []
    if not checked_shape:
        _check_single_cell_rows(plan, single_cell_rows, len(rows), rows)
    yield _rows_frame(plan, rows, lines, ordinals)


def _check_single_cell_rows(plan: _CsvPlan, single: int, total: int, rows: list[list[str]]) -> None:
    """A header with several columns over rows of one cell each means the rows use another delimiter."""
    if len(plan.columns) < 2 or total == 0 or single < total:
        return
    values = [r[0] for r in rows[:50]]
    guess = next((d for d in CSV_DELIMITERS if d != plan.delimiter and all(d in v for v in values)), None)
    hint = f"; they look separated by {_delim_name(guess)}" if guess else ""
    raise SupplierFileError(
        plan.file, f"the header has {len(plan.columns)} columns separated by {_delim_name(plan.delimiter)} "
        f"but every row has a single value{hint}; export the file again with one delimiter throughout",
        plan.header_line,
    )


def _rows_frame(plan: _CsvPlan, rows: list[list[str]], lines: list[int], ordinals: list[int]) -> pd.DataFrame:
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(plan.columns)
    data = {
        name: pd.array([v if v != "" else None for v in values], dtype=CELL_DTYPE)
        for name, values in zip(plan.columns, columns, strict=True)
    }
    frame = pd.DataFrame(data)
    frame[LINE_COLUMN] = np.asarray(lines, dtype=np.int64)
    frame["__record__"] = np.asarray(ordinals, dtype=np.int64)
    return frame


def _csv_batch(plan: _CsvPlan, frame: pd.DataFrame, identifier_columns: tuple[str, ...]) -> RawBatch:
    flags = _identifier_flags(frame, plan.columns, identifier_columns)
    return RawBatch(
        frame=frame, file=plan.file, encoding=plan.encoding, delimiter=plan.delimiter, sheet=None,
        header_line=plan.header_line, flags=flags,
    )


# --------------------------------------------------------------------------------------------
# identifier damage (flags)

_TOKENS = re.compile(r"[a-z]+|\d+")
_GTIN_WORDS = {"gtin", "ean", "upc", "upca", "jan", "itf", "barcode"}
_ID_WORDS = _GTIN_WORDS | {"mpn", "sku", "skus", "isbn"}
# "Part No.", "Item number", "Article code", "Product ID": codes, so damaged the same way
_CODE_NOUNS = {"part", "item", "article", "product", "model", "style"}
_CODE_SUFFIXES = {"no", "nr", "num", "number", "code", "id", "ref"}
_ANY_GTIN = frozenset({8, 12, 13, 14})
_SCIENTIFIC = r"[+-]?\d+(?:[.,]\d+)?[eE][+-]?\d+"


def _identifier_kind(header: str) -> tuple[bool, frozenset[int] | None]:
    """(is an identifier column, GTIN lengths expected in it or None when it holds no GTINs)."""
    tokens = _TOKENS.findall(header.lower())
    words = set(tokens)
    if "bar" in words and "code" in words:
        words.add("barcode")
    is_code = any(a in _CODE_NOUNS and b in _CODE_SUFFIXES for a, b in zip(tokens, tokens[1:], strict=False))
    if not words & _ID_WORDS and not is_code:
        return False, None
    for i, token in enumerate(tokens):
        number = int(tokens[i + 1]) if i + 1 < len(tokens) and tokens[i + 1].isdigit() else None
        if token in ("gtin", "itf") and number in _ANY_GTIN:
            return True, frozenset({number})
        if token == "ean":
            return True, frozenset({number}) if number in (8, 13) else frozenset({8, 13})
        if token in ("upc", "upca"):
            return True, frozenset({12})
        if token == "jan":
            return True, frozenset({8, 13})
    if words & _GTIN_WORDS:
        return True, _ANY_GTIN
    return True, None


def _identifier_columns(columns: list[str], identifier_columns: Iterable[str]) -> dict[str, frozenset[int] | None]:
    """Identifier columns among ``columns`` (by header, or named by the caller) -> GTIN lengths or None."""
    wanted = {name.strip().casefold() for name in identifier_columns}
    found = {}
    for column in columns:
        is_id, lengths = _identifier_kind(column)
        if is_id or column.casefold() in wanted:
            found[column] = lengths
    return found


_NUMBER_REASON = ("stored as a number in the workbook: leading zeros are lost and long codes rounded; "
                  "format the column as Text in Excel and send it again")
_RESEND = "format the column as Text in Excel and send it again"


def _identifier_flags(
    frame: pd.DataFrame,
    columns: list[str],
    identifier_columns: Iterable[str],
    stored_as_number: dict[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """Cells of identifier columns that look damaged by Excel; one row per cell, reasons joined."""
    parts: list[pd.DataFrame] = []

    def flag(column: str, index: pd.Index, reasons: list[str] | str) -> None:
        if len(index):
            parts.append(pd.DataFrame({
                "line": frame[LINE_COLUMN].to_numpy()[index], "column": column,
                "value": frame[column].to_numpy(dtype=object)[index], "reason": reasons,
                "order": columns.index(column),
            }))

    for column, lengths in _identifier_columns(columns, identifier_columns).items():
        series = frame[column].dropna()
        if stored_as_number and column in stored_as_number:
            flag(column, series.index[stored_as_number[column][series.index]], _NUMBER_REASON)
        text = series.str.strip()
        sci = text[text.str.fullmatch(_SCIENTIFIC)]
        flag(column, sci.index, [
            "scientific notation: Excel turned the code into a number and kept only "
            f"{len(re.sub(r'[^0-9]', '', v.lower().split('e')[0]).lstrip('0')) or 1} significant digits; {_RESEND}"
            for v in sci
        ])
        if lengths is None:
            continue
        digits = text[text.str.fullmatch(r"\d+")]
        if digits.empty:
            continue
        size = digits.str.len().astype(np.int64)
        expected = lengths
        if lengths == _ANY_GTIN and (size == 14).mean() >= 0.5:
            expected = frozenset({14})  # a GTIN-14 column: a 13-digit value lost its leading zero
        short = size[(~size.isin(list(expected))) & (size < max(expected))]
        flag(column, short.index, [
            f"{n} digit{'s' if n > 1 else ''} where {min(e for e in expected if e > n)} expected: leading zeros "
            f"were probably dropped by Excel; {_RESEND}"
            for n in short
        ])
    if not parts:
        return pd.DataFrame({"line": pd.Series(dtype=np.int64), "column": pd.Series(dtype=object),
                             "value": pd.Series(dtype=object), "reason": pd.Series(dtype=object)})
    flags = pd.concat(parts, ignore_index=True)
    several = flags.duplicated(["line", "order"], keep=False)
    if several.any():  # one row per cell: join the reasons (few cells, so the slow groupby is fine)
        joined = (flags[several].groupby(["line", "order"], sort=False)
                  .agg(column=("column", "first"), value=("value", "first"), reason=("reason", "; ".join))
                  .reset_index())
        flags = pd.concat([flags[~several], joined], ignore_index=True)
    flags = flags.sort_values(["line", "order"], kind="stable", ignore_index=True)
    flags["line"] = flags["line"].astype(np.int64)
    return flags[FLAG_COLUMNS]


# --------------------------------------------------------------------------------------------
# XLSX


def _read_xlsx(path: Path, sheet: str | int | None, identifier_columns: tuple[str, ...]) -> RawBatch:
    name = path.name
    _check_workbook_container(path, name)
    grid, merged, sheet_name = _load_sheet(path, name, sheet)
    header_row, names, data_start = _xlsx_header(grid, merged)
    if header_row is None:
        raise SupplierFileError(name, f"sheet {sheet_name!r} is empty; choose the sheet with the products")
    width = max(len(names), max((len(r) for r in grid[data_start:]), default=0))
    names = names + [""] * (width - len(names))
    rows, lines = [], []
    for index in range(data_start, len(grid)):
        row = grid[index]
        if row.count("") == len(row) or all(_is_empty(v) for v in row):
            continue  # blank row
        rows.append(row if len(row) == width else [*row, *[""] * (width - len(row))])
        lines.append(index + 1)
    if not lines:
        raise SupplierFileError(
            name, "the sheet has a header but no data rows; check that the export included the rows",
            header_row + 1, sheet=sheet_name,
        )
    columns_cells = list(zip(*rows, strict=True))
    keep = [i for i in range(width) if names[i].strip() or any(not _is_empty(v) for v in columns_cells[i])]
    columns = _unique_names([names[i].strip() for i in keep], keep)
    ids = _identifier_columns(columns, identifier_columns)
    arrays: list[pa.Array] = []
    numeric: dict[str, np.ndarray] = {}
    for i, column in zip(keep, columns, strict=True):
        cells = columns_cells[i]
        try:  # a column of text only is converted by pyarrow in one go
            array = pa.array(cells, type=pa.large_string())
            array = pc.if_else(pc.equal(array, ""), pa.scalar(None, pa.large_string()), array)
        except (pa.ArrowTypeError, pa.ArrowInvalid):
            array = pa.array([_TEXT_OF.get(v.__class__, _cell_text)(v) for v in cells], type=pa.large_string())
            if column in ids:
                numeric[column] = np.fromiter(
                    (v.__class__ in (int, float) for v in cells), dtype=bool, count=len(cells)
                )
        arrays.append(array)
    frame = pa.table(arrays, names=[f"c{i}" for i in range(len(arrays))]).to_pandas(
        types_mapper={pa.large_string(): CELL_DTYPE}.get
    )
    frame.columns = columns
    frame[LINE_COLUMN] = np.asarray(lines, dtype=np.int64)
    flags = _identifier_flags(frame, columns, identifier_columns, numeric)
    return RawBatch(
        frame=frame, file=name, encoding=None, delimiter=None, sheet=sheet_name, header_line=header_row + 1,
        flags=flags,
    )


def _check_workbook_container(path: Path, name: str) -> None:
    """Refuse what is not a plain .xlsx zip, and zip bombs, before any parser expands it."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        if head.startswith(_OLE2_MAGIC):
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
    if not head.startswith(_ZIP_MAGIC):
        raise SupplierFileError(name, "is not an Excel .xlsx workbook (not a zip file); send .xlsx or CSV")
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError):
        raise SupplierFileError(
            name, "the workbook is damaged (broken zip); open it in Excel and save it again"
        ) from None
    if len(infos) > XLSX_MAX_ENTRIES:
        raise SupplierFileError(name, f"refused: the workbook holds {len(infos):,} parts, which looks like a zip bomb")
    total = sum(info.file_size for info in infos)
    if total > XLSX_MAX_UNCOMPRESSED:
        raise SupplierFileError(
            name, f"refused: the workbook would expand to {_human_size(total)} (limit "
            f"{_human_size(XLSX_MAX_UNCOMPRESSED)}), which looks like a zip bomb; split the data or send CSV"
        )
    for info in infos:
        if info.file_size < XLSX_RATIO_MIN_BYTES:
            continue
        ratio = info.file_size / max(info.compress_size, 1)
        if ratio > XLSX_MAX_RATIO:
            raise SupplierFileError(
                name, f"refused: part {info.filename} expands {ratio:,.0f}:1 (limit {XLSX_MAX_RATIO}:1), "
                "which looks like a zip bomb; open it in Excel, save it again or send CSV"
            )


def _load_sheet(
    path: Path, name: str, sheet: str | int | None
) -> tuple[list[list[Any]], list[tuple[int, int, int, int]], str]:
    """Cells of one sheet from row 1 / column A ('' for empty) and its merged ranges
    (first row, first col, last row, last col; 0-based). python-calamine, openpyxl as fallback."""
    import python_calamine as calamine

    try:
        workbook = calamine.CalamineWorkbook.from_path(str(path))
    except calamine.PasswordError:
        raise SupplierFileError(
            name, "password-protected workbook; open it in Excel, remove the password and save it again"
        ) from None
    except Exception:  # calamine cannot read every producer's quirks; openpyxl reads more of them
        return _load_sheet_openpyxl(path, name, sheet)
    try:
        visible = {m.name: m.visible == calamine.SheetVisibleEnum.Visible for m in workbook.sheets_metadata}
        loaded: dict[str, Any] = {}

        def load(sheet_name: str):
            if sheet_name not in loaded:
                loaded[sheet_name] = workbook.get_sheet_by_name(sheet_name)
            return loaded[sheet_name]

        sheet_name = _choose_sheet(name, workbook.sheet_names, sheet, visible, lambda n: load(n).height > 0)
        data = load(sheet_name)
        grid = data.to_python(skip_empty_area=False)
        merged = [(r0, c0, r1, c1) for (r0, c0), (r1, c1) in (data.merged_cell_ranges or [])]
        return grid, merged, sheet_name
    except SupplierFileError:
        raise
    except Exception:
        return _load_sheet_openpyxl(path, name, sheet)
    finally:
        workbook.close()


def _load_sheet_openpyxl(
    path: Path, name: str, sheet: str | int | None
) -> tuple[list[list[Any]], list[tuple[int, int, int, int]], str]:
    import openpyxl

    # merged ranges need the full (not read-only) mode; that is slow and memory hungry, so big
    # workbooks are read in read-only mode without them.
    read_only = path.stat().st_size > 20 * 1024 * 1024
    try:
        workbook = openpyxl.load_workbook(path, read_only=read_only, data_only=True)
    except Exception as exc:
        raise SupplierFileError(
            name, f"the workbook cannot be read ({type(exc).__name__}: {exc}); open it in Excel and save it again"
        ) from None
    try:
        visible = {ws.title: ws.sheet_state == "visible" for ws in workbook.worksheets}
        sheet_name = _choose_sheet(
            name, workbook.sheetnames, sheet, visible, lambda n: (workbook[n].max_row or 0) > 0
        )
        ws = workbook[sheet_name]
        grid = []
        for row in ws.iter_rows(min_row=1, min_col=1, values_only=True):
            grid.append([_openpyxl_value(v) for v in row])
        merged = []
        if not read_only:
            merged = [(r.min_row - 1, r.min_col - 1, r.max_row - 1, r.max_col - 1) for r in ws.merged_cells.ranges]
        return grid, merged, sheet_name
    finally:
        workbook.close()


def _openpyxl_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, dt.datetime) and value.time() == dt.time(0) and value.tzinfo is None:
        return value.date()  # as python-calamine does
    return value


def _choose_sheet(
    name: str, sheet_names: list[str], sheet: str | int | None, visible: dict[str, bool], has_data
) -> str:
    listed = ", ".join(repr(s) for s in sheet_names)
    if sheet is None:
        for candidate in sheet_names:
            if visible.get(candidate, True) and has_data(candidate):
                return candidate
        raise SupplierFileError(name, f"the workbook has no sheet with data (sheets: {listed})")
    if isinstance(sheet, int) and not isinstance(sheet, bool):
        if 0 <= sheet < len(sheet_names):
            return sheet_names[sheet]
        raise SupplierFileError(
            name, f"there is no sheet number {sheet} (counting from 0); the workbook has {len(sheet_names)}: {listed}"
        )
    if sheet in sheet_names:
        return sheet
    folded = {s.strip().casefold(): s for s in sheet_names}
    if str(sheet).strip().casefold() in folded:
        return folded[str(sheet).strip().casefold()]
    raise SupplierFileError(name, f"there is no sheet named {sheet!r}; the sheets are: {listed}")


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _xlsx_header(
    grid: list[list[Any]], merged: list[tuple[int, int, int, int]]
) -> tuple[int | None, list[str], int]:
    """(header row index, column names, first data row index)."""
    scan = [i for i in range(min(len(grid), HEADER_SCAN_ROWS * 3)) if any(not _is_empty(v) for v in grid[i])]
    scan = scan[:HEADER_SCAN_ROWS]
    if not scan:
        return None, [], 0
    widest = max(sum(not _is_empty(v) for v in grid[i]) for i in scan)
    needed = max(min(2, widest), math.ceil(widest / 2))
    header = next((i for i in scan if sum(_is_text(v) for v in grid[i]) >= needed), scan[0])
    row = grid[header]
    names = [_cell_text(v) or "" for v in row]
    spans = sorted((c0, c1) for r0, c0, r1, c1 in merged if r0 == header and c1 > c0)
    data_start = header + 1
    if spans:
        below = grid[header + 1] if header + 1 < len(grid) else []
        span_cols = {c for c0, c1 in spans for c in range(c0, c1 + 1)}
        filled = {c for c, v in enumerate(below) if not _is_empty(v)}
        two_rows = (
            bool(filled) and filled <= span_cols
            and all(_is_text(below[c]) for c in span_cols if c < len(below))
            and all(c < len(below) for c in span_cols)
        )
        for c0, c1 in spans:
            text = names[c0].strip()
            if not text:
                continue
            for k, c in enumerate(range(c0, c1 + 1), start=1):
                if c >= len(names):
                    names.extend([""] * (c + 1 - len(names)))
                names[c] = f"{text} {str(below[c]).strip()}" if two_rows else f"{text} ({k})"
        if two_rows:
            data_start = header + 2
    return header, names, data_start


def _cell_text(value: Any) -> str | None:
    """A workbook cell as the text Excel shows (None for an empty cell)."""
    if value is None:
        return None
    kind = type(value)
    if kind is str:
        return value if value != "" else None
    if kind is bool:
        return "TRUE" if value else "FALSE"
    if kind is int:
        return str(value)
    if kind is float:
        return _number_text(value)
    if kind is dt.date:
        return value.isoformat()
    if kind is dt.datetime:
        return value.isoformat(timespec="seconds" if not value.microsecond else "microseconds")
    if kind is dt.time:
        return value.isoformat(timespec="seconds" if not value.microsecond else "microseconds")
    if kind is dt.timedelta:
        seconds = int(value.total_seconds())
        sign = "-" if seconds < 0 else ""
        hours, rest = divmod(abs(seconds), 3600)
        return f"{sign}{hours}:{rest // 60:02d}:{rest % 60:02d}"
    return str(value)


def _number_text(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    text = repr(value)
    if "e" not in text and len(text) <= 16:  # shortest round-trip form, at most 15 digits: as Excel shows it
        return text
    value = float(f"{value:.15g}")  # Excel keeps and shows 15 significant digits
    if value.is_integer():
        return str(int(value))
    return np.format_float_positional(value, trim="-")


def _text_of_str(value: str) -> str | None:
    return value if value != "" else None


_TEXT_OF = {str: _text_of_str, float: _number_text, int: str}
