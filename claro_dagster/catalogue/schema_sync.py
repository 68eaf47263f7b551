"""The store's tables as they are in the database, kept in step with the spec when the store opens.

Adding an attribute (or a bookkeeping column a newer version needs) adds a nullable column: nothing
can be lost. A changed attribute type is not applied here: the catalogue keeps its stored type until
the change is confirmed (`migrations.apply_type_change`), so writes keep working meanwhile.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from claro_dagster.catalogue.changes import StoreError
from claro_dagster.catalogue.schema import build_metadata, column_type, prov_column, record_table
from claro_dagster.spec.models import AttributeSpec, CatalogueSpec, ProjectSpec

#: Advisory lock key (a fixed 64-bit number) held while the schema is created or brought up to date.
SCHEMA_LOCK = 0x636C61726F736368  # "clarosch"


class StoredSchema:
    """Tables (`t`: shared, `rec`: one per catalogue) and each catalogue as stored."""

    def __init__(self, spec: ProjectSpec, engine: Engine):
        self.spec = spec
        self.engine = engine
        self.metadata, self.t, self.rec = build_metadata(spec)
        self.effective: dict[str, CatalogueSpec] = {}
        with self._schema_lock():
            self.metadata.create_all(engine)
            self._sync()

    @contextlib.contextmanager
    def _schema_lock(self) -> Iterator[None]:
        """One process at a time creates or alters the tables: several processes opening a new database at once
        (a worker, the daemon, `claro serve`), or after an attribute was added, would otherwise race on
        CREATE TABLE / ADD COLUMN and all but one fail. On PostgreSQL a session advisory lock, released when the
        sync ends (or its connection dies); on an SQLite file an exclusive lock on `<file>.schema-lock` (SQLite
        has no advisory locks; the OS releases the file lock if the process dies)."""
        if self.engine.dialect.name == "sqlite":
            database = self.engine.url.database
            if not database or database == ":memory:":
                yield
                return
            import fcntl

            with open(f"{database}.schema-lock", "a+b") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
            return
        if self.engine.dialect.name != "postgresql":
            yield
            return
        with self.engine.connect() as conn:
            conn.execute(sa.select(sa.func.pg_advisory_lock(SCHEMA_LOCK)))
            conn.commit()
            try:
                yield
            finally:
                conn.execute(sa.select(sa.func.pg_advisory_unlock(SCHEMA_LOCK)))
                conn.commit()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def _add_column(self, conn, table: str, name: str, col_type: sa.types.TypeEngine) -> None:
        preparer = self.engine.dialect.identifier_preparer
        conn.execute(sa.text(f"ALTER TABLE {preparer.quote(table)} ADD COLUMN {preparer.quote(name)} "
                             f"{col_type.compile(dialect=self.engine.dialect)}"))

    def _sync(self) -> None:
        inspector = sa.inspect(self.engine)
        attrs = self.t["attributes"]
        with self.engine.begin() as conn:
            # Shared tables of a database made by an older version: add the columns it lacks (all nullable).
            for table in self.t.values():
                present = {c["name"] for c in inspector.get_columns(table.name)}
                for column in table.columns:
                    if column.name not in present:
                        self._add_column(conn, table.name, column.name, column.type)
            stored = {(r.catalogue, r.attribute): r.type for r in conn.execute(sa.select(attrs))}
            for name, cat in self.spec.catalogues.items():
                table = self.rec[name]
                present = {c["name"] for c in inspector.get_columns(table.name)}
                for attr_name, attr in cat.attributes.items():
                    for col_name, col_type in ((attr_name, column_type(attr)), (prov_column(attr_name), sa.Integer())):
                        if col_name not in present:
                            self._add_column(conn, table.name, col_name, col_type)
                    if (name, attr_name) not in stored:
                        conn.execute(attrs.insert().values(catalogue=name, attribute=attr_name, type=attr.type))
                        stored[(name, attr_name)] = attr.type
                effective = {a: (s if stored[(name, a)] == s.type else s.model_copy(update={"type": stored[(name, a)]}))
                             for a, s in cat.attributes.items()}
                self.effective[name] = cat.model_copy(update={"attributes": effective})
                if any(effective[a] is not cat.attributes[a] for a in effective):
                    # Bind the table to the stored types so writes keep working until the change is confirmed.
                    self.rec[name] = record_table(sa.MetaData(), name, self.effective[name])

    def catalogue(self, name: str) -> CatalogueSpec:
        """The catalogue as stored (attribute types whose change is not yet confirmed stay as they were)."""
        if name not in self.effective:
            raise StoreError(f"unknown catalogue {name!r}; catalogues are: {', '.join(self.spec.catalogues)}")
        return self.effective[name]

    def check_field(self, catalogue: str, field: str) -> AttributeSpec:
        cat = self.catalogue(catalogue)
        if field not in cat.attributes:
            close = difflib.get_close_matches(field, list(cat.attributes), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise StoreError(f"unknown field {field!r} in {catalogue}{hint}; fields are: {', '.join(cat.attributes)}")
        return cat.attributes[field]

    def pending_type_changes(self) -> list[tuple[str, str, str, str]]:
        """(catalogue, attribute, stored type, spec type) for every unconfirmed type change."""
        out = []
        for name, cat in self.spec.catalogues.items():
            for attr_name, attr in cat.attributes.items():
                stored = self.effective[name].attributes[attr_name].type
                if stored != attr.type:
                    out.append((name, attr_name, stored, attr.type))
        return out
