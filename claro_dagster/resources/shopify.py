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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from claro_dagster.catalogue.channels import ChannelError, ChannelRecord, ChannelState, PushPlan, records_to_push
from claro_dagster.catalogue.channels import payload_changes as channel_payload_changes
from claro_dagster.catalogue.channels import text_value as _text

from .http import HttpClient, HttpError

log = logging.getLogger(__name__)

PRODUCT_SET = """
mutation claroProductSet($input: ProductSetInput!) {
  productSet(input: $input, synchronous: true) {
    product {
      id
      handle
      variants(first: 250) { nodes { id sku selectedOptions { name value } } }
      media(first: 50) { nodes { id alt } }
    }
    userErrors { field message code }
  }
}
"""
PRODUCT_BY_HANDLE = """
query claroProductByHandle($handle: String!) {
  productByIdentifier(identifier: {handle: $handle}) { id handle }
}
"""
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
                 max_throttled: int = 5):
        self.endpoint = f"{shop_url.rstrip('/')}/admin/api/{api_version}/graphql.json"
        self.http = http or HttpClient(sleep=sleep)
        self.http.session.headers["X-Shopify-Access-Token"] = token
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
                                  max_attempts=max_attempts).json()
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

    def product_id_by_handle(self, handle: str) -> str | None:
        found = self.execute(PRODUCT_BY_HANDLE, {"handle": handle}).get("productByIdentifier")
        return found["id"] if found else None

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

    @property
    def ok(self) -> bool:
        return not self.user_errors and self.product_id is not None


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
    result = PushResult(payload.handle, payload.keys, errors=dict(payload.errors), user_errors=user_errors)
    if product:
        result.product_id = product["id"]
        result.variant_ids = {v.get("sku") or "": v["id"] for v in product["variants"]["nodes"]}
        result.media_ids = [m["id"] for m in product["media"]["nodes"]]
    if user_errors:
        message = "; ".join(f"{'.'.join(e.get('field') or [])}: {e['message']}" for e in user_errors)
        for k in payload.keys:
            result.errors.setdefault(k, message)
    return result


# ------------------------------------------------------------------------------------------------- push
def payload_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """What differs between the payload last pushed and this one, field by field (variants by SKU)."""
    return channel_payload_changes(old, new, keyed={"variants": ("variant", "sku")}, ignore=("id",))


def push(client: ShopifyClient | None, state: Any, destination: str, dest: Any, records: Iterable[Mapping],
         key: str, *, dry_run: bool = False) -> PushPlan:
    """Push records to Shopify, sending only products whose payload changed since the last successful push.

    `records` must hold every record of each product group it touches (`productSet` replaces a product's
    variants: a group sent with only its changed records would lose the others). `state` is a
    `catalogue.channels.ChannelState`; with `dry_run` nothing is sent and nothing is written."""
    products = build_products(records, dest, key)
    stored = state.get(destination, [k for p in products for k in (*p.keys, *p.errors)])
    plan, entries = PushPlan(), []
    for payload in products:
        mine = [stored[k] for k in payload.keys if k in stored]
        remote_id = next((e.remote_id for e in mine if e.remote_id), None)
        archiving = payload.input.get("status") == "ARCHIVED"
        unchanged = (len(mine) == len(payload.keys) and all(e.hash == payload.digest and e.status in
                                                             ("pushed", "archived") for e in mine))
        held = [ChannelRecord(destination, k, "held", payload.handle, remote_id, error=why)
                for k, why in payload.errors.items()]
        plan.failed.update(payload.errors)
        if unchanged or not payload.keys:
            plan.unchanged.append(payload.handle)
            entries += held
            continue
        (plan.archive if archiving else plan.update if remote_id else plan.create).append(payload.handle)
        if remote_id:
            plan.changes[payload.handle] = payload_changes(next((e.payload for e in mine if e.payload), None),
                                                           payload.input)
        if dry_run:
            continue
        result = push_product(client, payload, remote_id)
        plan.sent += 1
        for k in payload.keys:
            error = result.errors.get(k)
            if error or not result.ok:
                plan.failed[k] = error or "Shopify returned no product"
                entries.append(ChannelRecord(destination, k, "failed", payload.handle,
                                             result.product_id or remote_id, error=plan.failed[k]))
            else:
                entries.append(ChannelRecord(destination, k, "archived" if archiving else "pushed", payload.handle,
                                             result.product_id, {"variant": result.variant_ids.get(k),
                                                                 "media": result.media_ids}, payload.digest,
                                             payload=payload.input))
        entries += held
        if len(entries) >= STATE_BATCH:  # stored as the push goes: a push that dies mid-way keeps what it did
            state.put(entries)
            entries = []
    if not dry_run:
        state.put(entries)
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
