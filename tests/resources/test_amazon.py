"""The SP-API listings client against a fake Amazon that checks each request against the copied contracts."""

from __future__ import annotations

import zlib
from urllib.parse import unquote, urlsplit

import pytest
import sqlalchemy

from claro_dagster.catalogue.channels import ChannelError, ChannelState
from claro_dagster.resources.amazon import (
    AmazonError,
    AmazonListings,
    TokenBucket,
    build_listing,
    client_from_env,
    patch_replace,
    push,
    region_endpoint,
)
from claro_dagster.resources.http import HttpClient
from claro_dagster.resources.sales_channels import missing_env
from claro_dagster.spec.models import AmazonProductTypeFrom, DestinationSpec
from tests.amazon_fake import CLIENT_ID, CLIENT_SECRET, MARKETPLACE, REFRESH_TOKEN, SELLER, FakeAmazon


def luggage(sku: str, price: float = 89.0, **extra):
    attributes = {
        "item_name": [{"value": f"Cabin case {sku}", "language_tag": "en_US", "marketplace_id": MARKETPLACE}],
        "brand": [{"value": "Claro", "marketplace_id": MARKETPLACE}],
        "externally_assigned_product_identifier": [{"type": "ean", "value": ean(sku)}],
        "bullet_point": [{"value": "Fits overhead bins", "language_tag": "en_US"}],
        "purchasable_offer": [offer(price)],
    }
    attributes.update(extra)
    return attributes


def ean(sku: str) -> str:
    """A 13-digit identifier of its own per SKU (Amazon refuses one identifier listed under two SKUs)."""
    return f"{zlib.crc32(sku.encode()):013d}"


def offer(price: float):
    return {"currency": "USD", "marketplace_id": MARKETPLACE, "our_price": [{"schedule": [{"value_with_tax": price}]}]}


@pytest.fixture(autouse=True)
def fresh_schema_cache():
    """Product type schemas are cached per endpoint for the process: a fake on a reused port starts empty."""
    from claro_dagster.resources import amazon as amazon_module

    amazon_module._SCHEMAS.clear()


@pytest.fixture
def fake():
    with FakeAmazon() as server:
        yield server
    assert not server.violations, server.violations


@pytest.fixture
def waits():
    return []


@pytest.fixture
def client(fake, waits):
    return AmazonListings(endpoint_url=fake.url, token_url=fake.token_url, client_id=CLIENT_ID,
                          client_secret=CLIENT_SECRET, refresh_token=REFRESH_TOKEN, seller_id=SELLER,
                          marketplace_ids=[MARKETPLACE], sleep=waits.append)


def test_put_then_patch_of_the_price_reaches_amazon(fake, client):
    result = client.put_listing("CASE-1", "LUGGAGE", luggage("CASE-1"))
    assert result.ok and result.sent and result.submission_id
    assert fake.listings["CASE-1"]["attributes"] == luggage("CASE-1")

    result = client.patch_listing("CASE-1", [patch_replace("purchasable_offer", [offer(79.5)])],
                                  product_type="LUGGAGE")
    assert result.ok
    assert fake.listings["CASE-1"]["attributes"] == luggage("CASE-1", price=79.5)
    assert client.get_listing("CASE-1")["attributes"]["purchasable_offer"] == [offer(79.5)]
    assert fake.calls == ["getDefinitionsProductType", "putListingsItem", "patchListingsItem", "getListingsItem"]
    assert fake.tokens_issued == 1


def test_a_listing_missing_a_required_attribute_is_rejected_locally_and_never_sent(fake, client):
    attributes = luggage("CASE-2")
    del attributes["brand"]
    result = client.put_listing("CASE-2", "LUGGAGE", attributes)
    assert not result.sent and result.status == "INVALID_LOCALLY" and not result.ok
    assert [(i.attribute_names, i.pointer, i.severity) for i in result.issues] == [(("brand",), "/", "ERROR")]
    assert "'brand' is a required property" in result.issues[0].message
    assert "putListingsItem" not in fake.calls and "CASE-2" not in fake.listings


def test_an_invalid_value_comes_back_with_its_json_pointer(fake, client):
    attributes = luggage("CASE-3", price=-1)
    result = client.put_listing("CASE-3", "LUGGAGE", attributes)
    assert not result.sent
    assert [i.pointer for i in result.issues] == ["/purchasable_offer/0/our_price/0/schedule/0/value_with_tax"]

    result = client.patch_listing("CASE-3", [patch_replace("purchasable_offer", [offer(0)])], product_type="LUGGAGE")
    assert not result.sent and result.issues[0].attribute_names == ("purchasable_offer",)
    assert "patchListingsItem" not in fake.calls


def test_the_product_type_schema_is_fetched_once_per_type_and_version(fake, client):
    for n in range(3):
        client.put_listing(f"SKU-{n}", "LUGGAGE", luggage(f"SKU-{n}"))
    assert fake.calls.count("getDefinitionsProductType") == 1 and fake.schema_downloads == 1


def test_issues_from_amazon_come_back_per_sku(fake, client):
    attributes = luggage("CASE-4")
    del attributes["bullet_point"]
    result = client.put_listing("CASE-4", "LUGGAGE", attributes)
    assert result.ok and result.status == "ACCEPTED"
    [issue] = result.issues
    assert (issue.sku, issue.code, issue.severity, issue.attribute_names) == \
        ("CASE-4", "18027", "WARNING", ("bullet_point",))


def test_an_expired_token_is_refreshed_once(fake, client):
    client.put_listing("CASE-5", "LUGGAGE", luggage("CASE-5"))
    fake.expire_tokens()
    result = client.patch_listing("CASE-5", [patch_replace("purchasable_offer", [offer(60)])], product_type="LUGGAGE")
    assert result.ok and fake.tokens_issued == 2
    assert fake.listings["CASE-5"]["attributes"]["purchasable_offer"] == [offer(60)]


def test_a_token_refused_even_after_refreshing_is_a_clear_error(fake, client):
    client.product_type_schema("LUGGAGE")
    fake.refuse_all_tokens()
    with pytest.raises(AmazonError, match="even with a fresh access token.*authorised by seller"):
        client.put_listing("CASE-6", "LUGGAGE", luggage("CASE-6"))
    assert fake.tokens_issued == 2  # one refresh, not a loop


def test_a_wrong_refresh_token_says_what_to_check(fake):
    client = AmazonListings(endpoint_url=fake.url, token_url=fake.token_url, client_id=CLIENT_ID,
                            client_secret=CLIENT_SECRET, refresh_token="Atzr|wrong", seller_id=SELLER,
                            marketplace_ids=[MARKETPLACE], sleep=lambda s: None)
    with pytest.raises(AmazonError, match="refused the refresh token.*client id, client secret and refresh token"):
        client.put_listing("CASE-7", "LUGGAGE", luggage("CASE-7"))


def test_a_429_is_retried_after_its_hint(fake, client, waits):
    client.product_type_schema("LUGGAGE")
    fake.throttle_next(2)
    result = client.put_listing("CASE-8", "LUGGAGE", luggage("CASE-8"))
    assert result.ok and "CASE-8" in fake.listings
    assert waits == [0.0, 0.0]  # the fake's Retry-After: 0, twice; the bucket never had to wait


def test_the_token_bucket_allows_the_burst_then_the_rate():
    now = [0.0]
    waited = []

    def sleep(seconds):
        waited.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(5.0, 10, clock=lambda: now[0], sleep=sleep)
    for _ in range(20):
        bucket.take()
    assert len(waited) == 10
    assert now[0] == pytest.approx(2.0)  # 10 at once, then 10 more at 5 a second


def test_no_marketplace_is_a_clear_error(fake):
    with pytest.raises(AmazonError, match="marketplace id"):
        AmazonListings(endpoint_url=fake.url, token_url=fake.token_url, client_id=CLIENT_ID,
                       client_secret=CLIENT_SECRET, refresh_token=REFRESH_TOKEN, seller_id=SELLER, marketplace_ids=[])


def test_the_headroom_keeps_a_token_of_the_burst_back():
    now = [0.0]
    waited = []
    bucket = TokenBucket(5.0, 10, headroom=1, clock=lambda: now[0], sleep=waited.append)
    for _ in range(10):
        bucket.take()
    assert waited == [pytest.approx(0.2)]  # the tenth waits: nine at once


def test_a_json_listings_feed_goes_through_and_its_report_comes_back_per_sku(fake, client, waits):
    missing_brand = luggage("FEED-3")
    del missing_brand["brand"]
    no_bullets = luggage("FEED-2")
    del no_bullets["bullet_point"]
    results = client.push_feed([("FEED-1", "LUGGAGE", luggage("FEED-1")), ("FEED-2", "LUGGAGE", no_bullets),
                                ("FEED-3", "LUGGAGE", missing_brand)], poll_seconds=5)
    by_sku = {r.sku: r for r in results}
    assert [r.sku for r in results] == ["FEED-1", "FEED-2", "FEED-3"]
    assert by_sku["FEED-1"].ok and by_sku["FEED-1"].submission_id == "50001" and not by_sku["FEED-1"].issues
    assert by_sku["FEED-2"].ok and [(i.code, i.severity, i.attribute_names) for i in by_sku["FEED-2"].issues] == \
        [("18027", "WARNING", ("bullet_point",))]
    assert by_sku["FEED-3"].status == "INVALID_LOCALLY" and not by_sku["FEED-3"].sent
    assert fake.listings["FEED-1"]["attributes"] == luggage("FEED-1") and "FEED-3" not in fake.listings
    assert [m["sku"] for m in fake.feeds["50001"]["content"]["messages"]] == ["FEED-1", "FEED-2"]
    assert fake.calls[1:] == ["createFeedDocument", "createFeed", "getFeed", "getFeed", "getFeedDocument"]
    assert waits == [5]  # IN_QUEUE -> wait -> DONE at the second poll


def test_errors_in_the_processing_report_come_back_to_their_sku(fake, client):
    client.product_type_schema("LUGGAGE")
    client.validate = lambda *a, **k: []  # as if the local schema were out of date: Amazon's report has the say
    bad = luggage("FEED-9")
    del bad["brand"]
    [result] = client.push_feed([("FEED-9", "LUGGAGE", bad)], poll_seconds=0)
    assert result.status == "INVALID" and result.sent
    assert [(i.code, i.severity, i.attribute_names) for i in result.issues] == [("90220", "ERROR", ("brand",))]


def test_the_fake_refuses_a_request_outside_the_contract(fake, client):
    response = client.http.request("PUT", f"{fake.url}/listings/2021-08-01/items/{SELLER}/X-1", raise_for_status=False,
                                   headers={"x-amz-access-token": client.access_token()},
                                   json={"productType": "LUGGAGE", "requirements": "EVERYTHING"})
    assert response.status_code == 400
    assert any("missing query parameter marketplaceIds" in v for v in fake.violations)
    assert any("'EVERYTHING' is not one of" in v for v in fake.violations)
    fake.violations.clear()


def test_the_fake_answers_429_past_the_documented_burst():
    with FakeAmazon(clock=lambda: 0.0) as fake:  # time stands still: only the burst is available
        client = AmazonListings(endpoint_url=fake.url, token_url=fake.token_url, client_id=CLIENT_ID,
                                client_secret=CLIENT_SECRET, refresh_token=REFRESH_TOKEN, seller_id=SELLER,
                                marketplace_ids=[MARKETPLACE], rates={}, sleep=lambda s: None)
        client.http.max_attempts = 1
        for n in range(10):
            assert client.put_listing(f"B-{n}", "LUGGAGE", luggage(f"B-{n}")).ok
        with pytest.raises(AmazonError, match="HTTP 429"):
            client.put_listing("B-10", "LUGGAGE", luggage("B-10"))
        assert fake.throttled == 1 and len(fake.listings) == 10 and not fake.violations


def test_the_client_comes_from_the_environment_variables_a_spec_names(fake):
    names = {"client_id_env": "AMZ_ID", "client_secret_env": "AMZ_SECRET", "refresh_token_env": "AMZ_REFRESH",
             "endpoint_url_env": "AMZ_ENDPOINT", "token_url_env": "AMZ_TOKEN_URL"}
    with pytest.raises(AmazonError, match="Set AMZ_ID, AMZ_SECRET, AMZ_REFRESH to push listings"):
        AmazonListings.from_environment(seller_id=SELLER, marketplace_ids=[MARKETPLACE], environ={}, **names)
    environ = {"AMZ_ID": CLIENT_ID, "AMZ_SECRET": CLIENT_SECRET, "AMZ_REFRESH": REFRESH_TOKEN,
               "AMZ_ENDPOINT": fake.url, "AMZ_TOKEN_URL": fake.token_url}
    client = AmazonListings.from_environment(seller_id=SELLER, marketplace_ids=[MARKETPLACE], environ=environ,
                                             **names)
    assert client.put_listing("ENV-1", "LUGGAGE", luggage("ENV-1")).ok
    default = AmazonListings.from_environment(seller_id=SELLER, marketplace_ids=[MARKETPLACE],
                                              environ={**environ, "AMZ_ENDPOINT": "", "AMZ_TOKEN_URL": ""}, **names)
    assert (default.endpoint_url, default.token_url) == \
        ("https://sellingpartnerapi-na.amazon.com", "https://api.amazon.com/auth/o2/token")


def test_without_an_endpoint_the_marketplaces_region_is_used():
    assert region_endpoint(["A1F83G8C2ARO7P", "A1PA6795UKMFR9"]) == "https://sellingpartnerapi-eu.amazon.com"
    assert region_endpoint(["A1VC38T7YXB528"]) == "https://sellingpartnerapi-fe.amazon.com"
    with pytest.raises(AmazonError, match="different SP-API regions"):
        region_endpoint(["ATVPDKIKX0DER", "A1F83G8C2ARO7P"])
    with pytest.raises(AmazonError, match="set the destination's endpoint_url_env"):
        region_endpoint(["AXXXXXXXXXXXX"])


# ------------------------------------------------------------------------------ records -> listings -> push
DEST = DestinationSpec.model_validate({
    "kind": "amazon", "catalogue": "products", "seller_id": SELLER, "marketplace_ids": [MARKETPLACE],
    "client_id_env": "AMZ_ID", "client_secret_env": "AMZ_SECRET", "refresh_token_env": "AMZ_REFRESH",
    "product_type": "LUGGAGE", "language_tag": "en_US", "currency": "USD", "status": "state",
    "attributes": {"item_name": "title", "brand": "brand",
                   "externally_assigned_product_identifier": {"attribute": "gtin", "type": "ean"},
                   "purchasable_offer": "price", "list_price": "rrp", "fulfillment_availability": "stock",
                   "main_product_image_locator": "image",
                   "bullet_point": {"attributes": ["feature1", "feature2"]}}})


def record(sku: str, price: float = 89.0, **extra):
    return {"sku": sku, "title": f"Cabin case {sku}", "brand": "Claro", "gtin": ean(sku), "price": price,
            "rrp": 99.0, "stock": 7.0, "image": f"https://img.example/{sku}.jpg", "feature1": "Fits overhead bins",
            "feature2": None, "state": "active", **extra}


RECORDS = [record("C-1"), record("C-2", price=120), record("C-3"), record("C-4", price=45.5)]


@pytest.fixture
def state(tmp_path):
    class Store:  # ChannelState needs only the store's engine
        engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'c.db'}")

    return ChannelState(Store())


def puts(fake):
    """The SKUs of the listings requests the fake answered, in order, as (operation, SKU)."""
    methods = {"PUT": "put", "PATCH": "patch", "DELETE": "delete"}
    return [(methods[r.method], unquote(urlsplit(r.path).path).rsplit("/", 1)[1]) for r in fake.server.requests
            if r.path.startswith(LISTINGS_PATH) and r.method in methods]


LISTINGS_PATH = f"/listings/2021-08-01/items/{SELLER}/"


def test_a_record_becomes_a_listing_in_amazons_attribute_structure():
    listing = build_listing(record("C-1"), DEST, "sku")
    m = {"marketplace_id": MARKETPLACE}
    assert (listing.sku, listing.product_type, listing.archived, listing.error) == ("C-1", "LUGGAGE", False, None)
    assert listing.attributes == {
        "item_name": [{"value": "Cabin case C-1", "language_tag": "en_US", **m}],
        "brand": [{"value": "Claro", "language_tag": "en_US", **m}],
        "externally_assigned_product_identifier": [{"type": "ean", "value": ean("C-1"), **m}],
        "purchasable_offer": [{"currency": "USD", **m, "our_price": [{"schedule": [{"value_with_tax": 89}]}]}],
        "list_price": [{"currency": "USD", "value_with_tax": 99, **m}],
        "fulfillment_availability": [{"fulfillment_channel_code": "DEFAULT", "quantity": 7}],
        "main_product_image_locator": [{"media_location": "https://img.example/C-1.jpg", **m}],
        "bullet_point": [{"value": "Fits overhead bins", "language_tag": "en_US", **m}],
    }
    per_record = DEST.model_copy(update={"product_type": AmazonProductTypeFrom(attribute="kind"), "sku": "seller_sku"})
    listing = build_listing(record("C-1", kind="suitcase", seller_sku="AMZ-C-1", stock=2.5), per_record, "sku")
    assert (listing.record, listing.sku, listing.product_type) == ("C-1", "AMZ-C-1", "SUITCASE")
    assert listing.error == "BUILD: stock '2.5' is not a whole quantity (/fulfillment_availability)"
    assert build_listing(record("C-1", price="n/a"), DEST, "sku").error == \
        "BUILD: price 'n/a' is not a number (/purchasable_offer)"


def test_push_sends_each_listing_then_nothing_then_one_patch_for_a_price(fake, client, state):
    first = push(client, state, "amazon", DEST, RECORDS, "sku")
    assert sorted(first.create) == ["C-1", "C-2", "C-3", "C-4"] and first.failed == {} and first.sent == 4
    for row in RECORDS:
        assert fake.listings[row["sku"]]["attributes"] == build_listing(row, DEST, "sku").attributes
    assert state.counts("amazon") == {"pushed": 4} and state.get("amazon")["C-2"].remote_id == "C-2"
    fake.server.requests.clear()
    again = push(client, state, "amazon", DEST, RECORDS, "sku")
    assert again.sent == 0 and sorted(again.unchanged) == ["C-1", "C-2", "C-3", "C-4"] and puts(fake) == []
    cheaper = [dict(r, price=79.5, stock=3) if r["sku"] == "C-3" else r for r in RECORDS]
    third = push(client, state, "amazon", DEST, cheaper, "sku")
    assert third.update == ["C-3"] and third.sent == 1 and puts(fake) == [("patch", "C-3")]
    [patch] = [r.json() for r in fake.server.requests if r.method == "PATCH"]
    assert patch["patches"] == [
        {"op": "replace", "path": "/attributes/fulfillment_availability",
         "value": [{"fulfillment_channel_code": "DEFAULT", "quantity": 3}]},
        {"op": "replace", "path": "/attributes/purchasable_offer", "value": [
            {"currency": "USD", "marketplace_id": MARKETPLACE,
             "our_price": [{"schedule": [{"value_with_tax": 79.5}]}]}]}]
    assert fake.listings["C-3"]["attributes"] == build_listing(cheaper[2], DEST, "sku").attributes
    renamed = [dict(r, title="Hard case") if r["sku"] == "C-1" else r for r in cheaper]
    fake.server.requests.clear()
    assert push(client, state, "amazon", DEST, renamed, "sku").update == ["C-1"] and puts(fake) == [("put", "C-1")]


def test_dry_run_shows_creates_updates_field_by_field_and_archives_without_sending(fake, client, state):
    push(client, state, "amazon", DEST, RECORDS, "sku")
    changed = [dict(r, price=80) if r["sku"] == "C-1" else dict(r, state="archived") if r["sku"] == "C-2" else r
               for r in RECORDS] + [record("C-5")]
    fake.server.requests.clear()
    dry = push(None, state, "amazon", DEST, changed, "sku", dry_run=True)
    assert (dry.create, dry.update, dry.archive, dry.sent) == (["C-5"], ["C-1"], ["C-2"], 0)
    assert dry.changes == {"C-1": [
        'purchasable_offer: [{"currency": "USD", "marketplace_id": "ATVPDKIKX0DER", "our_price": [{"schedule": '
        '[{"value_with_tax": 89}]}]}] -> [{"currency": "USD", "marketplace_id": "ATVPDKIKX0DER", "our_price": '
        '[{"schedule": [{"value_with_tax": 80}]}]}]']}
    assert fake.server.requests == [] and state.counts("amazon") == {"pushed": 4}


def test_an_archived_record_deletes_its_listing(fake, client, state):
    push(client, state, "amazon", DEST, RECORDS, "sku")
    archived = [dict(r, state="archived") if r["sku"] in ("C-2",) else r for r in RECORDS]
    archived.append(record("C-9", state="archived"))  # never listed: nothing to delete
    fake.server.requests.clear()
    plan = push(client, state, "amazon", DEST, archived, "sku")
    assert plan.archive == ["C-2"] and plan.sent == 1 and puts(fake) == [("delete", "C-2")]
    assert "C-2" not in fake.listings and fake.deleted == ["C-2"]
    assert state.counts("amazon") == {"pushed": 3, "archived": 2}
    fake.server.requests.clear()
    assert push(client, state, "amazon", DEST, archived, "sku").sent == 0 and puts(fake) == []
    # listed again: a whole new listing (a put), not a patch of the deleted one
    back = [dict(r, state="active") if r["sku"] == "C-2" else r for r in archived]
    assert push(client, state, "amazon", DEST, back, "sku").create == ["C-2"] and puts(fake) == [("put", "C-2")]


def test_a_listing_missing_a_required_attribute_fails_in_channel_state_and_is_never_sent(fake, client, state):
    records = [record("C-1"), record("C-2", brand=None)]
    plan = push(client, state, "amazon", DEST, records, "sku")
    assert plan.failed == {"C-2": "SCHEMA_REQUIRED: 'brand' is a required property (/)"}
    assert puts(fake) == [("put", "C-1")] and "C-2" not in fake.listings
    [failure] = state.failures("amazon")
    assert (failure.record, failure.status, failure.error) == ("C-2", "failed", plan.failed["C-2"])
    negative = push(client, state, "amazon", DEST, [record("C-1", price=-3)], "sku")
    assert negative.failed["C-1"].startswith("SCHEMA_EXCLUSIVEMINIMUM: -3 is less than or equal to the minimum of 0 "
                                              "(/purchasable_offer/0/our_price/0/schedule/0/value_with_tax)")
    assert puts(fake) == [("put", "C-1")]  # the negative price was never sent either
    fixed = push(client, state, "amazon", DEST, [record("C-1"), record("C-2")], "sku")
    assert fixed.create == ["C-2"] and fixed.unchanged == ["C-1"] and state.failures("amazon") == []


def test_an_unknown_product_type_fails_its_records_only(fake, client, state):
    per_record = DEST.model_copy(update={"product_type": AmazonProductTypeFrom(attribute="kind")})
    plan = push(client, state, "amazon", per_record, [record("C-1", kind="luggage"), record("C-2", kind="rocket")],
                "sku")
    assert list(plan.failed) == ["C-2"] and plan.failed["C-2"].startswith("PRODUCT_TYPE: Amazon has no product type "
                                                                         "'ROCKET'")
    assert puts(fake) == [("put", "C-1")]


def test_the_api_down_mid_push_the_next_push_sends_only_the_rest(fake, waits, state):
    client = AmazonListings(endpoint_url=fake.url, token_url=fake.token_url, client_id=CLIENT_ID,
                            client_secret=CLIENT_SECRET, refresh_token=REFRESH_TOKEN, seller_id=SELLER,
                            marketplace_ids=[MARKETPLACE], http=HttpClient(sleep=waits.append, max_attempts=3),
                            sleep=waits.append)
    fake.go_down_after(3)  # the product type, then two listings
    with pytest.raises(ChannelError, match="putListingsItem failed with HTTP 503.*try again later"):
        push(client, state, "amazon", DEST, RECORDS, "sku")
    assert sorted(fake.listings) == ["C-1", "C-2"] and state.counts("amazon") == {"pushed": 2}
    fake.come_back()
    plan = push(client, state, "amazon", DEST, RECORDS, "sku")
    assert plan.create == ["C-3", "C-4"] and plan.unchanged == ["C-1", "C-2"]
    sent = [p for p in puts(fake) if p[0] == "put"]
    assert sorted({p[1] for p in sent}) == ["C-1", "C-2", "C-3", "C-4"]
    assert [p for p in sent if p[1] in ("C-1", "C-2")] == [("put", "C-1"), ("put", "C-2")]  # never twice
    assert sorted(fake.listings) == ["C-1", "C-2", "C-3", "C-4"]


def test_a_token_that_expires_mid_push_is_refreshed_once_then_a_clear_error(fake, client, state):
    fake.expire_tokens_after(2)
    plan = push(client, state, "amazon", DEST, RECORDS, "sku")
    assert plan.failed == {} and fake.tokens_issued == 2 and len(fake.listings) == 4
    changed = [dict(r, title=f"New {r['sku']}") for r in RECORDS]
    fake.expire_tokens_after(1, revoke=True)  # the refreshed token is refused too
    with pytest.raises(ChannelError, match="even with a fresh access token.*authorised by seller"):
        push(client, state, "amazon", DEST, changed, "sku")
    assert fake.tokens_issued == 3  # refreshed once, not in a loop
    assert fake.listings["C-1"]["attributes"]["item_name"][0]["value"] == "New C-1"  # sent before it expired
    stored = state.get("amazon")
    assert stored["C-1"].payload["attributes"]["item_name"][0]["value"] == "New C-1"
    assert stored["C-2"].payload["attributes"]["item_name"][0]["value"] == "Cabin case C-2"


def test_past_the_bulk_threshold_listings_go_as_one_feed_and_its_issues_land_per_sku(fake, client, state):
    bulk = DEST.model_copy(update={"bulk_threshold": 2})
    fake.listings["OTHER"] = {"productType": "LUGGAGE", "attributes": {
        "externally_assigned_product_identifier": [{"type": "ean", "value": ean("C-3")}]}}
    plan = push(client, state, "amazon", bulk, RECORDS, "sku")
    assert plan.sent == 1 and puts(fake) == [] and fake.calls.count("createFeed") == 1
    assert plan.failed == {"C-3": f"8572: The product identifier {ean('C-3')} is already used by SKU OTHER "
                                  "(externally_assigned_product_identifier)"}
    assert state.get("amazon")["C-3"].status == "failed" and state.counts("amazon") == {"pushed": 3, "failed": 1}
    assert sorted(fake.listings) == ["C-1", "C-2", "C-4", "OTHER"]
    del fake.listings["OTHER"]
    again = push(client, state, "amazon", bulk, RECORDS, "sku")  # only the refused one, below the threshold
    assert again.create == ["C-3"] and again.failed == {} and puts(fake) == [("put", "C-3")]


def test_push_from_store_and_client_from_env(monkeypatch, fake):
    monkeypatch.setenv("AMZ_ID", CLIENT_ID)
    monkeypatch.setenv("AMZ_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("AMZ_REFRESH", REFRESH_TOKEN)
    monkeypatch.setenv("AMZ_ENDPOINT", fake.url)
    client = client_from_env(DEST.model_copy(update={"endpoint_url_env": "AMZ_ENDPOINT"}))
    assert (client.endpoint_url, client.seller_id, client.issue_locale) == (fake.url, SELLER, "en_US")
    assert missing_env(DEST) is None
    monkeypatch.delenv("AMZ_SECRET")
    assert missing_env(DEST) == "AMZ_SECRET"
    with pytest.raises(ChannelError, match="Set AMZ_SECRET to push listings to Amazon"):
        client_from_env(DEST)


def test_a_record_whose_listing_cannot_be_built_is_held_with_why(fake, client, state):
    plan = push(client, state, "amazon", DEST, [record("C-1", price="n/a"), record("C-2")], "sku")
    assert plan.failed == {"C-1": "BUILD: price 'n/a' is not a number (/purchasable_offer)"}
    assert [(e.record, e.status) for e in state.failures("amazon")] == [("C-1", "held")]
    assert puts(fake) == [("put", "C-2")]
