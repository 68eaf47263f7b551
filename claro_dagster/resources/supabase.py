"""Supabase destination (`kind: supabase`).

* `mode: sql`: Supabase is PostgreSQL; its database URL (in `url_env`) goes to the PostgreSQL destination's
  COPY-based upsert (resources/postgres.py), unchanged.
* `mode: rest`: PostgREST at `rest_url_env` (or `url_env` + `/rest/v1`, Supabase's layout), the project's API key
  (in `api_key_env`) sent as `apikey` and `Authorization: Bearer` (Supabase's gateway wants both). Records go
  as JSON arrays of up to `batch_size` rows, `POST /<table>?on_conflict=<key>` with
  `Prefer: resolution=merge-duplicates,return=minimal`: PostgREST's upsert (INSERT ... ON CONFLICT DO UPDATE),
  all or nothing per request. Every object of a batch carries the same keys (PostgREST refuses a batch whose
  objects differ, PGRST102), a missing value being null. Because the upsert is keyed, the HTTP layer may retry
  a request after a 5xx or a timeout without duplicating a row.

PostgREST does not create tables: the table must exist with a primary key or unique index on the catalogue key.
Only records changed since the destination's cursor are sent; the cursor moves after every batch succeeded.

supabase-py is not used: it brings its own HTTP transport (httpx) and never retries writes, while every request
here must go through the project's HTTP layer; the upsert is one POST.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pandas as pd

from claro_dagster.resources.http import HttpClient, HttpError

PREFER_UPSERT = "resolution=merge-duplicates,return=minimal"


class SupabaseError(Exception):
    """PostgREST refused a request; the message carries its code, message, details and hint."""


@dataclass
class RestUpsertResult:
    rows: int
    requests: int


def rest_url_from_env(rest_url_env: str | None, url_env: str | None) -> str:
    """PostgREST's base URL: `rest_url_env`'s value, else `url_env`'s project URL + /rest/v1."""
    if rest_url_env:
        value = os.environ.get(rest_url_env)
        if not value:
            raise SupabaseError(f"environment variable {rest_url_env} (the PostgREST URL) is not set")
        return value.rstrip("/")
    value = os.environ.get(url_env or "") if url_env else None
    if not value:
        raise SupabaseError(f"environment variable {url_env} (the Supabase project URL, e.g. "
                            "https://xyz.supabase.co) is not set")
    return value.rstrip("/") + "/rest/v1"


class PostgrestTable:
    """Upserts rows into one PostgREST table through the project's HTTP layer."""

    def __init__(self, rest_url: str, api_key: str, table: str, *, http: HttpClient | None = None):
        self.rest_url = rest_url.rstrip("/")
        self.table = table
        self.http = http or HttpClient()
        self.headers = {"apikey": api_key, "Authorization": f"Bearer {api_key}",
                        "Content-Type": "application/json", "Accept": "application/json"}

    @classmethod
    def from_env(cls, dest: Any, **http_options: Any) -> PostgrestTable:
        key = os.environ.get(dest.api_key_env or "")
        if not key:
            raise SupabaseError(f"environment variable {dest.api_key_env} (the Supabase API key) is not set")
        return cls(rest_url_from_env(dest.rest_url_env, dest.url_env), key, dest.table,
                   http=HttpClient(**http_options))

    def upsert(self, rows: list[dict[str, Any]], key: str, batch_size: int) -> RestUpsertResult:
        """Upsert rows in batches (one request each); raises SupabaseError on the first refused batch."""
        columns = list(dict.fromkeys(c for row in rows for c in row))
        uniform = [{c: row.get(c) for c in columns} for row in rows]
        url = f"{self.rest_url}/{quote(self.table, safe='.')}"
        requests = 0
        for start in range(0, len(uniform), batch_size):
            batch = uniform[start:start + batch_size]
            try:
                self.http.post(url, params={"on_conflict": key}, headers={**self.headers, "Prefer": PREFER_UPSERT},
                               data=json.dumps(batch, allow_nan=False).encode())
            except HttpError as exc:
                raise SupabaseError(f"PostgREST refused rows {start + 1}-{start + len(batch)} of "
                                    f"{len(uniform)} for table {self.table}: {postgrest_error(exc)}") from exc
            requests += 1
        return RestUpsertResult(rows=len(uniform), requests=requests)


def postgrest_error(exc: HttpError) -> str:
    """PostgREST's error body (`code`, `message`, `details`, `hint`) in one line, with what to do for common ones."""
    try:
        body = json.loads(exc.body_excerpt) if exc.body_excerpt else None
    except ValueError:
        body = None
    if not isinstance(body, dict) or "message" not in body:
        return str(exc)
    text = f"HTTP {exc.status} {body.get('code')}: {body['message']}"
    text += "".join(f"; {k}: {body[k]}" for k in ("details", "hint") if body.get(k))
    if exc.status == 401:
        text += " (check the API key in the destination's api_key_env)"
    elif body.get("code") in ("42P01", "PGRST205"):
        text += " (create the table first: PostgREST does not create tables)"
    elif body.get("code") == "42P10":
        text += " (the table needs a primary key or unique index on the catalogue key)"
    return text


def frame_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A frame as JSON-ready rows: NaN as null, numpy values as Python, timestamps as ISO text."""
    return json.loads(frame.to_json(orient="records", date_format="iso", force_ascii=False))


def required_env(dest: Any) -> list[str]:
    """The variables a supabase destination cannot push without."""
    if dest.mode == "sql":
        return [n for n in (dest.url_env,) if n]
    return [n for n in (dest.rest_url_env or dest.url_env, dest.api_key_env) if n]
