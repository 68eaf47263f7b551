"""Tables of the catalogue store, derived from the spec, and the engine for each backend.

One SQLAlchemy Core code path serves SQLite (embedded default) and PostgreSQL. Each catalogue gets
one wide table (`rec_<catalogue>`): one typed column per attribute plus `<attribute>__prov`, the
provenance row of that value's last write. Shared tables hold change sets, provenance, per-field
history, review proposals and decisions, the event outbox, batches and destination cursors.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from claro_dagster.spec.models import AttributeSpec, CatalogueSpec, ProjectSpec

_IDENT = re.compile(r"[^a-z0-9_]+")

#: Column type per attribute type. Dates are ISO-8601 text so both backends round-trip them exactly.
COLUMN_TYPES: dict[str, type[sa.types.TypeEngine]] = {
    "text": sa.Text, "image": sa.Text, "enum": sa.Text, "reference": sa.Text, "date": sa.Text,
    "number": sa.Float,
}

PROV_SUFFIX = "__prov"


def record_table_name(catalogue: str) -> str:
    return "rec_" + _IDENT.sub("_", catalogue.lower())


def prov_column(attribute: str) -> str:
    return attribute + PROV_SUFFIX


def column_type(attribute: AttributeSpec) -> sa.types.TypeEngine:
    return COLUMN_TYPES[attribute.type]()


def filter_columns(catalogue: CatalogueSpec) -> dict[str, sa.ColumnElement]:
    """The catalogue's attributes as typed columns: enough to check a record filter (fields and literal
    types) before any query runs, e.g. a filter typed in Slack or written in a schedule."""
    return {name: sa.column(name, column_type(attr)) for name, attr in catalogue.attributes.items()}


def _ts(name: str, **kw) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), **kw)


def shared_tables(metadata: sa.MetaData) -> dict[str, sa.Table]:
    """The tables every project has, whatever its catalogues."""
    t = {}
    t["change_sets"] = sa.Table(
        "claro_change_sets", metadata,
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.Text, nullable=False, unique=True),
        sa.Column("catalogue", sa.Text, nullable=False),
        sa.Column("operation", sa.Text, nullable=False),
        sa.Column("run_id", sa.Text, index=True),
        sa.Column("source", sa.Text),
        sa.Column("model", sa.Text),
        sa.Column("reviewer", sa.Text),
        sa.Column("applied", sa.Integer, default=0),
        sa.Column("queued", sa.Integer, default=0),
        sa.Column("suggested", sa.Integer, default=0),
        sa.Column("rejected", sa.Integer, default=0),
        sa.Column("unchanged", sa.Integer, default=0),
        sa.Column("created", sa.Integer, default=0),
        _ts("at", nullable=False),
    )
    t["provenance"] = sa.Table(
        "claro_provenance", metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("change_set", sa.Text, nullable=False, index=True),
        sa.Column("operation", sa.Text, nullable=False),
        sa.Column("run_id", sa.Text),
        sa.Column("source", sa.Text),
        sa.Column("model", sa.Text),
        sa.Column("reviewer", sa.Text),
        sa.Column("confidence", sa.Float, nullable=False),
        _ts("at", nullable=False),
        sa.Column("citation", sa.Text),  # where the value was read (e.g. a scraped page's URL)
    )
    t["history"] = sa.Table(
        "claro_history", metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("catalogue", sa.Text, nullable=False),
        sa.Column("record", sa.Text, nullable=False),
        sa.Column("field", sa.Text, nullable=False),
        sa.Column("old", sa.Text),  # JSON
        sa.Column("new", sa.Text),  # JSON
        sa.Column("old_prov", sa.Integer),
        sa.Column("new_prov", sa.Integer),
        sa.Column("change_set", sa.Text, nullable=False, index=True),
        sa.Column("kind", sa.Text, nullable=False),  # update | review | rollback | schema
        sa.Column("reason", sa.Text),
        sa.Column("citation", sa.Text),
        _ts("at", nullable=False),
        # The review item a reviewer's decision applied (its row keeps the run and change set that proposed it).
        sa.Column("proposal", sa.Integer),
        sa.Index("ix_claro_history_record", "catalogue", "record", "field"),
    )
    t["proposals"] = sa.Table(
        "claro_proposals", metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("change_set", sa.Text, nullable=False, index=True),
        sa.Column("catalogue", sa.Text, nullable=False),
        sa.Column("record", sa.Text, nullable=False),
        sa.Column("field", sa.Text, nullable=False),
        sa.Column("old", sa.Text),
        sa.Column("new", sa.Text),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("citation", sa.Text),
        sa.Column("operation", sa.Text, nullable=False),
        sa.Column("source", sa.Text),
        sa.Column("run_id", sa.Text),
        sa.Column("model", sa.Text),
        sa.Column("reviewers", sa.Text),  # comma-separated people or groups who may decide
        # queued | suggested | snoozed | skipped | approved | edited | rejected | discarded (by the gate)
        sa.Column("status", sa.Text, nullable=False, index=True),
        sa.Column("gate_reason", sa.Text),
        _ts("snoozed_until"),
        sa.Column("decided_by", sa.Text),
        _ts("decided_at"),
        _ts("at", nullable=False),
    )
    t["decisions"] = sa.Table(
        "claro_decisions", metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("proposal", sa.Integer, nullable=False, index=True),
        sa.Column("decision", sa.Text, nullable=False),
        sa.Column("by", sa.Text, nullable=False),
        sa.Column("value", sa.Text),
        sa.Column("note", sa.Text),
        _ts("at", nullable=False),
    )
    t["events"] = sa.Table(
        "claro_events", metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("catalogue", sa.Text, nullable=False),
        sa.Column("record", sa.Text),
        sa.Column("field", sa.Text),
        sa.Column("change_set", sa.Text, nullable=False, index=True),
        sa.Column("proposal", sa.Integer),
        sa.Column("payload", sa.Text),  # JSON
        _ts("at", nullable=False),
    )
    t["attributes"] = sa.Table(
        "claro_attributes", metadata,
        sa.Column("catalogue", sa.Text, primary_key=True),
        sa.Column("attribute", sa.Text, primary_key=True),
        sa.Column("type", sa.Text, nullable=False),
    )
    t["batches"] = sa.Table(
        "claro_batches", metadata,
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("catalogue", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("filename", sa.Text, nullable=False),
        sa.Column("uri", sa.Text, nullable=False),
        sa.Column("content_version", sa.Text),
        # received | validated | halted | published | failed | quarantined
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("stage", sa.Text),
        sa.Column("message", sa.Text),
        sa.Column("spec_version", sa.Text),  # hash of the spec the batch was last validated under
        _ts("received_at", nullable=False),
        _ts("updated_at", nullable=False),
    )
    t["rejected_rows"] = sa.Table(
        "claro_rejected_rows", metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("batch", sa.Text, nullable=False, index=True),
        sa.Column("line", sa.Integer),
        sa.Column("record", sa.Text),
        sa.Column("reasons", sa.Text, nullable=False),
        sa.Column("row", sa.Text),  # JSON of the row as received
    )
    # Find Duplicates (catalogue/duplicates.py): one row per merge proposal, keyed by its review item; the row is
    # also the stored decision on the pair (rejected pairs are never proposed again).
    t["duplicates"] = sa.Table(
        "claro_duplicates", metadata,
        sa.Column("proposal", sa.Integer, primary_key=True, autoincrement=False),  # claro_proposals.id
        sa.Column("catalogue", sa.Text, nullable=False),
        sa.Column("survivor", sa.Text, nullable=False),
        sa.Column("duplicate", sa.Text, nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("details", sa.Text),  # JSON: per-field similarity, values to keep with reasons, blocking keys
        sa.Column("survivor_hash", sa.BigInteger),  # the records' content hashes when scored
        sa.Column("duplicate_hash", sa.BigInteger),
        sa.Column("status", sa.Text, nullable=False),  # open | merged | rejected | withdrawn | rolled_back
        sa.Column("run_id", sa.Text),
        sa.Column("merge_run", sa.Text),  # the run id of the merge's change sets (what its rollback undoes)
        sa.Column("decided_by", sa.Text),
        _ts("decided_at"),
        _ts("at", nullable=False),
        sa.Index("ix_claro_duplicates_pair", "catalogue", "survivor", "duplicate"),
    )
    t["cursors"] = sa.Table(
        "claro_cursors", metadata,
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        _ts("updated_at", nullable=False),
    )
    return t


def record_table(metadata: sa.MetaData, name: str, catalogue: CatalogueSpec) -> sa.Table:
    """The wide table of one catalogue: key, bookkeeping, and (value, provenance) per attribute."""
    columns = [
        sa.Column("_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("_hash", sa.BigInteger, nullable=False),  # content hash of all values: cheap re-import check
        sa.Column("_created_cs", sa.Text, nullable=False),
        # Provenance of every value written when the record was created; a NULL `<attr>__prov` next to a
        # value means "this one". Halves the columns the bulk import writes.
        sa.Column("_created_prov", sa.Integer),
        sa.Column("_seq", sa.Integer, nullable=False, index=True),  # change-set seq of the last write
    ]
    for attr_name, attr in catalogue.attributes.items():
        columns.append(sa.Column(attr_name, column_type(attr), nullable=attr_name != catalogue.key,
                                 unique=attr_name == catalogue.key))
        columns.append(sa.Column(prov_column(attr_name), sa.Integer))
    return sa.Table(record_table_name(name), metadata, *columns)


def default_home() -> Path:
    return Path(os.environ.get("CLARO_HOME", ".claro")).resolve()


def database_url(home: Path | None = None) -> str:
    """CLARO_DATABASE_URL if set (PostgreSQL in production), else the embedded SQLite file."""
    url = os.environ.get("CLARO_DATABASE_URL")
    if url:
        return normalise_url(url)
    return embedded_database_url(home)


def embedded_database_url(home: Path | None = None) -> str:
    """The embedded SQLite store of a project home (`<home>/catalogue.db`), whatever the environment says."""
    home = home or default_home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'catalogue.db'}"


def normalise_url(url: str) -> str:
    # A bare postgresql:// URL would pick psycopg2 in SQLAlchemy 2.0 and psycopg 3 in 2.1; we use
    # psycopg 3 everywhere (COPY support) so say so explicitly.
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def create_engine(url: str) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 60})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # WAL: the web app and CLI read while a run writes
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def build_metadata(spec: ProjectSpec) -> tuple[sa.MetaData, dict[str, sa.Table], dict[str, sa.Table]]:
    metadata = sa.MetaData()
    shared = shared_tables(metadata)
    records = {name: record_table(metadata, name, cat) for name, cat in spec.catalogues.items()}
    return metadata, shared, records
