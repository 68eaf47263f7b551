"""The store's bulk paths: Arrow imports, vectorised row hashes, re-imports and `changed_since` in SQL,
on the embedded SQLite and on the real PostgreSQL."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import sqlalchemy as sa

from claro_dagster.catalogue.changes import StoreError
from claro_dagster.catalogue.common import ROW_HASH_VERSION, row_hash
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.catalogue.writer import MARK_PREFIX
from claro_dagster.spec.models import AttributeSpec, CatalogueSpec, ProjectSpec

AWKWARD = ['say "hi", then go', "two\nlines", "", "naïve ☕", "back\\slash", "x" * 300]


def make_spec() -> ProjectSpec:
    attributes = {"sku": AttributeSpec(type="text", required=True), "title": AttributeSpec(type="text"),
                  "price": AttributeSpec(type="number"), "brand": AttributeSpec(type="text")}
    return ProjectSpec(catalogues={"products": CatalogueSpec(key="sku", attributes=attributes)})


@pytest.fixture
def store(store_url):
    s = CatalogueStore(make_spec(), store_url)
    yield s
    s.dispose()


def rows(n: int = 6) -> pa.Table:
    return pa.table({"sku": [f"S{i:03d}" for i in range(n)], "title": (AWKWARD * n)[:n],
                     "price": [0.1 + 0.2 * i if i != 2 else None for i in range(n)],
                     "brand": [None if i == 3 else "Acme" for i in range(n)]})


def history_rows(store) -> int:
    with store.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(store.t["history"])).scalar_one()


def test_row_hash_depends_on_values_only_and_sees_every_change():
    table = rows(50)
    hashes = row_hash(table, {"price"})
    assert len(set(hashes.tolist())) == 50
    # The Arrow layout does not matter: large or plain strings, chunks, slices.
    relaid = pa.table({"sku": table["sku"].cast(pa.large_string()), "title": pa.chunked_array(
        [table["title"].combine_chunks()[:7], table["title"].combine_chunks()[7:]]), "price": table["price"],
        "brand": table["brand"]})
    assert (row_hash(relaid, {"price"}) == hashes).all()
    assert (row_hash(table.slice(5, 10), {"price"}) == hashes[5:15]).all()
    # One changed byte anywhere, an empty text for a missing one, a swapped pair of values: all seen.
    for column, value in (("title", AWKWARD[5][:-1] + "y"), ("brand", ""), ("price", 0.1 + 0.2 * 5 + 1e-12)):
        changed = table.set_column(table.column_names.index(column), column,
                                   pa.array([*table[column].to_pylist()[:5], value, *table[column].to_pylist()[6:]],
                                            table.schema.field(column).type))
        differs = row_hash(changed, {"price"}) != hashes
        assert differs.tolist() == [i == 5 for i in range(50)], column
    swapped = table.select(["sku", "brand", "price", "title"]).rename_columns(["sku", "title", "price", "brand"])
    assert (row_hash(swapped, {"price"}) != hashes).all()


def test_an_arrow_import_keeps_exact_values_and_a_new_identity_re_import_writes_nothing(store):
    first = store.import_records("products", rows(), change_set_id="import-1", run_id="r1")
    assert (first.created, first.applied) == (6, 6 * 3 - 2)  # one missing price, one missing brand
    frame = store.records("products")
    assert frame["title"].tolist() == AWKWARD
    assert frame["price"].tolist()[:2] == [0.1, 0.1 + 0.2]
    events_before, history_before = len(store.events(limit=100)), history_rows(store)
    assert events_before == 6  # one `change.applied` per created record

    again = store.import_records("products", rows(), change_set_id="import-2", run_id="r2")
    assert (again.applied, again.created, again.unchanged) == (0, 0, 6 * 3)
    assert (len(store.events(limit=100)), history_rows(store)) == (events_before, history_before)
    assert store.import_records("products", rows(), change_set_id="import-2").already_applied


def test_a_re_import_with_changed_and_new_rows_writes_only_those(store):
    store.import_records("products", rows(), change_set_id="import-1", run_id="r1")
    table = rows(8)  # two new records
    titles = table["title"].to_pylist()
    titles[1] = "two lines no more"
    table = table.set_column(1, "title", pa.array(titles))
    result = store.import_records("products", table, change_set_id="import-2", run_id="r2")
    assert (result.created, result.applied, result.unchanged) == (2, 1 + 2 * 3, 5 * 3 + 2)
    history = store.history("products", "S001", "title")
    assert [(h.old, h.new, h.kind) for h in history][-1] == ("two\nlines", "two lines no more", "update")
    assert store.provenance("products", "S001", "title").run_id == "r2"
    assert store.provenance("products", "S001", "brand").run_id == "r1"


def test_arrow_columns_of_other_types_are_coerced_like_a_frame(store):
    table = pa.table({"sku": pa.array(["A", "B"]).dictionary_encode(), "price": pa.array([3, 4], pa.int64()),
                      "title": pa.array([12.0, 12.5])})
    store.import_records("products", table, change_set_id="import-1")
    assert store.record("products", "A") == {"sku": "A", "title": "12", "price": 3.0, "brand": None}
    with pytest.raises(StoreError, match="'B' field 'price': 'cheap' is not a number"):
        store.import_records("products", pa.table({"sku": ["A", "B"], "price": ["1.5", "cheap"]}),
                             change_set_id="import-2")
    with pytest.raises(StoreError, match="'A' appears more than once"):
        store.import_records("products", pa.table({"sku": ["A", "C", "A"]}), change_set_id="import-3")


def test_hashes_of_an_earlier_version_are_rebuilt_when_the_store_opens(store):
    store.import_records("products", rows(), change_set_id="import-1")
    with store.engine.begin() as conn:
        conn.execute(store.rec["products"].update().values(_hash=7))
        conn.execute(store.t["cursors"].delete().where(store.t["cursors"].c.name == MARK_PREFIX + "products"))
    reopened = CatalogueStore(make_spec(), store.url)
    try:
        with reopened.engine.connect() as conn:
            stored = dict(conn.execute(sa.select(reopened.rec["products"].c.sku,
                                                 reopened.rec["products"].c._hash)).all())
        expected = reopened.reader.row_hash("products", reopened.records("products"))
        assert [stored[k] for k in reopened.records("products")["sku"]] == expected.tolist()
        assert reopened.get_cursor(MARK_PREFIX + "products") == ROW_HASH_VERSION
    finally:
        reopened.dispose()


def test_changed_since_selects_in_sql_what_changed_after_a_seq(store):
    store.import_records("products", rows(), change_set_id="import-1")
    seq = store.last_seq()
    assert store.changed_since("products", seq).empty
    table = rows()
    table = table.set_column(3, "brand", pa.array(["Acme", "Globex", "Acme", "Globex", "Acme", "Acme"]))
    store.import_records("products", table, change_set_id="import-2")  # S001 and S003 change brand
    changed = store.changed_since("products", seq).sort_values("sku")
    assert changed["sku"].tolist() == ["S001", "S003"]
    assert changed.to_dict("records")[0] == {"sku": "S001", "title": "two\nlines", "price": 0.1 + 0.2,
                                              "brand": "Globex"}
    everything = store.changed_since("products", 0).sort_values("sku")
    assert everything["title"].tolist() == AWKWARD  # quotes, commas, newlines, "" and unicode survive
    assert everything["price"].isna().tolist() == [False, False, True, False, False, False]
    narrow = store.changed_since("products", 0, 'brand == "Globex" and price > 0.2', columns=["brand"])
    assert narrow.sort_values("sku").to_dict("records") == [{"sku": "S001", "brand": "Globex"},
                                                             {"sku": "S003", "brand": "Globex"}]
    assert sorted(store.changed_since("products", 0, 'sku in ["S000", "S005"]')["sku"]) == ["S000", "S005"]
    with pytest.raises(StoreError, match="unknown field"):
        store.changed_since("products", 0, columns=["colour"])


def test_a_large_import_goes_through_the_bulk_paths(store):
    n = 70_000  # more than one hashing batch and one COPY / executemany block
    skus = np.char.add("K", np.arange(n).astype(str))
    table = pa.table({"sku": skus, "title": np.char.add("title ", np.arange(n).astype(str)),
                      "price": np.arange(n) / 7})
    assert store.import_records("products", table, change_set_id="big-1").created == n
    prices = np.arange(n) / 7
    prices[::1000] += 1
    result = store.import_records("products", table.set_column(2, "price", pa.array(prices)),
                                  change_set_id="big-2")
    assert (result.applied, result.unchanged) == (n // 1000, n * 2 - n // 1000)
    changed = store.changed_since("products", store.last_seq() - 1)
    expected = sorted((f"K{i}", prices[i]) for i in range(0, n, 1000))
    assert sorted(zip(changed["sku"], changed["price"], strict=True)) == expected
    everything = store.changed_since("products", 0)
    assert sorted(zip(everything["sku"], everything["price"], strict=True)) == sorted(
        (f"K{i}", prices[i]) for i in range(n))


def test_changed_since_reads_through_the_seq_index_on_sqlite(tmp_path):
    store = CatalogueStore(make_spec(), f"sqlite:///{tmp_path / 'catalogue.db'}")
    try:
        for i in range(3):
            store.import_records("products", rows(20).set_column(1, "title", pa.array([f"v{i}"] * 20)),
                                 change_set_id=f"import-{i}")
        store.engine.dispose()
        statements: list[str] = []
        sa.event.listen(store.engine, "connect", lambda dbapi, _record: dbapi.set_trace_callback(statements.append))
        changed = store.changed_since("products", store.last_seq() - 1, 'brand == "Acme"')
        assert len(changed) == 19 and set(changed["title"]) == {"v2"}
        query = next(s for s in statements if "_seq" in s and "SELECT" in s.upper())
        with store.engine.connect() as conn:
            plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {query}"))
        assert "ix_rec_products__seq" in plan, plan
    finally:
        store.dispose()


def test_many_changed_records_come_column_by_column_with_the_same_values(store, monkeypatch):
    from claro_dagster.catalogue import reader

    table = rows(40)
    table = table.set_column(3, "brand", pa.array([None if i % 5 == 0 else f"b{i}" for i in range(40)]))
    store.import_records("products", table, change_set_id="import-1")
    by_rows = store.changed_since("products", 0).sort_values("sku").reset_index(drop=True)
    monkeypatch.setattr(reader, "_COLUMNAR_FROM", 1)
    monkeypatch.setattr(reader, "_COLUMNAR_BLOCK", 7)  # several blocks
    by_columns = store.changed_since("products", 0, "price > 1").sort_values("sku").reset_index(drop=True)
    expected = by_rows[by_rows["price"] > 1].reset_index(drop=True)
    assert len(by_columns) == len(expected) > 10
    assert by_columns.equals(expected)
    assert set(by_columns["title"]) == set(AWKWARD) and by_columns["brand"].isna().sum() == 7


def test_arrow_backed_and_numeric_frames_are_taken_as_they_are(store):
    frame = pd.DataFrame({"sku": pd.array(["A", "B"], dtype="string[pyarrow]"), "price": pd.array([3, None],
                          dtype="Int64"), "title": pd.Series(["x", None], dtype=pd.ArrowDtype(pa.large_string()))})
    store.import_records("products", frame, change_set_id="import-1")
    assert store.record("products", "B") == {"sku": "B", "title": None, "price": None, "brand": None}
    assert store.import_records("products", frame, change_set_id="import-2").unchanged == 4


def test_stored_hashes_stay_what_they_were():
    # Stored hashes outlive releases: a change to `row_hash` must bump ROW_HASH_VERSION (the store then rehashes).
    table = pa.table({"sku": ["A1", "B2", None], "title": ["Mug", "", "a longer title of more than eight bytes"],
                      "price": [4.5, None, -0.0]})
    assert ROW_HASH_VERSION == "arrow-words-v1"
    assert row_hash(table, {"price"}).tolist() == [-5964288426069056099, 3267383372975786586, 6819893557634609792]
