"""Custom REST endpoint destination (`kind: rest`): records sent to a proprietary system's HTTP API.

A sales channel (`sales_channels.CHANNEL_MODULES`): `claro push`, `claro push status`, the `all_pushed` check and
push.failed alerts work for it as for Shopify and Amazon. Per record the channel state keeps the hash and the
payload last accepted, the status and the receiver's error, so an unchanged record sends nothing and a refused
one is sent again by the next push.

Spec keys (DestinationSpec):

* `url`: a template filled from the record, `{attribute}` replaced by its URL-quoted value
  (`https://erp.example/api/items/{sku}`); relative to the base URL in `url_env` when it is set.
  With `per: batch` the URL is not filled (one URL for every batch).
* `method`: POST, PUT (default) or PATCH. `per`: `record` (one request each) or `batch` (a JSON array of up to
  `batch_size` bodies per request).
* `body`: the receiver's JSON as a nested mapping. A leaf string is an attribute name; `{attribute: name}` says
  the same explicitly; `{value: ...}` is a literal (any JSON); numbers, booleans and null are literals; lists
  are rendered item by item. Unset: every attribute of the record under its own name.
* `auth`: bearer, basic, api_key (header or query) or oauth2 client credentials (resources/http_auth.py).
* `success`: the status codes that count (`status`, default 200, 201, 202, 204) and, in a JSON answer,
  `error_path` (default `error`: present and not null/false/empty means the record failed, so a
  `200 {"error": "..."}` is a failure) and optionally `ok_path` that must equal `ok_value`. Paths are dotted
  (`result.status`, `items.0.error`); a hand-written walk because two lookups do not warrant a JSONPath library.

Every request carries `Idempotency-Key`: a hash of the destination, the record key(s) and the hash of the
content, so a retry of the same content (by the HTTP layer after a 5xx, or by the next push) carries the same key
and the receiver can drop the duplicate, while a changed record gets a new key.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import pandas as pd

from claro_dagster.catalogue.channels import (
    ChannelError,
    ChannelRecord,
    ChannelState,
    PushPlan,
    payload_changes,
    records_to_push,
    text_value,
)
from claro_dagster.resources import http_auth
from claro_dagster.resources.http import HttpClient, HttpError, body_excerpt
from claro_dagster.spec.models import url_placeholders

_MISSING = object()


class RestDestinationClient:
    """Sends rendered bodies to the endpoint: the project's HttpClient plus an authenticator."""

    def __init__(self, http: HttpClient, auth: http_auth.HttpAuth):
        self.http, self.auth = http, auth

    def send(self, method: str, url: str, body: Any, idempotency_key: str):
        return http_auth.send(self.http, self.auth, method, url, json=body,
                              headers={"Idempotency-Key": idempotency_key, "Accept": "application/json"})


def client_from_env(dest: Any, **http_options: Any) -> RestDestinationClient:
    """The client for a rest destination, from the variables its spec names (read when a push runs)."""
    base = os.environ.get(dest.url_env) if dest.url_env else None
    if dest.url_env and not base:
        raise ChannelError(f"environment variable {dest.url_env} (the REST destination's base URL) is not set")
    http = HttpClient(base_url=base, **http_options)
    try:
        auth = http_auth.auth_from_spec(dest.auth, http=http)
    except http_auth.AuthError as exc:
        raise ChannelError(f"{exc}: set it where the push runs") from exc
    return RestDestinationClient(http, auth)


def required_env(dest: Any) -> list[str]:
    return [*([dest.url_env] if dest.url_env else []), *http_auth.required_env(dest.auth)]


# ---------------------------------------------------------------------------------------------- rendering
def json_value(value: Any) -> Any:
    """A record's value as JSON: None for missing/NaN, numpy scalars as Python, timestamps as ISO text."""
    if value is None:
        return None
    try:
        if pd.isna(value):  # NaN, NaT, pd.NA
            return None
    except (TypeError, ValueError):  # a list or mapping: not a scalar null
        pass
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):  # numpy scalar
        try:
            return json_value(value.item())
        except (TypeError, ValueError):
            pass
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, (str, int, float, bool, list, dict)):
        return value
    return str(value)


def render_body(template: Any, record: Mapping[str, Any]) -> Any:
    """Fill a body template from a record (see the module docstring for the template's leaves)."""
    if template is None:
        return {name: json_value(value) for name, value in record.items()}
    if isinstance(template, str):
        return json_value(record.get(template))
    if isinstance(template, Mapping):
        if set(template) == {"attribute"}:
            return json_value(record.get(template["attribute"]))
        if set(template) == {"value"}:
            return template["value"]
        return {name: render_body(sub, record) for name, sub in template.items()}
    if isinstance(template, list):
        return [render_body(item, record) for item in template]
    return template  # number, boolean, null: a literal


def render_url(url: str, record: Mapping[str, Any]) -> str:
    values = {}
    for name in url_placeholders(url):
        value = text_value(record.get(name))
        if value is None:
            raise ValueError(f"the URL template needs {name!r} and the record has none")
        values[name] = quote(value, safe="")
    return url.format(**values)


def content_hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def idempotency_key(destination: str, entries: list[tuple[str, str]]) -> str:
    """Stable for the same records with the same content: (record key, content hash) pairs, in order."""
    text = "\n".join([destination, *(f"{key}\t{digest}" for key, digest in entries)])
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------- success rule
def lookup(document: Any, path: str) -> Any:
    """A dotted path in a JSON document (`a.b.0.c`); `_MISSING` when any step is absent."""
    node = document
    for step in path.split("."):
        if isinstance(node, Mapping) and step in node:
            node = node[step]
        elif isinstance(node, list) and step.lstrip("-").isdigit() and -len(node) <= int(step) < len(node):
            node = node[int(step)]
        else:
            return _MISSING
    return node


def failure_of(response: Any, success: Any) -> str | None:
    """Why an answer is a failure under the spec's success rule, or None when it is a success."""
    status = response.status_code
    if status not in success.status:
        return f"HTTP {status}: {body_excerpt(response)}".rstrip(": ")
    if not (success.error_path or success.ok_path):
        return None
    try:
        document = response.json() if response.content else None
    except ValueError:
        document = None
    if success.error_path and document is not None:
        error = lookup(document, success.error_path)
        if error is not _MISSING and error not in (None, False, "", [], {}):
            text = error if isinstance(error, str) else json.dumps(error, sort_keys=True)
            return f"HTTP {status} with {success.error_path}: {text}"
    if success.ok_path:
        value = lookup(document, success.ok_path) if document is not None else _MISSING
        if value is _MISSING or value != success.ok_value:
            shown = "nothing" if value is _MISSING else json.dumps(value)
            return (f"HTTP {status} with {success.ok_path} = {shown}, expected "
                    f"{json.dumps(success.ok_value)}")
    return None


# ---------------------------------------------------------------------------------------------- push
def push(client: RestDestinationClient | None, state: ChannelState, destination: str, dest: Any,
         records: list[dict[str, Any]], key: str, *, dry_run: bool = False) -> PushPlan:
    """Send the records whose rendered body differs from what the endpoint last accepted; record the outcome."""
    plan = PushPlan()
    known = state.get(destination, [text_value(r.get(key)) for r in records])
    todo: list[tuple[str, Any, str, ChannelRecord | None, dict[str, Any]]] = []
    for record in records:
        rid = text_value(record.get(key))
        if rid is None:
            continue
        body = render_body(dest.body, record)
        digest = content_hash(body)
        before = known.get(rid)
        if before is not None and before.status == "pushed" and before.hash == digest:
            plan.unchanged.append(rid)
            continue
        accepted_before = before is not None and before.hash is not None
        (plan.update if accepted_before else plan.create).append(rid)
        if accepted_before:
            plan.changes[rid] = payload_changes(before.payload, body) if isinstance(body, dict) else []
        todo.append((rid, body, digest, before, record))
    if dry_run or not todo:
        return plan
    if client is None:
        raise ChannelError(f"destination {destination}: no client to push with")
    groups = [todo[i:i + dest.batch_size] for i in range(0, len(todo), dest.batch_size)] \
        if dest.per == "batch" else [[item] for item in todo]
    for group in groups:
        outcome = _send(client, destination, dest, group)
        plan.sent += outcome is None
        entries = []
        for rid, body, digest, before, _ in group:
            if outcome is None:
                entries.append(ChannelRecord(destination, rid, "pushed", group_key=rid, hash=digest, payload=body))
            else:
                plan.failed[rid] = outcome
                entries.append(ChannelRecord(destination, rid, "failed", group_key=rid,
                                             hash=before.hash if before else None,
                                             payload=before.payload if before else None, error=outcome))
        state.put(entries)
    plan.create = [r for r in plan.create if r not in plan.failed]
    plan.update = [r for r in plan.update if r not in plan.failed]
    return plan


def _send(client: RestDestinationClient, destination: str, dest: Any, group: list) -> str | None:
    """One request for the group; None on success, else the error to keep on each of its records."""
    ikey = idempotency_key(destination, [(item[0], item[2]) for item in group])
    if dest.per == "batch":
        url, body = dest.url, [item[1] for item in group]
    else:
        _, body, _, _, record = group[0]
        try:
            url = render_url(dest.url, record)
        except ValueError as exc:
            return str(exc)
    try:
        response = client.send(dest.method, url, body, ikey)
    except HttpError as exc:  # connection refused or timed out after the HTTP layer's retries
        if exc.status is None:
            raise ChannelError(f"destination {destination}: {exc}; check the endpoint is up and the URL right, "
                               "then push again (what was accepted is kept)") from exc
        return str(exc)
    if response.status_code in (401, 403) and response.status_code not in dest.success.status:
        raise ChannelError(f"destination {destination}: the endpoint refused the credentials (HTTP "
                           f"{response.status_code}: {body_excerpt(response)}); check the auth variables")
    return failure_of(response, dest.success)


def push_from_store(store: Any, destination: str, dest: Any, client: RestDestinationClient | None, *,
                    filter: str | None = None, dry_run: bool = False) -> PushPlan:
    """Push the records changed since the destination's cursor and those refused last time."""
    key = store.catalogue(dest.catalogue).key
    with records_to_push(store, destination, dest, filter=filter, dry_run=dry_run) as records:
        return push(client, ChannelState(store), destination, dest, records, key, dry_run=dry_run) \
            if records else PushPlan()
