"""Shopify connector against a fake that validates every request with graphql-core against the Admin schema."""

from __future__ import annotations

import pytest

from claro_dagster.resources.http import HttpClient
from claro_dagster.resources.shopify import ShopifyClient, ShopifyError, build_products, push_product
from claro_dagster.spec.models import DestinationSpec
from tests.shopify_fake import FakeShopify

DEST = DestinationSpec.model_validate({
    "kind": "shopify", "catalogue": "products", "shop_url_env": "SHOP_URL", "token_env": "SHOP_TOKEN",
    "group_by": "style", "options": ["colour", "size"], "title": "title", "vendor": "brand", "status": "state",
    "price": "price", "compare_at_price": "was", "sku": "sku", "barcode": "gtin",
    "metafields": [{"namespace": "custom", "key": "weight", "type": "number_decimal", "attribute": "weight"}],
    "images": {"attributes": ["image", "image2"], "alt": "title"}})


def record(sku: str, style: str = "TEE", colour: str = "red", size: str = "M", price: float = 19.5, **extra):
    return {"sku": sku, "style": style, "title": f"{style} tee", "brand": "Acme", "state": "active",
            "colour": colour, "size": size, "price": price, "was": 25.0, "gtin": "4006381333931",
            "weight": 0.2, "image": f"https://img.example/{style}.jpg", "image2": None, **extra}


RECORDS = [record("T-R-M"), record("T-R-L", size="L"), record("T-B-M", colour="blue", price=21),
           record("P-1", style="POLO", colour="white", size="S")]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def shop(clock: Clock):
    with FakeShopify(clock=clock) as fake:
        yield fake


def client_for(shop: FakeShopify, clock: Clock, **kwargs) -> ShopifyClient:
    return ShopifyClient(shop.url, shop.token, "2025-01", http=HttpClient(sleep=clock.sleep, **kwargs),
                         sleep=clock.sleep, clock=clock)


def push_all(client: ShopifyClient, records, ids: dict | None = None):
    return [push_product(client, p, (ids or {}).get(p.handle)) for p in build_products(records, DEST, "sku")]


def test_first_push_creates_products_variants_metafields_and_media(shop, clock) -> None:
    results = push_all(client_for(shop, clock), RECORDS)
    assert shop.contract_errors == [] and all(r.ok for r in results)
    assert sorted(p["handle"] for p in shop.products.values()) == ["polo", "tee"]
    tee = next(p for p in shop.products.values() if p["handle"] == "tee")
    assert (tee["title"], tee["vendor"], tee["status"]) == ("TEE tee", "Acme", "ACTIVE")
    assert tee["options"] == [{"name": "Colour", "position": 1, "values": [{"name": "red"}, {"name": "blue"}]},
                              {"name": "Size", "position": 2, "values": [{"name": "M"}, {"name": "L"}]}]
    assert [(v["sku"], v["price"], v["compareAtPrice"], v["barcode"]) for v in tee["variants"]] == [
        ("T-R-M", "19.50", "25.00", "4006381333931"), ("T-R-L", "19.50", "25.00", "4006381333931"),
        ("T-B-M", "21.00", "25.00", "4006381333931")]
    assert tee["metafields"] == [{"namespace": "custom", "key": "weight", "type": "number_decimal", "value": "0.2"}]
    assert [(m["originalSource"], m["alt"]) for m in tee["media"]] == [("https://img.example/TEE.jpg", "TEE tee")]
    by_handle = {r.handle: r for r in results}
    assert set(by_handle["tee"].variant_ids) == {"T-R-M", "T-R-L", "T-B-M"} and len(by_handle["tee"].media_ids) == 1


def test_a_stored_id_updates_in_place_without_looking_the_handle_up(shop, clock) -> None:
    client = client_for(shop, clock)
    first = {r.handle: r.product_id for r in push_all(client, RECORDS)}
    variant_ids = {v["sku"]: v["id"] for p in shop.products.values() for v in p["variants"]}
    shop.operations.clear()
    changed = [dict(r, price=9.99) if r["sku"] == "T-R-M" else r for r in RECORDS]
    results = push_all(client, changed, first)
    assert shop.operations == ["productSet", "productSet"] and len(shop.products) == 2
    assert {r.handle: r.product_id for r in results} == first
    assert {v["sku"]: v["id"] for p in shop.products.values() for v in p["variants"]} == variant_ids
    tee = shop.products[first["tee"]]
    assert tee["variants"][0]["price"] == "9.99"


def test_a_create_whose_answer_was_lost_is_found_by_handle_not_duplicated(shop, clock) -> None:
    """Shopify created the product but the answer (with its id) never arrived: the retry finds it."""
    shop.fail_after_create = True
    results = push_all(client_for(shop, clock), RECORDS[:1])
    assert len(shop.products) == 1 and results[0].ok
    assert shop.operations == ["productByIdentifier", "productSet", "productByIdentifier", "productSet"]
    # and a whole new push with no stored id (a run that died before saving) finds it too
    push_all(client_for(shop, clock), RECORDS[:1])
    assert len(shop.products) == 1 and shop.contract_errors == []


def test_user_errors_come_back_to_the_records_of_the_product(shop, clock) -> None:
    results = push_all(client_for(shop, clock), [record("BAD", style="NEG", price=-1), *RECORDS[3:]])
    bad = next(r for r in results if r.handle == "neg")
    assert not bad.ok and bad.product_id is None
    assert bad.errors == {"BAD": "input.variants.0.price: Price must be greater than or equal to 0"}
    assert next(r for r in results if r.handle == "polo").ok


def test_an_image_source_that_is_not_a_url_is_a_user_error(shop, clock) -> None:
    results = push_all(client_for(shop, clock), [record("IMG", style="IMG", image="not a url")])
    assert results[0].errors == {"IMG": "input.files.0.originalSource: Image URL is invalid"}


def test_bad_records_are_held_back_with_a_reason() -> None:
    records = [record("A"), record("B"), record("C", size=None), record("D", weight="heavy", style="OTHER")]
    products = {p.handle: p for p in build_products(records, DEST, "sku")}
    assert products["tee"].keys == ["A"]
    assert products["tee"].errors == {
        "B": "claims the same variant (red, M) as record 'A' of product 'TEE'",
        "C": "option 'size' is empty: every variant needs a value for each option"}
    assert products["other"].errors == {"D": "metafield custom.weight: 'heavy' is not a valid number_decimal"}
    assert "metafields" not in products["other"].input


def test_the_same_records_hash_the_same_and_a_price_change_does_not() -> None:
    one = {p.handle: p.digest for p in build_products(RECORDS, DEST, "sku")}
    assert one == {p.handle: p.digest for p in build_products(list(RECORDS), DEST, "sku")}
    changed = {p.handle: p.digest for p in build_products([dict(RECORDS[0], price=1), *RECORDS[1:]], DEST, "sku")}
    assert changed["polo"] == one["polo"] and changed["tee"] != one["tee"]


def test_throttled_answers_are_waited_out_and_pacing_follows_the_restore_rate(clock) -> None:
    with FakeShopify(maximum=20, restore_rate=10, clock=clock) as shop:
        client = client_for(shop, clock)
        for _ in range(3):  # bucket of 20: two productSets (10 each) fit, the third must wait for the restore
            client.product_set({"title": "x", "handle": f"h{clock.now}", "productOptions": [], "variants": []})
        assert shop.throttled == 0 and clock.slept == [pytest.approx(1.0)]
        shop.available, client.throttle = 0, None  # another app spent the bucket: THROTTLED once, then it waits
        client.product_set({"title": "y", "handle": "y", "productOptions": [], "variants": []})
        assert shop.throttled == 1 and client.throttled == 1 and len(shop.products) == 4
        assert clock.slept[-1] == pytest.approx(1.0)  # (requested 10 - available 0) / restore rate 10


def test_every_request_is_checked_against_the_schema(shop, clock) -> None:
    client = client_for(shop, clock)
    with pytest.raises(ShopifyError, match="Cannot query field 'nope'"):
        client.execute("query { shop { nope } }")
    with pytest.raises(ShopifyError, match="ProductSetInput"):
        client.execute("mutation m($input: ProductSetInput!) { productSet(input: $input) { product { id } } }",
                       {"input": {"title": "x", "colour": "red"}})
    assert len(shop.contract_errors) == 2


def test_missing_settings_say_which_variable(monkeypatch) -> None:
    monkeypatch.delenv("SHOP_URL", raising=False)
    monkeypatch.setenv("SHOP_TOKEN", "t")
    with pytest.raises(ShopifyError, match="set SHOP_URL"):
        ShopifyClient.from_env("SHOP_URL", "SHOP_TOKEN")


# ------------------------------------------------------------------------------ channel state and push
@pytest.fixture
def state(tmp_path):
    from claro_dagster.catalogue.channels import ChannelState

    class Store:  # ChannelState needs only the store's engine
        engine = __import__("sqlalchemy").create_engine(f"sqlite:///{tmp_path / 'c.db'}")

    return ChannelState(Store())


def test_second_push_sends_nothing_and_one_price_change_sends_that_product(shop, clock, state) -> None:
    from claro_dagster.resources.shopify import push

    client = client_for(shop, clock)
    first = push(client, state, "shop", DEST, RECORDS, "sku")
    assert sorted(first.create) == ["polo", "tee"] and first.sent == 2 and first.failed == {}
    assert state.counts("shop") == {"pushed": 4}
    stored = state.get("shop")
    assert stored["T-R-M"].remote_id == next(p["id"] for p in shop.products.values() if p["handle"] == "tee")
    assert stored["T-R-M"].remote_ids["variant"] == shop.products[stored["T-R-M"].remote_id]["variants"][0]["id"]
    shop.operations.clear()
    again = push(client, state, "shop", DEST, RECORDS, "sku")
    assert again.sent == 0 and shop.operations == [] and sorted(again.unchanged) == ["polo", "tee"]
    changed = [dict(r, price=5) if r["sku"] == "P-1" else r for r in RECORDS]
    third = push(client, state, "shop", DEST, changed, "sku")
    assert third.update == ["polo"] and shop.operations == ["productSet"]
    polo = shop.products[state.get("shop")["P-1"].remote_id]
    assert polo["variants"][0]["price"] == "5.00" and len(shop.products) == 2


def test_archived_status_archives_the_product_and_dry_run_sends_nothing(shop, clock, state) -> None:
    from claro_dagster.resources.shopify import push

    client = client_for(shop, clock)
    push(client, state, "shop", DEST, RECORDS, "sku")
    archived = [dict(r, state="archived") if r["style"] == "POLO" else r for r in RECORDS]
    shop.operations.clear()
    dry = push(None, state, "shop", DEST, archived, "sku", dry_run=True)
    assert dry.archive == ["polo"] and dry.sent == 0 and shop.operations == []
    assert dry.changes == {"polo": ['status: "ACTIVE" -> "ARCHIVED"']}
    cheaper = [dict(r, price=9) if r["sku"] == "T-R-L" else r for r in RECORDS]
    assert push(None, state, "shop", DEST, cheaper, "sku", dry_run=True).changes == {
        "tee": ['variant T-R-L price: "19.50" -> "9.00"']}
    assert state.counts("shop") == {"pushed": 4}
    push(client, state, "shop", DEST, archived, "sku")
    assert shop.products[state.get("shop")["P-1"].remote_id]["status"] == "ARCHIVED"
    assert state.counts("shop") == {"pushed": 3, "archived": 1}


def test_user_errors_and_held_records_land_in_channel_state(shop, clock, state) -> None:
    from claro_dagster.resources.shopify import push

    records = [record("BAD", style="NEG", price=-1), record("A"), record("B")]
    plan = push(client_for(shop, clock), state, "shop", DEST, records, "sku")
    assert plan.failed == {"BAD": "input.variants.0.price: Price must be greater than or equal to 0",
                           "B": "claims the same variant (red, M) as record 'A' of product 'TEE'"}
    assert [(e.record, e.status) for e in state.failures("shop")] == [("B", "held"), ("BAD", "failed")]
    assert state.get("shop")["A"].status == "pushed"
    # the failed product is sent again next time (its hash was never stored), the good one is not
    shop.operations.clear()
    push(client_for(shop, clock), state, "shop", DEST, records, "sku")
    assert shop.operations == ["productByIdentifier", "productSet"]


def test_a_push_interrupted_before_ids_were_stored_resumes_without_duplicating(shop, clock, state) -> None:
    from claro_dagster.resources.http import HttpError
    from claro_dagster.resources.shopify import push

    shop.fail_after_create = True
    client = client_for(shop, clock, max_attempts=1)  # the lookup after the lost answer fails too: the run dies
    original = client.product_id_by_handle
    calls = []

    def flaky(handle):
        calls.append(handle)
        if len(calls) == 2:
            raise HttpError("POST", shop.url, None, reason="connection refused")
        return original(handle)

    client.product_id_by_handle = flaky
    with pytest.raises(HttpError):
        push(client, state, "shop", DEST, RECORDS[:1], "sku")
    assert len(shop.products) == 1 and state.get("shop") == {}
    push(client_for(shop, clock), state, "shop", DEST, RECORDS[:1], "sku")
    assert len(shop.products) == 1 and state.get("shop")["T-R-M"].status == "pushed"


def test_the_api_down_mid_push_the_next_run_resumes_without_duplicating(shop, clock, state, monkeypatch) -> None:
    from claro_dagster.resources import shopify
    from claro_dagster.resources.http import HttpError
    from claro_dagster.resources.shopify import push

    monkeypatch.setattr(shopify, "STATE_BATCH", 1)
    client = client_for(shop, clock, max_attempts=2)
    served = shop.server.handler

    # every request fails once the first product exists: the push dies after storing that product's state
    shop.server.handler = lambda request: (503, {}, {"errors": "Service Unavailable"}) if shop.products \
        else served(request)
    with pytest.raises(HttpError, match="503"):
        push(client, state, "shop", DEST, RECORDS, "sku")
    assert len(shop.products) == 1 and state.counts("shop") == {"pushed": 3}  # the first product was kept
    shop.server.handler = served
    shop.operations.clear()
    plan = push(client, state, "shop", DEST, RECORDS, "sku")
    assert plan.unchanged == ["tee"] and plan.create == ["polo"] and len(shop.products) == 2
    assert shop.operations == ["productByIdentifier", "productSet", "nodes"]  # then its new image is read again


def test_an_option_value_outside_the_products_options_is_refused_by_the_fake(shop, clock) -> None:
    """What Shopify answers when a variant names an option value the product does not have (the payload builder
    never sends one: it derives the options from the variants), and when a product has four options."""
    client = client_for(shop, clock)
    _, errors = client.product_set({"title": "x", "handle": "x", "productOptions": [
        {"name": "Colour", "values": [{"name": "red"}]}], "variants": [
        {"optionValues": [{"optionName": "Colour", "name": "green"}]}]})
    assert errors == [{"field": ["input", "variants", "0", "optionValues"], "message": "Option value 'green' does "
                       "not exist for option 'Colour'", "code": "INVALID_INPUT"}]
    _, errors = client.product_set({"title": "x", "handle": "x", "productOptions": [
        {"name": n, "values": [{"name": "a"}]} for n in "ABCD"], "variants": []})
    assert errors[0]["message"] == "Can only specify a maximum of 3 options" and shop.products == {}
