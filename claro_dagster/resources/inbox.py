"""Inbox folders: a local folder per source that suppliers (or `claro upload`) drop files into.

Layout of an inbox root:

    <root>/                      files waiting to be processed (sub-folders are scanned too)
    <root>/processed/<batch>/    files whose batch was processed (`Inbox.mark_processed`)
    <root>/quarantine/<batch>/   files that were refused, each with `<name>.reason.txt` beside it

`pending()` ignores dot-files and dot-folders, partial uploads (`*.part`, `*.tmp`, `*.partial`,
`*.crdownload`), Office lock files (`~$*`), the `processed/` and `quarantine/` folders, and symbolic links
that lead out of the inbox (a link must not turn any file the process can read into a batch). Files are
moved, never deleted; a move never overwrites an existing file (a second file of the same name in
the same batch folder is stored as `<stem>~2<suffix>`, `~3`, ...).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from claro_dagster.catalogue.batches import check_batch_key, content_version, receipt_version

PROCESSED = "processed"
QUARANTINE = "quarantine"
PARTIAL_SUFFIXES: tuple[str, ...] = (".part", ".tmp", ".partial", ".crdownload")
NOTE_SUFFIXES: tuple[str, ...] = (".reason.txt", ".note.txt")

#: relative path -> [size, mtime_ns, inode, version]; lets callers skip re-hashing unchanged files.
HashCache = Mapping[str, list]


@dataclass(frozen=True)
class InboxFile:
    path: Path
    name: str
    size: int
    mtime: float
    version: str
    mtime_ns: int = 0
    inode: int = 0
    relative: str = ""

    def cache_entry(self) -> list:
        return [self.size, self.mtime_ns, self.inode, self.version]


def is_ignored_name(name: str) -> bool:
    """Dot-files, partial uploads and Office lock files are never pending."""
    return name.startswith(".") or name.startswith("~$") or name.lower().endswith(PARTIAL_SUFFIXES)


class Inbox:
    """One source's inbox folder. Plain class: the sensor lists it, the run moves files."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def processed_dir(self) -> Path:
        return self.root / PROCESSED

    @property
    def quarantine_dir(self) -> Path:
        return self.root / QUARANTINE

    def pending(self, known: HashCache | None = None, *, min_age_seconds: float = 0.0,
                read_contents: bool = True) -> list[InboxFile]:
        """Files waiting to be processed, oldest first (by mtime, then relative path).

        `version` is the file's content hash (`content_version`); with `read_contents=False` no file is read
        and `version` is its `receipt_version` (name, size, modification time): what a sensor tick uses.
        `known` (relative path -> `InboxFile.cache_entry()`) avoids re-hashing a file whose size, mtime and
        inode are unchanged. `min_age_seconds` > 0 skips files modified more recently than that (for
        uploaders that write in place without a `.part` name).
        """
        if not self.root.is_dir():
            return []
        known = known or {}
        now = datetime.now(UTC).timestamp()
        found: list[InboxFile] = []
        for path in self._walk():
            try:
                stat = path.stat()
            except FileNotFoundError:  # moved away while listing
                continue
            if min_age_seconds > 0 and now - stat.st_mtime < min_age_seconds:
                continue
            relative = path.relative_to(self.root).as_posix()
            cached = known.get(relative)
            if not read_contents:
                version = receipt_version(path.name, stat.st_size, stat.st_mtime_ns)
            elif cached and list(cached[:3]) == [stat.st_size, stat.st_mtime_ns, stat.st_ino]:
                version = str(cached[3])
            else:
                try:
                    version = content_version(path)
                except FileNotFoundError:
                    continue
            found.append(InboxFile(path=path, name=path.name, size=stat.st_size, mtime=stat.st_mtime,
                                   version=version, mtime_ns=stat.st_mtime_ns, inode=stat.st_ino,
                                   relative=relative))
        found.sort(key=lambda f: (f.mtime_ns, f.relative))
        return found

    def contains(self, path: str | Path) -> bool:
        """True when `path`, with every symbolic link resolved, lies inside this inbox."""
        try:
            Path(path).resolve().relative_to(self.root.resolve())
        except (ValueError, OSError):
            return False
        return True

    def _walk(self) -> Iterator[Path]:
        # os.walk does not descend into linked folders (followlinks=False); linked files are checked here.
        for dirpath, dirnames, filenames in os.walk(self.root):
            here = Path(dirpath)
            dirnames[:] = sorted(
                d for d in dirnames
                if not d.startswith(".") and not (here == self.root and d in {PROCESSED, QUARANTINE})
            )
            for filename in sorted(filenames):
                path = here / filename
                if is_ignored_name(filename) or not path.is_file():
                    continue
                if path.is_symlink() and not self.contains(path):
                    continue
                yield path

    def times_settled(self, batch_key: str) -> int:
        """How many copies of this batch's content were moved to processed/ or quarantine/ so far.

        The inbox sensor puts this number in its run keys: a copy dropped again after the last one was
        settled is a new receipt, and gets a run of its own.
        """
        check_batch_key(batch_key)
        count = 0
        for area in (self.processed_dir, self.quarantine_dir):
            folder = area / batch_key
            if folder.is_dir():
                count += sum(1 for p in folder.iterdir() if not p.name.endswith(NOTE_SUFFIXES))
        return count

    def mark_processed(self, path: str | Path, batch_key: str, note: str | None = None) -> Path:
        """Move a pending file into `processed/<batch_key>/<name>`; returns the new path.

        A `note` (e.g. why nothing was done with it) is written beside it as `<name>.note.txt`.
        """
        source = Path(path)
        moved = self._move(source, PROCESSED, batch_key)
        if note:
            _write_note(moved.with_name(moved.name + ".note.txt"), note, batch_key, source, "processed_at")
        return moved

    def quarantine(self, path: str | Path, batch_key: str, reason: str) -> Path:
        """Move a pending file into `quarantine/<batch_key>/<name>` with `<name>.reason.txt` beside it."""
        source = Path(path)
        moved = self._move(source, QUARANTINE, batch_key)
        _write_note(moved.with_name(moved.name + ".reason.txt"), reason, batch_key, source, "quarantined_at")
        return moved

    def upload(self, src: str | Path, on_progress: Callable[[int], None] | None = None) -> Path:
        return upload(src, self.root, on_progress)

    def _move(self, path: Path, area: str, batch_key: str) -> Path:
        check_batch_key(batch_key)
        root = self.root.resolve()
        resolved = path.resolve()
        try:
            relative = resolved.relative_to(root)
        except ValueError:
            raise ValueError(f"{path} is not inside the inbox {self.root}") from None
        if relative.parts and relative.parts[0] in {PROCESSED, QUARANTINE}:
            raise ValueError(f"{path} was already moved to {relative.parts[0]}/")
        if not resolved.is_file():
            raise FileNotFoundError(path)
        folder = root / area / batch_key
        folder.mkdir(parents=True, exist_ok=True)
        for candidate in _candidates(folder, resolved.name):
            if _place(resolved, candidate):
                return candidate
        raise AssertionError("unreachable")


def upload(src: str | Path, inbox_dir: str | Path, on_progress: Callable[[int], None] | None = None) -> Path:
    """Copy `src` into `inbox_dir` atomically (write `.<name>.*.part`, then rename into place).

    A file of the same name is never overwritten: if it holds the same bytes the upload is a
    no-op and returns it, otherwise the copy is stored as `<stem>~2<suffix>` (or `~3`, ...).
    `on_progress(n)` hears of every n bytes copied.
    """
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(src)
    folder = Path(inbox_dir)
    folder.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{src.name}.", suffix=".part", dir=folder)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(handle, "wb") as out, open(src, "rb") as inp:
            if on_progress is None:
                shutil.copyfileobj(inp, out, 1 << 20)
            else:
                while block := inp.read(1 << 20):
                    out.write(block)
                    on_progress(len(block))
            out.flush()
            os.fsync(out.fileno())
        version = None
        for candidate in _candidates(folder, src.name):
            if candidate.exists():
                version = version or content_version(tmp)
                if candidate.is_file() and content_version(candidate) == version:
                    return candidate
                continue
            if _place(tmp, candidate):
                return candidate
        raise AssertionError("unreachable")
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_note(note: Path, text: str, batch_key: str, source: Path, stamp: str) -> None:
    with open(note, "x", encoding="utf-8") as handle:
        handle.write(f"{text.rstrip()}\n\nbatch: {batch_key}\nfile: {source}\n"
                     f"{stamp}: {datetime.now(UTC).isoformat()}\n")


def _candidates(folder: Path, name: str) -> Iterator[Path]:
    yield folder / name
    stem, suffix = os.path.splitext(name)
    n = 2
    while True:
        yield folder / f"{stem}~{n}{suffix}"
        n += 1


def _place(src: Path, dest: Path) -> bool:
    """Move `src` to `dest` unless `dest` exists (never overwrites). False if `dest` was taken."""
    try:
        os.link(src, dest)  # atomic "create if absent"
    except FileExistsError:
        return False
    except OSError:  # file system without hard links: check, then rename (small race window)
        if dest.exists():
            return False
        os.rename(src, dest)
        return True
    os.unlink(src)
    return True
