"""The OpenAPI 3.1 document of `/api/v1`, served at `/api/v1/openapi.json`.

Schemas come from the pydantic models of `api_models` (pydantic writes JSON Schema 2020-12, which OpenAPI 3.1
uses as is); the operations (summary, scope, parameters, answers) are written here, one entry per route.
Starlette has no OpenAPI generator of its own and the frameworks that have one (FastAPI, spectree) would
bring a second way of routing into the app, so the table below is hand-written; `openapi_document` refuses a
route it does not describe, and a test checks every route of the app is in the document.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic.json_schema import models_json_schema

from claro_dagster.catalogue.changes import DECIDED, OPEN
from claro_dagster.web import api_models as m

_CONVERTOR = re.compile(r"\{(\w+):\w+\}")


def _q(name: str, description: str, *, type_: str = "string", required: bool = False, **schema: Any) -> dict:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": {"type": type_, **schema}}


def _p(name: str, type_: str = "string", **schema: Any) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": type_, **schema}}


ITEM_ID = _p("id", "integer", minimum=0, maximum=10**18 - 1)  # what `api._item_id` accepts


LIMIT = _q("limit", "items per page (1-1000)", type_="integer", minimum=1, maximum=1000)
CATALOGUE = _p("catalogue")

# (method, path) -> summary, request model, response model, parameters, error statuses besides 401/403/429
OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/me"): dict(summary="The token's name, scopes and expiry", response=m.Me),
    ("GET", "/catalogues"): dict(summary="Catalogues with their key, attributes and record count",
                                 response=m.Catalogues),
    ("GET", "/catalogues/{catalogue}/records"): dict(
        summary="Records in key order, a page at a time (cursor pagination: stable under concurrent writes)",
        response=m.RecordPage, errors=(400, 404),
        parameters=[CATALOGUE, _q("filter", 'record filter, e.g. brand == "Acme" and price > 100'),
                    _q("columns", "comma-separated attributes to return (the key always is)"),
                    _q("cursor", "the next_cursor of the previous page"), LIMIT]),
    ("GET", "/catalogues/{catalogue}/records/{key}"): dict(
        summary="One record: values, each field's provenance and its history", response=m.Record,
        errors=(400, 404), parameters=[CATALOGUE, _p("key")]),
    ("POST", "/catalogues/{catalogue}/proposals"): dict(
        summary="Propose changes: one change set through the gate, source api:<token name>, confidence capped "
                "by the spec", request=m.ProposalIn, response=m.ProposalResult, errors=(404, 422),
        parameters=[CATALOGUE]),
    ("GET", "/changes"): dict(
        summary="The change feed: every applied change after a sequence, in order, with values",
        response=m.Changes, errors=(400, 404),
        parameters=[_q("since", "sequence to read after: 0, or the `next` of the previous page", type_="integer",
                       required=True, minimum=0),
                    _q("catalogue", "only this catalogue's changes"), LIMIT]),
    ("GET", "/review"): dict(summary="Review items (default: the open ones)", response=m.ReviewItems,
                             errors=(400, 404),
                             parameters=[_q("catalogue", "only this catalogue"),
                                         _q("status", "a review status (empty: the open ones)",
                                            enum=["", *OPEN, *DECIDED]), LIMIT]),
    ("GET", "/review/{id}"): dict(summary="One review item", response=m.ReviewItem, errors=(400, 404),
                                  parameters=[ITEM_ID]),
    ("POST", "/review/{id}/decision"): dict(summary="Approve, reject or edit a review item", request=m.DecisionIn,
                                            response=m.ReviewItem, errors=(400, 404, 409, 422),
                                            parameters=[ITEM_ID]),
    ("GET", "/runs"): dict(summary="Recent Dagster runs", response=m.Runs, errors=(400, 502, 503),
                           parameters=[_q("limit", "runs (1-100)", type_="integer", minimum=1, maximum=100)]),
    ("POST", "/runs"): dict(summary="Start an operation or a pipeline on a catalogue (a Dagster run)",
                            request=m.RunIn, response=m.Run, errors=(400, 404, 422, 502, 503), status=202),
    ("GET", "/runs/{run_id}"): dict(summary="A run's status", response=m.Run, errors=(404, 502, 503),
                                    parameters=[_p("run_id")]),
    ("GET", "/batches"): dict(summary="Batches received, with their status", response=m.Batches, errors=(404,),
                              parameters=[_q("catalogue", "only this catalogue"), _q("status", "only this status")]),
    ("GET", "/batches/{key}"): dict(summary="One batch", response=m.Batch, errors=(404,), parameters=[_p("key")]),
    ("GET", "/audit"): dict(summary="The audit log of API writes (admin)", response=m.Audit, errors=(400,),
                            parameters=[_q("after", "entry id to read after", type_="integer", minimum=0),
                                        _q("token", "only this token name"), LIMIT]),
}

_REASONS = {400: "bad query (filter, cursor, sequence, parameter)", 401: "no token, or expired or revoked",
            403: "the token lacks the scope", 404: "not found", 409: "already decided",
            413: "body too large", 422: "the body does not fit", 429: "too many failed attempts",
            502: "Dagster refused", 503: "the Dagster webserver is unreachable"}


def _with_catalogues(parameter: dict[str, Any], catalogues: Sequence[str]) -> dict[str, Any]:
    if parameter["name"] == "catalogue" and parameter["in"] == "path" and catalogues:
        return {**parameter, "schema": {**parameter["schema"], "enum": list(catalogues)}}
    return parameter


def doc_path(path: str) -> str:
    """A route path as OpenAPI writes it (`{key:path}` -> `{key}`)."""
    return _CONVERTOR.sub(r"{\1}", path)


def query_parameters(method: str, path: str) -> list[str]:
    """The query parameters the document declares for a route (any other is refused with 400)."""
    op = OPERATIONS[(method, doc_path(path))]
    return [p["name"] for p in op.get("parameters", []) if p["in"] == "query"]


def openapi_document(endpoints: Sequence[Any], *, server: str, catalogues: Sequence[str] = ()) -> dict[str, Any]:
    """The document; `catalogues` (the spec's) become the allowed values of the `catalogue` path parameter."""
    _, defs = models_json_schema([(model, "validation") for model in (*m.REQUESTS, *m.RESPONSES)],
                                 ref_template="#/components/schemas/{model}")
    paths: dict[str, dict[str, Any]] = {}
    for e in endpoints:
        path = doc_path(e.path)
        op = OPERATIONS.get((e.method, path))
        if op is None:
            raise KeyError(f"{e.method} {path} is not described in api_openapi.OPERATIONS")
        ref = {"$ref": f"#/components/schemas/{op['response'].__name__}"}
        error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        responses = {str(op.get("status", 200)): {"description": "OK",
                                                  "content": {"application/json": {"schema": ref}}}}
        # 400 everywhere: an unknown query parameter is refused on every route
        statuses = (400, 401, 403, 429, *op.get("errors", ()), *((413, 422) if e.method == "POST" else ()))
        for status in sorted(set(statuses)):
            responses[str(status)] = {"description": _REASONS[status], **error}
        operation: dict[str, Any] = {
            "operationId": e.handler.__name__,
            "summary": op["summary"], "description": f"Scope: {' or '.join(e.scopes)}.",
            "parameters": [_with_catalogues(p, catalogues) for p in op.get("parameters", [])], "responses": responses,
            "security": [{"bearer": []}]}
        if "request" in op:
            operation["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{op['request'].__name__}"}}}}
        paths.setdefault(path, {})[e.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "claro REST API", "version": "1.0.0",
                 "description": "Records, the change feed, proposals, review, runs and batches of a claro "
                                "project. Authenticate with `Authorization: Bearer <token>` (`claro api tokens "
                                "create NAME --scope read ...`)."},
        "servers": [{"url": server}],
        "paths": paths,
        "components": {"schemas": defs.get("$defs", {}),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "an API token (claro api tokens create)"}}},
    }
