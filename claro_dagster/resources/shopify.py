"""Shopify Admin GraphQL: products (options, variants, metafields, media) upserted with `productSet`.

Transport: the project's one HTTP layer (`resources.http.HttpClient`), not `shopifyapi`'s `GraphQL()` client.
`shopify.GraphQL` keeps the shop and token in a process-global session, reads none of the cost extension and
has no retry; the HTTP layer already retries 429/5xx after `Retry-After`, redacts secrets and is what every
other connector uses. GraphQL here is one POST of `{query, variables}`: nothing the SDK adds is needed.

Idempotence: a product is written with `productSet` and its stored Shopify id when the channel state has one;
without an id (first push, or a push interrupted after Shopify created the product but before the id was
stored) the product is first looked up by handle (`productByIdentifier`), so a retried push updates the
product instead of creating a second one.

Pacing: every answer carries `extensions.cost.throttleStatus` (maximumAvailable, currentlyAvailable,
restoreRate). Before a call the client estimates what the bucket holds now and waits until the call's cost is
available; a `THROTTLED` answer is retried after (requested cost - available) / restore rate.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from claro_dagster.catalogue.channels import ChannelError, ChannelRecord, ChannelState, PushPlan, records_to_push
from claro_dagster.catalogue.channels import payload_changes as channel_payload_changes
from claro_dagster.catalogue.channels import text_value as _text

from .http import HttpClient, HttpError

log = logging.getLogger(__name__)

# Media are downloaded by Shopify after productSet answers: they start PROCESSING and become READY or FAILED.
# (Inline, not a fragment: the same document is a bulk operation's mutation, which is kept to one operation.)
MEDIA_FIELDS = "id alt status mediaErrors { code details message } ... on MediaImage { originalSource { url } }"
PRODUCT_SET = """
mutation claroProductSet($input: ProductSetInput!) {
  productSet(input: $input, synchronous: true) {
    product {
      id
      handle
      variants(first: 250) { nodes { id sku selectedOptions { name value } } }
      media(first: 50) { nodes { MEDIA_FIELDS } }
    }
    userErrors { field message code }
  }
}
""".replace("MEDIA_FIELDS", MEDIA_FIELDS)
PRODUCT_BY_HANDLE = """
query claroProductByHandle($handle: String!) {
  productByIdentifier(identifier: {handle: $handle}) { id handle }
}
"""
# A bulk operation's mutation may hold one connection field (shopify.dev, bulk import limitations): the
# variants; the media of the products it wrote are read afterwards (PRODUCTS_MEDIA).
BULK_PRODUCT_SET = """
mutation claroBulkProductSet($input: ProductSetInput!) {
  productSet(input: $input, synchronous: true) {
    product { id handle variants(first: 250) { nodes { id sku selectedOptions { name value } } } }
    userErrors { field message code }
  }
}
"""
PRODUCTS_MEDIA = """
query claroProductsMedia($ids: [ID!]!) {
  nodes(ids: $ids) { ... on Product { id media(first: 50) { nodes { MEDIA_FIELDS } } } }
}
""".replace("MEDIA_FIELDS", MEDIA_FIELDS)
PRODUCTS_PER_MEDIA_CALL = 15  # media(first: 50) asks up to 53 points a product, a query at most 1,000
MEDIA_BY_ID = """
query claroMedia($ids: [ID!]!) {
  nodes(ids: $ids) { ... on Media { MEDIA_FIELDS } }
}
""".replace("MEDIA_FIELDS", MEDIA_FIELDS)
NODES_PER_CALL = 250  # Shopify's limit on `nodes(ids:)`
HANDLES_PER_CALL = 50  # aliased productByIdentifier lookups per query
BULK_FILE_LIMIT = 20 * 1024 * 1024  # bytes of JSONL one bulk mutation takes (bulk import guide, 2025-01)
STAGED_UPLOAD = """
mutation claroStagedUpload($input: [StagedUploadInput!]!) {
  stagedUploadsCreate(input: $input) {
    stagedTargets { url resourceUrl parameters { name value } }
    userErrors { field message }
  }
}
"""
BULK_RUN = """
mutation claroBulkRun($mutation: String!, $path: String!, $client: String) {
  bulkOperationRunMutation(mutation: $mutation, stagedUploadPath: $path, clientIdentifier: $client) {
    bulkOperation { id status }
    userErrors { field message code }
  }
}
"""
BULK_FIELDS = "id status errorCode objectCount url partialDataUrl"
BULK_BY_ID = """
query claroBulkOperation($id: ID!) {
  node(id: $id) { ... on BulkOperation { BULK_FIELDS } }
}
""".replace("BULK_FIELDS", BULK_FIELDS)
BULK_CURRENT = """
query claroCurrentBulkMutation { currentBulkOperation(type: MUTATION) { BULK_FIELDS } }
""".replace("BULK_FIELDS", BULK_FIELDS)
# Costs Shopify charges these two documents in practice (the requested cost is refunded to the actual one).
MUTATION_COST = 10
QUERY_COST = 1
STATUSES = {"active": "ACTIVE", "draft": "DRAFT", "archived": "ARCHIVED"}
STATE_BATCH = 50  # channel-state rows written per transaction during a push


class ShopifyError(ChannelError):
    """A Shopify answer the push cannot go on with (top-level GraphQL errors, throttled too often)."""


@dataclass
class ThrottleStatus:
    maximum: float
    available: float
    restore_rate: float
    at: float


class ShopifyClient:
    """Admin GraphQL calls for one shop, paced by the query-cost bucket.

    `sleep` and `clock` are injectable so tests (and the benchmark's fake) never wait on the wall clock.
    """

    def __init__(self, shop_url: str, token: str, api_version: str = "2025-01", *, http: HttpClient | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                 max_throttled: int = 5, poll_first: float = 1.0, poll_most: float = 30.0,
                 bulk_timeout: float = 24 * 3600, media_polls: int = 5):
        self.endpoint = f"{shop_url.rstrip('/')}/admin/api/{api_version}/graphql.json"
        self.http = http or HttpClient(sleep=sleep)
        # Sent with each Admin API call only: the staged-upload and result-file hosts must never see the token.
        self.headers = {"X-Shopify-Access-Token": token}
        self.poll_first = poll_first  # first wait before reading a bulk operation or media again; doubles each time
        self.poll_most = poll_most
        self.bulk_timeout = bulk_timeout  # Shopify stops a bulk mutation after 24 hours and marks it FAILED
        self.media_polls = media_polls  # reads of a product's PROCESSING media before the push stops waiting
        self.sleep = sleep
        self.clock = clock
        self.max_throttled = max_throttled
        self.throttle: ThrottleStatus | None = None
        self.calls = 0
        self.throttled = 0

    @classmethod
    def from_env(cls, shop_url_env: str, token_env: str, api_version: str = "2025-01", **kwargs: Any) -> ShopifyClient:
        import os

        missing = [name for name in (shop_url_env, token_env) if not os.environ.get(name)]
        if missing:
            raise ShopifyError(f"set {' and '.join(missing)}: the shop's base URL and its Admin API access token")
        return cls(os.environ[shop_url_env], os.environ[token_env], api_version, **kwargs)

    def available(self) -> float | None:
        """What the bucket holds now, estimated from the last throttleStatus and the restore rate."""
        if self.throttle is None:
            return None
        t = self.throttle
        return min(t.maximum, t.available + (self.clock() - t.at) * t.restore_rate)

    def _pace(self, cost: float) -> None:
        available = self.available()
        if available is not None and available < cost:
            self.sleep((cost - available) / self.throttle.restore_rate)

    def execute(self, query: str, variables: Mapping[str, Any] | None = None, cost: float = QUERY_COST,
                max_attempts: int | None = None) -> dict:
        """Send one document; return its `data`. THROTTLED answers are waited out and retried."""
        for _ in range(self.max_throttled + 1):
            self._pace(cost)
            self.calls += 1
            body = self.http.post(self.endpoint, json={"query": query, "variables": dict(variables or {})},
                                  headers=self.headers, max_attempts=max_attempts).json()
            status = ((body.get("extensions") or {}).get("cost") or {}).get("throttleStatus")
            if status:
                self.throttle = ThrottleStatus(float(status["maximumAvailable"]), float(status["currentlyAvailable"]),
                                               float(status["restoreRate"]), self.clock())
            errors = body.get("errors") or []
            if any((e.get("extensions") or {}).get("code") == "THROTTLED" for e in errors):
                self.throttled += 1
                requested = float(((body.get("extensions") or {}).get("cost") or {}).get("requestedQueryCost", cost))
                available = self.available() or 0.0
                rate = self.throttle.restore_rate if self.throttle else 50.0
                self.sleep(max(0.0, requested - available) / rate)
                continue
            if errors:
                raise ShopifyError("Shopify refused the request: " + "; ".join(e.get("message", "?") for e in errors))
            return body.get("data") or {}
        raise ShopifyError(f"still THROTTLED after {self.max_throttled} waits: lower the push's pace or retry later")

    def product_ids_by_handle(self, handles: list[str]) -> dict[str, str | None]:
        """The ids of many products by handle: one query of up to 50 aliased lookups (50 points) per call."""
        out: dict[str, str | None] = {}
        for start in range(0, len(handles), HANDLES_PER_CALL):
            chunk = handles[start:start + HANDLES_PER_CALL]
            query = "query claroProductsByHandle(%s) { %s }" % (  # noqa: UP031 - GraphQL braces
                ", ".join(f"$h{i}: String!" for i in range(len(chunk))),
                " ".join(f"p{i}: productByIdentifier(identifier: {{handle: $h{i}}}) {{ id }}"
                         for i in range(len(chunk))))
            found = self.execute(query, {f"h{i}": h for i, h in enumerate(chunk)}, cost=len(chunk) * QUERY_COST)
            out.update({h: (found.get(f"p{i}") or {}).get("id") for i, h in enumerate(chunk)})
        return out

    def product_id_by_handle(self, handle: str) -> str | None:
        found = self.execute(PRODUCT_BY_HANDLE, {"handle": handle}).get("productByIdentifier")
        return found["id"] if found else None

    def products_media(self, ids: list[str]) -> dict[str, list[dict]]:
        """The media of many products (status, mediaErrors, original URL), by product id."""
        out: dict[str, list[dict]] = {}
        for start in range(0, len(ids), PRODUCTS_PER_MEDIA_CALL):
            chunk = ids[start:start + PRODUCTS_PER_MEDIA_CALL]
            found = self.execute(PRODUCTS_MEDIA, {"ids": chunk}, cost=len(chunk) * 53)["nodes"]
            out.update({n["id"]: list(n["media"]["nodes"]) for n in found if n})
        return out

    def media(self, ids: list[str]) -> dict[str, dict]:
        """Media as they are now (status, mediaErrors, original URL), by id; 250 ids per call."""
        out: dict[str, dict] = {}
        for start in range(0, len(ids), NODES_PER_CALL):
            chunk = ids[start:start + NODES_PER_CALL]
            out.update({n["id"]: n for n in self.execute(MEDIA_BY_ID, {"ids": chunk}, cost=len(chunk))["nodes"]
                        if n})
        return out

    # ------------------------------------------------------------------------------- bulk operations
    def stage_upload(self, body: bytes, filename: str = "claro_product_set.jsonl") -> str:
        """Upload a JSONL file of mutation variables to Shopify's staged storage; return its staged upload path.

        As Shopify documents it: `stagedUploadsCreate` (resource BULK_MUTATION_VARIABLES) returns a target URL and
        signed form parameters; the file is sent as a multipart POST of every parameter followed by the file, and
        the `key` parameter is the path `bulkOperationRunMutation` takes."""
        created = self.execute(STAGED_UPLOAD, {"input": [{
            "resource": "BULK_MUTATION_VARIABLES", "filename": filename, "mimeType": "text/jsonl",
            "httpMethod": "POST"}]}, cost=MUTATION_COST)["stagedUploadsCreate"]
        if created.get("userErrors"):
            raise ShopifyError("Shopify refused the staged upload of the bulk file: "
                               + _messages(created["userErrors"]))
        target = created["stagedTargets"][0]
        fields = [(p["name"], p["value"]) for p in target["parameters"]]
        key = dict(fields).get("key")
        if not key or not target.get("url"):
            raise ShopifyError("Shopify's staged upload target has no url or `key` parameter: retry the push")
        # A plain POST without the Admin token: the target is the storage host, not the shop.
        self.http.post(target["url"], data=fields, files={"file": (filename, body, "text/jsonl")})
        return key

    def run_bulk_mutation(self, mutation: str, staged_upload_path: str,
                          client_identifier: str | None = None) -> tuple[dict | None, list[dict]]:
        """Start a bulk mutation over a staged JSONL file; return (bulkOperation, userErrors)."""
        ran = self.execute(BULK_RUN, {"mutation": mutation, "path": staged_upload_path, "client": client_identifier},
                           cost=MUTATION_COST)["bulkOperationRunMutation"]
        return ran.get("bulkOperation"), list(ran.get("userErrors") or [])

    def bulk_operation(self, operation_id: str | None = None) -> dict | None:
        """A bulk operation by id, or (no id) this app's current bulk mutation on the shop."""
        if operation_id is None:
            return self.execute(BULK_CURRENT).get("currentBulkOperation")
        return self.execute(BULK_BY_ID, {"id": operation_id}).get("node")

    def wait_for_bulk(self, operation_id: str | None = None) -> dict | None:
        """Poll a bulk operation (or the current bulk mutation) until it is no longer CREATED, RUNNING or
        CANCELING; waits start at `poll_first` seconds and double up to `poll_most`."""
        delay, waited = self.poll_first, 0.0
        while True:
            operation = self.bulk_operation(operation_id)
            if operation is None or operation["status"] not in ("CREATED", "RUNNING", "CANCELING"):
                return operation
            if waited >= self.bulk_timeout:
                raise ShopifyError(f"bulk operation {operation['id']} is still {operation['status']} after "
                                   f"{waited:.0f} s: see it in the shop's admin, then push again (nothing is "
                                   "duplicated: products it created are found by handle)")
            self.sleep(delay)
            waited += delay
            delay = min(self.poll_most, delay * 2)

    def bulk_result_lines(self, url: str) -> Iterator[dict]:
        """The lines of a bulk operation's result (or partial data) file, read as they arrive."""
        with self.http.get(url, stream=True) as response:
            for line in response.iter_lines():
                if line.strip():
                    yield json.loads(line)

    def product_set(self, product_input: Mapping[str, Any]) -> tuple[dict | None, list[dict]]:
        """Upsert one product; return (product, userErrors).

        A create (no `id`) is sent once: resent after a lost answer it would create a second product, so the
        caller looks the handle up again instead (`push_product`)."""
        payload = self.execute(PRODUCT_SET, {"input": dict(product_input)}, cost=MUTATION_COST,
                               max_attempts=None if product_input.get("id") else 1)["productSet"]
        return payload.get("product"), list(payload.get("userErrors") or [])


# ---------------------------------------------------------------------------------------------- payloads
@dataclass
class ProductPayload:
    """One Shopify product built from the records of one group: what is sent and which records it came from."""

    handle: str
    input: dict
    keys: list[str]
    errors: dict[str, str] = field(default_factory=dict)  # record key -> why it cannot be sent

    @property
    def digest(self) -> str:
        return payload_hash(self.input)


def payload_hash(product_input: Mapping[str, Any]) -> str:
    body = {k: v for k, v in product_input.items() if k != "id"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def handle_for(value: object) -> str:
    """Shopify's handle rule: lower case, letters/digits joined by single hyphens."""
    slug = re.sub(r"[^a-z0-9]+", "-", str(value).lower()).strip("-")
    return slug or "product"


def _money(value: object) -> str | None:
    if _text(value) is None:
        return None
    return f"{float(value):.2f}"


def metafield_problem(kind: str, value: str) -> str | None:
    """Why `value` is not a valid value of Shopify metafield type `kind` (None: it is)."""
    try:
        if kind == "number_integer":
            int(value)
        elif kind == "number_decimal":
            float(value)
        elif kind == "date":
            date.fromisoformat(value)
        elif kind == "date_time":
            datetime.fromisoformat(value)
        elif kind == "boolean" and value.lower() not in ("true", "false"):
            return f"{value!r} is not true or false"
        elif kind == "url" and not re.match(r"^(https?|mailto|sms|tel)://?", value):
            return f"{value!r} is not a URL (http, https, mailto, sms or tel)"
        elif kind == "json":
            json.loads(value)
    except ValueError:
        return f"{value!r} is not a valid {kind}"
    return None


def build_products(records: Iterable[Mapping[str, Any]], dest: Any, key: str) -> list[ProductPayload]:
    """Group records into Shopify products per the destination's mapping (`DestinationSpec` of kind shopify).

    A record that cannot be sent (missing option value, two records claiming one variant, a metafield value of
    the wrong type) is listed in the product's `errors`; the rest of its product is still sent."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        groups.setdefault(_text(record.get(dest.group_by or key)) or _text(record[key]), []).append(record)
    out = []
    for group, members in groups.items():
        first = members[0]
        errors: dict[str, str] = {}
        product: dict[str, Any] = {"handle": handle_for(group)}
        for spec_key, field_name in (("title", "title"), ("description", "descriptionHtml"),
                                     ("vendor", "vendor"), ("product_type", "productType")):
            attribute = getattr(dest, spec_key)
            if attribute and _text(first.get(attribute)) is not None:
                product[field_name] = _text(first.get(attribute))
        if dest.tags and _text(first.get(dest.tags)):
            product["tags"] = [t.strip() for t in _text(first[dest.tags]).split(",") if t.strip()]
        if dest.status and _text(first.get(dest.status)):
            status = STATUSES.get(_text(first[dest.status]).lower())
            if status is None:
                errors[str(first[key])] = f"status {first[dest.status]!r} is not one of {', '.join(STATUSES)}"
            else:
                product["status"] = status
        names = [a.replace("_", " ").capitalize() for a in dest.options] or ["Title"]
        values: list[list[str]] = [[] for _ in names]
        variants, seen, keys = [], {}, []
        for record in members:
            rkey = str(record[key])
            chosen = [_text(record.get(a)) for a in dest.options] if dest.options else ["Default Title"]
            if None in chosen:
                errors[rkey] = f"option {dest.options[chosen.index(None)]!r} is empty: every variant needs a value " \
                               "for each option"
                continue
            if tuple(chosen) in seen:
                errors[rkey] = f"claims the same variant ({', '.join(chosen)}) as record {seen[tuple(chosen)]!r} " \
                               f"of product {group!r}"
                continue
            seen[tuple(chosen)] = rkey
            keys.append(rkey)
            for i, value in enumerate(chosen):
                if value not in values[i]:
                    values[i].append(value)
            variant: dict[str, Any] = {"optionValues": [{"optionName": n, "name": v}
                                                        for n, v in zip(names, chosen, strict=True)]}
            for spec_key, field_name, convert in (("price", "price", _money),
                                                  ("compare_at_price", "compareAtPrice", _money),
                                                  ("barcode", "barcode", _text)):
                attribute = getattr(dest, spec_key)
                if attribute and convert(record.get(attribute)) is not None:
                    variant[field_name] = convert(record.get(attribute))
            sku = _text(record.get(dest.sku or key))
            if sku:
                variant["sku"] = sku
            variants.append(variant)
        product["productOptions"] = [{"name": n, "position": i + 1, "values": [{"name": v} for v in vs]}
                                     for i, (n, vs) in enumerate(zip(names, values, strict=True))]
        product["variants"] = variants
        metafields = []
        for mf in dest.metafields:
            value = _text(first.get(mf.attribute))
            if value is None:
                continue
            if problem := metafield_problem(mf.type, value):
                errors[str(first[key])] = f"metafield {mf.namespace}.{mf.key}: {problem}"
                continue
            metafields.append({"namespace": mf.namespace, "key": mf.key, "type": mf.type, "value": value})
        if metafields:
            product["metafields"] = metafields
        if dest.images:
            alt = _text(first.get(dest.images.alt)) if dest.images.alt else None
            files = [{"originalSource": _text(first[a]), "contentType": "IMAGE", **({"alt": alt} if alt else {})}
                     for a in dest.images.attributes if _text(first.get(a))]
            if files:
                product["files"] = files
        out.append(ProductPayload(handle_for(group), product, keys, errors))
    return out


@dataclass
class PushResult:
    """What one product's push did: its Shopify id, the variant ids by SKU, and per-record errors."""

    handle: str
    keys: list[str]
    product_id: str | None = None
    variant_ids: dict[str, str] = field(default_factory=dict)
    media_ids: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    user_errors: list[dict] = field(default_factory=list)
    media: list[dict] = field(default_factory=list)  # the media nodes as last read (status, mediaErrors)
    sources: list[str] = field(default_factory=list)  # the image URLs sent, in order
    errors_before_media: dict[str, str] | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return not self.user_errors and self.product_id is not None

    @property
    def media_pending(self) -> bool:
        return self.product_id is not None and any(m.get("status") in ("UPLOADED", "PROCESSING") for m in self.media)

    def note_media(self, media: list[dict]) -> None:
        """Take the media as read; a FAILED one is an error on every record of the product (naming its URL)."""
        if self.errors_before_media is None:
            self.errors_before_media = dict(self.errors)
        self.errors = dict(self.errors_before_media)
        self.media = media
        self.media_ids = [m["id"] for m in media]
        for i, node in enumerate(media):
            if node.get("status") != "FAILED":
                continue
            url = ((node.get("originalSource") or {}).get("url")
                   or (self.sources[i] if i < len(self.sources) else node["id"]))
            why = "; ".join(f"{e['message']} ({e['code']}{': ' + e['details'] if e.get('details') else ''})"
                            for e in node.get("mediaErrors") or []) or "Shopify could not process it"
            for k in self.keys:
                message = f"image {url}: {why}; fix the image URL and the product is sent again next push"
                self.errors[k] = f"{self.errors[k]}; {message}" if self.errors.get(k) else message


def _messages(user_errors: Iterable[Mapping[str, Any]]) -> str:
    return "; ".join(f"{'.'.join(e.get('field') or [])}: {e['message']}" if e.get("field") else e["message"]
                     for e in user_errors)


def product_result(payload: ProductPayload, product: Mapping[str, Any] | None,
                   user_errors: list[dict]) -> PushResult:
    """A productSet answer (one call's or one bulk result line's) as a PushResult of the payload's records."""
    result = PushResult(payload.handle, payload.keys, errors=dict(payload.errors), user_errors=user_errors,
                        sources=[f["originalSource"] for f in payload.input.get("files", [])])
    if user_errors:
        message = _messages(user_errors)
        for k in payload.keys:
            result.errors.setdefault(k, message)
    if product:  # after the userErrors: media read again later keep them
        result.product_id = product["id"]
        result.variant_ids = {v.get("sku") or "": v["id"] for v in product["variants"]["nodes"]}
        if "media" in product:  # not in a bulk operation's result
            result.note_media(list(product["media"]["nodes"]))
    return result


def push_product(client: ShopifyClient, payload: ProductPayload, product_id: str | None = None) -> PushResult:
    """Upsert one product: by its stored id, else by the id found under its handle, else create it."""
    product_id = product_id or client.product_id_by_handle(payload.handle)
    body = dict(payload.input, **({"id": product_id} if product_id else {}))
    try:
        product, user_errors = client.product_set(body)
    except HttpError as error:
        if product_id or not (error.status is None or error.status >= 500):
            raise
        # The create's answer was lost: Shopify may have created the product. Find it before trying again.
        found = client.product_id_by_handle(payload.handle)
        product, user_errors = client.product_set(dict(payload.input, **({"id": found} if found else {})))
    return product_result(payload, product, user_errors)


def bulk_batches(sends: list[tuple[ProductPayload, str | None]]) -> Iterator[list[tuple[ProductPayload, str | None]]]:
    """The products in runs whose JSONL stays under BULK_FILE_LIMIT bytes (an id added to a line included)."""
    batch: list[tuple[ProductPayload, str | None]] = []
    size = 0
    for send in sends:
        line = len(json.dumps({"input": send[0].input}, separators=(",", ":")).encode()) + 64
        if batch and size + line > BULK_FILE_LIMIT:
            yield batch
            batch, size = [], 0
        batch.append(send)
        size += line
    if batch:
        yield batch


def push_bulk(client: ShopifyClient, sends: list[tuple[ProductPayload, str | None]]) -> list[PushResult]:
    """Upsert many products with one bulk operation; return one PushResult per product, in order.

    The JSONL holds one `{"input": ...}` per product, with the stored id or the id found under its handle (as
    `push_product` does, so nothing is created twice; handles are looked up 50 to a query). Each line of the
    result file is matched back to its product by `__lineNumber` (Shopify does not promise the input's order).
    A product with no result line (the operation FAILED part way) comes back with an error on its records, so it
    is sent again next push."""
    def upload() -> tuple[dict | None, list[dict]]:
        found = client.product_ids_by_handle([p.handle for p, remote_id in sends if not remote_id])
        ids = [remote_id or found[p.handle] for p, remote_id in sends]
        lines = [json.dumps({"input": dict(p.input, **({"id": i} if i else {}))}, separators=(",", ":"))
                 for (p, _), i in zip(sends, ids, strict=True)]
        return client.run_bulk_mutation(BULK_PRODUCT_SET, client.stage_upload(("\n".join(lines) + "\n").encode()))

    operation, user_errors = upload()
    if any(e.get("code") == "OPERATION_IN_PROGRESS" for e in user_errors):
        # One bulk mutation at a time per shop (before API 2026-01): wait for the running one, which may be an
        # interrupted push of ours, then look the handles up again (it may have created some of these products).
        log.info("a bulk mutation is already running on the shop: waiting for it to finish")
        client.wait_for_bulk()
        operation, user_errors = upload()
    if user_errors or operation is None:
        raise ShopifyError("Shopify refused the bulk operation: " + (_messages(user_errors) or "no operation") +
                           ("; wait for the running bulk mutation to finish, then push again"
                            if any(e.get("code") == "OPERATION_IN_PROGRESS" for e in user_errors) else ""))
    finished = client.wait_for_bulk(operation["id"]) or {"id": operation["id"], "status": "unknown"}
    results: dict[int, PushResult] = {}
    url = finished.get("url") or finished.get("partialDataUrl")
    for n, line in enumerate(client.bulk_result_lines(url) if url else ()):
        number = int(line.get("__lineNumber", n))
        if not 0 <= number < len(sends):
            log.warning("bulk result line %s names no line of the upload: ignored", number)
            continue
        payload = sends[number][0]
        if line.get("errors"):  # the line's mutation itself was refused (not a userError)
            message = "; ".join(e.get("message", "?") for e in line["errors"])
            results[number] = product_result(payload, None, [{"field": None, "message": message}])
            continue
        answer = (line.get("data") or {}).get("productSet") or {}
        results[number] = product_result(payload, answer.get("product"), list(answer.get("userErrors") or []))
    out = []
    for number, (payload, _) in enumerate(sends):
        if number in results:
            out.append(results[number])
            continue
        why = (f"bulk operation {finished['id']} ended {finished['status']}"
               f"{' (' + finished['errorCode'] + ')' if finished.get('errorCode') else ''} before this product; "
               "it is sent again next push")
        out.append(PushResult(payload.handle, payload.keys, errors=dict(payload.errors, **dict.fromkeys(
            payload.keys, why)), user_errors=[{"field": None, "message": why}]))
    with_media = [r for r in out if r.product_id and r.sources]
    media = client.products_media([r.product_id for r in with_media])
    for result in with_media:
        result.note_media(media.get(result.product_id, []))
    return out


def settle_media(client: ShopifyClient, results: Iterable[PushResult]) -> list[PushResult]:
    """Read again the media Shopify is still downloading (`nodes(ids:)`, 250 a call), a few times with growing
    waits (`media_polls`, from `poll_first` seconds); return the results whose media became FAILED (their errors
    now say so). Media still processing after that are left as sent."""
    pending = [r for r in results if r.media_pending]
    failed: dict[int, PushResult] = {}
    delay = client.poll_first
    for _ in range(client.media_polls):
        if not pending:
            break
        client.sleep(delay)
        delay = min(client.poll_most, delay * 2)
        now = client.media([m["id"] for r in pending for m in r.media if m.get("status") in ("UPLOADED", "PROCESSING")])
        for result in pending:
            before = dict(result.errors)
            result.note_media([now.get(m["id"], m) for m in result.media])
            if result.errors != before:
                failed[id(result)] = result
        pending = [r for r in pending if r.media_pending]
    if pending:
        log.warning("media of %d products still processing on Shopify; not waited for", len(pending))
    return list(failed.values())


# ------------------------------------------------------------------------------------------------- push
def payload_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """What differs between the payload last pushed and this one, field by field (variants by SKU)."""
    return channel_payload_changes(old, new, keyed={"variants": ("variant", "sku")}, ignore=("id",))


def push(client: ShopifyClient | None, state: Any, destination: str, dest: Any, records: Iterable[Mapping],
         key: str, *, dry_run: bool = False) -> PushPlan:
    """Push records to Shopify, sending only products whose payload changed since the last successful push.

    More products to send than the destination's `bulk_threshold` go as one bulk operation, fewer one
    `productSet` each. Media Shopify is still downloading are read again after the sends; a FAILED image is an
    error on its product's records (which are sent again next push).

    `records` must hold every record of each product group it touches (`productSet` replaces a product's
    variants: a group sent with only its changed records would lose the others). `state` is a
    `catalogue.channels.ChannelState`; with `dry_run` nothing is sent and nothing is written."""
    products = build_products(records, dest, key)
    stored = state.get(destination, [k for p in products for k in (*p.keys, *p.errors)])
    plan, entries = PushPlan(), []
    sends: list[tuple[ProductPayload, str | None]] = []
    for payload in products:
        mine = [stored[k] for k in payload.keys if k in stored]
        remote_id = next((e.remote_id for e in mine if e.remote_id), None)
        archiving = payload.input.get("status") == "ARCHIVED"
        unchanged = (len(mine) == len(payload.keys) and all(e.hash == payload.digest and e.status in
                                                             ("pushed", "archived") for e in mine))
        entries += [ChannelRecord(destination, k, "held", payload.handle, remote_id, error=why)
                    for k, why in payload.errors.items()]
        plan.failed.update(payload.errors)
        if unchanged or not payload.keys:
            plan.unchanged.append(payload.handle)
            continue
        (plan.archive if archiving else plan.update if remote_id else plan.create).append(payload.handle)
        if remote_id:
            plan.changes[payload.handle] = payload_changes(next((e.payload for e in mine if e.payload), None),
                                                           payload.input)
        sends.append((payload, remote_id))
    if dry_run:
        return plan
    state.put(entries)
    entries, done = [], []

    def record(payload: ProductPayload, remote_id: str | None, result: PushResult) -> list[ChannelRecord]:
        archiving = payload.input.get("status") == "ARCHIVED"
        out = []
        for k in payload.keys:
            error = result.errors.get(k)
            ids = {"variant": result.variant_ids.get(k), "media": result.media_ids}
            if error or not result.ok:
                plan.failed[k] = error or "Shopify returned no product"
                out.append(ChannelRecord(destination, k, "failed", payload.handle, result.product_id or remote_id,
                                         ids if result.product_id else {}, error=plan.failed[k]))
            else:
                out.append(ChannelRecord(destination, k, "archived" if archiving else "pushed", payload.handle,
                                         result.product_id, ids, payload.digest, payload=payload.input))
        return out

    if len(sends) > dest.bulk_threshold:
        for batch in bulk_batches(sends):  # one bulk operation per file Shopify accepts, stored as each ends
            results = push_bulk(client, batch)
            plan.sent += len(batch)  # products written (by one bulk operation)
            for (payload, remote_id), result in zip(batch, results, strict=True):
                entries += record(payload, remote_id, result)
                done.append((payload, remote_id, result))
            state.put(entries)
            entries = []
    else:
        for payload, remote_id in sends:
            result = push_product(client, payload, remote_id)
            plan.sent += 1
            entries += record(payload, remote_id, result)
            done.append((payload, remote_id, result))
            if len(entries) >= STATE_BATCH:  # stored as the push goes: a push that dies mid-way keeps what it did
                state.put(entries)
                entries = []
        state.put(entries)
    # Shopify downloads media after answering: an image that fails turns its product's records to failed.
    late = {id(r) for r in settle_media(client, [r for _, _, r in done])}
    state.put([e for payload, remote_id, result in done if id(result) in late
               for e in record(payload, remote_id, result)])
    return plan


# ----------------------------------------------------------------------------------- from the catalogue
def push_from_store(store: Any, destination: str, dest: Any, client: ShopifyClient | None, *,
                    filter: str | None = None, dry_run: bool = False) -> PushPlan:
    """Push the records changed since the destination's cursor and those refused last time, each with every
    other record of its product (`productSet` replaces a product's variants)."""
    key = store.catalogue(dest.catalogue).key
    with records_to_push(store, destination, dest, filter=filter, dry_run=dry_run,
                         group_by=dest.group_by) as records:
        return push(client, ChannelState(store), destination, dest, records, key, dry_run=dry_run) \
            if records else PushPlan()


def client_from_env(dest: Any) -> ShopifyClient:
    """The client for a shopify destination, from the variables its spec names (read when a push runs)."""
    return ShopifyClient.from_env(dest.shop_url_env, dest.token_env, dest.api_version)
