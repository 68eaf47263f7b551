"""Schema changes between the spec and the stored catalogue.

Adding an attribute is applied when the store opens (a new, empty column: nothing can be lost).
Removing one from the spec keeps its column and values. Changing an attribute's type is shown
first (`claro schema-diff`), with every stored value that would not convert, and only applied when
the user confirms; values that cannot convert are kept in history (kind `schema`) before they are
cleared, so the change can be inspected and the values recovered.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa

from claro_dagster.catalogue.changes import ChangeSet, StoreError
from claro_dagster.catalogue.schema import column_type
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.spec.models import AttributeSpec


@dataclass
class TypeChange:
    catalogue: str
    attribute: str
    stored_type: str
    spec_type: str
    values: int = 0
    failures: list[tuple[str, Any, str]] = field(default_factory=list)  # (record, value, reason)

    @property
    def safe(self) -> bool:
        return not self.failures


@dataclass
class SchemaDiff:
    added: list[tuple[str, str]]  # present in the store already (added on open)
    removed: list[tuple[str, str]]  # in the store, no longer in the spec: kept
    type_changes: list[TypeChange]

    @property
    def empty(self) -> bool:
        return not (self.removed or self.type_changes)


def convert(value: Any, attribute: AttributeSpec) -> Any:
    """A stored value in the attribute's new type; ValueError says why it cannot be."""
    if value is None:
        return None
    kind = attribute.type
    if kind == "number":
        if isinstance(value, int | float):
            return float(value)
        number = float(str(value).strip())  # ValueError: "could not convert string to float"
        if math.isnan(number):
            raise ValueError("not a number")
        return number
    text = str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    if kind == "date":
        try:
            datetime.fromisoformat(text) if "T" in text or " " in text else date.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{text!r} is not an ISO-8601 date") from None
    if kind == "enum":
        allowed = {v.lower(): v for v in attribute.values or []}
        for canonical, synonyms in attribute.synonyms.items():
            allowed.update({s.lower(): canonical for s in synonyms})
        if text.strip().lower() not in allowed:
            raise ValueError(f"{text!r} is not one of {', '.join(attribute.values or [])}")
        return allowed[text.strip().lower()]
    return text


def schema_diff(store: CatalogueStore) -> SchemaDiff:
    attrs = store.t["attributes"]
    with store.engine.connect() as conn:
        stored = {(r.catalogue, r.attribute): r.type for r in conn.execute(sa.select(attrs))}
    catalogues = store.spec.catalogues
    removed = [(c, a) for (c, a) in stored if c in catalogues and a not in catalogues[c].attributes]
    changes = []
    for catalogue, stored_type_attr, stored_type, spec_type in store.pending_type_changes():
        change = TypeChange(catalogue, stored_type_attr, stored_type, spec_type)
        target = store.spec.catalogues[catalogue].attributes[stored_type_attr]
        frame = store.records(catalogue, columns=[stored_type_attr])
        key = store.spec.catalogues[catalogue].key
        for record, value in zip(frame[key], frame[stored_type_attr], strict=True):
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            change.values += 1
            try:
                convert(value, target)
            except ValueError as exc:
                change.failures.append((record, value, str(exc)))
        changes.append(change)
    return SchemaDiff(added=[], removed=removed, type_changes=changes)


def apply_type_change(store: CatalogueStore, catalogue: str, attribute: str, *, by: str) -> TypeChange:
    """Convert a column to the spec's type. Values that do not convert are cleared, with their old
    value kept in history. The caller must reopen the store afterwards (its tables are rebuilt)."""
    pending = {(c, a): (s, t) for c, a, s, t in store.pending_type_changes()}
    if (catalogue, attribute) not in pending:
        raise StoreError(f"{catalogue}.{attribute} has no pending type change; `claro schema-diff` lists them")
    cat = store.spec.catalogues[catalogue]
    if attribute == cat.key:
        raise StoreError(f"{catalogue}.{attribute} is the catalogue key; its type cannot be changed in place")
    target = cat.attributes[attribute]
    change = TypeChange(catalogue, attribute, *pending[(catalogue, attribute)])
    table = store.rec[catalogue]
    quote = store.engine.dialect.identifier_preparer.quote
    tmp = f"{attribute}__converting"
    cs = ChangeSet(f"schema:{catalogue}.{attribute}:{uuid.uuid4().hex[:8]}", catalogue, "schema-change", reviewer=by)
    with store.writer.transaction() as tx:
        opened = tx.open(cs)
        conn = tx.conn
        rows = conn.execute(sa.select(table.c._id, table.c[cat.key], table.c[attribute])).fetchall()
        updates, lost = [], []
        for rid, record, value in rows:
            if value is None:
                continue
            change.values += 1
            try:
                updates.append({"i": rid, "v": convert(value, target)})
            except ValueError as exc:
                change.failures.append((record, value, str(exc)))
                lost.append((record, f"type {change.stored_type} -> {change.spec_type}: {exc}"))
        # Values that cannot convert are cleared through the writer first (history keeps them), so the
        # conversion below only sees values it keeps.
        for record, reason in lost:
            opened.set_exact(record, attribute, None, None, kind="schema", reason=reason)
        opened.flush()
        conn.execute(sa.text(f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(tmp)} "
                             f"{column_type(target).compile(dialect=store.engine.dialect)}"))
        if updates:
            conn.execute(sa.text(f"UPDATE {quote(table.name)} SET {quote(tmp)} = :v WHERE _id = :i"), updates)
        conn.execute(sa.text(f"ALTER TABLE {quote(table.name)} DROP COLUMN {quote(attribute)}"))
        conn.execute(sa.text(f"ALTER TABLE {quote(table.name)} RENAME COLUMN {quote(tmp)} TO {quote(attribute)}"))
        attrs = store.t["attributes"]
        conn.execute(attrs.update().where(attrs.c.catalogue == catalogue, attrs.c.attribute == attribute)
                     .values(type=target.type))
        opened.touch_all()  # every value changed type: destinations read them again
        opened.result.applied, opened.result.rejected = len(updates), len(lost)
        opened.finish()
    # Content hashes depend on value types: recompute them with a store bound to the new column type.
    fresh = CatalogueStore(store.spec, store.url)
    fresh.rehash(catalogue)
    fresh.dispose()
    return change
