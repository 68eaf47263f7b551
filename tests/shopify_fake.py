"""A fake Shopify Admin GraphQL endpoint that checks every request against the published schema.

Each POST to `/admin/api/<version>/graphql.json` is parsed and validated with graphql-core against
`tests/contracts/shopify/admin_schema_2025-01.json.gz` (query and variables): a document the real API would
refuse fails the test. It then answers the operations the connector uses, as Shopify documents them:

- `productSet(input:)`: creates a product (no `input.id`) or replaces the options, variants, metafields and
  media of the product `input.id`; bad input comes back as `userErrors` (field, message, code);
- `productByIdentifier(identifier: {handle})`: the product with that handle, or null;
- cost: every answer has `extensions.cost` with a `throttleStatus` from a leaky bucket (maximumAvailable,
  restoreRate per second, on the injectable `clock`); a request costing more than is available is answered
  `THROTTLED` and does nothing.

It keeps what it is sent (`products` by id), so tests read back what a push left on the "shop".
"""

from __future__ import annotations

import gzip
import itertools
import json
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from graphql import GraphQLSchema, build_client_schema, parse, validate
from graphql.execution.values import get_variable_values
from graphql.language import OperationDefinitionNode

from tests.http_fakes import RecordingServer, Request

SCHEMA = Path(__file__).parent / "contracts" / "shopify" / "admin_schema_2025-01.json.gz"
COSTS = {"productSet": 10, "productByIdentifier": 1}


@cache
def admin_schema() -> GraphQLSchema:
    with gzip.open(SCHEMA, "rt", encoding="utf-8") as handle:
        return build_client_schema(json.load(handle)["data"])


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
        if request.path != f"/admin/api/{self.api_version}/graphql.json" or request.method != "POST":
            return 404, {}, {"errors": "Not Found"}
        if request.headers.get("X-Shopify-Access-Token") != self.token:
            return 401, {}, {"errors": "[API] Invalid API key or access token (unrecognized login or wrong password)"}
        body = request.json()
        try:
            field, variables = self._check(body.get("query", ""), body.get("variables") or {})
        except ContractError as error:
            self.contract_errors.append(str(error))
            return 200, {}, {"errors": [{"message": str(error)}]}
        cost = COSTS.get(field, 1)
        now = self.clock()
        self.available = min(self.maximum, self.available + (now - self.last) * self.restore_rate)
        self.last = now
        if cost > self.available:
            self.throttled += 1
            return 200, {}, {"errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}],
                             "extensions": self._cost(cost)}
        self.available -= cost
        self.operations.append(field)
        data = self.product_set(variables["input"]) if field == "productSet" else self.by_handle(variables)
        if field == "productSet" and self.fail_after_create and not data["productSet"]["userErrors"]:
            self.fail_after_create = False
            return 500, {}, {"errors": "Internal error"}
        return 200, {}, {"data": data, "extensions": self._cost(cost)}

    def _cost(self, cost: float) -> dict:
        return {"cost": {"requestedQueryCost": cost, "actualQueryCost": cost,
                         "throttleStatus": {"maximumAvailable": self.maximum, "currentlyAvailable": self.available,
                                            "restoreRate": self.restore_rate}}}

    def _check(self, query: str, variables: dict) -> tuple[str, dict]:
        schema = admin_schema()
        try:
            document = parse(query)
        except Exception as error:  # noqa: BLE001 - a syntax error is a contract error like any other
            raise ContractError(f"not GraphQL: {error}") from error
        errors = validate(schema, document)
        if errors:
            raise ContractError("; ".join(e.message for e in errors))
        operation = next(d for d in document.definitions if isinstance(d, OperationDefinitionNode))
        coerced = get_variable_values(schema, operation.variable_definitions or [], variables)
        if isinstance(coerced, list):
            raise ContractError("; ".join(e.message for e in coerced))
        field = operation.selection_set.selections[0].name.value
        if field not in COSTS:
            raise ContractError(f"the fake does not serve {field!r}")
        return field, coerced

    # ----------------------------------------------------------------------------------------- behaviour
    def by_handle(self, variables: dict) -> dict:
        handle = variables["handle"]
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
        old_media = {m["originalSource"]: m for m in stored.get("media", [])}
        stored["media"] = [dict(f, id=old_media[f["originalSource"]]["id"] if f["originalSource"] in old_media
                                else self._gid("MediaImage")) for f in product.get("files", [])]
        return {"productSet": {"userErrors": [], "product": {
            "id": stored["id"], "handle": stored["handle"],
            "variants": {"nodes": [{"id": v["id"], "sku": v.get("sku"), "selectedOptions": [
                {"name": o["optionName"], "value": o["name"]} for o in v["optionValues"]]}
                for v in stored["variants"]]},
            "media": {"nodes": [{"id": m["id"], "alt": m.get("alt")} for m in stored["media"]]}}}}

    def _user_errors(self, product: dict) -> list[dict]:
        out = []
        if product.get("id") and product["id"] not in self.products:
            out.append({"field": ["input", "id"], "message": "Product does not exist",
                        "code": "PRODUCT_DOES_NOT_EXIST"})
        if not product.get("id") and not product.get("title"):
            out.append({"field": ["input", "title"], "message": "Title can't be blank", "code": "BLANK"})
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
                            "message": f"Value must be a {field['type']}", "code": "INVALID_METAFIELDS"})
        for i, media in enumerate(product.get("files", [])):
            if not str(media.get("originalSource", "")).startswith(("http://", "https://")):
                out.append({"field": ["input", "files", str(i), "originalSource"],
                            "message": "Image URL is invalid", "code": "INVALID_INPUT"})
        return out
