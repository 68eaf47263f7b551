"""`kind: scrape` sources: the sensor scrapes a local web shop (tests/web_shop.py) into batches that go through the
onboarding stages to published records in the demo's products catalogue; failed pages are kept with the batch's
rejected rows, per URL with the reason."""

from __future__ import annotations

import json

import dagster as dg
import pytest
from batches import tick

from claro_dagster.catalogue.batches import BatchRegistry
from claro_dagster.definitions import build_definitions
from claro_dagster.sensors.inbound import scrape_cursor_name
from claro_dagster.spec import DEMO_DIR, SpecError, load_spec
from tests.web_shop import WebShop

PAGES = ["/p/ACM-30001", "/p/ACM-30002", "/p/ACM-30003", "/p/ACM-30004", "/about", "/gone", "/broken",
         "/private/secret", "/moved"]


def source_text(shop_url: str) -> str:
    urls = ", ".join(f'"{shop_url}{p}"' for p in PAGES)
    return f"""\
  web_shop:
    kind: scrape
    catalogue: products
    urls: [{urls}]
    extract: {{sku: sku, title: name, price: price, gtin: gtin, brand: brand}}
    selectors: {{sku: .code, title: h1.title, price: .price}}
    delay_seconds: 0
    allow_hosts: [127.0.0.1]
  shop_by_sku:
    kind: scrape
    catalogue: products
    url_template: "{shop_url}/p/{{sku}}"
    filter: 'brand == "Acme"'
    extract: {{sku: sku, title: name, price: price}}
    delay_seconds: 0
    allow_hosts: [127.0.0.1]
"""


def spec_with_shop(tmp_path, shop_url: str):
    text = (DEMO_DIR / "claro.yaml").read_text(encoding="utf-8")
    assert "\nsources:\n" in text and "sources: [acme_csv, globex_xlsx]" in text, "the demo's layout changed"
    text = text.replace("\nsources:\n", "\nsources:\n" + source_text(shop_url), 1)
    text = text.replace("sources: [acme_csv, globex_xlsx]", "sources: [acme_csv, globex_xlsx, web_shop, shop_by_sku]")
    (tmp_path / "claro.yaml").write_text(text, encoding="utf-8")
    return tmp_path / "claro.yaml"




@pytest.fixture
def shop():
    with WebShop() as server:
        server.redirects["/moved"] = "http://169.254.169.254/latest/meta-data/"
        yield server


def test_scraped_pages_become_published_records_and_failed_pages_rejected_rows(shop, tmp_path) -> None:
    spec_path = spec_with_shop(tmp_path, shop.url)
    assert load_spec(spec_path).sources["web_shop"].kind == "scrape"  # `claro check` finds no problem
    defs = build_definitions(spec_path, tmp_path / "home")
    claro = defs.resources["claro"]
    with dg.instance_for_test() as instance:
        [run] = tick(defs, instance, "web_shop_scrape")
        assert run.success
        [batch] = [b for b in BatchRegistry(claro.store).list() if b.source == "web_shop"]
        assert batch.status == "published"
        kettle = claro.store.record("products", "ACM-30001")
        assert (kettle["title"], kettle["price"], kettle["gtin"], kettle["brand"]) == (
            "Enamel kettle", 24.5, "4006381333931", "Acme")
        assert claro.store.record("products", "ACM-30002")["price"] == 39.0  # microdata
        assert claro.store.record("products", "ACM-30003")["title"] == "Camping mug"  # OpenGraph
        assert claro.store.record("products", "ACM-30004")["price"] == 19.95  # CSS selectors
        # each value's provenance cites its page
        note = json.loads(next(claro.inbox_dir("web_shop").glob("*.pull.json")).read_text())
        assert set(note["rows"].values()) == {f"{shop.url}/p/ACM-3000{i}" for i in (1, 2, 3, 4)}
        for i, field in ((1, "price"), (2, "title"), (3, "title"), (4, "price")):
            prov = claro.store.provenance("products", f"ACM-3000{i}", field)
            assert (prov.citation, prov.source) == (f"{shop.url}/p/ACM-3000{i}", "web_shop")
        # every page that gave nothing is kept with the batch's rejected rows, with its reason
        rejected = BatchRegistry(claro.store).rejected_rows(batch.key)
        reasons = dict(zip(rejected["url"], rejected["reasons"], strict=True))
        assert "nothing extracted" in reasons[f"{shop.url}/about"]
        assert reasons[f"{shop.url}/gone"].endswith("HTTP 404")
        assert reasons[f"{shop.url}/broken"].endswith("HTTP 500")
        assert "refused by robots.txt" in reasons[f"{shop.url}/private/secret"]
        assert "169.254.169.254 is a link-local address" in reasons[f"{shop.url}/moved"]
        assert "/private/secret" not in shop.paths()

        # unchanged pages answer 304: nothing extracted, no new batch
        before = len(shop.received)
        assert tick(defs, instance, "web_shop_scrape") == []
        conditional = [r for r in shop.received[before:] if r.path.startswith("/p/ACM-3000")]
        assert len(conditional) == 4 and all(r.if_none_match for r in conditional)
        assert claro.store.get_cursor(scrape_cursor_name("web_shop"))

        # a changed page is a new batch with only its row
        shop.pages["/p/ACM-30001"] = shop.pages["/p/ACM-30001"].replace("24.50", "22.00")
        [run] = tick(defs, instance, "web_shop_scrape")
        assert run.success and claro.store.record("products", "ACM-30001")["price"] == 22.0
        assert claro.store.provenance("products", "ACM-30001", "price").citation == f"{shop.url}/p/ACM-30001"

        # url_template: one page per record matching the filter (brand Acme: the kettle and the toaster)
        shop.pages["/p/ACM-30002"] = shop.pages["/p/ACM-30002"].replace("Steel toaster", "Steel toaster 2-slot")
        before = len(shop.received)
        [run] = tick(defs, instance, "shop_by_sku_scrape")
        assert run.success
        asked = {r.path for r in shop.received[before:]} - {"/robots.txt"}
        assert asked == {"/p/ACM-30001", "/p/ACM-30002"}
        assert claro.store.record("products", "ACM-30002")["title"] == "Steel toaster 2-slot"


def test_a_pull_where_robots_refuses_everything_fetches_no_page_and_makes_no_batch(tmp_path) -> None:
    with WebShop(robots="User-agent: *\nDisallow: /\n") as shop:
        defs = build_definitions(spec_with_shop(tmp_path, shop.url), tmp_path / "home")
        sensor = defs.resolve_sensor_def("web_shop_scrape")
        with dg.instance_for_test() as instance:
            result = sensor.evaluate_tick(dg.build_sensor_context(
                instance=instance, definitions=defs,
                resources={k: defs.resources[k] for k in sensor.required_resource_keys}))
        assert not result.run_requests
        # every page is named as refused by robots.txt; only robots.txt itself was requested
        refused = [u for u in PAGES if f"{shop.url}{u}: refused by robots.txt" in result.skip_message]
        assert len(refused) == 5 and "and 4 more" in result.skip_message
        assert shop.paths() == ["/robots.txt"]


def test_spec_check_names_what_a_scrape_source_lacks(tmp_path) -> None:
    text = (DEMO_DIR / "claro.yaml").read_text(encoding="utf-8")
    bad = "  bad_scrape:\n    kind: scrape\n    catalogue: products\n    urls: [file:///etc/passwd]\n" \
          "    sitemap: https://shop.example/sitemap.xml\n    extract: {title: colour}\n" \
          "  bad_template:\n    kind: scrape\n    catalogue: products\n" \
          "    url_template: https://shop.example/p/{part_no}\n    extract: {sku: sku}\n"
    text = text.replace("\nsources:\n", "\nsources:\n" + bad, 1)
    assert "bad_scrape" in text
    (tmp_path / "claro.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(SpecError) as failed:
        load_spec(tmp_path / "claro.yaml")
    problems = [p for p in str(failed.value).splitlines() if "bad_scrape" in p]
    assert any("exactly one of 'urls'" in p for p in problems)
    assert any("only http and https" in p for p in problems)
    assert any("'colour' is not one of" in p for p in problems)
    assert any("bad_template.url_template" in p and "part_no" in p for p in str(failed.value).splitlines())


def test_record_lines_follow_values_that_span_lines() -> None:
    from claro_dagster.sensors.inbound import record_lines

    data = b'sku,description\nA-1,"two\nlines"\nA-2,one line\n'
    assert record_lines(data, ["https://shop/p/a1", "https://shop/p/a2"]) == {"2": "https://shop/p/a1",
                                                                             "4": "https://shop/p/a2"}
