"""Validate: row-level errors for a mapped batch, with the source line of every problem.

A value is valid when normalization can turn it into something that meets the attribute's rules
(`values.AttributeRules`): "2 lb" is a valid weight in kg, "Gray" a valid colour when it is a
synonym of "grey". Nothing is dropped: every row ends up in `valid` or in `rejected` with its reasons.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from claro_dagster.operations.values import (
    CHANGE,
    NORMALIZED,
    REASONS,
    REJECTED,
    AttributeRules,
    ColumnOutcome,
    cells,
    column_of,
    duplicated,
    evaluate_columns,
    labels_at,
    line_numbers,
    objects,
    record_keys,
    with_nulls,
)
from claro_dagster.spec.models import CatalogueSpec

__all__ = ["ERROR_COLUMNS", "Ownership", "ValidationResult", "validate_batch"]

ERROR_COLUMNS = ["line", "record", "attribute", "value", "reason"]


@dataclass(frozen=True)
class Ownership:
    """A source that speaks for one supplier (its spec's `supplier`): a row naming another supplier in `attribute`,
    or writing to a record whose stored `attribute` names another supplier, is rejected."""

    attribute: str              # the reference attribute naming a record's supplier (e.g. `supplier`)
    supplier: str               # the supplier this source speaks for
    owners: Mapping[str, str]   # record key -> the supplier its stored record names (records that name one)


@dataclass
class ValidationResult:
    errors: pd.DataFrame    # line, record, attribute, value, reason: one row per problem
    rejected: pd.DataFrame  # rows with at least one error, plus `__reasons__` ("attribute: reason; ...")
    rows_in: int
    frame: pd.DataFrame | None = None  # the input
    failed: np.ndarray | None = None   # bool per input row: it is in `rejected`
    outcomes: dict[str, ColumnOutcome] = field(default_factory=dict)  # per attribute column, aligned with the input

    @property
    def error_rate(self) -> float:
        """Share of input rows rejected (0.0 for an empty batch)."""
        return len(self.rejected) / self.rows_in if self.rows_in else 0.0

    @functools.cached_property
    def valid(self) -> pd.DataFrame:
        """Rows with no error, same columns as the input (built on first use: a million-row copy)."""
        return self.frame[~self.failed].copy()

    def carried(self) -> pd.DataFrame:
        """The input with the validation verdict and each attribute's normalized values, for a stage boundary.

        Adds `__rejected__` and `__reasons__`, and per attribute column `__normalized__:<attribute>` (null where
        blank or rejected) and `__change__:<attribute>` (why normalization changed it), so normalization reads
        the outcome (`normalize_batch`) instead of evaluating every rule a second time.
        """
        frame = self.frame.copy(deep=False)  # new columns only: the input's own stay shared
        frame[REJECTED] = self.failed
        reasons = np.full(len(frame), None, dtype=object)
        if len(self.rejected):
            reasons[self.failed] = self.rejected["__reasons__"].to_numpy(dtype=object)
        frame[REASONS] = reasons
        for name, outcome in self.outcomes.items():
            if name not in frame.columns:
                continue
            normalized = with_nulls(outcome.normalized, self.failed)
            frame[NORMALIZED + name] = column_of(normalized, frame.index)
            frame[CHANGE + name] = column_of(outcome.change_reasons(), frame.index)
        return frame


def _runs(items: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
    """Split `items` into runs of equal consecutive `labels` (faster than a Python groupby-agg)."""
    if len(items) == 0:
        return []
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
    return np.split(items, starts[1:])


_MAX_LINES_NAMED = 10


def _lines_phrase(lines: np.ndarray) -> str:
    """'lines 4 and 17', 'lines 4, 9 and 17', 'lines 1, 2, ... 10 and 5 more'."""
    lines = sorted(int(n) for n in lines)
    if len(lines) > _MAX_LINES_NAMED:
        return "lines " + ", ".join(map(str, lines[:_MAX_LINES_NAMED])) + f" and {len(lines) - _MAX_LINES_NAMED} more"
    return "lines " + ", ".join(str(n) for n in lines[:-1]) + f" and {lines[-1]}"


def _foreign_rows(catalogue: CatalogueSpec, outcomes: Mapping[str, ColumnOutcome], keys,
                  ownership: Ownership) -> list[tuple[np.ndarray, str, np.ndarray]]:
    """Rows naming another supplier, and rows for records another supplier owns (see `Ownership`)."""
    found = []
    own = ownership.supplier
    named = outcomes.get(ownership.attribute)
    if named is not None:
        candidates = np.flatnonzero(~named.blank & ~named.failed)
        if candidates.size:
            values = objects(named.normalized.take(pa.array(candidates)))
            other = pd.Series(values, dtype=object).ne(own).to_numpy()
            if other.any():
                found.append((candidates[other], ownership.attribute, np.asarray(
                    [f"names supplier {v!r}: this source sends the products of {own!r} only" for v in values[other]],
                    dtype=object)))
    if ownership.owners:
        positions = np.arange(len(keys))
        labels = pd.Series(labels_at(keys, positions), dtype=object)
        owner = labels.map(ownership.owners)
        foreign = (owner.notna() & owner.ne(own)).to_numpy()
        if foreign.any():
            found.append((positions[foreign], catalogue.key, np.asarray(
                [f"{catalogue.key} {k!r} is a product of supplier {o!r}, not of {own!r}: send your own products only"
                 for k, o in zip(labels[foreign], owner[foreign], strict=True)], dtype=object)))
    return found


def validate_batch(frame: pd.DataFrame, catalogue: CatalogueSpec, *,
                   known_references: Mapping[str, set[str]] | None = None,
                   locale_hint: str | None = None, ownership: Ownership | None = None) -> ValidationResult:
    """Check every attribute of every row; see the module docstring for what "valid" means.

    `known_references[attribute]` holds the keys a reference attribute may point to (not checked
    for attributes missing from it). `locale_hint` (e.g. "de_DE") settles "1,299" vs "1.299". `ownership`:
    rows of another supplier's products are errors (see `Ownership`).
    """
    rows = len(frame)
    lines = line_numbers(frame)
    outcomes = evaluate_columns(frame, [AttributeRules(name, attr, locale_hint=locale_hint)
                                        for name, attr in catalogue.attributes.items()])

    keys = record_keys(frame, outcomes.get(catalogue.key))

    found: list[tuple[np.ndarray, str, np.ndarray]] = []  # (row positions, attribute, reasons)
    for name, attr in catalogue.attributes.items():
        outcome = outcomes[name]
        # masks first, reasons only for the rows that have one (a blank value has no `problem`)
        missing = outcome.blank if attr.required and attr.default is None else np.zeros(rows, dtype=bool)
        flagged = outcome.failed | missing
        unknown_at, unknown_reasons = np.zeros(0, dtype=np.int64), []
        if known_references is not None and attr.type == "reference" and name in known_references:
            known = known_references[name]
            candidates = np.flatnonzero(~outcome.blank & ~outcome.failed)
            if candidates.size:
                values = objects(outcome.normalized.take(pa.array(candidates)))
                unknown = ~pd.Series(values, dtype=object).isin(known).to_numpy()
                if unknown.any():
                    target = f"catalogue {attr.target!r}" if attr.target else f"the known {name} values"
                    unknown_at = candidates[unknown]
                    unknown_reasons = [f"{v!r} is not a key in {target}" for v in values[unknown]]
                    flagged = flagged.copy()
                    flagged[unknown_at] = True
        bad = np.flatnonzero(flagged)
        if bad.size:
            reasons = outcome.problem_at(bad)
            reasons[missing[bad]] = "required value is missing"
            if unknown_at.size:
                reasons[np.searchsorted(bad, unknown_at)] = unknown_reasons
            found.append((bad, name, reasons))

    if ownership is not None:
        found += _foreign_rows(catalogue, outcomes, keys, ownership)

    # The key repeated within the batch: every line of it is an error, so neither silently wins.
    if isinstance(keys, pa.Array):
        dup = duplicated(keys)
    else:
        key_series = pd.Series(keys, dtype=object)
        dup = key_series.notna().to_numpy() & key_series.duplicated(keep=False).to_numpy()
    if dup.any():
        dup_pos = np.flatnonzero(dup)
        dup_keys = labels_at(keys, dup_pos)
        codes, uniques = pd.factorize(dup_keys)
        order = np.argsort(codes, kind="stable")
        phrases = [f"{catalogue.key} {uniques[codes[group[0]]]!r} appears on {_lines_phrase(lines[dup_pos[group]])}"
                   for group in _runs(order, codes[order])]
        found.append((dup_pos, catalogue.key, np.asarray(phrases, dtype=object)[codes]))

    if found:
        positions = np.concatenate([f[0] for f in found])
        attributes = np.concatenate([np.full(f[0].size, f[1], dtype=object) for f in found])
        reasons = np.concatenate([np.asarray(f[2], dtype=object) for f in found])
        raw = np.empty(positions.size, dtype=object)
        offset = 0
        for pos, name, _ in found:
            if name in frame.columns:
                raw[offset:offset + pos.size] = cells(frame[name], pos)
            offset += pos.size
        order = np.argsort(positions, kind="stable")  # by row, attributes in catalogue order
        positions, attributes, reasons, raw = positions[order], attributes[order], reasons[order], raw[order]
    else:
        positions = np.zeros(0, dtype=np.int64)
        attributes = reasons = raw = np.zeros(0, dtype=object)

    errors = pd.DataFrame({
        "line": lines[positions] if rows else np.zeros(0, dtype=np.int64),
        "record": labels_at(keys, positions),
        "attribute": attributes,
        "value": raw,
        "reason": reasons,
    }, columns=ERROR_COLUMNS)
    errors["value"] = errors["value"].where(errors["value"].notna(), None)

    failed = np.zeros(rows, dtype=bool)
    failed[positions] = True
    rejected = frame[failed].copy()
    if positions.size:
        # positions are sorted, so each row's problems are consecutive
        per_row: list[str] = []
        previous = -1
        for pos, attribute, reason in zip(positions.tolist(), attributes.tolist(), reasons.tolist(),
                                          strict=True):
            if pos == previous:
                per_row[-1] += f"; {attribute}: {reason}"
            else:
                per_row.append(f"{attribute}: {reason}")
                previous = pos
        rejected["__reasons__"] = per_row
    else:
        rejected["__reasons__"] = pd.Series(dtype=object)
    return ValidationResult(errors=errors.reset_index(drop=True), rejected=rejected, rows_in=rows, frame=frame,
                            failed=failed, outcomes=outcomes)
