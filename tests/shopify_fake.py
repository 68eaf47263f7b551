"""A fake Shopify Admin GraphQL endpoint that checks every request against the published schema.

Each POST to `/admin/api/<version>/graphql.json` is parsed and validated with graphql-core against
`tests/contracts/shopify/admin_schema_2025-01.json.gz` (query and variables): a document the real API would
refuse fails the test. It then answers the operations the connector uses, as Shopify documents them:

- `productSet(input:)`: creates a product (no `input.id`) or replaces the options, variants, metafields and
  media of the product `input.id`; bad input comes back as `userErrors` (field, message, code);
- `productByIdentifier(identifier: {handle})`: the product with that handle, or null;
- `nodes(ids:)`: products and media as they are now (1 point per id);
- several root fields in one query (aliased lookups) are answered each, their costs added;
- media: `files[].originalSource` is downloaded after productSet answers, as Shopify does: a new media starts
  `PROCESSING` (that is what the answer that created it shows) and, read again once `media_seconds` have passed
  on the fake's clock, is `READY`, or `FAILED` with a `mediaErrors` entry (code IMAGE_DOWNLOAD_FAILURE, the
  message is the enum's documented wording) when the fake cannot download it. The fake downloads nothing: every
  http(s) URL counts as downloadable except those a test lists in `unreachable` and those on the `.invalid`
  domain (RFC 2606: a name that never resolves). A FAILED media sent again is downloaded again (a new media);
- bulk operations (shopify.dev "Bulk import data with the GraphQL Admin API", API 2025-01):
  `stagedUploadsCreate` (resource BULK_MUTATION_VARIABLES) returns an upload target the fake itself serves
  (`/staged-uploads/`), with signed-looking form parameters that the multipart POST must echo, the file last
  and no larger than `max_upload_bytes` (20 MB), without the Admin token; `bulkOperationRunMutation` checks the
  mutation against the schema and the guide's limit of one connection field (userError INVALID_MUTATION),
  finds the upload by `stagedUploadPath` (NO_SUCH_FILE), reads it as JSONL (INVALID_STAGED_UPLOAD_FILE) and
  refuses to start while another bulk mutation runs (OPERATION_IN_PROGRESS: one at a time per shop before
  2026-01). The operation is CREATED; each read of it (`node(id:)`, `currentBulkOperation(type: MUTATION)`)
  moves it on: RUNNING, then each read runs `bulk_lines_per_read` lines (all by default) as the mutation, each
  line's variables coerced to the mutation's variable types (a line that does not coerce is a contract error
  and an `errors` line), until COMPLETED with `url`, the JSONL result file (`{"data": ..., "__lineNumber": n}`
  per line) the fake serves at `/bulk-results/`. `bulk_fail_after = N` makes the operation FAILED
  (INTERNAL_SERVER_ERROR) after N lines, with `partialDataUrl` serving those N lines' results.
  `bulk_results_reversed` writes the result file in reverse: Shopify does not promise the input's order.
- cost: every answer has `extensions.cost` with a `throttleStatus` from a leaky bucket (maximumAvailable,
  restoreRate per second, on the injectable `clock`); a request costing more than is available is answered
  `THROTTLED` and does nothing. Bulk lines cost nothing from the bucket (only the calls that start and read
  the operation do), as Shopify documents.

It keeps what it is sent (`products` by id, `uploads` by staged path, `bulk_operations` by id), so tests read
back what a push left on the "shop".
"""

from __future__ import annotations

import base64
import gzip
import itertools
import json
import re
import secrets
from collections.abc import Callable
from email.parser import BytesParser
from email.policy import default as email_policy
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from graphql import (
    GraphQLSchema,
    TypeInfo,
    TypeInfoVisitor,
    Visitor,
    build_client_schema,
    get_named_type,
    parse,
    validate,
    visit,
)
from graphql.execution.values import get_argument_values, get_variable_values
from graphql.language import DocumentNode, OperationDefinitionNode, OperationType

from tests.http_fakes import RecordingServer, Request

SCHEMA = Path(__file__).parent / "contracts" / "shopify" / "admin_schema_2025-01.json.gz"
COSTS = {"productSet": 10, "productByIdentifier": 1, "nodes": 1, "stagedUploadsCreate": 10,
         "bulkOperationRunMutation": 10, "node": 1, "currentBulkOperation": 1}
MEDIA_DOWNLOAD_FAILED = {"code": "IMAGE_DOWNLOAD_FAILURE", "details": None,
                         "message": "Media could not be processed because the image could not be downloaded."}


@cache
def admin_schema() -> GraphQLSchema:
    with gzip.open(SCHEMA, "rt", encoding="utf-8") as handle:
        return build_client_schema(json.load(handle)["data"])


def connections(document: DocumentNode) -> int:
    """How many connection fields (of a `...Connection` type) a document selects."""
    info, found = TypeInfo(admin_schema()), []

    class Count(Visitor):
        def enter_field(self, *_: Any) -> None:
            named = get_named_type(info.get_type())
            if named is not None and named.name.endswith("Connection"):
                found.append(named.name)

    visit(document, TypeInfoVisitor(info, Count()))
    return len(found)


class ContractError(AssertionError):
    """A request the real Admin API would refuse."""


class FakeShopify:
    def __init__(self, *, maximum: float = 1000, restore_rate: float = 50, clock: Callable[[], float] | None = None,
                 token: str = "shpat_test", api_version: str = "2025-01"):
        self.maximum = maximum
        self.restore_rate = restore_rate
        self.available = maximum
        self.clock = clock or (lambda: 0.0)
        self.last = self.clock()
        self.token = token
        self.api_version = api_version
        self.products: dict[str, dict] = {}
        self.operations: list[str] = []  # the root field of every request that was served (not throttled)
        self.throttled = 0
        self.contract_errors: list[str] = []
        self.fail_after_create = False  # answer 500 once a product was created (the id never reaches the client)
        self.media_seconds = 0.0  # how long (fake clock) Shopify takes to download an image
        self.unreachable: set[str] = set()  # image URLs that cannot be downloaded
        self.staged: dict[str, dict[str, str]] = {}  # staged upload path -> the form parameters it was given
        self.uploads: dict[str, bytes] = {}  # staged upload path -> the file uploaded there
        self.bulk_operations: dict[str, dict] = {}
        self.bulk_lines_per_read: int | None = None
        self.bulk_fail_after: int | None = None
        self.bulk_results_reversed = False
        self.max_upload_bytes = 20 * 1024 * 1024  # the largest JSONL a bulk mutation takes
        self.files: dict[str, bytes] = {}  # result files served under /bulk-results/
        self._ids = itertools.count(1)
        self.server = RecordingServer(self._handle)

    # -------------------------------------------------------------------------------------------- plumbing
    @property
    def url(self) -> str:
        return self.server.url.rstrip("/")

    def close(self) -> None:
        self.server.close()

    def __enter__(self) -> FakeShopify:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _gid(self, kind: str) -> str:
        return f"gid://shopify/{kind}/{next(self._ids)}"

    def _handle(self, request: Request) -> Any:
        if request.path == "/staged-uploads/" and request.method == "POST":
            return self._upload(request)
        if request.path.startswith("/bulk-results/") and request.method == "GET":
            body = self.files.get(request.path.removeprefix("/bulk-results/"))
            return (200, {"Content-Type": "application/jsonl"}, body) if body is not None else (404, {}, b"")
        if request.path != f"/admin/api/{self.api_version}/graphql.json" or request.method != "POST":
            return 404, {}, {"errors": "Not Found"}
        if request.headers.get("X-Shopify-Access-Token") != self.token:
            return 401, {}, {"errors": "[API] Invalid API key or access token (unrecognized login or wrong password)"}
        body = request.json()
        try:
            selections = self._check(body.get("query", ""), body.get("variables") or {})
        except ContractError as error:
            self.contract_errors.append(str(error))
            return 200, {}, {"errors": [{"message": str(error)}]}
        field = selections[0][1]
        cost = sum(COSTS[f] * (len(a["ids"]) if f == "nodes" else 1) for _, f, a in selections)
        now = self.clock()
        self.available = min(self.maximum, self.available + (now - self.last) * self.restore_rate)
        self.last = now
        if cost > self.available:
            self.throttled += 1
            return 200, {}, {"errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}],
                             "extensions": self._cost(cost)}
        self.available -= cost
        self.operations.append(field)
        data = {key: self._serve(f, arguments)[f] for key, f, arguments in selections}
        if field == "productSet" and self.fail_after_create and not data[selections[0][0]]["userErrors"]:
            self.fail_after_create = False
            return 500, {}, {"errors": "Internal error"}
        return 200, {}, {"data": data, "extensions": self._cost(cost)}

    def _cost(self, cost: float) -> dict:
        return {"cost": {"requestedQueryCost": cost, "actualQueryCost": cost,
                         "throttleStatus": {"maximumAvailable": self.maximum, "currentlyAvailable": self.available,
                                            "restoreRate": self.restore_rate}}}

    def _check(self, query: str, variables: dict) -> list[tuple[str, str, dict]]:
        """Validate a document and its variables; return each root field as (response key, field, arguments)."""
        schema = admin_schema()
        document = self._document(query)
        operation = next(d for d in document.definitions if isinstance(d, OperationDefinitionNode))
        coerced = get_variable_values(schema, operation.variable_definitions or [], variables)
        if isinstance(coerced, list):
            raise ContractError("; ".join(e.message for e in coerced))
        root = schema.mutation_type if operation.operation == OperationType.MUTATION else schema.query_type
        out = []
        for node in operation.selection_set.selections:
            field = node.name.value
            if field not in COSTS:
                raise ContractError(f"the fake does not serve {field!r}")
            out.append(((node.alias or node.name).value, field, get_argument_values(root.fields[field], node, coerced)))
        return out

    @staticmethod
    def _document(query: str) -> DocumentNode:
        try:
            document = parse(query)
        except Exception as error:  # noqa: BLE001 - a syntax error is a contract error like any other
            raise ContractError(f"not GraphQL: {error}") from error
        errors = validate(admin_schema(), document)
        if errors:
            raise ContractError("; ".join(e.message for e in errors))
        return document

    def _serve(self, field: str, variables: dict) -> dict:
        if field == "productSet":
            return self.product_set(variables["input"])
        if field == "productByIdentifier":
            return self.by_handle(variables)
        if field == "nodes":  # products and media by id (the nodes the connector reads back this way)
            media = {m["id"]: m for p in self.products.values() for m in p.get("media", [])}
            return {"nodes": [self._media_view(media[i]) if i in media else
                              self._product_view(self.products[i]) if i in self.products else None
                              for i in variables["ids"]]}
        if field == "stagedUploadsCreate":
            return self.staged_uploads_create(variables["input"])
        if field == "bulkOperationRunMutation":
            return self.bulk_run(variables["mutation"], variables["stagedUploadPath"])
        if field == "node":
            operation = self.bulk_operations.get(variables["id"])
            return {"node": self._bulk_view(self._advance(operation)) if operation else None}
        mutations = [o for o in self.bulk_operations.values() if o["type"] == "MUTATION"]
        return {"currentBulkOperation": self._bulk_view(self._advance(mutations[-1])) if mutations else None}

    # ----------------------------------------------------------------------------------------- behaviour
    def by_handle(self, arguments: dict) -> dict:
        handle = arguments["identifier"]["handle"]
        found = next((p for p in self.products.values() if p["handle"] == handle), None)
        return {"productByIdentifier": {"id": found["id"], "handle": handle} if found else None}

    def product_set(self, product: dict) -> dict:
        errors = self._user_errors(product)
        if errors:
            return {"productSet": {"product": None, "userErrors": errors}}
        if product.get("id"):
            stored = self.products[product["id"]]
        else:
            # Like Shopify, a new product whose handle is taken gets a suffixed handle: a duplicate.
            handle, taken = product.get("handle"), {p["handle"] for p in self.products.values()}
            n = 0
            while handle in taken:
                n += 1
                handle = f"{product['handle']}-{n}"
            product = dict(product, handle=handle)
            stored = {"id": self._gid("Product"), "handle": handle}
            self.products[stored["id"]] = stored
        old_variants = {tuple(o["name"] for o in v["optionValues"]): v for v in stored.get("variants", [])}
        for key in ("title", "descriptionHtml", "vendor", "productType", "tags", "status", "handle"):
            if key in product:
                stored[key] = product[key]
        stored["options"] = product.get("productOptions", [])
        stored["variants"] = []
        for variant in product.get("variants", []):
            kept = old_variants.get(tuple(o["name"] for o in variant["optionValues"]))
            stored["variants"].append(dict(variant, id=kept["id"] if kept else self._gid("ProductVariant")))
        stored["metafields"] = product.get("metafields", stored.get("metafields", []))
        # A media whose source was sent before is kept (a FAILED one is downloaded again); a new one is downloaded
        old_media = {m["originalSource"]: m for m in stored.get("media", []) if m["status"] != "FAILED"}
        stored["media"] = [dict(f, **{k: old_media[f["originalSource"]][k] for k in self.MEDIA_STATE})
                           if f["originalSource"] in old_media else
                           dict(f, id=self._gid("MediaImage"), status="PROCESSING", mediaErrors=[],
                                created=self.clock(), seen=False)
                           for f in product.get("files", [])]
        return {"productSet": {"userErrors": [], "product": self._product_view(stored)}}

    MEDIA_STATE = ("id", "status", "mediaErrors", "created", "seen")

    def _product_view(self, stored: dict) -> dict:
        """The product as an answer shows it (a superset of what the connector selects)."""
        return {"__typename": "Product", "id": stored["id"], "handle": stored["handle"],
                "variants": {"nodes": [{"id": v["id"], "sku": v.get("sku"), "selectedOptions": [
                    {"name": o["optionName"], "value": o["name"]} for o in v["optionValues"]]}
                    for v in stored["variants"]]},
                "media": {"nodes": [self._media_view(m) for m in stored.get("media", [])]}}

    def _media_view(self, media: dict) -> dict:
        if media["status"] == "PROCESSING" and media["seen"] and self.clock() >= media["created"] + self.media_seconds:
            source = media["originalSource"]
            host = urlsplit(source).hostname or ""
            if source in self.unreachable or host == "invalid" or host.endswith(".invalid"):
                media["status"], media["mediaErrors"] = "FAILED", [dict(MEDIA_DOWNLOAD_FAILED)]
            else:
                media["status"] = "READY"
        media["seen"] = True
        return {"__typename": "MediaImage", "id": media["id"], "alt": media.get("alt"), "status": media["status"],
                "mediaErrors": media["mediaErrors"], "originalSource": {"url": media["originalSource"]}}

    # ------------------------------------------------------------------------------------ bulk operations
    def staged_uploads_create(self, inputs: list[dict]) -> dict:
        targets, errors = [], []
        for i, target in enumerate(inputs):
            if target["resource"] != "BULK_MUTATION_VARIABLES":
                errors.append({"field": ["input", str(i), "resource"],
                               "message": "the fake stages only BULK_MUTATION_VARIABLES"})
                continue
            key = f"tmp/1/bulk/{secrets.token_hex(8)}/{target['filename']}"
            parameters = {"Content-Type": target["mimeType"], "success_action_status": "201", "acl": "private",
                          "key": key, "x-goog-date": "20250101T000000Z",
                          "x-goog-credential": "merchant-assets@shopify-tiers.iam.gserviceaccount.com/20250101/auto"
                                               "/storage/goog4_request",
                          "x-goog-algorithm": "GOOG4-RSA-SHA256",
                          "x-goog-signature": secrets.token_hex(32),
                          "policy": base64.b64encode(secrets.token_bytes(48)).decode()}
            self.staged[key] = parameters
            targets.append({"url": f"{self.url}/staged-uploads/", "resourceUrl": f"{self.url}/staged-uploads/{key}",
                            "parameters": [{"name": k, "value": v} for k, v in parameters.items()]})
        return {"stagedUploadsCreate": {"stagedTargets": targets, "userErrors": errors}}

    def _upload(self, request: Request) -> Any:
        """The staged upload target: a multipart form POST of the signed parameters, then `file` (last)."""
        def refuse(code: str, message: str) -> Any:
            self.contract_errors.append(f"staged upload: {message}")
            return 403 if code == "AccessDenied" else 400, {"Content-Type": "application/xml"}, \
                f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{message}</Message></Error>"

        if "X-Shopify-Access-Token" in request.headers:
            return refuse("InvalidArgument", "the Admin API token was sent to the storage host")
        content_type = request.headers.get("Content-Type", "")
        if not content_type.startswith("multipart/form-data"):
            return refuse("InvalidArgument", f"expected multipart/form-data, got {content_type!r}")
        form = BytesParser(policy=email_policy).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + request.body)
        parts = [(p.get_param("name", header="content-disposition"), p) for p in form.iter_parts()]
        if not parts or parts[-1][0] != "file":
            return refuse("InvalidArgument", "the form's last field must be `file`")
        fields = {name: part.get_content() for name, part in parts[:-1]}
        expected = self.staged.get(fields.get("key", ""))
        if expected is None or fields != expected:
            return refuse("AccessDenied", "the form fields are not the ones stagedUploadsCreate returned")
        content = parts[-1][1].get_payload(decode=True)
        if len(content) > self.max_upload_bytes:
            return refuse("EntityTooLarge", f"{len(content)} bytes is over the {self.max_upload_bytes} allowed")
        self.uploads[fields["key"]] = content
        return 201, {"Content-Type": "application/xml"}, (
            f"<?xml version='1.0' encoding='UTF-8'?><PostResponse><Location>{self.url}/staged-uploads/"
            f"{fields['key']}</Location><Key>{fields['key']}</Key></PostResponse>")

    def bulk_run(self, mutation: str, path: str) -> dict:
        def refused(code: str, message: str, field: list[str] | None = None) -> dict:
            return {"bulkOperationRunMutation": {"bulkOperation": None, "userErrors": [
                {"field": field, "message": message, "code": code}]}}

        running = [o for o in self.bulk_operations.values()
                   if o["type"] == "MUTATION" and o["status"] in ("CREATED", "RUNNING", "CANCELING")]
        if running:
            return refused("OPERATION_IN_PROGRESS", f"A bulk mutation operation for this app and shop is already "
                                                    f"in progress: {running[0]['id']}.")
        try:
            document = self._document(mutation)
        except ContractError as error:
            self.contract_errors.append(f"bulk mutation: {error}")
            return refused("INVALID_MUTATION", f"Invalid mutation: {error}", ["mutation"])
        operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
        if len(operations) != 1 or operations[0].operation != OperationType.MUTATION:
            return refused("INVALID_MUTATION", "Invalid mutation: give exactly one mutation", ["mutation"])
        if connections(document) > 1:  # "limited to one connection field" (bulk import guide, limitations)
            return refused("INVALID_MUTATION", "Bulk mutations cannot contain more than 1 connection.", ["mutation"])
        body = self.uploads.get(path)
        if body is None:
            return refused("NO_SUCH_FILE", f"The JSONL file could not be found: {path}", ["stagedUploadPath"])
        try:
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            if not all(isinstance(line, dict) for line in lines):
                raise ValueError
        except ValueError:
            return refused("INVALID_STAGED_UPLOAD_FILE", "Unexpected file structure - expected JSONL",
                           ["stagedUploadPath"])
        operation = {"id": self._gid("BulkOperation"), "status": "CREATED", "type": "MUTATION", "query": mutation,
                     "createdAt": "2025-01-01T00:00:00Z", "completedAt": None, "errorCode": None,
                     "objectCount": "0", "rootObjectCount": "0", "fileSize": None, "url": None,
                     "partialDataUrl": None, "lines": lines, "results": [], "operation": operations[0]}
        self.bulk_operations[operation["id"]] = operation
        return {"bulkOperationRunMutation": {"bulkOperation": self._bulk_view(operation), "userErrors": []}}

    def _advance(self, operation: dict) -> dict:
        """One step of the operation's life, taken each time it is read."""
        if operation["status"] == "CREATED":
            operation["status"] = "RUNNING"
            return operation
        if operation["status"] != "RUNNING":
            return operation
        node = operation["operation"].selection_set.selections[0]
        schema = admin_schema()
        for _ in range(self.bulk_lines_per_read or len(operation["lines"])):
            n = len(operation["results"])
            if n == len(operation["lines"]):
                break
            if self.bulk_fail_after is not None and n >= self.bulk_fail_after:
                operation.update(status="FAILED", errorCode="INTERNAL_SERVER_ERROR")
                self._write_results(operation, "partialDataUrl")
                return operation
            coerced = get_variable_values(schema, operation["operation"].variable_definitions or [],
                                          operation["lines"][n])
            if isinstance(coerced, list):
                message = "; ".join(e.message for e in coerced)
                self.contract_errors.append(f"bulk line {n}: {message}")
                operation["results"].append({"errors": [{"message": message}], "__lineNumber": n})
            else:
                field = node.name.value
                arguments = get_argument_values(schema.mutation_type.fields[field], node, coerced)
                data = self.product_set(arguments["input"]) if field == "productSet" else {}
                operation["results"].append({"data": {(node.alias or node.name).value: data.get(field)},
                                             "__lineNumber": n})
            operation["objectCount"] = operation["rootObjectCount"] = str(len(operation["results"]))
        if len(operation["results"]) == len(operation["lines"]):
            operation.update(status="COMPLETED", completedAt="2025-01-01T00:01:00Z")
            self._write_results(operation, "url")
        return operation

    def _write_results(self, operation: dict, field: str) -> None:
        results = operation["results"][::-1] if self.bulk_results_reversed else operation["results"]
        if not results:
            return
        name = f"{operation['id'].rsplit('/', 1)[1]}{'-partial' if field == 'partialDataUrl' else ''}.jsonl"
        self.files[name] = "".join(json.dumps(line) + "\n" for line in results).encode()
        operation[field] = f"{self.url}/bulk-results/{name}"
        operation["fileSize"] = str(len(self.files[name]))

    @staticmethod
    def _bulk_view(operation: dict) -> dict:
        return {"__typename": "BulkOperation", **{k: v for k, v in operation.items()
                                                   if k not in ("lines", "results", "operation")}}

    def _user_errors(self, product: dict) -> list[dict]:
        out = []
        if product.get("id") and product["id"] not in self.products:
            out.append({"field": ["input", "id"], "message": "Product does not exist",
                        "code": "PRODUCT_DOES_NOT_EXIST"})
        if not product.get("id") and not product.get("title"):
            out.append({"field": ["input", "title"], "message": "Title can't be blank", "code": "INVALID_PRODUCT"})
        options = {o["name"]: [v["name"] for v in o.get("values", [])] for o in product.get("productOptions", [])}
        if len(options) > 3:
            out.append({"field": ["input", "productOptions"], "message": "Can only specify a maximum of 3 options",
                        "code": "INVALID_INPUT"})
        for i, variant in enumerate(product.get("variants", [])):
            for value in variant["optionValues"]:
                if value.get("name") not in options.get(value.get("optionName"), []):
                    out.append({"field": ["input", "variants", str(i), "optionValues"],
                                "message": f"Option value '{value.get('name')}' does not exist for option "
                                           f"'{value.get('optionName')}'", "code": "INVALID_INPUT"})
            price = variant.get("price")
            if price is not None and float(price) < 0:
                out.append({"field": ["input", "variants", str(i), "price"],
                            "message": "Price must be greater than or equal to 0", "code": "INVALID_VARIANT"})
        for i, field in enumerate(product.get("metafields", [])):
            if field["type"].startswith("number_") and not re.fullmatch(r"-?\d+(\.\d+)?", field.get("value", "")):
                out.append({"field": ["input", "metafields", str(i), "value"],
                            "message": f"Value must be a {field['type']}", "code": "INVALID_METAFIELD"})
        for i, media in enumerate(product.get("files", [])):
            if not str(media.get("originalSource", "")).startswith(("http://", "https://")):
                out.append({"field": ["input", "files", str(i), "originalSource"],
                            "message": "Image URL is invalid", "code": "INVALID_INPUT"})
        return out
