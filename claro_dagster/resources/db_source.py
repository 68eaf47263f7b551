"""PostgreSQL (and Supabase) sources: a table or a query pulled incrementally by a watermark column into ONE CSV
file per pull, streamed so a table of millions of rows is pulled with bounded memory.

Supabase's database is PostgreSQL reached by its database URL (Settings > Database > Connection string), so
`kind: supabase` and `kind: postgres` are the same code.

What a pull does (`pull`):

1. connects with the URL in the source's `url_env` variable (psycopg 3, libpq or SQLAlchemy-style URL); a missing
   variable, a refused connection or refused authentication fails naming the variable, the password redacted;
2. runs in ONE read-only REPEATABLE READ transaction, so every query of the pull sees the same snapshot;
3. refuses when rows have no watermark (NULL `watermark`): they could never be pulled incrementally, and leaving
   them out silently would lose them. The error names the column, the count and a few keys, and says how to fix it
   (give them a value, or pull through a `query` with COALESCE). Nothing is written and the cursor stays;
4. warns (`PullResult.warnings`) when the source's newest watermark is older than the stored cursor: the source went
   backwards (restored from a backup, a clock moved back, rows deleted); nothing is pulled until rows pass the
   cursor again. A single row updated with a watermark older than the cursor is not pulled either (the watermark is
   the only thing the pull can see): it arrives with its next change. Delete the source's cursor to pull all again;
5. streams the rows newer than the cursor (claro_dagster.resources.watermark: ties at the boundary are kept) through
   a server-side cursor (a psycopg named cursor: DECLARE/FETCH `chunk_rows` at a time). The server casts every
   column to text (the onboarding reads cells as text anyway, and the text is also the exact form the watermark is
   stored and compared in) and builds each CSV line; each chunk is appended to `<inbox>/.<name>.part` and hashed;
6. soft deletes (`soft_delete`: a column; a row is deleted when it is set: not NULL, not false/0/empty): with
   `soft_delete_sets` (e.g. `{status: archived}`) the row is kept and those columns set, so the catalogue record
   is archived through the gate like any other change; without it the row is left out of the batch and its key
   reported in the pull's note. A record is never deleted from the catalogue by a pull;
7. renames the file to `<name>-<time>-<hash>.csv` (complete or absent: a run never sees half a file) and writes
   `<name>-<time>-<hash>.pull.json` beside it (the query, the watermark range, the rows, the soft-deleted keys).

A failure at any point (a dropped connection halfway through included) removes the partial file and leaves the
cursor where it was, so the next pull starts from the same place and no row is pulled twice. The caller stores the
returned cursor only after `pull` returned. No Dagster here.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from claro_dagster.resources.watermark import NextCursor

DEFAULT_CHUNK_ROWS = 10_000
DEFAULT_MAX_ROWS = 100_000
# The same table-name and URL rules as the PostgreSQL destination (resources/postgres.py), repeated here because that
# module is a Dagster resource (it imports dagster at load) and this one must not be.
_IDENT = r"[A-Za-z_][A-Za-z0-9_]{0,62}"
_TABLE = re.compile(rf"(?:({_IDENT})\.)?({_IDENT})")
_SCHEME = re.compile(r"^postgres(?:ql)?(?:\+[A-Za-z0-9_]+)?://")
# bool, int8, int2, int4, oid, float4, float8, date, time, timestamp, timestamptz, numeric, uuid
_PLAIN_TYPES = frozenset({16, 20, 21, 23, 26, 700, 701, 1082, 1083, 1114, 1184, 1700, 2950})
_FALSE = frozenset({"f", "false", "0", "", "n", "no"})
_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@?#]*:)(?P<password>[^@/?#]*)@", re.IGNORECASE)
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


class DbSourceError(Exception):
    """A pull that failed: what the database said and what to do. Nothing was written; the cursor did not move."""


def parse_table_name(table: str) -> tuple[str | None, str]:
    """`name` or `schema.name` of letters, digits and underscores; (schema or None, name). Raises ValueError."""
    match = _TABLE.fullmatch(table) if isinstance(table, str) else None
    if not match:
        raise ValueError(f"invalid table name {table!r}: expected `name` or `schema.name` of letters, digits and "
                         "underscores (not starting with a digit, at most 63 characters each)")
    return match.group(1), match.group(2)


def to_conninfo(url: str) -> str:
    """A SQLAlchemy-style URL (`postgresql+psycopg://...`) as a libpq URI; anything else unchanged."""
    return _SCHEME.sub("postgresql://", url, count=1)


def redact(text: str, url: str | None = None) -> str:
    """`text` with the password of any URL (and `url`'s password wherever it appears) replaced by ***."""
    out = _KEYWORD_PASSWORD.sub(r"\1***", _PASSWORD.sub(r"\g<head>***@", text))
    if url:
        try:
            password = psycopg.conninfo.conninfo_to_dict(to_conninfo(url)).get("password")
        except psycopg.Error:
            match = _PASSWORD.search(url)
            password = match.group("password") if match else None
        if password:
            out = out.replace(str(password), "***")
    return out


@dataclass(frozen=True)
class DbSource:
    """One source's settings (from its spec block); `name` only names it in messages."""

    name: str
    url_env: str
    key: str
    watermark: str
    table: str | None = None
    query: str | None = None
    soft_delete: str | None = None
    soft_delete_sets: Mapping[str, str] = field(default_factory=dict)
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    max_rows: int | None = DEFAULT_MAX_ROWS
    connect_timeout: int = 10

    @property
    def what(self) -> str:
        return f"table {self.table}" if self.table else "its query"

    def relation(self) -> sql.Composable:
        if self.query:
            # every statement is sent with parameters, so a `%` of the query (e.g. `id % 2`) is doubled here
            return sql.SQL("({})").format(sql.SQL(self.query.strip().rstrip(";").replace("%", "%%")))
        try:
            schema, name = parse_table_name(self.table or "")
        except ValueError as exc:
            raise DbSourceError(f"source {self.name}: {exc}; fix 'table' in the source") from exc
        return sql.Identifier(schema, name) if schema else sql.Identifier(name)


@dataclass
class PullResult:
    path: Path | None  # the batch file, None when nothing new (or only soft-deleted rows left out)
    rows: int = 0  # rows written to the file
    cursor: dict | None = None  # the next cursor (None: keep the stored one)
    soft_deleted: list[str] = field(default_factory=list)  # keys of soft-deleted rows left out or archived
    warnings: list[str] = field(default_factory=list)
    note: Path | None = None


def connect(source: DbSource, environ: Mapping[str, str] | None = None) -> psycopg.Connection:
    environ = os.environ if environ is None else environ
    url = environ.get(source.url_env)
    if not url:
        raise DbSourceError(f"source {source.name}: {source.url_env} is not set: set it to the database URL "
                            "(postgresql://user:password@host:5432/database; Supabase: the connection string under "
                            "Project Settings > Database)")
    try:
        return psycopg.connect(to_conninfo(url), connect_timeout=source.connect_timeout,
                               application_name=f"claro_dagster source {source.name}"[:63])
    except psycopg.Error as exc:
        raise DbSourceError(
            f"source {source.name}: could not connect to the database in {source.url_env} "
            f"({redact(url, url)}): {redact(str(exc).strip(), url)}. Check the host, port, database, user and "
            f"password in {source.url_env}") from None


def pull(source: DbSource, cursor: dict | None, inbox_dir: Path, *, environ: Mapping[str, str] | None = None,
         on_chunk: Callable[[int], None] | None = None, clock: Callable[[], float] = time.time) -> PullResult:
    """Pull the rows newer than `cursor` into one new CSV file in `inbox_dir` (see the module docstring).
    `on_chunk(rows written so far)` is called after each chunk (progress; tests drop the connection there)."""
    inbox_dir = Path(inbox_dir)
    inbox_dir.mkdir(parents=True, exist_ok=True)
    partial = inbox_dir / f".{source.name}.part"
    url = (os.environ if environ is None else environ).get(source.url_env) or ""
    conn = connect(source, environ)
    try:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            for setting in ("SET TIME ZONE 'UTC'", "SET DateStyle = ISO, YMD", "SET extra_float_digits = 1",
                            "SET IntervalStyle = iso_8601"):
                conn.execute(setting)
            columns, plain = _columns(conn, source)
            warnings = _check_watermark(conn, source, cursor)
            result = PullResult(path=None, warnings=warnings)
            written, digest = _stream(conn, source, cursor, columns, plain, partial, result, on_chunk)
    except DbSourceError:
        partial.unlink(missing_ok=True)
        raise
    except psycopg.OperationalError as exc:
        partial.unlink(missing_ok=True)
        raise DbSourceError(
            f"source {source.name}: the connection to the database in {source.url_env} was lost during the pull "
            f"of {source.what} ({redact(str(exc).strip(), url)}); nothing was written and the cursor did not move: "
            "the next pull starts again from the same cursor") from None
    except psycopg.Error as exc:
        partial.unlink(missing_ok=True)
        raise DbSourceError(f"source {source.name}: the pull of {source.what} failed "
                            f"({redact(str(exc).strip(), url)}); nothing was written and the cursor did not "
                            "move: fix the source's table or query and the next pull tries again") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        conn.close()
    if result.cursor is None:
        return result
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(clock()))
    stem = f"{source.name}-{stamp}-{digest[:10]}"
    result.note = inbox_dir / f"{stem}.pull.json"
    result.note.write_text(json.dumps({
        "source": source.name, "from": source.table or source.query, "key": source.key,
        "watermark": source.watermark, "after": cursor, "upto": result.cursor, "rows": written,
        "soft_delete": source.soft_delete, "soft_delete_sets": dict(source.soft_delete_sets),
        "soft_deleted": result.soft_deleted, "warnings": result.warnings}, indent=1), encoding="utf-8")
    if written:
        result.path = inbox_dir / f"{stem}.csv"
        os.replace(partial, result.path)  # complete or absent
    else:  # only soft-deleted rows, left out: the note reports them, no batch
        partial.unlink(missing_ok=True)
    result.rows = written
    return result


def _columns(conn: psycopg.Connection, source: DbSource) -> tuple[list[str], set[str]]:
    """The relation's column names, checked for the key, the watermark and the soft-delete column, and those whose
    type's text never needs quoting in CSV."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT * FROM {} AS src LIMIT 0").format(source.relation()), {})
        columns = [d.name for d in cur.description or []]
        source_plain = {d.name for d in cur.description or [] if d.type_code in _PLAIN_TYPES}
    doubled = sorted({c for c in columns if columns.count(c) > 1})
    if doubled:
        raise DbSourceError(f"source {source.name}: {source.what} gives the column(s) {', '.join(doubled)} more "
                            "than once; name each column once in the query (e.g. `SELECT a.id, b.id AS b_id`)")
    for what, name in (("key", source.key), ("watermark", source.watermark), ("soft_delete", source.soft_delete)):
        if name is not None and name not in columns:
            raise DbSourceError(f"source {source.name}: {source.what} has no column {name!r} (its '{what}'); "
                                f"columns: {', '.join(columns)}. Fix '{what}' in the source")
    return columns, source_plain


def _check_watermark(conn: psycopg.Connection, source: DbSource, cursor: dict | None) -> list[str]:
    """Refuse rows without a watermark; warn when the source's newest watermark is older than the cursor."""
    rel, wm, key = source.relation(), sql.Identifier(source.watermark), sql.Identifier(source.key)
    nulls = conn.execute(sql.SQL("SELECT count(*) FROM {} AS src WHERE src.{} IS NULL").format(rel, wm),
                         {}).fetchone()[0]
    if nulls:
        examples = [r[0] for r in conn.execute(
            sql.SQL("SELECT src.{}::text FROM {} AS src WHERE src.{} IS NULL ORDER BY 1 LIMIT 5").format(key, rel, wm),
            {})]
        raise DbSourceError(
            f"source {source.name}: {nulls} row(s) of {source.what} have no {source.watermark} (the watermark "
            f"column is NULL), e.g. {source.key} {', '.join(map(repr, examples))}. They could never be pulled "
            f"incrementally, so nothing was pulled and the cursor did not move. Give them a {source.watermark} "
            f"(e.g. UPDATE ... SET {source.watermark} = now() WHERE {source.watermark} IS NULL), or pull through "
            f"a 'query' that gives them one (COALESCE({source.watermark}, '-infinity') AS {source.watermark})")
    if not cursor:
        return []
    newest, behind = conn.execute(sql.SQL("SELECT max(src.{0})::text, max(src.{0}) < %s FROM {1} AS src")
                                  .format(wm, rel), (cursor["value"],)).fetchone()
    if behind:
        return [f"source {source.name}: the newest {source.watermark} in {source.what} is {newest}, older than "
                f"the stored cursor {cursor['value']}: the source went backwards (restored from a backup, a clock "
                "moved back, or its newest rows deleted). Rows are pulled again only once they pass the cursor; to "
                "pull everything again, delete the source's cursor"]
    return []


def _stream(conn: psycopg.Connection, source: DbSource, cursor: dict | None, columns: list[str], plain: set[str],
            partial: Path, result: PullResult, on_chunk: Callable[[int], None] | None) -> tuple[int, str]:
    """Stream the rows into `partial`. The server builds each CSV line (every non-NULL value quoted, NULL empty) and
    hands over the watermark and the key beside it as text: the client only joins lines, so the pull costs about
    what reading the rows costs (benchmarks/postgres_source.py; formatting in Python tripled it). Numbers, dates,
    times, booleans and UUIDs (`plain`) are written unquoted: their text has no comma, quote or line break."""
    rel, wm, key = source.relation(), sql.Identifier(source.watermark), sql.Identifier(source.key)
    params: dict[str, object] = {"false": sorted(_FALSE)}
    deleted = sql.SQL("false")
    if source.soft_delete:
        deleted = sql.SQL("(src.{0} IS NOT NULL AND lower(btrim(src.{0}::text)) <> ALL(%(false)s::text[]))").format(
            sql.Identifier(source.soft_delete))
    header = list(columns) + [name for name in source.soft_delete_sets if name not in columns]
    fields = []
    for name in header:
        if name not in columns:
            quoted = sql.SQL("''")
        elif name in plain:
            quoted = sql.SQL("coalesce(src.{}::text, '')").format(sql.Identifier(name))
        else:
            quoted = sql.SQL("coalesce('\"' || replace(src.{}::text, '\"', '\"\"') || '\"', '')").format(
                sql.Identifier(name))
        if name in source.soft_delete_sets:
            params[f"set_{len(fields)}"] = '"' + str(source.soft_delete_sets[name]).replace('"', '""') + '"'
            quoted = sql.SQL("CASE WHEN {} THEN %({})s::text ELSE {} END").format(
                deleted, sql.SQL(f"set_{len(fields)}"), quoted)
        fields.append(quoted)
    line = sql.SQL(" || ',' || ").join(fields)
    where = sql.SQL("src.{} IS NOT NULL").format(wm)
    if cursor:
        # >= the stored watermark, less the keys taken at exactly it. The value is sent untyped (psycopg sends
        # text as `unknown`), so PostgreSQL reads it as the column's own type.
        where = sql.SQL("{0} AND (src.{1} > %(value)s OR (src.{1} = %(value)s AND NOT (src.{2}::text = ANY("
                        "%(keys)s::text[]))))").format(where, wm, key)
        params.update(value=cursor["value"], keys=list(cursor.get("keys", [])))
    limit = sql.SQL("")
    if source.max_rows:
        limit, params["limit"] = sql.SQL(" LIMIT %(limit)s"), source.max_rows
    query = sql.SQL("SELECT {}, src.{}::text, src.{}::text, {} FROM {} AS src WHERE {} ORDER BY src.{}, src.{}{}") \
        .format(line, wm, key, deleted, rel, where, wm, key, limit)
    kind = _watermark_type(conn, source)
    leave_out = bool(source.soft_delete) and not source.soft_delete_sets
    following = NextCursor(cursor)
    digest = hashlib.sha256()
    written = 0
    with partial.open("wb") as out, conn.cursor(name="claro_pull") as cur:
        cur.itersize = source.chunk_rows
        head = io.StringIO()
        csv.writer(head, lineterminator="\n").writerow(header)
        data = head.getvalue().encode("utf-8")
        digest.update(data)
        out.write(data)
        cur.execute(query, params)
        while rows := cur.fetchmany(source.chunk_rows):
            following.see_chunk(rows, 1, 2)
            if source.soft_delete:
                result.soft_deleted += [r[2] for r in rows if r[3]]
            lines = [r[0] for r in rows if not r[3]] if leave_out else [r[0] for r in rows]
            if lines:
                data = ("\n".join(lines) + "\n").encode("utf-8")
                digest.update(data)
                out.write(data)
                written += len(lines)
            if on_chunk is not None:
                on_chunk(written)
    result.cursor = following.cursor(kind)
    return written, digest.hexdigest()


def _watermark_type(conn: psycopg.Connection, source: DbSource) -> str:
    row = conn.execute(sql.SQL("SELECT pg_typeof(src.{})::text FROM {} AS src LIMIT 1").format(
        sql.Identifier(source.watermark), source.relation()), {}).fetchone()
    return row[0] if row else "unknown"
