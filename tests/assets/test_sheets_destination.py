"""The `<catalogue>/<destination>` asset of a Google Sheets destination on the demo, against the fake that follows
Google's Sheets v4 discovery document (tests/sheets_fake.py), and a person's edits seen through the real `claro`."""

from __future__ import annotations

import json
import os
import shutil

import dagster as dg
import pytest
import yaml
from batches import demo_spec_syncing, publish_demo_products

from claro_dagster.catalogue.changes import Change, ChangeSet
from claro_dagster.catalogue.review import ReviewQueue
from claro_dagster.catalogue.sheet_sync import sheet_text
from claro_dagster.definitions import build_definitions
from claro_dagster.spec import DEMO_DIR, load_spec
from claro_dagster.spec.loader import SpecError
from tests.cli_project import claro as claro_cli
from tests.sheets_fake import FakeSheets, service_account_key

COLUMNS = ["sku", "title", "brand", "price", "colour", "status"]
SHEET = {"kind": "sheets", "catalogue": "products", "spreadsheet_id": "merch-2026", "named_range": "claro_products",
         "columns": COLUMNS, "credentials_env": "TEST_SHEETS_KEY", "endpoint_url_env": "TEST_SHEETS_URL"}
RANGE = "claro_products"
# the demo's other destinations stay idle (and the sheet's own variable unset while the definitions are built, so
# publishing never syncs it by itself)
IDLE = ("CLARO_S3_ENDPOINT_URL", "CLARO_WAREHOUSE_URL", "CLARO_SHOPIFY_SHOP_URL", "CLARO_SHOPIFY_TOKEN",
        "TEST_SHEETS_KEY")


def demo_with_sheet(tmp_path, **overrides) -> str:
    text = (DEMO_DIR / "claro.yaml").read_text(encoding="utf-8")
    dest = {k: v for k, v in {**SHEET, **overrides}.items() if v is not None}
    block = "\n".join("  " + line for line in yaml.safe_dump({"merch_sheet": dest}).splitlines())
    text = text.replace("\ndestinations:\n", "\ndestinations:\n" + block + "\n", 1)
    text = demo_spec_syncing("merch_sheet", text=text)
    assert "merch_sheet:" in text and "warehouse, merch_sheet]" in text
    path = tmp_path / "claro.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """The demo's suppliers and Acme products published once for the module (publishing is most of each test's
    time); each test works on a copy of this home."""
    base = tmp_path_factory.mktemp("published")
    saved = {n: os.environ.pop(n, None) for n in IDLE}
    try:  # the other destinations stay idle; no automatic sync
        spec = demo_with_sheet(base)
        defs = build_definitions(spec, base / "home")
        with dg.instance_for_test() as instance:
            publish_demo_products(defs, instance)
        defs.resources["claro"].store.engine.dispose()
    finally:
        os.environ.update({n: v for n, v in saved.items() if v is not None})
    return spec, base / "home"


@pytest.fixture
def project(published, tmp_path, monkeypatch):
    """A copy of the published demo, with a sheets destination pointed at the fake."""
    spec, template = published
    home = tmp_path / "home"
    shutil.copytree(template, home)
    with FakeSheets() as fake:
        for name in IDLE:
            monkeypatch.delenv(name, raising=False)
        defs = build_definitions(spec, home)
        key, public = service_account_key(tmp_path, fake.token_uri)
        fake.public_key_pem = public
        fake.create("merch-2026", title="Merchandising", tabs=("Products",))
        monkeypatch.setenv("TEST_SHEETS_KEY", str(key))
        monkeypatch.setenv("TEST_SHEETS_URL", fake.url)
        with dg.instance_for_test() as instance:
            yield defs, defs.resources["claro"], instance, fake, spec, home
        assert fake.contract_errors == []


def sync(defs, instance, *, ok: bool = True):
    result = dg.materialize(list(defs.assets), selection=[dg.AssetKey(["products", "merch_sheet"])],
                            instance=instance, resources=defs.resources, raise_on_error=ok)
    if not ok:
        return result
    [event] = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()}


def review(*args, spec, home):
    out = claro_cli("review", *args, home=home, spec=spec)
    assert out.returncode == 0, out.stderr
    return out.stdout


def in_catalogue(claro) -> dict[str, list]:
    frame = claro.store.records("products", columns=COLUMNS)
    return {row["sku"]: [sheet_text(row[c]) for c in COLUMNS] for row in frame.to_dict("records")}


def in_sheet(fake) -> dict[str, list]:
    return {row[0]: [sheet_text(v) for v in row] for row in fake.range_values(RANGE, "merch-2026")[1:]}


def test_check_accepts_the_destination_and_refuses_a_bad_one(tmp_path):
    load_spec(demo_with_sheet(tmp_path))
    with pytest.raises(SpecError) as bad:
        load_spec(demo_with_sheet(tmp_path, columns=["title", "skew"], named_range="A1", spreadsheet_id=None))
    text = str(bad.value)
    assert "the first column must be the catalogue key 'sku'" in text
    assert "columns[1]: 'skew' is not an attribute of catalogue 'products'" in text
    assert "'A1' is not a valid named range name" in text and "needs 'spreadsheet_id'" in text


def test_push_lands_in_the_named_range_and_a_second_sync_changes_nothing(project):
    defs, claro, instance, fake, _, _ = project
    first = sync(defs, instance)
    assert first["rows"] == claro.store.count("products") == 10 and first["batch_updates"] == 1
    assert in_sheet(fake) == in_catalogue(claro)
    assert fake.range_values(RANGE, "merch-2026")[0] == COLUMNS
    second = sync(defs, instance)
    assert (second["batch_updates"], second["rows_written"], second["pulled_queued"]) == (0, 0, 0)
    assert len(fake.batch_updates) == 1


def test_a_persons_edit_reaches_the_review_queue_and_once_approved_is_not_pushed_back(project):
    defs, claro, instance, fake, spec, home = project
    sync(defs, instance)
    fake.edit(RANGE, "ACM-10101", "title", "Trail Tent 2P (green)", editor="mei@example.com",
              spreadsheet_id="merch-2026")
    pulled = sync(defs, instance)
    assert pulled["pulled_queued"] == 1 and pulled["batch_updates"] == 0
    [item] = json.loads(review("list", "--source", "sheets:merch_sheet", "--format", "json", spec=spec, home=home))
    assert (item["record"], item["field"], item["new"], item["source"]) == (
        "ACM-10101", "title", "Trail Tent 2P (green)", "sheets:merch_sheet")
    assert "edited in spreadsheet merch-2026 named range 'claro_products' (cell B" in item["reason"]
    review("approve", str(item["id"]), spec=spec, home=home)
    after = sync(defs, instance)
    assert claro.store.record("products", "ACM-10101")["title"] == "Trail Tent 2P (green)"
    assert claro.store.provenance("products", "ACM-10101", "title").source == "sheets:merch_sheet"
    assert (after["conflicts"], after["pulled_queued"], after["batch_updates"]) == (0, 0, 0)
    assert ReviewQueue(claro.store).list() == [] or all(i.source != "sheets:merch_sheet"
                                                        for i in ReviewQueue(claro.store).list())
    assert in_sheet(fake) == in_catalogue(claro)


def test_both_sides_changed_is_one_review_item_with_both_values(project):
    defs, claro, instance, fake, spec, home = project
    sync(defs, instance)
    fake.edit(RANGE, "ACM-10101", "brand", "Acme Outdoor Co", editor="max@example.com", spreadsheet_id="merch-2026")
    claro.store.apply(ChangeSet("brand-fix", "products", "enrich", [Change("ACM-10101", "brand", "ACME", 100)]))
    result = sync(defs, instance)
    assert result["conflicts"] == 1
    [item] = json.loads(review("list", "--source", "sheets:merch_sheet", "--format", "json", spec=spec, home=home))
    assert (item["old"], item["new"]) == ("ACME", "Acme Outdoor Co") and item["reason"].startswith("conflict:")
    assert claro.store.record("products", "ACM-10101")["brand"] == "ACME"
    assert in_sheet(fake)["ACM-10101"][2] == "Acme Outdoor Co"  # kept in the sheet while a person decides


def test_wrong_type_or_enum_is_a_validation_error_next_to_the_change(project):
    defs, claro, instance, fake, spec, home = project
    sync(defs, instance)
    before = in_catalogue(claro)
    fake.edit(RANGE, "ACM-10101", "colour", "purple", spreadsheet_id="merch-2026")
    fake.edit(RANGE, "ACM-10102", "price", "call us", spreadsheet_id="merch-2026")
    result = sync(defs, instance)
    assert result["invalid"] == 2 and in_catalogue(claro) == before
    items = json.loads(review("list", "--source", "sheets:merch_sheet", "--status", "discarded", "--format", "json",
                              spec=spec, home=home))
    reasons = {(i["record"], i["field"]): i["reason"] for i in items}
    assert "not applied: validation error: 'purple' is not one of" in reasons[("ACM-10101", "colour")]
    assert "not applied: validation error" in reasons[("ACM-10102", "price")]
    assert json.loads(review("list", "--source", "sheets:merch_sheet", "--format", "json", spec=spec, home=home)) == []
    assert in_sheet(fake) == in_catalogue(claro)  # the catalogue's values went back to the sheet


def test_added_row_becomes_a_record_deleted_row_is_only_reported(project):
    defs, claro, instance, fake, spec, home = project
    sync(defs, instance)
    fake.insert_row(RANGE, ["ACM-20001", "Camp Stool", "Acme", 19.5, "green", "draft"], spreadsheet_id="merch-2026")
    fake.delete_row(RANGE, "ACM-10102", spreadsheet_id="merch-2026")
    result = sync(defs, instance)
    assert result["new_rows"] == 1 and result["deleted_in_sheet"] == 1
    assert claro.store.record("products", "ACM-10102") is not None  # never deleted from the catalogue
    assert "ACM-10102" in in_sheet(fake)  # and written back
    queued = [i for i in ReviewQueue(claro.store).list(source="sheets:merch_sheet")]
    assert {i.record for i in queued} == {"ACM-20001"}
    ReviewQueue(claro.store).approve([i.id for i in queued], by="mei")
    sync(defs, instance)
    assert claro.store.record("products", "ACM-20001")["title"] == "Camp Stool"
    assert in_sheet(fake) == in_catalogue(claro)
    assert sync(defs, instance)["batch_updates"] == 0


def test_key_column_deleted_or_range_renamed_fails_clearly_and_changes_nothing(project):
    defs, claro, instance, fake, _, _ = project
    sync(defs, instance)
    before = in_catalogue(claro)
    fake.rename_named_range(RANGE, "products_copy", spreadsheet_id="merch-2026")
    failed = sync(defs, instance, ok=False)
    assert not failed.success
    message = str(failed.all_events)
    assert "spreadsheet merch-2026 named range 'claro_products': the named range is gone" in message
    assert "Rename it back to 'claro_products' in Data > Named ranges" in message
    fake.rename_named_range("products_copy", RANGE, spreadsheet_id="merch-2026")
    fake.delete_column(RANGE, "sku", spreadsheet_id="merch-2026")
    failed = sync(defs, instance, ok=False)
    assert not failed.success and "the key column 'sku' is not the first column" in str(failed.all_events)
    assert in_catalogue(claro) == before


def test_synced_after_each_publish_and_on_a_schedule(tmp_path, monkeypatch):
    """With its key variable set, the sheet is in the destinations job the publish sensor starts; a schedule targets
    `<catalogue>/<destination>`; without the variable it is left out of the automatic sync."""
    spec = demo_with_sheet(tmp_path)
    spec.write_text(spec.read_text(encoding="utf-8").replace(
        "\nschedules:\n", "\nschedules:\n  sheet_hourly:\n    target: products/merch_sheet\n    every: hourly\n", 1),
        encoding="utf-8")
    for name in IDLE:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TEST_SHEETS_KEY", str(tmp_path / "key.json"))
    defs = build_definitions(spec, tmp_path / "home")
    synced = defs.resolve_job_def("products_onboarding_destinations").asset_layer.selected_asset_keys
    assert dg.AssetKey(["products", "merch_sheet"]) in synced
    schedule = defs.resolve_schedule_def("sheet_hourly")
    assert (schedule.job_name, schedule.cron_schedule) == ("products_merch_sheet", "0 * * * *")
    monkeypatch.delenv("TEST_SHEETS_KEY")
    idle = build_definitions(spec, tmp_path / "home2")
    assert not any(j.name == "products_onboarding_destinations" for j in idle.resolve_all_job_defs())
