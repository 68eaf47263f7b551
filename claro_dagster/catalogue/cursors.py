"""Cursors of outbound connectors: how far each destination has read the catalogue (change-set seq)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import sqlalchemy as sa

from claro_dagster.catalogue.common import now
from claro_dagster.catalogue.reader import CatalogueReader


class Cursors:
    def __init__(self, reader: CatalogueReader):
        self.reader = reader
        self.engine = reader.engine
        self.t = reader.t

    def get(self, name: str, default: str | None = None) -> str | None:
        c = self.t["cursors"]
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(c.c.value).where(c.c.name == name)).scalar()
        return default if value is None else value

    def set(self, name: str, value: str) -> None:
        c = self.t["cursors"]
        with self.engine.begin() as conn:
            if conn.execute(c.update().where(c.c.name == name).values(value=value, updated_at=now())).rowcount == 0:
                conn.execute(c.insert().values(name=name, value=value, updated_at=now()))

    def last_seq(self, catalogue: str | None = None) -> int:
        """The newest committed change-set seq (of one catalogue). A destination moves its cursor to its own
        catalogue's: change sets of one catalogue commit in seq order (the writer's catalogue lock), but one of
        another catalogue may commit a higher seq while a lower one is still being written."""
        cs = self.t["change_sets"]
        query = sa.select(sa.func.coalesce(sa.func.max(cs.c.seq), 0))
        if catalogue is not None:
            query = query.where(cs.c.catalogue == catalogue)
        with self.engine.connect() as conn:
            return conn.execute(query).scalar_one()

    def changed_since(self, catalogue: str, seq: int, filter: str | None = None,
                      columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Records written after a change-set seq (an outbound destination's cursor), in no particular order:
        selected in SQL on the indexed seq column with the record filter compiled to SQL. Columns are Arrow-backed
        (`pd.ArrowDtype`), so a large sync never turns every value into a Python object."""
        return self.reader.changed(catalogue, seq, filter, columns).to_pandas(types_mapper=pd.ArrowDtype)
