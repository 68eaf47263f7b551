"""A local Google Sheets API v4 (and OAuth token endpoint) for tests, checked against Google's discovery document.

Follows `tests/contracts/google/sheets.v4.json` (Sheets API v4 discovery document, revision 20261019): every request
is matched to a method of the document by HTTP method and path template, its query parameters checked against the
method's and the document's global parameters (names, repetition, enums, types), and its body against the
method's request schema, generically (`$ref`s resolved, unknown properties refused, types and enums checked). A
request that breaks the contract is answered 400 and kept in `contract_errors`.

Behaviour, as the Sheets API documents it (developers.google.com/sheets/api):
- A1 ranges (`Sheet1!A1:C5`, `A1:C5` on the first sheet) and named ranges in `values.get`; values come back by
  rows, trailing empty cells and rows omitted, numbers as numbers with `UNFORMATTED_VALUE`;
- `spreadsheets.batchUpdate` is atomic (all requests or none): addNamedRange, updateNamedRange, deleteNamedRange,
  updateCells (a `fields` mask is required; writing outside the grid is an error), insertDimension,
  deleteDimension, appendDimension, addProtectedRange. Named and protected ranges move and grow or shrink with
  inserted and deleted rows and columns (rows inserted at a range's end do not extend it);
- GridRange fields equal to 0 are omitted from answers (proto3 JSON), as Google's are;
- the JWT bearer grant (RFC 7523) at `/token`: the assertion's RS256 signature is checked with the test key's
  public half; a revoked key gets `invalid_grant`; API calls need the issued bearer token;
- `throttle(n)`: the next n API calls get 429 RESOURCE_EXHAUSTED (the per-minute quota), as Google answers.

People are simulated with `edit`, `insert_row`, `delete_row`, `delete_column`, `rename_named_range`: each keeps
the editor's name in `edits`, and none checks protection (an owner may delete a protected column).
"""

from __future__ import annotations

import copy
import json
import re
import secrets
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

sys.path.insert(0, str(Path(__file__).parent))

from http_fakes import RecordingServer, Request  # noqa: E402

DISCOVERY = Path(__file__).parent / "contracts" / "google" / "sheets.v4.json"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


class ContractError(ValueError):
    pass


class ApiError(Exception):
    def __init__(self, code: int, message: str, status: str = "INVALID_ARGUMENT"):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


# ---------------------------------------------------------------------------------------------- the contract
class Discovery:
    """The methods and schemas of a Google discovery document, and generic checks of requests against them."""

    def __init__(self, path: Path = DISCOVERY):
        self.doc = json.loads(path.read_text(encoding="utf-8"))
        self.schemas = self.doc["schemas"]
        self.methods: list[tuple[str, re.Pattern, dict[str, Any]]] = []

        def walk(resource: dict[str, Any]) -> None:
            for method in resource.get("methods", {}).values():
                pattern = re.sub(r"\{\+?(\w+)\}", lambda m: f"(?P<{m.group(1)}>[^/]+?)", re.escape(method["path"])
                                 .replace(r"\{", "{").replace(r"\}", "}").replace(r"\+", "+"))
                self.methods.append((method["httpMethod"], re.compile(pattern + "$"), method))
            for sub in resource.get("resources", {}).values():
                walk(sub)

        walk(self.doc)
        # the most literal template first: `{spreadsheetId}` must not swallow `:batchUpdate`
        self.methods.sort(key=lambda m: -len(re.sub(r"\{[^}]+\}", "", m[2]["path"])))

    def match(self, http_method: str, path: str) -> tuple[dict[str, Any], dict[str, str]]:
        relative = path.lstrip("/")
        for verb, pattern, method in self.methods:
            found = pattern.match(relative)
            if verb == http_method and found:
                return method, {k: unquote(v) for k, v in found.groupdict().items()}
        raise ContractError(f"{http_method} /{relative} is no method of the Sheets v4 discovery document")

    def check_query(self, method: dict[str, Any], query: list[tuple[str, str]]) -> None:
        params = {**self.doc.get("parameters", {}),
                  **{k: v for k, v in method.get("parameters", {}).items() if v.get("location") == "query"}}
        seen: dict[str, int] = {}
        for name, value in query:
            if name not in params:
                raise ContractError(f"{method['id']}: unknown query parameter {name!r}")
            spec = params[name]
            seen[name] = seen.get(name, 0) + 1
            if seen[name] > 1 and not spec.get("repeated"):
                raise ContractError(f"{method['id']}: {name!r} given twice but is not repeated")
            if "enum" in spec and value not in spec["enum"]:
                raise ContractError(f"{method['id']}: {name}={value!r} is not one of {spec['enum']}")
            if spec.get("type") == "boolean" and value not in ("true", "false"):
                raise ContractError(f"{method['id']}: {name}={value!r} is not a boolean")
            if spec.get("type") == "integer" and not re.fullmatch(r"-?\d+", value):
                raise ContractError(f"{method['id']}: {name}={value!r} is not an integer")
        for name, spec in params.items():
            if spec.get("required") and spec.get("location") == "query" and name not in seen:
                raise ContractError(f"{method['id']}: required query parameter {name!r} is missing")

    def check_body(self, method: dict[str, Any], body: Any) -> None:
        request = method.get("request")
        if request is None:
            if body not in (None, b"", ""):
                raise ContractError(f"{method['id']} takes no request body")
            return
        self.check(body, request, method["id"])

    def check(self, value: Any, schema: dict[str, Any], where: str) -> None:
        if "$ref" in schema:
            schema = self.schemas[schema["$ref"]]
        kind = schema.get("type")
        if kind == "object":
            if not isinstance(value, dict):
                raise ContractError(f"{where}: expected an object, got {type(value).__name__}")
            props = schema.get("properties", {})
            extra = schema.get("additionalProperties")
            for name, item in value.items():
                if name in props:
                    self.check(item, props[name], f"{where}.{name}")
                elif extra is not None:
                    self.check(item, extra, f"{where}.{name}")
                else:
                    raise ContractError(f"{where}: unknown field {name!r} (known: {', '.join(sorted(props))})")
        elif kind == "array":
            if not isinstance(value, list):
                raise ContractError(f"{where}: expected an array")
            for i, item in enumerate(value):
                self.check(item, schema.get("items", {}), f"{where}[{i}]")
        elif kind == "string":
            if schema.get("format") in ("int64", "uint64") and isinstance(value, int):
                return
            if not isinstance(value, str):
                raise ContractError(f"{where}: expected a string, got {value!r}")
            if "enum" in schema and value not in schema["enum"]:
                raise ContractError(f"{where}: {value!r} is not one of {schema['enum']}")
        elif kind == "integer":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ContractError(f"{where}: expected an integer, got {value!r}")
        elif kind == "number":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ContractError(f"{where}: expected a number, got {value!r}")
        elif kind == "boolean":
            if not isinstance(value, bool):
                raise ContractError(f"{where}: expected a boolean, got {value!r}")
        # "any" and untyped schemas take anything


# ---------------------------------------------------------------------------------------------- the model
def column_index(letters: str) -> int:
    n = 0
    for ch in letters.upper():
        n = n * 26 + ord(ch) - 64
    return n - 1


def column_letter(index: int) -> str:
    letters, index = "", index + 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


class Sheet:
    def __init__(self, sheet_id: int, title: str, rows: int = 1000, columns: int = 26):
        self.sheet_id, self.title = sheet_id, title
        self.row_count, self.column_count = rows, columns
        self.cells: list[list[Any]] = []  # only the rows that hold something (or did)
        self.protected: list[dict[str, Any]] = []

    def get(self, row: int, col: int) -> Any:
        if row < len(self.cells) and col < len(self.cells[row]):
            return self.cells[row][col]
        return None

    def put(self, row: int, col: int, value: Any) -> None:
        while len(self.cells) <= row:
            self.cells.append([])
        line = self.cells[row]
        while len(line) <= col:
            line.append(None)
        line[col] = value


class Spreadsheet:
    def __init__(self, spreadsheet_id: str, title: str, tabs: list[str]):
        self.id, self.title = spreadsheet_id, title
        self.sheets = [Sheet(i * 1000, t) for i, t in enumerate(tabs)]
        self.named: dict[str, dict[str, Any]] = {}  # namedRangeId -> {name, range}

    def sheet(self, sheet_id: int | None = None, title: str | None = None) -> Sheet:
        for s in self.sheets:
            if (title is not None and s.title == title) or (title is None and s.sheet_id == (sheet_id or 0)):
                return s
        raise ApiError(400, f"No grid with id: {sheet_id}" if title is None else f"Unable to parse range: {title}")

    def named_range(self, name: str) -> dict[str, Any] | None:
        return next((r for r in self.named.values() if r["name"] == name), None)


def _strip_zero(grid: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in grid.items() if v != 0}


class FakeSheets:
    """The Sheets API and the token endpoint on one loopback port (see the module doc)."""

    def __init__(self, public_key_pem: bytes | None = None):
        self.discovery = Discovery()
        self.public_key_pem = public_key_pem
        self.spreadsheets: dict[str, Spreadsheet] = {}
        self.contract_errors: list[str] = []
        self.calls: list[str] = []  # method ids, in order (token requests as "token")
        self.batch_updates: list[list[dict[str, Any]]] = []
        self.edits: list[dict[str, Any]] = []
        self.tokens: set[str] = set()
        self.revoked = False
        self._throttle = 0
        self._ids = 0
        self.lock = threading.RLock()
        self.server = RecordingServer(self._handle)

    # -- lifecycle
    @property
    def url(self) -> str:
        return self.server.url + "/"

    @property
    def token_uri(self) -> str:
        return self.server.url + "/token"

    def close(self) -> None:
        self.server.close()

    def __enter__(self) -> FakeSheets:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create(self, spreadsheet_id: str = "sheet-1", title: str = "Catalogue", tabs: tuple[str, ...] = ("Products",)) \
            -> Spreadsheet:
        with self.lock:
            self.spreadsheets[spreadsheet_id] = Spreadsheet(spreadsheet_id, title, list(tabs))
            return self.spreadsheets[spreadsheet_id]

    def throttle(self, calls: int) -> None:
        """The next `calls` API calls are answered 429, as when the per-minute quota is spent."""
        self._throttle = calls

    # -- reading back, as a test does
    def range_values(self, name: str, spreadsheet_id: str = "sheet-1") -> list[list[Any]]:
        """Every cell of a named range (None for empty), header row first."""
        with self.lock:
            book = self.spreadsheets[spreadsheet_id]
            named = book.named_range(name)
            assert named is not None, f"no named range {name!r}"
            r = named["range"]
            sheet = book.sheet(r.get("sheetId", 0))
            return [[sheet.get(i, j) for j in range(r["startColumnIndex"], r["endColumnIndex"])]
                    for i in range(r["startRowIndex"], r["endRowIndex"])]

    def records(self, name: str, spreadsheet_id: str = "sheet-1") -> dict[str, dict[str, Any]]:
        """The named range as key -> column -> value (the header row names the columns, the first is the key)."""
        rows = self.range_values(name, spreadsheet_id)
        header = rows[0]
        return {row[0]: dict(zip(header, row, strict=True)) for row in rows[1:] if row[0] is not None}

    # -- a person at work
    def _locate(self, name: str, key: Any, column: str | None, spreadsheet_id: str) -> tuple[Sheet, int, int]:
        book = self.spreadsheets[spreadsheet_id]
        r = book.named_range(name)["range"]
        sheet = book.sheet(r.get("sheetId", 0))
        header = [sheet.get(r["startRowIndex"], j) for j in range(r["startColumnIndex"], r["endColumnIndex"])]
        col = r["startColumnIndex"] + header.index(column) if column is not None else r["startColumnIndex"]
        for i in range(r["startRowIndex"] + 1, r["endRowIndex"]):
            if sheet.get(i, r["startColumnIndex"]) == key:
                return sheet, i, col
        raise KeyError(f"no row with key {key!r} in {name}")

    def edit(self, name: str, key: Any, column: str, value: Any, editor: str = "mei@example.com",
             spreadsheet_id: str = "sheet-1") -> None:
        """A person types `value` into the cell of row `key`, column `column` of the named range."""
        with self.lock:
            sheet, row, col = self._locate(name, key, column, spreadsheet_id)
            sheet.put(row, col, value)
            self.edits.append({"editor": editor, "cell": f"{sheet.title}!{column_letter(col)}{row + 1}",
                               "value": value})

    def insert_row(self, name: str, values: list[Any], editor: str = "mei@example.com",
                   spreadsheet_id: str = "sheet-1") -> None:
        """A person inserts a row above the range's last row (inside it, so the range grows) and fills it in."""
        with self.lock:
            book = self.spreadsheets[spreadsheet_id]
            r = book.named_range(name)["range"]
            at = r["endRowIndex"] - 1
            self._insert(book, book.sheet(r.get("sheetId", 0)), "ROWS", at, at + 1)
            sheet = book.sheet(r.get("sheetId", 0))
            for j, v in enumerate(values):
                sheet.put(at, r["startColumnIndex"] + j, v)
            self.edits.append({"editor": editor, "inserted_row": at + 1, "values": values})

    def delete_row(self, name: str, key: Any, editor: str = "mei@example.com", spreadsheet_id: str = "sheet-1") -> None:
        with self.lock:
            book = self.spreadsheets[spreadsheet_id]
            sheet, row, _ = self._locate(name, key, None, spreadsheet_id)
            self._delete(book, sheet, "ROWS", row, row + 1)
            self.edits.append({"editor": editor, "deleted_row": row + 1, "key": key})

    def delete_column(self, name: str, column: str, editor: str = "owner@example.com",
                      spreadsheet_id: str = "sheet-1") -> None:
        with self.lock:
            book = self.spreadsheets[spreadsheet_id]
            r = book.named_range(name)["range"]
            sheet = book.sheet(r.get("sheetId", 0))
            header = [sheet.get(r["startRowIndex"], j) for j in range(r["startColumnIndex"], r["endColumnIndex"])]
            col = r["startColumnIndex"] + header.index(column)
            self._delete(book, sheet, "COLUMNS", col, col + 1)
            self.edits.append({"editor": editor, "deleted_column": column})

    def rename_named_range(self, old: str, new: str, spreadsheet_id: str = "sheet-1") -> None:
        with self.lock:
            self.spreadsheets[spreadsheet_id].named_range(old)["name"] = new

    # -- HTTP
    def _handle(self, request: Request):
        with self.lock:
            try:
                return self._dispatch(request)
            except ContractError as exc:
                self.contract_errors.append(str(exc))
                return _error(400, f"contract: {exc}")
            except ApiError as exc:
                return _error(exc.code, exc.message, exc.status)

    def _dispatch(self, request: Request):
        parts = urlsplit(request.path)
        if parts.path == "/token":
            return self._token(request)
        method, path_params = self.discovery.match(request.method, parts.path)
        query = parse_qsl(parts.query, keep_blank_values=True)
        self.discovery.check_query(method, query)
        body = json.loads(request.body) if request.body else None
        self.discovery.check_body(method, body)
        self.calls.append(method["id"])
        auth = request.headers.get("Authorization") or request.headers.get("authorization") or ""
        if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
            raise ApiError(401, "Request had invalid authentication credentials.", "UNAUTHENTICATED")
        if self._throttle:
            self._throttle -= 1
            return _error(429, "Quota exceeded for quota metric 'Read requests' and limit 'Read requests per "
                               "minute per user'", "RESOURCE_EXHAUSTED")
        book = self.spreadsheets.get(path_params.get("spreadsheetId", ""))
        if book is None:
            raise ApiError(404, "Requested entity was not found.", "NOT_FOUND")
        params = dict(query)
        if method["id"] == "sheets.spreadsheets.get":
            return 200, {}, self._describe(book)
        if method["id"] == "sheets.spreadsheets.values.get":
            return 200, {}, self._values(book, path_params["range"], params)
        if method["id"] == "sheets.spreadsheets.batchUpdate":
            return 200, {}, self._batch_update(book, body)
        raise ApiError(501, f"{method['id']} is in the contract but this fake does not implement it",
                       "UNIMPLEMENTED")

    def _token(self, request: Request):
        self.calls.append("token")
        form = dict(parse_qsl(request.body.decode()))
        if form.get("grant_type") != JWT_GRANT or "assertion" not in form:
            return 400, {}, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type"}
        if self.public_key_pem is not None:
            from google.auth import jwt

            try:
                claims = jwt.decode(form["assertion"], certs=self.public_key_pem.decode(), audience=self.token_uri)
            except ValueError as exc:
                return 400, {}, {"error": "invalid_grant", "error_description": f"Invalid JWT: {exc}"}
            if "spreadsheets" not in claims.get("scope", ""):
                return 400, {}, {"error": "invalid_scope", "error_description": "no Sheets scope"}
        if self.revoked:
            return 400, {}, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        token = "ya29." + secrets.token_urlsafe(16)
        self.tokens.add(token)
        return 200, {}, {"access_token": token, "token_type": "Bearer", "expires_in": 3599}

    def _describe(self, book: Spreadsheet) -> dict[str, Any]:
        return {"spreadsheetId": book.id, "properties": {"title": book.title},
                "sheets": [{"properties": {**_strip_zero({"sheetId": s.sheet_id, "index": i}), "title": s.title,
                                           "sheetType": "GRID",
                                           "gridProperties": {"rowCount": s.row_count, "columnCount": s.column_count}},
                            **({"protectedRanges": [{**p, "range": _strip_zero(p["range"])} for p in s.protected]}
                               if s.protected else {})}
                           for i, s in enumerate(book.sheets)],
                "namedRanges": [{"namedRangeId": rid, "name": r["name"], "range": _strip_zero(r["range"])}
                                for rid, r in book.named.items()]}

    def _resolve(self, book: Spreadsheet, a1: str) -> tuple[Sheet, int, int, int, int]:
        named = book.named_range(a1)
        if named is not None:
            r = named["range"]
            return (book.sheet(r.get("sheetId", 0)), r["startRowIndex"], r["endRowIndex"], r["startColumnIndex"],
                    r["endColumnIndex"])
        title, _, cells = a1.rpartition("!")
        sheet = book.sheet(title=title.strip("'")) if title else book.sheets[0]
        m = re.fullmatch(r"([A-Z]+)(\d+)(?::([A-Z]+)(\d+))?", cells)
        if not m:
            raise ApiError(400, f"Unable to parse range: {a1}")
        c0, r0 = column_index(m.group(1)), int(m.group(2)) - 1
        c1, r1 = (column_index(m.group(3)), int(m.group(4)) - 1) if m.group(3) else (c0, r0)
        return sheet, r0, r1 + 1, c0, c1 + 1

    def _values(self, book: Spreadsheet, a1: str, params: dict[str, str]) -> dict[str, Any]:
        sheet, r0, r1, c0, c1 = self._resolve(book, a1)
        formatted = params.get("valueRenderOption", "FORMATTED_VALUE") == "FORMATTED_VALUE"
        rows = []
        for i in range(r0, r1):
            row = [sheet.get(i, j) for j in range(c0, c1)]
            while row and row[-1] is None:
                row.pop()
            row = ["" if v is None else (_formatted(v) if formatted else v) for v in row]
            rows.append(row)
        while rows and not rows[-1]:
            rows.pop()
        out = {"range": f"{sheet.title}!{column_letter(c0)}{r0 + 1}:{column_letter(c1 - 1)}{r1}",
               "majorDimension": params.get("majorDimension", "ROWS")}
        if rows:
            out["values"] = rows
        return out

    def _batch_update(self, book: Spreadsheet, body: dict[str, Any]) -> dict[str, Any]:
        work = copy.deepcopy(book)  # all or nothing
        replies = []
        requests = body.get("requests", [])
        for i, request in enumerate(requests):
            if len(request) != 1:
                raise ApiError(400, f"Invalid requests[{i}]: exactly one kind of request must be set")
            (kind, spec), = request.items()
            handler = getattr(self, f"_r_{kind}", None)
            if handler is None:
                raise ApiError(501, f"requests[{i}].{kind} is in the contract but this fake does not implement it",
                               "UNIMPLEMENTED")
            try:
                replies.append(handler(work, spec) or {})
            except ApiError as exc:
                raise ApiError(exc.code, f"Invalid requests[{i}].{kind}: {exc.message}") from None
        self.spreadsheets[book.id] = work
        self.batch_updates.append(requests)
        return {"spreadsheetId": book.id, "replies": replies}

    # -- batchUpdate requests
    def _next_id(self) -> str:
        self._ids += 1
        return f"nr{self._ids:06d}"

    def _r_addNamedRange(self, book: Spreadsheet, spec: dict[str, Any]) -> dict[str, Any]:
        named = spec["namedRange"]
        name = named.get("name", "")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", name) or re.fullmatch(r"[A-Za-z]{1,3}\d+", name):
            raise ApiError(400, f"Invalid name for a named range: {name!r}")
        if book.named_range(name) is not None:
            raise ApiError(400, f"A named range with name {name!r} already exists.")
        rid = named.get("namedRangeId") or self._next_id()
        book.named[rid] = {"name": name, "range": self._grid(book, named["range"])}
        return {"addNamedRange": {"namedRange": {"namedRangeId": rid, "name": name,
                                                 "range": _strip_zero(book.named[rid]["range"])}}}

    def _r_updateNamedRange(self, book: Spreadsheet, spec: dict[str, Any]) -> None:
        named = spec["namedRange"]
        fields = spec.get("fields")
        if not fields:
            raise ApiError(400, "At least one field must be specified in 'fields'.")
        target = book.named.get(named.get("namedRangeId", ""))
        if target is None:
            raise ApiError(400, f"No named range with id {named.get('namedRangeId')!r}")
        for name in (fields.split(",") if fields != "*" else ["name", "range"]):
            if name == "range":
                target["range"] = self._grid(book, named["range"])
            elif name == "name":
                target["name"] = named["name"]

    def _r_deleteNamedRange(self, book: Spreadsheet, spec: dict[str, Any]) -> None:
        if book.named.pop(spec.get("namedRangeId", ""), None) is None:
            raise ApiError(400, f"No named range with id {spec.get('namedRangeId')!r}")

    def _r_addProtectedRange(self, book: Spreadsheet, spec: dict[str, Any]) -> dict[str, Any]:
        protected = dict(spec["protectedRange"])
        sheet = book.sheet(protected["range"].get("sheetId", 0))
        protected["protectedRangeId"] = len(sheet.protected) + 1
        protected["range"] = {"sheetId": sheet.sheet_id, **protected["range"]}
        protected.setdefault("warningOnly", False)
        protected["requestingUserCanEdit"] = True
        sheet.protected.append(protected)
        return {"addProtectedRange": {"protectedRange": protected}}

    def _r_updateCells(self, book: Spreadsheet, spec: dict[str, Any]) -> None:
        if not spec.get("fields"):
            raise ApiError(400, "At least one field must be specified in 'fields'.")
        if "start" not in spec:
            raise ApiError(400, "updateCells needs 'start' (this fake does not implement 'range')")
        start = spec["start"]
        sheet = book.sheet(start.get("sheetId", 0))
        r0, c0 = start.get("rowIndex", 0), start.get("columnIndex", 0)
        rows = spec.get("rows", [])
        if r0 + len(rows) > sheet.row_count:
            raise ApiError(400, f"GridCoordinate.rowIndex[{r0 + len(rows) - 1}] is after last row in grid"
                                f"[{sheet.row_count - 1}]")
        for i, row in enumerate(rows):
            values = row.get("values", [])
            if c0 + len(values) > sheet.column_count:
                raise ApiError(400, "GridCoordinate.columnIndex is after last column in grid")
            for j, cell in enumerate(values):
                if "userEnteredValue" in spec["fields"]:
                    sheet.put(r0 + i, c0 + j, _entered(cell.get("userEnteredValue")))

    def _r_insertDimension(self, book: Spreadsheet, spec: dict[str, Any]) -> None:
        r = spec["range"]
        sheet = book.sheet(r.get("sheetId", 0))
        start, end = r.get("startIndex", 0), r.get("endIndex", 0)
        size = sheet.row_count if r["dimension"] == "ROWS" else sheet.column_count
        if not 0 <= start < end or start > size:
            raise ApiError(400, f"Invalid dimension range [{start}, {end})")
        if spec.get("inheritFromBefore") and start == 0:
            raise ApiError(400, "Cannot inherit from before the first row or column")
        self._insert(book, sheet, r["dimension"], start, end)

    def _r_deleteDimension(self, book: Spreadsheet, spec: dict[str, Any]) -> None:
        r = spec["range"]
        sheet = book.sheet(r.get("sheetId", 0))
        start, end = r.get("startIndex", 0), r.get("endIndex", 0)
        size = sheet.row_count if r["dimension"] == "ROWS" else sheet.column_count
        if not 0 <= start < end <= size:
            raise ApiError(400, f"Invalid dimension range [{start}, {end}) of a grid of {size}")
        if end - start == size:
            raise ApiError(400, "You can't delete all the rows on the sheet." if r["dimension"] == "ROWS"
                           else "You can't delete all the columns on the sheet.")
        self._delete(book, sheet, r["dimension"], start, end)

    def _r_appendDimension(self, book: Spreadsheet, spec: dict[str, Any]) -> None:
        sheet = book.sheet(spec.get("sheetId", 0))
        if spec["dimension"] == "ROWS":
            sheet.row_count += spec["length"]
        else:
            sheet.column_count += spec["length"]

    # -- moving rows and columns, with the ranges that refer to them
    def _grid(self, book: Spreadsheet, grid: dict[str, Any]) -> dict[str, Any]:
        sheet = book.sheet(grid.get("sheetId", 0))
        out = {"sheetId": sheet.sheet_id, "startRowIndex": grid.get("startRowIndex", 0),
               "endRowIndex": grid.get("endRowIndex", sheet.row_count),
               "startColumnIndex": grid.get("startColumnIndex", 0),
               "endColumnIndex": grid.get("endColumnIndex", sheet.column_count)}
        if out["endRowIndex"] > sheet.row_count or out["endColumnIndex"] > sheet.column_count:
            raise ApiError(400, f"Range ({sheet.title}!{out}) exceeds grid limits. Max rows: {sheet.row_count}, "
                                f"max columns: {sheet.column_count}")
        return out

    def _ranges(self, book: Spreadsheet, sheet: Sheet) -> list[dict[str, Any]]:
        return ([r["range"] for r in book.named.values() if r["range"]["sheetId"] == sheet.sheet_id]
                + [p["range"] for p in sheet.protected])

    def _insert(self, book: Spreadsheet, sheet: Sheet, dimension: str, start: int, end: int) -> None:
        n = end - start
        rows = dimension == "ROWS"
        if rows:
            sheet.row_count += n
            if start < len(sheet.cells):
                sheet.cells[start:start] = [[] for _ in range(n)]
        else:
            sheet.column_count += n
            for line in sheet.cells:
                if start < len(line):
                    line[start:start] = [None] * n
        lo, hi = ("startRowIndex", "endRowIndex") if rows else ("startColumnIndex", "endColumnIndex")
        for r in self._ranges(book, sheet):
            if lo not in r:
                continue  # unbounded in this dimension
            if r[lo] >= start:
                r[lo] += n
                r[hi] += n
            elif r[hi] > start:  # inserted strictly inside: the range grows; at its end it does not
                r[hi] += n

    def _delete(self, book: Spreadsheet, sheet: Sheet, dimension: str, start: int, end: int) -> None:
        n = end - start
        rows = dimension == "ROWS"
        if rows:
            sheet.row_count -= n
            del sheet.cells[start:end]
        else:
            sheet.column_count -= n
            for line in sheet.cells:
                del line[start:end]
        lo, hi = ("startRowIndex", "endRowIndex") if rows else ("startColumnIndex", "endColumnIndex")
        for r in self._ranges(book, sheet):
            if lo not in r:
                continue

            def moved(i: int) -> int:
                return i if i <= start else max(start, i - n)

            r[lo], r[hi] = moved(r[lo]), moved(r[hi])


def _entered(value: dict[str, Any] | None) -> Any:
    if not value:
        return None
    if "numberValue" in value:
        number = value["numberValue"]
        return int(number) if float(number).is_integer() else number
    if "stringValue" in value:
        return value["stringValue"]
    if "boolValue" in value:
        return value["boolValue"]
    raise ApiError(501, f"this fake does not evaluate {sorted(value)}", "UNIMPLEMENTED")


def _formatted(value: Any) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    return str(value)


def _error(code: int, message: str, status: str = "INVALID_ARGUMENT"):
    return code, {}, {"error": {"code": code, "message": message, "status": status}}


def service_account_key(tmp_path: Path, token_uri: str) -> tuple[Path, bytes]:
    """A fresh RSA service-account key file (as Google issues them) with its token_uri at the fake; returns the path
    and the public key (PEM) the fake checks assertions with."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    path = tmp_path / "service-account.json"
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "claro-test", "private_key_id": secrets.token_hex(20),
        "private_key": private, "client_email": "claro-sync@claro-test.iam.gserviceaccount.com",
        "client_id": "1234567890", "auth_uri": "https://accounts.google.com/o/oauth2/auth", "token_uri": token_uri,
    }), encoding="utf-8")
    return path, public
