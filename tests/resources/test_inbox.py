"""Inbox folders: what is pending, moving to processed/ and quarantine/, atomic uploads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from claro_dagster.catalogue.batches import content_version, receipt_version
from claro_dagster.resources.inbox import Inbox, InboxFile, upload


def _write(path: Path, data: bytes, mtime: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def test_pending_lists_real_files_only(tmp_path):
    root = tmp_path / "inbox"
    newer = _write(root / "b.csv", b"b", mtime=2_000_000_000)
    older = _write(root / "a.xlsx", b"a", mtime=1_900_000_000)
    nested = _write(root / "supplier" / "c.csv", b"c", mtime=2_100_000_000)
    for ignored in [".hidden.csv", "upload.csv.part", "x.tmp", "y.TMP", "z.crdownload", "~$a.xlsx",
                    "processed/k/old.csv", "quarantine/k/bad.csv", ".git/config", "supplier/.DS_Store"]:
        _write(root / ignored, b"ignored")

    files = Inbox(root).pending()

    assert [f.path for f in files] == [older, newer, nested]  # oldest first
    first = files[0]
    assert isinstance(first, InboxFile)
    assert (first.name, first.size, first.mtime) == ("a.xlsx", 1, 1_900_000_000)
    assert first.version == content_version(older)
    assert files[2].relative == "supplier/c.csv"


def test_pending_of_missing_folder_is_empty(tmp_path):
    assert Inbox(tmp_path / "nope").pending() == []


def test_pending_uses_known_hashes_for_unchanged_files(tmp_path):
    path = _write(tmp_path / "a.csv", b"one")
    [first] = Inbox(tmp_path).pending()
    cache = {first.relative: [*first.cache_entry()[:3], "cached-version"]}
    assert Inbox(tmp_path).pending(cache)[0].version == "cached-version"  # not re-hashed

    _write(path, b"two!", mtime=first.mtime + 10)
    assert Inbox(tmp_path).pending(cache)[0].version == content_version(path)


def test_pending_without_reading_versions_files_by_name_size_and_time(tmp_path):
    path = _write(tmp_path / "a.csv", b"one", mtime=1_900_000_000)
    [listed] = Inbox(tmp_path).pending(read_contents=False)
    assert listed.version == receipt_version("a.csv", 3, 1_900_000_000 * 10**9)
    assert listed.version != content_version(path)

    _write(path, b"two", mtime=1_900_000_000)  # same name, size and time: the same receipt (the run hashes it)
    assert Inbox(tmp_path).pending(read_contents=False)[0].version == listed.version
    _write(path, b"two", mtime=1_900_000_001)
    assert Inbox(tmp_path).pending(read_contents=False)[0].version != listed.version
    _write(path, b"four", mtime=1_900_000_000)
    assert Inbox(tmp_path).pending(read_contents=False)[0].version != listed.version
    os.rename(path, tmp_path / "b.csv")
    assert Inbox(tmp_path).pending(read_contents=False)[0].version != listed.version


def test_pending_min_age_skips_files_still_being_written(tmp_path):
    path = _write(tmp_path / "a.csv", b"a")
    assert Inbox(tmp_path).pending(min_age_seconds=3600) == []
    os.utime(path, (path.stat().st_mtime - 7200,) * 2)
    assert [f.path for f in Inbox(tmp_path).pending(min_age_seconds=3600)] == [path]


def test_mark_processed_moves_and_never_overwrites(tmp_path):
    inbox = Inbox(tmp_path)
    path = _write(tmp_path / "products.csv", b"v1")
    moved = inbox.mark_processed(path, "acme.products.abc")
    assert moved == tmp_path / "processed" / "acme.products.abc" / "products.csv"
    assert moved.read_bytes() == b"v1" and not path.exists()
    assert inbox.pending() == []

    again = _write(tmp_path / "products.csv", b"v1 again")
    moved2 = inbox.mark_processed(again, "acme.products.abc")
    assert moved2.name == "products~2.csv" and moved2.read_bytes() == b"v1 again"
    assert moved.read_bytes() == b"v1"


def test_quarantine_moves_and_writes_reason(tmp_path):
    inbox = Inbox(tmp_path)
    path = _write(tmp_path / "sub" / "bad.csv", b"garbage")
    moved = inbox.quarantine(path, "acme.bad.123", "no header row\nline 2")
    assert moved == tmp_path / "quarantine" / "acme.bad.123" / "bad.csv"
    assert moved.read_bytes() == b"garbage" and not path.exists()
    reason = (moved.parent / "bad.csv.reason.txt").read_text()
    assert reason.startswith("no header row\nline 2\n") and "acme.bad.123" in reason
    assert inbox.pending() == []

    second = inbox.quarantine(_write(tmp_path / "bad.csv", b"more garbage"), "acme.bad.123", "again")
    assert second.name == "bad~2.csv"
    assert (second.parent / "bad~2.csv.reason.txt").read_text().startswith("again")
    assert (moved.parent / "bad.csv.reason.txt").read_text().startswith("no header row")


def test_moves_refuse_bad_paths_and_keys(tmp_path):
    inbox = Inbox(tmp_path / "inbox")
    outside = _write(tmp_path / "elsewhere.csv", b"x")
    inside = _write(tmp_path / "inbox" / "a.csv", b"a")
    with pytest.raises(ValueError, match="not inside"):
        inbox.mark_processed(outside, "k")
    for bad_key in ["../escape", "a/b", "", ".hidden", "x\n", "..", "-rf", "k" * 241]:
        with pytest.raises(ValueError, match="is not a batch key"):
            inbox.mark_processed(inside, bad_key)
    moved = inbox.mark_processed(inside, "k")
    with pytest.raises(ValueError, match="already moved"):
        inbox.quarantine(moved, "k", "twice")
    with pytest.raises(FileNotFoundError):
        inbox.mark_processed(tmp_path / "inbox" / "missing.csv", "k")
    assert outside.exists() and moved.exists()


def test_upload_is_atomic_and_never_overwrites(tmp_path):
    src = _write(tmp_path / "src" / "products.csv", b"sku\n001\n")
    inbox_dir = tmp_path / "inbox"

    first = upload(src, inbox_dir)
    assert first == inbox_dir / "products.csv" and first.read_bytes() == b"sku\n001\n"
    assert src.read_bytes() == b"sku\n001\n"
    assert sorted(p.name for p in inbox_dir.iterdir()) == ["products.csv"]  # no .part left behind

    assert upload(src, inbox_dir) == first  # same bytes: no second copy
    assert sorted(p.name for p in inbox_dir.iterdir()) == ["products.csv"]

    _write(src, b"sku\n002\n")
    second = Inbox(inbox_dir).upload(src)
    assert second == inbox_dir / "products~2.csv" and second.read_bytes() == b"sku\n002\n"
    assert first.read_bytes() == b"sku\n001\n"
    assert [f.name for f in Inbox(inbox_dir).pending()] == ["products.csv", "products~2.csv"]

    with pytest.raises(FileNotFoundError):
        upload(tmp_path / "missing.csv", inbox_dir)


def test_pending_does_not_follow_links_out_of_the_inbox(tmp_path):
    root = tmp_path / "inbox"
    secret = _write(tmp_path / "secret" / "passwords.csv", b"user,password\n")
    own = _write(root / "real.csv", b"sku\n001\n")
    (root / "to_secret.csv").symlink_to(secret)
    (root / "secret_folder").symlink_to(secret.parent, target_is_directory=True)
    (root / "again.csv").symlink_to(own)  # a link that stays inside the inbox is an ordinary file
    assert sorted(f.relative for f in Inbox(root).pending()) == ["again.csv", "real.csv"]
    assert not Inbox(root).contains(root / "to_secret.csv")
    with pytest.raises(ValueError, match="not inside"):
        Inbox(root).quarantine(root / "to_secret.csv", "k", "moved through a link")
    assert secret.exists()


def test_processed_with_a_note_and_copies_settled_per_batch(tmp_path):
    inbox = Inbox(tmp_path)
    assert inbox.times_settled("acme.products.abc") == 0
    moved = inbox.mark_processed(_write(tmp_path / "products.csv", b"v1"), "acme.products.abc",
                                 note="already published: nothing new in it")
    assert (moved.parent / "products.csv.note.txt").read_text().startswith("already published: nothing new")
    inbox.quarantine(_write(tmp_path / "products.csv", b"v1"), "acme.products.abc", "unreadable")
    assert inbox.times_settled("acme.products.abc") == 2  # notes and reasons are not copies
    assert inbox.times_settled("acme.other.abc") == 0
    with pytest.raises(ValueError, match="is not a batch key"):
        inbox.times_settled("../acme")
