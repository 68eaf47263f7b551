"""The SP-API listings client against a fake Amazon that checks each request against the copied contracts."""

from __future__ import annotations

import pytest

from claro_dagster.resources.amazon import AmazonError, AmazonListings, TokenBucket, patch_replace
from tests.amazon_fake import CLIENT_ID, CLIENT_SECRET, MARKETPLACE, REFRESH_TOKEN, SELLER, FakeAmazon


def luggage(sku: str, price: float = 89.0, **extra):
    attributes = {
        "item_name": [{"value": f"Cabin case {sku}", "language_tag": "en_US", "marketplace_id": MARKETPLACE}],
        "brand": [{"value": "Claro", "marketplace_id": MARKETPLACE}],
        "externally_assigned_product_identifier": [{"type": "ean", "value": "4006381333931"}],
        "bullet_point": [{"value": "Fits overhead bins", "language_tag": "en_US"}],
        "purchasable_offer": [offer(price)],
    }
    attributes.update(extra)
    return attributes


def offer(price: float):
    return {"currency": "USD", "marketplace_id": MARKETPLACE, "our_price": [{"schedule": [{"value_with_tax": price}]}]}


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
