"""Normalize: turn a batch's values into the catalogue's canonical, typed form, with a change log.

Whitespace and casing, enum synonyms, units (pint), locale number formats, ISO dates and HTML are
handled by the same rules validation uses (`values.AttributeRules`). A value that cannot be
normalized is left as it was: validation has already reported it.

A batch that comes from validation (`ValidationResult.carried()`, as `batch_validated` stores it) already holds
each attribute's normalized values; they are used as they are, so no rule is evaluated twice.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from claro_dagster.operations.values import (
    CHANGE,
    NORMALIZED,
    REASONS,
    REJECTED,
    AttributeRules,
    ColumnOutcome,
    cells,
    column_of,
    evaluate_columns,
    labels_at,
    line_numbers,
    objects,
    record_keys,
)
from claro_dagster.spec.models import CatalogueSpec

__all__ = ["CHANGE_COLUMNS", "NormalizationResult", "normalize_batch"]

CHANGE_COLUMNS = ["line", "record", "attribute", "old", "new", "reason"]


@dataclass
class NormalizationResult:
    frame: pd.DataFrame    # numbers as float, dates ISO strings, enums canonical, text cleaned
    changes: pd.DataFrame  # line, record, attribute, old, new, reason: one row per value changed


def carried_outcomes(frame: pd.DataFrame, catalogue: CatalogueSpec) -> dict[str, ColumnOutcome] | None:
    """The outcomes a validated batch carries (`ValidationResult.carried`), for its rows that passed; None
    when it carries none for an attribute column it has (then the rules are evaluated here)."""
    names = [n for n in catalogue.attributes if n in frame.columns]
    if REJECTED not in frame.columns or not all(NORMALIZED + n in frame.columns and CHANGE + n in frame.columns
                                                for n in names):
        return None
    outcomes = {}
    fine = np.full(len(frame), None, dtype=object)  # read only: no problem on any row (rejected ones are left out)
    none_failed = np.zeros(len(frame), dtype=bool)
    for name in names:
        normalized = pa.array(frame[NORMALIZED + name], from_pandas=True)
        if isinstance(normalized, pa.ChunkedArray):
            normalized = normalized.combine_chunks()
        if pa.types.is_large_string(normalized.type) or pa.types.is_null(normalized.type):
            normalized = normalized.cast(pa.string())
        reasons = pa.array(frame[CHANGE + name], type=pa.string(), from_pandas=True)
        if isinstance(reasons, pa.ChunkedArray):
            reasons = reasons.combine_chunks()
        changed = pc.is_valid(reasons).to_numpy(zero_copy_only=False)
        blank = ~pc.is_valid(normalized).to_numpy(zero_copy_only=False)
        outcomes[name] = ColumnOutcome(None, fine, blank, normalized=normalized, failed=none_failed,
                                       changed=changed, reasons=reasons)
    return outcomes


def normalize_batch(frame: pd.DataFrame, catalogue: CatalogueSpec, *, locale_hint: str | None = None,
                    outcomes: Mapping[str, ColumnOutcome] | None = None) -> NormalizationResult:
    """Normalize every catalogue attribute present in `frame`; other columns pass through untouched.

    An attribute the batch has no column for gets none: an absent column is no information, and
    the store must not read it as "clear this value". Defaults are not filled here either: only the
    store knows which rows create a record, and a default applies to new records only.

    `outcomes`: each attribute's `ColumnOutcome` for these rows, when validation evaluated them already. A
    validated batch (`ValidationResult.carried()`) is normalized from what it carries, its rejected rows left
    out; any other frame is evaluated here.
    """
    rows = None  # bool per row of `frame`: the rows to normalize (None: all)
    if REJECTED in frame.columns:
        rows = ~frame[REJECTED].astype(bool).to_numpy()
        kept = [c for c in frame.columns if c not in (REJECTED, REASONS) and not c.startswith((NORMALIZED, CHANGE))]
        if outcomes is None:
            outcomes = carried_outcomes(frame, catalogue)
        if outcomes is None:  # stored before validation carried its outcomes: evaluate here
            frame, rows = frame.loc[rows, kept], None
        else:  # the attribute columns are rebuilt from the outcomes: only the others are copied
            source = frame
            frame = frame.loc[rows, [c for c in kept if c not in outcomes]]
    if rows is None:
        source = frame
    if outcomes is None:
        outcomes = evaluate_columns(frame, [AttributeRules(name, attr, locale_hint=locale_hint)
                                            for name, attr in catalogue.attributes.items() if name in frame.columns])
    outcomes = {name: outcomes[name] for name in catalogue.attributes if name in outcomes and name in source.columns}
    lines = line_numbers(source)  # positions below are rows of `source`

    def kept_rows(arr: pa.Array) -> pa.Array:
        return arr if rows is None else arr.filter(pa.array(rows))

    keys = record_keys(source, outcomes.get(catalogue.key))

    def one(name: str) -> tuple[pd.Series, tuple | None]:
        """The attribute's output column, and (positions, old, new, reasons) of the values it changed."""
        outcome, attr = outcomes[name], catalogue.attributes[name]
        failed = outcome.failed if rows is None else outcome.failed & rows
        numeric = attr.type == "number" and not attr.identifier and attr.format != "gtin"
        arrow_text = isinstance(source[name].dtype, pd.StringDtype)
        normalized = outcome.normalized
        if not failed.any() and (pa.types.is_floating(normalized.type) if numeric else arrow_text):
            # typed, without a Python object per row: floats, or text cells as batch_raw reads them
            column = column_of(kept_rows(normalized), frame.index)
        else:
            values = outcome.values.copy()
            if failed.any():
                values[failed] = cells(source[name], np.flatnonzero(failed))  # left as it was
            if rows is not None:
                values = values[rows]
            if numeric and not failed.any():
                column = pd.Series(values, index=frame.index, dtype=object).astype(float)
            else:
                column = pd.Series(values, index=frame.index, dtype=object)
        changed = outcome.changed & ~failed
        if rows is not None:
            changed &= rows
        if not changed.any():
            return column, None
        pos = np.flatnonzero(changed)
        return column, (pos, cells(source[name], pos), objects(normalized.take(pa.array(pos))),
                        outcome.change_at(pos))

    # Columns are independent and Arrow's filter and take release the GIL: one thread per core.
    names = list(outcomes)
    if len(source) >= 10_000 and len(names) > 1:
        with ThreadPoolExecutor(max_workers=min(len(names), os.cpu_count() or 1)) as pool:
            done = list(pool.map(one, names))
    else:
        done = [one(name) for name in names]
    columns = {name: column for name, (column, _) in zip(names, done, strict=True)}
    parts: dict[str, list[np.ndarray]] = {"pos": [], "attribute": [], "old": [], "new": [], "reason": []}
    for name, (_, part) in zip(names, done, strict=True):
        if part is not None:
            pos, old, new, reason = part
            parts["pos"].append(pos)
            parts["attribute"].append(np.full(pos.size, name, dtype=object))
            parts["old"].append(old)
            parts["new"].append(new)
            parts["reason"].append(reason)
    order = [c for c in source.columns if c in frame.columns or c in columns]
    out = pd.DataFrame({c: columns[c] if c in columns else frame[c] for c in order}, index=frame.index,
                       columns=order, copy=False)

    if parts["pos"]:
        pos = np.concatenate(parts["pos"])
        order = np.argsort(pos, kind="stable")  # by line, attributes in catalogue order within a line
        pos = pos[order]
        old = np.concatenate(parts["old"])[order]
        old[pd.isna(old)] = None
        changes = pd.DataFrame({
            "line": lines[pos], "record": labels_at(keys, pos),
            "attribute": np.concatenate(parts["attribute"])[order],
            "old": old, "new": np.concatenate(parts["new"])[order],
            "reason": np.concatenate(parts["reason"])[order],
        }, columns=CHANGE_COLUMNS)
    else:
        changes = pd.DataFrame(columns=CHANGE_COLUMNS)
    return NormalizationResult(frame=out, changes=changes)
