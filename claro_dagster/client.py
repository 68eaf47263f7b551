"""`ClaroClient`: the Python client of the REST API of `claro serve` (`/api/v1`).

    from claro_dagster.client import ClaroClient

    client = ClaroClient("https://claro.example.com", token)       # a token of `claro api tokens create`
    for record in client.records("products", filter='brand == "Acme"', columns=["price"]):
        ...
    page = client.changes(since=cursor)                              # the change feed; keep page.next
    client.propose([{"record": "A1", "field": "title", "value": "Mug XL", "confidence": 85}], catalogue="products")
    run_id = client.run("products", "analyse")
    client.wait(run_id, timeout=600)                                 # RunFailed / RunCancelled / WaitTimeout

Requests go through the project's HTTP layer (`resources.http.HttpClient`): connection errors, timeouts, 408, 429
and 5xx are retried with backoff (honouring Retry-After). A proposal carries an id, so a retried proposal is
applied once; starting a run is never retried (a lost answer could otherwise start it twice). Every error the API
answers becomes a `ClaroError` subclass carrying the API's message (and, for a filter, the position).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from claro_dagster.resources.http import HttpClient, HttpError

TERMINAL = ("SUCCESS", "FAILURE", "CANCELED")


# ---------------------------------------------------------------------------------------- errors
class ClaroError(Exception):
    """The API refused or could not answer; `status` is its HTTP status (None: no answer at all)."""

    def __init__(self, message: str, *, status: int | None = None, body: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.message, self.status, self.body = message, status, dict(body or {})


class AuthenticationError(ClaroError):
    """401: no token, or an unknown, expired or revoked one (429: too many failures from this address)."""


class ScopeError(ClaroError):
    """403: the token lacks the scope the call needs."""


class NotFound(ClaroError):
    """404: no such catalogue, record, review item, run or batch."""


class BadRequest(ClaroError):
    """400: a filter that does not parse (`position`: where), a bad cursor or sequence, a bad parameter."""

    @property
    def position(self) -> int | None:
        return self.body.get("position")


class Conflict(ClaroError):
    """409: e.g. a review item decided already."""


class ProposalRefused(ClaroError):
    """422: the body does not fit (`problems`: each one, e.g. `changes[1].value (price): 'x' is not a number`)."""

    @property
    def problems(self) -> list[str]:
        return list(self.body.get("problems") or [])


class TargetUnavailable(ProposalRefused):
    """422 of `run`: the Dagster code location does not have this target now (`dbt_build` without
    CLARO_DBT_PROJECT where Dagster runs); `target` names it."""

    @property
    def target(self) -> str:
        return str(self.body.get("unavailable"))


class DagsterUnavailable(ClaroError):
    """503 (or 502): the Dagster webserver behind `claro serve` is down, or refused the run."""


class RunFailed(ClaroError):
    """`wait`: the run ended without success; `run` holds its last status."""

    def __init__(self, message: str, run: RunStatus):
        super().__init__(message)
        self.run = run


class RunCancelled(RunFailed):
    """`wait`: the run was cancelled (in the Dagster UI, or by a person with `claro`)."""


class WaitTimeout(ClaroError):
    """`wait`: the run had not ended when the timeout passed; `run` holds its last status."""

    def __init__(self, message: str, run: RunStatus):
        super().__init__(message)
        self.run = run


_ERRORS: dict[int, type[ClaroError]] = {400: BadRequest, 401: AuthenticationError, 403: ScopeError, 404: NotFound,
                                        409: Conflict, 422: ProposalRefused, 429: AuthenticationError,
                                        502: DagsterUnavailable, 503: DagsterUnavailable}


# ---------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class RecordPage:
    records: list[dict[str, Any]]
    next_cursor: str | None


@dataclass(frozen=True)
class Record:
    catalogue: str
    key: str
    values: dict[str, Any]
    provenance: dict[str, dict[str, Any] | None]  # per field: operation, run_id, source, confidence, at, ...
    history: list[dict[str, Any]]  # oldest first: field, old, new, kind, provenance, by, at, ...


@dataclass(frozen=True)
class Change:
    sequence: int
    type: str  # the event: change.applied, or change.approved (a reviewer or a merge applied it)
    kind: str  # created | updated | deleted
    catalogue: str
    record: str | None
    field: str | None
    change_set: str
    at: str
    values: dict[str, Any] | None = None  # created: the record's values
    old: Any = None
    new: Any = None
    extra: dict[str, Any] = field(default_factory=dict)  # operation, source, run_id, confidence, reason, by


@dataclass(frozen=True)
class ChangesPage:
    changes: list[Change]
    next: int  # pass as `since` next time
    last: int

    @property
    def caught_up(self) -> bool:
        return self.next >= self.last


@dataclass(frozen=True)
class ProposalResult:
    change_set: str
    applied: int
    queued: int
    suggested: int
    rejected: int
    unchanged: int
    created: int
    already_applied: bool
    source: str
    max_confidence: float
    capped: list[int]


@dataclass(frozen=True)
class RunStatus:
    run_id: str
    status: str  # Dagster's: QUEUED, STARTING, STARTED, SUCCESS, FAILURE, CANCELING, CANCELED, ...
    done: bool
    error: str | None = None  # a failed run: Dagster's error (each failed step's message)


# ---------------------------------------------------------------------------------------- the client
class ClaroClient:
    """A client of one `claro serve` (its base URL, e.g. https://claro.example.com) with one API token."""

    def __init__(self, url: str, token: str, *, catalogue: str | None = None, timeout: float = 30,
                 max_attempts: int = 5, backoff_max: float = 30, http: HttpClient | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic):
        self.url = url.rstrip("/")
        self.http = http or HttpClient(self.url + "/api/v1/", timeout=timeout, max_attempts=max_attempts,
                                       backoff_max=backoff_max, user_agent="claro-client/1",
                                       headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                                       sleep=sleep)
        self.catalogue = catalogue
        self.sleep, self.clock = sleep, clock

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ClaroClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reading
    def me(self) -> dict[str, Any]:
        """The token's name, scopes and expiry."""
        return self._call("GET", "me")

    def catalogues(self) -> list[dict[str, Any]]:
        return self._call("GET", "catalogues")["catalogues"]

    def records_page(self, catalogue: str | None = None, *, filter: str | None = None,
                     columns: Sequence[str] | None = None, cursor: str | None = None, limit: int = 100) -> RecordPage:
        """One page of records in key order (pass `next_cursor` on as `cursor`)."""
        params = {"filter": filter, "columns": ",".join(columns) if columns else None, "cursor": cursor,
                  "limit": limit}
        body = self._call("GET", f"catalogues/{self._catalogue(catalogue)}/records", params=params)
        return RecordPage(body["records"], body["next_cursor"])

    def records(self, catalogue: str | None = None, *, filter: str | None = None,
                columns: Sequence[str] | None = None, page_size: int = 500) -> Iterator[dict[str, Any]]:
        """Every record matching `filter`, page by page (key cursors: writes meanwhile never make a record that
        exists throughout come twice or not at all). A filter that does not parse raises BadRequest with its
        position before the first record."""
        cursor = None
        while True:
            page = self.records_page(catalogue, filter=filter, columns=columns, cursor=cursor, limit=page_size)
            yield from page.records
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def record(self, key: str, catalogue: str | None = None) -> Record:
        """One record with each field's provenance and its history."""
        from urllib.parse import quote

        body = self._call("GET", f"catalogues/{self._catalogue(catalogue)}/records/{quote(key, safe='')}")
        return Record(body["catalogue"], body["key"], body["values"], body["provenance"], body["history"])

    def changes(self, since: int, *, catalogue: str | None = None, limit: int = 500) -> ChangesPage:
        """Applied changes after sequence `since` (0: from the beginning), in order; keep `.next` for next time."""
        body = self._call("GET", "changes", params={"since": since, "catalogue": catalogue, "limit": limit})
        known = {"sequence", "type", "kind", "catalogue", "record", "field", "change_set", "at", "values", "old",
                 "new"}
        changes = [Change(c["sequence"], c["type"], c["kind"], c["catalogue"], c.get("record"), c.get("field"),
                          c["change_set"], c["at"], c.get("values"), c.get("old"), c.get("new"),
                          {k: v for k, v in c.items() if k not in known}) for c in body["changes"]]
        return ChangesPage(changes, body["next"], body["last"])

    # ------------------------------------------------------------------ writing
    def propose(self, changes: Iterable[Mapping[str, Any]], catalogue: str | None = None, *,
                id: str | None = None) -> ProposalResult:
        """Propose changes (`record`, `field`, `value`, optional `confidence`, `reason`, `citation`) as one change
        set through the gate. `id` makes it idempotent (default: a new one per call, reused by retries)."""
        body = {"id": id or uuid.uuid4().hex, "changes": [dict(c) for c in changes]}
        r = self._call("POST", f"catalogues/{self._catalogue(catalogue)}/proposals", json=body)
        return ProposalResult(r["change_set"], r["applied"], r["queued"], r["suggested"], r["rejected"],
                              r["unchanged"], r["created"], r["already_applied"], r["source"], r["max_confidence"],
                              r["capped"])

    def review_items(self, catalogue: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        return self._call("GET", "review", params={"catalogue": catalogue, "status": status})["items"]

    def decide(self, item_id: int, decision: str, *, value: Any = None, note: str | None = None) -> dict[str, Any]:
        """approve, reject or edit (with `value`) a review item."""
        body: dict[str, Any] = {"decision": decision, "note": note}
        if decision == "edit":
            body["value"] = value
        return self._call("POST", f"review/{item_id}/decision", json=body)

    # ------------------------------------------------------------------ runs
    def run(self, catalogue: str, operation_or_pipeline: str, filter: str | None = None) -> str:
        """Start an operation (analyse, export, a destination) or a pipeline on a catalogue, or `dbt_build` (the
        dbt project's models and tests, when the code location has them: else `TargetUnavailable`); the run id.
        Never retried: a lost answer could otherwise start the run twice."""
        body = self._call("POST", "runs", json={"catalogue": catalogue, "target": operation_or_pipeline,
                                                "filter": filter}, max_attempts=1)
        return body["run_id"]

    def status(self, run_id: str) -> RunStatus:
        from urllib.parse import quote

        body = self._call("GET", f"runs/{quote(run_id, safe='')}")
        return RunStatus(body["run_id"], body["status"], body["done"], body.get("error"))

    def wait(self, run_id: str, timeout: float, *, poll: float = 2.0) -> RunStatus:
        """Poll until the run ends: its status on success; RunCancelled, RunFailed or WaitTimeout otherwise."""
        deadline = self.clock() + timeout
        while True:
            status = self.status(run_id)
            if status.status == "SUCCESS":
                return status
            if status.status == "CANCELED":
                raise RunCancelled(f"run {run_id} was cancelled before it finished", status)
            if status.status == "FAILURE":
                raise RunFailed(f"run {run_id} failed: {status.error}" if status.error
                                else f"run {run_id} failed; its logs are in the Dagster UI", status)
            left = deadline - self.clock()
            if left <= 0:
                raise WaitTimeout(f"run {run_id} is still {status.status} after {timeout:g}s", status)
            self.sleep(min(poll, left))

    # ------------------------------------------------------------------ plumbing
    def _catalogue(self, catalogue: str | None) -> str:
        if catalogue or self.catalogue:
            return catalogue or self.catalogue  # type: ignore[return-value]
        names = [c["name"] for c in self.catalogues()]
        if len(names) != 1:
            raise ClaroError(f"say which catalogue: the project has {', '.join(names)} "
                             "(ClaroClient(..., catalogue=...) or catalogue=...)")
        self.catalogue = names[0]
        return names[0]

    def _call(self, method: str, path: str, *, params: Mapping[str, Any] | None = None, json: Any = None,
              max_attempts: int | None = None) -> Any:
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self.http.request(method, path, params=clean, json=json, raise_for_status=False,
                                         max_attempts=max_attempts)
        except HttpError as exc:
            raise ClaroError(f"claro serve at {self.url} did not answer: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code < 400:
            if body is None:
                raise ClaroError(f"{method} {path}: the answer is not JSON (is {self.url} a claro serve?)",
                                 status=response.status_code)
            return body
        message = body.get("error") if isinstance(body, dict) else None
        kind = _ERRORS.get(response.status_code, ClaroError)
        if response.status_code == 422 and isinstance(body, dict) and body.get("unavailable"):
            kind = TargetUnavailable
        raise kind(message or f"{method} {path} answered HTTP {response.status_code}", status=response.status_code,
                   body=body if isinstance(body, dict) else None)
