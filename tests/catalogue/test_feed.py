"""The core under the REST API: record pages, the change feed (values of created records, gaps in the ids),
external proposals, and API tokens with scopes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import sqlalchemy as sa

from claro_dagster.catalogue.access import AccessDenied, AccessError
from claro_dagster.catalogue.api_access import ApiTokens
from claro_dagster.catalogue.changes import Change, ChangeSet, StoreError
from claro_dagster.catalogue.feed import BadCursor, change_feed, records_page
from claro_dagster.catalogue.proposals import ProposalError, ProposedChange, propose
from claro_dagster.catalogue.review import ReviewQueue
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.spec.models import ApiSpec, AttributeSpec, CatalogueSpec, ProjectSpec

WIDE = 45


def wide_spec() -> ProjectSpec:
    attributes = {"sku": AttributeSpec(type="text")}
    attributes |= {f"a{i:02d}": AttributeSpec(type="number" if i % 2 else "text") for i in range(WIDE)}
    return ProjectSpec(catalogues={"wide": CatalogueSpec(key="sku", attributes=attributes)},
                       api=ApiSpec(max_confidence=70))


def test_the_feed_gives_a_created_record_its_values_as_created_on_both_backends(store_url):
    store = CatalogueStore(wide_spec(), store_url)
    row = {"sku": ["W1", "W2"]} | {f"a{i:02d}": [float(i) if i % 2 else f"t{i}"] * 2 for i in range(WIDE)}
    row["a44"] = [None, "x"]
    store.import_records("wide", pd.DataFrame(row), change_set_id="import-1")
    store.apply(ChangeSet("later", "wide", "normalize", [Change("W1", "a01", 99.0), Change("W1", "a44", "filled")]))
    store.apply(ChangeSet("again", "wide", "normalize", [Change("W1", "a01", 100.0)]))
    page = change_feed(store, 0)
    created = [c for c in page.changes if c["kind"] == "created"]
    assert [c["record"] for c in created] == ["W1", "W2"]
    assert created[0]["values"] == {k: v[0] for k, v in row.items()}  # as created, not as now
    assert created[1]["values"] == {k: v[1] for k, v in row.items()}
    assert [(c["record"], c["field"], c["old"], c["new"]) for c in page.changes if c["kind"] == "updated"] == [
        ("W1", "a01", 1.0, 99.0), ("W1", "a44", None, "filled"), ("W1", "a01", 99.0, 100.0)]
    assert page.next == page.last
    store.dispose()


def test_a_record_created_field_by_field_is_one_created_change_like_an_imported_one(store_url):
    """Every path that creates a record (a bulk import; a change set setting fields one by one, as enrichment, a
    sheet pull or an API proposal does; a reviewer approving a proposal for a new key) writes one event for the
    record, with the same payload: the feed reports a creation with the values as created, never updates from
    null, and a webhook receiver gets the same link either way."""
    store = CatalogueStore(wide_spec(), store_url)
    store.import_records("wide", pd.DataFrame({"sku": ["I1"], "a00": ["imported"]}), change_set_id="import",
                         run_id="r0", source="erp")
    store.apply(ChangeSet("fields", "wide", "enrich", [Change("F1", "a00", "t"), Change("F1", "a01", 1.0),
                                                       Change("F2", "a02", "u"), Change("F1", "a03", 3.0)],
                          run_id="r1", source="web"))
    store.apply(ChangeSet("held", "wide", "enrich", [Change("R1", "a00", "maybe", 70), Change("R1", "a01", 5.0, 70)],
                          run_id="r2"))
    queue = ReviewQueue(store)
    items = {i.field: i.id for i in queue.list(catalogue="wide")}
    queue.approve([items["a00"]], by="lead")
    queue.approve([items["a01"]], by="lead")  # the record exists now: an update, from the reviewer too
    store.apply(ChangeSet("later", "wide", "normalize", [Change("F1", "a01", 2.0)]))
    page = change_feed(store, 0)
    assert [(c["type"], c["kind"], c["record"], c["field"]) for c in page.changes] == [
        ("change.applied", "created", "I1", None), ("change.applied", "created", "F1", None),
        ("change.applied", "created", "F2", None), ("change.approved", "created", "R1", None),
        ("change.approved", "updated", "R1", "a01"), ("change.applied", "updated", "F1", "a01")]
    created = {c["record"]: c for c in page.changes if c["kind"] == "created"}
    nothing = {f"a{i:02d}": None for i in range(WIDE)}
    assert created["F1"]["values"] == {"sku": "F1", **nothing, "a00": "t", "a01": 1.0, "a03": 3.0}  # as created
    assert created["F2"]["values"] == {"sku": "F2", **nothing, "a02": "u"}
    assert created["R1"]["values"] == {"sku": "R1", **nothing, "a00": "maybe"}
    assert created["I1"]["values"] == {"sku": "I1", **nothing, "a00": "imported"}
    assert [(c["operation"], c.get("source"), c.get("run_id")) for c in created.values()] == [
        ("import", "erp", "r0"), ("enrich", "web", "r1"), ("enrich", "web", "r1"), ("enrich", None, "r2")]
    assert page.changes[-2]["old"] is None and page.changes[-2]["new"] == 5.0
    # what a webhook receiver gets: one event per new record, the same payload whatever the path
    events = {e["record"]: e for e in store.events() if e["payload"].get("created")}
    assert sorted(events) == ["F1", "F2", "I1", "R1"]
    link = "/api/v1/catalogues/wide/records/{record}"
    assert events["I1"]["payload"] == {"created": True, "link": link, "operation": "import", "source": "erp",
                                       "run_id": "r0"}
    assert events["F1"]["payload"] == {"created": True, "link": link, "operation": "enrich", "source": "web",
                                       "run_id": "r1"}
    assert events["R1"]["type"] == "change.approved" and events["R1"]["proposal"] == items["a00"]
    assert [e["field"] for e in store.events() if e["record"] == "F1"] == [None, "a01"]  # no event per field
    store.dispose()


def test_the_feed_waits_at_a_fresh_gap_and_passes_an_old_one(store_url):
    store = CatalogueStore(wide_spec(), store_url)
    e = store.t["events"]
    at = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    with store.engine.begin() as conn:
        for i in (1, 2, 4):  # 3: a transaction still open on PostgreSQL, or one rolled back
            conn.execute(e.insert().values(id=i, type="change.applied", catalogue="wide", record=f"W{i}",
                                           field="a00", change_set=f"cs{i}", payload='{"old": null, "new": "x"}',
                                           at=at))
    fresh = change_feed(store, 0, at=at + timedelta(seconds=5))
    assert [c["sequence"] for c in fresh.changes] == [1, 2] and fresh.next == 2 and fresh.last == 4
    later = change_feed(store, fresh.next, at=at + timedelta(minutes=5))
    assert [c["sequence"] for c in later.changes] == [4] and later.next == 4
    with pytest.raises(BadCursor, match="ahead of the newest change"):
        change_feed(store, 5)
    store.dispose()


def test_record_pages_follow_the_key(tmp_path):
    store = CatalogueStore(wide_spec(), f"sqlite:///{tmp_path / 'c.db'}")
    store.import_records("wide", pd.DataFrame({"sku": ["b", "a", "c"], "a01": [1.0, 2.0, None]}),
                         change_set_id="i")
    first = records_page(store, "wide", columns=["a01"], limit=2)
    assert first.records == [{"sku": "a", "a01": 2.0}, {"sku": "b", "a01": 1.0}]
    assert records_page(store, "wide", columns=["a01"], cursor=first.next_cursor).records == [{"sku": "c", "a01": None}]
    with pytest.raises(BadCursor):
        records_page(store, "wide", cursor="eyJ4IjoxfQ")  # valid base64 JSON, but not a cursor
    assert records_page(store, "wide", columns=["a01", "sku", "a01"]).records[0] == {"a01": 2.0, "sku": "a"}
    store.dispose()


def test_every_read_selects_columns_alike_and_names_each_unknown_one(tmp_path):
    """A page of the API, a read of records and a destination's read of what changed share one column selection:
    the same order (each once, the key first unless asked for) and the same message for fields that do not exist."""
    store = CatalogueStore(wide_spec(), f"sqlite:///{tmp_path / 'c.db'}")
    store.import_records("wide", pd.DataFrame({"sku": ["a"], "a01": [2.0], "a02": ["x"]}), change_set_id="i")
    assert list(records_page(store, "wide", columns=["a02", "a01", "a02"]).records[0]) == ["sku", "a02", "a01"]
    assert list(store.records("wide", columns=["a02", "a01", "a02"]).columns) == ["sku", "a02", "a01"]
    assert list(store.changed_since("wide", 0, columns=["a02", "a01", "a02"]).columns) == ["sku", "a02", "a01"]
    message = ("unknown field(s) 'a44x' (did you mean 'a44'?), 'colour' in wide; fields are: sku, "
               + ", ".join(f"a{i:02d}" for i in range(WIDE)))
    for read in (lambda: records_page(store, "wide", columns=["a01", "a44x", "colour"]),
                 lambda: store.records("wide", columns=["a01", "a44x", "colour"]),
                 lambda: store.changed_since("wide", 0, columns=["a01", "a44x", "colour"])):
        with pytest.raises(StoreError) as refused:
            read()
        assert str(refused.value) == message
    store.dispose()


def test_proposals_are_checked_whole_and_capped(tmp_path):
    store = CatalogueStore(wide_spec(), f"sqlite:///{tmp_path / 'c.db'}")
    with pytest.raises(ProposalError) as refused:
        propose(store, "wide", [ProposedChange("W1", "a01", "12"), ProposedChange("W1", "a00", 12),
                                ProposedChange("W1", "a02", True), ProposedChange("W1", "a04", "ok", 101)],
                token_name="erp", change_set_id="p1")
    assert [p.split(" ")[0].split(":")[0] for p in refused.value.problems] == [
        "changes[0].value", "changes[1].value", "changes[2].value", "changes[3].confidence"]
    assert store.change_set("p1") is None  # nothing written
    done = propose(store, "wide", [ProposedChange("W1", "a01", 12, 95)], token_name="erp", change_set_id="p2")
    assert (done.result.queued, done.capped, done.source) == (1, [0], "api:erp")
    with store.engine.connect() as conn:
        p = store.t["proposals"]
        assert conn.execute(sa.select(p.c.confidence, p.c.source, p.c.operation)).all() == [(70.0, "api:erp", "api")]
    store.dispose()


def test_api_tokens_have_scopes_and_share_the_access_token_rules(tmp_path):
    store = CatalogueStore(wide_spec(), f"sqlite:///{tmp_path / 'c.db'}")
    clock = [datetime(2026, 12, 2, 12, 0, tzinfo=UTC)]
    tokens = ApiTokens(store, clock=lambda: clock[0])
    issued = tokens.create("erp", ["read", "propose", "read"], expires_in=timedelta(days=1), by="lead")
    assert issued.token.scopes == ("read", "propose")
    token = tokens.verify(issued.secret, client="10.0.0.1")
    assert token.allows("read") and token.allows("propose") and not token.allows("run")
    admin = tokens.create("ops", ["admin"], expires_in=timedelta(days=1))
    assert all(tokens.verify(admin.secret, client="x").allows(s) for s in ("read", "propose", "review", "run"))
    with pytest.raises(AccessError, match="unknown scope"):
        tokens.create("bad", ["write"], expires_in=timedelta(days=1))
    with pytest.raises(AccessError, match="at least one --scope"):
        tokens.create("bad", [], expires_in=timedelta(days=1))
    clock[0] += timedelta(days=2)
    with pytest.raises(AccessDenied, match="This API token expired"):
        tokens.verify(issued.secret, client="10.0.0.1")
    # an expired token's name is free again; revoking is immediate
    again = tokens.create("erp", ["read"], expires_in=timedelta(days=1))
    tokens.revoke(again.token.id)
    with pytest.raises(AccessDenied, match="revoked"):
        tokens.verify(again.secret, client="10.0.0.2")
    store.dispose()
