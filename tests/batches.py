"""Small builders for operation tests: a reader-shaped batch frame and a catalogue spec."""

import numpy as np
import pandas as pd

from claro_dagster.spec.models import AttributeSpec, CatalogueSpec


def batch(**columns: list) -> pd.DataFrame:
    """A reader-shaped frame: string cells, `__line__` from 2 (line 1 is the header)."""
    rows = len(next(iter(columns.values())))
    frame = pd.DataFrame({name: pd.Series(values, dtype=object) for name, values in columns.items()})
    frame.insert(0, "__line__", np.arange(2, rows + 2))
    return frame


def catalogue(**attributes: AttributeSpec) -> CatalogueSpec:
    """A catalogue keyed by a required `sku`, with the given attributes."""
    attrs = {"sku": AttributeSpec(type="text", required=True)}
    attrs.update(attributes)
    return CatalogueSpec(key="sku", attributes=attrs)
