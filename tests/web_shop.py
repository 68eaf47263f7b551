"""A small web shop on loopback for the scrape tests: product pages in JSON-LD, microdata, OpenGraph only, and
plain markup (CSS-selectable), a robots.txt, a sitemap, redirects (one to a private address), 404/500 pages and
ETag support. It keeps every request it received (path, user agent, conditional headers)."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

JSON_LD = """<html><head><title>Kettle</title>
<script type="application/ld+json">{"@context": "https://schema.org", "@type": "Product", "name": "Enamel kettle",
 "sku": "ACM-30001", "gtin13": "4006381333931", "mpn": "KT-1", "brand": {"@type": "Brand", "name": "Acme"},
 "description": "A 1.5 l enamel kettle.", "image": "https://img.example/kettle.jpg",
 "offers": {"@type": "Offer", "price": "24.50", "priceCurrency": "EUR"}}</script></head>
<body><h1>Enamel kettle</h1></body></html>"""

MICRODATA = """<html><body><div itemscope itemtype="https://schema.org/Product">
<h1 itemprop="name">Steel toaster</h1><span itemprop="sku">ACM-30002</span>
<span itemprop="brand">Acme</span><p itemprop="description">Two slots, steel.</p>
<div itemprop="offers" itemscope itemtype="https://schema.org/Offer">
<span itemprop="price" content="39.00">39,00 EUR</span><meta itemprop="priceCurrency" content="EUR"></div>
</div></body></html>"""

OPENGRAPH = """<html prefix="og: https://ogp.me/ns# product: https://ogp.me/ns/product#"><head>
<meta property="og:type" content="product"><meta property="og:title" content="Camping mug">
<meta property="og:description" content="Enamel mug, 350 ml.">
<meta property="product:retailer_item_id" content="ACM-30003">
<meta property="product:price:amount" content="7.90"><meta property="product:price:currency" content="EUR">
</head><body></body></html>"""

PLAIN = """<html><body><div class="product"><h1 class="title">Folding chair</h1>
<span class="code">ACM-30004</span><span class="price">19.95</span></div></body></html>"""

NOTHING = "<html><body><p>Our opening hours are 9 to 5.</p></body></html>"


@dataclass
class Received:
    path: str
    user_agent: str | None
    if_none_match: str | None


class WebShop:
    """`with WebShop() as shop:` serves on 127.0.0.1; `shop.url` is its root. Pages and robots.txt can be edited."""

    def __init__(self, robots: str = "User-agent: *\nDisallow: /private/\n"):
        self.robots = robots
        self.pages: dict[str, str] = {"/p/ACM-30001": JSON_LD, "/p/ACM-30002": MICRODATA,
                                      "/p/ACM-30003": OPENGRAPH, "/p/ACM-30004": PLAIN, "/about": NOTHING,
                                      "/private/secret": JSON_LD}
        self.redirects: dict[str, str] = {}
        self.statuses: dict[str, int] = {"/gone": 404, "/broken": 500}
        self.etags = True
        self.received: list[Received] = []
        self._lock = threading.Lock()
        shop = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet test output
                pass

            def do_GET(self):
                with shop._lock:
                    shop.received.append(Received(self.path, self.headers.get("User-Agent"),
                                                  self.headers.get("If-None-Match")))
                path = self.path.split("?", 1)[0]
                if path == "/robots.txt":
                    return self._send(200, shop.robots, "text/plain")
                if path == "/sitemap_index.xml":
                    return self._send(200, '<?xml version="1.0"?><sitemapindex xmlns="http://www.sitemaps.org/'
                                           f'schemas/sitemap/0.9"><sitemap><loc>{shop.url}/sitemap.xml</loc>'
                                           '</sitemap></sitemapindex>', "application/xml")
                if path == "/sitemap.xml":
                    locs = "".join(f"<url><loc>{shop.url}{p}</loc></url>" for p in shop.pages
                                   if p.startswith("/p/"))
                    return self._send(200, '<?xml version="1.0" encoding="UTF-8"?><urlset xmlns='
                                           f'"http://www.sitemaps.org/schemas/sitemap/0.9">{locs}</urlset>',
                                      "application/xml")
                if path in shop.redirects:
                    self.send_response(302)
                    self.send_header("Location", shop.redirects[path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                if path in shop.statuses:
                    return self._send(shop.statuses[path], "<html>error</html>", "text/html")
                if path not in shop.pages:
                    return self._send(404, "<html>not found</html>", "text/html")
                body = shop.pages[path]
                etag = '"' + hashlib.sha256(body.encode()).hexdigest()[:16] + '"'
                if shop.etags and self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                    return None
                return self._send(200, body, "text/html; charset=utf-8", etag if shop.etags else None)

            def _send(self, status: int, body: str, kind: str, etag: str | None = None):
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                if etag:
                    self.send_header("ETag", etag)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def paths(self) -> list[str]:
        with self._lock:
            return [r.path for r in self.received]

    def __enter__(self) -> WebShop:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()
