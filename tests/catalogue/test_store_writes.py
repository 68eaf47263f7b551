"""What a write may change: absent columns, empty cells and defaults (issue 7 item 1); rollback of
everything a run caused, review decisions included, and who decided each value (item 2); the one writer
(item 3). On the embedded SQLite and on the real PostgreSQL."""

from __future__ import annotations

import pandas as pd
import pytest

from claro_dagster.catalogue.changes import Change, ChangeSet, StoreError
from claro_dagster.catalogue.review import ReviewQueue
from claro_dagster.catalogue.store import CatalogueStore, NothingToRollBack
from claro_dagster.spec.models import AttributeSpec, CatalogueSpec, ProjectSpec, Thresholds, ThresholdsSpec


def make_spec() -> ProjectSpec:
    return ProjectSpec(
        catalogues={"products": CatalogueSpec(key="sku", attributes={
            "sku": AttributeSpec(type="text", required=True),
            "title": AttributeSpec(type="text"),
            "price": AttributeSpec(type="number"),
            "stock": AttributeSpec(type="number", default=0),
            "status": AttributeSpec(type="enum", values=["active", "draft"], default="draft"),
        })},
        thresholds=ThresholdsSpec(default=Thresholds(auto_apply=90, review=60, reject=40)),
    )


@pytest.fixture
def store(store_url):
    s = CatalogueStore(make_spec(), store_url)
    s.import_records("products", pd.DataFrame({
        "sku": ["A1", "B2"], "title": ["Mug", "Cup"], "price": [4.5, 3.0], "stock": [7, 2],
        "status": ["active", "active"]}), change_set_id="import-1", run_id="r1", source="acme")
    yield s
    s.dispose()


def statuses(store) -> dict:
    frame = store.records("products")
    return dict(zip(frame["sku"], frame["status"], strict=True))


# ---------------------------------------------------------------------------------------------- item 1
def test_a_file_without_a_column_leaves_that_attribute_alone(store):
    # The file has only Product Code, Product Name, Price (mapped to sku, title, price).
    result = store.import_records("products", pd.DataFrame({"sku": ["A1", "B2"], "title": ["Mug", "Cup"],
                                                            "price": [5.0, 3.0]}),
                                  change_set_id="import-2", run_id="r2", source="globex")
    assert result.applied == 1 and result.queued == 0
    assert statuses(store) == {"A1": "active", "B2": "active"}
    assert store.record("products", "A1")["stock"] == 7
    assert [(e.field, e.new) for e in store.history("products", "A1") if e.kind == "update"] == [("price", 5.0)]


def test_an_empty_cell_on_an_existing_record_is_ignored_by_default(store):
    result = store.import_records("products", pd.DataFrame({"sku": ["A1", "B2"], "title": ["Mug", None],
                                                            "status": [None, "active"]}),
                                  change_set_id="import-2", run_id="r2", source="globex", overwrite_confidence=70)
    assert (result.applied, result.queued) == (0, 0)
    assert ReviewQueue(store).list() == []
    assert store.record("products", "B2")["title"] == "Cup" and statuses(store)["A1"] == "active"


def test_empty_cells_clear_goes_through_the_gate_with_its_reason(store):
    # A trusted source clears at once; the reason says which file cleared it.
    store.import_records("products", pd.DataFrame({"sku": ["A1"], "title": [None]}), change_set_id="import-2",
                         run_id="r2", empty_cells="clear", clear_reason="cleared: empty cell in acme.csv")
    assert store.record("products", "A1")["title"] is None
    [entry] = [e for e in store.history("products", "A1", "title") if e.kind == "update"]
    assert (entry.old, entry.new, entry.reason) == ("Mug", None, "cleared: empty cell in acme.csv")
    # A less trusted one: the clear waits for a reviewer like any other overwrite.
    result = store.import_records("products", pd.DataFrame({"sku": ["B2"], "status": [None]}),
                                  change_set_id="import-3", run_id="r3", overwrite_confidence=70,
                                  empty_cells="clear", clear_reason="cleared: empty cell in globex.csv")
    assert result.queued == 1 and statuses(store)["B2"] == "active"
    [item] = ReviewQueue(store).list()
    assert (item.record, item.field, item.old, item.new, item.reason) == \
        ("B2", "status", "active", None, "cleared: empty cell in globex.csv")
    ReviewQueue(store).approve([item.id], by="ann")
    assert statuses(store)["B2"] is None


def test_defaults_fill_new_records_only(store):
    result = store.import_records("products", pd.DataFrame({"sku": ["A1", "C3", "D4"], "title": ["Mug", "Jug", "Pot"],
                                                            "status": [None, None, "active"]}),
                                  change_set_id="import-2", run_id="r2")
    assert result.created == 2
    assert statuses(store) == {"A1": "active", "B2": "active", "C3": "draft", "D4": "active"}
    assert store.record("products", "C3")["stock"] == 0.0  # column absent: the default too
    assert store.record("products", "A1")["stock"] == 7
    assert store.provenance("products", "C3", "status").change_set == "import-2"


def test_unknown_empty_cells_setting_is_refused(store):
    with pytest.raises(StoreError, match="empty_cells must be 'ignore' or 'clear'"):
        store.import_records("products", pd.DataFrame({"sku": ["A1"]}), change_set_id="x", empty_cells="wipe")


# ---------------------------------------------------------------------------------------------- item 2
def queue_price_changes(store, run="r2"):
    """A less trusted file proposes new prices for both records: they wait for review."""
    result = store.import_records("products", pd.DataFrame({"sku": ["A1", "B2"], "price": [9.0, 8.0],
                                                            "title": ["Mug", "Tea cup"]}),
                                  change_set_id=f"import-{run}", run_id=run, source="globex", overwrite_confidence=70)
    assert result.queued == 3
    return {(i.record, i.field): i for i in ReviewQueue(store).list()}


def test_rollback_of_a_run_restores_what_reviewers_approved_and_edited_of_it(store):
    before = {(k, f): (store.record("products", k)[f], store.provenance("products", k, f))
              for k in ("A1", "B2") for f in ("price", "title")}
    items = queue_price_changes(store)
    queue = ReviewQueue(store)
    queue.approve([items[("A1", "price")].id, items[("B2", "title")].id], by="ann")
    queue.edit(items[("B2", "price")].id, 7.5, by="raj")
    assert store.record("products", "A1")["price"] == 9.0 and store.record("products", "B2")["price"] == 7.5
    # The decisions keep the run that proposed them.
    assert store.provenance("products", "A1", "price").run_id == "r2"
    result = store.rollback("r2", by="zoe")
    assert (result.restored, result.conflicts) == (3, [])
    after = {(k, f): (store.record("products", k)[f], store.provenance("products", k, f))
             for k in ("A1", "B2") for f in ("price", "title")}
    assert after == before  # values and provenance, exactly
    last = store.history("products", "A1", "price")[-1]
    assert (last.kind, last.old, last.new, last.by) == ("rollback", 9.0, 4.5, "zoe")


def test_history_names_who_decided_each_value(store):
    items = queue_price_changes(store)
    queue = ReviewQueue(store)
    queue.approve([items[("A1", "price")].id], by="ann")
    queue.reject([items[("B2", "price")].id], by="raj", note="too dear")
    store.rollback("r2", record="A1", by="zoe")
    a1 = [(e.kind, e.new, e.by) for e in store.history("products", "A1", "price")]
    assert a1 == [("created", 4.5, None), ("review", 9.0, "ann"), ("rollback", 4.5, "zoe")]
    approved = store.history("products", "A1", "price")[1]
    assert (approved.proposal, approved.proposed_in) == (items[("A1", "price")].id, "import-r2")
    [rejected] = [e for e in store.history("products", "B2", "price") if e.kind == "rejected"]
    assert (rejected.old, rejected.new, rejected.by, rejected.reason) == (3.0, 8.0, "raj", "too dear")


def test_rollback_withdraws_the_changes_of_the_run_that_still_wait_for_review(store):
    items = queue_price_changes(store)
    queue = ReviewQueue(store)
    queue.approve([items[("A1", "price")].id], by="ann")
    result = store.rollback("r2", by="zoe")
    assert (result.restored, result.withdrawn) == (1, 2)
    assert "withdrew 2 of its changes that waited for review" in result.summary()
    assert queue.list(catalogue="products") == []  # nobody can approve a rolled-back run's value later
    withdrawn = queue.list(status="withdrawn")
    assert {(i.record, i.field, i.decided_by) for i in withdrawn} == {("B2", "price", "zoe"), ("B2", "title", "zoe")}
    with pytest.raises(StoreError, match="not open"):
        queue.approve([items[("B2", "price")].id], by="ann")
    assert store.record("products", "B2")["price"] == 3.0
    events = [e for e in store.events() if e["type"] == "change.rejected"]
    assert {(e["record"], e["field"], e["payload"]["by"]) for e in events} == {("B2", "price", "zoe"),
                                                                                ("B2", "title", "zoe")}
    assert all(e["payload"]["note"].startswith("withdrawn: rollback of") for e in events)


def test_rollback_that_finds_nothing_says_why(store):
    queue_price_changes(store)
    with pytest.raises(NothingToRollBack, match="run 'r2' wrote no values for record 'C3'"):
        store.rollback("r2", record="C3", by="zoe")
    store.apply(ChangeSet("e1", "products", "enrich", [Change("A1", "title", "Big mug", 99)], run_id="r3"))
    store.rollback("r3", by="zoe")
    with pytest.raises(NothingToRollBack, match="run 'r3' was already rolled back"):
        store.rollback("r3", by="zoe")
    cs = store.t["change_sets"]
    with store.engine.connect() as conn:
        rollbacks = conn.execute(cs.select().where(cs.c.operation == "rollback")).fetchall()
    assert len(rollbacks) == 1  # the empty attempts left no change set behind


# ---------------------------------------------------------------------------------------------- item 3
def test_every_value_write_leaves_history_provenance_and_an_event(store):
    items = queue_price_changes(store)
    queue = ReviewQueue(store)
    queue.approve([items[("A1", "price")].id], by="ann")
    queue.reject([items[("B2", "price")].id], by="raj")
    store.rollback("r2", record="A1", by="zoe")
    events = store.events()
    by_type = {}
    for e in events:
        by_type.setdefault(e["type"], []).append(e)
    assert [e["payload"]["by"] for e in by_type["change.rejected"]] == ["raj"]
    # Each decision's change set is a row of its own with the proposing run; its events point at it.
    sets = {e["change_set"] for e in events if e["type"] in ("change.approved", "change.rejected")}
    for change_set in sets:
        assert store.change_set(change_set) is not None
    cs = store.t["change_sets"]
    with store.engine.connect() as conn:
        runs = {r.id: r.run_id for r in conn.execute(cs.select().where(cs.c.id.in_(sets)))}
    assert set(runs.values()) == {"r2"}


def test_append_event_writes_a_run_event_once(store):
    payload = {"run_id": "abc", "status": "started"}
    assert store.append_event("run.started", change_set="run:abc", payload=payload, catalogue="products")
    assert not store.append_event("run.started", change_set="run:abc", payload=payload, catalogue="products")
    assert store.append_event("run.completed", change_set="run:abc", payload=payload)
    run_events = [(e["type"], e["catalogue"]) for e in store.events() if e["change_set"] == "run:abc"]
    assert run_events == [("run.started", "products"), ("run.completed", "")]


def test_every_write_path_leaves_the_same_trail(store_url):
    """Import, per-field change set, approve, edit, reject, rollback and a type migration: each history row has
    its event, each event and provenance row its change set (one writer, so the trail is uniform)."""
    from claro_dagster.catalogue.migrations import apply_type_change

    spec = make_spec()
    s = CatalogueStore(spec, store_url)
    s.import_records("products", pd.DataFrame({"sku": ["A1", "B2", "C3"], "title": ["Mug", "Cup", "Jug"],
                                               "price": [4.5, 3.0, 2.0]}), change_set_id="i1", run_id="r1")
    s.apply(ChangeSet("e1", "products", "enrich", [Change("A1", "title", "Big mug", 99),
                                                   Change("B2", "title", "Tea cup", 70),
                                                   Change("C3", "title", "Water jug", 70),
                                                   Change("C3", "price", 2.5, 70)], run_id="r2"))
    queue = ReviewQueue(s)
    items = {(i.record, i.field): i.id for i in queue.list()}
    queue.approve([items[("B2", "title")]], by="ann")
    queue.edit(items[("C3", "title")], "Jug 1l", by="ann")
    queue.reject([items[("C3", "price")]], by="raj")
    s.rollback("r2", record="A1", by="zoe")
    s.dispose()
    s = CatalogueStore(make_spec().model_copy(update={"catalogues": {"products": CatalogueSpec(
        key="sku", attributes={**spec.catalogues["products"].attributes,
                               "title": AttributeSpec(type="number")})}}), store_url)
    apply_type_change(s, "products", "title", by="zoe")  # no title is a number: all cleared, kept in history
    t = s.t
    with s.engine.connect() as conn:
        sets = {r.id for r in conn.execute(t["change_sets"].select())}
        events = conn.execute(t["events"].select()).fetchall()
        history = conn.execute(t["history"].select()).fetchall()
        provenance = conn.execute(t["provenance"].select()).fetchall()
    s.dispose()
    assert {e.change_set for e in events} <= sets
    assert {p.change_set for p in provenance} <= sets
    value_events = [(e.change_set, e.record, e.field) for e in events
                    if e.type in ("change.applied", "change.approved") and e.field is not None]
    assert sorted((h.change_set, h.record, h.field) for h in history) == \
        sorted(k for k in value_events if k[0] in {h.change_set for h in history})
    assert {h.kind for h in history} == {"update", "review", "rollback", "schema"}
