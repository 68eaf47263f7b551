"""Merge proposals on the review page: both records side by side with per-field similarity; approve merges,
reject keeps the pair apart for good."""

from __future__ import annotations

import pandas as pd
import pytest
from starlette.testclient import TestClient

from claro_dagster.catalogue.duplicates import Duplicates
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.spec.models import ProjectSpec
from claro_dagster.web.app import create_app
from claro_dagster.web.review_page import ReviewPage
from tests.web.test_review_page import Clock, NoLauncher, csrf_of, sign_in

SPEC = {"catalogues": {"products": {"key": "sku", "attributes": {
    "sku": {"type": "text"}, "title": {"type": "text"}, "brand": {"type": "text"},
    "gtin": {"type": "text", "format": "gtin"}, "colour": {"type": "text"}, "size": {"type": "text"}}}},
    "reviewers": {"merch": ["ann"]}}


@pytest.fixture
def project(tmp_path):
    spec = ProjectSpec.model_validate(SPEC)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = CatalogueStore(spec, url)
    store.import_records("products", pd.DataFrame([
        {"sku": "A1", "title": "Acme <Steel> Bottle 500ml", "brand": "Acme", "gtin": "5012345678900", "colour": None,
         "size": "M"},
        {"sku": "B2", "title": "Acme <Steel> Bottle 0.5 l", "brand": "Acme", "gtin": "5012345678900",
         "colour": "red", "size": None},
        {"sku": "C3", "title": "Globex Lamp", "brand": "Globex", "gtin": "5098765432109", "colour": "blue",
         "size": None}]),
        change_set_id="import-1")
    Duplicates(store).find("products", run_id="dedupe-1")
    (proposal,) = Duplicates(store).list()
    store.dispose()
    clock = Clock()

    def open_store(_spec=None):
        return CatalogueStore(spec, url)

    app = create_app(lambda: spec, open_store, NoLauncher(), signing_secret="x",
                     review_page=ReviewPage(lambda: spec, open_store, secret="test-secret", clock=clock))
    return app, open_store, clock, proposal.id


def test_a_merge_proposal_shows_both_records_side_by_side(project):
    app, open_store, clock, item = project
    with TestClient(app) as client:
        sign_in(client, open_store, clock)
        page = client.get("/review").text
    assert f"Merge proposal {item}: B2 into A1" in page
    assert "<th scope=\"col\">A1 (survivor)</th>" in page and "<th scope=\"col\">B2 (duplicate)</th>" in page
    assert "Acme &lt;Steel&gt; Bottle 0.5 l" in page and "<Steel>" not in page  # escaped
    assert '<th scope="row">gtin</th><td>5012345678900</td><td>5012345678900</td><td>100</td>' in page
    assert "filled from B2: A1 has none" in page  # colour: the value the merge keeps, and why


def test_approving_on_the_page_merges_and_rejecting_never_proposes_again(project):
    app, open_store, clock, item = project
    with TestClient(app) as client:
        sign_in(client, open_store, clock)
        csrf = csrf_of(client.get("/review").text)
        done = client.post("/review/decide", data={"csrf": csrf, "one": f"approve:{item}"})
        assert "Approved 1 item(s): 1 value(s) written" in done.text
    store = open_store()
    try:
        assert store.record("products", "A1")["colour"] == "red"
        assert Duplicates(store).get(item).status == "merged"
    finally:
        store.dispose()


def test_rejecting_on_the_page_keeps_the_pair_apart(project):
    app, open_store, clock, item = project
    with TestClient(app) as client:
        sign_in(client, open_store, clock)
        csrf = csrf_of(client.get("/review").text)
        done = client.post("/review/decide", data={"csrf": csrf, "one": f"reject:{item}"})
        assert "Rejected 1 item(s)." in done.text
    store = open_store()
    try:
        assert Duplicates(store).get(item).status == "rejected"
        assert Duplicates(store).find("products", run_id="dedupe-2").proposed == 0
    finally:
        store.dispose()
