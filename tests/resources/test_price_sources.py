"""Observed prices from an HTTP pull and from a scrape of URL templates, against local servers (tests/http_fakes):
the pull goes through the project's HTTP layer (pagination, retries), the scrape through the SSRF-guarded scraper
(robots.txt read, allow_hosts naming 127.0.0.1); and prices as suppliers and sites write them."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest
from http_fakes import RecordingServer

from claro_dagster.catalogue.changes import Change, ChangeSet
from claro_dagster.catalogue.monitoring import MonitorStore
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.monitors import run_monitor
from claro_dagster.resources.price_sources import number
from claro_dagster.resources.scrape import Scraper
from claro_dagster.spec import load_spec

SPEC = """\
catalogues:
  products:
    key: sku
    attributes:
      sku: {type: text}
      title: {type: text}
      brand: {type: text}
      gtin: {type: text}
      price: {type: number}
sources:
  rival_api:
    catalogue: products
    kind: http
    http:
      url: "%(api)s/offers"
      records: items
      paginate: {style: page, page_size: 2}
  rival_pages:
    catalogue: products
    kind: scrape
    url_template: "%(site)s/p/{sku}"
    extract: {price: price}
    allow_hosts: [127.0.0.1]
    delay_seconds: 0
monitors:
  api_prices:
    kind: price
    catalogue: products
    price: price
    observe:
      - source: rival_api
        columns: {price: amount, gtin: ean, competitor: seller}
    rules: [{kind: competitor_gap, percent: 10}]
  page_prices:
    kind: price
    catalogue: products
    price: price
    observe: [{source: rival_pages, competitor: RivalShop}]
    rules: [{kind: competitor_gap, percent: 10}, {kind: threshold, percent: 10}]
"""

PAGES = {1: [{"seller": "Rival A", "ean": "0001234567895", "amount": "£8.00"},
             {"seller": "Rival B", "ean": "1234567895", "amount": "9.90"}],
         2: [{"seller": "Rival A", "ean": "999", "amount": 1.0}], 3: []}


def page(sku: str, price: str) -> str:
    product = {"@context": "https://schema.org", "@type": "Product", "name": sku, "sku": sku,
               "offers": {"@type": "Offer", "price": price, "priceCurrency": "GBP"}}
    return (f'<html><head><script type="application/ld+json">{json.dumps(product)}</script></head>'
            f"<body>{sku}</body></html>")


@pytest.fixture
def world(tmp_path):
    prices = {"S1": "11.00", "S2": "20.00"}

    def api(request):
        query = parse_qs(urlsplit(request.path).query)
        return 200, {}, {"items": PAGES[int(query["page"][0])]}

    def site(request):
        if request.path == "/robots.txt":
            return 404, {}, b"no robots here"
        sku = request.path.rsplit("/", 1)[-1]
        if sku not in prices:
            return 404, {}, b"not found"
        return 200, {"Content-Type": "text/html; charset=utf-8"}, page(sku, prices[sku])

    with RecordingServer(api) as api_server, RecordingServer(site) as site_server:
        (tmp_path / "claro.yaml").write_text(SPEC % {"api": api_server.url, "site": site_server.url}, encoding="utf-8")
        spec = load_spec(tmp_path / "claro.yaml")
        store = CatalogueStore(spec, f"sqlite:///{tmp_path / 'catalogue.db'}")
        store.apply(ChangeSet("load", "products", "import", [
            Change(sku, f, v, 100) for sku, gtin in (("S1", "1234567895"), ("S2", None), ("S3", None))
            for f, v in (("title", f"Item {sku}"), ("gtin", gtin), ("price", 10.0)) if v is not None]))
        yield store, api_server, site_server, prices
        store.dispose()


def test_an_http_pull_gives_competitor_listings_matched_by_gtin(world):
    store, api_server, _, _ = world
    result = run_monitor(store, "api_prices", run_key="r1")
    assert [r.path for r in api_server.requests] == ["/offers?page=1&limit=2", "/offers?page=2&limit=2"]
    rows = [r for r in MonitorStore(store).history_rows("products", "S1") if r["source"] == "rival_api"]
    assert sorted((r["competitor"], r["price"], r["matched_by"]) for r in rows) == [("Rival A", 8.0, "gtin"),
                                                                                      ("Rival B", 9.9, "gtin")]
    assert [(d.record, d.detail["competitor"]) for d in result.new] == [("S1", "Rival A")]


def test_a_scrape_of_url_templates_gives_each_records_price_at_the_site(world):
    store, _, site_server, prices = world
    scraper = Scraper(delay_seconds=0, allow_hosts=["127.0.0.1"], sleep=lambda s: None)
    first = run_monitor(store, "page_prices", run_key="r1", scraper=scraper)
    assert sorted(r.path for r in site_server.requests) == ["/p/S1", "/p/S2", "/p/S3", "/robots.txt"]
    assert first.problems == [f"S3: {site_server.url}/p/S3: HTTP 404"]
    assert first.new == []  # 11 and 20 are dearer than our 10
    prices["S2"] = "8.50"  # RivalShop cuts S2's price: 15% under ours, and 57.5% below what it was
    second = run_monitor(store, "page_prices", run_key="r2", scraper=scraper)
    assert sorted((d.rule, d.record) for d in second.new) == [("competitor_gap", "S2"), ("threshold", "S2")]
    [row] = [r for r in MonitorStore(store).history_rows("products", "S2") if r["price"] == 8.5]
    assert (row["competitor"], row["matched_by"], row["url"]) == ("RivalShop", "url", f"{site_server.url}/p/S2")


@pytest.mark.parametrize("text, value", [("12.50", 12.5), ("£12.50", 12.5), ("1,299.00", 1299.0), ("12,50 €", 12.5),
                                         ("EUR 3", 3.0), ("1.299,95", 1299.95), ("", None), ("call us", None)])
def test_prices_as_sources_write_them(text, value):
    assert number(text) == value
