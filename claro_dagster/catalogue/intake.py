"""The raw -> mapped -> validated core of an onboarding batch, without Dagster.

The pipeline's `batch_raw`, `batch_mapped` and `batch_validated` assets (assets/onboarding.py) and the Supplier
Portal's instant result (catalogue/portal.py) call these same functions, so what a supplier is shown on upload is
what the pipeline decides for the batch: one reader, one mapping, one validator.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.operations.mapping import ColumnMapping, apply_mapping, match_records
from claro_dagster.operations.read import RawBatch, read_supplier_file
from claro_dagster.operations.validate import Ownership, ValidationResult, validate_batch
from claro_dagster.spec.models import CatalogueSpec, SourceSpec


def user_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if not str(c).startswith("__")]


def identifier_columns(cat: CatalogueSpec) -> list[str]:
    """Columns whose cells must stay exactly as written (identifiers and their aliases): the reader flags damage."""
    return [n for n, a in cat.attributes.items() if a.identifier] + \
        [alias for a in cat.attributes.values() if a.identifier for alias in a.aliases]


def read_batch(path: str | Path, source: SourceSpec, cat: CatalogueSpec) -> RawBatch:
    """batch_raw: the file's rows as text with their line numbers; SupplierFileError when it cannot be read."""
    return read_supplier_file(path, sheet=source.sheet, encoding=source.encoding, delimiter=source.delimiter,
                              identifier_columns=identifier_columns(cat))


def known_references(store: CatalogueStore, catalogue: str) -> dict[str, set[str]]:
    """For each reference attribute, the keys its target catalogue holds now."""
    spec = store.spec
    return {name: set(store.records(attr.target, columns=[spec.catalogues[attr.target].key])
                      [spec.catalogues[attr.target].key])
            for name, attr in store.catalogue(catalogue).attributes.items()
            if attr.type == "reference" and attr.target}


def map_batch(raw: pd.DataFrame, mapping: ColumnMapping, store: CatalogueStore, catalogue: str, source_name: str,
              source: SourceSpec) -> pd.DataFrame:
    """batch_mapped: columns renamed to attributes (MappingError when a required one has no column), the rows of a
    source that speaks for one supplier (`supplier`) given that supplier where they name none, and every row
    matched to its record (by key, else by GTIN)."""
    cat = store.catalogue(catalogue)
    mapped = apply_mapping(raw, mapping, cat, source=source_name)
    own = source.supplier
    if own and source.supplier_attribute in cat.attributes:
        column = source.supplier_attribute
        if column not in mapped.columns:
            mapped[column] = own
        else:
            blank = mapped[column].isna() | mapped[column].astype("string").str.strip().eq("").fillna(True)
            if blank.any():
                mapped[column] = mapped[column].astype(object).where(~blank, own)
    gtin = next((n for n, a in cat.attributes.items() if a.format == "gtin"), None)
    existing = store.records(catalogue, columns=[gtin] if gtin else [cat.key])
    gtins = dict(zip(existing[gtin], existing[cat.key], strict=True)) if gtin else {}
    return match_records(mapped, cat, set(existing[cat.key]), {g: k for g, k in gtins.items() if g})


def ownership(store: CatalogueStore, catalogue: str, source: SourceSpec) -> Ownership | None:
    """What a source that speaks for one supplier may write (None for a source that does not)."""
    cat = store.catalogue(catalogue)
    if not source.supplier or source.supplier_attribute not in cat.attributes:
        return None
    stored = store.records(catalogue, columns=[cat.key, source.supplier_attribute])
    owners = {str(k): str(v) for k, v in zip(stored[cat.key], stored[source.supplier_attribute], strict=True)
              if v is not None and v == v and str(v).strip()}
    return Ownership(source.supplier_attribute, source.supplier, owners)


def validate_mapped(mapped: pd.DataFrame, store: CatalogueStore, catalogue: str,
                    source: SourceSpec | None) -> ValidationResult:
    """batch_validated: every attribute rule of the spec, references to other catalogues, and (for a source that
    speaks for one supplier) that every row is that supplier's."""
    return validate_batch(mapped, store.catalogue(catalogue), known_references=known_references(store, catalogue),
                          ownership=ownership(store, catalogue, source) if source is not None else None)


@dataclass(frozen=True)
class Verdict:
    rows_in: int
    rejected: int
    error_rate: float
    error_budget: float

    @property
    def passed(self) -> bool:
        return self.error_rate <= self.error_budget

    @property
    def text(self) -> str:
        return (f"{self.rejected} of {self.rows_in} rows failed validation ({self.error_rate:.1%}); "
                f"the error budget is {self.error_budget:.0%}")


def verdict(result: ValidationResult, rejected: int, error_budget: float) -> Verdict:
    """Whether the batch stays within its pipeline's error budget (`rejected`: the rows kept as rejected)."""
    return Verdict(result.rows_in, rejected, result.error_rate, error_budget)
