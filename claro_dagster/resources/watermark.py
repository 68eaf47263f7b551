"""Incremental pulls by a watermark column, shared by the database sources (BigQuery, PostgreSQL/Supabase).

A pull takes the rows whose watermark is >= the stored one, in (watermark, key) order, less the keys already taken
at exactly the stored watermark. So rows that share the boundary watermark are never lost, whether a pull ended
between them (a row limit) or one of them was written after the pull (a late row with the same watermark and a
smaller key). The cursor is a small JSON object:

    {"value": <the last watermark pulled, as text>, "type": <its type, for the next query's parameter>,
     "keys": [<the keys pulled at exactly that watermark>]}

Only the keys at the last watermark are kept, so the cursor stays small unless very many rows share one watermark.
No Dagster here: the sensors store the cursor (catalogue store, one per source) only after the pulled file is
written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any


def parse_cursor(text: str | None) -> dict | None:
    """The stored cursor (None: never pulled). A cursor that is not ours fails, saying how to start over."""
    if not text:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict) or "value" not in data:
        raise ValueError(f"not a watermark cursor: {text[:80]!r}; delete the source's cursor in the catalogue "
                         "store to pull everything again")
    return data


def cursor_json(cursor: dict | None) -> str:
    return json.dumps(cursor, sort_keys=True, separators=(",", ":")) if cursor else ""


def taken_keys(cursor: dict | None) -> set[str]:
    return set(cursor.get("keys", [])) if cursor else set()


def already_taken(cursor: dict | None, seen: set[str], value: str, key: str) -> bool:
    """Was the row (watermark `value`, `key`, both as text) taken by the pull that left `cursor`?"""
    return bool(cursor) and value == cursor["value"] and key in seen


class NextCursor:
    """The cursor after a pull, fed the pulled rows in (watermark, key) order: row by row (`see`) or a chunk at a
    time (`see_chunk`, which looks only at the chunk's tail, so a streamed pull pays nothing per row)."""

    def __init__(self, cursor: dict | None):
        self.start = cursor
        self.value: str | None = None
        self.keys: list[str] = []

    def see(self, value: str, key: str) -> None:
        if value != self.value:
            self.value, self.keys = value, []
        self.keys.append(key)

    def see_chunk(self, rows: Sequence[Sequence[Any]], value_at: int, key_at: int) -> None:
        if not rows:
            return
        last = rows[-1][value_at]
        if last != self.value:
            self.value, self.keys = last, []
        for row in reversed(rows):
            if row[value_at] != last:
                break
            self.keys.append(str(row[key_at]))

    def cursor(self, kind: str) -> dict | None:
        """The next cursor, or None when nothing was pulled (the stored one stays)."""
        if self.value is None:
            return None
        keys = list(self.keys)
        if self.start and self.start["value"] == self.value:
            keys += self.start.get("keys", [])
        return {"value": self.value, "type": kind, "keys": sorted(set(keys))}
