"""XLSX supplier workbooks: container checks, python-calamine (openpyxl as fallback), header detection
and cell text as Excel shows it."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from claro_dagster.operations.read.common import (
    CELL_DTYPE,
    LINE_COLUMN,
    RawBatch,
    SupplierFileError,
    unique_names,
)
from claro_dagster.operations.read.identifiers import identifier_columns_of as find_identifier_columns
from claro_dagster.operations.read.identifiers import identifier_flags

HEADER_SCAN_ROWS = 30

# --------------------------------------------------------------------------------------------
# XLSX


def read_xlsx(path: Path, sheet: str | int | None, identifier_columns: tuple[str, ...]) -> RawBatch:
    name = path.name
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
    columns = unique_names([names[i].strip() for i in keep], keep)
    ids = find_identifier_columns(columns, identifier_columns)
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
    flags = identifier_flags(frame, columns, identifier_columns, numeric)
    return RawBatch(
        frame=frame, file=name, encoding=None, delimiter=None, sheet=sheet_name, header_line=header_row + 1,
        flags=flags,
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
