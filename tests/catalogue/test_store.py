"""Catalogue store behaviour, on the embedded SQLite and on the real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from claro_dagster.catalogue.changes import Change, ChangeSet, StoreError
from claro_dagster.catalogue.migrations import apply_type_change, schema_diff
from claro_dagster.catalogue.review import ReviewQueue
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.spec.models import (
    AttributeSpec,
    CatalogueSpec,
    ProjectSpec,
    ThresholdOverride,
    Thresholds,
    ThresholdsSpec,
)


def make_spec(**attr_overrides) -> ProjectSpec:
    attributes = {
        "sku": AttributeSpec(type="text", required=True),
        "title": AttributeSpec(type="text"),
        "price": AttributeSpec(type="number", min=0),
        "colour": AttributeSpec(type="enum", values=["red", "grey"], synonyms={"grey": ["gray"]}),
        "weight": AttributeSpec(type="text"),
    }
    attributes.update(attr_overrides)
    return ProjectSpec(
        catalogues={"products": CatalogueSpec(key="sku", attributes=attributes)},
        thresholds=ThresholdsSpec(default=Thresholds(auto_apply=90, review=60, reject=40)),
        reviewers={"merch": ["ann", "raj"]},
    )


@pytest.fixture
def store(store_url):
    s = CatalogueStore(make_spec(), store_url)
    yield s
    s.dispose()


def seed(store, run="r1", cs="import-1"):
    frame = pd.DataFrame({"sku": ["A1", "B2", "C3"], "title": ["Mug", "Cup", "Jug"], "price": ["4.5", 3, None],
                          "colour": ["red", "grey", None], "weight": ["1", "2", "3"]})
    return store.import_records("products", frame, change_set_id=cs, run_id=run, source="acme")


def enrich(store, *changes, cs="enrich-1", run="r2"):
    return store.apply(ChangeSet(cs, "products", "enrich", list(changes), run_id=run, source="web", model="m1"))


def test_import_creates_typed_records_with_provenance(store):
    result = seed(store)
    assert (result.created, result.applied) == (3, 10)  # 4 fields x 3 records, less C3's missing price and colour
    assert store.record("products", "A1") == {"sku": "A1", "title": "Mug", "price": 4.5, "colour": "red",
                                              "weight": "1"}
    prov = store.provenance("products", "B2", "price")
    assert (prov.operation, prov.run_id, prov.source, prov.confidence, prov.change_set) == \
        ("import", "r1", "acme", 100.0, "import-1")


@pytest.mark.parametrize(("confidence", "outcome"), [
    (90, "applied"), (89.99, "queued"), (60, "queued"), (59.99, "suggested"), (40, "suggested"), (39.99, "rejected"),
])
def test_gating_at_exact_threshold_boundaries(store, confidence, outcome):
    seed(store)
    result = enrich(store, Change("A1", "title", "Mug XL", confidence, "longer title"))
    counts = {"applied": result.applied, "queued": result.queued, "suggested": result.suggested,
              "rejected": result.rejected}
    assert counts == {k: int(k == outcome) for k in counts}
    assert store.record("products", "A1")["title"] == ("Mug XL" if outcome == "applied" else "Mug")


def test_thresholds_resolve_per_attribute_and_source(store_url):
    spec = make_spec(title=AttributeSpec(type="text", thresholds=ThresholdOverride(auto_apply=99)))
    spec.thresholds.sources["web"] = ThresholdOverride(auto_apply=50, review=45)
    s = CatalogueStore(spec, store_url)
    seed(s)
    by_attribute = s.apply(ChangeSet("e1", "products", "enrich", [Change("A1", "title", "x", 95)], source="feed"))
    by_source = s.apply(ChangeSet("e2", "products", "enrich", [Change("A1", "title", "y", 55)], source="web"))
    assert (by_attribute.queued, by_source.applied) == (1, 1)
    s.dispose()


def test_same_change_set_twice_changes_nothing_and_adds_no_history(store):
    seed(store)
    change = Change("A1", "price", 5.0, 95, "supplier price list")
    first = enrich(store, change)
    events_after_first = len(store.events())
    second = enrich(store, change)
    assert first.applied == 1 and second.already_applied
    assert len(store.events()) == events_after_first
    assert [e.kind for e in store.history("products", "A1", "price")] == ["created", "update"]
    again = seed(store)  # re-running the import stage with the same identity
    assert again.already_applied


def test_reimport_of_unchanged_rows_under_a_new_identity_writes_nothing(store):
    seed(store)
    events = len(store.events())
    result = seed(store, run="r9", cs="import-2")
    assert (result.applied, result.created, result.unchanged) == (0, 0, 12)
    assert len(store.events()) == events
    assert store.provenance("products", "A1", "title").run_id == "r1"


def test_reimport_with_one_changed_value_writes_only_that_field(store):
    seed(store)
    frame = pd.DataFrame({"sku": ["A1", "B2", "C3"], "title": ["Mug", "Cup", "Big jug"], "price": [4.5, 3, None],
                          "colour": ["red", "grey", None], "weight": ["1", "2", "3"]})
    result = store.import_records("products", frame, change_set_id="import-2", run_id="r3")
    assert (result.applied, result.unchanged) == (1, 11)
    [entry] = [e for e in store.history("products", "C3", "title") if e.kind == "update"]
    assert (entry.old, entry.new, entry.provenance.run_id) == ("Jug", "Big jug", "r3")


def test_rollback_restores_exact_previous_values_and_provenance(store):
    seed(store)
    before = {f: store.provenance("products", "A1", f) for f in ("title", "price")}
    enrich(store, Change("A1", "title", "Blue mug", 95), Change("A1", "price", 9.99, 99),
           Change("B2", "title", "Tea cup", 95))
    result = store.rollback("r2", record="A1", by="ann")
    assert result.restored == 2 and not result.conflicts
    assert store.record("products", "A1")["title"] == "Mug" and store.record("products", "A1")["price"] == 4.5
    assert {f: store.provenance("products", "A1", f) for f in ("title", "price")} == before
    assert store.record("products", "B2")["title"] == "Tea cup"  # other record untouched
    last = store.history("products", "A1", "title")[-1]
    assert (last.kind, last.old, last.new) == ("rollback", "Blue mug", "Mug")
    assert store.change_set(result.change_set).applied == 2
    assert store.events()[-1]["payload"]["operation"] == "rollback"


def test_rollback_of_one_field_and_of_an_import(store):
    seed(store)
    enrich(store, Change("A1", "title", "Blue mug", 95), Change("A1", "price", 9.99, 99))
    store.rollback("r2", fields=["price"], by="ann")
    assert store.record("products", "A1") | {} == {"sku": "A1", "title": "Blue mug", "price": 4.5, "colour": "red",
                                                   "weight": "1"}
    result = store.rollback("r1", by="ann")  # the import: A1.title was rewritten by r2, so A1 stays
    assert result.conflicts == ["A1.title"]
    assert store.record("products", "B2") is None and store.record("products", "C3") is None
    assert store.record("products", "A1")["title"] == "Blue mug"
    with pytest.raises(StoreError, match="no change set was written by run 'nope'"):
        store.rollback("nope", by="ann")


def test_review_approve_reject_edit_skip_snooze(store):
    seed(store)
    enrich(store, Change("A1", "title", "Red mug", 70, "colour in title", "https://acme.example/a1"),
           Change("B2", "title", "Grey cup", 65), Change("C3", "title", "Jug 1l", 75), Change("C3", "price", 7, 61),
           Change("A1", "price", 5, 62))
    queue = ReviewQueue(store)
    items = {(i.record, i.field): i for i in queue.list(catalogue="products")}
    assert len(items) == 5
    assert [i.record for i in queue.list(min_confidence=70)] == ["A1", "C3"]

    queue.approve([items[("A1", "title")].id], by="ann")
    prov = store.provenance("products", "A1", "title")
    assert store.record("products", "A1")["title"] == "Red mug"
    assert (prov.reviewer, prov.operation, prov.confidence, prov.source) == ("ann", "enrich", 70, "web")

    queue.edit(items[("B2", "title")].id, "Slate cup", by="raj")
    prov = store.provenance("products", "B2", "title")
    assert store.record("products", "B2")["title"] == "Slate cup"
    assert (prov.source, prov.reviewer) == ("reviewer:raj", "raj")

    queue.reject([items[("C3", "title")].id], by="ann", note="wrong size")
    assert store.record("products", "C3")["title"] == "Jug"

    queue.skip([items[("C3", "price")].id], by="ann")
    assert queue.list()[-1].id == items[("C3", "price")].id  # skipped ones sort last, still open

    later = datetime.now(UTC) + timedelta(hours=2)
    queue.snooze([items[("A1", "price")].id], later, by="ann")
    assert items[("A1", "price")].id not in [i.id for i in queue.list()]
    assert items[("A1", "price")].id in [i.id for i in queue.list(at=later + timedelta(seconds=1))]

    with pytest.raises(StoreError, match="not open"):
        queue.approve([items[("A1", "title")].id], by="ann")
    decided = {i.id: (i.status, i.decided_by) for i in queue.list(status=["approved", "edited", "rejected"])}
    assert set(decided.values()) == {("approved", "ann"), ("edited", "raj"), ("rejected", "ann")}
    types = [e["type"] for e in store.events() if e["type"] != "change.applied"]
    assert types.count("change.queued_for_review") == 5
    assert types.count("change.approved") == 2 and types.count("change.rejected") == 1


def test_bulk_decisions_by_filter_and_reviewer_groups(store_url):
    spec = make_spec(title=AttributeSpec(type="text", reviewers=["merch"]))
    s = CatalogueStore(spec, store_url)
    seed(s)
    s.apply(ChangeSet("e1", "products", "enrich", [Change(k, "title", f"{k} new", 70) for k in ("A1", "B2", "C3")]
                      + [Change("A1", "weight", "2", 70)], source="web"))
    queue = ReviewQueue(s)
    assert len(queue.list(reviewer="ann")) == 4 and len(queue.list(reviewer="zoe")) == 1
    result = queue.approve_where(by="ann", attribute="title", source="web")
    assert result.applied == 3 and s.record("products", "C3")["title"] == "C3 new"
    assert queue.reject_where(by="ann", catalogue="products") == 1
    assert queue.list() == []
    s.dispose()


def test_outbox_event_is_written_in_the_same_transaction_as_the_change(store):
    seed(store)
    events = len(store.events())
    with pytest.raises(StoreError, match="field 'price': 'cheap' is not a number"):
        enrich(store, Change("A1", "title", "New", 95), Change("A1", "price", "cheap", 95))
    assert store.record("products", "A1")["title"] == "Mug"
    assert len(store.events()) == events  # neither the value nor its event
    fixed = enrich(store, Change("A1", "title", "New", 95), Change("A1", "price", 6, 95))  # same identity works now
    assert fixed.applied == 2
    new = store.events(after=events)
    assert [(e["type"], e["record"], e["field"]) for e in new] == [("change.applied", "A1", "title"),
                                                                    ("change.applied", "A1", "price")]
    assert new[0]["payload"]["old"] == "Mug" and new[0]["payload"]["new"] == "New"


def test_records_filter_and_bad_input_errors(store):
    seed(store)
    frame = store.records("products", filter='price >= 4 or colour == "grey"')
    assert list(frame["sku"]) == ["A1", "B2"]
    assert list(store.records("products", filter="price is null")["sku"]) == ["C3"]
    with pytest.raises(StoreError, match="unknown column"):
        store.import_records("products", pd.DataFrame({"sku": ["X"], "titel": ["t"]}), change_set_id="bad")
    with pytest.raises(StoreError, match="'A1' appears more than once"):
        store.import_records("products", pd.DataFrame({"sku": ["A1", "A1"]}), change_set_id="bad2")
    with pytest.raises(StoreError, match="did you mean 'price'"):
        enrich(store, Change("A1", "prise", 1, 99), cs="bad3")


def test_adding_an_attribute_keeps_data_and_type_change_waits_for_confirmation(store_url):
    s = CatalogueStore(make_spec(), store_url)
    seed(s)
    s.dispose()
    # The team adds `material` and turns `weight` from text into a number.
    spec = make_spec(material=AttributeSpec(type="text"), weight=AttributeSpec(type="number"))
    s = CatalogueStore(spec, store_url)
    assert s.record("products", "A1") == {"sku": "A1", "title": "Mug", "price": 4.5, "colour": "red",
                                          "weight": "1", "material": None}
    s.import_records("products", pd.DataFrame({"sku": ["D4"], "weight": ["heavy"]}), change_set_id="i2")
    diff = schema_diff(s)
    [change] = diff.type_changes
    assert (change.attribute, change.stored_type, change.spec_type, change.values) == ("weight", "text", "number", 4)
    assert change.failures == [("D4", "heavy", "could not convert string to float: 'heavy'")]
    assert s.record("products", "A1")["weight"] == "1"  # nothing applied yet
    apply_type_change(s, "products", "weight", by="ann")
    s.dispose()
    s = CatalogueStore(spec, store_url)
    assert s.pending_type_changes() == []
    assert s.record("products", "A1")["weight"] == 1.0
    assert s.record("products", "D4")["weight"] is None
    [lost] = [e for e in s.history("products", "D4", "weight") if e.kind == "schema"]
    assert lost.old == "heavy"
    assert s.import_records("products", s.records("products"), change_set_id="i3").applied == 0  # hashes refreshed
    s.dispose()


def test_overwrites_from_a_less_trusted_source_wait_for_review_while_gaps_fill(store):
    seed(store)
    frame = pd.DataFrame({"sku": ["A1", "C3", "D4"], "title": ["Mug v2", "Jug", "Pot"], "price": [4.5, 2.0, 8.0]})
    result = store.import_records("products", frame, change_set_id="feed-1", run_id="r5", source="feed",
                                  overwrite_confidence=70)
    assert (result.created, result.queued) == (1, 1)  # D4 new; A1's title overwrite queued
    assert store.record("products", "C3")["price"] == 2.0  # C3 had no price: filled
    [item] = ReviewQueue(store).list()
    assert (item.record, item.field, item.old, item.new, item.confidence) == ("A1", "title", "Mug", "Mug v2", 70)


def test_routing_rules_assign_reviewers_by_confidence_and_source(store_url):
    from claro_dagster.spec.models import PipelineSpec, RoutingRule, SourceSpec

    spec = make_spec(title=AttributeSpec(type="text", reviewers=["merch"]))
    spec.sources["feed"] = SourceSpec(catalogue="products")
    spec.pipelines["onboarding"] = PipelineSpec(catalogue="products", sources=["feed"], routing=[
        RoutingRule(confidence_below=80, reviewers=["senior"])])
    s = CatalogueStore(spec, store_url)
    seed(s)
    s.apply(ChangeSet("e1", "products", "enrich", [Change("A1", "title", "low", 70), Change("B2", "title", "ok", 85)],
                      source="feed"))
    routed = {i.record: i.reviewers for i in ReviewQueue(s).list()}
    assert routed == {"A1": ("senior",), "B2": ("merch",)}  # below 80 goes to the senior group
    s.dispose()
