"""Batch identity: one received file or submission is one batch (a Dagster dynamic partition)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from claro_dagster.catalogue.common import aware as _aware
from claro_dagster.catalogue.common import dumps, loads, now
from claro_dagster.catalogue.store import CatalogueStore

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
#: The one shape of a batch key: a single path segment (no `/`, never `.` or `..`) short enough to be a file name
#: with a suffix. Every key that comes from outside (a partition key, a run tag, a command-line argument) is
#: checked against it before it names a folder or a file.
BATCH_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,239}")
_MAX_STEM = 160
#: Statuses of a batch whose changes reached the catalogue (`awaiting_review`: published, some changes held back).
PUBLISHED = ("published", "awaiting_review")


class InvalidBatchKey(ValueError):
    """A batch key that could name a path outside the batch's own folder."""


def check_batch_key(key: object) -> str:
    """`key` if it is a well-formed batch key, else InvalidBatchKey saying what a key looks like."""
    if not isinstance(key, str) or not BATCH_KEY.fullmatch(key):
        raise InvalidBatchKey(
            f"{key!r} is not a batch key: a batch key is 1 to 240 letters, digits, '_', '.' or '-', not starting "
            "with '.' or '-' (e.g. 'acme_csv.weekly.csv.0123abcd45'); `claro batches` lists them")
    return key


def content_version(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes: the part of a batch key that changes when the file does."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def receipt_version(name: str, size: int, mtime_ns: int) -> str:
    """A file's version as listing sees it (name, size, modification time), without reading it: what the inbox
    sensor puts in batch keys. The content hash (`content_version`) is taken by the run, which decides whether
    the content was published before."""
    return hashlib.sha256(f"{name}\0{size}\0{mtime_ns}".encode()).hexdigest()


def batch_key(source: str, filename: str, version: str) -> str:
    """`<source>.<file stem>.<first 10 hex of the content version>`.

    Safe as a partition key, a folder name and a URL segment; the same file twice gives the same
    key (processed once), a changed file a new one (processed again).
    """
    stem = _UNSAFE.sub("_", Path(filename).name).strip("_")[:_MAX_STEM] or "file"
    version = _UNSAFE.sub("", version)[:10] or "0"
    prefix = re.sub(r"^[.-]", "_", _UNSAFE.sub("_", source))[:60] or "source"
    return check_batch_key(f"{prefix}.{stem}.{version}")


@dataclass(frozen=True)
class Batch:
    key: str
    catalogue: str
    source: str
    filename: str
    uri: str
    content_version: str | None
    status: str  # received | validated | halted | published | failed | quarantined
    stage: str | None
    message: str | None
    spec_version: str | None
    received_at: datetime
    updated_at: datetime

    @property
    def published(self) -> bool:
        return self.status in PUBLISHED


class BatchRegistry:
    """Where each batch came from and how far it got; rows it rejected, with their reasons."""

    def __init__(self, store: CatalogueStore):
        self.store = store
        self.t = store.t["batches"]
        self.rejected = store.t["rejected_rows"]

    def register(self, key: str, *, catalogue: str, source: str, filename: str, uri: str,
                 content_version: str | None = None) -> Batch:
        """Record a received batch once; registering it again returns what is stored."""
        check_batch_key(key)
        existing = self.get(key)
        if existing is not None:
            return existing
        stamp = now()
        with self.store.engine.begin() as conn:
            conn.execute(self.t.insert().values(
                key=key, catalogue=catalogue, source=source, filename=filename, uri=uri,
                content_version=content_version, status="received", received_at=stamp, updated_at=stamp))
        return self.get(key)

    def receive(self, key: str, *, catalogue: str, source: str, filename: str, uri: str,
                content_version: str | None = None) -> Batch:
        """Record that this content arrived (again) at `uri`.

        A new batch is registered. A batch already published is returned as it is (the same content again
        brings nothing new). Any other batch (quarantined, halted, failed, or never finished) is being
        received again, from wherever this copy lies: its uri follows the new copy, so the run that
        processes it settles that copy and not the one that was moved away.
        """
        existing = self.register(key, catalogue=catalogue, source=source, filename=filename, uri=uri,
                                 content_version=content_version)
        if existing.published or existing.uri == uri:
            return existing
        with self.store.engine.begin() as conn:
            conn.execute(self.t.update().where(self.t.c.key == key).values(uri=uri, filename=filename,
                                                                           updated_at=now()))
        return self.get(key)

    def copy_of(self, source: str, filename: str, content_version: str, *, published: bool = True) -> Batch | None:
        """The newest batch of this source with this file name and content (only a published one, unless
        `published=False`), if any: whether a file received again brings anything new."""
        query = sa.select(self.t).where(self.t.c.source == source, self.t.c.filename == filename,
                                        self.t.c.content_version == content_version)
        if published:
            query = query.where(self.t.c.status.in_(PUBLISHED))
        with self.store.engine.connect() as conn:
            row = conn.execute(query.order_by(self.t.c.updated_at.desc()).limit(1)).first()
        return None if row is None else self._batch(row)

    def record_content_version(self, key: str, content_version: str) -> None:
        """The content hash of a batch's file, taken by the run (a sensor names a batch without reading it)."""
        with self.store.engine.begin() as conn:
            conn.execute(self.t.update().where(self.t.c.key == key).values(content_version=content_version))

    def forget_receipt(self, key: str) -> bool:
        """Remove a batch registered but never processed (e.g. a receipt that turned out to hold the content of a
        published batch). True when it was removed; a batch that got further is kept."""
        with self.store.engine.begin() as conn:
            gone = conn.execute(self.t.delete().where(self.t.c.key == key, self.t.c.status == "received",
                                                      self.t.c.stage.is_(None)))
        return gone.rowcount > 0

    def get(self, key: str) -> Batch | None:
        with self.store.engine.connect() as conn:
            row = conn.execute(sa.select(self.t).where(self.t.c.key == key)).first()
        return None if row is None else self._batch(row)

    def list(self, catalogue: str | None = None, status: str | None = None) -> list[Batch]:
        query = sa.select(self.t).order_by(self.t.c.received_at)
        if catalogue:
            query = query.where(self.t.c.catalogue == catalogue)
        if status:
            query = query.where(self.t.c.status == status)
        with self.store.engine.connect() as conn:
            return [self._batch(r) for r in conn.execute(query)]

    def set_status(self, key: str, status: str, *, stage: str | None = None, message: str | None = None,
                   **extra) -> None:
        with self.store.engine.begin() as conn:
            conn.execute(self.t.update().where(self.t.c.key == key).values(
                status=status, stage=stage, message=message, updated_at=now(), **extra))

    def save_rejected(self, key: str, rows: pd.DataFrame) -> int:
        """Replace the batch's rejected rows (a re-validated batch keeps only its latest verdict)."""
        records = [{"batch": key, "line": int(r["__line__"]) if "__line__" in r and r["__line__"] == r["__line__"]
                    else None, "record": None if r.get("__record__") is None else str(r.get("__record__")),
                    "reasons": str(r["__reasons__"]),
                    "row": dumps({k: _plain(v) for k, v in r.items() if not str(k).startswith("__")})}
                   for r in rows.to_dict("records")]
        with self.store.engine.begin() as conn:
            conn.execute(self.rejected.delete().where(self.rejected.c.batch == key))
            if records:
                conn.execute(self.rejected.insert(), records)
        return len(records)

    def rejected_rows(self, key: str) -> pd.DataFrame:
        """Rejected rows as the supplier sent them, with line number and reasons: ready to send back."""
        with self.store.engine.connect() as conn:
            rows = conn.execute(sa.select(self.rejected).where(self.rejected.c.batch == key)
                                .order_by(self.rejected.c.line)).fetchall()
        return pd.DataFrame([{"line": r.line, "reasons": r.reasons, **(loads(r.row) or {})} for r in rows])

    @staticmethod
    def _batch(r) -> Batch:
        return Batch(r.key, r.catalogue, r.source, r.filename, r.uri, r.content_version, r.status, r.stage,
                     r.message, r.spec_version, _aware(r.received_at), _aware(r.updated_at))


def _plain(value):
    if value is None or (isinstance(value, float) and value != value):
        return None
    if hasattr(value, "item"):  # numpy scalar
        return value.item()
    return value if isinstance(value, str | int | float | bool) else str(value)
