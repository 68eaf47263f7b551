"""Google Sheets: the Sheets API v4 client and the two-way sync of one `kind: sheets` destination.

Why the project's `HttpClient` and not gspread: every request here is one of three calls (`spreadsheets.get`,
`spreadsheets.values.get` on the named range, one `spreadsheets.batchUpdate`), so gspread would add little; its URLs
are module constants (a local endpoint needs a session rewriting hosts) and it brings its own retry client, while
DESIGN §6 wants retries, backoff and secret redaction in one place. google-auth signs the service-account JWT
(`credentials.signer`, RS256); the token request itself (the JWT bearer grant, RFC 7523, to the key file's
`token_uri`) also goes through `HttpClient`, so the fake in tests answers it and a revoked key is reported with the
variable that names it.

A sync is pull, then push (see `claro_dagster.catalogue.sheet_sync` for the three-way diff):

1. read the spreadsheet's metadata (named ranges, sheets, protected ranges) and the named range's values
   (`UNFORMATTED_VALUE`, so numbers come back as numbers);
2. the header row must name the destination's columns, key first, else a clear error and nothing changes;
3. edits become one change set with source `sheets:<destination>` (validated, gated, conflicts for review);
4. one `batchUpdate` writes the rows that differ, resizes the range (insert/delete rows at its end, then
   `updateNamedRange`), and on the first sync creates the named range and protects the key column
   (`addProtectedRange`, `warningOnly: false`). Nothing differs: no `batchUpdate` at all.

The editor of a cell is not in the Sheets API (Drive's revisions give only the last editor of the whole file, and
need the Drive scope): a pulled change names the sheet and the cell, not the person.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from claro_dagster.catalogue.sheet_sync import (
    PullResult,
    SheetState,
    SheetSyncError,
    catalogue_texts,
    check_header,
    diff_sheet,
    next_state,
    sheet_text,
    target_rows,
    write_pull,
)
from claro_dagster.operations.read.common import column_letter

from .http import HttpClient, HttpError

SHEETS_URL = "https://sheets.googleapis.com/"
SCOPE = "https://www.googleapis.com/auth/spreadsheets"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


class SheetsError(SheetSyncError):
    """An answer of the Sheets API (or its token endpoint) a sync cannot go on with; the message says what to do."""


# ---------------------------------------------------------------------------------------------- the client
class SheetsClient:
    """The Sheets API v4 calls a sync makes, authorised with a service-account key (JWT bearer grant)."""

    def __init__(self, key: dict[str, Any], *, base_url: str = SHEETS_URL, credentials_env: str = "the key file",
                 http: HttpClient | None = None, clock: Callable[[], float] = time.time):
        from google.oauth2 import service_account

        self.key = key
        self.credentials_env = credentials_env
        try:
            self.credentials = service_account.Credentials.from_service_account_info(key, scopes=[SCOPE])
        except (ValueError, KeyError) as exc:
            raise SheetsError(f"the service-account key named by ${credentials_env} cannot be used ({exc}); download "
                              "a JSON key of the service account (IAM > Service accounts > Keys)") from None
        self.http = http or HttpClient(base_url, timeout=30, max_attempts=6, backoff_base=1.0, backoff_max=64)
        self.http.base_url = base_url
        self.clock = clock
        self._token: str | None = None
        self._expires = 0.0

    @classmethod
    def from_env(cls, credentials_env: str, endpoint_url_env: str | None = None, **kwargs: Any) -> SheetsClient:
        """The client for a destination, from the variables its spec names (read when a sync runs)."""
        path = os.environ.get(credentials_env or "")
        if not path:
            raise SheetsError(f"${credentials_env} is not set: set it to the path of the service account's JSON key "
                              "file (and share the spreadsheet with that account's e-mail address)")
        try:
            key = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SheetsError(f"${credentials_env} names {path}, which is not a readable JSON key file ({exc})") \
                from None
        base = os.environ.get(endpoint_url_env) if endpoint_url_env else None
        return cls(key, base_url=base or SHEETS_URL, credentials_env=credentials_env, **kwargs)

    # -- auth
    def token(self) -> str:
        if self._token and self.clock() < self._expires - 60:
            return self._token
        from google.auth import jwt

        issued = int(self.clock())
        token_uri = self.key.get("token_uri") or "https://oauth2.googleapis.com/token"
        assertion = jwt.encode(self.credentials.signer, {
            "iss": self.credentials.service_account_email, "scope": SCOPE, "aud": token_uri,
            "iat": issued, "exp": issued + 3600}).decode()
        response = self.http.post(token_uri, data={"grant_type": JWT_GRANT, "assertion": assertion},
                                  raise_for_status=False)
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {}
            what = body.get("error_description") or body.get("error") or f"HTTP {response.status_code}"
            raise SheetsError(f"the token endpoint refused the service-account key named by ${self.credentials_env} "
                              f"({self.credentials.service_account_email}): {what}. The key may be revoked or "
                              f"deleted: create a new key and point ${self.credentials_env} at it")
        body = response.json()
        self._token, self._expires = body["access_token"], self.clock() + float(body.get("expires_in", 3600))
        return self._token

    def _call(self, method: str, path: str, *, what: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self.http.request(method, path, headers={"Authorization": f"Bearer {self.token()}"},
                                         **kwargs)
        except HttpError as exc:
            if exc.status in (401, 403):
                raise SheetsError(f"{what}: Google refused access (HTTP {exc.status}): share the spreadsheet with "
                                  f"{self.credentials.service_account_email} as an editor, or check the key named "
                                  f"by ${self.credentials_env}") from None
            if exc.status == 404:
                raise SheetsError(f"{what}: not found (HTTP 404): check the destination's spreadsheet_id") from None
            if exc.status == 429:
                raise SheetsError(f"{what}: the Sheets API quota is spent, still after {exc.attempts} attempts "
                                  "with backoff; sync again later (quota: 60 requests per minute per user)") from None
            raise SheetsError(f"{what}: {exc}") from None
        return response.json()

    # -- API calls
    def spreadsheet(self, spreadsheet_id: str) -> dict[str, Any]:
        """`spreadsheets.get`: sheets (with protected ranges) and named ranges, no cell data."""
        return self._call("GET", f"v4/spreadsheets/{quote(spreadsheet_id, safe='')}", what=f"spreadsheet "
                          f"{spreadsheet_id}", params={"fields": "spreadsheetId,properties.title,namedRanges,"
                                                                 "sheets(properties,protectedRanges)"})

    def values(self, spreadsheet_id: str, range_name: str) -> list[list[Any]]:
        """`spreadsheets.values.get` of a range (A1 or a named range), unformatted, by rows."""
        path = f"v4/spreadsheets/{quote(spreadsheet_id, safe='')}/values/{quote(range_name, safe='')}"
        body = self._call("GET", path,
                          what=f"range {range_name!r} of spreadsheet {spreadsheet_id}",
                          params={"valueRenderOption": "UNFORMATTED_VALUE", "majorDimension": "ROWS",
                                  # a date a person typed comes back as text, not as a serial day number
                                  "dateTimeRenderOption": "FORMATTED_STRING"})
        return body.get("values", [])

    def batch_update(self, spreadsheet_id: str, requests: list[dict[str, Any]]) -> dict[str, Any]:
        """`spreadsheets.batchUpdate`: every request applied together, or none."""
        return self._call("POST", f"v4/spreadsheets/{quote(spreadsheet_id, safe='')}:batchUpdate",
                          what=f"update of spreadsheet {spreadsheet_id}",
                          json={"requests": requests, "includeSpreadsheetInResponse": False})


def client_from_env(dest: Any) -> SheetsClient:
    return SheetsClient.from_env(dest.credentials_env, dest.endpoint_url_env)


# ---------------------------------------------------------------------------------------------- A1 helpers
def cell_value(value: str | None, number: bool) -> dict[str, Any]:
    """A cell's `userEnteredValue` (numbers as numbers, so the sheet can sum them; text as text, never parsed)."""
    if value is None:
        return {}
    if number:
        try:
            return {"userEnteredValue": {"numberValue": float(value)}}
        except ValueError:
            pass
    return {"userEnteredValue": {"stringValue": value}}


# ---------------------------------------------------------------------------------------------- the sync
@dataclass
class SheetSyncResult:
    pulled: PullResult = field(default_factory=PullResult)
    conflicts: int = 0
    new_rows: int = 0
    deleted_rows: list[str] = field(default_factory=list)
    pending: int = 0
    problems: list[str] = field(default_factory=list)
    rows: int = 0  # data rows in the range after the sync
    rows_written: int = 0
    calls: int = 0  # batchUpdate calls (0 or 1)
    created_range: bool = False

    def summary(self) -> str:
        p = self.pulled
        return (f"pulled {p.applied} applied, {p.queued} queued for review ({self.conflicts} conflicts), "
                f"{len(p.invalid)} invalid; {self.new_rows} new rows, {len(self.deleted_rows)} rows deleted in the "
                f"sheet (not deleted from the catalogue); pushed {self.rows_written} rows")


def _locate(meta: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((r for r in meta.get("namedRanges", []) if r.get("name") == name), None)


def _sheet(meta: dict[str, Any], *, sheet_id: int | None = None, title: str | None = None) -> dict[str, Any] | None:
    for sheet in meta.get("sheets", []):
        props = sheet["properties"]
        if (sheet_id is not None and props.get("sheetId", 0) == sheet_id) or \
                (title is not None and props["title"] == title):
            return sheet
    return None


def sync_sheet(store: Any, destination: str, dest: Any, client: SheetsClient, *, run_id: str | None = None,
               validator: Callable[[str, str, str | None, bool], tuple[Any, str | None]] | None = None) \
        -> SheetSyncResult:
    """Pull then push one sheets destination (see the module doc). Raises `SheetsError` naming the spreadsheet and
    what to do when the range or its key column is gone; the catalogue is then untouched."""
    result = SheetSyncResult()
    catalogue = dest.catalogue
    cat = store.catalogue(catalogue)
    columns = list(dest.columns or [cat.key, *[a for a in cat.attributes if a != cat.key]])
    numbers = [cat.attributes[c].type == "number" for c in columns]
    where = f"spreadsheet {dest.spreadsheet_id} named range {dest.named_range!r}"
    states = SheetState(store)
    state = states.load(destination)
    # the range the stored state belongs to: when the spec names another one, the sync starts afresh there
    synced_to = json.dumps({"spreadsheet": dest.spreadsheet_id, "named_range": dest.named_range}, sort_keys=True)
    if (state.values or state.proposed) and store.get_cursor(_cursor(destination)) != synced_to:
        states.forget(destination)
        state = states.load(destination)
    meta = client.spreadsheet(dest.spreadsheet_id)
    named = _locate(meta, dest.named_range)
    if named is None:
        if state.values:
            others = [r.get("name") for r in meta.get("namedRanges", [])]
            raise SheetsError(
                f"{where}: the named range is gone (renamed or deleted; named ranges now: "
                f"{', '.join(map(repr, others)) or 'none'}). Rename it back to {dest.named_range!r} in Data > Named "
                "ranges and sync again (or name a new range in the spec's `named_range`: the next sync creates it); "
                "nothing was changed in the catalogue")
        sheet = (_sheet(meta, title=dest.worksheet) if dest.worksheet else
                 (meta.get("sheets") or [None])[0])
        if sheet is None:
            raise SheetsError(f"spreadsheet {dest.spreadsheet_id} has no tab {dest.worksheet!r} to create the named "
                              f"range on: add it, or change `worksheet` in the spec")
        sheet_id = sheet["properties"].get("sheetId", 0)
        grid = {"sheetId": sheet_id, "startRowIndex": 0, "endRowIndex": 1, "startColumnIndex": 0,
                "endColumnIndex": len(columns)}
        data: list[list[Any]] = []
        result.created_range = fresh = True
    else:
        grid = dict(named["range"])
        grid.setdefault("sheetId", 0)
        sheet = _sheet(meta, sheet_id=grid["sheetId"])
        values = client.values(dest.spreadsheet_id, dest.named_range)
        height = grid.get("endRowIndex", 0) - grid.get("startRowIndex", 0)
        header = values[0] if values else []
        fresh = not state.values and not any(h not in (None, "") for h in header)
        if not fresh:  # an empty range never synced gets its header below
            check_header(header, columns, where=where)
        data = [list(r) for r in values[1:]] + [[] for _ in range(max(0, height - len(values)))]
    start_row, start_col = grid.get("startRowIndex", 0), grid.get("startColumnIndex", 0)

    def records() -> dict[str, dict[str, str | None]]:
        return catalogue_texts(store.records(catalogue, filter=dest.filter, columns=columns), columns)

    def open_cells() -> set[tuple[str, str]]:
        from claro_dagster.catalogue.changes import OPEN
        from claro_dagster.catalogue.review import ReviewQueue

        # every undecided item, snoozed ones too: a snoozed edit is still waiting, not rejected
        return {(i.record, i.field) for i in ReviewQueue(store).list(catalogue=catalogue, status=OPEN,
                                                                     source=f"sheets:{destination}")}

    current = records()
    known = set(store.records(catalogue, columns=[cat.key])[cat.key].map(str))
    diff = diff_sheet(columns, data, state, current, known=known, open_cells=open_cells())
    result.problems, result.deleted_rows = diff.problems, diff.deleted
    result.conflicts, result.new_rows = len(diff.conflicts), len(diff.new_rows)

    def cell_ref(edit: Any) -> str:
        row = start_row + 2 + edit.row
        if edit.kind == "new":
            return str(row)
        return f"{column_letter(start_col + columns.index(edit.attribute))}{row}"

    if diff.edits:
        result.pulled = write_pull(store, diff, destination=destination, catalogue=catalogue,
                                   change_set_id=f"sheets:{destination}:{run_id or uuid.uuid4().hex}",
                                   confidence=dest.confidence, where=where, cell_ref=cell_ref, run_id=run_id,
                                   validate=validator or attribute_validator(store, catalogue))
        if result.pulled.applied:
            current = records()
    waiting = open_cells()
    result.pending = len(waiting)
    rows = target_rows(columns, diff, current, waiting)
    result.rows = len(rows)
    # -- push: one batchUpdate with the rows that differ and the range's new size
    old_height = len(data)
    changed = [(i, row) for i, row in enumerate(rows) if i >= old_height or _texts(data[i], len(columns)) != row]
    grow = len(rows) - old_height
    sheet_id = grid["sheetId"]
    below = start_row + 1 + old_height  # the first row below the range
    batch: list[dict[str, Any]] = []
    if grow > 0:  # rows inserted (not just written) below the range, so nothing under it is overwritten
        batch.append({"insertDimension": {"range": {"sheetId": sheet_id, "dimension": "ROWS", "startIndex": below,
                                                    "endIndex": below + grow}, "inheritFromBefore": True}})
    elif grow < 0:
        batch.append({"deleteDimension": {"range": {"sheetId": sheet_id, "dimension": "ROWS",
                                                    "startIndex": below + grow, "endIndex": below}}})
    width = (sheet or {}).get("properties", {}).get("gridProperties", {}).get("columnCount")
    if width is not None and width < start_col + len(columns):
        batch.insert(0, {"appendDimension": {"sheetId": sheet_id, "dimension": "COLUMNS",
                                             "length": start_col + len(columns) - width}})
    if fresh:
        batch.append(_update_cells(sheet_id, start_row, start_col, [[_header(c) for c in columns]]))
    blocks: list[list[tuple[int, list[str | None]]]] = []
    for i, row in changed:  # consecutive changed rows are one updateCells
        if blocks and blocks[-1][-1][0] == i - 1:
            blocks[-1].append((i, row))
        else:
            blocks.append([(i, row)])
    for block in blocks:
        batch.append(_update_cells(sheet_id, start_row + 1 + block[0][0], start_col,
                                   [[cell_value(v, n) for v, n in zip(r, numbers, strict=True)] for _, r in block]))
    result.rows_written = len(changed)
    new_range = {"sheetId": sheet_id, "startRowIndex": start_row, "endRowIndex": start_row + 1 + len(rows),
                 "startColumnIndex": start_col, "endColumnIndex": start_col + len(columns)}
    if named is None:
        batch.append({"addNamedRange": {"namedRange": {"name": dest.named_range, "range": new_range}}})
    elif grow or named["range"].get("endColumnIndex") != new_range["endColumnIndex"]:
        batch.append({"updateNamedRange": {"namedRange": {"namedRangeId": named["namedRangeId"],
                                                          "name": dest.named_range, "range": new_range},
                                           "fields": "range"}})
    note = _protect_note(destination)
    if not any(p.get("description") == note for p in (sheet or {}).get("protectedRanges", [])):
        batch.append({"addProtectedRange": {"protectedRange": {
            "range": {"sheetId": sheet_id, "startColumnIndex": start_col, "endColumnIndex": start_col + 1},
            "description": note, "warningOnly": False}}})
    if batch:
        client.batch_update(dest.spreadsheet_id, batch)
        result.calls = 1
    states.save(destination, state, next_state(columns, state, rows, result.pulled.proposed, waiting))
    store.set_cursor(_cursor(destination), synced_to)
    return result


def _cursor(destination: str) -> str:
    """The store cursor naming the spreadsheet and named range a sheets destination's stored state belongs to."""
    return f"sheets:{destination}"


def _texts(raw: Sequence[Any], width: int) -> list[str | None]:
    return [sheet_text(v) for v in raw[:width]] + [None] * max(0, width - len(raw))


def _header(name: str) -> dict[str, Any]:
    return {"userEnteredValue": {"stringValue": name}}


def _update_cells(sheet_id: int, row: int, column: int, rows: list[list[dict[str, Any]]]) -> dict[str, Any]:
    return {"updateCells": {"start": {"sheetId": sheet_id, "rowIndex": row, "columnIndex": column},
                            "rows": [{"values": r} for r in rows], "fields": "userEnteredValue"}}


def _protect_note(destination: str) -> str:
    return f"claro: the key column of destination {destination} (records are matched by it)"


def attribute_validator(store: Any, catalogue: str) -> Callable[[str, str, str | None, bool], tuple[Any, str | None]]:
    """Validate one sheet value by the attribute's rules (as a supplier file's would be): (normalized, None) or
    (None, reason). References must name a record of their target catalogue."""
    from claro_dagster.operations.values import AttributeRules

    cat = store.catalogue(catalogue)
    rules = {name: AttributeRules(name, attr) for name, attr in cat.attributes.items()}

    def validate(record: str, attribute: str, text: str | None, whole_row: bool) -> tuple[Any, str | None]:
        attr = cat.attributes[attribute]
        if text is None:
            return (None, "required value is missing") if attr.required else (None, None)
        value, _change, problem, blank = rules[attribute].evaluate(text)
        if problem:
            return None, problem
        if blank:
            return (None, "required value is missing") if attr.required else (None, None)
        if attr.type == "reference" and attr.target and store.record(attr.target, value) is None:
            return None, f"{value!r} is not a key in catalogue {attr.target!r}"
        return value, None

    return validate


def required_env(dest: Any) -> list[str]:
    return [dest.credentials_env] if dest.credentials_env else []


def missing_env(dest: Any) -> str | None:
    return next((n for n in required_env(dest) if not os.environ.get(n)), None)


__all__ = ["SheetSyncResult", "SheetsClient", "SheetsError", "client_from_env", "column_letter", "sync_sheet"]

