"""A local Google Drive v3 (and Google OAuth token endpoint) checking every request against Drive's discovery document.

Follows `tests/contracts/google/drive.v3.json` (revision 20261106). Every request to `/drive/v3/...` is matched
to a method of the document by HTTP method and path template; its required parameters must be present, every
query parameter must be one the method or the API declares (an unknown one is a 400 and a contract error),
booleans must be true/false, integers within the declared bounds, enum parameters one of their values. The
check is generic: it is built from the document, not from the calls the connector happens to make.

Behaviour, as Drive documents it:
- changes.getStartPageToken / changes.list: a token is a position in the change log; a page holds at most
  `page_size` changes (small, so paging is exercised) and ends in `nextPageToken`, or in `newStartPageToken`
  once caught up. Each change carries the file's current state (trashed files included), `removed: true`
  without a file when it was deleted. Files of a shared drive appear only with `driveId` and
  `supportsAllDrives=true` (and `includeItemsFromAllDrives=true` for the feed and listings).
- files.list understands the query `'<folder>' in parents and trashed=false` (any other `q` is a 400).
- `fields` selects the response's fields (nested `a,b(c,d)` syntax); without it a file has only kind, id,
  name and mimeType, as in Drive v3.
- files.get `alt=media` serves a stored file's bytes (a Google Sheet: 403 fileNotDownloadable); files.export
  serves a Google Sheet as XLSX, or 403 `exportSizeLimitExceeded` above 10 MB.
- Faults: `fail_next(status, count, retry_after)` answers 429/503 with Retry-After (403: Drive's
  userRateLimitExceeded); `revoke()` deletes the
  service account's key (tokens stop working: 401; new grants: 400 invalid_grant).
- POST /token: the service-account JWT grant (RFC 7523); the assertion's signature is checked with the test
  key's public half and its claims (iss, aud = Google's token audience, scope, iat/exp, kid) are verified.

Kept for tests: `requests` (every request), `contract_errors`, `downloads` (file id, bytes served), `tokens`.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from google.auth import jwt as google_jwt

from tests.http_fakes import RecordingServer, Request

CONTRACT = Path(__file__).parent / "contracts" / "google" / "drive.v3.json"
SHEET = "application/vnd.google-apps.spreadsheet"
FOLDER = "application/vnd.google-apps.folder"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
EXPORT_LIMIT = 10 * 1024 * 1024
DEFAULT_FILE_FIELDS = ("kind", "id", "name", "mimeType")
#: Google: "aud ... When making an access token request this value is always https://oauth2.googleapis.com/token".
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DRIVE_SCOPES = {"https://www.googleapis.com/auth/drive", "https://www.googleapis.com/auth/drive.readonly"}


@dataclass
class Method:
    id: str
    http_method: str
    pattern: re.Pattern[str]
    literal: bool
    parameters: dict[str, dict[str, Any]]
    path_params: tuple[str, ...]


def load_methods(document: dict[str, Any]) -> list[Method]:
    """Every method of the discovery document (nested resources included), literal paths first."""
    methods: list[Method] = []

    def walk(resources: dict[str, Any]) -> None:
        for resource in resources.values():
            for spec in resource.get("methods", {}).values():
                names = tuple(re.findall(r"{\+?(\w+)}", spec["path"]))
                regex = re.sub(r"{\+?(\w+)}", lambda m: f"(?P<{m.group(1)}>[^/]+)", spec["path"])
                methods.append(Method(spec["id"], spec["httpMethod"], re.compile(regex + "$"), not names,
                                      spec.get("parameters", {}), names))
            walk(resource.get("resources", {}))

    walk(document["resources"])
    methods.sort(key=lambda m: not m.literal)
    return methods


def check_parameters(method: Method, query: dict[str, list[str]], global_params: dict[str, Any]) -> list[str]:
    """What is wrong with the request's parameters for `method`, from the document alone."""
    problems: list[str] = []
    for name, spec in method.parameters.items():
        if spec.get("required") and spec["location"] == "query" and name not in query:
            problems.append(f"{method.id}: required parameter {name!r} missing")
    for name, values in query.items():
        spec = method.parameters.get(name) or global_params.get(name)
        if spec is None or spec.get("location") == "path":
            problems.append(f"{method.id}: unknown query parameter {name!r}")
            continue
        if len(values) > 1 and not spec.get("repeated"):
            problems.append(f"{method.id}: {name!r} given {len(values)} times")
        for value in values:
            kind = spec.get("type")
            if kind == "boolean" and value not in ("true", "false"):
                problems.append(f"{method.id}: {name}={value!r} is not a boolean")
            elif kind == "integer":
                try:
                    number = int(value)
                except ValueError:
                    problems.append(f"{method.id}: {name}={value!r} is not an integer")
                    continue
                if "minimum" in spec and number < int(spec["minimum"]):
                    problems.append(f"{method.id}: {name}={number} is below {spec['minimum']}")
            if "enum" in spec and value not in spec["enum"]:
                problems.append(f"{method.id}: {name}={value!r} is not one of {spec['enum']}")
    return problems


def parse_fields(text: str) -> dict[str, Any]:
    """`a,b(c,d/e)` -> {"a": {}, "b": {"c": {}, "d": {"e": {}}}} ({} = the whole value)."""
    pos = 0

    def parse_list() -> dict[str, Any]:
        nonlocal pos
        out: dict[str, Any] = {}
        while pos < len(text):
            match = re.match(r"\s*([\w*]+(?:/[\w*]+)*)\s*", text[pos:])
            if not match:
                raise ValueError(f"invalid fields selector at {text[pos:]!r}")
            pos += match.end()
            node = out
            parts = match.group(1).split("/")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            leaf = node.setdefault(parts[-1], {})
            if pos < len(text) and text[pos] == "(":
                pos += 1
                leaf.update(parse_list())
                if pos >= len(text) or text[pos] != ")":
                    raise ValueError(f"unbalanced parentheses in fields {text!r}")
                pos += 1
            if pos < len(text) and text[pos] == ",":
                pos += 1
                continue
            if pos < len(text) and text[pos] == ")":
                return out
        return out

    return parse_list()


def project(value: Any, selection: dict[str, Any]) -> Any:
    if not selection or "*" in selection:
        return value
    if isinstance(value, list):
        return [project(v, selection) for v in value]
    if isinstance(value, dict):
        return {k: project(value[k], sub) for k, sub in selection.items() if k in value}
    return value


def error(status: int, reason: str, message: str, headers: dict[str, str] | None = None):
    body = {"error": {"code": status, "message": message,
                      "errors": [{"domain": "global", "reason": reason, "message": message}]}}
    return status, headers or {}, body


@dataclass
class StoredFile:
    id: str
    name: str
    mime_type: str
    parents: list[str]
    content: bytes
    drive_id: str | None = None
    trashed: bool = False
    version: int = 1
    modified: str = "2026-12-01T09:00:00.000Z"

    def resource(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": "drive#file", "id": self.id, "name": self.name, "mimeType": self.mime_type,
                                "parents": list(self.parents), "trashed": self.trashed, "version": str(self.version),
                                "modifiedTime": self.modified}
        if self.drive_id:
            data["driveId"] = self.drive_id
        if not self.mime_type.startswith("application/vnd.google-apps."):
            data["md5Checksum"] = hashlib.md5(self.content).hexdigest()
            data["size"] = str(len(self.content))
        return data


@dataclass
class FakeDrive:
    """Drive v3 and the token endpoint on one loopback server (see the module docstring)."""

    page_size: int = 2
    public_key_pem: bytes = b""
    client_email: str = ""
    key_id: str = ""
    files: dict[str, StoredFile] = field(default_factory=dict)
    log: list[tuple[str, bool]] = field(default_factory=list)  # (file id, removed)
    contract_errors: list[str] = field(default_factory=list)
    downloads: list[tuple[str, int]] = field(default_factory=list)
    tokens: dict[str, bool] = field(default_factory=dict)  # token -> still valid
    grants: list[dict[str, Any]] = field(default_factory=list)
    revoked: bool = False

    def __post_init__(self) -> None:
        document = json.loads(CONTRACT.read_text(encoding="utf-8"))
        self.methods = load_methods(document)
        self.global_params = document["parameters"]
        self.service_path = "/" + document["servicePath"]
        self.failures: list[tuple[int, str | None]] = []
        self._lock = threading.Lock()
        self.server = RecordingServer(self._handle)

    # ------------------------------------------------------------------ for tests
    @property
    def url(self) -> str:
        return self.server.url + "/"

    @property
    def token_uri(self) -> str:
        return self.server.url + "/token"

    @property
    def requests(self) -> list[Request]:
        return self.server.requests

    def add(self, name: str, content: bytes, mime_type: str, parents: list[str], drive_id: str | None = None) -> str:
        with self._lock:
            file_id = "f" + secrets.token_hex(8)
            self.files[file_id] = StoredFile(file_id, name, mime_type, list(parents), content, drive_id)
            self.log.append((file_id, False))
            return file_id

    def update(self, file_id: str, content: bytes | None = None, **changes: Any) -> None:
        """A new content (a new MD5) and/or new metadata (name, parents, trashed): a new version and a change."""
        with self._lock:
            stored = self.files[file_id]
            if content is not None:
                stored.content = content
            for key, value in changes.items():
                setattr(stored, key, value)
            stored.version += 1
            stored.modified = f"2026-12-01T09:{stored.version:02d}:00.000Z"
            self.log.append((file_id, False))

    def delete(self, file_id: str) -> None:
        with self._lock:
            del self.files[file_id]
            self.log.append((file_id, True))

    def fail_next(self, status: int, count: int = 1, retry_after: str | None = "0") -> None:
        with self._lock:
            self.failures += [(status, retry_after)] * count

    def revoke(self) -> None:
        """The service account's key is deleted: its tokens stop working and it gets no new one."""
        with self._lock:
            self.revoked = True
            self.tokens = dict.fromkeys(self.tokens, False)

    def drive_calls(self) -> list[str]:
        """The method ids of the Drive requests received, in order."""
        out = []
        for request in self.requests:
            path = urlsplit(request.path).path
            method = self._match(request.method, path)
            out.append(method.id if method else f"{request.method} {path}")
        return [m for m in out if not m.endswith("/token")]

    def close(self) -> None:
        self.server.close()

    def __enter__(self) -> FakeDrive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ server
    def _match(self, http_method: str, path: str) -> Method | None:
        if not path.startswith(self.service_path):
            return None
        relative = path[len(self.service_path):]
        for method in self.methods:
            if method.http_method == http_method and method.pattern.match(relative):
                return method
        return None

    def _handle(self, request: Request):
        parts = urlsplit(request.path)
        if parts.path == "/token":
            return self._token(request)
        method = self._match(request.method, parts.path)
        if method is None:
            self.contract_errors.append(f"{request.method} {parts.path}: no method of the discovery document")
            return error(404, "notFound", f"no Drive v3 method at {request.method} {parts.path}")
        query = parse_qs(parts.query, keep_blank_values=True)
        problems = check_parameters(method, query, self.global_params)
        if problems:
            self.contract_errors.extend(problems)
            return error(400, "invalidParameter", "; ".join(problems))
        if not self._authorised(request):
            return error(401, "authError", "Request had invalid authentication credentials. Expected OAuth 2 access "
                         "token, login cookie or other valid authentication credential.",
                         {"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'})
        with self._lock:
            if self.failures:
                status, retry_after = self.failures.pop(0)
                reason = {429: "rateLimitExceeded", 403: "userRateLimitExceeded"}.get(status, "backendError")
                return error(status, reason, "Backend Error" if reason == "backendError" else "Rate limit exceeded",
                             {"Retry-After": retry_after} if retry_after is not None else {})
        params = {k: v[0] for k, v in query.items()}
        path_params = method.pattern.match(parts.path[len(self.service_path):]).groupdict()
        handler = getattr(self, "_" + method.id.replace("drive.", "").replace(".", "_"), None)
        if handler is None:
            return error(501, "notImplemented", f"the fake does not serve {method.id}")
        try:
            selection = parse_fields(params["fields"]) if "fields" in params else None
        except ValueError as exc:
            self.contract_errors.append(str(exc))
            return error(400, "invalidParameter", str(exc))
        with self._lock:
            return handler({k: unquote(v) for k, v in path_params.items()}, params, selection)

    def _authorised(self, request: Request) -> bool:
        header = request.headers.get("Authorization") or request.headers.get("authorization") or ""
        token = header.removeprefix("Bearer ")
        return bool(header.startswith("Bearer ") and self.tokens.get(token))

    def _token(self, request: Request):
        form = {k: v[0] for k, v in parse_qs(request.body.decode()).items()}
        if form.get("grant_type") != JWT_GRANT or "assertion" not in form:
            self.contract_errors.append(f"token request without the JWT grant: {sorted(form)}")
            return 400, {}, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type."}
        if self.revoked:
            return 400, {}, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        try:
            header = google_jwt.decode_header(form["assertion"])
            claims = google_jwt.decode(form["assertion"], certs=self.public_key_pem, audience=GOOGLE_TOKEN_AUDIENCE)
        except ValueError as exc:
            self.contract_errors.append(f"token request: {exc}")
            return 400, {}, {"error": "invalid_grant", "error_description": f"Invalid JWT: {exc}"}
        problems = []
        if header.get("kid") != self.key_id:
            problems.append(f"kid {header.get('kid')!r} is not the key's id")
        if claims.get("iss") != self.client_email:
            problems.append(f"iss {claims.get('iss')!r} is not the service account")
        if not set(str(claims.get("scope", "")).split()) & DRIVE_SCOPES:
            problems.append(f"scope {claims.get('scope')!r} grants no Drive access")
        if not 0 < int(claims["exp"]) - int(claims["iat"]) <= 3600:
            problems.append("exp must be within an hour of iat")
        if problems:
            self.contract_errors.extend(problems)
            return 400, {}, {"error": "invalid_grant", "error_description": "; ".join(problems)}
        self.grants.append(claims)
        token = "ya29.fake-" + secrets.token_urlsafe(16)
        self.tokens[token] = True
        return 200, {}, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}

    # ------------------------------------------------------------------ Drive methods
    def _visible(self, stored: StoredFile, params: dict[str, str], listing: bool) -> bool:
        if stored.drive_id is None:
            return not params.get("driveId")
        if params.get("supportsAllDrives") != "true":
            return False
        if listing and params.get("includeItemsFromAllDrives") != "true":
            return False
        return params.get("driveId") in (None, stored.drive_id)

    def _file(self, stored: StoredFile, selection: dict[str, Any] | None) -> dict[str, Any]:
        default = dict.fromkeys(DEFAULT_FILE_FIELDS, {})
        return project(stored.resource(), selection if selection is not None else default)

    def _changes_getStartPageToken(self, path, params, selection):  # noqa: N802 (Drive's method name)
        return 200, {}, project({"kind": "drive#startPageToken", "startPageToken": str(len(self.log) + 1)},
                                selection or {})

    def _changes_list(self, path, params, selection):
        if params.get("includeItemsFromAllDrives") == "true" and params.get("supportsAllDrives") != "true":
            return error(403, "teamDrivesParameterNotSupported",
                         "includeItemsFromAllDrives can only be set when supportsAllDrives is true")
        if params.get("driveId") and params.get("supportsAllDrives") != "true":
            return error(403, "teamDrivesParameterNotSupported", "driveId requires supportsAllDrives=true")
        try:
            start = int(params["pageToken"])
        except ValueError:
            return error(400, "invalid", f"Invalid Value: pageToken {params['pageToken']!r}")
        size = min(int(params.get("pageSize", 100)), self.page_size)
        changes, position = [], start
        while position <= len(self.log) and len(changes) < size:
            file_id, removed = self.log[position - 1]
            position += 1
            stored = self.files.get(file_id)
            if stored is not None and not self._visible(stored, params, listing=True):
                continue
            if stored is None and not removed:
                continue
            if removed and params.get("includeRemoved") == "false":
                continue
            change: dict[str, Any] = {"kind": "drive#change", "changeType": "file", "fileId": file_id,
                                      "removed": stored is None, "time": "2026-12-01T09:00:00.000Z"}
            if stored is not None:
                change["file"] = stored.resource()
            changes.append(change)
        body: dict[str, Any] = {"kind": "drive#changeList", "changes": changes}
        if position <= len(self.log):
            body["nextPageToken"] = str(position)
        else:
            body["newStartPageToken"] = str(len(self.log) + 1)
        if selection is None:
            selection = {"kind": {}, "nextPageToken": {}, "newStartPageToken": {},
                         "changes": {"kind": {}, "changeType": {}, "fileId": {}, "removed": {}, "time": {},
                                     "file": dict.fromkeys(DEFAULT_FILE_FIELDS, {})}}
        return 200, {}, project(body, selection)

    def _files_list(self, path, params, selection):
        match = re.fullmatch(r"\s*'((?:[^'\\]|\\.)+)' in parents and trashed\s*=\s*false\s*", params.get("q", ""))
        if not match:
            return error(400, "invalid", f"the fake understands only \"'<folder>' in parents and trashed=false\", "
                                         f"not q={params.get('q')!r}")
        if params.get("corpora") == "drive" and not (params.get("driveId") and
                                                     params.get("includeItemsFromAllDrives") == "true"):
            return error(403, "teamDrivesParameterNotSupported",
                         "corpora=drive requires driveId and includeItemsFromAllDrives=true")
        folder = match.group(1).replace("\\'", "'")
        found = sorted((f for f in self.files.values() if folder in f.parents and not f.trashed
                        and self._visible(f, params, listing=True)), key=lambda f: f.name)
        start = int(params.get("pageToken") or 0)
        size = min(int(params.get("pageSize", 100)), self.page_size)
        body: dict[str, Any] = {"kind": "drive#fileList", "incompleteSearch": False,
                                "files": [f.resource() for f in found[start:start + size]]}
        if start + size < len(found):
            body["nextPageToken"] = str(start + size)
        if selection is None:
            selection = {"kind": {}, "nextPageToken": {}, "incompleteSearch": {},
                         "files": dict.fromkeys(DEFAULT_FILE_FIELDS, {})}
        return 200, {}, project(body, selection)

    def _files_get(self, path, params, selection):
        stored = self.files.get(path["fileId"])
        if stored is None or (stored.drive_id and params.get("supportsAllDrives") != "true"):
            return error(404, "notFound", f"File not found: {path['fileId']}.")
        if params.get("alt") == "media":
            if stored.mime_type.startswith("application/vnd.google-apps."):
                return error(403, "fileNotDownloadable", "Only files with binary content can be downloaded. Use "
                             "Export with Docs Editors files.")
            self.downloads.append((stored.id, len(stored.content)))
            return 200, {"Content-Type": stored.mime_type or "application/octet-stream"}, stored.content
        return 200, {}, self._file(stored, selection)

    def _files_export(self, path, params, selection):
        stored = self.files.get(path["fileId"])
        if stored is None:
            return error(404, "notFound", f"File not found: {path['fileId']}.")
        if stored.mime_type != SHEET or params["mimeType"] != XLSX:
            return error(400, "badRequest", f"export of {stored.mime_type} as {params['mimeType']} is not served")
        if len(stored.content) > EXPORT_LIMIT:
            return error(403, "exportSizeLimitExceeded", "This file is too large to be exported.")
        self.downloads.append((stored.id, len(stored.content)))
        return 200, {"Content-Type": XLSX}, stored.content


def write_service_account_key(fake: FakeDrive, path: Path) -> Path:
    """Write a service-account key file (a fresh RSA key) whose token_uri is the fake's; the fake learns the public
    half, the account's email and the key id, to verify the JWTs signed with it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    fake.public_key_pem, fake.key_id = public, secrets.token_hex(20)
    fake.client_email = "claro-drive@claro-test.iam.gserviceaccount.com"
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "claro-test", "private_key_id": fake.key_id,
        "private_key": private, "client_email": fake.client_email, "client_id": "1234567890",
        "token_uri": fake.token_uri, "auth_uri": "https://accounts.google.com/o/oauth2/auth",
    }), encoding="utf-8")
    return path
