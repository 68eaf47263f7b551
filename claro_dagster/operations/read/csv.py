"""CSV supplier files: encoding, delimiter and header detection, then pyarrow (the csv module when
pyarrow cannot parse the file), with the physical line of every record."""

from __future__ import annotations

import bisect
import codecs
import csv
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from claro_dagster.operations.read.common import (
    CELL_DTYPE,
    CSV_DELIMITERS,
    LINE_COLUMN,
    OLE2_MAGIC,
    ZIP_MAGIC,
    RawBatch,
    ReadLimits,
    SupplierFileError,
    delim_name,
    human_size,
    unique_names,
)
from claro_dagster.operations.read.identifiers import identifier_flags

SAMPLE_BYTES = 64 * 1024
SCAN_BLOCK_BYTES = 16 * 1024 * 1024
ARROW_BLOCK_BYTES = 4 * 1024 * 1024
CSV_FIELD_LIMIT = 64 * 1024 * 1024

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


def read_csv(path: Path, encoding: str | None, delimiter: str | None, identifier_columns: tuple[str, ...],
             limits: ReadLimits) -> RawBatch:
    plan = _plan_csv(path, encoding, delimiter, limits)
    return _csv_batch(plan, _read_csv_whole(plan), identifier_columns)


def iter_csv(path: Path, chunk_rows: int, encoding: str | None, delimiter: str | None,
             identifier_columns: tuple[str, ...], limits: ReadLimits) -> Iterator[RawBatch]:
    plan = _plan_csv(path, encoding, delimiter, limits)
    for frame in _iter_csv(plan, chunk_rows):
        yield _csv_batch(plan, frame, identifier_columns)


def prescan_csv(path: Path, name: str, limits: ReadLimits) -> None:
    """The header line must end within ``max_line_bytes`` and hold at most ``max_columns`` cells; checked on
    the raw bytes, before the delimiter sniffer (whose regular expressions are slow on huge lines) sees it."""
    head, _ = _header_bytes(path, name, limits)
    line = head.split(b"\n", 1)[0]
    if b"\x00" in line[:2] or line.startswith(codecs.BOM_UTF16_LE) or line.startswith(codecs.BOM_UTF16_BE):
        return  # UTF-16/32 text: its bytes are not counted here; the reader checks the decoded header
    cells = max(line.count(d.encode()) for d in CSV_DELIMITERS) + 1
    if cells > limits.max_columns:
        delimiter = max(CSV_DELIMITERS, key=lambda d: line.count(d.encode()))
        raise SupplierFileError(
            name, f"refused: the header has {cells:,} columns separated by {delim_name(delimiter)}, more than the "
            f"{limits.max_columns:,} a spreadsheet can hold; check that this is the product file and export it again",
            1,
        )


def _header_bytes(path: Path, name: str, limits: ReadLimits) -> tuple[bytes, bool]:
    """The first SAMPLE_BYTES of the file, extended to the end of its first line; (bytes, whole file)."""
    with open(path, "rb") as fh:
        head = fh.read(SAMPLE_BYTES)
        at_end = len(head) < SAMPLE_BYTES
        while not at_end and b"\n" not in head and b"\r" not in head:
            if len(head) >= limits.max_line_bytes:
                raise _line_too_long(name, 1, limits)
            more = fh.read(max(SAMPLE_BYTES, len(head)))
            at_end = not more
            head += more
    return head, at_end


def _line_too_long(name: str, line: int, limits: ReadLimits) -> SupplierFileError:
    return SupplierFileError(
        name, f"refused: the line is longer than {human_size(limits.max_line_bytes)} without a line end; a product "
        "file's lines are far shorter, so this is not a CSV export of a product list (or one cell holds a whole "
        "file); export the data again as CSV and send it",
        line,
    )


def _plan_csv(path: Path, encoding: str | None, delimiter: str | None, limits: ReadLimits | None = None) -> _CsvPlan:
    name = path.name
    limits = limits or ReadLimits()
    head, at_end = _header_bytes(path, name, limits)
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
        scan = _scan_bytes(path, name, check_utf8=encoding is None, max_line_bytes=limits.max_line_bytes)
    if encoding is None:
        encoding = bom_encoding or ("utf-8" if scan.valid_utf8 else _detect_encoding(name, head, scan.sample))
    text = _decode_sample(head, encoding, whole=at_end)
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
                f"{delim_name(other)}; check the delimiter (pass delimiter={other!r}) or export the file "
                "again with one delimiter throughout",
                header_line,
            )
    if len(header) > limits.max_columns:
        raise SupplierFileError(
            name, f"refused: the header has {len(header):,} columns, more than the {limits.max_columns:,} a "
            "spreadsheet can hold; check that this is the product file and export it again", header_line,
        )
    columns = unique_names([h.strip() for h in header])
    return _CsvPlan(
        path=path, file=name, encoding=encoding, delimiter=delimiter, columns=columns,
        header_line=header_line, header_end_line=header_end, has_quotes=scan.has_quotes,
        bare_cr=scan.bare_cr, blank_lines=scan.blank_lines,
    )


def _refuse_binary(name: str, head: bytes) -> None:
    if head.startswith(ZIP_MAGIC):
        raise SupplierFileError(
            name, "is not a text file: it is a zip archive (probably an Excel workbook saved with a CSV "
            "name); rename it to .xlsx or export it as CSV"
        )
    if head.startswith(OLE2_MAGIC):
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


def _scan_bytes(path: Path, name: str, *, check_utf8: bool, max_line_bytes: int) -> _ByteScan:
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
                    if len(data) > max_line_bytes:
                        raise _line_too_long(name, newlines + 1, ReadLimits(max_line_bytes=max_line_bytes))
                    carry = data
                    continue
                block, carry = data[:cut], data[cut:]
            else:
                block, carry = data, b""
            if not block:
                break
            if len(block) > max_line_bytes:  # the block may hold a line longer than allowed
                _check_line_lengths(block, name, newlines, max_line_bytes)
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


def _check_line_lengths(block: bytes, name: str, newlines: int, max_line_bytes: int) -> None:
    ends = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10)
    starts = np.concatenate(([0], ends[:-1] + 1))
    longest = int(np.argmax(ends - starts)) if len(ends) else 0
    if len(ends) and ends[longest] - starts[longest] > max_line_bytes:
        raise _line_too_long(name, newlines + longest + 1, ReadLimits(max_line_bytes=max_line_bytes))


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

    def rechunked(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        nonlocal done, yielded
        buffer = _Rechunker(chunk_rows)

        def chunks() -> Iterator[pd.DataFrame]:
            for frame in frames:
                yield from buffer.add(frame)
            yield from buffer.flush()

        for chunk in chunks():
            done = int(chunk["__record__"].iloc[-1]) + 1
            yielded = True
            yield chunk.drop(columns="__record__")

    if plan.arrow_ok:
        try:
            yield from rechunked(_arrow_frames(plan, whole=False))
            if not yielded:
                raise _no_rows(plan)
            return
        except _ArrowCannotParse:
            pass
    yield from rechunked(_stdlib_frames(plan, rows_per_frame=chunk_rows, skip_records=done))
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
                    f"{ncols} columns ({shown}); quote values that contain {delim_name(plan.delimiter)} "
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
    hint = f"; they look separated by {delim_name(guess)}" if guess else ""
    raise SupplierFileError(
        plan.file, f"the header has {len(plan.columns)} columns separated by {delim_name(plan.delimiter)} "
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
    flags = identifier_flags(frame, plan.columns, identifier_columns)
    return RawBatch(
        frame=frame, file=plan.file, encoding=plan.encoding, delimiter=plan.delimiter, sheet=None,
        header_line=plan.header_line, flags=flags,
    )

