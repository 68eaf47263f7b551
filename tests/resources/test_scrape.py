"""Scraping against a local web shop (tests/web_shop.py): extraction from JSON-LD, microdata, OpenGraph and CSS
selectors; robots.txt, crawl delay, ETag caching; the SSRF guard on every redirect."""

from __future__ import annotations

import logging
import socket

import pytest

from claro_dagster.resources.http import AddressGuard, AddressRefused, GuardedHttpClient
from claro_dagster.resources.scrape import PageCache, Scraper, fill_template, sitemap_urls
from tests.web_shop import WebShop

EXTRACT = {"sku": "sku", "title": "name", "price": "price", "gtin": "gtin", "brand": "brand"}
SELECTORS = {"sku": ".code", "title": "h1.title", "price": ".price"}


class Clock:
    """A clock that the injected sleep moves forward: delays are measured, never waited."""

    def __init__(self):
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 3))
        self.now += seconds


@pytest.fixture
def shop():
    with WebShop() as server:
        yield server


def scraper(clock: Clock | None = None, allow=("127.0.0.1",), delay=0.0, **kwargs) -> Scraper:
    clock = clock or Clock()
    return Scraper(allow_hosts=allow, delay_seconds=delay, sleep=clock.sleep, clock=clock, max_attempts=1, **kwargs)


def test_each_kind_of_product_page_gives_its_values(shop) -> None:
    s = scraper()
    pages = s.pages([f"{shop.url}/p/ACM-3000{i}" for i in (1, 2, 3, 4)], EXTRACT, SELECTORS)
    rows = {p.values["sku"]: p.values for p in pages}
    assert rows["ACM-30001"] == {"sku": "ACM-30001", "title": "Enamel kettle", "price": "24.50",
                                 "gtin": "4006381333931", "brand": "Acme"}  # JSON-LD
    assert rows["ACM-30002"] == {"sku": "ACM-30002", "title": "Steel toaster", "price": "39.00", "brand": "Acme"}
    assert rows["ACM-30003"] == {"sku": "ACM-30003", "title": "Camping mug", "price": "7.90"}  # OpenGraph only
    assert rows["ACM-30004"] == {"sku": "ACM-30004", "title": "Folding chair", "price": "19.95"}  # selectors
    assert all(r.user_agent == s.user_agent and "claro" in s.user_agent for r in shop.received)


def test_pages_that_fail_are_listed_with_their_reason(shop) -> None:
    pages = scraper().pages([f"{shop.url}{p}" for p in ("/about", "/gone", "/broken", "/private/secret")],
                            EXTRACT, SELECTORS)
    reasons = {p.url.removeprefix(shop.url): (p.status, p.reason) for p in pages}
    assert reasons["/about"][1].startswith("nothing extracted")
    assert reasons["/gone"] == (404, "HTTP 404")
    assert reasons["/broken"] == (500, "HTTP 500")
    assert reasons["/private/secret"][1].startswith("refused by robots.txt")
    assert "/private/secret" not in shop.paths()  # robots.txt said no: never requested


def test_a_page_larger_than_the_limit_is_not_read(shop) -> None:
    shop.pages["/p/huge"] = "<html>" + "x" * 50_000 + "</html>"
    [huge, small] = scraper(max_bytes=20_000).pages([f"{shop.url}/p/huge", f"{shop.url}/p/ACM-30001"], EXTRACT, {})
    assert huge.reason == "page larger than 20,000 bytes: not read" and small.values


def test_a_target_disallowing_everything_is_never_fetched() -> None:
    with WebShop(robots="User-agent: *\nDisallow: /\n") as shop:
        pages = scraper().pages([f"{shop.url}/p/ACM-30001", f"{shop.url}/p/ACM-30002"], EXTRACT, SELECTORS)
        assert [p.reason.startswith("refused by robots.txt") for p in pages] == [True, True]
        assert shop.paths() == ["/robots.txt"]


def test_robots_rules_for_our_user_agent_and_its_crawl_delay_are_obeyed() -> None:
    robots = "User-agent: claro-dagster-scraper\nDisallow: /p/ACM-30002\nCrawl-delay: 5\n\nUser-agent: *\nAllow: /\n"
    with WebShop(robots=robots) as shop:
        clock = Clock()
        pages = scraper(clock, delay=1.0).pages([f"{shop.url}/p/ACM-3000{i}" for i in (1, 2, 3)], EXTRACT, {})
        assert [p.failed for p in pages] == [False, True, False]
        # robots.txt, then two pages: each request to the host at least the crawl delay after the one before
        assert clock.slept == [5.0, 5.0]
        assert shop.paths() == ["/robots.txt", "/p/ACM-30001", "/p/ACM-30003"]


def test_the_configured_delay_spaces_requests_to_one_host(shop) -> None:
    clock = Clock()
    scraper(clock, delay=2.5).pages([f"{shop.url}/p/ACM-30001", f"{shop.url}/p/ACM-30003"], EXTRACT, {})
    assert clock.slept == [2.5, 2.5]


def test_an_unchanged_page_answers_304_and_is_not_extracted_again(shop) -> None:
    cache = PageCache()
    url = f"{shop.url}/p/ACM-30001"
    [first] = scraper().pages([url], EXTRACT, {}, cache)
    assert first.values and cache.entries[url]["etag"]
    [again] = scraper().pages([url], EXTRACT, {}, PageCache.from_json(cache.to_json()))
    assert again.not_modified and again.values is None and not again.failed
    assert shop.received[-1].if_none_match == cache.entries[url]["etag"]
    shop.pages["/p/ACM-30001"] = shop.pages["/p/ACM-30001"].replace("24.50", "22.00")
    [changed] = scraper().pages([url], EXTRACT, {}, cache)
    assert changed.values["price"] == "22.00"


@pytest.mark.parametrize("target", ["http://169.254.169.254/latest/meta-data/", "http://localhost:{port}/p/x"])
def test_a_redirect_to_a_private_address_is_refused_and_logged(shop, caplog, target) -> None:
    port = shop.url.rsplit(":", 1)[1]
    shop.redirects["/moved"] = target.format(port=port)
    caplog.set_level(logging.WARNING)
    [page] = scraper(allow=("127.0.0.1",)).pages([f"{shop.url}/moved"], EXTRACT, SELECTORS)
    assert page.failed and "refused" in page.reason
    assert ("link-local" if "169.254" in target else "loopback") in page.reason
    assert any("refused GET" in r.message and target.split("/")[2].split(":")[0] in r.message
               for r in caplog.records)
    assert "/p/x" not in shop.paths()


def test_a_redirect_to_127_0_0_1_is_refused_when_only_another_name_is_allowed(shop) -> None:
    port = shop.url.rsplit(":", 1)[1]
    shop.redirects["/moved"] = f"{shop.url}/p/ACM-30001"
    s = scraper(allow=("localhost",), resolve=lambda host, port, **kw: socket.getaddrinfo("127.0.0.1", port))
    [page] = s.pages([f"http://localhost:{port}/moved"], EXTRACT, SELECTORS)
    assert page.failed and "127.0.0.1 is a loopback address" in page.reason
    assert "/p/ACM-30001" not in shop.paths() and "/moved" in shop.paths()


def test_a_name_that_resolves_elsewhere_when_connecting_is_refused(shop) -> None:
    """DNS rebinding: the check sees a public address, the connection reaches loopback; nothing is requested."""
    port = shop.url.rsplit(":", 1)[1]
    client = GuardedHttpClient(guard=AddressGuard(resolve=fake_resolve("93.184.216.34")), max_attempts=1)
    with pytest.raises(AddressRefused, match="localhost connected to 127.0.0.1 is a loopback address"):
        client.get(f"http://localhost:{port}/p/ACM-30001")
    assert shop.paths() == []
    allowed = GuardedHttpClient(guard=AddressGuard(["localhost"]), max_attempts=1)
    assert allowed.get(f"http://localhost:{port}/p/ACM-30001").status_code == 200


def fake_resolve(address: str):
    return lambda host, port, **kw: [(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM, 6,
                                      "", (address, port))]


@pytest.mark.parametrize("address, kind", [("10.1.2.3", "private"), ("192.168.0.1", "private"),
                                           ("127.0.0.1", "loopback"), ("169.254.169.254", "link-local"),
                                           ("fd00::1", "private"), ("::1", "loopback"), ("224.0.0.1", "multicast"),
                                           ("240.0.0.1", "reserved"), ("::ffff:10.0.0.1", "private"),
                                           ("0.0.0.0", "unspecified")])
def test_the_guard_refuses_addresses_outside_the_public_internet(address, kind) -> None:
    guard = AddressGuard(resolve=fake_resolve(address))
    with pytest.raises(AddressRefused) as refused:
        guard.check("GET", "http://shop.example/p/1")
    assert kind in str(refused.value)
    AddressGuard(["shop.example"], resolve=fake_resolve(address)).check("GET", "http://shop.example/p/1")
    AddressGuard(resolve=fake_resolve("93.184.216.34")).check("GET", "https://shop.example/p/1")


def test_the_guard_refuses_other_schemes() -> None:
    with pytest.raises(AddressRefused, match="only http and https"):
        AddressGuard(["shop.example"]).check("GET", "file:///etc/passwd")


def test_sitemap_and_url_templates(shop) -> None:
    urls = scraper().urls_from_sitemap(f"{shop.url}/sitemap.xml")
    assert urls == [f"{shop.url}/p/ACM-3000{i}" for i in (1, 2, 3, 4)]
    assert scraper().urls_from_sitemap(f"{shop.url}/sitemap_index.xml") == urls  # an index: its sitemaps read
    with pytest.raises(Exception):  # noqa: B017 - defusedxml refuses entity declarations, whichever error
        sitemap_urls(b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><urlset><url><loc>&a;</loc></url>'
                     b"</urlset>")
    assert fill_template("https://shop.example/p/{mpn}", {"mpn": "KT 1/2"}) == "https://shop.example/p/KT%201%2F2"
    assert fill_template("https://shop.example/p/{mpn}", {"mpn": None}) is None
