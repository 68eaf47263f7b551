"""The review page in a real browser: Debian's headless Chromium driven by Selenium through the system chromedriver
(nothing is downloaded). A reviewer opens their link, approves two items and edits two in bulk, and the decisions
land in the store with their name; an expired link is refused. Every page is saved as a screenshot under the test's
tmp dir; with CLARO_UPDATE_SCREENSHOTS=1 the queue's is also copied to docs/screenshots/ (the README shows it).
"""

from __future__ import annotations

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
from selenium.webdriver.support.ui import Select, WebDriverWait

from claro_dagster.catalogue.access import AccessTokens
from claro_dagster.catalogue.changes import Change, ChangeSet
from claro_dagster.catalogue.common import now
from claro_dagster.catalogue.review import ReviewQueue
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.spec.models import AttributeSpec, CatalogueSpec, PipelineSpec, ProjectSpec, SourceSpec
from claro_dagster.web.app import create_app
from claro_dagster.web.review_page import ReviewPage

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
REPO = Path(__file__).resolve().parents[2]
WAIT = 30

pytestmark = pytest.mark.e2e


def make_spec() -> ProjectSpec:
    return ProjectSpec(
        catalogues={"products": CatalogueSpec(key="sku", attributes={
            "sku": AttributeSpec(type="text", required=True), "title": AttributeSpec(type="text"),
            "price": AttributeSpec(type="number")})},
        reviewers={"pricing": ["ann"]},
        sources={"feed": SourceSpec(catalogue="products", kind="upload")},
        pipelines={"onboarding": PipelineSpec(catalogue="products")},
    )


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[str, str]]:
    """The web app under uvicorn on a loopback port; yields its URL and the store URL."""
    spec = make_spec()
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = CatalogueStore(spec, url)
    store.import_records("products", pd.DataFrame({"sku": ["A1", "B2", "C3", "D4"],
                                                   "title": ["Mug", "Cup", "Jug", "Bowl"]}), change_set_id="import")
    store.apply(ChangeSet("enrich-1", "products", "enrich", [
        Change(k, "title", f"{t} (ceramic)", 70, "material from the supplier sheet", f"feed.csv line {n}")
        for n, (k, t) in enumerate((("A1", "Mug"), ("B2", "Cup"), ("C3", "Jug"), ("D4", "Bowl")), start=2)],
        source="feed"))
    store.dispose()

    def open_store(_spec=None):
        return CatalogueStore(spec, url)

    app = create_app(lambda: spec, open_store, launcher=None, signing_secret="unused",
                     review_page=ReviewPage(lambda: spec, open_store, secret="browser-test"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)  # listening before the server thread starts: requests wait in the backlog, no start-up polling
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", url
    finally:
        server.should_exit = True
        thread.join(WAIT)
        sock.close()


@pytest.fixture
def browser():
    # Never skipped: .ci/run installs the browser; without it the test fails saying what to install.
    assert os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER), (
        "the browser test needs Debian's chromium and chromium-driver: apt-get install -y chromium "
        "chromium-driver (.ci/run installs them), or leave it out with -m 'not e2e'")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_a_reviewer_approves_and_edits_in_bulk_and_an_expired_link_is_refused(served, browser, tmp_path):
    base, url = served
    spec = make_spec()
    store = CatalogueStore(spec, url)
    try:
        good = AccessTokens(store).issue("review", "ann", expires_in=timedelta(days=30), by="lead")
        stale = AccessTokens(store, clock=lambda: now() - timedelta(days=2)).issue(
            "review", "ann", expires_in=timedelta(days=1), by="lead")
        ids = {i.record: i.id for i in ReviewQueue(store).list()}
    finally:
        store.dispose()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    wait = WebDriverWait(browser, WAIT)

    browser.get(good.link(base))
    wait.until(ec.title_is("Review queue"))
    assert "Signed in as ann" in browser.find_element(By.TAG_NAME, "main").text
    assert "4 open item(s)" in browser.page_source
    browser.save_screenshot(str(shots / "1-queue.png"))

    for record in ("A1", "B2"):
        browser.find_element(By.ID, f"pick-{ids[record]}").click()
    Select(browser.find_element(By.ID, "action")).select_by_value("approve")
    browser.find_element(By.CSS_SELECTOR, "button[name=bulk]").click()
    wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "[role=status]"), "Approved 2 item(s)"))
    browser.save_screenshot(str(shots / "2-approved.png"))

    for record, value in (("C3", "Stoneware jug"), ("D4", "Serving bowl")):
        browser.find_element(By.ID, f"pick-{ids[record]}").click()
        browser.find_element(By.ID, f"value-{ids[record]}").send_keys(value)
    Select(browser.find_element(By.ID, "action")).select_by_value("edit")
    browser.find_element(By.CSS_SELECTOR, "button[name=bulk]").click()
    wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "[role=status]"), "Edited 2 item(s)"))
    assert "Nothing is waiting for review" in browser.page_source
    browser.save_screenshot(str(shots / "3-edited.png"))

    browser.delete_all_cookies()
    browser.get(stale.link(base))
    wait.until(ec.title_is("Access refused"))
    assert "This link expired on" in browser.find_element(By.TAG_NAME, "main").text
    browser.save_screenshot(str(shots / "4-expired.png"))

    store = CatalogueStore(spec, url)
    try:
        titles = store.records("products").set_index("sku")["title"].to_dict()
        decided = {i.record: (i.status, i.decided_by) for i in ReviewQueue(store).list(status=["approved", "edited"])}
        reviewer = store.provenance("products", "C3", "title").reviewer
    finally:
        store.dispose()
    assert titles == {"A1": "Mug (ceramic)", "B2": "Cup (ceramic)", "C3": "Stoneware jug", "D4": "Serving bowl"}
    assert decided == {"A1": ("approved", "ann"), "B2": ("approved", "ann"), "C3": ("edited", "ann"),
                       "D4": ("edited", "ann")}
    assert reviewer == "ann"
    assert sorted(p.name for p in shots.iterdir()) == ["1-queue.png", "2-approved.png", "3-edited.png",
                                                      "4-expired.png"]
    if os.environ.get("CLARO_UPDATE_SCREENSHOTS") == "1":
        (REPO / "docs" / "screenshots").mkdir(parents=True, exist_ok=True)
        shutil.copy(shots / "2-approved.png", REPO / "docs" / "screenshots" / "review-page.png")
