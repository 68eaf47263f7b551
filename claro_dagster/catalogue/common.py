"""Small helpers every part of the store shares: time, JSON text, missing values, key chunks."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from claro_dagster.catalogue.changes import is_missing

CHUNK = 500  # keys per IN (...) clause: well under SQLite's and PostgreSQL's parameter limits


def now() -> datetime:
    return datetime.now(UTC)


def dumps(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def loads(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)  # SQLite drops the offset; we only ever write UTC
    return value


def values_equal(a: Any, b: Any) -> bool:
    if is_missing(a) and is_missing(b):
        return True
    return a == b


def chunks(items: list, size: int = CHUNK):
    for i in range(0, len(items), size):
        yield items[i:i + size]
