"""Google Drive v3 connector: the changes feed, folder listings and file downloads of an inbound Drive folder.

`DriveClient` speaks the few Drive v3 calls an inbound folder needs (names as in Google's discovery document):

* `changes.getStartPageToken` and `changes.list`: the changes feed. A page ends in `nextPageToken` (more pages
  now) or `newStartPageToken` (caught up: the token to ask with next time). Both are page tokens, so the
  sensor keeps one string as its cursor.
* `files.list` with `q="'<folder>' in parents and trashed=false"`: what already lies in the folder.
* `files.get` (metadata) and `files.get?alt=media` (content, streamed to disk), `files.export` (a Google
  Sheet as XLSX; Drive refuses exports over 10 MB with `exportSizeLimitExceeded`).

Shared drives: with a `drive_id`, every call says `supportsAllDrives=true`, and the feed and listings are
scoped to that drive (`driveId`, `includeItemsFromAllDrives=true`, `corpora=drive`). Every call names the
fields it reads (`fields=`): Drive v3 returns only id, name and mimeType of a file otherwise.

Authentication is a service account: google-auth signs the JWT and exchanges it at the key file's
`token_uri` (a local fake in tests), through this module's transport adapter, so the token request goes
through the project's HttpClient like every other request. A refused key (revoked, deleted) and a 401 that
a fresh token does not cure raise `DriveAuthError` naming the spec's variable.

Why not google-api-python-client: it does its own HTTP (httplib2) with its own retry loop and secret-blind
logging, builds its methods from the discovery document at run time (a fetch, or a cached copy per
version), and its media download is chunked into Range requests of its own. The project's rule is one HTTP
layer (`resources/http.py`: Retry-After, backoff with jitter, injectable sleep, redaction), and the calls
needed here are five GETs, so they are written out over `HttpClient`; google-auth keeps the part that is
hard to get right (JWT signing and the token exchange).
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import google.auth.exceptions
import google.auth.transport
import requests
from google.oauth2 import service_account

from claro_dagster.resources.http import HttpClient, HttpError, body_excerpt

DRIVE_ROOT = "https://www.googleapis.com/"
SERVICE_PATH = "drive/v3/"
SCOPES = ("https://www.googleapis.com/auth/drive.readonly",)
FOLDER = "application/vnd.google-apps.folder"
SHEET = "application/vnd.google-apps.spreadsheet"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
CSV_TYPES = frozenset({"text/csv", "application/csv", "text/comma-separated-values"})
#: Drive refuses to export a Google Workspace document larger than this (`exportSizeLimitExceeded`).
EXPORT_LIMIT_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_FILE_BYTES = 100 * 1024 * 1024
FILE_FIELDS = "id,name,mimeType,parents,trashed,md5Checksum,version,size,modifiedTime"
CHANGES_FIELDS = f"nextPageToken,newStartPageToken,changes(changeType,removed,fileId,file({FILE_FIELDS}))"
LIST_FIELDS = f"nextPageToken,files({FILE_FIELDS})"
#: 403 reasons Drive documents as "retry with exponential backoff" (its own way of saying 429).
_RATE_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
_CHUNK = 1 << 20


class DriveError(RuntimeError):
    """A Drive call that did not succeed, saying what to do."""


class DriveApiError(DriveError):
    """Drive answered with an error: its HTTP `status` and Drive's `reason` (e.g. exportSizeLimitExceeded)."""

    def __init__(self, message: str, status: int, reason: str | None):
        self.status = status
        self.reason = reason
        super().__init__(message)


class DriveAuthError(DriveError):
    """The service-account key is missing, unreadable or refused: the message names the variable."""


class DriveFileRejected(DriveError):
    """A file that is not received (too large, not a spreadsheet): `reason` says why, naming the file."""

    def __init__(self, file: DriveFile, reason: str):
        self.file = file
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class DriveFile:
    """A file's metadata as Drive v3 gives it (`fields=FILE_FIELDS`)."""

    id: str
    name: str
    mime_type: str
    parents: tuple[str, ...] = ()
    trashed: bool = False
    md5: str | None = None
    version: str | None = None
    size: int | None = None
    modified_time: str | None = None

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> DriveFile:
        size = data.get("size")
        return cls(id=str(data["id"]), name=str(data.get("name") or data["id"]),
                   mime_type=str(data.get("mimeType") or ""), parents=tuple(data.get("parents") or ()),
                   trashed=bool(data.get("trashed", False)), md5=data.get("md5Checksum"),
                   version=None if data.get("version") is None else str(data["version"]),
                   size=None if size is None else int(size), modified_time=data.get("modifiedTime"))

    @property
    def kind(self) -> str | None:
        """"csv", "xlsx" or "sheet" (a Google Sheet), or None for anything that is not a spreadsheet."""
        lower = self.name.lower()
        if self.mime_type == SHEET:
            return "sheet"
        if self.mime_type == XLSX or (lower.endswith(".xlsx") and self.mime_type in ("", "application/octet-stream")):
            return "xlsx"
        if self.mime_type in CSV_TYPES or (lower.endswith(".csv") and self.mime_type in
                                            ("", "text/plain", "application/octet-stream")):
            return "csv"
        return None

    @property
    def is_folder(self) -> bool:
        return self.mime_type == FOLDER

    @property
    def filename(self) -> str:
        """The name the received file gets: a Google Sheet becomes `<name>.xlsx`."""
        if self.kind == "sheet" and not self.name.lower().endswith(".xlsx"):
            return f"{self.name}.xlsx"
        return self.name

    @property
    def content_version(self) -> str:
        """What changes when the content does: the MD5 of a stored file, the version of a Google Sheet (which has
        no checksum; its version also moves on metadata edits, and the run then finds the same content)."""
        return self.md5 or f"v{self.version or 0}"

    def describe(self) -> str:
        return f"Drive file {self.name!r} (id {self.id})"


@dataclass(frozen=True)
class Change:
    file_id: str
    removed: bool
    file: DriveFile | None


@dataclass(frozen=True)
class ChangePage:
    """One page of the changes feed. `token` asks for what follows; `caught_up` when it is a new start token."""

    changes: list[Change] = field(default_factory=list)
    token: str = ""
    caught_up: bool = False


class _AuthResponse(google.auth.transport.Response):
    def __init__(self, response: requests.Response):
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> dict[str, str]:
        return dict(self._response.headers)

    @property
    def data(self) -> bytes:
        return self._response.content


class _AuthRequest(google.auth.transport.Request):
    """google-auth's transport interface over the project's HttpClient (token requests retried like the rest)."""

    def __init__(self, http: HttpClient):
        self.http = http

    def __call__(self, url: str, method: str = "GET", body: Any = None, headers: Any = None,
                 timeout: Any = None, **kwargs: Any) -> _AuthResponse:
        try:
            response = self.http.request(method, url, data=body, headers=headers,
                                         timeout=timeout or self.http.timeout, raise_for_status=False)
        except HttpError as exc:
            raise google.auth.exceptions.TransportError(str(exc)) from exc
        return _AuthResponse(response)


class DriveClient:
    """Drive v3 over `HttpClient` with a service account's credentials (see the module docstring)."""

    def __init__(self, credentials: service_account.Credentials, root_url: str = DRIVE_ROOT, *,
                 http: HttpClient | None = None, credentials_env: str = "the credentials variable"):
        self.credentials = credentials
        self.base_url = root_url.rstrip("/") + "/" + SERVICE_PATH
        self.http = http or HttpClient(timeout=60)
        self.credentials_env = credentials_env
        self._auth = _AuthRequest(self.http)

    @classmethod
    def from_env(cls, credentials_env: str, endpoint_url_env: str | None = None, *,
                 http: HttpClient | None = None) -> DriveClient:
        """A client from the service-account key file named by `credentials_env`, at the API root named by
        `endpoint_url_env` (Google's own when unset)."""
        path = os.environ.get(credentials_env)
        if not path:
            raise DriveAuthError(f"the Drive credentials variable {credentials_env} is not set in this environment: "
                                 "set it to the path of the service account's JSON key file")
        root = DRIVE_ROOT
        if endpoint_url_env:
            root = os.environ.get(endpoint_url_env) or ""
            if not root:
                raise DriveError(f"the Drive endpoint variable {endpoint_url_env} is not set in this environment: "
                                 "set it to the API's root URL, or leave endpoint_url_env out of the spec to use "
                                 "Google itself")
        try:
            credentials = _credentials(path, Path(path).stat().st_mtime_ns)
        except FileNotFoundError:
            raise DriveAuthError(f"{credentials_env} names {path}, which does not exist: point it at the service "
                                 "account's JSON key file") from None
        except (ValueError, KeyError) as exc:
            raise DriveAuthError(f"{credentials_env} names {path}, which is not a service-account key file ({exc}): "
                                 "download a JSON key for the service account") from None
        return cls(credentials, root, http=http, credentials_env=credentials_env)

    # ------------------------------------------------------------------ changes feed
    def start_page_token(self, drive_id: str | None = None) -> str:
        params = {"fields": "startPageToken", **_drive_params(drive_id, listing=False)}
        if drive_id:
            params["driveId"] = drive_id
        return str(self._json("changes/startPageToken", params)["startPageToken"])

    def changes(self, page_token: str, drive_id: str | None = None, page_size: int = 100) -> ChangePage:
        """One page of changes after `page_token` (removed and trashed files included: the caller decides)."""
        params = {"pageToken": page_token, "pageSize": page_size, "fields": CHANGES_FIELDS,
                  "includeRemoved": "true", **_drive_params(drive_id, listing=True)}
        if drive_id:
            params["driveId"] = drive_id
        data = self._json("changes", params)
        changes = [Change(file_id=str(c.get("fileId", "")), removed=bool(c.get("removed", False)),
                          file=DriveFile.from_api(c["file"]) if c.get("file") else None)
                   for c in data.get("changes", []) if c.get("changeType", "file") == "file"]
        if data.get("nextPageToken"):
            return ChangePage(changes, str(data["nextPageToken"]), caught_up=False)
        if not data.get("newStartPageToken"):
            raise DriveError("Drive answered a changes page with neither nextPageToken nor newStartPageToken")
        return ChangePage(changes, str(data["newStartPageToken"]), caught_up=True)

    def list_folder(self, folder_id: str, drive_id: str | None = None, page_size: int = 100) -> Iterator[DriveFile]:
        """Every file directly in the folder that is not in the trash, page by page."""
        params: dict[str, Any] = {"q": f"'{_quote(folder_id)}' in parents and trashed=false", "pageSize": page_size,
                                  "fields": LIST_FIELDS, **_drive_params(drive_id, listing=True)}
        if drive_id:
            params.update(driveId=drive_id, corpora="drive")
        token: str | None = None
        while True:
            data = self._json("files", {**params, **({"pageToken": token} if token else {})})
            for item in data.get("files", []):
                yield DriveFile.from_api(item)
            token = data.get("nextPageToken")
            if not token:
                return

    def get(self, file_id: str) -> DriveFile:
        return DriveFile.from_api(self._json(f"files/{_path(file_id)}",
                                             {"fields": FILE_FIELDS, "supportsAllDrives": "true"}))

    # ------------------------------------------------------------------ content
    def download(self, file: DriveFile, dest: Path, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> Path:
        """Stream the file (a Google Sheet exported as XLSX) to `dest`, written as `<dest>.part` then renamed.

        Raises `DriveFileRejected` for a file over `max_bytes` (or, exported, over Drive's 10 MB export limit),
        before anything is kept; `DriveError` when the bytes do not match the file's MD5 (changed meanwhile).
        """
        if file.kind is None:
            raise DriveFileRejected(file, f"{file.describe()} is not a spreadsheet ({file.mime_type or 'no type'}): "
                                    "only CSV, XLSX and Google Sheets files are received; it was not processed")
        limit = min(max_bytes, EXPORT_LIMIT_BYTES) if file.kind == "sheet" else max_bytes
        if file.size is not None and file.size > limit:
            raise DriveFileRejected(file, _too_large(file, file.size, limit, max_bytes))
        if file.kind == "sheet":
            path, params = f"files/{_path(file.id)}/export", {"mimeType": XLSX}
        else:
            path, params = f"files/{_path(file.id)}", {"alt": "media", "supportsAllDrives": "true"}
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        digest = hashlib.md5(usedforsecurity=False)
        written = 0
        try:
            response = self._call(path, params, stream=True)
        except DriveApiError as exc:
            if exc.reason == "exportSizeLimitExceeded":
                raise DriveFileRejected(file, _too_large(file, EXPORT_LIMIT_BYTES, EXPORT_LIMIT_BYTES,
                                                         max_bytes)) from None
            raise
        with response:
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > limit:
                raise DriveFileRejected(file, _too_large(file, int(declared), limit, max_bytes))
            try:
                with open(tmp, "wb") as out:
                    for block in response.iter_content(_CHUNK):
                        written += len(block)
                        if written > limit:
                            raise DriveFileRejected(file, _too_large(file, written, limit, max_bytes))
                        digest.update(block)
                        out.write(block)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        if file.md5 and digest.hexdigest() != file.md5:
            tmp.unlink(missing_ok=True)
            raise DriveError(f"{file.describe()} changed while it was downloaded (MD5 {digest.hexdigest()}, "
                             f"listed {file.md5}); it is received again on the next tick")
        tmp.replace(dest)
        return dest

    # ------------------------------------------------------------------ HTTP
    def _json(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        with self._call(path, params) as response:
            return response.json()

    def _call(self, path: str, params: dict[str, Any], *, stream: bool = False) -> requests.Response:
        """GET with a valid token; one fresh token on 401; Drive's 403 rate-limit reasons retried like a 429."""
        refreshed = False
        attempt = 0
        while True:
            attempt += 1
            headers = {"Authorization": f"Bearer {self._token(force=False)}"}
            response = self.http.request("GET", self.base_url + path, params=params, headers=headers, stream=stream,
                                         raise_for_status=False)
            if response.status_code < 400:
                return response
            reason = _reason(response)
            if response.status_code == 401 and not refreshed:
                response.close()
                refreshed = True
                self._token(force=True)
                continue
            if response.status_code == 401:
                raise DriveAuthError(f"Drive refused the token of the service account in {self.credentials_env} "
                                     f"({reason or 'HTTP 401'}): the key may be revoked or the account disabled; "
                                     f"create a new key and point {self.credentials_env} at it")
            if response.status_code == 403 and reason in _RATE_REASONS and attempt < self.http.max_attempts:
                delay = self.http.retry_delay(response, attempt)
                response.close()
                self.http.sleep(delay)
                continue
            raise DriveApiError(f"GET {path} failed: HTTP {response.status_code}"
                                f"{' ' + reason if reason else ''}: {body_excerpt(response)}",
                                response.status_code, reason)

    def _token(self, force: bool) -> str:
        if force or not self.credentials.valid:
            try:
                self.credentials.refresh(self._auth)
            except google.auth.exceptions.RefreshError as exc:
                raise DriveAuthError(f"Google refused the service-account key in {self.credentials_env} ({exc}): the "
                                     f"key may be revoked or deleted; create a new key for the service account and "
                                     f"point {self.credentials_env} at it") from None
            except google.auth.exceptions.TransportError as exc:
                raise DriveError(f"the token endpoint of the key in {self.credentials_env} did not answer: "
                                 f"{exc}") from None
        return str(self.credentials.token)

    def close(self) -> None:
        self.http.close()


class DriveConnection(dg.ConfigurableResource):
    """A Drive source's connection: the key file and API root, read from the environment when a client is made,
    so a source whose variables are not set fails its own ticks, saying which variable."""

    credentials_env: str
    endpoint_url_env: str | None = None
    max_attempts: int = 5
    timeout: float = 60

    def client(self, sleep: Callable[[float], None] = time.sleep) -> DriveClient:
        http = HttpClient(timeout=self.timeout, max_attempts=self.max_attempts, sleep=sleep)
        return DriveClient.from_env(self.credentials_env, self.endpoint_url_env, http=http)


def source_resource_key(source: str) -> str:
    """The key of a Drive source's own connection resource."""
    return "drive_source_" + "".join(c if c.isalnum() or c == "_" else "_" for c in source)


@functools.lru_cache(maxsize=32)
def _credentials(path: str, mtime_ns: int) -> service_account.Credentials:
    # Kept per key file (and its modification time) for the life of the process, so ticks reuse a valid token.
    return service_account.Credentials.from_service_account_file(path, scopes=list(SCOPES))


def _drive_params(drive_id: str | None, *, listing: bool) -> dict[str, str]:
    if not drive_id:
        return {}
    return {"supportsAllDrives": "true", **({"includeItemsFromAllDrives": "true"} if listing else {})}


def _too_large(file: DriveFile, size: int, limit: int, max_bytes: int) -> str:
    if limit < max_bytes or (file.kind == "sheet" and limit == EXPORT_LIMIT_BYTES):
        what, fix = (f"Drive's limit of {EXPORT_LIMIT_BYTES // (1024 * 1024)} MB for exporting a Google Sheet",
                     "split the sheet, or save it as an XLSX file in the folder")
    else:
        what, fix = f"the source's max_file_mb ({max_bytes / (1024 * 1024):g} MB)", "split it, or raise max_file_mb"
    return (f"{file.describe()} is too large: {size / (1024 * 1024):.1f} MB or more, over {what}; it was not "
            f"processed: {fix}")


def _reason(response: requests.Response) -> str | None:
    try:
        errors = response.json().get("error", {})
    except ValueError:
        return None
    if isinstance(errors, dict):
        listed = errors.get("errors") or [{}]
        return listed[0].get("reason") or errors.get("status")
    return str(errors)


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _path(file_id: str) -> str:
    return requests.utils.quote(file_id, safe="")


__all__ = ["Change", "ChangePage", "DriveApiError", "DriveAuthError", "DriveClient", "DriveConnection", "DriveError",
           "DriveFile", "DriveFileRejected", "EXPORT_LIMIT_BYTES", "SHEET", "XLSX", "source_resource_key"]
