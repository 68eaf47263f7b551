"""The review page (`/review`) through Starlette's TestClient, and the access links underneath it."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from starlette.testclient import TestClient

from claro_dagster.catalogue.access import (
    AccessDenied,
    AccessError,
    AccessTokens,
    known_reviewers,
    parse_duration,
    token_hash,
)
from claro_dagster.catalogue.changes import Change, ChangeSet
from claro_dagster.catalogue.review import ReviewQueue
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.spec.models import (
    AttributeSpec,
    CatalogueSpec,
    PipelineSpec,
    ProjectSpec,
    RoutingRule,
    SourceSpec,
)
from claro_dagster.web.app import create_app
from claro_dagster.web.review_page import COOKIE, ReviewPage

START = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.at = START

    def __call__(self) -> datetime:
        return self.at


def make_spec() -> ProjectSpec:
    return ProjectSpec(
        catalogues={"products": CatalogueSpec(key="sku", attributes={
            "sku": AttributeSpec(type="text", required=True), "title": AttributeSpec(type="text"),
            "price": AttributeSpec(type="number")})},
        reviewers={"pricing": ["ann", "raj"]},
        sources={"shop": SourceSpec(catalogue="products", kind="upload"),
                 "feed": SourceSpec(catalogue="products", kind="upload")},
        pipelines={"onboarding": PipelineSpec(catalogue="products")},
    )


class NoLauncher:
    def launch(self, *a):
        raise AssertionError("the review page launches nothing")

    def status(self, ref):
        raise AssertionError("the review page launches nothing")


@pytest.fixture
def project(tmp_path):
    spec = make_spec()
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = CatalogueStore(spec, url)
    store.import_records("products", pd.DataFrame({"sku": ["A1", "B2", "C3"], "title": ["Mug", "Cup", "Jug"],
                                                   "price": [4.5, 3.0, 12.0]}), change_set_id="import-1")
    # 70 lies between the review (50) and auto-apply (90) thresholds: queued for a person
    store.apply(ChangeSet("enrich-1", "products", "enrich", [
        Change(k, "title", f"{k} <b>XL</b>", 70, "longer title", f"feed.csv line {n}")
        for n, k in enumerate(("A1", "B2", "C3"), start=2)], source="feed"))
    store.apply(ChangeSet("price-1", "products", "normalize", [Change("A1", "price", 5.5, 65, "new list")],
                          source="shop"))
    store.dispose()
    clock = Clock()

    def open_store(_spec=None):
        return CatalogueStore(spec, url)

    app = create_app(lambda: spec, open_store, NoLauncher(), signing_secret="x",
                     review_page=ReviewPage(lambda: spec, open_store, secret="test-secret", clock=clock))
    return app, open_store, clock


def issue(open_store, clock, who="ann", expires=timedelta(days=30), kind="review"):
    store = open_store()
    try:
        return AccessTokens(store, clock=clock).issue(kind, who, expires_in=expires, by="lead")
    finally:
        store.dispose()


def items(open_store, **criteria):
    store = open_store()
    try:
        return {(i.record, i.field): i for i in ReviewQueue(store).list(**criteria)}
    finally:
        store.dispose()


def sign_in(client, open_store, clock, who="ann"):
    issued = issue(open_store, clock, who)
    answer = client.get(f"/review/login?token={issued.secret}", follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/review"
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/review" in cookie
    return issued


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def test_a_reviewer_link_signs_in_and_shows_the_queue_escaped(project):
    app, open_store, clock = project
    with TestClient(app) as client:
        sign_in(client, open_store, clock)
        page = client.get("/review")
    assert page.status_code == 200
    assert "Signed in as <strong>ann</strong>" in page.text
    assert "4 open item(s)" in page.text
    assert "A1 &lt;b&gt;XL&lt;/b&gt;" in page.text and "<b>XL" not in page.text  # values are escaped
    assert "feed.csv line 2" in page.text and ">70<" in page.text and ">Mug<" in page.text
    assert page.headers["referrer-policy"] == "no-referrer"
    for control in ("f-catalogue", "f-operation", "f-attribute", "f-source", "f-min_confidence",
                    "f-max_confidence", "f-reviewer", "value-1", "pick-1", "action", "until", "note"):
        assert f'for="{control}"' in page.text, f"control {control} has no label"


def test_filters_are_those_of_the_command_line(project):
    app, open_store, clock = project
    with TestClient(app) as client:
        sign_in(client, open_store, clock)
        by_source = client.get("/review?source=shop").text
        by_attribute = client.get("/review?attribute=title&min_confidence=69").text
        by_operation = client.get("/review?operation=normalize&catalogue=products").text
        bad = client.get("/review?max_confidence=lots")
    assert "1 open item(s)" in by_source and "new list" in by_source and "longer title" not in by_source
    assert "3 open item(s)" in by_attribute
    assert "1 open item(s)" in by_operation
    assert bad.status_code == 200 and "max confidence must be a number, not &#x27;lots&#x27;" in bad.text


def test_bulk_approve_and_edit_are_recorded_with_the_reviewer(project):
    app, open_store, clock = project
    queued = items(open_store)
    a1, b2, c3 = (queued[(k, "title")].id for k in ("A1", "B2", "C3"))
    price = queued[("A1", "price")].id
    with TestClient(app) as client:
        sign_in(client, open_store, clock)
        csrf = csrf_of(client.get("/review").text)
        approved = client.post("/review/decide", data={"csrf": csrf, "action": "approve", "ids": [a1, b2],
                                                       "f_attribute": "title"}, follow_redirects=False)
        assert approved.status_code == 303 and approved.headers["location"] == "/review?attribute=title"
        after = client.get(approved.headers["location"]).text
        assert "Approved 2 item(s): 2 value(s) written" in after and "1 open item(s)" in after
        edited = client.post("/review/decide", data={"csrf": csrf, "action": "edit", "ids": [c3, price],
                                                     f"value-{c3}": "Jug (large)", f"value-{price}": "6.25"})
        assert "Edited 2 item(s)" in edited.text
    store = open_store()
    try:
        records = store.records("products").set_index("sku")
        assert records.loc["A1", "title"] == "A1 <b>XL</b>" and records.loc["C3", "title"] == "Jug (large)"
        assert float(records.loc["A1", "price"]) == 6.25
        assert store.provenance("products", "A1", "title").reviewer == "ann"
        assert store.provenance("products", "C3", "title").reviewer == "ann"
        decided = {i.id: (i.status, i.decided_by) for i in ReviewQueue(store).list(status=["approved", "edited"])}
    finally:
        store.dispose()
    assert decided == {a1: ("approved", "ann"), b2: ("approved", "ann"), c3: ("edited", "ann"),
                       price: ("edited", "ann")}


def test_one_item_buttons_reject_skip_and_snooze(project):
    app, open_store, clock = project
    queued = items(open_store)
    a1, b2, c3 = (queued[(k, "title")].id for k in ("A1", "B2", "C3"))
    with TestClient(app) as client:
        sign_in(client, open_store, clock, who="raj")
        csrf = csrf_of(client.get("/review").text)
        assert "Rejected 1 item(s)" in client.post("/review/decide", data={"csrf": csrf, "one": f"reject:{a1}",
                                                                          "ids": [b2]}).text  # the row wins
        assert "Skipped 1 item(s)" in client.post("/review/decide", data={"csrf": csrf, "one": f"skip:{b2}"}).text
        snoozed = client.post("/review/decide", data={"csrf": csrf, "action": "snooze", "ids": [c3],
                                                      "until": "2026-12-05T09:00"}).text
        assert "Snoozed 1 item(s) until 2026-12-05 09:00 UTC" in snoozed
        again = client.post("/review/decide", data={"csrf": csrf, "one": f"approve:{a1}"}).text
        assert "Nothing was decided: review item(s) " in again and "are not open" in again
        empty_edit = client.post("/review/decide", data={"csrf": csrf, "one": f"edit:{b2}"}).text
        assert "in its &#x27;New value&#x27; box" in empty_edit
    store = open_store()
    try:
        queue = ReviewQueue(store)
        assert queue.get(a1).status == "rejected" and queue.get(a1).decided_by == "raj"
        assert queue.get(b2).status == "skipped" and queue.get(b2).decided_by == "raj"
        assert queue.get(c3).status == "snoozed"
        assert queue.get(c3).snoozed_until == datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
        assert store.records("products").set_index("sku").loc["A1", "title"] == "Mug"
    finally:
        store.dispose()


def test_a_post_without_the_session_csrf_token_is_refused(project):
    app, open_store, clock = project
    a1 = items(open_store)[("A1", "title")].id
    with TestClient(app) as client:
        sign_in(client, open_store, clock)
        forged = client.post("/review/decide", data={"csrf": "guess", "action": "approve", "ids": [a1]})
        missing = client.post("/review/decide", data={"action": "approve", "ids": [a1]})
    assert forged.status_code == 403 and "security token does not match" in forged.text
    assert missing.status_code == 403
    assert items(open_store)[("A1", "title")].status == "queued"


def test_no_session_a_forged_cookie_and_a_portal_link_are_refused(project):
    app, open_store, clock = project
    portal = issue(open_store, clock, who="shop", kind="portal")
    with TestClient(app) as client:
        assert client.get("/review").status_code == 401
        client.cookies.set(COOKIE, "eyJ0IjoxLCJyIjoiYW5uIiwiY3NyZiI6IngifQ.forged.sig")
        assert client.get("/review").status_code == 401
        client.cookies.clear()
        wrong_kind = client.get(f"/review/login?token={portal.secret}")
    assert wrong_kind.status_code == 403 and "This link is not valid" in wrong_kind.text


def test_expired_and_revoked_links_are_refused_and_end_the_session(project):
    app, open_store, clock = project
    with TestClient(app) as client:
        issued = sign_in(client, open_store, clock)
        store = open_store()
        try:
            AccessTokens(store, clock=clock).revoke(issued.token.id)
        finally:
            store.dispose()
        ended = client.get("/review")
        assert ended.status_code == 403 and "expired or been revoked" in ended.text
        again = client.get(f"/review/login?token={issued.secret}")
        assert again.status_code == 403 and "This link has been revoked" in again.text

        short = issue(open_store, clock, expires=timedelta(hours=1))
        clock.at = START + timedelta(hours=1)
        expired = client.get(f"/review/login?token={short.secret}")
    assert expired.status_code == 403
    assert "This link expired on 2026-12-02 10:00 UTC" in expired.text and "<h1>Access refused</h1>" in expired.text


def test_a_reviewer_removed_from_the_spec_is_refused(project):
    app, open_store, clock = project
    stranger = issue(open_store, clock, who="eve")
    with TestClient(app) as client:
        answer = client.get(f"/review/login?token={stranger.secret}")
    assert answer.status_code == 403 and "eve is no longer a reviewer" in answer.text


def test_failures_are_rate_limited_per_address_even_for_a_good_token(project):
    _app, open_store, clock = project
    good = issue(open_store, clock)
    store = open_store()
    try:
        tokens = AccessTokens(store, clock=clock, max_failures=3, window=timedelta(minutes=15))
        for n in range(3):
            with pytest.raises(AccessDenied, match="not valid"):
                tokens.verify(f"guess-{n}", kind="review", client="10.0.0.9")
        with pytest.raises(AccessDenied, match="Too many failed attempts") as limited:
            tokens.verify(good.secret, kind="review", client="10.0.0.9")
        assert limited.value.rate_limited
        assert tokens.verify(good.secret, kind="review", client="10.0.0.10").subject == "ann"  # another address
        clock.at = START + timedelta(minutes=15)  # the window has passed
        assert tokens.verify(good.secret, kind="review", client="10.0.0.9").subject == "ann"
        assert tokens.get(good.token.id).last_used_at == clock.at
    finally:
        store.dispose()


def test_the_login_page_answers_429_when_rate_limited(project):
    app, open_store, clock = project
    good = issue(open_store, clock)
    with TestClient(app) as client:
        answers = [client.get(f"/review/login?token=wrong{n}").status_code for n in range(10)]
        limited = client.get(f"/review/login?token={good.secret}")
    assert answers == [403] * 10
    assert limited.status_code == 429 and "Too many failed attempts" in limited.text


def test_tokens_are_stored_hashed_and_random(project):
    _app, open_store, clock = project
    first, second = issue(open_store, clock), issue(open_store, clock)
    assert first.secret != second.secret and len(first.secret) >= 43
    store = open_store()
    try:
        with store.engine.connect() as conn:
            stored = [r[0] for r in conn.exec_driver_sql("select token_hash from claro_access_tokens").fetchall()]
    finally:
        store.dispose()
    assert sorted(stored) == sorted([token_hash(first.secret), token_hash(second.secret)])
    assert first.secret not in str(stored)
    assert first.link("https://claro.example.com/") == f"https://claro.example.com/review/login?token={first.secret}"


@pytest.mark.parametrize(("text", "expected"), [("90d", timedelta(days=90)), ("12h", timedelta(hours=12)),
                                                ("2w", timedelta(weeks=2)), ("30m", timedelta(minutes=30)),
                                                ("7", timedelta(days=7))])
def test_durations(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "0d", "-1d", "soon", "3y"])
def test_bad_durations_say_what_to_write(text):
    with pytest.raises(AccessError, match="not a duration such as 90d"):
        parse_duration(text)


def test_sign_out_ends_the_session_and_needs_the_csrf_token(project):
    app, open_store, clock = project
    with TestClient(app) as client:
        sign_in(client, open_store, clock)
        csrf = csrf_of(client.get("/review").text)
        assert client.post("/review/logout", data={"csrf": "wrong"}).status_code == 403
        assert client.get("/review").status_code == 200  # still signed in
        out = client.post("/review/logout", data={"csrf": csrf})
        assert out.status_code == 200 and "Signed out" in out.text
        assert client.get("/review").status_code == 401


def test_over_https_the_session_cookie_is_secure(project):
    app, open_store, clock = project
    issued = issue(open_store, clock)
    with TestClient(app, base_url="https://claro.example.com") as client:
        answer = client.get(f"/review/login?token={issued.secret}", follow_redirects=False)
    assert answer.status_code == 303 and "Secure" in answer.headers["set-cookie"]


def test_reviewers_are_group_members_and_people_named_in_routing_rules():
    spec = make_spec()
    spec.pipelines["onboarding"].routing.append(RoutingRule(reviewers=["pricing", "zoe"]))
    assert known_reviewers(spec) == ["ann", "raj", "zoe"]  # the group `pricing` is not a person
