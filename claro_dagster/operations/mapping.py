"""Data Source Mapping: which supplier column holds which catalogue attribute, and which record a row is.

Suppliers name columns their own way ("Product Code", "EAN", "Net weight (g)"). A mapping is
proposed by string similarity (rapidfuzz) of normalised names against each attribute's name, its
`aliases` and a small built-in synonym list, then saved per source and column-set shape
(`catalogue.mappings.MappingBook`) so the user confirms it once and it is reused.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from rapidfuzz import fuzz

from claro_dagster.operations.values import AttributeRules, resolve_unit
from claro_dagster.spec.models import AttributeSpec, CatalogueSpec

__all__ = [
    "MATCH_THRESHOLD",
    "ColumnMapping",
    "MappingError",
    "apply_mapping",
    "header_unit",
    "match_records",
    "column_shape_name",
    "normalise_name",
    "propose_mapping",
    "score_column",
    "shape_of",
]

MATCH_THRESHOLD = 70.0
_SYNONYM_WEIGHT = 0.95  # a built-in synonym scores a little below the attribute's own name and aliases

# Names that mean the same attribute across suppliers (normalised). An attribute whose name or
# alias is in a group is also matched against the rest of the group.
_SYNONYM_GROUPS: tuple[frozenset[str], ...] = tuple(frozenset(g) for g in (
    {"gtin", "ean", "ean 13", "ean13", "ean 8", "barcode", "bar code", "barcode number", "upc", "upc a",
     "upc code", "gtin 13", "gtin 14", "gtin 12", "ean code", "ean number", "gtin number"},
    {"sku", "product code", "item no", "item number", "item code", "article number", "article no",
     "art no", "part number", "part no", "product id", "product ref", "stock code", "supplier sku",
     "sku code", "product sku"},
    {"title", "name", "product name", "product title", "item name", "item title"},
    {"description", "long description", "product description", "details", "body", "body html",
     "full description"},
    {"price", "unit price", "retail price", "rrp", "selling price", "sale price", "list price"},
    {"weight", "net weight", "item weight", "product weight", "weight net"},
    {"colour", "color", "colour name", "color name", "shade"},
    {"brand", "brand name", "manufacturer", "make", "vendor"},
    {"category", "product category", "department", "product type"},
    {"image", "image url", "image link", "picture", "photo", "main image", "image 1", "primary image"},
    {"stock", "quantity", "qty", "stock level", "inventory", "stock qty", "quantity available"},
    {"material", "fabric", "materials"},
    {"size", "sizes"},
    {"url", "product url", "link", "product link", "web link"},
))

_BRACKETS = re.compile(r"\([^)]*\)|\[[^\]]*\]|\{[^}]*\}")
_UNIT_IN_BRACKETS = re.compile(r"[(\[]\s*([^()\[\]]+?)\s*[)\]]")


class MappingError(ValueError):
    """A batch cannot be mapped onto the catalogue; the message says what to do next."""

    def __init__(self, message: str, *, missing: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.missing = list(missing)


@dataclass
class ColumnMapping:
    source_columns: tuple[str, ...]
    attribute_for: dict[str, str | None]  # source column -> attribute, None = ignored
    scores: dict[str, float]              # source column -> similarity (0-100) of its best attribute
    shape: str                            # `shape_of(source_columns)`
    status: str = field(default="draft")  # draft | confirmed (as saved in a MappingBook)

    def column_for(self) -> dict[str, str]:
        """attribute -> source column, for the mapped columns."""
        return {attr: col for col, attr in self.attribute_for.items() if attr is not None}


def normalise_name(name: object) -> str:
    """'Net weight (g)' -> 'net weight'; 'Item No.' -> 'item no'; 'EAN_13' -> 'ean 13'."""
    text = unicodedata.normalize("NFKC", str(name)).casefold()
    text = _BRACKETS.sub(" ", text)
    text = re.sub(r"[\W_]+", " ", text)
    return " ".join(text.split())


def column_shape_name(name: object) -> str:
    # Lighter than normalise_name: "Weight (g)" and "Weight (kg)" are different shapes (their values
    # mean different things), but "Product  code" and "product code" are the same.
    return " ".join(unicodedata.normalize("NFKC", str(name)).casefold().split())


def shape_of(columns: Sequence[str]) -> str:
    """Stable 16-hex hash of the sorted, case- and space-normalised column names (`__*` excluded)."""
    names = sorted({column_shape_name(c) for c in columns if not str(c).startswith("__")})
    return hashlib.sha256("\n".join(names).encode("utf-8")).hexdigest()[:16]


def _candidates(name: str, attr: AttributeSpec) -> list[tuple[str, float]]:
    own = {normalise_name(name), normalise_name(name.replace("_", " "))}
    own |= {normalise_name(a) for a in attr.aliases}
    own.discard("")
    found = {n: 1.0 for n in own}
    for group in _SYNONYM_GROUPS:
        if group & own:
            for synonym in group:
                found.setdefault(synonym, _SYNONYM_WEIGHT)
    return list(found.items())


def _similarity(column: str, candidate: str) -> float:
    if not column or not candidate:
        return 0.0
    score = max(fuzz.ratio(column, candidate), fuzz.token_sort_ratio(column, candidate))
    # "net weight" contains "weight": strong, and stronger the more of the column it explains
    if set(candidate.split()) <= set(column.split()):
        score = max(score, 60.0 + 40.0 * len(candidate) / len(column))
    return float(score)


def score_column(column: str, name: str, attr: AttributeSpec) -> float:
    """Similarity (0-100) of a source column to an attribute, its aliases and known synonyms."""
    normalised = normalise_name(column)
    return max((_similarity(normalised, cand) * weight for cand, weight in _candidates(name, attr)),
               default=0.0)


def propose_mapping(columns: Sequence[str], catalogue: CatalogueSpec, *,
                    threshold: float = MATCH_THRESHOLD) -> ColumnMapping:
    """Best one-to-one assignment of source columns to attributes with similarity >= `threshold`.

    Greedy on the global best score (scipy's Hungarian solver is not installed, and for a few dozen
    columns greedy gives the assignment a person would pick); ties go to the earlier column.
    """
    columns = [c for c in columns if not str(c).startswith("__")]
    names = list(catalogue.attributes)
    pairs = []
    best: dict[str, float] = {}
    for ci, column in enumerate(columns):
        for ai, name in enumerate(names):
            score = round(score_column(column, name, catalogue.attributes[name]), 1)
            best[column] = max(best.get(column, 0.0), score)
            if score >= threshold:
                pairs.append((-score, ci, ai))
    pairs.sort()
    attribute_for: dict[str, str | None] = {c: None for c in columns}
    scores = dict(best)
    taken: set[str] = set()
    for neg, ci, ai in pairs:
        column, name = columns[ci], names[ai]
        if attribute_for[column] is None and name not in taken:
            attribute_for[column] = name
            scores[column] = -neg
            taken.add(name)
    return ColumnMapping(tuple(columns), attribute_for, scores, shape_of(columns))


def header_unit(column: str, unit: str) -> str | None:
    """The unit a header declares ("Net weight (g)" -> "g") when it differs from `unit` but converts to it."""
    for found in reversed(_UNIT_IN_BRACKETS.findall(str(column))):
        try:
            declared, wanted = resolve_unit(found), resolve_unit(unit)
        except ValueError:
            continue
        if declared == wanted:
            return None  # bare numbers are already in the attribute's unit
        if declared.dimensionality == wanted.dimensionality:
            return found
    return None


def _missing_message(name: str, attr: AttributeSpec, columns: Sequence[str], source: str | None) -> str:
    ranked = sorted(((score_column(c, name, attr), i, c) for i, c in enumerate(columns)),
                    key=lambda t: (-t[0], t[1]))
    closest = ", ".join(f"{c!r} ({score:.0f})" for score, _, c in ranked[:3] if score > 0) or "none"
    return (f"batch has no column for required attribute {name!r}; closest columns: {closest}. "
            f"Map it with `claro mapping edit {source or '<source>'}`.")


def apply_mapping(frame: pd.DataFrame, mapping: ColumnMapping, catalogue: CatalogueSpec, *,
                  source: str | None = None) -> pd.DataFrame:
    """Columns renamed to attribute names (mapped ones only), plus `__line__` and other `__*` columns.

    A header that declares a unit ("Net weight (g)") for an attribute with a unit makes bare numbers
    in that column carry it ("500" -> "500 g"), so normalization converts them rather than reading
    500 as kilograms. Raises MappingError naming every required attribute (without a default)
    that no column maps to, with the closest columns.
    """
    unknown = {a for a in mapping.attribute_for.values() if a is not None and a not in catalogue.attributes}
    if unknown:
        raise MappingError(
            f"mapping uses attributes the catalogue does not have: {', '.join(sorted(unknown))}; "
            f"attributes are: {', '.join(catalogue.attributes)}. "
            f"Fix it with `claro mapping edit {source or '<source>'}`."
        )
    chosen = {col: attr for col, attr in mapping.attribute_for.items() if attr is not None and col in frame}
    mapped = set(chosen.values())
    columns = [str(c) for c in frame.columns if not str(c).startswith("__")]
    missing = [name for name, attr in catalogue.attributes.items()
               if attr.required and attr.default is None and name not in mapped]
    if missing:
        raise MappingError("\n".join(_missing_message(n, catalogue.attributes[n], columns, source)
                                     for n in missing), missing=missing)

    out = frame[[c for c in frame.columns if str(c).startswith("__")]].copy()
    order = {name: i for i, name in enumerate(catalogue.attributes)}
    for col, name in sorted(chosen.items(), key=lambda kv: order[kv[1]]):
        values = frame[col]
        attr = catalogue.attributes[name]
        with_unit = attr.type == "number" and attr.unit and not attr.identifier
        unit = header_unit(col, attr.unit) if with_unit else None
        if unit is not None:
            text = values.astype("string")
            bare = text.str.fullmatch(r"\s*[-+]?[\d.,\s]*\d\s*").fillna(False).to_numpy(dtype=bool)
            if bare.any():
                values = values.astype(object).copy()
                values[bare] = (text[bare].str.strip() + f" {unit}").astype(object)
        out[name] = values
    return out


def match_records(frame: pd.DataFrame, catalogue: CatalogueSpec, existing_keys: set[str],
                  existing_gtins: dict[str, str]) -> pd.DataFrame:
    """Add `__record__` (the key the row writes to, or NaN) and `__match__` ("key", "gtin" or "new").

    By key first (cleaned as normalization will clean it); where the key is blank, by a GTIN
    attribute (`format: gtin`), comparing GTINs zero-padded to 14 digits so GTIN-13 finds GTIN-14.
    """
    out = frame.copy()
    rows = len(frame)
    keys = np.full(rows, None, dtype=object)
    if catalogue.key in frame.columns:
        rules = AttributeRules(catalogue.key, catalogue.attributes[catalogue.key])
        outcome = rules.evaluate_column(frame[catalogue.key], rows)
        keys = np.where(outcome.blank, None, outcome.values)
    key_series = pd.Series(keys, index=frame.index, dtype=object)
    has_key = key_series.notna()
    record = key_series.copy()
    match = pd.Series(np.where(has_key & key_series.isin(existing_keys), "key", "new"),
                      index=frame.index, dtype=object)

    gtin_attrs = [n for n, a in catalogue.attributes.items() if a.format == "gtin" and n in frame.columns]
    if gtin_attrs and existing_gtins and (~has_key).any():
        padded = {str(g).strip().zfill(14): k for g, k in existing_gtins.items()}
        for name in gtin_attrs:
            todo = ~has_key & record.isna()
            if not todo.any():
                break
            gtins = frame.loc[todo, name].astype("string").str.strip().str.zfill(14)
            found = gtins.map(padded)
            hit = found.notna()
            record.loc[found[hit].index] = found[hit].astype(object)
            match.loc[found[hit].index] = "gtin"
    out["__record__"] = record.where(record.notna(), np.nan)
    out["__match__"] = match
    return out
