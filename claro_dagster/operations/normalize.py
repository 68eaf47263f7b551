"""Normalize: turn a batch's values into the catalogue's canonical, typed form, with a change log.

Whitespace and casing, enum synonyms, units (pint), locale number formats, ISO dates and HTML are
handled by the same rules validation uses (`values.AttributeRules`). A value that cannot be
normalized is left as it was: validation has already reported it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from claro_dagster.operations.values import AttributeRules, line_numbers, record_labels
from claro_dagster.spec.models import CatalogueSpec

__all__ = ["CHANGE_COLUMNS", "NormalizationResult", "normalize_batch"]

CHANGE_COLUMNS = ["line", "record", "attribute", "old", "new", "reason"]


@dataclass
class NormalizationResult:
    frame: pd.DataFrame    # numbers as float, dates ISO strings, enums canonical, text cleaned
    changes: pd.DataFrame  # line, record, attribute, old, new, reason: one row per value changed


def normalize_batch(frame: pd.DataFrame, catalogue: CatalogueSpec, *,
                    locale_hint: str | None = None) -> NormalizationResult:
    """Normalize every catalogue attribute present in `frame`; other columns pass through untouched.

    An attribute the batch has no column for gets none: an absent column is no information, and
    the store must not read it as "clear this value". Defaults are not filled here either: only the
    store knows which rows create a record, and a default applies to new records only.
    """
    rows = len(frame)
    out = frame.copy()
    lines = line_numbers(frame)

    outcomes = {}
    for name, attr in catalogue.attributes.items():
        if name not in frame.columns:
            continue
        rules = AttributeRules(name, attr, locale_hint=locale_hint)
        outcomes[name] = rules.evaluate_column(frame[name], rows)

    key = outcomes.get(catalogue.key)
    records = record_labels(frame, key.values if key is not None else None)

    parts: dict[str, list[np.ndarray]] = {"pos": [], "attribute": [], "old": [], "new": [], "reason": []}
    for name, outcome in outcomes.items():
        attr = catalogue.attributes[name]
        old = frame[name].to_numpy(dtype=object)
        failed = ~np.equal(outcome.problem, None)
        values = outcome.values
        if failed.any():
            values[failed] = old[failed]  # left as it was
        numeric = attr.type == "number" and not attr.identifier and attr.format != "gtin"
        if numeric and not failed.any():
            out[name] = pd.Series(values, index=frame.index, dtype=object).astype(float)
        else:
            out[name] = pd.Series(values, index=frame.index, dtype=object)
        changed = ~np.equal(outcome.change, None) & ~failed
        if changed.any():
            pos = np.flatnonzero(changed)
            parts["pos"].append(pos)
            parts["attribute"].append(np.full(pos.size, name, dtype=object))
            parts["old"].append(old[pos])
            parts["new"].append(values[pos])
            parts["reason"].append(outcome.change[pos])

    if parts["pos"]:
        pos = np.concatenate(parts["pos"])
        order = np.argsort(pos, kind="stable")  # by line, attributes in catalogue order within a line
        pos = pos[order]
        old = np.concatenate(parts["old"])[order]
        old[pd.isna(old)] = None
        changes = pd.DataFrame({
            "line": lines[pos], "record": records[pos],
            "attribute": np.concatenate(parts["attribute"])[order],
            "old": old, "new": np.concatenate(parts["new"])[order],
            "reason": np.concatenate(parts["reason"])[order],
        }, columns=CHANGE_COLUMNS)
    else:
        changes = pd.DataFrame(columns=CHANGE_COLUMNS)
    return NormalizationResult(frame=out, changes=changes)
