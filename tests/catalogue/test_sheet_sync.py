"""The three-way diff of a sheet sync (last synced, sheet, catalogue) and what a pull writes: no Dagster, no HTTP."""

from __future__ import annotations

import pytest

from claro_dagster.catalogue.changes import Change, ChangeSet
from claro_dagster.catalogue.feed import change_feed
from claro_dagster.catalogue.review import ReviewQueue
from claro_dagster.catalogue.sheet_sync import (
    SheetState,
    SheetSyncError,
    SyncedState,
    check_header,
    diff_sheet,
    next_state,
    sheet_text,
    target_rows,
    write_pull,
)
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.resources.sheets import attribute_validator
from claro_dagster.spec.models import ProjectSpec

COLUMNS = ["sku", "title", "price", "colour"]


def synced(rows: dict[str, dict[str, str | None]]) -> SyncedState:
    return SyncedState(values={(k, a): v for k, row in rows.items() for a, v in row.items()})


BASE = {"A-1": {"sku": "A-1", "title": "Mug", "price": "4.5", "colour": "red"},
        "A-2": {"sku": "A-2", "title": "Cup", "price": "3", "colour": "blue"}}


def sheet_of(rows: dict[str, dict[str, str | None]]) -> list[list]:
    return [[row[c] for c in COLUMNS] for row in rows.values()]


def copy_rows(rows):
    return {k: dict(v) for k, v in rows.items()}


def test_sheet_text_compares_numbers_as_the_sheet_shows_them():
    assert [sheet_text(v) for v in (None, "", 3, 3.0, 4.5, "4.50", True)] == [None, None, "3", "3", "4.5", "4.50",
                                                                               "TRUE"]


def test_each_side_and_both_sides():
    sheet, catalogue = copy_rows(BASE), copy_rows(BASE)
    sheet["A-1"]["title"] = "Big mug"  # only the sheet: pull
    catalogue["A-2"]["title"] = "Teacup"  # only the catalogue: push, no edit
    sheet["A-2"]["price"], catalogue["A-2"]["price"] = "3.5", "2.5"  # both: conflict
    sheet["A-1"]["colour"] = catalogue["A-1"]["colour"] = "green"  # both the same: in sync
    diff = diff_sheet(COLUMNS, sheet_of(sheet), synced(BASE), catalogue)
    assert [(e.record, e.attribute, e.value, e.kind) for e in diff.edits] == [
        ("A-1", "title", "Big mug", "pull"), ("A-2", "price", "3.5", "conflict")]
    conflict = diff.conflicts[0]
    assert (conflict.catalogue, conflict.synced) == ("2.5", "3")
    rows = target_rows(COLUMNS, diff, catalogue, open_cells={("A-2", "price")})
    assert rows == [["A-1", "Mug", "4.5", "green"], ["A-2", "Teacup", "3.5", "blue"]]  # the conflict keeps the sheet's


def test_new_rows_deleted_rows_and_unreadable_rows():
    sheet = copy_rows(BASE)
    del sheet["A-2"]
    rows = sheet_of(sheet) + [["A-9", "Bowl", 8, "red"], [None, "no key", None, None], ["A-1", "dup", 1, "red"],
                              [None, None, None, None], ["B-1", "elsewhere", None, None]]
    diff = diff_sheet(COLUMNS, rows, synced(BASE), copy_rows(BASE), known={"B-1"})
    assert diff.deleted == ["A-2"]
    assert [(e.record, e.attribute, e.value) for e in diff.new_rows["A-9"]] == [
        ("A-9", "title", "Bowl"), ("A-9", "price", "8"), ("A-9", "colour", "red")]
    assert any("row 4 of the range has no sku" in p for p in diff.problems)
    assert any("'A-1' appears twice" in p for p in diff.problems)
    assert any("'B-1'" in p and "outside the destination's filter" in p for p in diff.problems)
    # the deleted row goes back to the sheet (never deleted from the catalogue); the unknown ones go
    assert [r[0] for r in target_rows(COLUMNS, diff, copy_rows(BASE), set())] == ["A-1", "A-2"]


def test_never_synced_rows_take_the_catalogue_value_and_second_diff_is_empty():
    sheet, catalogue = copy_rows(BASE), copy_rows(BASE)
    sheet["A-1"]["title"] = "Old title from before"
    diff = diff_sheet(COLUMNS, sheet_of(sheet), SyncedState(), catalogue)
    assert diff.edits == []
    rows = target_rows(COLUMNS, diff, catalogue, set())
    assert rows[0][1] == "Mug"
    state = next_state(COLUMNS, SyncedState(), rows, {}, set())
    again = diff_sheet(COLUMNS, rows, state, catalogue)
    assert again.edits == [] and again.deleted == [] and target_rows(COLUMNS, again, catalogue, set()) == rows


def test_a_proposal_waits_then_once_rejected_the_catalogue_value_returns():
    sheet = copy_rows(BASE)
    sheet["A-1"]["title"] = "Big mug"
    state = synced(BASE)
    state.proposed[("A-1", "title")] = "Big mug"
    waiting = diff_sheet(COLUMNS, sheet_of(sheet), state, copy_rows(BASE), open_cells={("A-1", "title")})
    assert waiting.edits == [] and waiting.pending == {("A-1", "title")}
    decided = diff_sheet(COLUMNS, sheet_of(sheet), state, copy_rows(BASE), open_cells=set())
    assert decided.edits == []
    assert target_rows(COLUMNS, decided, copy_rows(BASE), set())[0][1] == "Mug"


def test_header_must_name_the_columns_key_first():
    check_header(COLUMNS, COLUMNS, where="sheet X")
    with pytest.raises(SheetSyncError, match=r"sheet X: the key column 'sku' is not the first column.*Version "
                                             r"history.*nothing was changed in the catalogue"):
        check_header(["title", "price", "colour"], COLUMNS, where="sheet X")
    with pytest.raises(SheetSyncError, match="missing: colour"):
        check_header(["sku", "title", "price"], COLUMNS, where="sheet X")


# ---------------------------------------------------------------------------------------------- writing a pull
SPEC = ProjectSpec.model_validate({
    "catalogues": {"products": {"key": "sku", "attributes": {
        "sku": {"type": "text", "required": True, "regex": "^[A-Z]-\\d+$"}, "title": {"type": "text", "required": True},
        "price": {"type": "number", "min": 0}, "colour": {"type": "enum", "values": ["red", "blue", "green", "grey"],
                                                           "synonyms": {"grey": ["gray"]}}}}},
    "thresholds": {"default": {"auto_apply": 90, "review": 60, "reject": 40}}})


@pytest.fixture
def store(tmp_path):
    store = CatalogueStore(SPEC, f"sqlite:///{tmp_path / 'c.db'}")
    store.apply(ChangeSet("load", "products", "import", [
        Change(k, a, float(v) if a == "price" else v)
        for k, row in BASE.items() for a, v in row.items() if a != "sku"]))
    yield store
    store.dispose()


def pull(store, sheet, *, confidence=None, state=None, cs="pull-1"):
    catalogue = {k: {a: sheet_text(v) for a, v in r.items()}
                 for k, r in store.records("products").set_index("sku", drop=False).to_dict("index").items()}
    diff = diff_sheet(COLUMNS, sheet_of(sheet), state or synced(BASE), catalogue)
    return diff, write_pull(store, diff, destination="sheet", catalogue="products", change_set_id=cs,
                            confidence=confidence, where="sheet S", cell_ref=lambda e: f"R{e.row}",
                            validate=attribute_validator(store, "products"))


def test_pulled_edits_queue_for_review_by_default_with_source_and_cell(store):
    sheet = copy_rows(BASE)
    sheet["A-1"]["title"] = "Big mug"
    _, result = pull(store, sheet)
    assert (result.applied, result.queued) == (0, 1)
    [item] = ReviewQueue(store).list(source="sheets:sheet")
    assert (item.record, item.field, item.old, item.new, item.citation) == ("A-1", "title", "Mug", "Big mug", "R0")
    assert item.reason == "edited in sheet S (cell R0)" and item.operation == "sheets"


def test_confident_edits_apply_and_are_normalized(store):
    sheet = copy_rows(BASE)
    sheet["A-1"]["colour"] = "Gray"
    _, result = pull(store, sheet, confidence=95)
    assert result.applied == 1 and store.record("products", "A-1")["colour"] == "grey"
    assert store.provenance("products", "A-1", "colour").source == "sheets:sheet"


def test_a_conflict_is_one_review_item_with_both_values_whatever_the_confidence(store):
    store.apply(ChangeSet("catalogue-side", "products", "enrich", [Change("A-2", "price", 2.5, 100)]))
    sheet = copy_rows(BASE)
    sheet["A-2"]["price"] = "3.5"
    _, result = pull(store, sheet, confidence=100)
    assert (result.applied, result.queued) == (0, 1)
    [item] = ReviewQueue(store).list(source="sheets:sheet")
    assert (item.old, item.new) == (2.5, 3.5)
    assert "conflict" in item.reason and "'3.5'" in item.reason and "'2.5'" in item.reason
    assert store.record("products", "A-2")["price"] == 2.5


def test_wrong_type_and_out_of_enum_are_validation_errors_not_applied(store):
    sheet = copy_rows(BASE)
    sheet["A-1"]["price"] = "cheap"
    sheet["A-2"]["colour"] = "purple"
    _, result = pull(store, sheet, confidence=100)
    assert result.applied == 0 and len(result.invalid) == 2
    items = ReviewQueue(store).list(source="sheets:sheet", status="discarded")
    reasons = {(i.record, i.field): i.reason for i in items}
    assert "not applied: validation error" in reasons[("A-1", "price")] and "cheap" in reasons[("A-1", "price")]
    assert "'purple' is not one of" in reasons[("A-2", "colour")]
    assert store.record("products", "A-1")["price"] == 4.5 and store.record("products", "A-2")["colour"] == "blue"
    assert ReviewQueue(store).list(source="sheets:sheet") == []  # nothing a reviewer could approve by mistake


def test_a_new_row_is_a_new_record_through_validation(store):
    sheet = copy_rows(BASE)
    sheet["A-3"] = {"sku": "A-3", "title": "Bowl", "price": "8", "colour": "red"}
    sheet["bad key"] = {"sku": "bad key", "title": "Plate", "price": "2", "colour": "red"}
    _, result = pull(store, sheet, confidence=95)
    assert store.record("products", "A-3") == {"sku": "A-3", "title": "Bowl", "price": 8.0, "colour": "red"}
    assert store.record("products", "bad key") is None
    # the change feed (and a webhook receiver) see a new record, not three updates from null
    assert [(c["kind"], c["field"], c["values"], c["source"]) for c in change_feed(store, 0).changes
            if c["record"] == "A-3"] == [("created", None, store.record("products", "A-3"), "sheets:sheet")]
    assert any("bad key" in i and "does not match the pattern" in i for i in result.invalid)


def test_state_keeps_only_what_changed(store_url):
    """On both backends: the table is created when first used, beside the catalogue's own."""
    store = CatalogueStore(SPEC, store_url)
    states = SheetState(store)
    old = states.load("sheet")
    new = synced(BASE)
    assert states.save("sheet", old, new) == 8
    assert states.load("sheet") == new
    assert states.save("sheet", new, new) == 0
    changed = synced(BASE)
    changed.values[("A-1", "title")] = "Big mug"
    changed.proposed[("A-2", "price")] = None
    assert states.save("sheet", new, changed) == 2
    assert states.load("sheet") == changed
    store.dispose()
