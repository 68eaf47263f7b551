"""What every reader shares: the error a supplier sees, the result type, file-level checks, names."""

from __future__ import annotations

import os
import string
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

#: dtype of every cell column: text backed by pyarrow, NaN for empty cells (pandas 3's ``str``).
CELL_DTYPE = pd.StringDtype("pyarrow", na_value=np.nan)
#: name of the column holding the source line (CSV) or sheet row (XLSX) of each row.
LINE_COLUMN = "__line__"
FLAG_COLUMNS = ["line", "column", "value", "reason"]

CSV_EXTENSIONS = frozenset({".csv", ".tsv", ".txt"})
XLSX_EXTENSIONS = frozenset({".xlsx", ".xlsm"})
CSV_DELIMITERS = (",", ";", "\t", "|")




def _default_memory() -> int:
    """Half the machine's memory, at most 8 GiB: a parse needing more is a hostile or broken file."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        physical = 16 * 1024**3
    return min(8 * 1024**3, physical // 2)


@dataclass(frozen=True)
class ReadLimits:
    """What a supplier file may cost to read. Far above any real product file; a file beyond them is
    refused with its reason (quarantined by ``batch_raw``) instead of taking the process down.

    ``memory_bytes`` and ``seconds`` bound the child process that parses the file (``seconds`` None:
    2 minutes plus 5 seconds per MB of file); the others are checked before any parser sees the file.
    """

    memory_bytes: int = field(default_factory=_default_memory)
    seconds: float | None = None
    # CSV
    max_line_bytes: int = 64 * 1024 * 1024
    max_columns: int = 16_384  # Excel's widest sheet (column XFD)
    # XLSX: a workbook may expand to at most ``workbook_bytes`` of XML, and no part over 1 MiB may be
    # compressed more than ``compression_ratio``:1; real sheets compress 5-30:1, zip bombs 1000:1 and more.
    workbook_bytes: int = 1024**3
    compression_ratio: int = 100
    workbook_parts: int = 10_000
    sheets: int = 1_000
    sheet_cells: int = 64 * 1_048_576  # rows x columns a sheet may span: every row of Excel, 64 columns wide
    shared_strings_bytes: int = 512 * 1024 * 1024
    xml_depth: int = 64  # real workbook XML nests under 10 levels

    def timeout(self, size: int) -> float:
        return self.seconds if self.seconds is not None else 120.0 + 5.0 * size / 1e6


ZIP_MAGIC = b"PK\x03\x04"
OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


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


# --------------------------------------------------------------------------------------------
# file-level checks


def check_file(path: Path, max_bytes: int) -> str:
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
            name, f"the file is {human_size(size)} ({size:,} bytes), over the limit of "
            f"{human_size(max_bytes)} (max_bytes={max_bytes:,}); split it into smaller files or raise the limit"
        )
    return kind


def human_size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


def delim_name(delimiter: str) -> str:
    return {"\t": "tabs", ",": "','", ";": "';'", "|": "'|'"}.get(delimiter, repr(delimiter))


def column_letter(index: int) -> str:
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = string.ascii_uppercase[rem] + letters
    return letters


def unique_names(names: list[str], positions: list[int] | None = None) -> list[str]:
    """Header names made unique: empty -> column_<letter of its position>, repeats -> "name (2)", ..."""
    seen = {LINE_COLUMN}
    out = []
    for i, raw in enumerate(names):
        base = raw or f"column_{column_letter(positions[i] if positions else i)}"
        name, k = base, 1
        while name in seen:
            k += 1
            name = f"{base} ({k})"
        seen.add(name)
        out.append(name)
    return out

