"""The REST API of `claro serve`, under `/api/v1`: a thin HTTP layer over the catalogue core.

Every route but the OpenAPI document (`GET /api/v1/openapi.json`) needs an API token
(`Authorization: Bearer <token>`, made with `claro api tokens create`) whose scopes allow it (see
`catalogue/api_access.py`). The work is the core's: `catalogue.feed` (record pages, one record, the change
feed), `catalogue.proposals` (external change sets through the gate), `ReviewQueue`, `BatchRegistry`, and the
launcher (Dagster's GraphQL API) for runs. Every write (proposal, review decision, run started) is kept in the
audit log with the token's name, whatever its outcome.

Errors are JSON `{"error": "...", "status": n}` (plus `position` for a filter, `problems` for a proposal):
401 no/expired/revoked token, 403 missing scope, 429 too many failed attempts, 400 bad query (filter, cursor,
sequence), 404 unknown catalogue/record/item/run/batch, 409 a review item already decided, 422 a body that does
not fit (or a run target the code location does not have now: `unavailable` names it), 503 the Dagster
webserver is unreachable, 502 Dagster refused.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route

from claro_dagster.catalogue.access import AccessDenied
from claro_dagster.catalogue.api_access import SCOPES, ApiToken, ApiTokens
from claro_dagster.catalogue.batches import BatchRegistry
from claro_dagster.catalogue.changes import OPEN, StoreError
from claro_dagster.catalogue.feed import (
    MAX_PAGE,
    BadCursor,
    change_feed,
    check_catalogue,
    record_detail,
    records_page,
)
from claro_dagster.catalogue.filters import FilterError, compile_filter
from claro_dagster.catalogue.proposals import ProposalError, ProposedChange, propose
from claro_dagster.catalogue.review import ReviewItem, ReviewQueue
from claro_dagster.catalogue.schema import filter_columns
from claro_dagster.resources.dagster_api import DBT_BUILD_JOB as DBT_BUILD
from claro_dagster.web import api_models as m
from claro_dagster.web.api_openapi import openapi_document, query_parameters

log = logging.getLogger(__name__)

PREFIX = "/api/v1"
MAX_BODY_BYTES = 4 * 1024 * 1024
TERMINAL = ("SUCCESS", "FAILURE", "CANCELED")


class _AnyConvertor(Convertor[str]):
    """A path segment run that may hold any character, newlines too (`path` stops at one)."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anything", _AnyConvertor())


class ApiLauncher(Protocol):
    """What the API needs of the launcher (`resources.dagster_api.DagsterLauncher`; tests use a fake)."""

    def launch(self, catalogue: str, target: str, filter: str | None, *, launched_by: str = ...) -> str: ...

    def run_status(self, run_id: str) -> str: ...

    def has_job(self, name: str) -> bool: ...

    def recent_runs(self, limit: int = 20) -> list[dict[str, Any]]: ...


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra: Any):
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


@dataclass
class Call:
    """One API request as a handler sees it (handlers run in a worker thread: the core is synchronous)."""

    token: ApiToken
    store: Any
    spec: Any
    path: dict[str, Any]
    query: dict[str, str]
    body: Any
    audit: dict[str, Any] = field(default_factory=dict)

    def int_param(self, name: str, default: int, *, low: int = 0, high: int | None = None) -> int:
        raw = self.query.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ApiError(400, f"{name}={raw!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            raise ApiError(400, f"{name}={value} is out of range: give {low} to {high if high is not None else '...'}")
        return value


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    scopes: tuple[str, ...]  # any one of them allows the call
    handler: Callable[[Call], Any]
    action: str | None = None  # a write: kept in the audit log under this action
    status: int = 200


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS), status_code=status,
                    media_type="application/json", headers={"Cache-Control": "no-store", **(headers or {})})


def _error(status: int, message: str, **extra: Any) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="claro"'} if status == 401 else None
    return _json(status, {"error": message, "status": status, **extra}, headers)


async def _read_capped(request: Request) -> bytes | None:
    """The body, read as a stream; None as soon as it (or its declared Content-Length) passes MAX_BODY_BYTES."""
    declared = request.headers.get("content-length", "")
    if declared.strip().isdigit() and int(declared) > MAX_BODY_BYTES:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return None
    return bytes(body)


@dataclass(frozen=True)
class NotJson:
    why: str


def _model(model: type, body: Any) -> Any:
    if isinstance(body, NotJson):
        raise ApiError(422, f"the request body is not JSON: {body.why}")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()]
        raise ApiError(422, "the request body does not fit: " + "; ".join(problems), problems=problems) from None


def _review_json(item: ReviewItem) -> dict[str, Any]:
    return {"id": item.id, "catalogue": item.catalogue, "record": item.record, "field": item.field,
            "old": item.old, "new": item.new, "confidence": item.confidence, "reason": item.reason,
            "citation": item.citation, "operation": item.operation, "source": item.source, "run_id": item.run_id,
            "change_set": item.change_set, "reviewers": list(item.reviewers), "status": item.status,
            "decided_by": item.decided_by, "at": item.at.isoformat()}


def _batch_json(b: Any) -> dict[str, Any]:
    return {"key": b.key, "catalogue": b.catalogue, "source": b.source, "filename": b.filename, "status": b.status,
            "stage": b.stage, "message": b.message, "received_at": b.received_at.isoformat(),
            "updated_at": b.updated_at.isoformat()}


def _result_json(r: Any) -> dict[str, Any]:
    return {"change_set": r.change_set, "applied": r.applied, "queued": r.queued, "suggested": r.suggested,
            "rejected": r.rejected, "unchanged": r.unchanged, "created": r.created,
            "already_applied": r.already_applied}


# ---------------------------------------------------------------------------------------- handlers
def me(call: Call) -> Any:
    return {"name": call.token.name, "id": call.token.id, "scopes": list(call.token.scopes),
            "expires_at": call.token.token.expires_at.isoformat()}


def catalogues(call: Call) -> Any:
    out = []
    for name in call.spec.catalogues:
        cat = call.store.catalogue(name)
        out.append({"name": name, "key": cat.key, "records": call.store.count(name),
                    "attributes": [{"name": a, "type": attr.type, "values": attr.values}
                                   for a, attr in cat.attributes.items()]})
    return {"catalogues": out}


def records(call: Call) -> Any:
    columns = [c.strip() for c in call.query.get("columns", "").split(",") if c.strip()] or None
    page = records_page(call.store, call.path["catalogue"], filter=call.query.get("filter") or None, columns=columns,
                        cursor=call.query.get("cursor") or None,
                        limit=call.int_param("limit", 100, low=1, high=MAX_PAGE))
    return {"records": page.records, "next_cursor": page.next_cursor}


def record(call: Call) -> Any:
    return record_detail(call.store, call.path["catalogue"], call.path["key"])


def changes(call: Call) -> Any:
    if "since" not in call.query:
        raise ApiError(400, "give since=<sequence>: 0 for every change, else the `next` of the previous page")
    page = change_feed(call.store, call.int_param("since", 0, low=0), catalogue=call.query.get("catalogue") or None,
                       limit=call.int_param("limit", 500, low=1, high=MAX_PAGE))
    return {"changes": page.changes, "next": page.next, "last": page.last}


def proposals(call: Call) -> Any:
    body = _model(m.ProposalIn, call.body)
    catalogue = call.path["catalogue"]
    # The proposal's id makes a retried request a no-op; without one, each request is a new change set.
    ident = f"api:{call.token.name}:{body.id or uuid.uuid4().hex}"
    call.audit.update(target=catalogue, detail={"change_set": ident, "changes": len(body.changes)})
    result = propose(call.store, catalogue, [ProposedChange(c.record, c.field, c.value, c.confidence, c.reason or "",
                                                            c.citation) for c in body.changes],
                     token_name=call.token.name, change_set_id=ident)
    out = {**_result_json(result.result), "source": result.source, "max_confidence": result.max_confidence,
           "capped": result.capped}
    call.audit["detail"].update(out)
    return out


def review_items(call: Call) -> Any:
    status = call.query.get("status") or None
    catalogue = call.query.get("catalogue") or None
    if catalogue:
        check_catalogue(call.store, catalogue)
    items = ReviewQueue(call.store).list(catalogue=catalogue, status=status,
                                         limit=call.int_param("limit", 100, low=1, high=MAX_PAGE))
    return {"items": [_review_json(i) for i in items]}


def _item_id(call: Call) -> int:
    raw = call.path["id"]
    if not raw.isdigit() or len(raw) > 18:
        raise ApiError(400, f"review item id {raw!r} is not a whole number; `GET /api/v1/review` lists the items")
    return int(raw)


def review_item(call: Call) -> Any:
    try:
        return _review_json(ReviewQueue(call.store).get(_item_id(call)))
    except StoreError as exc:
        raise ApiError(404, str(exc)) from None


def decide(call: Call) -> Any:
    body = _model(m.DecisionIn, call.body)
    item_id = _item_id(call)
    call.audit.update(target=f"review item {item_id}", detail={"decision": body.decision, "note": body.note})
    queue = ReviewQueue(call.store)
    by = f"api:{call.token.name}"
    try:
        item = queue.get(item_id)
    except StoreError as exc:
        raise ApiError(404, str(exc)) from None
    if item.status not in OPEN:
        raise ApiError(409, f"review item {item_id} is {item.status} already"
                            + (f" (by {item.decided_by})" if item.decided_by else ""))
    if body.decision == "edit":
        if "value" not in body.model_fields_set:
            raise ApiError(422, "an edit needs the value to apply: {\"decision\": \"edit\", \"value\": ...}")
        queue.edit(item_id, body.value, by=by, note=body.note)
    elif body.decision == "approve":
        queue.approve([item_id], by=by, note=body.note)
    else:
        queue.reject([item_id], by=by, note=body.note)
    return _review_json(queue.get(item_id))


def _run_json(run_id: str, status: str) -> dict[str, Any]:
    return {"run_id": run_id, "status": status, "done": status in TERMINAL}


def start_run(call: Call, launcher: ApiLauncher) -> Any:
    from claro_dagster.web.slack_commands import run_targets

    body = _model(m.RunIn, call.body)
    call.audit.update(target=f"{body.catalogue}/{body.target}", detail={"filter": body.filter})
    check_catalogue(call.store, body.catalogue)
    targets = run_targets(call.spec, body.catalogue)
    if body.target == DBT_BUILD and body.target not in targets:  # a job of the code location, not of the spec
        if not launcher.has_job(DBT_BUILD):
            raise ApiError(422, f"the Dagster code location has no {DBT_BUILD} job: set CLARO_DBT_PROJECT to a dbt "
                                "project (e.g. examples/dbt) where Dagster runs, with the catalogue store on "
                                "PostgreSQL (CLARO_DATABASE_URL), then reload the code location",
                           unavailable=DBT_BUILD)
        if body.filter:
            raise ApiError(422, f"{DBT_BUILD} takes no record filter: dbt builds its models from whole tables")
        targets = run_targets(call.spec, body.catalogue, dbt=True)
    if body.target not in targets:
        raise ApiError(422, f"{body.target!r} is neither a pipeline nor an operation of {body.catalogue}; "
                            f"targets are: {', '.join(targets)}")
    if body.filter:
        compile_filter(body.filter, filter_columns(call.store.catalogue(body.catalogue)))
    run_id = launcher.launch(body.catalogue, body.target, body.filter, launched_by=f"api:{call.token.name}")
    call.audit["detail"]["run_id"] = run_id
    return _run_json(run_id, "QUEUED")


def run_status(call: Call, launcher: ApiLauncher) -> Any:
    run_id = call.path["run_id"]
    body = _run_json(run_id, launcher.run_status(run_id))
    if body["status"] == "FAILURE" and hasattr(launcher, "run_error"):  # why it failed, for the client's RunFailed
        body["error"] = launcher.run_error(run_id)
    return body


def runs(call: Call, launcher: ApiLauncher) -> Any:
    found = launcher.recent_runs(call.int_param("limit", 20, low=1, high=100))
    return {"runs": [{**_run_json(r["run_id"], r["status"]), "tags": r.get("tags", {})} for r in found]}


def batches(call: Call) -> Any:
    catalogue = call.query.get("catalogue") or None
    if catalogue:
        check_catalogue(call.store, catalogue)
    return {"batches": [_batch_json(b) for b in BatchRegistry(call.store).list(catalogue,
                                                                                call.query.get("status") or None)]}


def batch(call: Call) -> Any:
    found = BatchRegistry(call.store).get(call.path["key"])
    if found is None:
        raise ApiError(404, f"no batch {call.path['key']!r}")
    return _batch_json(found)


def audit(call: Call) -> Any:
    entries = ApiTokens(call.store).audit_log(after=call.int_param("after", 0),
                                              limit=call.int_param("limit", 100, low=1, high=MAX_PAGE),
                                              token_name=call.query.get("token") or None)
    return {"entries": [{"id": e.id, "at": e.at.isoformat(), "token": e.token, "token_name": e.token_name,
                         "action": e.action, "target": e.target, "status": e.status, "detail": e.detail}
                        for e in entries]}


# ---------------------------------------------------------------------------------------- the app
class Api:
    """The `/api/v1` routes over a spec loader, a store factory and a launcher."""

    def __init__(self, spec_loader: Callable[[], Any], store_factory: Callable[[Any], Any], launcher: ApiLauncher):
        self.spec_loader, self.store_factory, self.launcher = spec_loader, store_factory, launcher
        with_launcher = self._with_launcher
        self.endpoints = [
            Endpoint("GET", "/me", SCOPES, me),
            Endpoint("GET", "/catalogues", ("read",), catalogues),
            Endpoint("GET", "/catalogues/{catalogue}/records", ("read",), records),
            Endpoint("GET", "/catalogues/{catalogue}/records/{key:anything}", ("read",), record),
            Endpoint("POST", "/catalogues/{catalogue}/proposals", ("propose",), proposals, action="propose"),
            Endpoint("GET", "/changes", ("read",), changes),
            Endpoint("GET", "/review", ("read", "review"), review_items),
            Endpoint("GET", "/review/{id}", ("read", "review"), review_item),
            Endpoint("POST", "/review/{id}/decision", ("review",), decide, action="review"),
            Endpoint("GET", "/runs", ("read", "run"), with_launcher(runs)),
            Endpoint("POST", "/runs", ("run",), with_launcher(start_run), action="run", status=202),
            Endpoint("GET", "/runs/{run_id}", ("read", "run"), with_launcher(run_status)),
            Endpoint("GET", "/batches", ("read",), batches),
            Endpoint("GET", "/batches/{key}", ("read",), batch),
            Endpoint("GET", "/audit", ("admin",), audit),
        ]

    def _with_launcher(self, handler: Callable[[Call, ApiLauncher], Any]) -> Callable[[Call], Any]:
        def bound(call: Call) -> Any:
            return handler(call, self.launcher)

        bound.__name__ = handler.__name__
        return bound

    def routes(self) -> list[BaseRoute]:
        async def document(request: Request) -> Response:
            spec = await run_in_threadpool(self.spec_loader)
            return _json(200, openapi_document(self.endpoints, server=PREFIX, catalogues=list(spec.catalogues)))

        by_path: dict[str, dict[str, Endpoint]] = {}
        for e in self.endpoints:
            by_path.setdefault(e.path, {})[e.method] = e
        routes: list[BaseRoute] = [Route(f"{PREFIX}/openapi.json", document, methods=["GET"])]
        for path, methods in by_path.items():
            routes.append(Route(PREFIX + path, self._dispatch(methods), methods=list(methods)))
        known = list(routes)

        async def elsewhere(request: Request) -> Response:
            # Any other path under the API: a JSON answer, as the document promises (not Starlette's text).
            if any(route.matches(request.scope)[0] != Match.NONE for route in known):
                return _error(405, f"{request.method} is not allowed on {request.url.path}")
            return _error(404, f"no such API path: {request.url.path}; GET {PREFIX}/openapi.json lists them")

        routes.append(Route(PREFIX + "/{rest:anything}", elsewhere,
                            methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]))
        return routes

    def _dispatch(self, methods: dict[str, Endpoint]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            e = methods[request.method if request.method != "HEAD" else "GET"]
            body: Any = None
            if e.method == "POST":
                raw = await _read_capped(request)
                if raw is None:
                    return _error(413, f"request body over {MAX_BODY_BYTES} bytes: send fewer changes per proposal")
                try:
                    body = orjson.loads(raw) if raw else None
                except orjson.JSONDecodeError as exc:
                    body = NotJson(str(exc))  # refused by the handler, so the attempt is audited too
            return await run_in_threadpool(self._handle, e, request, body)

        return endpoint

    def _handle(self, e: Endpoint, request: Request, body: Any) -> Response:
        spec = self.spec_loader()
        store = self.store_factory(spec)
        try:
            tokens = ApiTokens(store)
            header = request.headers.get("authorization", "")
            scheme, _, secret = header.partition(" ")
            client = request.client.host if request.client else "unknown"
            if scheme.lower() != "bearer" or not secret.strip():
                return _error(401, "send an API token: `Authorization: Bearer <token>` (`claro api tokens create` "
                                   "makes one)")
            try:
                token = tokens.verify(secret.strip(), client=client)
            except AccessDenied as exc:
                return _error(429 if exc.rate_limited else 401, exc.reason)
            call = Call(token, store, spec, dict(request.path_params), dict(request.query_params), body)
            if not any(token.allows(s) for s in e.scopes):
                response = _error(403, f"the token {token.name!r} (scopes: {', '.join(token.scopes) or 'none'}) "
                                       f"lacks the scope {' or '.join(e.scopes)} this needs; ask an admin for a token "
                                       "with it (`claro api tokens create --scope ...`)")
            elif unknown := sorted(set(call.query) - set(query_parameters(e.method, e.path))):
                # A mistyped parameter (`?filtr=`) must not quietly answer as if it were absent.
                takes = ", ".join(query_parameters(e.method, e.path)) or "no query parameters"
                response = _error(400, f"unknown query parameter(s) {', '.join(map(repr, unknown))}: "
                                       f"{e.method} {PREFIX}{e.path} takes {takes}")
            else:
                response = self._run(e, call)
            if e.action:
                tokens.audit(token, e.action, call.audit.get("target"), response.status_code,
                             {**call.audit.get("detail", {}), "path": request.url.path,
                              **({"error": orjson.loads(response.body).get("error")}
                                 if response.status_code >= 400 else {})})
            return response
        finally:
            store.dispose()

    def _run(self, e: Endpoint, call: Call) -> Response:
        from claro_dagster.resources.dagster_api import DagsterApiError, WebserverUnreachable

        try:
            return _json(e.status, e.handler(call))
        except ApiError as exc:
            return _error(exc.status, exc.message, **exc.extra)
        except FilterError as exc:
            return _error(400, f"the filter does not parse at position {exc.position}: {exc.message}",
                          position=exc.position, filter=exc.text)
        except BadCursor as exc:
            return _error(400, str(exc))
        except ProposalError as exc:
            return _error(422, "the proposal was refused, nothing was written: " + str(exc), problems=exc.problems)
        except WebserverUnreachable as exc:
            return _error(503, str(exc))
        except LookupError as exc:
            return _error(404, str(exc.args[0]) if exc.args else str(exc))
        except DagsterApiError as exc:
            return _error(502, str(exc))
        except StoreError as exc:
            return _error(400, str(exc))


def api_routes(spec_loader: Callable[[], Any], store_factory: Callable[[Any], Any],
               launcher: ApiLauncher) -> list[BaseRoute]:
    """The `/api/v1` routes for `create_app`."""
    return Api(spec_loader, store_factory, launcher).routes()
