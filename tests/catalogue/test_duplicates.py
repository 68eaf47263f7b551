"""Merge proposals in the store: queued as review items, merged through the writer with references repointed,
rolled back, rejected for good, and re-scored when their records changed. On SQLite and PostgreSQL."""

from __future__ import annotations

import pandas as pd
import pytest

from claro_dagster.catalogue.changes import Change, ChangeSet, StoreError
from claro_dagster.catalogue.duplicates import MERGE_FIELD, Duplicates, ProposalChanged
from claro_dagster.catalogue.feed import change_feed
from claro_dagster.catalogue.review import ReviewQueue
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.spec.models import ProjectSpec

SPEC = {
    "catalogues": {
        "products": {"key": "sku", "attributes": {
            "sku": {"type": "text", "identifier": True}, "title": {"type": "text"}, "brand": {"type": "text"},
            "gtin": {"type": "text", "identifier": True, "format": "gtin"}, "price": {"type": "number"},
            "colour": {"type": "enum", "values": ["red", "blue"]},
            "status": {"type": "enum", "values": ["active", "archived"]},
            "replaces": {"type": "reference", "target": "products"}},
            "dedupe": {"attributes": {"title": 3, "brand": 1, "gtin": 4, "price": 1}, "threshold": 80,
                       "retire_attribute": "status", "retire_value": "archived"}},
        "offers": {"key": "offer", "attributes": {
            "offer": {"type": "text"}, "product": {"type": "reference", "target": "products"},
            "amount": {"type": "number"}}},
    },
    "thresholds": {"default": {"auto_apply": 90, "review": 60, "reject": 40}},
}


@pytest.fixture
def store(store_url):
    s = CatalogueStore(ProjectSpec.model_validate(SPEC), store_url)
    s.import_records("products", pd.DataFrame([
        {"sku": "P1", "title": "Acme Steel Bottle 500ml", "brand": "Acme", "gtin": "5012345678900", "price": 10.0,
         "colour": None, "status": "active", "replaces": None},
        {"sku": "P2", "title": "Acme Steel Botle 0.5 L", "brand": "ACME", "gtin": None, "price": 10.0,
         "colour": "red", "status": "active", "replaces": None},
        {"sku": "P3", "title": "Globex Desk Lamp", "brand": "Globex", "gtin": "5098765432109", "price": 30.0,
         "colour": "blue", "status": "active", "replaces": "P2"},
    ]), change_set_id="import-products", run_id="import-run")
    s.import_records("offers", pd.DataFrame([{"offer": "O1", "product": "P2", "amount": 9.5},
                                             {"offer": "O2", "product": "P3", "amount": 29.0}]),
                     change_set_id="import-offers", run_id="import-run")
    yield s
    s.dispose()


def found_one(store) -> int:
    result = Duplicates(store).find("products", run_id="dedupe-run-1")
    assert result.proposed == 1
    (item,) = ReviewQueue(store).list(operation="dedupe")
    return item.id


def test_proposals_are_review_items_with_both_records_and_per_field_similarity(store):
    item_id = found_one(store)
    item = ReviewQueue(store).get(item_id)
    assert (item.record, item.field, item.new, item.status) == ("P2", MERGE_FIELD, "P1", "queued")
    p = Duplicates(store).get(item_id)
    assert (p.survivor, p.duplicate, p.status) == ("P1", "P2", "open")
    assert p.score >= 80 and p.similarity["gtin"] is None and p.similarity["brand"] == 100.0
    assert p.keep["colour"] == {"value": "red", "source": "P2", "reason": "filled from P2: P1 has none"}
    again = Duplicates(store).find("products", run_id="dedupe-run-2")
    assert (again.proposed, again.already_proposed) == (0, 1)  # the open proposal is not queued twice


def test_approving_merges_through_the_writer_and_repoints_references(store):
    item_id = found_one(store)
    result = ReviewQueue(store).approve([item_id], by="ann")
    assert result.applied == 4  # P1.colour filled, P2 retired, P3.replaces and O1.product repointed
    assert store.record("products", "P1")["colour"] == "red"
    assert store.record("products", "P2")["status"] == "archived"
    assert store.record("products", "P2")["title"] == "Acme Steel Botle 0.5 L"  # nothing of P2 is lost
    assert store.record("products", "P3")["replaces"] == "P1"
    assert store.record("offers", "O1")["product"] == "P1"
    assert store.record("offers", "O2")["product"] == "P3"
    prov = store.provenance("products", "P1", "colour")
    assert (prov.operation, prov.reviewer, prov.source) == ("dedupe", "ann", "merge of P2")
    merged = Duplicates(store).get(item_id)
    assert merged.status == "merged" and merged.merge_run.startswith(f"merge-{item_id}-")
    assert ReviewQueue(store).get(item_id).status == "approved"
    assert Duplicates(store).find("products", run_id="dedupe-run-3").proposed == 0  # P2 is merged
    # the change feed has what the merge applied (it creates no record: each one it writes exists)
    merge = [(c["type"], c["kind"], c["catalogue"], c["record"], c["field"], c["old"], c["new"])
             for c in change_feed(store, 0).changes if c["change_set"].startswith("merge:")]
    assert sorted(merge) == [("change.approved", "updated", "offers", "O1", "product", "P2", "P1"),
                             ("change.approved", "updated", "products", "P1", "colour", None, "red"),
                             ("change.approved", "updated", "products", "P2", "status", "active", "archived"),
                             ("change.approved", "updated", "products", "P3", "replaces", "P2", "P1")]


def test_unmerge_restores_both_records_and_the_repointed_references(store):
    item_id = found_one(store)
    Duplicates(store).merge(item_id, by="ann")
    result = Duplicates(store).unmerge(item_id, by="raj")
    assert result.restored == 4
    assert store.record("products", "P1")["colour"] is None
    assert store.record("products", "P2")["status"] == "active"
    assert store.record("products", "P3")["replaces"] == "P2"
    assert store.record("offers", "O1")["product"] == "P2"
    assert Duplicates(store).get(item_id).status == "rolled_back"
    with pytest.raises(StoreError, match="only a merged proposal"):
        Duplicates(store).unmerge(item_id, by="raj")


def test_a_rejected_pair_is_never_proposed_again(store):
    item_id = found_one(store)
    assert ReviewQueue(store).reject([item_id], by="ann", note="different bottles") == 1
    assert Duplicates(store).get(item_id).status == "rejected"
    assert Duplicates(store).find("products", run_id="dedupe-run-2").proposed == 0
    # ...even after its records change and would score higher
    store.apply(ChangeSet("fix-title", "products", "enrich", [Change("P2", "title", "Acme Steel Bottle 500ml")]))
    assert Duplicates(store).find("products", run_id="dedupe-run-3").proposed == 0
    assert ReviewQueue(store).list(operation="dedupe") == []


def test_a_proposal_whose_records_changed_is_rescored_not_applied(store):
    item_id = found_one(store)
    store.apply(ChangeSet("price-change", "products", "enrich", [Change("P2", "price", 10.4)]))
    with pytest.raises(ProposalChanged, match="changed since the pair was scored"):
        ReviewQueue(store).approve([item_id], by="ann")
    assert store.record("products", "P1")["colour"] is None  # nothing merged
    p = Duplicates(store).get(item_id)
    assert p.status == "open" and p.similarity["price"] < 100
    assert ReviewQueue(store).get(item_id).confidence == p.score
    Duplicates(store).merge(item_id, by="ann")  # looked at again: now it merges
    assert store.record("products", "P1")["colour"] == "red"


def test_a_proposal_that_no_longer_reaches_the_threshold_is_withdrawn(store):
    item_id = found_one(store)
    store.apply(ChangeSet("retitle", "products", "enrich", [Change("P2", "title", "Globex Garden Hose 10m"),
                                                             Change("P2", "brand", "Globex")]))
    with pytest.raises(ProposalChanged, match="below the threshold"):
        Duplicates(store).merge(item_id, by="ann")
    assert Duplicates(store).get(item_id).status == "withdrawn"
    assert ReviewQueue(store).get(item_id).status == "withdrawn"
    assert store.record("products", "P1")["colour"] is None


def test_a_merge_proposal_cannot_be_edited(store):
    item_id = found_one(store)
    with pytest.raises(StoreError, match="is a merge proposal"):
        ReviewQueue(store).edit(item_id, "P3", by="ann")


def test_rolling_back_the_dedupe_run_withdraws_its_proposals(store):
    item_id = found_one(store)
    store.rollback("dedupe-run-1", by="raj")
    assert ReviewQueue(store).get(item_id).status == "withdrawn"
    assert Duplicates(store).get(item_id).status == "withdrawn"
    with pytest.raises(StoreError, match="is withdrawn, not open"):
        Duplicates(store).merge(item_id, by="ann")
    assert Duplicates(store).find("products", run_id="dedupe-run-2").proposed == 1  # may be proposed afresh


def test_rolling_back_the_merge_run_itself_counts_as_unmerged(store):
    item_id = found_one(store)
    Duplicates(store).merge(item_id, by="ann")
    store.rollback(Duplicates(store).get(item_id).merge_run, by="raj")  # `claro rollback --run merge-...`
    assert Duplicates(store).get(item_id).status == "rolled_back"
    assert store.record("offers", "O1")["product"] == "P2"
    assert Duplicates(store).find("products", run_id="dedupe-run-2").proposed == 1  # P2 is a record again
