"""A PostgREST-compatible fake (insert / bulk insert / upsert on tables) that writes into a real PostgreSQL.

It follows tests/contracts/postgrest/upsert-contract.md (a digest of PostgREST v16.2's docs, source and tests, with
Supabase's REST conventions), whose vendor texts are copied beside it (`preferences.rst`, `errors.rst`,
`tables_views.insert-upsert.excerpt.rst`):

* `POST /rest/v1/<table>`: a JSON object or an array of objects with the same keys (else 400 PGRST102 "All object
  keys must match"; an empty or malformed body: 400 PGRST102 "Empty or invalid json"); a key that is not a column:
  400 PGRST204; an unknown table: 404 PGRST205. One statement per request: all rows or none.
* `Prefer` (one header, comma-separated, or repeated): `resolution=merge-duplicates` (ON CONFLICT DO UPDATE) or
  `resolution=ignore-duplicates` (ON CONFLICT DO NOTHING) on `?on_conflict=` columns or the primary key; without a
  resolution, a duplicate key is 409 with PostgreSQL's 23505; `return=minimal` (default, empty body) or
  `return=representation` (the affected rows as JSON; with ignore-duplicates only the inserted ones).
  Status: 201, except a merge-duplicates upsert that inserted nothing answers 200 (v12+).
  `Preference-Applied` echoes the honoured preferences.
* Supabase's gateway: the `apikey` header must be the project key and `Authorization: Bearer` the same key,
  else 401 (PGRST301 for a wrong bearer).
* Errors in PostgREST's shape `{"code", "message", "details", "hint"}` with `Proxy-Status: PostgREST; error=<code>`.

Rows are written with psycopg (json_populate_recordset, so PostgreSQL converts the JSON values to the columns'
types), so tests read them back with SQL. The fake keeps every request (`server.requests`) and the contract
breaches it saw (`violations`, which tests assert is empty).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import psycopg
from http_fakes import RecordingServer, Request
from psycopg import sql

API_KEY = "sb_secret_fake_service_key_0123456789"
_PREFER_KNOWN = {"resolution", "return", "missing", "count", "handling", "tx", "timezone", "max-affected"}
_SQLSTATE_STATUS = {"23505": 409, "23503": 409, "42501": 401, "42P01": 404}


def error(status: int, code: str, message: str, details: Any = None, hint: Any = None):
    return (status, {"Content-Type": "application/json; charset=utf-8", "Proxy-Status": f"PostgREST; error={code}"},
            {"code": code, "message": message, "details": details, "hint": hint})


class FakePostgrest:
    """`url` is the project URL (REST at `url + /rest/v1`); `pg_url` the database the tables live in."""

    def __init__(self, pg_url: str, api_key: str = API_KEY):
        self.pg_url = pg_url
        self.api_key = api_key
        self.violations: list[str] = []
        self.fail_next: list[Any] = []  # replies answered (ahead of the rules) to the next POSTs: a 503, ...
        self.server = RecordingServer(self.handle)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def rest_url(self) -> str:
        return self.server.url + "/rest/v1"

    @property
    def requests(self) -> list[Request]:
        return self.server.requests

    def posts(self) -> list[Request]:
        return [r for r in self.server.requests if r.method == "POST"]

    def close(self) -> None:
        self.server.close()

    def __enter__(self) -> FakePostgrest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ handling
    def handle(self, request: Request):
        headers = {k.lower(): v for k, v in request.headers.items()}
        parts = urlsplit(request.path)
        if not parts.path.startswith("/rest/v1/"):
            return error(404, "PGRST125", f"Invalid path specified in request URL: {parts.path}")
        if headers.get("apikey") is None:
            return (401, {"Content-Type": "application/json"},
                    {"message": "No API key found in request", "hint": "No `apikey` request header or url param "
                                                                      "was found."})
        if headers.get("apikey") != self.api_key:
            return (401, {"Content-Type": "application/json"},
                    {"message": "Invalid API key", "hint": "Double check your Supabase `anon` or `service_role` "
                                                          "API key."})
        if headers.get("authorization") != f"Bearer {self.api_key}":
            return error(401, "PGRST301", "JWSError JWSInvalidSignature")
        if request.method != "POST":
            self.violations.append(f"{request.method} {request.path}: the fake serves POST (insert/upsert) only")
            return error(405, "PGRST117", f"Unsupported HTTP method: {request.method}")
        if self.fail_next:
            return self.fail_next.pop(0)
        content_type = headers.get("content-type", "")
        if not content_type.startswith("application/json"):
            self.violations.append(f"POST {request.path}: Content-Type {content_type!r}, not application/json")
        table = unquote(parts.path[len("/rest/v1/"):])
        query = parse_qs(parts.query)
        prefer = self._prefer(request, headers)
        try:
            payload = json.loads(request.body) if request.body else None
        except ValueError:
            payload = None
        if payload is None or not isinstance(payload, dict | list):
            return error(400, "PGRST102", "Empty or invalid json")
        rows = [payload] if isinstance(payload, dict) else payload
        if any(not isinstance(r, dict) for r in rows) or len({frozenset(r) for r in rows}) > 1:
            return error(400, "PGRST102", "All object keys must match")
        return self._insert(table, rows, query, prefer)

    def _prefer(self, request: Request, headers: dict[str, str]) -> dict[str, str]:
        values = [v for k, v in request.headers.items() if k.lower() == "prefer"]
        prefer: dict[str, str] = {}
        for value in values:
            for item in value.split(","):
                if "=" in item:
                    name, _, setting = item.strip().partition("=")
                    if name not in _PREFER_KNOWN:
                        self.violations.append(f"Prefer {item.strip()!r} is not a PostgREST preference")
                    prefer[name] = setting
        if prefer.get("resolution") not in (None, "merge-duplicates", "ignore-duplicates"):
            self.violations.append(f"Prefer resolution={prefer['resolution']} is not one PostgREST knows")
        if prefer.get("return") not in (None, "minimal", "representation", "headers-only"):
            self.violations.append(f"Prefer return={prefer['return']} is not one PostgREST knows")
        return prefer

    def _insert(self, table: str, rows: list[dict[str, Any]], query: dict[str, list[str]], prefer: dict[str, str]):
        schema, _, name = table.rpartition(".")
        target = sql.Identifier(schema, name) if schema else sql.Identifier(name)
        with psycopg.connect(self.pg_url) as conn:
            columns = [r[0] for r in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 "
                "AND NOT attisdropped ORDER BY attnum", (target.as_string(conn),)).fetchall()]
            if not columns:
                return error(404, "PGRST205", f"Could not find the table 'public.{table}' in the schema cache")
            keys = list(rows[0]) if rows else []
            for key in keys:
                if key not in columns:
                    return error(400, "PGRST204", f"Could not find the '{key}' column of '{table}' in the schema "
                                                  "cache")
            conflict = [c.strip() for c in query.get("on_conflict", [""])[0].split(",") if c.strip()]
            if not conflict:
                conflict = [r[0] for r in conn.execute(
                    "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND "
                    "a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass(%s) AND i.indisprimary",
                    (target.as_string(conn),)).fetchall()]
            resolution = prefer.get("resolution") if conflict else None  # no PK, no on_conflict: plain insert
            returning = prefer.get("return", "minimal")
            if not keys:
                return (201 if resolution != "merge-duplicates" else 200, {}, b"")
            cols = sql.SQL(", ").join(sql.Identifier(k) for k in keys)
            statement = sql.SQL("INSERT INTO {t} ({c}) SELECT {c} FROM json_populate_recordset(NULL::{t}, %s)").format(
                t=target, c=cols)
            if resolution == "merge-duplicates":
                updates = [k for k in keys if k not in conflict] or keys[:1]
                statement += sql.SQL(" ON CONFLICT ({k}) DO UPDATE SET {s}").format(
                    k=sql.SQL(", ").join(sql.Identifier(c) for c in conflict),
                    s=sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in updates))
            elif resolution == "ignore-duplicates":
                statement += sql.SQL(" ON CONFLICT ({k}) DO NOTHING").format(
                    k=sql.SQL(", ").join(sql.Identifier(c) for c in conflict))
            statement += sql.SQL(" RETURNING (xmax = 0) AS _inserted, to_jsonb({t}.*) AS _row").format(
                t=sql.Identifier(name))
            try:
                with conn.transaction():
                    result = conn.execute(statement, (json.dumps(rows),)).fetchall()
            except psycopg.Error as exc:
                diag = exc.diag
                state = diag.sqlstate or "XX000"
                return error(_SQLSTATE_STATUS.get(state, 400), state, diag.message_primary or str(exc),
                             diag.message_detail, diag.message_hint)
        inserted = sum(1 for ok, _ in result if ok)
        status = 200 if resolution == "merge-duplicates" and inserted == 0 else 201
        applied = [f"resolution={resolution}"] if resolution else []
        headers = {"Content-Range": "*/*"}
        if returning == "representation":
            applied.append("return=representation")
            body: Any = [row for _, row in result]
            headers["Content-Type"] = "application/json; charset=utf-8"
        else:
            body = b""
        if applied:
            headers["Preference-Applied"] = ", ".join(applied)
        return (status, headers, body)
