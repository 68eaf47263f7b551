"""PostgreSQL destination: idempotent upsert of a DataFrame into a table keyed by one column.

`PostgresDestination.upsert(table, frame, key)` runs in ONE transaction:

1. takes a transaction-scoped advisory lock on the table name (concurrent upserts into the same
   table queue instead of racing on CREATE/ALTER);
2. creates the table if missing: one column per frame column (float dtypes -> `double precision`,
   everything else -> `text`, so identifiers keep leading zeros), `key` as the primary key, plus
   `_synced_at timestamptz` (when the row was last inserted or changed);
3. adds the frame's new columns (`ALTER TABLE ... ADD COLUMN`); columns are never dropped, and
   table columns missing from the frame are left as they are;
4. COPYs the frame into a TEMP staging table (`COPY ... FROM STDIN` via psycopg 3's
   `cursor.copy()`, as CSV that pyarrow writes from whole columns), typed like the target columns; a table
   created by this very upsert has nothing to conflict with, so the rows are COPYed straight into it and
   step 5 is skipped;
5. `INSERT INTO t SELECT ... FROM staging ON CONFLICT (key) DO UPDATE SET ... WHERE
   ROW(t.cols) IS DISTINCT FROM ROW(EXCLUDED.cols)`: only the frame's columns are compared, so an
   unchanged row is not rewritten (no new tuple, `_synced_at` kept) and re-running the same upsert
   changes nothing.

Counts: the INSERT returns `(xmax = 0)` per written row. A freshly inserted tuple has no deleting
transaction (`xmax = 0`); a tuple written by the DO UPDATE branch carries the upserting
transaction's id in `xmax`. This is the widely used (if undocumented) PostgreSQL idiom; rows the
WHERE clause skipped are not returned at all, so `unchanged = len(frame) - inserted - updated`.

Identifiers are always quoted with `psycopg.sql.Identifier`; table names must be `name` or
`schema.name` made of letters, digits and underscores (not starting with a digit, at most 63
characters each), anything else is refused before touching the database.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg import sql

SYNCED_AT = "_synced_at"
_IDENT = r"[A-Za-z_][A-Za-z0-9_]{0,62}"
_TABLE = re.compile(rf"(?:({_IDENT})\.)?({_IDENT})")
_SCHEME = re.compile(r"^postgres(?:ql)?(?:\+[A-Za-z0-9_]+)?://")
_STAGE = "_claro_upsert_stage"
_COPY_ROWS = 1 << 16  # rows per CSV block sent through COPY


@dataclass(frozen=True)
class UpsertResult:
    inserted: int
    updated: int
    unchanged: int
    table: str = ""
    created_table: bool = False
    added_columns: tuple[str, ...] = field(default_factory=tuple)

    @property
    def rows(self) -> int:
        return self.inserted + self.updated + self.unchanged


def parse_table_name(table: str) -> tuple[str | None, str]:
    """Validate `name` or `schema.name`; returns (schema or None, name). Raises ValueError."""
    match = _TABLE.fullmatch(table) if isinstance(table, str) else None
    if not match:
        raise ValueError(
            f"invalid table name {table!r}: expected `name` or `schema.name` of letters, digits and "
            "underscores (not starting with a digit, at most 63 characters each)"
        )
    return match.group(1), match.group(2)


def to_conninfo(url: str) -> str:
    """Turn a SQLAlchemy-style URL (`postgresql+psycopg2://...`) into a libpq URI for psycopg.

    Anything that is not a URL (e.g. `host=... dbname=...`) is passed through unchanged.
    """
    return _SCHEME.sub("postgresql://", url, count=1)


class PostgresNotConfigured(RuntimeError):
    """A PostgreSQL destination whose URL variable is not set where it is used."""


class PostgresDestination(dg.ConfigurableResource):
    """A PostgreSQL database to upsert into. `url` accepts libpq and SQLAlchemy URL forms."""

    url: str = ""
    url_env: str | None = None
    """The environment variable holding the URL, read when a connection is made (not when Dagster checks a run's
    config), so a run that does not push here never needs it, and one that does fails saying which variable."""
    connect_timeout: int = 10
    application_name: str = "claro_dagster"

    @classmethod
    def from_env(cls, url_env: str, **kwargs: Any) -> PostgresDestination:
        """Resource for a destination spec's `url_env`, read from the environment where the push runs."""
        return cls(url_env=url_env, **kwargs)

    def conninfo(self) -> str:
        """`url`, else the value of `url_env`, as a libpq URI."""
        if self.url or not self.url_env:
            return to_conninfo(self.url)
        value = os.environ.get(self.url_env)
        if not value:
            raise PostgresNotConfigured(f"the PostgreSQL destination's URL variable {self.url_env} is not set in "
                                        "this environment: set it to the database's URL "
                                        "(postgresql://user:password@host:5432/db)")
        return to_conninfo(value)

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        with psycopg.connect(
            self.conninfo(),
            connect_timeout=self.connect_timeout,
            application_name=self.application_name,
        ) as conn:
            yield conn

    def upsert(self, table: str, frame: pd.DataFrame, key: str) -> UpsertResult:
        """Insert new rows, update changed rows, leave unchanged rows alone (see module docstring)."""
        schema, name = parse_table_name(table)
        target = sql.Identifier(schema, name) if schema else sql.Identifier(name)
        columns = [str(c) for c in frame.columns]
        _check_columns(columns, key, frame)
        data_columns = [c for c in columns if c != key]
        wanted_types = {c: _pg_type(frame[c]) for c in columns}

        with self.connect() as conn, conn.transaction(), conn.cursor() as cur:
            qualified = target.as_string(conn)
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (qualified,))
            existing = _table_columns(cur, qualified)
            created = not existing
            added: list[str] = []
            if created:
                column_defs = [
                    sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(wanted_types[c])) for c in columns
                ]
                column_defs.append(sql.SQL("{} timestamptz NOT NULL DEFAULT now()").format(
                    sql.Identifier(SYNCED_AT)))
                column_defs.append(sql.SQL("PRIMARY KEY ({})").format(sql.Identifier(key)))
                cur.execute(sql.SQL("CREATE TABLE {} ({})").format(target, sql.SQL(", ").join(column_defs)))
            else:
                if key not in existing:
                    raise ValueError(f"table {table} exists without the key column {key!r}")
                if not _has_unique_key(cur, qualified, key):
                    raise ValueError(f"table {table} has no primary key or unique index on {key!r} alone")
                for column in [*columns, SYNCED_AT]:
                    if column in existing:
                        continue
                    kind = wanted_types.get(column, "timestamptz")
                    cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                        target, sql.Identifier(column), sql.SQL(kind)))
                    if column != SYNCED_AT:
                        added.append(column)
            types = _table_columns(cur, qualified)

            column_list = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
            rows = _arrow_rows(frame, columns, types)
            if created:
                # A table made in this transaction has no row to conflict with (the frame's keys are unique):
                # COPY straight into it, `_synced_at` takes its default.
                _copy_in(cur, target, column_list, rows)
                return UpsertResult(table=table, inserted=len(frame), updated=0, unchanged=0, created_table=True)
            # The staging table lives in this session's temp schema and is dropped at commit.
            stage = sql.Identifier("pg_temp", _STAGE)
            cur.execute(sql.SQL(
                "CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA"
            ).format(sql.Identifier(_STAGE), column_list, target))
            _copy_in(cur, stage, column_list, rows)

            if data_columns:
                conflict = sql.SQL("DO UPDATE SET {sets}, {synced} = EXCLUDED.{synced} "
                                   "WHERE ROW({old}) IS DISTINCT FROM ROW({new})").format(
                    sets=sql.SQL(", ").join(
                        sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in data_columns),
                    synced=sql.Identifier(SYNCED_AT),
                    old=sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in data_columns),
                    new=sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(sql.Identifier(c))
                                           for c in data_columns),
                )
            else:
                conflict = sql.SQL("DO NOTHING")
            cur.execute(sql.SQL(
                "WITH written AS ("
                " INSERT INTO {target} AS t ({cols}, {synced}) SELECT {cols}, now() FROM {stage}"
                " ON CONFLICT ({key}) {conflict} RETURNING (xmax = 0) AS inserted)"
                " SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM written"
            ).format(target=target, cols=column_list, synced=sql.Identifier(SYNCED_AT), stage=stage,
                     key=sql.Identifier(key), conflict=conflict))
            inserted, updated = cur.fetchone()
        return UpsertResult(
            table=table,
            inserted=int(inserted),
            updated=int(updated),
            unchanged=len(frame) - int(inserted) - int(updated),
            created_table=created,
            added_columns=tuple(added),
        )


def _check_columns(columns: list[str], key: str, frame: pd.DataFrame) -> None:
    if key not in columns:
        raise ValueError(f"key column {key!r} is not in the frame (columns: {columns})")
    if len(set(columns)) != len(columns):
        raise ValueError(f"duplicate column names in the frame: {columns}")
    for column in columns:
        if not column or "\x00" in column or len(column.encode("utf-8")) > 63:
            raise ValueError(f"invalid column name {column!r} (empty, NUL or longer than 63 bytes)")
        if column == SYNCED_AT:
            raise ValueError(f"{SYNCED_AT!r} is maintained by the destination; drop it from the frame")
    keys = frame[key]
    if keys.isna().any():
        raise ValueError(f"key column {key!r} has empty values")
    duplicated = keys[keys.duplicated()].astype(str).unique().tolist()
    if duplicated:
        raise ValueError(f"key column {key!r} has duplicate values: {duplicated[:10]}")


def _pg_type(series: pd.Series) -> str:
    return "double precision" if pd.api.types.is_float_dtype(series.dtype) else "text"


def _table_columns(cur: psycopg.Cursor, qualified: str) -> dict[str, str]:
    cur.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (qualified,),
    )
    return {name: kind for name, kind in cur.fetchall()}


def _has_unique_key(cur: psycopg.Cursor, qualified: str, key: str) -> bool:
    cur.execute(
        "SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
        "WHERE i.indrelid = to_regclass(%s) AND i.indisunique AND i.indnkeyatts = 1 "
        "AND i.indpred IS NULL AND a.attname = %s",
        (qualified, key),
    )
    return cur.fetchone() is not None


def _copy_in(cur: psycopg.Cursor, table: sql.Composable, column_list: sql.Composable, rows: pa.Table) -> None:
    """COPY Arrow rows into a table as CSV Arrow writes from whole columns (no Python object per value); every
    valid value is quoted and nulls are bare, which is how COPY's CSV format tells NULL from ""."""
    options = pacsv.WriteOptions(include_header=False, quoting_style="all_valid")
    with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(table, column_list)) as copy:
        for begin in range(0, rows.num_rows, _COPY_ROWS):
            sink = io.BytesIO()
            pacsv.write_csv(rows.slice(begin, _COPY_ROWS), sink, options)
            copy.write(sink.getbuffer())


def _arrow_rows(frame: pd.DataFrame, columns: list[str], types: dict[str, str]) -> pa.Table:
    """The frame's columns as Arrow arrays COPY can take as CSV: floats stay floats for float columns, text stays
    text; anything else (ints, bools, objects) becomes the text the per-value converter gives."""
    arrays = []
    for column in columns:
        series = frame[column].reset_index(drop=True)
        dtype = series.dtype
        numeric = types[column] in {"double precision", "real"}
        if numeric and pd.api.types.is_float_dtype(dtype):
            array = pa.array(series, from_pandas=True).cast(pa.float64())
        elif _is_text(series):
            array = pa.array(series, from_pandas=True)
            if not pa.types.is_large_string(array.type):
                array = array.cast(pa.large_string())
        elif pd.api.types.is_integer_dtype(dtype):
            array = pa.array(series, from_pandas=True).cast(pa.large_string())
        else:
            convert = _converter(types[column])
            values = [convert(value) for value in series]
            array = pa.array([v if v is None or isinstance(v, str) else repr(v) for v in values], pa.large_string())
        arrays.append(array)
    return pa.Table.from_arrays(arrays, names=columns)


def _is_text(series: pd.Series) -> bool:
    dtype = series.dtype
    if isinstance(dtype, pd.ArrowDtype):
        return pa.types.is_string(dtype.pyarrow_dtype) or pa.types.is_large_string(dtype.pyarrow_dtype)
    if isinstance(dtype, pd.StringDtype):
        return True
    return pd.api.types.is_object_dtype(dtype) and pd.api.types.infer_dtype(series, skipna=True) in ("string", "empty")


def _is_null(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # lists, arrays: not a scalar null
        return False


def _converter(pg_type: str) -> Callable[[Any], Any]:
    """Python value -> what COPY receives: None for nulls, floats for float columns, else text
    (which PostgreSQL parses into the column's type, e.g. an existing integer or numeric column)."""
    numeric = pg_type in {"double precision", "real"}

    def convert(value: Any) -> Any:
        if _is_null(value):
            return None
        is_number = isinstance(value, (float, int, np.floating, np.integer)) and not isinstance(value, bool)
        if numeric and is_number:
            number = float(value)
            return None if math.isnan(number) else number
        if isinstance(value, str):
            return value
        if isinstance(value, bytes):
            return value.decode("utf-8", errors="replace")
        return str(value)

    return convert
