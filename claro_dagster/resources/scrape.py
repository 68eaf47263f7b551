"""HTTPS scraping of product pages: fetching (politely), robots.txt, and extraction. No Dagster here.

* Every request goes through the project's HTTP layer, as a `GuardedHttpClient`: only http(s), and no private,
  loopback, link-local, multicast or reserved address (after DNS resolution, on every redirect) unless the host
  is in `allow_hosts`.
* robots.txt (protego) is read once per host for the scraper's user agent; a page it disallows is never fetched.
  A robots.txt that answers 4xx allows everything (RFC 9309 2.3.1.3); one that cannot be reached or answers 5xx
  disallows everything for this pull (RFC 9309 2.3.1.4).
* Pages of one host are fetched one at a time (the scraper is sequential), at least `delay_seconds` apart, or the
  robots.txt crawl delay when it is longer.
* Conditional requests: a page's ETag and Last-Modified are kept (`PageCache`); a 304 answer is not extracted
  again, and the page yields no row (its values are in the catalogue already).
* Extraction: schema.org Product data from JSON-LD, microdata and OpenGraph (extruct), then CSS selectors
  (selectolax) for the columns structured data did not give.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import defusedxml.ElementTree as SafeET
from protego import Protego

from claro_dagster.resources.http import AddressGuard, AddressRefused, GuardedHttpClient, HttpError, safe_url

log = logging.getLogger(__name__)

DEFAULT_USER_AGENT = "claro-dagster-scraper/0.1 (+https://github.com/claro-dagster/claro_dagster)"
#: Product fields the structured data gives, the names `extract:` maps columns to.
PRODUCT_FIELDS = ("name", "sku", "gtin", "mpn", "brand", "price", "currency", "image", "description")
_GTIN_KEYS = ("gtin13", "gtin", "gtin12", "gtin14", "gtin8")
_OG = {"name": ("og:title",), "description": ("og:description",), "image": ("og:image",),
       "price": ("product:price:amount", "og:price:amount"),
       "currency": ("product:price:currency", "og:price:currency"),
       "brand": ("product:brand", "og:brand"), "sku": ("product:retailer_item_id",),
       "gtin": ("product:gtin13", "product:ean", "product:upc")}


@dataclass
class Page:
    """What one URL gave: extracted values (a row), or the reason it gave none."""

    url: str
    status: int | None = None
    values: dict[str, Any] | None = None
    reason: str | None = None
    not_modified: bool = False
    etag: str | None = None
    last_modified: str | None = None

    @property
    def failed(self) -> bool:
        return self.reason is not None


@dataclass
class PageCache:
    """ETag / Last-Modified per URL, kept between pulls (as JSON in the source's cursor)."""

    entries: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str | None) -> PageCache:
        return cls(json.loads(text)) if text else cls()

    def to_json(self) -> str:
        return json.dumps(self.entries, sort_keys=True, separators=(",", ":"))

    def headers(self, url: str) -> dict[str, str]:
        entry = self.entries.get(url, {})
        out = {}
        if entry.get("etag"):
            out["If-None-Match"] = entry["etag"]
        if entry.get("last_modified"):
            out["If-Modified-Since"] = entry["last_modified"]
        return out

    def remember(self, page: Page) -> None:
        if page.etag or page.last_modified:
            self.entries[page.url] = {k: v for k, v in (("etag", page.etag), ("last_modified", page.last_modified))
                                      if v}


def product_values(html: str, url: str) -> dict[str, Any]:
    """schema.org Product fields found in the page's JSON-LD, then microdata, then OpenGraph (first wins)."""
    import extruct

    try:
        data = extruct.extract(html, base_url=url, syntaxes=["json-ld", "microdata", "opengraph"], uniform=True,
                               errors="ignore")
    except Exception as exc:  # extruct raises whatever its parsers raise on broken markup
        log.warning("%s: structured data unreadable (%s)", safe_url(url), exc)
        return {}
    values: dict[str, Any] = {}
    for item in [*_products(data.get("json-ld", [])), *_products(data.get("microdata", []))]:
        for name, value in _product_fields(item).items():
            values.setdefault(name, value)
    for og in data.get("opengraph", []):
        for name, keys in _OG.items():
            for key in keys:
                if og.get(key) not in (None, ""):
                    values.setdefault(name, _text(og[key]))
                    break
    return values


def _products(items: Iterable[Any]) -> Iterable[dict]:
    for item in items:
        if not isinstance(item, dict):
            continue
        if "@graph" in item:
            yield from _products(item["@graph"])
        kind = item.get("@type")
        kinds = kind if isinstance(kind, list) else [kind]
        if any(str(k).rsplit("/", 1)[-1] in ("Product", "ProductModel") for k in kinds if k):
            yield item


def _product_fields(item: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("name", "sku", "mpn", "description"):
        if item.get(name) not in (None, ""):
            out[name] = _text(item[name])
    for key in _GTIN_KEYS:
        if item.get(key):
            out["gtin"] = _text(item[key])
            break
    brand = item.get("brand")
    if isinstance(brand, list):
        brand = brand[0] if brand else None
    if isinstance(brand, dict):
        brand = brand.get("name")
    if brand:
        out["brand"] = _text(brand)
    image = item.get("image")
    if isinstance(image, list):
        image = image[0] if image else None
    if isinstance(image, dict):
        image = image.get("url") or image.get("contentUrl")
    if image:
        out["image"] = _text(image)
    offers = item.get("offers")
    if isinstance(offers, list):
        offers = offers[0] if offers else None
    if isinstance(offers, dict):
        price = offers.get("price", offers.get("lowPrice"))
        if price is None and isinstance(offers.get("priceSpecification"), dict):
            price = offers["priceSpecification"].get("price")
        if price not in (None, ""):
            out["price"] = _text(price)
        if offers.get("priceCurrency"):
            out["currency"] = _text(offers["priceCurrency"])
    return out


def _text(value: Any) -> str:
    if isinstance(value, list):
        value = value[0] if value else ""
    if isinstance(value, dict):
        value = value.get("@value", value.get("name", ""))
    return " ".join(str(value).split())


def selected_values(html: str, selectors: Mapping[str, str]) -> dict[str, str]:
    """The text of each selector's first match (the `content` attribute of a meta tag), per column."""
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(html)
    out: dict[str, str] = {}
    for column, selector in selectors.items():
        node = tree.css_first(selector)
        if node is None:
            continue
        text = node.attributes.get("content") if node.tag == "meta" else node.text(separator=" ")
        text = " ".join((text or "").split())
        if text:
            out[column] = text
    return out


def extract_row(html: str, url: str, extract: Mapping[str, str], selectors: Mapping[str, str]) -> dict[str, Any]:
    """One row of columns: `extract` maps column -> product field (structured data), `selectors` column -> CSS
    selector, used for the columns structured data left empty."""
    product = product_values(html, url)
    row = {column: product[name] for column, name in extract.items() if product.get(name) not in (None, "")}
    missing = {c: s for c, s in selectors.items() if c not in row}
    if missing:
        row.update(selected_values(html, missing))
    return row


def sitemap_urls(xml: bytes) -> tuple[list[str], bool]:
    """(The `<loc>` URLs of a sitemap, True when it is a sitemap index listing other sitemaps), parsed with
    defusedxml (no entity expansion, no DTD tricks)."""
    root = SafeET.fromstring(xml)
    locs = [el.text.strip() for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "loc" and el.text]
    return locs, root.tag.rsplit("}", 1)[-1] == "sitemapindex"


class PageTooLarge(Exception):
    """A page (or robots.txt, or sitemap) whose body is larger than the scraper reads."""


#: One request at a time per host in this process, whichever scraper (source) asks.
_HOSTS = threading.Lock()
_HOST_LOCKS: dict[str, threading.Lock] = {}


class Scraper:
    """Fetches pages politely through a guarded HTTP client and extracts one row per page.

    `sleep` and `clock` are injectable so tests never wait for the delay.
    """

    def __init__(self, *, user_agent: str = DEFAULT_USER_AGENT, delay_seconds: float = 1.0,
                 allow_hosts: Iterable[str] = (), timeout: float = 20, max_attempts: int = 3,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                 resolve: Callable[..., list] | None = None, max_bytes: int = 10 * 1024 * 1024):
        guard = AddressGuard(allow_hosts, **({"resolve": resolve} if resolve else {}))
        self.client = GuardedHttpClient(timeout=timeout, max_attempts=max_attempts, user_agent=user_agent,
                                        sleep=sleep, guard=guard)
        self.user_agent = user_agent
        self.max_bytes = max_bytes
        self.delay_seconds = delay_seconds
        self.sleep = sleep
        self.clock = clock
        self._robots: dict[str, Protego | str] = {}
        self._last: dict[str, float] = {}
        self.fetched: list[str] = []  # every URL requested, robots.txt included, in order

    # ------------------------------------------------------------------ politeness
    def _host(self, url: str) -> str:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}"

    def _wait_turn(self, host: str) -> None:
        """One request at a time per host, at least the delay (or robots.txt crawl delay) after the last."""
        robots = self._robots.get(host)
        delay = self.delay_seconds
        if isinstance(robots, Protego):
            delay = max(delay, robots.crawl_delay(self.user_agent) or 0)
        last = self._last.get(host)
        if last is not None:
            wait = last + delay - self.clock()
            if wait > 0:
                self.sleep(wait)
        self._last[host] = self.clock()

    def _get(self, url: str, headers: Mapping[str, str] | None = None):
        """GET one URL: one request at a time per host in this process (other scrapers too), body capped."""
        host = self._host(url)
        with _HOSTS:
            lock = _HOST_LOCKS.setdefault(host, threading.Lock())
        with lock:
            self._wait_turn(host)
            self.fetched.append(url)
            response = self.client.get(url, headers=dict(headers or {}), raise_for_status=False, stream=True)
            try:
                body = bytearray()
                for chunk in response.iter_content(64 * 1024):
                    body += chunk
                    if len(body) > self.max_bytes:
                        raise PageTooLarge(f"larger than {self.max_bytes:,} bytes: not read")
            finally:
                response.close()
            response._content = bytes(body)  # what requests keeps after reading a body itself
            return response

    def robots(self, url: str) -> Protego | str:
        """The host's robots.txt rules, or the reason everything on the host is refused."""
        host = self._host(url)
        if host not in self._robots:
            try:
                response = self._get(host + "/robots.txt")
            except AddressRefused as exc:
                self._robots[host] = str(exc.reason)
            except PageTooLarge as exc:
                self._robots[host] = f"robots.txt {exc}: nothing fetched"
            except HttpError as exc:
                self._robots[host] = f"robots.txt unreachable ({exc.reason or exc.status}): nothing fetched"
            else:
                if response.status_code >= 500:
                    self._robots[host] = f"robots.txt answered HTTP {response.status_code}: nothing fetched"
                elif response.status_code >= 400:
                    self._robots[host] = Protego.parse("")
                else:
                    self._robots[host] = Protego.parse(response.text)
        return self._robots[host]

    # ------------------------------------------------------------------ pages
    def urls_from_sitemap(self, sitemap: str, depth: int = 2) -> list[str]:
        """The page URLs a sitemap lists; a sitemap index's sitemaps are read in turn (at most `depth` levels)."""
        rules = self.robots(sitemap)
        if isinstance(rules, str) or not rules.can_fetch(sitemap, self.user_agent):
            raise HttpError("GET", sitemap, None, reason="the sitemap is refused by robots.txt")
        try:
            response = self._get(sitemap)
        except PageTooLarge as exc:
            raise HttpError("GET", sitemap, None, reason=f"the sitemap is {exc}") from exc
        if response.status_code != 200:
            raise HttpError("GET", sitemap, response.status_code)
        locs, is_index = sitemap_urls(response.content)
        if not is_index:
            return locs
        if depth <= 0:
            raise HttpError("GET", sitemap, None, reason="sitemap indexes nested too deep")
        return [url for nested in locs for url in self.urls_from_sitemap(nested, depth - 1)]

    def page(self, url: str, extract: Mapping[str, str], selectors: Mapping[str, str],
             cache: PageCache | None = None) -> Page:
        """Fetch and extract one page; never raises for what the page did (the reason is in `Page.reason`)."""
        rules = self.robots(url)
        if isinstance(rules, str):
            return Page(url, reason=rules)
        if not rules.can_fetch(url, self.user_agent):
            return Page(url, reason=f"refused by robots.txt for user agent {self.user_agent!r}")
        try:
            response = self._get(url, cache.headers(url) if cache else None)
        except AddressRefused as exc:
            return Page(url, reason=str(exc.reason))
        except PageTooLarge as exc:
            return Page(url, reason=f"page {exc}")
        except HttpError as exc:
            return Page(url, reason=f"not fetched: {exc.reason or exc.status}")
        page = Page(url, status=response.status_code, etag=response.headers.get("ETag"),
                    last_modified=response.headers.get("Last-Modified"))
        if response.status_code == 304:
            page.not_modified = True
            page.etag = page.etag or (cache.entries.get(url, {}).get("etag") if cache else None)
            page.last_modified = page.last_modified or (cache.entries.get(url, {}).get("last_modified")
                                                        if cache else None)
            return page
        if response.status_code != 200:
            page.reason = f"HTTP {response.status_code}"
            return page
        row = extract_row(response.text, response.url or url, extract, selectors)
        if not row:
            page.reason = "nothing extracted: no product data and no selector matched"
        else:
            page.values = row
        return page

    def pages(self, urls: Iterable[str], extract: Mapping[str, str], selectors: Mapping[str, str],
              cache: PageCache | None = None) -> list[Page]:
        out = []
        for url in dict.fromkeys(urls):  # each URL once, in the order given
            page = self.page(url, extract, selectors, cache)
            if page.failed:
                log.warning("scrape %s: %s", safe_url(url), page.reason)
            elif cache is not None:
                cache.remember(page)
            out.append(page)
        return out

    def close(self) -> None:
        self.client.close()


def fill_template(template: str, record: Mapping[str, Any]) -> str | None:
    """`https://shop.example/p/{mpn}` filled from a record (values URL-quoted); None when a field is empty."""
    from string import Formatter
    from urllib.parse import quote

    names = [n for _, n, _, _ in Formatter().parse(template) if n]
    values = {}
    for name in names:
        value = record.get(name)
        if value is None or value == "" or value != value:
            return None
        values[name] = quote(str(value), safe="")
    return template.format(**values)


__all__ = ["DEFAULT_USER_AGENT", "PRODUCT_FIELDS", "Page", "PageCache", "Scraper", "extract_row", "fill_template",
           "product_values", "selected_values", "sitemap_urls"]
