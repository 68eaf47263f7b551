"""Small helpers every part of the store shares: time, JSON text, missing values, key chunks."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

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


# ---------------------------------------------------------------------- row content hashes
# A record's content hash is computed column-wise on Arrow buffers with numpy, never per row in Python:
# an unchanged re-import of a million rows costs one vectorised pass, not a million Python objects.
# The algorithm is ours (not a library's unstable internal hash) because stored hashes outlive library
# versions; `ROW_HASH_VERSION` names it, and the store rehashes a catalogue whose hashes were made otherwise.
ROW_HASH_VERSION = "arrow-words-v1"
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_NULL = np.uint64(0x9E3779B97F4A7C15)
_BATCH = 1 << 16  # rows hashed at a time: the word arrays of one batch stay in the CPU cache
_TAIL_MASKS = np.array([(1 << (8 * i)) - 1 for i in range(8)], dtype=np.uint64)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place: every input bit reaches every output bit."""
    z ^= z >> np.uint64(30)
    z *= _M1
    z ^= z >> np.uint64(27)
    z *= _M2
    z ^= z >> np.uint64(31)
    return z


def _positions(count: int) -> np.ndarray:
    """Odd 64-bit keys, one per word position: splitmix64 of the position, fixed by this code alone (a random
    generator's stream may change with a numpy release, and stored hashes must not)."""
    return _mix(np.arange(count, dtype=np.uint64) * _NULL + _M1) | np.uint64(1)


_WORD_KEYS = _positions(4096)


def _word_keys(count: int) -> np.ndarray:
    global _WORD_KEYS
    if count > len(_WORD_KEYS):  # a very long text: more positions
        _WORD_KEYS = _positions(count)
    return _WORD_KEYS


def _text_hash(array: pa.Array) -> np.ndarray:
    """Per value: sum of its 8-byte words times odd per-position keys (any one changed word changes the sum),
    mixed with its byte length; nulls hash to a constant."""
    n = len(array)
    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        array = array.cast(pa.large_string())
    _validity, offsets_buf, data_buf = array.buffers()
    width = np.int64 if pa.types.is_large_string(array.type) else np.int32
    offsets = np.frombuffer(offsets_buf, dtype=width)[array.offset:array.offset + n + 1].astype(np.int64)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    start = int(offsets[0])
    data = np.concatenate([data[start:int(offsets[-1])], np.zeros(8, np.uint8)])  # padded: last words read past
    starts = offsets[:-1] - start
    lengths = np.diff(offsets)
    view = np.ndarray(shape=(len(data) - 7,), dtype="<u8", buffer=data, strides=(1,))  # unaligned 8-byte words
    full, tail = lengths >> 3, lengths & 7
    keys = _word_keys(int(full.max(initial=0)) + 1)
    sums = np.zeros(n, dtype=np.uint64)
    # Word k of every value long enough: all rows while all are, then a shrinking set (a long text costs only
    # its own words, not a pass over every row).
    active, shortest = None, int(full.min(initial=0))
    for k in range(int(full.max(initial=0))):
        if active is None and shortest > k:
            sums += view[starts + (k << 3)] * keys[k]
            continue
        active = np.flatnonzero(full > k) if active is None else active[full[active] > k]
        sums[active] += view[starts[active] + (k << 3)] * keys[k]
    # The last, partial word of each value: only its own bytes count.
    partial = np.flatnonzero(tail)
    if len(partial):
        words = view[starts[partial] + (full[partial] << 3)] & _TAIL_MASKS[tail[partial]]
        sums[partial] += words * keys[full[partial]]
    hashed = _mix(sums ^ _mix(lengths.astype(np.uint64) + _NULL))
    if array.null_count:
        hashed[np.asarray(array.is_null())] = _NULL
    return hashed


def _number_hash(array: pa.Array) -> np.ndarray:
    values = np.asarray(array.cast(pa.float64()).fill_null(np.nan)).astype(np.float64)
    values = np.where(values == 0, 0.0, values)  # -0.0 is 0.0
    hashed = _mix(values.view(np.uint64) ^ _M1)
    hashed[np.isnan(values)] = _NULL
    return hashed


def row_hash(table: pa.Table, numbers: set[str] | frozenset[str] = frozenset()) -> np.ndarray:
    """The content hash (int64) of each row of `table`, over its columns in order: `numbers` are hashed as
    float64, every other column as text. Equal values give equal hashes whatever the Arrow layout."""
    out = np.empty(table.num_rows, dtype=np.int64)

    def hash_batch(begin: int) -> None:
        batch = table.slice(begin, _BATCH)
        h = np.zeros(batch.num_rows, dtype=np.uint64)
        for i, name in enumerate(batch.column_names):
            column = batch.column(i).combine_chunks()
            part = _number_hash(column) if name in numbers else _text_hash(column)
            h = _mix(h * _M2 + part + np.uint64(i))
        out[begin:begin + batch.num_rows] = h.view(np.int64)

    starts = range(0, table.num_rows, _BATCH)
    if len(starts) < 4:
        for begin in starts:
            hash_batch(begin)
    else:  # numpy releases the GIL on these arrays: batches hash in parallel on every core
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            list(pool.map(hash_batch, starts))
    return out
