"""The Sheets client and one sheet's sync, against the fake that follows Google's Sheets v4 discovery document
(tests/contracts/google/sheets.v4.json) and the JWT bearer grant (RFC 7523)."""

from __future__ import annotations

import pytest

from claro_dagster.catalogue.changes import Change, ChangeSet
from claro_dagster.catalogue.review import ReviewQueue
from claro_dagster.catalogue.sheet_sync import SheetSyncError
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.resources.http import HttpClient
from claro_dagster.resources.sheets import SheetsClient, SheetsError, column_letter, sync_sheet
from claro_dagster.spec.models import DestinationSpec, ProjectSpec
from tests.sheets_fake import FakeSheets, service_account_key

SPEC = ProjectSpec.model_validate({
    "catalogues": {"products": {"key": "sku", "attributes": {
        "sku": {"type": "text", "required": True}, "title": {"type": "text", "required": True},
        "price": {"type": "number", "min": 0}, "status": {"type": "enum", "values": ["active", "draft"]}}}},
    "thresholds": {"default": {"auto_apply": 90, "review": 60, "reject": 40}}})
DEST = DestinationSpec(kind="sheets", catalogue="products", spreadsheet_id="sheet-1", named_range="claro_products",
                       columns=["sku", "title", "price", "status"], credentials_env="TEST_SHEETS_KEY",
                       endpoint_url_env="TEST_SHEETS_URL")


@pytest.fixture
def fake(tmp_path, monkeypatch):
    with FakeSheets() as fake:
        path, public = service_account_key(tmp_path, fake.token_uri)
        fake.public_key_pem = public
        fake.create("sheet-1", tabs=("Products", "Notes"))
        monkeypatch.setenv("TEST_SHEETS_KEY", str(path))
        monkeypatch.setenv("TEST_SHEETS_URL", fake.url)
        yield fake
        assert fake.contract_errors == []


@pytest.fixture
def store(tmp_path):
    store = CatalogueStore(SPEC, f"sqlite:///{tmp_path / 'c.db'}")
    store.apply(ChangeSet("load", "products", "import", [
        Change(f"P-{i}", a, v) for i in range(1, 4)
        for a, v in (("title", f"Product {i}"), ("price", i * 1.5), ("status", "active"))]))
    yield store
    store.dispose()


def client(**kwargs) -> SheetsClient:
    return SheetsClient.from_env("TEST_SHEETS_KEY", "TEST_SHEETS_URL", **kwargs)


def test_a1_column_letters():
    assert [column_letter(i) for i in (0, 25, 26, 701, 702)] == ["A", "Z", "AA", "ZZ", "AAA"]


def test_token_is_a_signed_jwt_grant_and_reused(fake):
    c = client()
    assert c.spreadsheet("sheet-1")["properties"]["title"] == "Catalogue"
    assert c.values("sheet-1", "Products!A1:B2") == []
    assert fake.calls == ["token", "sheets.spreadsheets.get", "sheets.spreadsheets.values.get"]


def test_a_revoked_key_is_a_clear_error_naming_the_variable(fake):
    fake.revoked = True
    with pytest.raises(SheetsError, match=r"refused the service-account key named by \$TEST_SHEETS_KEY "
                                          r"\(claro-sync@claro-test.iam.gserviceaccount.com\): Invalid JWT Signature.*"
                                          r"create a new key"):
        client().spreadsheet("sheet-1")


def test_an_unset_variable_says_what_to_set(monkeypatch):
    monkeypatch.delenv("TEST_SHEETS_KEY", raising=False)
    with pytest.raises(SheetsError, match=r"\$TEST_SHEETS_KEY is not set: set it to the path of the service "
                                          "account's JSON key file"):
        client()


def test_quota_errors_are_retried_with_backoff_then_fail_clearly(fake):
    waits: list[float] = []
    http = HttpClient(max_attempts=3, backoff_base=1, sleep=waits.append)
    c = client(http=http)
    c.token()
    fake.throttle(2)
    assert c.spreadsheet("sheet-1")["spreadsheetId"] == "sheet-1"
    assert len(waits) == 2
    fake.throttle(3)
    with pytest.raises(SheetsError, match=r"quota is spent, still after 3 attempts with backoff; sync again later"):
        c.spreadsheet("sheet-1")


def test_the_fake_refuses_what_the_discovery_document_does_not_allow(fake):
    c = client()
    with pytest.raises(SheetsError, match="unknown field 'colour'"):
        c.batch_update("sheet-1", [{"updateCells": {"colour": "red"}}])
    with pytest.raises(SheetsError, match=r"'SIDEWAYS' is not one of"):
        c._call("GET", "v4/spreadsheets/sheet-1/values/A1", what="x", params={"majorDimension": "SIDEWAYS"})
    assert len(fake.contract_errors) == 2
    fake.contract_errors.clear()


def test_no_access_says_whom_to_share_with(fake):
    fake.tokens.clear()  # the token is no longer accepted: Google answers 401
    c = client()
    c._token, c._expires = "ya29.stale", 1e12
    with pytest.raises(SheetsError, match="share the spreadsheet with claro-sync@claro-test.iam.gserviceaccount.com"):
        c.spreadsheet("sheet-1")


# ---------------------------------------------------------------------------------------------- a sync
def test_first_sync_creates_the_range_protects_the_key_and_a_second_sync_sends_nothing(fake, store):
    result = sync_sheet(store, "sheet", DEST, client())
    assert result.created_range and result.calls == 1 and result.rows == 3
    assert fake.range_values("claro_products") == [
        ["sku", "title", "price", "status"], ["P-1", "Product 1", 1.5, "active"], ["P-2", "Product 2", 3, "active"],
        ["P-3", "Product 3", 4.5, "active"]]
    [protected] = fake.spreadsheets["sheet-1"].sheets[0].protected
    assert protected["range"] == {"sheetId": 0, "startColumnIndex": 0, "endColumnIndex": 1}
    assert protected["warningOnly"] is False
    assert len(fake.batch_updates) == 1  # one batchUpdate per sync
    again = sync_sheet(store, "sheet", DEST, client())
    assert (again.calls, again.rows_written, len(fake.batch_updates)) == (0, 0, 1)


def test_the_range_grows_and_shrinks_with_the_records(fake, store):
    sync_sheet(store, "sheet", DEST.model_copy(update={"filter": 'sku != "P-3"'}), client())
    def tab():  # a batchUpdate replaces the spreadsheet as a whole (all or nothing)
        return fake.spreadsheets["sheet-1"].sheets[0]

    tab().put(3, 0, "below the range")  # something a person keeps under the range
    grown = sync_sheet(store, "sheet", DEST, client())
    assert grown.rows == 3 and len(fake.range_values("claro_products")) == 4
    assert tab().get(4, 0) == "below the range"  # rows were inserted, nothing overwritten
    shrunk = sync_sheet(store, "sheet", DEST.model_copy(update={"filter": 'sku == "P-2"'}), client())
    assert shrunk.rows == 1 and fake.range_values("claro_products")[1][0] == "P-2"
    assert tab().get(2, 0) == "below the range"
    assert {tuple(k) for b in fake.batch_updates for r in b for k in [r.keys()]} >= {
        ("insertDimension",), ("deleteDimension",), ("updateNamedRange",), ("updateCells",)}


def test_edits_conflicts_and_catalogue_changes_in_one_sync(fake, store):
    sync_sheet(store, "sheet", DEST, client())
    fake.edit("claro_products", "P-1", "title", "Product one", editor="mei@example.com")
    fake.edit("claro_products", "P-2", "price", 3.25, editor="max@example.com")
    store.apply(ChangeSet("cat", "products", "enrich", [Change("P-2", "price", 2.75, 100),
                                                        Change("P-3", "title", "Product three", 100)]))
    result = sync_sheet(store, "sheet", DEST, client())
    assert (result.pulled.queued, result.conflicts) == (2, 1)
    items = {i.field: i for i in ReviewQueue(store).list(source="sheets:sheet")}
    assert (items["title"].old, items["title"].new) == ("Product 1", "Product one")
    assert (items["price"].old, items["price"].new) == (2.75, 3.25) and "conflict" in items["price"].reason
    sheet = fake.records("claro_products")
    assert sheet["P-3"]["title"] == "Product three"  # the catalogue's change is pushed
    assert sheet["P-1"]["title"] == "Product one" and sheet["P-2"]["price"] == 3.25  # pending edits stay
    again = sync_sheet(store, "sheet", DEST, client())
    assert (again.calls, again.pulled.queued, len(ReviewQueue(store).list())) == (0, 0, 2)
    ReviewQueue(store).reject([items["price"].id], by="priya")
    ReviewQueue(store).approve([items["title"].id], by="max")
    sync_sheet(store, "sheet", DEST, client())
    sheet = fake.records("claro_products")
    assert sheet["P-2"]["price"] == 2.75 and sheet["P-1"]["title"] == "Product one"
    assert store.record("products", "P-1")["title"] == "Product one"
    assert ReviewQueue(store).list() == []


def test_two_people_editing_one_cell_between_syncs_is_one_change_the_last_value(fake, store):
    sync_sheet(store, "sheet", DEST, client())
    fake.edit("claro_products", "P-1", "title", "Mug (Mei)", editor="mei@example.com")
    fake.edit("claro_products", "P-1", "title", "Mug (Max)", editor="max@example.com")
    sync_sheet(store, "sheet", DEST, client())
    [item] = ReviewQueue(store).list(source="sheets:sheet")
    assert item.new == "Mug (Max)"


def test_key_column_deleted_or_range_renamed_is_a_clear_error_and_changes_nothing(fake, store):
    sync_sheet(store, "sheet", DEST, client())
    fake.rename_named_range("claro_products", "products_old")
    with pytest.raises(SheetsError, match=r"spreadsheet sheet-1 named range 'claro_products': the named range is gone "
                                          r"\(renamed or deleted; named ranges now: 'products_old'\)\. Rename it back"):
        sync_sheet(store, "sheet", DEST, client())
    fake.rename_named_range("products_old", "claro_products")
    fake.delete_column("claro_products", "sku")
    before = store.records("products").to_dict("records")
    with pytest.raises(SheetSyncError, match=r"spreadsheet sheet-1 named range 'claro_products': the key column 'sku' "
                                          r"is not the first column"):
        sync_sheet(store, "sheet", DEST, client())
    assert store.records("products").to_dict("records") == before
    assert len(fake.batch_updates) == 1


def test_a_snoozed_edit_still_waits_in_the_sheet(fake, store):
    from datetime import UTC, datetime, timedelta

    sync_sheet(store, "sheet", DEST, client())
    fake.edit("claro_products", "P-3", "status", "draft")
    sync_sheet(store, "sheet", DEST, client())
    [item] = ReviewQueue(store).list(source="sheets:sheet")
    ReviewQueue(store).snooze([item.id], datetime.now(UTC) + timedelta(days=1), by="max")
    again = sync_sheet(store, "sheet", DEST, client())
    assert again.calls == 0 and fake.records("claro_products")["P-3"]["status"] == "draft"
    assert store.record("products", "P-3")["status"] == "active"


# ---------------------------------------------------------------------------------------------- the fake itself
def test_the_fake_follows_the_documented_range_semantics(fake):
    """values.get omits trailing empty cells and rows; rows inserted inside a named range grow it, at its end they do
    not; writing outside the grid is refused and a refused batchUpdate changes nothing (it is atomic)."""
    c = client()
    sheet_id = 0
    add = c.batch_update("sheet-1", [
        {"updateCells": {"start": {"sheetId": sheet_id, "rowIndex": 0, "columnIndex": 0}, "fields": "userEnteredValue",
                         "rows": [{"values": [{"userEnteredValue": {"stringValue": "sku"}},
                                              {"userEnteredValue": {"stringValue": "title"}}]},
                                  {"values": [{"userEnteredValue": {"stringValue": "A-1"}}, {}]},
                                  {"values": [{}, {}]}]}},
        {"addNamedRange": {"namedRange": {"name": "r", "range": {"sheetId": sheet_id, "startRowIndex": 0,
                                                                 "endRowIndex": 3, "startColumnIndex": 0,
                                                                 "endColumnIndex": 2}}}}])
    named = add["replies"][1]["addNamedRange"]["namedRange"]
    assert "startRowIndex" not in named["range"]  # zero fields are omitted, as in Google's answers
    assert c.values("sheet-1", "r") == [["sku", "title"], ["A-1"]]
    assert c.values("sheet-1", "Products!A1:B1") == [["sku", "title"]]

    def height() -> int:
        r = c.spreadsheet("sheet-1")["namedRanges"][0]["range"]
        return r["endRowIndex"] - r.get("startRowIndex", 0)

    c.batch_update("sheet-1", [{"insertDimension": {"range": {"sheetId": sheet_id, "dimension": "ROWS",
                                                              "startIndex": 3, "endIndex": 5},
                                                    "inheritFromBefore": True}}])
    assert height() == 3  # at the end: not extended
    c.batch_update("sheet-1", [{"insertDimension": {"range": {"sheetId": sheet_id, "dimension": "ROWS",
                                                              "startIndex": 1, "endIndex": 2},
                                                    "inheritFromBefore": True}}])
    assert height() == 4 and c.values("sheet-1", "r") == [["sku", "title"], [], ["A-1"]]
    with pytest.raises(SheetsError, match="after last row in grid"):
        c.batch_update("sheet-1", [
            {"deleteDimension": {"range": {"sheetId": sheet_id, "dimension": "ROWS", "startIndex": 1,
                                           "endIndex": 2}}},
            {"updateCells": {"start": {"sheetId": sheet_id, "rowIndex": 5000, "columnIndex": 0},
                             "fields": "userEnteredValue", "rows": [{"values": [{}]}]}}])
    assert height() == 4  # the delete before the refused request was not applied either


def test_a_new_range_named_in_the_spec_starts_afresh_and_wide_columns_fit(fake, store):
    sync_sheet(store, "sheet", DEST, client())
    fake.spreadsheets["sheet-1"].sheets[1].column_count = 2  # the Notes tab is narrower than the four columns
    moved = DEST.model_copy(update={"named_range": "claro_products_v2", "worksheet": "Notes"})
    result = sync_sheet(store, "sheet", moved, client())
    assert result.created_range and result.rows == 3
    assert fake.records("claro_products_v2")["P-2"] == {"sku": "P-2", "title": "Product 2", "price": 3,
                                                        "status": "active"}
    assert sync_sheet(store, "sheet", moved, client()).calls == 0


def test_an_empty_named_range_a_person_made_is_filled_in(fake, store):
    client().batch_update("sheet-1", [{"addNamedRange": {"namedRange": {"name": "claro_products", "range": {
        "sheetId": 0, "startRowIndex": 4, "endRowIndex": 5, "startColumnIndex": 1, "endColumnIndex": 5}}}}])
    result = sync_sheet(store, "sheet", DEST, client())
    assert not result.created_range and result.rows == 3
    assert fake.range_values("claro_products")[0] == ["sku", "title", "price", "status"]
    [protected] = fake.spreadsheets["sheet-1"].sheets[0].protected
    assert (protected["range"]["startColumnIndex"], protected["range"]["endColumnIndex"]) == (1, 2)
    assert sync_sheet(store, "sheet", DEST, client()).calls == 0
