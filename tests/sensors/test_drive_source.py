"""A `kind: drive` source end to end: the real definitions built from the demo spec plus a Drive source, its sensor
ticked like the daemon ticks it, against the local Drive fake (tests/drive_fake.py, checked against
tests/contracts/google/drive.v3.json), and the runs it requests materialised through the onboarding stages.
"""

from __future__ import annotations

import io

import dagster as dg
import pandas as pd
import pytest
from stdnum import ean

from claro_dagster.catalogue.batches import BatchRegistry
from claro_dagster.local import receive, run_batch
from claro_dagster.resources.drive import DriveConnection
from claro_dagster.sensors.inbound import TAG_DRIVE_FILE, build_drive_sensor
from claro_dagster.spec import DEMO_DIR
from claro_dagster.spec.loader import SpecError, load_spec
from tests.assets.test_inbound_flow import SUPPLIERS, Daemon, drop, project
from tests.drive_fake import SHEET, XLSX, FakeDrive, write_service_account_key

FOLDER = "1SupplierDropFolder"
ACME = DEMO_DIR / "inbox" / "acme" / "acme_products.csv"
GLOBEX = DEMO_DIR / "inbox" / "globex" / "globex_products.xlsx"
SENSOR = "supplier_drive_drive"
SOURCE = f"""\
  supplier_drive:
    catalogue: products
    kind: drive
    folder_id: {FOLDER}
    credentials_env: CLARO_TEST_DRIVE_KEY
    endpoint_url_env: CLARO_TEST_DRIVE_URL
    sheet: Products
    max_file_mb: 1
"""


def as_sheet(frame: pd.DataFrame) -> bytes:
    """What Drive's export of a Google Sheet holding `frame` on a tab named Products gives."""
    buffer = io.BytesIO()
    frame.to_excel(buffer, index=False, sheet_name="Products")
    return buffer.getvalue()


@pytest.fixture
def drive(tmp_path, monkeypatch):
    with FakeDrive() as fake:
        monkeypatch.setenv("CLARO_TEST_DRIVE_KEY", str(write_service_account_key(fake, tmp_path / "key.json")))
        monkeypatch.setenv("CLARO_TEST_DRIVE_URL", fake.url)
        yield fake
        assert fake.contract_errors == []


@pytest.fixture
def daemon(tmp_path, drive):
    defs = project(tmp_path, extra_sources=SOURCE, extra_pipeline_sources=", supplier_drive")
    with dg.instance_for_test() as instance:
        daemon = Daemon(defs, instance)
        # Globex's workbook shape has a confirmed mapping in the demo (for its own source): this source gets it too.
        for mapping in (DEMO_DIR / "mappings" / "globex_xlsx").glob("*.yaml"):
            target = daemon.claro.home_dir / "mappings" / "supplier_drive" / mapping.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(mapping.read_text().replace("source: globex_xlsx", "source: supplier_drive"))
        suppliers = drop(daemon.claro, "suppliers_csv", "suppliers.csv", SUPPLIERS.read_text())
        assert run_batch(defs, instance, receive(daemon.claro, "suppliers_csv", suppliers)).success
        yield daemon


def batches(daemon: Daemon) -> dict[str, object]:
    """file name -> its batch, for the batches of the Drive source."""
    registry = BatchRegistry(daemon.claro.store)
    return {b.filename: b for b in registry.list() if b.source == "supplier_drive"}


def quarantined(daemon: Daemon) -> dict[str, str]:
    root = daemon.claro.inbox_dir("supplier_drive") / "quarantine"
    return {p.name.removesuffix(".reason.txt"): p.read_text() for p in root.glob("*/*.reason.txt")}


def test_csv_xlsx_and_a_google_sheet_in_the_folder_become_batches_and_records(daemon, drive):
    acme = pd.read_csv(ACME, dtype=str, keep_default_na=False)
    sheet_rows = acme.head(5).assign(**{"Product Code": [f"DRV-{i:05d}" for i in range(5)]})
    csv_id = drive.add("acme_products.csv", ACME.read_bytes(), "text/csv", [FOLDER])
    xlsx_id = drive.add("globex_products.xlsx", GLOBEX.read_bytes(), XLSX, [FOLDER])
    sheet_id = drive.add("Drive launches", as_sheet(sheet_rows), SHEET, [FOLDER])
    drive.add("someone_elses.csv", ACME.read_bytes(), "text/csv", ["2AnotherFolder"])

    runs = daemon.tick(SENSOR)
    assert len(runs) == 3
    received = batches(daemon)
    assert sorted(received) == ["Drive launches.xlsx", "acme_products.csv", "globex_products.xlsx"]
    by_file = {r.dagster_run.tags[TAG_DRIVE_FILE]: r for r in runs}
    assert set(by_file) == {csv_id, xlsx_id, sheet_id}
    assert all(run.dagster_run.tags["claro/source"] == "supplier_drive" for run in runs)
    # Run keys name the file id and its MD5 (a Sheet: its version).
    assert sorted(k.split("@", 1)[1] for k in daemon.launched) == sorted(
        [f"{csv_id}:{drive.files[csv_id].resource()['md5Checksum']}",
         f"{xlsx_id}:{drive.files[xlsx_id].resource()['md5Checksum']}", f"{sheet_id}:v1"])
    # The received files are the bytes Drive holds (the Sheet as its XLSX export), copied into each batch's folder.
    csv_batch = received["acme_products.csv"]
    assert (daemon.claro.batch_dir(csv_batch.key) / "acme_products.csv").read_bytes() == ACME.read_bytes()
    assert {b.status for b in received.values()} <= {"published", "halted"}
    store = daemon.claro.store
    sheet_batch = received["Drive launches.xlsx"]
    assert sheet_batch.status == "published", sheet_batch.message
    found = {sku: store.record("products", sku) for sku in sheet_rows["Product Code"]}
    # Every row of the Sheet is a record, except the one whose GTIN fails its check digit (kept with its reason).
    expected = {sku: title for sku, title, gtin in sheet_rows[["Product Code", "Product Name", "EAN"]].values
                if ean.is_valid(gtin)}
    assert 0 < len(expected) < len(sheet_rows)
    assert {sku: r["title"] for sku, r in found.items() if r is not None} == expected
    assert store.provenance("products", "DRV-00000", "brand").source == "supplier_drive"
    assert received["globex_products.xlsx"].status == "published"
    assert store.record("products", "GLX-00421") is not None
    # What was downloaded: each file once, nothing from outside the folder.
    assert sorted(file_id for file_id, _ in drive.downloads) == sorted([csv_id, xlsx_id, sheet_id])
    assert drive.drive_calls()[:2] == ["drive.changes.getStartPageToken", "drive.files.list"]


def test_an_unchanged_file_is_processed_once_and_a_changed_one_again(daemon, drive):
    acme = pd.read_csv(ACME, dtype=str, keep_default_na=False).head(4)
    file_id = drive.add("weekly.csv", acme.to_csv(index=False).encode(), "text/csv", [FOLDER])
    sheet_id = drive.add("Launches", as_sheet(acme), SHEET, [FOLDER])
    assert len(daemon.tick(SENSOR)) == 2
    assert daemon.tick(SENSOR) == []  # nothing changed: the feed is caught up, nothing downloaded again
    downloads = len(drive.downloads)
    drive.update(file_id, name="weekly.csv")  # touched without new content: same MD5, same batch, same run key
    assert daemon.tick(SENSOR) == [] and len(drive.downloads) == downloads
    changed = acme.assign(**{"Price (GBP)": "999.00"})
    drive.update(file_id, changed.to_csv(index=False).encode())
    drive.update(sheet_id, as_sheet(changed))
    [csv_run, sheet_run] = sorted(daemon.tick(SENSOR), key=lambda r: r.dagster_run.tags["claro/uri"])
    assert len(drive.downloads) == downloads + 2
    assert csv_run.success and sheet_run.success
    assert daemon.claro.store.record("products", acme["Product Code"][0])["price"] == 999.0
    assert sum(1 for b in BatchRegistry(daemon.claro.store).list() if b.source == "supplier_drive") == 4


def test_changes_after_the_first_tick_are_paged_and_only_the_folders_spreadsheets_count(daemon, drive):
    assert daemon.tick(SENSOR) == []  # an empty folder: the start token is the cursor
    first_cursor = daemon.cursors[SENSOR]
    acme = pd.read_csv(ACME, dtype=str, keep_default_na=False).head(3)
    kept = drive.add("a.csv", acme.to_csv(index=False).encode(), "text/csv", [FOLDER])
    binned = drive.add("b.csv", acme.to_csv(index=False).encode(), "text/csv", [FOLDER])
    drive.update(binned, trashed=True)
    gone = drive.add("c.csv", acme.to_csv(index=False).encode(), "text/csv", [FOLDER])
    drive.delete(gone)
    drive.add("elsewhere.csv", acme.to_csv(index=False).encode(), "text/csv", ["2AnotherFolder"])
    drive.add("folder", b"", "application/vnd.google-apps.folder", [FOLDER])
    runs = daemon.tick(SENSOR)
    assert [r.dagster_run.tags[TAG_DRIVE_FILE] for r in runs] == [kept]
    # 6 changes in the feed (a deleted file's creation goes with it), 2 a page: 3 pages in one tick.
    assert sum(1 for c in drive.drive_calls() if c == "drive.changes.list") == 3
    assert daemon.cursors[SENSOR] != first_cursor and quarantined(daemon) == {}


def test_a_pdf_and_a_too_large_file_are_refused_with_their_reasons_kept(daemon, drive):
    drive.add("price list.pdf", b"%PDF-1.7 ...", "application/pdf", [FOLDER])
    drive.add("huge.csv", b"sku,title\n" + b"X-1,mug\n" * 200_000, "text/csv", [FOLDER])
    drive.add("Huge sheet", b"x" * (10 * 1024 * 1024 + 1), SHEET, [FOLDER])
    assert daemon.tick(SENSOR) == []
    reasons = quarantined(daemon)
    assert sorted(reasons) == ["Huge sheet.xlsx", "huge.csv", "price list.pdf"]
    assert "is not a spreadsheet (application/pdf)" in reasons["price list.pdf"]
    assert "'huge.csv'" in reasons["huge.csv"] and "max_file_mb (1 MB)" in reasons["huge.csv"]
    assert "export" in reasons["Huge sheet.xlsx"] and "10 MB" in reasons["Huge sheet.xlsx"]
    assert drive.downloads == [] and batches(daemon) == {}
    assert daemon.tick(SENSOR) == []  # reported once, never processed


def test_a_revoked_key_fails_the_tick_naming_the_variable_and_keeps_the_cursor(daemon, drive):
    daemon.tick(SENSOR)
    cursor = daemon.cursors[SENSOR]
    drive.add("a.csv", b"sku\nA-1\n", "text/csv", [FOLDER])
    drive.revoke()
    with pytest.raises(Exception, match="CLARO_TEST_DRIVE_KEY") as caught:
        daemon.tick(SENSOR)
    assert "revoked" in str(caught.value)
    assert daemon.cursors[SENSOR] == cursor


def test_quota_errors_are_retried_within_the_tick(daemon, drive, monkeypatch):
    waits: list[float] = []
    client = DriveConnection.client
    monkeypatch.setattr(DriveConnection, "client", lambda self, sleep=None: client(self, sleep=waits.append))
    daemon.tick(SENSOR)
    drive.add("a.csv", pd.read_csv(ACME, dtype=str).head(2).to_csv(index=False).encode(), "text/csv", [FOLDER])
    drive.fail_next(429, retry_after="2")
    drive.fail_next(503, retry_after="1")
    [run] = daemon.tick(SENSOR)
    assert run.success and waits == [2.0, 1.0]


def test_claro_check_names_the_line_of_a_drive_source_without_folder_or_key(tmp_path):
    spec = (DEMO_DIR / "claro.yaml").read_text(encoding="utf-8").replace(
        "\nsources:\n", "\nsources:\n  team_drive:\n    catalogue: products\n    kind: drive\n"
                        "    drive_id: 'not an id'\n", 1)
    (tmp_path / "claro.yaml").write_text(spec, encoding="utf-8")
    line = spec.splitlines().index("  team_drive:") + 1
    with pytest.raises(SpecError) as caught:
        load_spec(tmp_path / "claro.yaml")
    message = str(caught.value)
    # A missing key is reported at its source's line, a wrong value at its own line.
    assert f"claro.yaml:{line} sources.team_drive.folder_id: a drive source needs 'folder_id'" in message
    assert f"claro.yaml:{line} sources.team_drive.credentials_env: a drive source needs 'credentials_env'" in message
    assert f"claro.yaml:{line + 3} sources.team_drive.drive_id: 'not an id' is not a shared drive id" in message


def test_the_sensor_definition():
    sensor = build_drive_sensor("x_drive", "x", FOLDER, DEMO_DIR, target=["products/batch_raw"],
                                partitions_def=dg.DynamicPartitionsDefinition(name="products_batches"),
                                resource_key="drive_source_x")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.required_resource_keys == {"drive_source_x"}


def test_claro_upload_refuses_a_drive_source_naming_its_folder(tmp_path):
    import os
    import subprocess
    import sys

    project(tmp_path, extra_sources=SOURCE)
    file = tmp_path / "f.csv"
    file.write_bytes(ACME.read_bytes())
    env = {**os.environ, "CLARO_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-m", "claro_dagster.cli", "--spec", str(tmp_path / "claro.yaml"),
                           "upload", str(file), "--source", "supplier_drive"], env=env, capture_output=True, text=True)
    assert done.returncode == 1 and f"receives its files from Drive folder {FOLDER}, not by upload" in done.stderr


def test_a_shared_drive_folder_with_a_long_feed_is_paged_across_ticks(tmp_path, drive):
    """Evaluated on its own (no runs): a folder in a shared drive, one page of the feed per tick."""
    shared = "0ASharedDrive42"
    partitions = dg.DynamicPartitionsDefinition(name="products_batches")
    sensor = build_drive_sensor("team_drive", "team", FOLDER, tmp_path / "inbox", target=["products/batch_raw"],
                                partitions_def=partitions, resource_key="drive_source_team", drive_id=shared,
                                max_pages_per_tick=1)
    resources = {"drive_source_team": DriveConnection(credentials_env="CLARO_TEST_DRIVE_KEY",
                                                      endpoint_url_env="CLARO_TEST_DRIVE_URL")}
    @dg.asset(partitions_def=partitions, key=["products", "batch_raw"])
    def batch_raw() -> None:
        """Never run here: the sensor's target."""

    defs = dg.Definitions(assets=[batch_raw], sensors=[sensor], resources=resources)
    with dg.instance_for_test() as instance:
        cursor = None

        def tick():
            nonlocal cursor
            context = dg.build_sensor_context(instance=instance, instance_ref=instance.get_ref(), cursor=cursor,
                                              definitions=defs, resources=resources)
            result = sensor.evaluate_tick(context)
            cursor = result.cursor
            return result

        drive.add("my_drive.csv", b"sku\nA-1\n", "text/csv", [FOLDER])  # same folder id, not in the shared drive
        assert tick().run_requests == []
        for i in range(3):
            drive.add(f"other{i}.csv", b"sku\nB-1\n", "text/csv", ["2AnotherFolder"], drive_id=shared)
        wanted = drive.add("team.csv", b"sku\nC-1\n", "text/csv", [FOLDER], drive_id=shared)
        first = tick()
        assert first.run_requests == [] and "changes continue next tick" in first.skip_message
        [request] = tick().run_requests
        assert request.tags[TAG_DRIVE_FILE] == wanted
        assert (tmp_path / "inbox" / request.partition_key / "team.csv").read_bytes() == b"sku\nC-1\n"
        assert "caught up" in tick().skip_message
    listing = [r.path for r in drive.requests if r.path.startswith("/drive/v3/files?")]
    assert all(f"driveId={shared}" in p and "corpora=drive" in p for p in listing)
