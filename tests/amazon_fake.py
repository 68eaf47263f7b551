"""A fake Login with Amazon + SP-API (Listings Items, Product Type Definitions) that checks every request.

`FakeAmazon` runs a `RecordingServer` and answers as Amazon documents:
- `POST /auth/o2/token`: the refresh-token grant; `expire_tokens()` makes every token issued so far refused (403
  with an ErrorList, as SP-API answers an expired token);
- every SP-API request is matched against the paths and parameters of the copied Swagger models
  (`tests/contracts/amazon-sp-api/`), its JSON body validated against the model's request definition, and its answer
  against the response definition; a mismatch is answered 400 and kept in `violations`;
- each operation has a token bucket at its documented rate and burst (`sp-api-rate-limits.json`): past it the answer
  is 429 with the model's ErrorList and `x-amzn-RateLimit-Limit`, counted in `throttled`;
- `throttle_next(n)` answers the next n listings calls 429 with `Retry-After` whatever the bucket says;
- `go_down_after(n)` answers n more operations, then 503 until `come_back()`; `expire_tokens_after(n)` expires the
  tokens issued so far after n more (a token that expires mid-push);
- listings are kept (`listings[sku]`) with PUT replacing, PATCH applying its operations and DELETE removing them
  (`deleted`), and validated against
  the product type schema served by the definitions API (`product-type-LUGGAGE.schema.json`): a missing required
  attribute gives status INVALID with an ERROR issue, a missing bullet point an accepted listing with a WARNING, and
  a product identifier another SKU already lists under an ERROR 8572 (a check Amazon makes beyond the schema).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import jsonschema

from tests.http_fakes import RecordingServer, Request

CONTRACTS = Path(__file__).parent / "contracts" / "amazon-sp-api"
MODELS = {name: json.loads((CONTRACTS / name).read_text())
          for name in ("listingsItems_2021-08-01.json", "definitionsProductTypes_2020-09-01.json",
                       "feeds_2021-06-30.json")}
FEED_SCHEMA = json.loads((CONTRACTS / "listings-feed-schema-v2.json").read_text())
REPORT_SCHEMA = json.loads((CONTRACTS / "listings-feed-processing-report-schema-v2.json").read_text())
LIMITS = {op["operationId"]: (op["rate_per_second"], op["burst"])
          for op in json.loads((CONTRACTS / "sp-api-rate-limits.json").read_text())["operations"]}
SCHEMAS = {"LUGGAGE": json.loads((CONTRACTS / "product-type-LUGGAGE.schema.json").read_text())}
TOKEN_PATH = "/auth/o2/token"
CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN = "amzn1.application-oa2-client.test", "secret", "Atzr|refresh"
SELLER = "A2SELLERTEST"
MARKETPLACE = "ATVPDKIKX0DER"


def _operations() -> list[tuple[re.Pattern[str], str, str, dict[str, Any], dict[str, Any]]]:
    """(path regex, method, operationId, operation, model) for every operation of the copied models."""
    found = []
    for model in MODELS.values():
        for template, item in model["paths"].items():
            regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$")
            common = item.get("parameters", [])
            for method, operation in item.items():
                if method == "parameters":
                    continue
                operation = {**operation, "parameters": common + operation.get("parameters", [])}
                found.append((regex, method.upper(), operation["operationId"], operation, model))
    return found


OPERATIONS = _operations()


def _check(model: dict[str, Any], schema: dict[str, Any], value: Any) -> list[str]:
    validator = jsonschema.Draft7Validator({**schema, "definitions": model["definitions"]})
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(value)]


class Bucket:
    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.tokens, self.clock = rate, burst, float(burst), clock
        self.updated = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def _errors(code: str, message: str, details: str = "") -> dict[str, Any]:
    return {"errors": [{"code": code, "message": message, "details": details}]}


class FakeAmazon:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.server = RecordingServer(self._handle)
        self.url = self.server.url
        self.token_url = self.url + TOKEN_PATH
        self.violations: list[str] = []
        self.throttled = 0
        self.forced_throttles = 0
        self.listings: dict[str, dict[str, Any]] = {}
        self.deleted: list[str] = []  # SKUs whose listing was deleted
        self.calls: list[str] = []  # operationIds answered (not throttled, not refused)
        self.schema_downloads = 0
        self.uploads: dict[str, bytes] = {}  # feed document id -> what was uploaded
        self.downloads: dict[str, bytes] = {}  # result document id -> gzipped processing report
        self.feeds: dict[str, dict[str, Any]] = {}
        self.reports: list[dict[str, Any]] = []
        self.tokens_issued = 0
        self._valid_tokens: set[str] = set()
        self.buckets = {op: Bucket(rate, burst, clock) for op, (rate, burst) in LIMITS.items()}
        self.down_after: int | None = None  # SP-API answers 503 once this many operations were answered
        self.expire_after: int | None = None  # tokens issued so far expire once this many were answered
        self.revoke = False

    def go_down_after(self, count: int) -> None:
        """Answer `count` more SP-API operations, then 503 (the model's ErrorList) to every one until `come_back()`."""
        with self.server.lock:
            self.down_after = len(self.calls) + count

    def come_back(self) -> None:
        with self.server.lock:
            self.down_after = None

    def expire_tokens_after(self, count: int, *, revoke: bool = False) -> None:
        """Expire every token issued so far once `count` more SP-API operations were answered (mid-push); with
        `revoke` every token issued after that is refused too (the seller withdrew the app's authorisation)."""
        with self.server.lock:
            self.expire_after = len(self.calls) + count
            self.revoke = revoke

    def expire_tokens(self) -> None:
        with self.server.lock:
            self._valid_tokens.clear()

    def refuse_all_tokens(self) -> None:
        """Tokens are issued but never accepted, as when the app lacks the seller's authorisation."""
        with self.server.lock:
            self._refuse = True

    def throttle_next(self, count: int) -> None:
        with self.server.lock:
            self.forced_throttles = count

    def close(self) -> None:
        self.server.close()

    def __enter__(self) -> FakeAmazon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ dispatch
    def _handle(self, request: Request):
        parts = urlsplit(request.path)
        path, query = unquote(parts.path), parse_qs(parts.query)
        if path == TOKEN_PATH:
            return self._token(request)
        if path.startswith("/uploads/") and request.method == "PUT":
            self.uploads[path.removeprefix("/uploads/")] = request.body
            return 200, {}, b""
        if path.startswith("/downloads/"):
            return 200, {"Content-Type": "application/octet-stream"}, self.downloads[path.removeprefix("/downloads/")]
        if path.startswith("/schemas/"):
            self.schema_downloads += 1
            return 200, {}, SCHEMAS[path.removeprefix("/schemas/").removesuffix(".json")]
        for regex, method, operation_id, operation, model in OPERATIONS:
            match = regex.match(parts.path)
            if match and method == request.method:
                return self._operation(request, operation_id, operation, model,
                                       {k: unquote(v) for k, v in match.groupdict().items()}, query)
        self.violations.append(f"{request.method} {path}: no such operation in the models")
        return 404, {}, _errors("NotFound", "Resource not found")

    def _token(self, request: Request):
        form = parse_qs(request.body.decode())
        expected = {"grant_type": ["refresh_token"], "refresh_token": [REFRESH_TOKEN], "client_id": [CLIENT_ID],
                    "client_secret": [CLIENT_SECRET]}
        if form != expected:
            return 400, {}, {"error": "invalid_grant", "error_description": "The request has an invalid grant"}
        self.tokens_issued += 1
        token = f"Atza|access-{self.tokens_issued}"
        self._valid_tokens.add(token)
        return 200, {}, {"access_token": token, "token_type": "bearer", "expires_in": 3600,
                         "refresh_token": REFRESH_TOKEN}

    def _operation(self, request: Request, operation_id: str, operation: dict[str, Any], model: dict[str, Any],
                   path_params: dict[str, str], query: dict[str, list[str]]):
        if self.expire_after is not None and len(self.calls) >= self.expire_after:
            self.expire_after = None
            self._valid_tokens.clear()
            self._refuse = self.revoke
        if self.down_after is not None and len(self.calls) >= self.down_after:
            return 503, {}, _errors("ServiceUnavailable", "Temporary overloading or maintenance of the server.")
        token = request.headers.get("x-amz-access-token") or request.headers.get("X-Amz-Access-Token")
        if token not in self._valid_tokens or getattr(self, "_refuse", False):
            return 403, {}, _errors("Unauthorized", "Access to requested resource is denied.",
                                    "The access token you provided has expired.")
        limit = f"{LIMITS[operation_id][0]}"
        if self.forced_throttles > 0 or not self.buckets[operation_id].take():
            forced = self.forced_throttles > 0
            self.forced_throttles -= forced
            self.throttled += not forced
            headers = {"x-amzn-RateLimit-Limit": limit}
            if forced:
                headers["Retry-After"] = "0"
            return 429, headers, _errors("QuotaExceeded", "The frequency of requests was greater than allowed.")
        problems = []
        body = None
        for param in operation["parameters"]:
            where, name = param.get("in"), param.get("name")
            if where == "query" and param.get("required") and name not in query:
                problems.append(f"missing query parameter {name}")
            if where == "query" and name in query and "enum" in param.get("items", param):
                allowed = param.get("items", param)["enum"]
                values = [v for item in query[name] for v in item.split(",")]
                problems += [f"{name}={v} not in {allowed}" for v in values if v not in allowed]
            if where == "body":
                try:
                    body = json.loads(request.body)
                except ValueError:
                    problems.append("body is not JSON")
                    continue
                problems += _check(model, param["schema"], body)
        known = {p.get("name") for p in operation["parameters"]}
        problems += [f"unknown query parameter {name}" for name in query if name not in known]
        if problems:
            self.violations += [f"{operation_id}: {p}" for p in problems]
            return 400, {}, _errors("InvalidInput", "; ".join(problems))
        self.calls.append(operation_id)
        status, answer = getattr(self, "_" + operation_id)(path_params, query, body)
        schema = operation["responses"][str(status)]["schema"]
        self.violations += [f"{operation_id} answer: {p}" for p in _check(model, schema, answer)]
        return status, {"x-amzn-RateLimit-Limit": limit, "x-amzn-RequestId": f"req-{len(self.calls)}"}, answer

    # ------------------------------------------------------------------ operations
    def _getDefinitionsProductType(self, path_params, query, body):  # noqa: N802 (Amazon's operation name)
        product_type = path_params["productType"]
        if product_type not in SCHEMAS:
            return 404, _errors("NotFound", f"Product type {product_type} not found")
        text = json.dumps(SCHEMAS[product_type]).encode()
        link = {"link": {"resource": f"{self.url}/schemas/{product_type}.json", "verb": "GET"},
                "checksum": base64.b64encode(hashlib.md5(text).digest()).decode()}
        return 200, {"schema": link, "metaSchema": link, "requirements": "LISTING",
                     "requirementsEnforced": "ENFORCED", "propertyGroups": {}, "locale": "en_US",
                     "marketplaceIds": [MARKETPLACE], "productType": product_type, "displayName": "Luggage",
                     "productTypeVersion": {"version": "U1234567890", "latest": True}}

    def _issues(self, sku: str, product_type: str, attributes: dict[str, Any]) -> list[dict[str, Any]]:
        if product_type not in SCHEMAS:
            return [{"code": "4000003", "message": f"Product type {product_type} is not valid",
                     "severity": "ERROR", "attributeNames": [],
                     "categories": ["INVALID_ATTRIBUTE"]}]
        issues = []
        for error in jsonschema.Draft201909Validator(SCHEMAS[product_type]).iter_errors(attributes):
            names = [str(error.absolute_path[0])] if error.absolute_path else \
                [n for n in error.validator_value if n not in attributes] if error.validator == "required" else []
            issues.append({"code": "90220", "message": error.message, "severity": "ERROR", "attributeNames": names,
                           "categories": ["MISSING_ATTRIBUTE" if error.validator == "required"
                                          else "INVALID_ATTRIBUTE"]})
        # Beyond the schema, as Amazon does: a product identifier another SKU of the seller already lists under
        for identifier in attributes.get("externally_assigned_product_identifier", []):
            owner = next((other for other, listing in self.listings.items() if other != sku and any(
                i.get("value") == identifier.get("value")
                for i in listing["attributes"].get("externally_assigned_product_identifier", []))), None)
            if owner is not None:
                issues.append({"code": "8572", "message": f"The product identifier {identifier.get('value')} is "
                               f"already used by SKU {owner}", "severity": "ERROR",
                               "attributeNames": ["externally_assigned_product_identifier"],
                               "categories": ["INVALID_ATTRIBUTE"]})
        if "bullet_point" not in attributes:
            issues.append({"code": "18027", "message": "'bullet_point' is recommended for better discoverability",
                           "severity": "WARNING", "attributeNames": ["bullet_point"],
                           "categories": ["MISSING_ATTRIBUTE"]})
        return issues

    def _submission(self, sku: str, product_type: str, attributes: dict[str, Any]) -> dict[str, Any]:
        issues = self._issues(sku, product_type, attributes)
        status = "INVALID" if any(i["severity"] == "ERROR" for i in issues) else "ACCEPTED"
        if status == "ACCEPTED":
            self.listings[sku] = {"productType": product_type, "attributes": attributes}
        return {"sku": sku, "status": status, "submissionId": f"sub-{len(self.calls)}", "issues": issues}

    def _putListingsItem(self, path_params, query, body):  # noqa: N802
        return 200, self._submission(path_params["sku"], body["productType"], body.get("attributes", {}))

    def _patchListingsItem(self, path_params, query, body):  # noqa: N802
        sku = path_params["sku"]
        current = self.listings.get(sku)
        if current is None:
            return 200, {"sku": sku, "status": "INVALID", "submissionId": f"sub-{len(self.calls)}", "issues": [
                {"code": "8541", "message": "No listing for this SKU to patch", "severity": "ERROR",
                 "categories": ["INVALID_ATTRIBUTE"]}]}
        attributes = json.loads(json.dumps(current["attributes"]))
        for patch in body["patches"]:
            name = patch["path"].split("/")[2]
            if patch["op"] == "delete":
                attributes.pop(name, None)
            else:
                attributes[name] = patch["value"]
        return 200, self._submission(sku, body["productType"], attributes)

    def _deleteListingsItem(self, path_params, query, body):  # noqa: N802
        sku = path_params["sku"]
        if self.listings.pop(sku, None) is None:
            return 200, {"sku": sku, "status": "INVALID", "submissionId": f"sub-{len(self.calls)}", "issues": [
                {"code": "8541", "message": "No listing for this SKU to delete", "severity": "ERROR",
                 "categories": ["INVALID_ATTRIBUTE"]}]}
        self.deleted.append(sku)
        return 200, {"sku": sku, "status": "ACCEPTED", "submissionId": f"sub-{len(self.calls)}", "issues": []}

    def _getListingsItem(self, path_params, query, body):  # noqa: N802
        sku = path_params["sku"]
        if sku not in self.listings:
            return 404, _errors("NotFound", f"SKU {sku} not found")
        return 200, {"sku": sku, "attributes": self.listings[sku]["attributes"]}

    # ------------------------------------------------------------------ feeds
    # A feed goes IN_QUEUE -> IN_PROGRESS -> DONE, one step per getFeed; at DONE its messages are applied and the
    # processing report (checked against the published report schema) is stored gzipped, as Amazon serves it.
    def _createFeedDocument(self, path_params, query, body):  # noqa: N802
        document_id = f"amzn1.tortuga.doc-{len(self.uploads) + len(self.downloads) + 1}"
        self.uploads[document_id] = b""
        return 201, {"feedDocumentId": document_id, "url": f"{self.url}/uploads/{document_id}"}

    def _createFeed(self, path_params, query, body):  # noqa: N802
        document_id = body["inputFeedDocumentId"]
        if not self.uploads.get(document_id):
            self.violations.append(f"createFeed: document {document_id} was not uploaded first")
            return 400, _errors("InvalidInput", "inputFeedDocumentId has no content")
        feed_id = str(50000 + len(self.feeds) + 1)
        content = json.loads(self.uploads[document_id])
        if body["feedType"] == "JSON_LISTINGS_FEED":
            problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                        for e in jsonschema.Draft7Validator(FEED_SCHEMA).iter_errors(content)]
            self.violations += [f"JSON_LISTINGS_FEED {feed_id}: {p}" for p in problems]
        self.feeds[feed_id] = {"feedId": feed_id, "feedType": body["feedType"],
                               "marketplaceIds": body["marketplaceIds"],
                               "createdTime": "2026-12-02T05:00:00Z", "processingStatus": "IN_QUEUE",
                               "content": content}
        return 202, {"feedId": feed_id}

    def _getFeed(self, path_params, query, body):  # noqa: N802
        feed = self.feeds.get(path_params["feedId"])
        if feed is None:
            return 404, _errors("NotFound", "Feed not found")
        following = {"IN_QUEUE": "IN_PROGRESS", "IN_PROGRESS": "DONE"}
        if feed["processingStatus"] in following:
            feed["processingStatus"] = following[feed["processingStatus"]]
            if feed["processingStatus"] == "DONE":
                self._process(feed)
        return 200, {k: v for k, v in feed.items() if k != "content"}

    def _process(self, feed: dict[str, Any]) -> None:
        issues, accepted = [], 0
        for message in feed["content"]["messages"]:
            sku = message["sku"]
            if message["operationType"] != "UPDATE":
                continue
            found = self._issues(sku, message["productType"], message.get("attributes", {}))
            for issue in found:
                entry = {"messageId": message["messageId"], "sku": sku, "code": issue["code"],
                         "severity": issue["severity"], "message": issue["message"]}
                if issue.get("attributeNames"):
                    entry["attributeName"] = issue["attributeNames"][0]
                issues.append(entry)
            if not any(i["severity"] == "ERROR" for i in found):
                accepted += 1
                self.listings[sku] = {"productType": message["productType"], "attributes": message["attributes"]}
        processed = len(feed["content"]["messages"])
        report = {"header": {"sellerId": SELLER, "version": "2.0", "feedId": feed["feedId"]}, "issues": issues,
                  "summary": {"errors": sum(i["severity"] == "ERROR" for i in issues),
                              "warnings": sum(i["severity"] == "WARNING" for i in issues),
                              "messagesProcessed": processed, "messagesAccepted": accepted,
                              "messagesInvalid": processed - accepted}}
        self.violations += [f"processing report: {e.message}"
                            for e in jsonschema.Draft7Validator(REPORT_SCHEMA).iter_errors(report)]
        self.reports.append(report)
        document_id = f"amzn1.tortuga.result-{feed['feedId']}"
        self.downloads[document_id] = gzip.compress(json.dumps(report).encode())
        feed["resultFeedDocumentId"] = document_id

    def _getFeedDocument(self, path_params, query, body):  # noqa: N802
        document_id = path_params["feedDocumentId"]
        if document_id not in self.downloads:
            return 404, _errors("NotFound", "Feed document not found")
        return 200, {"feedDocumentId": document_id, "url": f"{self.url}/downloads/{document_id}",
                     "compressionAlgorithm": "GZIP"}
