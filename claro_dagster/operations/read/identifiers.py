"""Identifier cells that look damaged by Excel: flagged for the supplier, never silently "fixed"."""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import pandas as pd

from claro_dagster.operations.read.common import FLAG_COLUMNS, LINE_COLUMN

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


def identifier_columns_of(columns: list[str], identifier_columns: Iterable[str]) -> dict[str, frozenset[int] | None]:
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


def identifier_flags(
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

    for column, lengths in identifier_columns_of(columns, identifier_columns).items():
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

