"""Amazon Selling Partner API (SP-API): the Listings Items client, validated locally before anything is sent.

`AmazonListings` puts and patches listings (`putListingsItem`, `patchListingsItem` with JSON Patch) for one seller:

* the access token comes from Login with Amazon (a refresh-token grant against `token_url`); it is refreshed when it
  expires, and once more when the API answers 401/403 for it, then a clear error says what to check;
* every call waits on a token bucket per operation at the documented default rate (`RATES`, from Amazon's usage
  plans: 5 requests/s, burst 10 for putListingsItem, burst 5 for patchListingsItem), so the ceiling is used and
  not exceeded; a 429 that still comes back is retried after its `Retry-After` by the project's HTTP layer;
* every listing is validated against its product type's JSON Schema (getDefinitionsProductType, then the schema
  document it links to, cached per product type and version) and an invalid one is never sent: its issues come back
  with the JSON pointer of the offending value;
* the issues Amazon returns come back per SKU (code, message, severity, attribute names).

`push` / `push_from_store` turn catalogue records into listings for a `kind: amazon` destination (`build_listing`:
SKU, product type fixed or per record, the spec's attribute mapping laid out in Amazon's attribute structure) and
send only what changed since the last accepted listing, kept per record in the channel state
(`catalogue.channels`): price/quantity-like changes as JSON Patch, the rest as puts, many at once as one
JSON_LISTINGS_FEED, archived records as deletions; refusals (local schema or Amazon's) land on their records.

Requests go through `claro_dagster.resources.http.HttpClient`, the project's one HTTP layer, rather than through
python-amazon-sp-api's clients: the listings calls are three small REST calls, the project's layer already retries
429/5xx after the server's hint with an injectable clock and sleep (tests never wait), and python-amazon-sp-api keeps
its token cache module-global and sends a wrong Host header to a plain-http endpoint (see its notes), which a
contract-checking fake and the tests' isolation both trip on. Since 2023 SP-API needs no AWS signature, only the LWA
token in `x-amz-access-token`, so nothing of the library's signing is needed either.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import json as jsonlib
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import jsonschema

from claro_dagster.catalogue.channels import (
    ChannelError,
    ChannelRecord,
    ChannelState,
    PushPlan,
    payload_changes,
    records_to_push,
    text_value,
)
from claro_dagster.resources.http import HttpClient, HttpError, body_excerpt
from claro_dagster.spec.models import AmazonAttribute, amazon_attribute

LISTINGS = "/listings/2021-08-01/items"
DEFINITIONS = "/definitions/2020-09-01/productTypes"

# Default rate (requests per second) and burst per operation, from the usage plans in Amazon's OpenAPI models
# (amzn/selling-partner-api-models, listingsItems_2021-08-01 and definitionsProductTypes_2020-09-01).
RATES: dict[str, tuple[float, int]] = {
    "putListingsItem": (5.0, 10),
    "patchListingsItem": (5.0, 5),
    "getListingsItem": (5.0, 10),
    "deleteListingsItem": (5.0, 5),
    "getDefinitionsProductType": (5.0, 10),
    # feeds_2021-06-30
    "createFeedDocument": (0.5, 15),
    "createFeed": (0.0083, 15),
    "getFeed": (2.0, 15),
    "getFeedDocument": (0.0222, 10),
}
FEEDS = "/feeds/2021-06-30"
# The SP-API endpoint serving each marketplace (Amazon's "SP-API endpoints" and "marketplace IDs" tables): a
# destination without an endpoint variable is sent to its marketplaces' region.
REGION_ENDPOINTS = {"na": "https://sellingpartnerapi-na.amazon.com", "eu": "https://sellingpartnerapi-eu.amazon.com",
                    "fe": "https://sellingpartnerapi-fe.amazon.com"}
MARKETPLACE_REGIONS = {
    **dict.fromkeys(("ATVPDKIKX0DER", "A2EUQ1WTGCTBG2", "A1AM78C64UM0Y8", "A2Q3Y263D00KWC"), "na"),
    **dict.fromkeys(("A1RKKUPIHCS9HS", "A1F83G8C2ARO7P", "A13V1IB3VIYZZH", "AMEN7PMS3EDWL", "A1805IZSGTT6HS",
                     "A1PA6795UKMFR9", "APJ6JRA9NG5V4", "A2NODRKZP88ZB9", "AE08WJ6YKNBMC", "A1C3SOZRARQ6R3",
                     "ARBP9OOSHTCHU", "A33AVAJ2PDY3EV", "A17E79C6D8DWNP", "A2VIGQ35RCS4UG", "A21TJRUUN4KGV"), "eu"),
    **dict.fromkeys(("A19VAU5U5O7RUS", "A39IBJ37TRP1C6", "A1VC38T7YXB528"), "fe"),
}
DEFAULT_TOKEN_URL = "https://api.amazon.com/auth/o2/token"
FEED_DONE = frozenset({"DONE", "FATAL", "CANCELLED"})


class AmazonError(ChannelError):
    """A call to SP-API or Login with Amazon that did not succeed; the message says what to do."""


_SCHEMAS: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}  # endpoint -> (product type, version) -> schema


class UnknownProductType(AmazonError):
    """Amazon has no such product type (for this marketplace): the listings of that type cannot be sent."""


class TokenBucket:
    """A token bucket: `rate` tokens a second up to `burst`; `take()` waits until one is there.

    `headroom` tokens of the burst are never used: Amazon's bucket counts arrivals, and a request that left on time
    can arrive later than the one before it did (network jitter), which with the whole burst in use is a 429. One
    token of headroom absorbs up to 1/rate seconds of jitter (0.2 s at 5/s) and costs one request per burst.
    `clock` and `sleep` are injectable so tests never wait.
    """

    def __init__(self, rate: float, burst: int, *, headroom: int = 0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.rate = rate
        self.burst = max(1, burst - headroom)
        self.clock = clock
        self.sleep = sleep
        self.tokens = float(self.burst)
        self.updated = clock()
        self.lock = threading.Lock()

    def take(self) -> None:
        with self.lock:
            now = self.clock()
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            # take the token now and wait off the debt: no loop, so no float rounding can spin it
            self.tokens -= 1
            if self.tokens < 0:
                self.sleep(-self.tokens / self.rate)


@dataclass(frozen=True)
class ListingIssue:
    """One problem with a listing: Amazon's (code, severity, attribute names) or the local schema's (pointer)."""

    sku: str
    code: str
    message: str
    severity: str = "ERROR"
    attribute_names: tuple[str, ...] = ()
    pointer: str | None = None  # JSON pointer into the listing's attributes (local validation)


@dataclass
class ListingResult:
    """What happened to one SKU: `sent` is False when local validation stopped it."""

    sku: str
    status: str  # ACCEPTED, INVALID (Amazon's) or INVALID_LOCALLY
    sent: bool
    submission_id: str | None = None
    issues: list[ListingIssue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ACCEPTED" and not any(i.severity == "ERROR" for i in self.issues)


class AmazonListings:
    """Listings Items for one seller in the given marketplaces (see the module doc)."""

    def __init__(self, *, endpoint_url: str, token_url: str, client_id: str, client_secret: str,
                 refresh_token: str, seller_id: str, marketplace_ids: Sequence[str], issue_locale: str = "en_US",
                 http: HttpClient | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, rates: Mapping[str, tuple[float, int]] = RATES):
        if not marketplace_ids:
            raise AmazonError("No Amazon marketplace id given: name at least one (e.g. ATVPDKIKX0DER for amazon.com)")
        self.endpoint_url = endpoint_url.rstrip("/")
        self.token_url = token_url
        self.client_id = client_id
        self.client_secret = client_secret
        self.refresh_token = refresh_token
        self.seller_id = seller_id
        self.marketplace_ids = list(marketplace_ids)
        self.issue_locale = issue_locale
        self.http = http or HttpClient(sleep=sleep)
        self.clock = clock
        self.buckets = {op: TokenBucket(rate, burst, headroom=1, clock=clock, sleep=sleep)
                        for op, (rate, burst) in rates.items()}
        self._token: str | None = None
        self._token_expires = 0.0
        self._versions: dict[str, str] = {}  # product type -> version fetched
        # (product type, version) -> JSON Schema; shared by the clients of one endpoint in this process, so each
        # push asks only which version is current (a schema document is hundreds of kilobytes)
        self._schemas = _SCHEMAS.setdefault(self.endpoint_url, {})

    @classmethod
    def from_environment(cls, *, seller_id: str, marketplace_ids: Sequence[str], client_id_env: str,
                         client_secret_env: str, refresh_token_env: str, endpoint_url_env: str | None = None,
                         token_url_env: str | None = None, environ: Mapping[str, str] | None = None,
                         **kwargs: Any) -> AmazonListings:
        """A client from the environment variables a spec names; unset endpoint variables mean Amazon's own."""
        environ = os.environ if environ is None else environ
        missing = [name for name in (client_id_env, client_secret_env, refresh_token_env) if not environ.get(name)]
        if missing:
            raise AmazonError(f"Set {', '.join(missing)} to push listings to Amazon (the SP-API application's LWA "
                              "client id and secret, and the seller's refresh token from authorising the app)")
        return cls(seller_id=seller_id, marketplace_ids=marketplace_ids, client_id=environ[client_id_env],
                   client_secret=environ[client_secret_env], refresh_token=environ[refresh_token_env],
                   endpoint_url=environ.get(endpoint_url_env or "", "") or region_endpoint(marketplace_ids),
                   token_url=environ.get(token_url_env or "", "") or DEFAULT_TOKEN_URL, **kwargs)

    # ------------------------------------------------------------------ token
    def access_token(self, *, refresh: bool = False) -> str:
        if refresh or self._token is None or self.clock() >= self._token_expires:
            response = self.http.request("POST", self.token_url, raise_for_status=False, data={
                "grant_type": "refresh_token", "refresh_token": self.refresh_token,
                "client_id": self.client_id, "client_secret": self.client_secret})
            if response.status_code != 200:
                raise AmazonError(
                    f"Login with Amazon refused the refresh token (HTTP {response.status_code}: "
                    f"{body_excerpt(response)}): check the client id, client secret and refresh token of the "
                    "SP-API application (the refresh token comes from authorising the app in Seller Central)")
            body = response.json()
            self._token = body["access_token"]
            # a minute early, so a token never expires between the check and the call
            self._token_expires = self.clock() + float(body.get("expires_in", 3600)) - 60
        return self._token

    # ------------------------------------------------------------------ calls
    def call(self, operation: str, method: str, path: str, *, params: Mapping[str, Any] | None = None,
             json: Any = None, missing_ok: bool = False) -> Any:
        """One SP-API call: paced by its operation's bucket, the token refreshed once if the API refuses it.

        With `missing_ok` a 404 answers its ErrorList instead of raising."""
        refreshed = False
        while True:
            bucket = self.buckets.get(operation)
            if bucket is not None:
                bucket.take()
            try:
                response = self.http.request(
                    method, self.endpoint_url + path, params=params, json=json, raise_for_status=False,
                    headers={"x-amz-access-token": self.access_token(), "Accept": "application/json"})
            except HttpError as error:
                raise AmazonError(f"SP-API {operation} could not be reached ({error}): check the endpoint URL "
                                  "or try again later; the next push resumes where this one stopped") from error
            if response.status_code in (401, 403) and not refreshed:
                refreshed = True
                self.access_token(refresh=True)
                continue
            if response.status_code in (401, 403):
                raise AmazonError(
                    f"SP-API refused {operation} even with a fresh access token (HTTP {response.status_code}: "
                    f"{body_excerpt(response)}): check that the application has the Product Listing role and "
                    f"is authorised by seller {self.seller_id}")
            if response.status_code >= 400 and response.status_code != 400 and not (
                    missing_ok and response.status_code == 404):
                raise AmazonError(f"SP-API {operation} failed with HTTP {response.status_code}: "
                                  f"{body_excerpt(response)}; try again later or check the endpoint URL")
            return response.json() if response.content else None

    # ------------------------------------------------------------------ product types
    def product_type_schema(self, product_type: str) -> dict[str, Any]:
        """The JSON Schema of a product type's attributes, fetched once per product type and version."""
        version = self._versions.get(product_type)
        if version is not None:
            return self._schemas[(product_type, version)]
        definition = self.call("getDefinitionsProductType", "GET", f"{DEFINITIONS}/{quote(product_type, safe='')}",
                               params={"marketplaceIds": ",".join(self.marketplace_ids), "sellerId": self.seller_id,
                                       "requirements": "LISTING", "locale": "DEFAULT"}, missing_ok=True)
        if not definition or "errors" in definition:
            raise UnknownProductType(f"Amazon has no product type {product_type!r}: {definition}; "
                              "pick one listed by searchDefinitionsProductTypes")
        version = definition["productTypeVersion"]["version"]
        if (product_type, version) not in self._schemas:
            link = definition["schema"]["link"]["resource"]
            response = self.http.request("GET", link)
            self._schemas[(product_type, version)] = response.json()
        self._versions[product_type] = version
        return self._schemas[(product_type, version)]

    def validate(self, sku: str, product_type: str, attributes: Mapping[str, Any], *,
                 partial: bool = False) -> list[ListingIssue]:
        """The problems of a listing's attributes against its product type's schema (all of them, not the first).

        `partial` checks only the attributes given (for a patch): the schema's required list is not applied.
        """
        schema = self.product_type_schema(product_type)
        if partial:
            schema = {k: v for k, v in schema.items() if k != "required"}
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft201909Validator)
        validator = cls(schema)
        issues = []
        for error in sorted(validator.iter_errors(dict(attributes)), key=lambda e: list(e.absolute_path)):
            pointer = "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in error.absolute_path)
            names: tuple[str, ...] = ()
            if error.absolute_path:
                names = (str(error.absolute_path[0]),)
            elif error.validator == "required":
                names = tuple(n for n in error.validator_value if n not in attributes)
            issues.append(ListingIssue(sku, f"SCHEMA_{str(error.validator).upper()}", error.message, "ERROR",
                                       names, pointer))
        return issues

    # ------------------------------------------------------------------ listings
    def put_listing(self, sku: str, product_type: str, attributes: Mapping[str, Any]) -> ListingResult:
        """Create or replace a listing (putListingsItem); nothing is sent when it fails local validation."""
        issues = self.validate(sku, product_type, attributes)
        if issues:
            return ListingResult(sku, "INVALID_LOCALLY", False, issues=issues)
        body = {"productType": product_type, "requirements": "LISTING", "attributes": dict(attributes)}
        return self._result(sku, self.call("putListingsItem", "PUT", self._item_path(sku),
                                           params=self._params(), json=body))

    def patch_listing(self, sku: str, patches: Sequence[Mapping[str, Any]], *, product_type: str) -> ListingResult:
        """Change part of a listing with JSON Patch (patchListingsItem), e.g. a price or a quantity.

        Each patch's value is validated against its attribute's schema first; nothing invalid is sent.
        """
        patched = {}
        for patch in patches:
            path = str(patch.get("path", ""))
            if not path.startswith("/attributes/") or path.count("/") != 2:
                raise AmazonError(f"Patch path {path!r} for SKU {sku} is not /attributes/<name>: "
                                  "SP-API patches whole attributes")
            if patch.get("op") != "delete":
                patched[path.split("/")[2]] = patch.get("value")
        issues = self.validate(sku, product_type, patched, partial=True)
        if issues:
            return ListingResult(sku, "INVALID_LOCALLY", False, issues=issues)
        body = {"productType": product_type, "patches": [dict(p) for p in patches]}
        return self._result(sku, self.call("patchListingsItem", "PATCH", self._item_path(sku),
                                           params=self._params(), json=body))

    def delete_listing(self, sku: str) -> ListingResult:
        """Delete a listing in the marketplaces (deleteListingsItem)."""
        return self._result(sku, self.call("deleteListingsItem", "DELETE", self._item_path(sku),
                                           params=self._params()))

    def get_listing(self, sku: str) -> dict[str, Any]:
        return self.call("getListingsItem", "GET", self._item_path(sku),
                         params={**self._params(), "includedData": "summaries,attributes,issues"})

    # ------------------------------------------------------------------ helpers
    def _item_path(self, sku: str) -> str:
        return f"{LISTINGS}/{quote(self.seller_id, safe='')}/{quote(sku, safe='')}"

    def _params(self) -> dict[str, str]:
        return {"marketplaceIds": ",".join(self.marketplace_ids), "issueLocale": self.issue_locale}

    @staticmethod
    def _result(sku: str, body: Any) -> ListingResult:
        body = body or {}
        if "errors" in body and "status" not in body:  # a 400 ErrorList: the request itself was refused
            issues = [ListingIssue(sku, e.get("code", "ERROR"), e.get("message", ""), "ERROR")
                      for e in body["errors"]]
            return ListingResult(sku, "INVALID", True, issues=issues)
        issues = [ListingIssue(sku, i.get("code", ""), i.get("message", ""), i.get("severity", "ERROR"),
                               tuple(i.get("attributeNames", ())))
                  for i in body.get("issues", [])]
        return ListingResult(sku, body.get("status", "INVALID"), True, body.get("submissionId"), issues)

    # ------------------------------------------------------------------ feeds
    def push_feed(self, listings: Sequence[tuple[str, str, Mapping[str, Any]]], *, poll_seconds: float = 30.0,
                  max_polls: int = 240) -> list[ListingResult]:
        """Send many listings in one JSON_LISTINGS_FEED: create a feed document, upload, create the feed, poll it,
        download the processing report and return one result per SKU (with the report's issues).

        `listings` are (sku, product type, attributes); each is validated locally first and an invalid one is left
        out of the feed (its result says INVALID_LOCALLY). Polling waits `poll_seconds` between getFeed calls.
        """
        results: dict[str, ListingResult] = {}
        messages = []
        for sku, product_type, attributes in listings:
            issues = self.validate(sku, product_type, attributes)
            if issues:
                results[sku] = ListingResult(sku, "INVALID_LOCALLY", False, issues=issues)
                continue
            messages.append({"messageId": len(messages) + 1, "sku": sku, "operationType": "UPDATE",
                             "productType": product_type, "requirements": "LISTING", "attributes": dict(attributes)})
        if not messages:
            return list(results.values())
        feed = {"header": {"sellerId": self.seller_id, "version": "2.0", "issueLocale": self.issue_locale},
                "messages": messages}
        content_type = "application/json; charset=UTF-8"
        document = self.call("createFeedDocument", "POST", f"{FEEDS}/documents", json={"contentType": content_type})
        upload = self.http.request("PUT", document["url"], data=jsonlib.dumps(feed).encode(),
                                   headers={"Content-Type": content_type})
        upload.close()
        feed_id = self.call("createFeed", "POST", f"{FEEDS}/feeds", json={
            "feedType": "JSON_LISTINGS_FEED", "marketplaceIds": self.marketplace_ids,
            "inputFeedDocumentId": document["feedDocumentId"]})["feedId"]
        for _ in range(max_polls):
            status = self.call("getFeed", "GET", f"{FEEDS}/feeds/{quote(feed_id, safe='')}")
            if status["processingStatus"] in FEED_DONE:
                break
            self.http.sleep(poll_seconds)
        else:
            raise AmazonError(f"Feed {feed_id} still {status['processingStatus']} after {max_polls} polls: "
                              "Amazon is slow today; look it up later with getFeed")
        if "resultFeedDocumentId" not in status:
            raise AmazonError(f"Feed {feed_id} ended {status['processingStatus']} with no processing report: "
                              "nothing in it is known to be on Amazon; push it again")
        report = self._download(status["resultFeedDocumentId"])
        by_message = {m["messageId"]: m["sku"] for m in messages}
        issues: dict[str, list[ListingIssue]] = {m["sku"]: [] for m in messages}
        for issue in report.get("issues", []):
            sku = issue.get("sku") or by_message.get(issue.get("messageId"))
            if sku not in issues:
                continue  # an issue about the feed as a whole, not one SKU
            names = (issue["attributeName"],) if issue.get("attributeName") else ()
            issues[sku].append(ListingIssue(sku, str(issue.get("code", "")), issue.get("message", ""),
                                            issue.get("severity", "ERROR"), names))
        for sku, found in issues.items():
            invalid = status["processingStatus"] != "DONE" or any(i.severity == "ERROR" for i in found)
            results[sku] = ListingResult(sku, "INVALID" if invalid else "ACCEPTED", True, feed_id, found)
        return [results[sku] for sku, _, _ in listings if sku in results]

    def _download(self, document_id: str) -> dict[str, Any]:
        document = self.call("getFeedDocument", "GET", f"{FEEDS}/documents/{quote(document_id, safe='')}")
        content = self.http.request("GET", document["url"]).content
        if document.get("compressionAlgorithm") == "GZIP":
            content = gzip.decompress(content)
        return jsonlib.loads(content)


def patch_replace(attribute: str, value: Any) -> dict[str, Any]:
    """A JSON Patch `replace` of one whole attribute, the usual shape of a price or quantity change."""
    return {"op": "replace", "path": f"/attributes/{attribute}", "value": copy.deepcopy(value)}


# ---------------------------------------------------------------------------------------------- listings of records
# Attributes whose change alone goes as a JSON Patch (patchListingsItem): price and quantity-like edits.
PATCHABLE = frozenset({"purchasable_offer", "list_price", "fulfillment_availability"})
STATE_BATCH = 50  # channel-state rows written per transaction during a push


@dataclass
class Listing:
    """One record's Amazon listing: its SKU, product type and attributes in Amazon's structure."""

    record: str  # the catalogue key
    sku: str
    product_type: str | None
    attributes: dict[str, Any]
    archived: bool = False
    error: str | None = None  # why it cannot be built (it is held back, nothing is sent)

    @property
    def payload(self) -> dict[str, Any]:
        return {"productType": self.product_type, "attributes": self.attributes}

    @property
    def digest(self) -> str:
        return hashlib.sha256(jsonlib.dumps(self.payload, sort_keys=True, default=str).encode()).hexdigest()


def _number(value: object, name: str) -> float | int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if number != number:
        raise ValueError(f"{name} {text_value(value)!r} is not a number")
    return int(number) if number.is_integer() else number


def attribute_value(name: str, entry: str | AmazonAttribute, record: Mapping[str, Any], dest: Any) -> list[dict] | None:
    """One Amazon attribute of a record in the structure its shape says (None: the record has no value)."""
    entry = amazon_attribute(name, entry)
    marketplaces = list(dest.marketplace_ids)
    language = {"language_tag": dest.language_tag} if dest.language_tag else {}
    if entry.shape == "list":
        if entry.attributes:
            parts = [text_value(record.get(a)) for a in entry.attributes]
        else:
            whole = text_value(record.get(entry.attribute))
            parts = whole.split(entry.separator) if whole and entry.separator else [whole]
        parts = [p.strip() for p in parts if p and p.strip()]
        return [{"value": p, **language, "marketplace_id": m} for m in marketplaces for p in parts] or None
    raw = record.get(entry.attribute)
    text = text_value(raw)
    if text is None:
        return None
    if entry.shape == "quantity":  # fulfillment_availability carries no marketplace id
        quantity = _number(raw, entry.attribute)
        if not isinstance(quantity, int) or quantity < 0:
            raise ValueError(f"{entry.attribute} {text!r} is not a whole quantity")
        return [{"fulfillment_channel_code": entry.fulfillment_channel_code, "quantity": quantity}]
    if entry.shape == "offer":
        price = _number(raw, entry.attribute)
        return [{"currency": dest.currency, "marketplace_id": m, "our_price": [{"schedule": [{"value_with_tax":
                                                                                                  price}]}]}
                for m in marketplaces]
    if entry.shape == "money":
        return [{"currency": dest.currency, "value_with_tax": _number(raw, entry.attribute), "marketplace_id": m}
                for m in marketplaces]
    if entry.shape == "identifier":
        return [{"type": entry.type, "value": text, "marketplace_id": m} for m in marketplaces]
    if entry.shape == "image":
        return [{"media_location": text, "marketplace_id": m} for m in marketplaces]
    if entry.shape == "value":
        value = _number(raw, entry.attribute) if isinstance(raw, int | float) and not isinstance(raw, bool) else text
        return [{"value": value, "marketplace_id": m} for m in marketplaces]
    return [{"value": text, **language, "marketplace_id": m} for m in marketplaces]


def build_listing(record: Mapping[str, Any], dest: Any, key: str) -> Listing:
    """A record's listing per the destination's mapping (`DestinationSpec` of kind amazon)."""
    rkey = text_value(record[key]) or ""
    sku = text_value(record.get(dest.sku)) if dest.sku else rkey
    if isinstance(dest.product_type, str) or dest.product_type is None:
        product_type = dest.product_type
    else:
        product_type = (text_value(record.get(dest.product_type.attribute)) or "").upper() or None
    archived = bool(dest.status) and (text_value(record.get(dest.status)) or "").lower() == "archived"
    listing = Listing(rkey, sku or rkey, product_type, {}, archived)
    if not sku:
        listing.error = f"BUILD: SKU attribute {dest.sku!r} is empty"
    elif product_type is None:
        listing.error = ("BUILD: the destination has no product_type" if dest.product_type is None else
                         f"BUILD: product type attribute {dest.product_type.attribute!r} is empty")
    for name, entry in dest.attributes.items():
        try:
            value = attribute_value(name, entry, record, dest)
        except ValueError as error:
            listing.error = listing.error or f"BUILD: {error} ({'/' + name})"
            continue
        if value:
            listing.attributes[name] = value
    return listing


def issue_text(issues: Sequence[ListingIssue]) -> str:
    """`code: message (pointer)` for each ERROR issue (all issues when none is an error)."""
    errors = [i for i in issues if i.severity == "ERROR"] or list(issues)
    return "; ".join(f"{i.code}: {i.message}" + (f" ({i.pointer})" if i.pointer else
                                                 f" ({', '.join(i.attribute_names)})" if i.attribute_names else "")
                     for i in errors) or "Amazon did not accept the listing"


def listing_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """What differs between the listing last accepted and this one, attribute by attribute."""
    def flat(payload: Mapping[str, Any] | None) -> dict[str, Any] | None:
        return None if payload is None else {"productType": payload.get("productType"),
                                             **payload.get("attributes", {})}

    return payload_changes(flat(old), flat(new))


def _patches(old: Mapping[str, Any] | None, new: Listing) -> list[dict[str, Any]] | None:
    """JSON Patch replace ops when only price/quantity-like attributes changed since `old`; else None (a put)."""
    if not old or old.get("productType") != new.product_type:
        return None
    before, after = old.get("attributes", {}), new.attributes
    changed = {n for n in set(before) | set(after) if before.get(n) != after.get(n)}
    if not changed or not changed <= PATCHABLE or not changed <= set(after):
        return None
    return [patch_replace(n, after[n]) for n in sorted(changed)]


def push(client: AmazonListings | None, state: ChannelState, destination: str, dest: Any,
         records: Sequence[Mapping[str, Any]], key: str, *, dry_run: bool = False) -> PushPlan:
    """Push records' listings, sending only those whose listing changed since it was last accepted.

    A change of price/quantity-like attributes only is a `patchListingsItem`; other changes and new listings a
    `putListingsItem`, or, past `bulk_threshold` listings, one JSON_LISTINGS_FEED. A record whose status is
    archived has its listing deleted. Every listing is validated against its product type's schema first and an
    invalid one is never sent. Channel state is written as the push goes (and when it stops on an error), so the
    next push sends only what did not arrive. With `dry_run` nothing is sent and nothing is written."""
    listings = [build_listing(r, dest, key) for r in records]
    stored = state.get(destination, [item.record for item in listings])
    plan, entries = PushPlan(), []
    puts: list[tuple[Listing, ChannelRecord | None]] = []
    patches: list[tuple[Listing, ChannelRecord, list[dict[str, Any]]]] = []
    deletes: list[tuple[Listing, ChannelRecord]] = []
    for listing in listings:
        before = stored.get(listing.record)
        listed = before is not None and before.remote_id is not None and before.status != "archived"
        if listing.error:
            plan.failed[listing.record] = listing.error
            entries.append(_entry(destination, listing, "held", before, error=listing.error))
            continue
        if listing.archived:
            if listed:
                plan.archive.append(listing.sku)
                deletes.append((listing, before))
            else:  # never on Amazon (or deleted already): nothing to send
                plan.unchanged.append(listing.sku)
                if before is None or before.status != "archived":
                    entries.append(ChannelRecord(destination, listing.record, "archived", listing.sku,
                                                 hash=listing.digest, payload=listing.payload))
            continue
        if before is not None and before.hash == listing.digest and (before.status == "pushed" or listed):
            plan.unchanged.append(listing.sku)  # Amazon holds this very listing (a refused change was undone)
            if before.status != "pushed":
                entries.append(ChannelRecord(destination, listing.record, "pushed", listing.sku, before.remote_id,
                                             before.remote_ids, before.hash, payload=before.payload))
            continue
        if listed:
            plan.update.append(listing.sku)
            plan.changes[listing.sku] = listing_changes(before.payload, listing.payload)
            ops = _patches(before.payload, listing)
            if ops is not None:
                patches.append((listing, before, ops))
                continue
        else:
            plan.create.append(listing.sku)
        puts.append((listing, before))
    if dry_run:
        return plan
    def record(listing: Listing, before: ChannelRecord | None, result: ListingResult, ok_status: str, *,
               counted: bool = True) -> None:
        plan.sent += counted and result.sent
        if result.ok:
            entries.append(ChannelRecord(destination, listing.record, ok_status, listing.sku, listing.sku,
                                         {"submission": result.submission_id}, listing.digest,
                                         payload=listing.payload))
        else:
            plan.failed[listing.record] = issue_text(result.issues)
            entries.append(_entry(destination, listing, "failed", before, error=plan.failed[listing.record]))
        if len(entries) >= STATE_BATCH:  # stored as the push goes: a push that dies mid-way keeps what it did
            state.put(entries)
            entries.clear()

    try:
        unknown: dict[str, str] = {}
        for product_type in sorted({item.product_type for item, *_ in (*puts, *patches)}):
            try:
                client.product_type_schema(product_type)
            except UnknownProductType as error:
                unknown[product_type] = f"PRODUCT_TYPE: {error}"
        if unknown:
            for listing, before in [*puts, *((lst, b) for lst, b, _ in patches)]:
                if listing.product_type in unknown:
                    plan.failed[listing.record] = unknown[listing.product_type]
                    entries.append(_entry(destination, listing, "failed", before, error=unknown[listing.product_type]))
            puts = [(lst, b) for lst, b in puts if lst.product_type not in unknown]
            patches = [(lst, b, ops) for lst, b, ops in patches if lst.product_type not in unknown]

        for listing, before in deletes:
            record(listing, before, client.delete_listing(listing.sku), "archived")
        if len(puts) + len(patches) > dest.bulk_threshold:
            sending = [(listing, before) for listing, before in puts] + [(lst, b) for lst, b, _ in patches]
            results = {r.sku: r for r in client.push_feed([(lst.sku, lst.product_type, lst.attributes)
                                                           for lst, _ in sending])}
            plan.sent += any(r.sent for r in results.values())  # one feed, however many listings it carries
            for listing, before in sending:
                record(listing, before, results[listing.sku], "pushed", counted=False)
        else:
            for listing, before, ops in patches:
                record(listing, before, client.patch_listing(listing.sku, ops, product_type=listing.product_type),
                       "pushed")
            for listing, before in puts:
                record(listing, before, client.put_listing(listing.sku, listing.product_type, listing.attributes),
                       "pushed")
    except HttpError as error:  # the schema or feed documents, fetched outside `call`
        raise AmazonError(f"Amazon could not be reached ({error}): try again later; the next push resumes where "
                          "this one stopped") from error
    finally:
        state.put(entries)
    return plan


def _entry(destination: str, listing: Listing, status: str, before: ChannelRecord | None, *,
           error: str) -> ChannelRecord:
    """A failed or held record's state: what Amazon still holds (the last accepted listing) is kept."""
    return ChannelRecord(destination, listing.record, status, listing.sku, before.remote_id if before else None,
                         before.remote_ids if before else {}, before.hash if before else None, error,
                         before.payload if before else None)


# ----------------------------------------------------------------------------------- from the catalogue
def push_from_store(store: Any, destination: str, dest: Any, client: AmazonListings | None, *,
                    filter: str | None = None, dry_run: bool = False) -> PushPlan:
    """Push the listings of the records changed since the destination's cursor and of those refused last time."""
    key = store.catalogue(dest.catalogue).key
    with records_to_push(store, destination, dest, filter=filter, dry_run=dry_run, group_by=None) as records:
        return push(client, ChannelState(store), destination, dest, records, key, dry_run=dry_run) \
            if records else PushPlan()


def client_from_env(dest: Any) -> AmazonListings:
    """The client for an amazon destination, from the variables its spec names (read when a push runs)."""
    return AmazonListings.from_environment(
        seller_id=dest.seller_id, marketplace_ids=dest.marketplace_ids, client_id_env=dest.client_id_env,
        client_secret_env=dest.client_secret_env, refresh_token_env=dest.refresh_token_env,
        endpoint_url_env=dest.endpoint_url_env, token_url_env=dest.token_url_env,
        issue_locale=dest.language_tag or "en_US")


def region_endpoint(marketplace_ids: Sequence[str]) -> str:
    """Amazon's SP-API endpoint for these marketplaces; they must all be served by one region."""
    regions = {MARKETPLACE_REGIONS.get(m) for m in marketplace_ids}
    if None in regions:
        unknown = [m for m in marketplace_ids if m not in MARKETPLACE_REGIONS]
        raise AmazonError(f"Marketplace {', '.join(unknown)} is not one this project knows the region of: set the "
                          "destination's endpoint_url_env to its SP-API endpoint (sellingpartnerapi-na, -eu or -fe)")
    if len(regions) != 1:
        raise AmazonError(f"Marketplaces {', '.join(marketplace_ids)} are served by different SP-API regions "
                          f"({', '.join(sorted(regions))}): make one destination per region")
    return REGION_ENDPOINTS[regions.pop()]
