"""Batch identity: one received file or submission is one batch (a Dagster dynamic partition)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def content_version(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes: the part of a batch key that changes when the file does."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def batch_key(source: str, filename: str, version: str) -> str:
    """`<source>.<file stem>.<first 10 hex of the content version>`.

    Safe as a partition key, a folder name and a URL segment; the same file twice gives the same
    key (processed once), a changed file a new one (processed again).
    """
    stem = _UNSAFE.sub("_", Path(filename).name).strip("_") or "file"
    version = _UNSAFE.sub("", version)[:10] or "0"
    return f"{_UNSAFE.sub('_', source)}.{stem}.{version}"
