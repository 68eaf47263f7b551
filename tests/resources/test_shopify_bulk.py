"""Bulk pushes and media Shopify cannot download, against the fake that follows shopify.dev "Bulk import data with
the GraphQL Admin API" (staged upload, bulkOperationRunMutation, polling, JSONL result) and the Media docs
(media PROCESSING, then READY or FAILED with mediaErrors), validating every document against the 2025-01 schema."""

from __future__ import annotations

import json

import pytest

from claro_dagster.resources.http import HttpError
from claro_dagster.resources.shopify import BULK_PRODUCT_SET, PRODUCT_SET, ShopifyError, build_products, push
from tests.resources.test_shopify import DEST, Clock, client_for, record

BULK = DEST.model_copy(update={"bulk_threshold": 3})


def catalogue(products: int = 5) -> list[dict]:
    """Two variants (sizes M and L) of each of `products` styles."""
    return [record(f"S{i}-{size}", style=f"S{i}", size=size, price=10 + i)
            for i in range(products) for size in ("M", "L")]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def shop(clock):
    from tests.shopify_fake import FakeShopify

    with FakeShopify(clock=clock) as fake:
        yield fake


@pytest.fixture
def state(tmp_path):
    import sqlalchemy

    from claro_dagster.catalogue.channels import ChannelState

    class Store:
        engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'c.db'}")

    return ChannelState(Store())


def on_shop(shop) -> dict[str, tuple[str, str, str]]:
    """What the fake holds, per SKU: (product title, variant price, product handle)."""
    return {v["sku"]: (p["title"], v["price"], p["handle"]) for p in shop.products.values() for v in p["variants"]}


def test_more_products_than_the_threshold_go_as_one_bulk_operation(shop, clock, state, monkeypatch) -> None:
    from claro_dagster.resources import shopify

    monkeypatch.setattr(shopify, "HANDLES_PER_CALL", 2)
    shop.bulk_results_reversed = True  # Shopify does not promise the input's order: lines match by __lineNumber
    shop.bulk_lines_per_read = 2  # the operation runs two lines between two reads of it
    records = catalogue(5)
    plan = push(client_for(shop, clock), state, "shop", BULK, records, "sku")
    assert shop.contract_errors == [] and plan.failed == {} and sorted(plan.create) == [f"s{i}" for i in range(5)]
    # read: CREATED -> RUNNING, then 1 s later lines 0-1, 2 s later 2-3, 4 s later line 4 and COMPLETED
    assert shop.operations.count("node") == 4 and clock.slept == [1.0, 2.0, 4.0]
    assert shop.operations.count("productByIdentifier") == 3  # the 5 handles looked up 2 to a query
    assert shop.operations.count("bulkOperationRunMutation") == 1 and "productSet" not in shop.operations
    assert shop.operations.count("stagedUploadsCreate") == 1
    [upload] = shop.uploads.values()  # one {"input": ...} per product: the productSet variables
    assert [json.loads(line) for line in upload.decode().splitlines()] == [
        {"input": p.input} for p in build_products(records, BULK, "sku")]
    assert on_shop(shop) == {r["sku"]: (r["title"], f"{r['price']:.2f}", r["style"].lower()) for r in records}
    stored = state.get("shop")
    assert {k: e.status for k, e in stored.items()} == dict.fromkeys((r["sku"] for r in records), "pushed")
    for product in shop.products.values():  # the ids of each result line landed on that product's records
        for variant in product["variants"]:
            assert stored[variant["sku"]].remote_id == product["id"]
            assert stored[variant["sku"]].remote_ids["variant"] == variant["id"]
            assert stored[variant["sku"]].remote_ids["media"] == [m["id"] for m in product["media"]]
    [operation] = shop.bulk_operations.values()
    assert operation["status"] == "COMPLETED" and operation["query"] == BULK_PRODUCT_SET
    shop.operations.clear()
    again = push(client_for(shop, clock), state, "shop", BULK, records, "sku")
    assert again.sent == 0 and shop.operations == [] and len(again.unchanged) == 5
    # one changed product is under the threshold: one productSet, no bulk operation
    third = push(client_for(shop, clock), state, "shop", BULK,
                 [dict(r, price=99) if r["style"] == "S2" else r for r in records], "sku")
    assert third.update == ["s2"] and shop.operations == ["productSet"] and len(shop.bulk_operations) == 1
    assert on_shop(shop)["S2-M"][1] == "99.00" and len(shop.products) == 5


def test_a_bulk_file_over_the_size_limit_is_split_into_operations_run_one_after_another(
        shop, clock, state, monkeypatch) -> None:
    from claro_dagster.resources import shopify

    records = catalogue(5)
    line = len(json.dumps({"input": build_products(records, BULK, "sku")[0].input}).encode())
    monkeypatch.setattr(shopify, "BULK_FILE_LIMIT", 2 * (line + 64) + 10)  # two products a file
    shop.max_upload_bytes = 2 * (line + 64) + 10
    plan = push(client_for(shop, clock), state, "shop", BULK, records, "sku")
    assert plan.failed == {} and shop.contract_errors == [] and len(shop.products) == 5
    assert [len(o["lines"]) for o in shop.bulk_operations.values()] == [2, 2, 1]
    assert state.counts("shop") == {"pushed": 10}
    shop.max_upload_bytes = line  # what the storage answers to a file over the limit
    monkeypatch.setattr(shopify, "BULK_FILE_LIMIT", 10 * line)
    with pytest.raises(HttpError, match="400.*EntityTooLarge"):
        push(client_for(shop, clock), state, "shop", BULK, catalogue(9)[4:], "sku")


def test_at_the_threshold_products_go_one_productset_each(shop, clock, state) -> None:
    push(client_for(shop, clock), state, "shop", BULK, catalogue(3), "sku")
    assert shop.bulk_operations == {} and shop.operations.count("productSet") == 3 and len(shop.products) == 3


def test_a_bulk_operation_that_fails_part_way_brings_the_failed_lines_back_per_record(shop, clock, state) -> None:
    records = [dict(r, price=-1) if r["sku"] == "S1-L" else r for r in catalogue(5)]  # line 1 is refused
    shop.bulk_fail_after = 3  # lines 0-2 run, then the operation FAILED with partial data
    plan = push(client_for(shop, clock), state, "shop", BULK, records, "sku")
    [operation] = shop.bulk_operations.values()
    assert operation["status"] == "FAILED" and operation["partialDataUrl"] and operation["url"] is None
    assert sorted(p["handle"] for p in shop.products.values()) == ["s0", "s2"]
    assert plan.failed["S1-M"] == "input.variants.1.price: Price must be greater than or equal to 0"
    why = f"bulk operation {operation['id']} ended FAILED (INTERNAL_SERVER_ERROR) before this product; " \
          "it is sent again next push"
    assert {k: plan.failed[k] for k in ("S3-M", "S3-L", "S4-M", "S4-L")} == dict.fromkeys(
        ("S3-M", "S3-L", "S4-M", "S4-L"), why)
    assert {k: e.status for k, e in state.get("shop").items()} == {
        "S0-M": "pushed", "S0-L": "pushed", "S2-M": "pushed", "S2-L": "pushed", "S1-M": "failed",
        "S1-L": "failed", "S3-M": "failed", "S3-L": "failed", "S4-M": "failed", "S4-L": "failed"}
    # next push: the refused and the unsent products go again (three: one productSet each), nothing twice
    shop.bulk_fail_after = None
    fixed = catalogue(5)
    shop.operations.clear()
    again = push(client_for(shop, clock), state, "shop", BULK, fixed, "sku")
    assert again.failed == {} and sorted(again.create) == ["s1", "s3", "s4"] and again.unchanged == ["s0", "s2"]
    assert shop.operations.count("productSet") == 3 and len(shop.bulk_operations) == 1
    assert on_shop(shop) == {r["sku"]: (r["title"], f"{r['price']:.2f}", r["style"].lower()) for r in fixed}
    assert state.counts("shop") == {"pushed": 10} and shop.contract_errors == []


def test_products_a_bulk_operation_created_whose_ids_were_lost_are_found_by_handle(shop, clock, state) -> None:
    served = shop.server.handler
    shop.server.handler = lambda request: (503, {}, b"") if request.path.startswith("/bulk-results/") \
        else served(request)
    with pytest.raises(HttpError, match="503"):
        push(client_for(shop, clock, max_attempts=2), state, "shop", BULK, catalogue(5), "sku")
    assert len(shop.products) == 5 and state.get("shop") == {}  # created, but the push never read the ids
    shop.server.handler = served
    plan = push(client_for(shop, clock), state, "shop", BULK, catalogue(5), "sku")
    assert plan.failed == {} and len(shop.products) == 5 and state.counts("shop") == {"pushed": 10}
    assert sorted(p["handle"] for p in shop.products.values()) == [f"s{i}" for i in range(5)]
    second = list(shop.uploads.values())[1]  # the second bulk file updates the products by id
    ids = {p["handle"]: p["id"] for p in shop.products.values()}
    assert [json.loads(line)["input"].get("id") for line in second.decode().splitlines()] == [
        ids[f"s{i}"] for i in range(5)]


def test_a_second_bulk_mutation_is_refused_while_one_runs_and_the_push_waits_for_it(shop, clock, state) -> None:
    client = client_for(shop, clock)
    path = client.stage_upload(b'{"input": {"title": "Other", "handle": "other"}}\n')
    first, errors = client.run_bulk_mutation(BULK_PRODUCT_SET, path)
    assert errors == [] and first["status"] == "CREATED"
    second, errors = client.run_bulk_mutation(BULK_PRODUCT_SET, path)
    assert second is None and [e["code"] for e in errors] == ["OPERATION_IN_PROGRESS"]
    assert first["id"] in errors[0]["message"]
    # a push meeting the running operation waits for it to finish, then runs its own
    plan = push(client, state, "shop", BULK, catalogue(4), "sku")
    assert plan.failed == {} and "currentBulkOperation" in shop.operations
    assert [o["status"] for o in shop.bulk_operations.values()] == ["COMPLETED", "COMPLETED"]
    assert sorted(p["handle"] for p in shop.products.values()) == ["other", "s0", "s1", "s2", "s3"]


def test_a_push_stops_waiting_for_a_bulk_mutation_that_never_ends(shop, clock, state) -> None:
    from claro_dagster.resources.http import HttpClient
    from claro_dagster.resources.shopify import ShopifyClient

    stuck = {"id": "gid://shopify/BulkOperation/0", "type": "MUTATION", "status": "CANCELING"}
    shop.bulk_operations[stuck["id"]] = stuck  # the fake never finishes canceling it
    client = ShopifyClient(shop.url, shop.token, http=HttpClient(sleep=clock.sleep), sleep=clock.sleep, clock=clock,
                           bulk_timeout=10)
    with pytest.raises(ShopifyError, match="BulkOperation/0 is still CANCELING after 15 s"):
        push(client, state, "shop", BULK, catalogue(4), "sku")
    assert clock.slept == [1.0, 2.0, 4.0, 8.0] and len(shop.bulk_operations) == 1 and shop.products == {}


def test_the_fake_checks_the_upload_and_each_line_against_the_mutation(shop, clock) -> None:
    import requests

    client = client_for(shop, clock)
    created = client.execute("""mutation s($input: [StagedUploadInput!]!) { stagedUploadsCreate(input: $input) {
        stagedTargets { url parameters { name value } } userErrors { field message } } }""", {"input": [{
        "resource": "BULK_MUTATION_VARIABLES", "filename": "x.jsonl", "mimeType": "text/jsonl"}]})
    target = created["stagedUploadsCreate"]["stagedTargets"][0]
    fields = {p["name"]: p["value"] for p in target["parameters"]}
    tampered = dict(fields, policy="forged")
    assert requests.post(target["url"], data=tampered, files={"file": ("x", b"{}\n")}).status_code == 403
    with_token = requests.post(target["url"], data=fields, files={"file": ("x", b"{}\n")},
                               headers={"X-Shopify-Access-Token": shop.token})
    assert with_token.status_code == 400 and "token" in shop.contract_errors[-1]
    shop.contract_errors.clear()
    # a line whose variables do not fit ProductSetInput is a contract error and an `errors` result line
    path = client.stage_upload(b'{"input": {"title": "ok", "handle": "ok"}}\n{"input": {"colour": "red"}}\n')
    operation, _ = client.run_bulk_mutation(BULK_PRODUCT_SET, path)
    done = client.wait_for_bulk(operation["id"])
    lines = list(client.bulk_result_lines(done["url"]))
    assert [line["__lineNumber"] for line in lines] == [0, 1] and "colour" in lines[1]["errors"][0]["message"]
    assert lines[0]["data"]["productSet"]["userErrors"] == [] and len(shop.contract_errors) == 1
    _, errors = client.run_bulk_mutation("mutation { nope }", path)
    assert [e["code"] for e in errors] == ["INVALID_MUTATION"]
    _, errors = client.run_bulk_mutation(PRODUCT_SET, path)  # variants and media: two connections
    assert errors == [{"field": ["mutation"], "message": "Bulk mutations cannot contain more than 1 connection.",
                       "code": "INVALID_MUTATION"}]
    _, errors = client.run_bulk_mutation(BULK_PRODUCT_SET, "tmp/1/bulk/missing/x.jsonl")
    assert [e["code"] for e in errors] == ["NO_SUCH_FILE"]


# ------------------------------------------------------------------------------------------------ media
def test_an_image_that_does_not_resolve_comes_back_on_its_records(shop, clock, state) -> None:
    bad = "https://img.invalid/TEE.jpg"  # .invalid never resolves (RFC 2606)
    records = [record("T-M", image=bad, image2="https://img.example/TEE-2.jpg"),
               record("T-L", size="L", image=bad), record("P-1", style="POLO")]
    plan = push(client_for(shop, clock), state, "shop", DEST, records, "sku")
    why = (f"image {bad}: Media could not be processed because the image could not be downloaded. "
           "(IMAGE_DOWNLOAD_FAILURE); fix the image URL and the product is sent again next push")
    assert plan.failed == {"T-M": why, "T-L": why}
    tee = next(p for p in shop.products.values() if p["handle"] == "tee")
    assert [m["status"] for m in tee["media"]] == ["FAILED", "READY"] and len(tee["variants"]) == 2  # the rest too
    stored = state.get("shop")
    assert (stored["T-M"].status, stored["T-M"].error, stored["T-M"].remote_id) == ("failed", why, tee["id"])
    assert stored["T-M"].remote_ids["variant"] == tee["variants"][0]["id"]
    assert stored["P-1"].status == "pushed"
    # sent again next time (by id: no second product); fixed, it is accepted
    shop.operations.clear()
    push(client_for(shop, clock), state, "shop", DEST, records, "sku")
    assert shop.operations[0] == "productSet" and len(shop.products) == 2
    assert state.get("shop")["T-M"].status == "failed"
    fixed = [dict(r, image="https://img.example/TEE.jpg") if r["style"] == "TEE" else r for r in records]
    plan = push(client_for(shop, clock), state, "shop", DEST, fixed, "sku")
    assert plan.failed == {} and state.counts("shop") == {"pushed": 3}
    assert [m["status"] for m in shop.products[tee["id"]]["media"]] == ["READY", "READY"]


def test_media_are_polled_with_growing_waits_and_not_forever(shop, clock, state) -> None:
    shop.media_seconds = 5  # Shopify needs 5 s to download the image
    shop.unreachable.add("https://img.example/TEE.jpg")
    plan = push(client_for(shop, clock), state, "shop", DEST, [record("T-M")], "sku")
    assert clock.slept == [1.0, 2.0, 4.0] and shop.operations.count("nodes") == 3
    assert "https://img.example/TEE.jpg" in plan.failed["T-M"]
    shop.media_seconds = 10_000  # never done within the bound: the push stops waiting and keeps the record
    clock.slept.clear()
    plan = push(client_for(shop, clock), state, "shop", DEST, [record("T-M", image="https://img.example/2.jpg")],
                "sku")
    assert clock.slept == [1.0, 2.0, 4.0, 8.0, 16.0] and plan.failed == {}
    assert state.get("shop")["T-M"].status == "pushed"


def test_an_image_failing_in_a_bulk_operation_comes_back_on_its_records(shop, clock, state) -> None:
    records = catalogue(4)
    shop.unreachable.add("https://img.example/S2.jpg")
    shop.media_seconds = 10  # still downloading when the operation has finished
    plan = push(client_for(shop, clock), state, "shop", BULK, records, "sku")
    assert len(shop.bulk_operations) == 1 and sorted(plan.failed) == ["S2-L", "S2-M"]
    # one read of the four products' media after the operation (1 s), then of the pending media by id until done
    assert shop.operations.count("nodes") == 5 and clock.slept == [1.0, 1.0, 2.0, 4.0, 8.0]
    assert plan.failed["S2-M"].startswith("image https://img.example/S2.jpg: Media could not be processed")
    assert state.counts("shop") == {"pushed": 6, "failed": 2} and shop.contract_errors == []
