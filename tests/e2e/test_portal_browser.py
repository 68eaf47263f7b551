"""The Supplier Portal in a real browser (Debian's headless Chromium via Selenium and the system chromedriver), with
publishing really happening: the real `dagster-daemon` runs the demo project's sensors, so the file the portal
accepts is picked up by the source's inbox sensor and published by the pipeline.

A supplier opens the invite link, downloads the CSV template, uploads a file with errors and sees them next to their
lines (the batch is halted), fixes the file and uploads it again, and sees it published in their history; a file
with new columns shows the proposed mapping; an expired and a revoked link are refused. Every page is saved as a
screenshot under the test's tmp dir; with CLARO_UPDATE_SCREENSHOTS=1 they are copied to docs/screenshots/portal-*.png
(the README shows them).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
import uvicorn
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from claro_dagster.catalogue.access import AccessTokens
from claro_dagster.catalogue.batches import BatchRegistry
from claro_dagster.catalogue.common import now
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.spec.loader import load_spec
from claro_dagster.web.app import create_app
from claro_dagster.web.portal_page import PortalPage
from tests.e2e.harness import DagsterStack, wait_until

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
REPO = Path(__file__).resolve().parents[2]
WAIT = 30
PUBLISH_TIMEOUT = 150  # the daemon's start (~25 s idle), a sensor tick (5 s) and the run

pytestmark = pytest.mark.e2e

PORTAL_SOURCE = """  acme_portal:
    catalogue: products
    kind: upload
    description: Acme Outdoor's uploads through the Supplier Portal.
    supplier: SUP-0001
    max_file_mb: 20
"""


@pytest.fixture
def project(tmp_path) -> Iterator[tuple[str, DagsterStack, str]]:
    """The demo project with a portal source; the real daemon on it; the web app under uvicorn. Yields the app's
    URL, the stack and the store URL."""
    stack = DagsterStack(tmp_path / "stack")
    stack.prepare()
    text = stack.spec_path.read_text(encoding="utf-8").replace("\nsources:\n", "\nsources:\n" + PORTAL_SOURCE, 1)
    stack.spec_path.write_text(text.replace("sources: [acme_csv, globex_xlsx]",
                                            "sources: [acme_csv, globex_xlsx, acme_portal]"), encoding="utf-8")
    spec = load_spec(stack.spec_path)
    url = f"sqlite:///{stack.home / 'catalogue.db'}"  # the daemon's store: its environment has no CLARO_DATABASE_URL
    store = CatalogueStore(spec, url)
    store.import_records("suppliers", pd.DataFrame({"supplier_id": ["SUP-0001"], "name": ["Acme Outdoor"]}),
                         change_set_id="suppliers")
    store.dispose()

    def open_store(_spec=None):
        return CatalogueStore(spec, url)

    app = create_app(lambda: spec, open_store, launcher=None, signing_secret="unused",
                     portal_page=PortalPage(lambda: spec, open_store, stack.home, secret="browser-test"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    try:
        stack.start(only=("daemon",))  # started first: it loads the code location while the supplier works
        thread.start()
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", stack, url
    finally:
        server.should_exit = True
        thread.join(WAIT)
        sock.close()
        stack.stop()


@pytest.fixture
def browser(tmp_path):
    assert os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER), (
        "the browser test needs Debian's chromium and chromium-driver: apt-get install -y chromium "
        "chromium-driver (.ci/run installs them), or leave it out with -m 'not e2e'")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


def write_rows(path: Path, header: list[str], rows: list[dict[str, str]]) -> Path:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(out.getvalue(), encoding="utf-8")
    return path


def upload(browser, wait, path: Path, title: str) -> None:
    browser.find_element(By.ID, "file").send_keys(str(path))
    browser.find_element(By.CSS_SELECTOR, "form[action='/portal/upload'] button[type=submit]").click()
    wait.until(ec.title_contains(title))


def test_a_supplier_goes_from_invite_link_to_a_published_batch(project, browser, tmp_path):
    base, stack, url = project
    spec = load_spec(stack.spec_path)
    store = CatalogueStore(spec, url)
    try:
        tokens = AccessTokens(store)
        invite = tokens.issue("portal", "acme_portal", expires_in=timedelta(days=90), by="lead")
        stale = AccessTokens(store, clock=lambda: now() - timedelta(days=2)).issue(
            "portal", "acme_portal", expires_in=timedelta(days=1), by="lead")
        revoked = tokens.issue("portal", "acme_portal", expires_in=timedelta(days=90), by="lead")
        tokens.revoke(revoked.token.id)
    finally:
        store.dispose()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    wait = WebDriverWait(browser, WAIT)

    # the invite link signs the supplier in
    browser.get(invite.link(base))
    wait.until(ec.title_is("Supplier Portal: acme_portal"))
    assert "No uploads yet" in browser.find_element(By.TAG_NAME, "main").text
    browser.save_screenshot(str(shots / "portal-home.png"))

    # the template, downloaded by the browser
    browser.find_element(By.LINK_TEXT, "Download the CSV template").click()
    template = wait_until(lambda: ((p := browser.downloads / "acme_portal-template.csv").exists()
                                   and p.stat().st_size > 0, p), WAIT, 0.2, what="the template download")
    with open(template, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        header, [example] = list(reader.fieldnames), list(reader)
    assert header[:2] == ["sku (required)", "title (required)"] and example["supplier"] == "SUP-0001"

    def row(n: int, **changes: str) -> dict[str, str]:
        return {**example, "sku (required)": f"ACP-{1000 + n}", "title (required)": f"Trail mug {n}", "gtin": "",
                **changes}

    good = [row(n) for n in range(1, 6)]
    with_errors = [good[0], row(2, price="-5"), row(3, colour="purple"), row(4, **{"sku (required)": "acp 4"}),
                   good[4]]
    broken = write_rows(tmp_path / "acme-week49.csv", header, with_errors)
    fixed = write_rows(tmp_path / "acme-week49-fixed.csv", header, good)

    # a file with errors: halted, each problem next to its line
    upload(browser, wait, broken, "Batch acme-week49.csv")
    main = browser.find_element(By.TAG_NAME, "main").text
    assert "halted" in main and "3 of 5 rows failed validation (60.0%); the error budget is 25%" in main
    problems = {tuple(td.text for td in tr.find_elements(By.TAG_NAME, "td"))[:3]
                for tr in browser.find_elements(By.CSS_SELECTOR, "#errors tbody tr")}
    assert problems == {("3", "price", "-5"), ("4", "colour", "purple"), ("5", "sku (required)", "acp 4")}
    browser.save_screenshot(str(shots / "portal-halted.png"))

    # fixed and uploaded again: accepted, on its way to publishing
    browser.get(f"{base}/portal")
    upload(browser, wait, fixed, "Batch acme-week49-fixed.csv")
    main = browser.find_element(By.TAG_NAME, "main").text
    assert "Accepted: 0 of 5 rows failed validation" in main and "within budget" in main
    browser.save_screenshot(str(shots / "portal-accepted.png"))

    # a file with the supplier's own column names: the proposed mapping, to confirm
    renamed = dict(zip(header, ["Article No.", "Product name", "Description", "Brand", "EAN", "MPN", "Unit price",
                                "Weight", "Length", "Width", "Color", "Size", "Category", "Picture", "Launch",
                                "Supplier", "Status"], strict=True))
    own = write_rows(tmp_path / "acme-own-columns.csv", list(renamed.values()),
                     [{renamed[k]: v for k, v in r.items()} for r in good[:2]])
    browser.get(f"{base}/portal")
    upload(browser, wait, own, "Confirm columns")
    assert browser.find_element(By.ID, "col-0").get_attribute("value") == "sku"
    browser.save_screenshot(str(shots / "portal-mapping.png"))

    # the history shows the batch published by the pipeline (the daemon's sensor and run)
    browser.get(f"{base}/portal")

    def published() -> tuple[bool, str]:
        browser.refresh()
        rows = [tr.text for tr in browser.find_elements(By.CSS_SELECTOR, "table tbody tr")]
        return any("acme-week49-fixed.csv" in r and "published" in r for r in rows), str(rows)

    wait_until(published, PUBLISH_TIMEOUT, 1.0, what="the fixed batch to show as published in the history",
               guard=stack.assert_alive, details=stack.describe)
    history = browser.find_element(By.TAG_NAME, "main").text
    assert "acme-week49.csv" in history and "halted" in history
    browser.save_screenshot(str(shots / "portal-history.png"))

    # expired and revoked links are refused
    browser.delete_all_cookies()
    browser.get(stale.link(base))
    wait.until(ec.title_is("Access refused"))
    assert "This link expired on" in browser.find_element(By.TAG_NAME, "main").text
    browser.save_screenshot(str(shots / "portal-refused.png"))
    browser.get(revoked.link(base))
    wait.until(ec.title_is("Access refused"))
    assert "This link has been revoked" in browser.find_element(By.TAG_NAME, "main").text

    store = CatalogueStore(spec, url)
    try:
        statuses = {b.filename: b.status for b in BatchRegistry(store).list() if b.source == "acme_portal"}
        skus = set(store.records("products")["sku"])
    finally:
        store.dispose()
    assert statuses == {"acme-week49.csv": "halted", "acme-week49-fixed.csv": "published"}
    assert {f"ACP-{1000 + n}" for n in range(1, 6)} <= skus
    names = sorted(p.name for p in shots.iterdir())
    assert names == ["portal-accepted.png", "portal-halted.png", "portal-history.png", "portal-home.png",
                     "portal-mapping.png", "portal-refused.png"]
    if os.environ.get("CLARO_UPDATE_SCREENSHOTS") == "1":
        (REPO / "docs" / "screenshots").mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copy(shots / name, REPO / "docs" / "screenshots" / name)
