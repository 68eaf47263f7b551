"""The REST API (`/api/v1`) through Starlette's TestClient: each endpoint's behaviour, tokens and scopes, bad input,
pagination under concurrent writes, and the OpenAPI document against the app's routes."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from starlette.routing import Route

from claro_dagster.catalogue.api_access import ApiTokens
from claro_dagster.catalogue.changes import Change, ChangeSet
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.web.api_openapi import doc_path
from tests.api_project import Project


@pytest.fixture
def api(tmp_path):
    return Project(tmp_path)


# ---------------------------------------------------------------------------------------- reading
def test_records_with_filter_columns_and_cursor_pages(api):
    first = api.get("/catalogues/products/records", limit=2, columns="price")
    assert first.status_code == 200
    body = first.json()
    assert body["records"] == [{"sku": "A1", "price": 4.5}, {"sku": "B2", "price": 3.0}]
    second = api.get("/catalogues/products/records", limit=2, columns="price", cursor=body["next_cursor"]).json()
    assert second == {"records": [{"sku": "C3", "price": 12.0}], "next_cursor": None}
    filtered = api.get("/catalogues/products/records", filter='price > 4 and status == "active"').json()
    assert [r["sku"] for r in filtered["records"]] == ["A1"]
    assert filtered["records"][0] == {"sku": "A1", "title": "Mug", "price": 4.5, "status": "active",
                                      "launched": "2026-01-01"}


def test_one_record_has_provenance_per_field_and_history(api):
    store = api.store()
    store.apply(ChangeSet("reprice", "products", "normalize", [Change("A1", "price", 5.0, 100, "rounded")],
                          run_id="r-9"))
    store.dispose()
    body = api.get("/catalogues/products/records/A1").json()
    assert body["values"]["price"] == 5.0
    assert body["provenance"]["price"]["operation"] == "normalize" and body["provenance"]["price"]["run_id"] == "r-9"
    assert body["provenance"]["title"]["change_set"] == "import-1"
    prices = [(h["kind"], h["old"], h["new"]) for h in body["history"] if h["field"] == "price"]
    assert prices == [("created", None, 4.5), ("update", 4.5, 5.0)]
    missing = api.get("/catalogues/products/records/ZZ")
    assert missing.status_code == 404 and "ZZ" in missing.json()["error"]
    assert api.get("/catalogues/nope/records").status_code == 404


def test_the_change_feed_has_every_applied_change_in_order_with_values(api):
    store = api.store()
    store.apply(ChangeSet("reprice", "products", "normalize", [Change("A1", "price", 5.0, 100, "rounded")]))
    store.apply(ChangeSet("held", "products", "enrich", [Change("B2", "title", "Big cup", 60)]))  # queued: not applied
    store.import_records("products", pd.DataFrame({"sku": ["D4"], "title": ["Bowl"], "price": [8.0],
                                                   "status": ["draft"], "launched": [None]}), change_set_id="import-2")
    store.dispose()
    page = api.get("/changes", since=0, limit=2).json()
    assert [c["record"] for c in page["changes"]] == ["A1", "B2"]
    assert page["changes"][0]["kind"] == "created"
    assert page["changes"][0]["values"] == {"sku": "A1", "title": "Mug", "price": 4.5, "status": "active",
                                            "launched": "2026-01-01"}
    rest = api.get("/changes", since=page["next"]).json()
    kinds = [(c["kind"], c["record"], c.get("field")) for c in rest["changes"]]
    assert kinds == [("created", "C3", None), ("updated", "A1", "price"), ("created", "D4", None)]
    assert rest["changes"][1]["old"] == 4.5 and rest["changes"][1]["new"] == 5.0
    assert rest["next"] == rest["last"]
    sequences = [c["sequence"] for c in page["changes"] + rest["changes"]]
    assert sequences == sorted(sequences)
    assert api.get("/changes", since=rest["next"]).json()["changes"] == []  # caught up


def test_feed_and_filter_errors_say_where(api):
    future = api.get("/changes", since=10_000)
    assert future.status_code == 400 and "ahead of the newest change" in future.json()["error"]
    assert api.get("/changes").status_code == 400
    assert api.get("/changes", since="abc").status_code == 400
    bad = api.get("/catalogues/products/records", filter="price >> 3")
    assert bad.status_code == 400
    assert bad.json()["position"] == 7 and "position 7" in bad.json()["error"]
    unknown = api.get("/catalogues/products/records", filter="colour == 'red'")
    assert unknown.status_code == 400 and "colour" in unknown.json()["error"]
    assert api.get("/catalogues/products/records", cursor="not-a-cursor").status_code == 400
    misspelt = api.get("/catalogues/products/records", columns="title,prise")
    assert misspelt.status_code == 400 and misspelt.json()["error"] == (
        "unknown field(s) 'prise' (did you mean 'price'?) in products; fields are: sku, title, price, status, launched")
    typo = api.get("/catalogues/products/records", filtr="price > 3")  # never answered as if absent
    assert typo.status_code == 400 and "unknown query parameter(s) 'filtr'" in typo.json()["error"]
    assert "takes filter, columns, cursor, limit" in typo.json()["error"]


def test_pagination_under_concurrent_writes_neither_skips_nor_repeats(tmp_path, store_url):
    api = Project(tmp_path, store_url)  # both backends: SQLite's one writer, PostgreSQL's concurrent transactions
    store = api.store()
    keys = [f"K{i:04d}" for i in range(300)]
    store.import_records("products", pd.DataFrame({"sku": keys, "title": ["t"] * 300, "price": [1.0] * 300,
                                                   "status": ["draft"] * 300, "launched": [None] * 300}),
                         change_set_id="bulk")
    stop = threading.Event()
    writes = []

    def writer():
        # Update existing records (including ones behind and ahead of the cursor) and create new ones
        # before and after every key, while a client pages.
        n = 0
        while not stop.is_set():
            n += 1
            s = CatalogueStore(api.spec, api.url)
            s.apply(ChangeSet(f"w{n}", "products", "normalize",
                              [Change(keys[(n * 37) % 300], "price", float(n), 100),
                               Change(f"A0-new-{n:04d}", "title", "early", 100),
                               Change(f"Z9-new-{n:04d}", "title", "late", 100)]))
            s.dispose()
            writes.append(n)

    thread = threading.Thread(target=writer)
    thread.start()
    seen, cursor = [], None
    try:
        while True:
            params = {"limit": 7, "columns": "price"} | ({"cursor": cursor} if cursor else {})
            body = api.get("/catalogues/products/records", **params).json()
            seen += [r["sku"] for r in body["records"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
    finally:
        stop.set()
        thread.join()
    store.dispose()
    assert len(writes) > 3  # the writer really wrote during the paging
    assert len(seen) == len(set(seen)), "a record came twice"
    assert set(keys + ["A1", "B2", "C3"]) <= set(seen), "a record that existed throughout was skipped"
    assert seen == sorted(seen)


# ---------------------------------------------------------------------------------------- tokens and scopes
def test_tokens_missing_expired_revoked_and_rate_limited(api):
    assert api.get("/catalogues", token=None).status_code == 401
    assert api.get("/catalogues", token="wrong").status_code == 401
    store = api.store()
    tokens = ApiTokens(store, clock=lambda: datetime.now(UTC) - timedelta(days=2))
    old = tokens.create("old", ["read"], expires_in=timedelta(days=1)).secret
    gone = api.tokens.create("gone", ["read"], expires_in=timedelta(days=1))
    api.tokens.revoke(gone.token.id)
    store.dispose()
    expired = api.get("/catalogues", token=old)
    assert expired.status_code == 401 and "expired" in expired.json()["error"]
    assert expired.headers["WWW-Authenticate"].startswith("Bearer")
    revoked = api.get("/catalogues", token=gone.secret)
    assert revoked.status_code == 401 and "revoked" in revoked.json()["error"]
    for _ in range(10):
        api.get("/catalogues", token="wrong")
    limited = api.get("/catalogues", token="reader")  # even a good token, from an address that kept failing
    assert limited.status_code == 429


@pytest.mark.parametrize(("token", "method", "path", "body", "allowed"), [
    ("runner", "GET", "/catalogues", None, False),
    ("reader", "POST", "/catalogues/products/proposals", {"changes": [{"record": "A1", "field": "title",
                                                                        "value": "x"}]}, False),
    ("reader", "POST", "/runs", {"catalogue": "products", "target": "analyse"}, False),
    ("reader", "POST", "/review/1/decision", {"decision": "approve"}, False),
    ("reader", "GET", "/audit", None, False),
    ("reviewer", "GET", "/review", None, True),
    ("runner", "GET", "/runs", None, True),
    ("admin", "GET", "/audit", None, True),
    ("admin", "GET", "/catalogues", None, True),
])
def test_each_endpoint_needs_its_scope(api, token, method, path, body, allowed):
    response = api.get(path, token=token) if method == "GET" else api.post(path, body, token=token)
    if allowed:
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 403 and "lacks the scope" in response.json()["error"]


# ---------------------------------------------------------------------------------------- proposing and review
def test_a_proposal_goes_through_the_gate_capped_and_lands_in_review(api):
    response = api.post("/catalogues/products/proposals", {"id": "erp-42", "changes": [
        {"record": "A1", "field": "title", "value": "Mug XL", "confidence": 99, "reason": "ERP name"},
        {"record": "E5", "field": "price", "value": 7, "confidence": 30}]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["queued"], body["rejected"], body["applied"]) == (1, 1, 0)
    assert body["capped"] == [0] and body["max_confidence"] == 80 and body["source"] == "api:proposer"
    items = api.get("/review", token="reviewer").json()["items"]
    assert [(i["record"], i["new"], i["confidence"], i["source"]) for i in items] == [
        ("A1", "Mug XL", 80, "api:proposer")]
    again = api.post("/catalogues/products/proposals", {"id": "erp-42", "changes": [
        {"record": "A1", "field": "title", "value": "Mug XL", "confidence": 99}]}).json()
    assert again["already_applied"] is True  # a retried request changes nothing
    decided = api.post(f"/review/{items[0]['id']}/decision", {"decision": "approve", "note": "ok"}, token="reviewer")
    assert decided.status_code == 200 and decided.json()["status"] == "approved"
    assert decided.json()["decided_by"] == "api:reviewer"
    assert api.get("/catalogues/products/records/A1").json()["values"]["title"] == "Mug XL"
    twice = api.post(f"/review/{items[0]['id']}/decision", {"decision": "reject"}, token="reviewer")
    assert twice.status_code == 409
    # a client the spec trusts more applies directly
    trusted = api.post("/catalogues/products/proposals", {"changes": [
        {"record": "B2", "field": "price", "value": 3.25, "confidence": 99}]}, token="trusted").json()
    assert trusted["applied"] == 1 and trusted["capped"] == [0] and trusted["max_confidence"] == 95
    audit = api.get("/audit", token="admin").json()["entries"]
    assert [(e["token_name"], e["action"], e["status"]) for e in audit] == [
        ("proposer", "propose", 200), ("proposer", "propose", 200), ("reviewer", "review", 200),
        ("reviewer", "review", 409), ("trusted", "propose", 200)]
    assert audit[0]["target"] == "products" and audit[0]["detail"]["change_set"] == "api:proposer:erp-42"


def test_a_bad_proposal_names_each_problem_and_writes_nothing(api):
    response = api.post("/catalogues/products/proposals", {"changes": [
        {"record": "A1", "field": "colour", "value": "red"},
        {"record": "A1", "field": "price", "value": "cheap"},
        {"record": "A1", "field": "status", "value": "gone"},
        {"record": "A1", "field": "sku", "value": "A2"},
        {"record": "A1", "field": "launched", "value": "soon"},
        {"record": "A1", "field": "title", "value": "fine"}]})
    assert response.status_code == 422
    problems = response.json()["problems"]
    assert [p.split(":")[0].split(" ")[0] for p in problems] == [
        "changes[0].field", "changes[1].value", "changes[2].value", "changes[3].field", "changes[4].value"]
    assert "no attribute 'colour'" in problems[0] and "not a number" in problems[1]
    assert api.get("/catalogues/products/records/A1").json()["values"]["title"] == "Mug"
    assert api.get("/review", token="reviewer").json()["items"] == []
    shape = api.post("/catalogues/products/proposals", {"changes": [{"record": "A1", "value": 1}]})
    assert shape.status_code == 422 and "changes.0.field" in shape.json()["error"]
    not_json = api.client.post("/api/v1/catalogues/products/proposals", content=b"{",
                               headers=api.auth("proposer"))
    assert not_json.status_code == 422
    audit = api.get("/audit", token="admin").json()["entries"]
    assert [e["status"] for e in audit] == [422, 422, 422]


def test_a_review_edit_needs_its_value(api):
    api.post("/catalogues/products/proposals", {"changes": [{"record": "C3", "field": "title", "value": "Jug!",
                                                             "confidence": 70}]})
    item = api.get("/review", token="reviewer").json()["items"][0]
    assert api.post(f"/review/{item['id']}/decision", {"decision": "edit"}, token="reviewer").status_code == 422
    edited = api.post(f"/review/{item['id']}/decision", {"decision": "edit", "value": "Water jug"}, token="reviewer")
    assert edited.json()["status"] == "edited"
    assert api.get("/catalogues/products/records/C3").json()["values"]["title"] == "Water jug"
    assert api.post("/review/999/decision", {"decision": "approve"}, token="reviewer").status_code == 404


# ---------------------------------------------------------------------------------------- runs and batches
def test_runs_start_and_report_through_the_launcher(api):
    started = api.post("/runs", {"catalogue": "products", "target": "analyse", "filter": "price > 4"},
                       token="runner")
    assert started.status_code == 202
    run_id = started.json()["run_id"]
    assert api.launcher.launched == [("products", "analyse", "price > 4", "api:runner")]
    statuses = [api.get(f"/runs/{run_id}", token="runner").json() for _ in range(3)]
    assert [(s["status"], s["done"]) for s in statuses] == [("QUEUED", False), ("STARTED", False), ("SUCCESS", True)]
    assert api.get("/runs/nope", token="runner").status_code == 404
    assert api.post("/runs", {"catalogue": "products", "target": "fly"}, token="runner").status_code == 422
    assert api.post("/runs", {"catalogue": "nope", "target": "analyse"}, token="runner").status_code == 404
    bad_filter = api.post("/runs", {"catalogue": "products", "target": "onboarding", "filter": "price >"},
                          token="runner")
    assert bad_filter.status_code == 400 and bad_filter.json()["position"] == 7
    assert len(api.launcher.launched) == 1


def test_dbt_build_is_a_target_when_the_code_location_has_it(api):
    def start(**body):
        return api.post("/runs", {"catalogue": "products", "target": "dbt_build", **body}, token="runner")

    absent = start()
    assert absent.status_code == 422 and absent.json()["unavailable"] == "dbt_build"
    assert "the Dagster code location has no dbt_build job: set CLARO_DBT_PROJECT" in absent.json()["error"]
    api.launcher.jobs.add("dbt_build")
    assert start(filter="price > 4").status_code == 422  # dbt builds whole tables
    started = start()
    assert started.status_code == 202
    assert api.launcher.launched == [("products", "dbt_build", None, "api:runner")]
    api.launcher.down = True
    assert start().status_code == 503


def test_a_run_when_the_dagster_webserver_is_down_is_a_clear_503(api):
    api.launcher.down = True
    response = api.post("/runs", {"catalogue": "products", "target": "analyse"}, token="runner")
    assert response.status_code == 503
    assert "unreachable" in response.json()["error"] and "claro dev" in response.json()["error"]
    assert api.get("/runs/run-1", token="runner").status_code == 503
    audit = api.get("/audit", token="admin").json()["entries"]
    assert (audit[-1]["action"], audit[-1]["status"], audit[-1]["target"]) == ("run", 503, "products/analyse")


def test_batches(api):
    from claro_dagster.catalogue.batches import BatchRegistry

    store = api.store()
    BatchRegistry(store).register("shop.a.1", catalogue="products", source="shop", filename="a.csv", uri="file:a")
    store.dispose()
    assert [b["key"] for b in api.get("/batches").json()["batches"]] == ["shop.a.1"]
    assert api.get("/batches/shop.a.1").json()["status"] == "received"
    assert api.get("/batches/nope").status_code == 404


# ---------------------------------------------------------------------------------------- the document
def test_every_route_is_in_the_openapi_document(api):
    doc = api.client.get("/api/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    described = {(method.upper(), "/api/v1" + path) for path, ops in doc["paths"].items() for method in ops}
    served = {(method, doc_path(r.path)) for r in api.app.routes if isinstance(r, Route)
              and r.path.startswith("/api/v1/") and r.path not in ("/api/v1/openapi.json", "/api/v1/{rest:anything}")
              for method in r.methods if method != "HEAD"}
    assert served == described
    from openapi_spec_validator import validate

    validate(doc)


def test_other_api_paths_answer_json(api):
    unknown = api.get("/nothing/here")
    assert unknown.status_code == 404 and unknown.json()["status"] == 404
    wrong = api.client.delete("/api/v1/changes", headers=api.auth("reader"))
    assert wrong.status_code == 405 and "DELETE" in wrong.json()["error"]
    odd = api.get("/catalogues/products/records/a%0Ab/c")  # keys may hold any character
    assert odd.status_code == 404 and odd.json()["error"] == "no record 'a\\nb/c' in products"


def test_a_created_record_is_one_created_change_with_a_link_whatever_created_it(api):
    """An import, a proposal a trusted client applies at once, and a proposal a reviewer approves each create a
    record: the feed has one `created` change for it with its values, and its webhook event (the same payload on
    every path) has the link that fetches them with an API token."""
    from urllib.parse import quote

    store = api.store()
    store.import_records("products", pd.DataFrame({"sku": ["D/4 #x"], "title": ["Bowl"], "price": [8.0],
                                                   "status": ["draft"], "launched": [None]}), change_set_id="import-2")
    store.dispose()
    applied = api.post("/catalogues/products/proposals", {"changes": [
        {"record": "E 5?", "field": "title", "value": "Plate", "confidence": 99},
        {"record": "E 5?", "field": "price", "value": 6}]}, token="trusted").json()
    assert (applied["applied"], applied["created"]) == (2, 1)
    queued = api.post("/catalogues/products/proposals", {"changes": [{"record": "F6", "field": "title",
                                                                      "value": "Bowl XL", "confidence": 70}]}).json()
    assert (queued["queued"], queued["created"]) == (1, 0)
    since = api.get("/changes", since=0).json()["next"]
    [item] = api.get("/review", token="reviewer").json()["items"]
    assert api.post(f"/review/{item['id']}/decision", {"decision": "approve"}, token="reviewer").status_code == 200
    feed = api.get("/changes", since=0).json()["changes"]
    new = [c for c in feed if c["record"] in ("D/4 #x", "E 5?", "F6")]
    assert [(c["kind"], c["record"], c["field"], c["type"]) for c in new] == [
        ("created", "D/4 #x", None, "change.applied"), ("created", "E 5?", None, "change.applied"),
        ("created", "F6", None, "change.approved")]  # no updates from null
    assert [c["sequence"] > since for c in new] == [False, False, True]  # the approval created F6, not the proposal
    assert new[1]["values"] == {"sku": "E 5?", "title": "Plate", "price": 6.0, "status": None, "launched": None}
    assert (new[1]["operation"], new[1]["source"]) == ("api", "api:trusted")
    store = api.store()
    events = [e for e in store.events() if e["payload"].get("created") and e["record"] in ("D/4 #x", "E 5?", "F6")]
    store.dispose()
    assert [e["payload"]["link"] for e in events] == ["/api/v1/catalogues/products/records/{record}"] * 3
    assert [set(e["payload"]) for e in events] == [{"created", "link", "operation", "source", "run_id"}] * 3
    for change, event in zip(new, events, strict=True):
        link = event["payload"]["link"].replace("{record}", quote(event["record"], safe=""))
        fetched = api.client.get(link, headers=api.auth("reader"))
        assert fetched.status_code == 200 and fetched.json()["values"] == change["values"]


def test_a_body_over_the_cap_is_refused_unread(api, monkeypatch):
    from claro_dagster.web import api as api_module

    monkeypatch.setattr(api_module, "MAX_BODY_BYTES", 200)
    changes = [{"record": f"R{i}", "field": "title", "value": "x" * 20} for i in range(10)]
    refused = api.post("/catalogues/products/proposals", {"changes": changes})
    assert refused.status_code == 413 and "over 200 bytes" in refused.json()["error"]
    assert api.post("/catalogues/products/proposals", {"changes": changes[:1]}).status_code == 200
