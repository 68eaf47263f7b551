"""The Drive v3 client against the local fake (tests/drive_fake.py), which checks every request against Google's
Drive v3 discovery document (tests/contracts/google/drive.v3.json) and the service-account JWT grant."""

from __future__ import annotations

import hashlib
import io

import pandas as pd
import pytest

from claro_dagster.resources.drive import (
    DriveAuthError,
    DriveClient,
    DriveConnection,
    DriveError,
    DriveFileRejected,
)
from claro_dagster.resources.http import HttpClient
from claro_dagster.spec import DEMO_DIR
from tests.drive_fake import SHEET, XLSX, FakeDrive, write_service_account_key

FOLDER = "folder0123456789"
SHARED = "0AsharedDrive123"
ACME = DEMO_DIR / "inbox" / "acme" / "acme_products.csv"
GLOBEX = DEMO_DIR / "inbox" / "globex" / "globex_products.xlsx"


@pytest.fixture
def fake(tmp_path, monkeypatch):
    with FakeDrive() as drive:
        key = write_service_account_key(drive, tmp_path / "key.json")
        monkeypatch.setenv("CLARO_TEST_DRIVE_KEY", str(key))
        monkeypatch.setenv("CLARO_TEST_DRIVE_URL", drive.url)
        yield drive
        assert drive.contract_errors == []


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client(fake, sleeps) -> DriveClient:
    return DriveClient.from_env("CLARO_TEST_DRIVE_KEY", "CLARO_TEST_DRIVE_URL",
                                http=HttpClient(sleep=sleeps.append, max_attempts=4))


def xlsx(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_excel(buffer, index=False, sheet_name="Products")
    return buffer.getvalue()


def test_service_account_jwt_is_exchanged_for_a_token_and_sent(fake, client):
    fake.add("acme.csv", b"a,b\n", "text/csv", [FOLDER])
    assert [f.name for f in client.list_folder(FOLDER)] == ["acme.csv"]
    [grant] = fake.grants  # signature checked with the key's public half, claims checked by the fake
    assert grant["iss"] == fake.client_email and grant["aud"] == "https://oauth2.googleapis.com/token"
    assert grant["scope"] == "https://www.googleapis.com/auth/drive.readonly"
    drive_requests = [r for r in fake.requests if r.path.startswith("/drive/")]
    assert all(r.headers["Authorization"].startswith("Bearer ya29.fake-") for r in drive_requests)
    client.list_folder(FOLDER).__next__()
    assert len(fake.grants) == 1  # the token is reused while valid


def test_changes_feed_pages_from_the_start_token_to_a_new_start_token(fake, client):
    fake.add("before.csv", b"x\n", "text/csv", [FOLDER])
    token = client.start_page_token()
    ids = [fake.add(f"f{i}.csv", f"{i}\n".encode(), "text/csv", [FOLDER]) for i in range(5)]
    fake.update(ids[0], b"changed\n")
    pages = []
    while True:
        page = client.changes(token)
        pages.append(page)
        token = page.token
        if page.caught_up:
            break
    assert len(pages) == 3  # 6 changes, 2 a page (the fake's page size), whatever pageSize asks
    seen = [c.file for p in pages for c in p.changes]
    assert [f.id for f in seen] == [*ids, ids[0]]  # 'before.csv' came before the token
    assert all(f.parents == (FOLDER,) and f.md5 and f.version for f in seen)  # fields= asked for them
    assert seen[-1].md5 == hashlib.md5(b"changed\n").hexdigest()
    assert client.changes(token).changes == []  # caught up: nothing new
    assert fake.drive_calls()[:2] == ["drive.changes.getStartPageToken", "drive.changes.list"]


def test_a_removed_file_and_a_trashed_one_are_reported_as_such(fake, client):
    token = client.start_page_token()
    gone, trashed = fake.add("gone.csv", b"1\n", "text/csv", [FOLDER]), fake.add("t.csv", b"2\n", "text/csv", [FOLDER])
    fake.delete(gone)
    fake.update(trashed, trashed=True)
    changes = []
    while True:
        page = client.changes(token)
        changes += page.changes
        token = page.token
        if page.caught_up:
            break
    assert [(c.file_id, c.removed) for c in changes if c.file is None] == [(gone, True)]
    assert [c.file.trashed for c in changes if c.file_id == trashed] == [True, True]


def test_folder_listing_pages_and_leaves_out_trash_and_other_folders(fake, client):
    names = [f"supplier_{i}.csv" for i in range(5)]
    for name in names:
        fake.add(name, b"a\n", "text/csv", [FOLDER])
    fake.add("elsewhere.csv", b"a\n", "text/csv", ["otherfolder1"])
    fake.update(fake.add("binned.csv", b"a\n", "text/csv", [FOLDER]), trashed=True)
    assert sorted(f.name for f in client.list_folder(FOLDER)) == names
    listing = [r.path for r in fake.requests if r.path.startswith("/drive/v3/files?")]
    assert len(listing) == 3 and "trashed%3Dfalse" in listing[0]


def test_shared_drive_files_are_reached_with_the_shared_drive_parameters(fake, client):
    fake.add("team.xlsx", b"PK", XLSX, [FOLDER], drive_id=SHARED)
    assert list(client.list_folder(FOLDER)) == []  # without the shared drive, Drive does not show them
    [found] = client.list_folder(FOLDER, drive_id=SHARED)
    assert found.name == "team.xlsx" and found.kind == "xlsx"
    token = client.start_page_token(SHARED)
    fake.update(found.id, b"PK2")
    [change] = client.changes(token, SHARED).changes
    assert change.file.id == found.id
    last = fake.requests[-1].path
    assert all(p in last for p in ("driveId=" + SHARED, "supportsAllDrives=true", "includeItemsFromAllDrives=true"))


def test_a_csv_is_streamed_to_disk_and_a_sheet_exported_as_xlsx(fake, client, tmp_path):
    csv_id = fake.add("acme_products.csv", ACME.read_bytes(), "text/csv", [FOLDER])
    frame = pd.read_csv(ACME, dtype=str, keep_default_na=False)
    exported = xlsx(frame)
    sheet_id = fake.add("Acme sheet", exported, SHEET, [FOLDER])
    csv = client.download(client.get(csv_id), tmp_path / "a" / "acme_products.csv")
    assert csv.read_bytes() == ACME.read_bytes() and not list(tmp_path.glob("a/*.part"))
    sheet_file = client.get(sheet_id)
    assert sheet_file.filename == "Acme sheet.xlsx" and sheet_file.md5 is None
    sheet = client.download(sheet_file, tmp_path / "b" / sheet_file.filename)
    pd.testing.assert_frame_equal(pd.read_excel(sheet, dtype=str, keep_default_na=False), frame)
    assert "drive.files.export" in fake.drive_calls()
    assert fake.downloads == [(csv_id, ACME.stat().st_size), (sheet_id, len(exported))]


def test_a_sheet_over_the_export_limit_is_rejected_by_drive_and_named(fake, client, tmp_path):
    big = fake.add("Huge price list", b"x" * (10 * 1024 * 1024 + 1), SHEET, [FOLDER])
    with pytest.raises(DriveFileRejected) as caught:
        client.download(client.get(big), tmp_path / "out" / "huge.xlsx")
    assert "'Huge price list'" in str(caught.value) and "10 MB" in str(caught.value)
    assert fake.downloads == [] and list((tmp_path / "out").glob("*")) == []


def test_a_file_over_the_max_size_is_rejected_before_it_is_downloaded(fake, client, tmp_path):
    big = fake.add("big.csv", b"sku\n" + b"A\n" * 600_000, "text/csv", [FOLDER])
    with pytest.raises(DriveFileRejected) as caught:
        client.download(client.get(big), tmp_path / "out" / "big.csv", max_bytes=1024 * 1024)
    assert "'big.csv'" in str(caught.value) and "max_file_mb (1 MB)" in str(caught.value)
    assert fake.downloads == [] and list((tmp_path / "out").glob("*")) == []


def test_a_file_that_is_not_a_spreadsheet_is_rejected(fake, client, tmp_path):
    pdf = client.get(fake.add("catalogue.pdf", b"%PDF-1.7", "application/pdf", [FOLDER]))
    with pytest.raises(DriveFileRejected, match=r"'catalogue.pdf' .* is not a spreadsheet \(application/pdf\)"):
        client.download(pdf, tmp_path / "catalogue.pdf")
    assert fake.downloads == []


def test_429_and_503_are_retried_after_their_retry_after(fake, client, sleeps):
    fake.add("acme.csv", b"a\n", "text/csv", [FOLDER])
    client.start_page_token()  # a token first, so the failures hit Drive calls
    fake.fail_next(429, retry_after="3")
    fake.fail_next(503, retry_after="1.5")
    assert [f.name for f in client.list_folder(FOLDER)] == ["acme.csv"]
    assert sleeps == [3.0, 1.5]


def test_drives_403_rate_limit_reason_is_retried_with_backoff(fake, client, sleeps):
    client.start_page_token()
    fake.fail_next(403, count=2, retry_after=None)
    assert client.start_page_token()
    assert len(sleeps) == 2 and all(0 <= s <= 1.0 for s in sleeps)  # jittered backoff: 0.5 s, then 1 s at most


def test_quota_errors_that_do_not_stop_fail_clearly(fake, client, sleeps):
    client.start_page_token()
    fake.fail_next(429, count=4, retry_after="2")
    with pytest.raises(DriveError, match="HTTP 429 rateLimitExceeded"):
        client.start_page_token()
    assert sleeps == [2.0, 2.0, 2.0]


def test_a_revoked_key_gives_a_clear_error_naming_the_variable(fake, client):
    client.start_page_token()
    fake.revoke()
    with pytest.raises(DriveAuthError) as caught:
        client.start_page_token()
    message = str(caught.value)
    assert "CLARO_TEST_DRIVE_KEY" in message and "revoked" in message and "invalid_grant" in message
    assert "BEGIN PRIVATE KEY" not in message and "ya29" not in message


def test_unset_or_wrong_variables_are_named(fake, monkeypatch, tmp_path):
    monkeypatch.delenv("CLARO_TEST_DRIVE_KEY")
    with pytest.raises(DriveAuthError, match="CLARO_TEST_DRIVE_KEY is not set"):
        DriveConnection(credentials_env="CLARO_TEST_DRIVE_KEY", endpoint_url_env="CLARO_TEST_DRIVE_URL").client()
    monkeypatch.setenv("CLARO_TEST_DRIVE_KEY", str(tmp_path / "nowhere.json"))
    with pytest.raises(DriveAuthError, match="CLARO_TEST_DRIVE_KEY names .*nowhere.json, which does not exist"):
        DriveClient.from_env("CLARO_TEST_DRIVE_KEY", "CLARO_TEST_DRIVE_URL")
    (tmp_path / "not_a_key.json").write_text('{"type": "authorized_user"}')
    monkeypatch.setenv("CLARO_TEST_DRIVE_KEY", str(tmp_path / "not_a_key.json"))
    with pytest.raises(DriveAuthError, match="not a service-account key file"):
        DriveClient.from_env("CLARO_TEST_DRIVE_KEY", "CLARO_TEST_DRIVE_URL")


def test_the_fake_refuses_what_the_discovery_document_does_not_allow(fake, client):
    """The contract check is generic: an unknown parameter, a missing required one, a bad boolean all fail."""
    token = client._token(force=False)
    http, base, auth = client.http, client.base_url, {"Authorization": f"Bearer {token}"}
    assert http.get(base + "files", params={"pageSizes": 3}, headers=auth, raise_for_status=False).status_code == 400
    assert http.get(base + "files/x/export", headers=auth, raise_for_status=False).status_code == 400
    assert http.get(base + "changes", params={"pageToken": "1", "supportsAllDrives": "yes"}, headers=auth,
                    raise_for_status=False).status_code == 400
    assert fake.contract_errors == ["drive.files.list: unknown query parameter 'pageSizes'",
                                    "drive.files.export: required parameter 'mimeType' missing",
                                    "drive.changes.list: supportsAllDrives='yes' is not a boolean"]
    fake.contract_errors.clear()
    # Without fields=, Drive v3 gives a file's kind, id, name and mimeType only: the client must ask for parents.
    file_id = fake.add("a.csv", b"a\n", "text/csv", [FOLDER])
    assert set(http.get(base + f"files/{file_id}", headers=auth).json()) == {"kind", "id", "name", "mimeType"}
