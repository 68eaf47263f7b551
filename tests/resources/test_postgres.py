"""PostgresDestination.upsert against the real PostgreSQL server (a throwaway database)."""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import pandas as pd
import psycopg
import pytest

from claro_dagster.resources.postgres import (
    PostgresDestination,
    UpsertResult,
    parse_table_name,
    to_conninfo,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
def dest(pg_url: str) -> PostgresDestination:
    return PostgresDestination(url=pg_url)


@pytest.fixture
def table() -> str:
    return f"products_{secrets.token_hex(4)}"


def _query(pg_url: str, query: str, params=()) -> list[tuple]:
    with psycopg.connect(pg_url) as conn:
        return conn.execute(query, params).fetchall()


def _rows(pg_url: str, table: str, columns: str = "*") -> list[tuple]:
    return _query(pg_url, f'SELECT {columns} FROM "{table}" ORDER BY sku')


def _versions(pg_url: str, table: str) -> dict[str, tuple]:
    """sku -> (tuple version, _synced_at): both change only when the row is rewritten."""
    return {r[0]: (r[1], r[2]) for r in _rows(pg_url, table, "sku, xmin::text, _synced_at")}


FRAME = pd.DataFrame({
    "sku": ["001", "002", "003"],
    "name": ["Chair", "Table", "Lamp"],
    "price": [12.5, 99.0, float("nan")],
})


def test_insert_creates_typed_table(dest, pg_url, table):
    result = dest.upsert(table, FRAME, key="sku")

    assert result == UpsertResult(table=table, inserted=3, updated=0, unchanged=0, created_table=True)
    assert _rows(pg_url, table, "sku, name, price") == [
        ("001", "Chair", 12.5), ("002", "Table", 99.0), ("003", "Lamp", None)]
    types = dict(_query(pg_url, "SELECT column_name, data_type FROM information_schema.columns "
                                "WHERE table_name = %s", (table,)))
    assert types == {"sku": "text", "name": "text", "price": "double precision",
                     "_synced_at": "timestamp with time zone"}
    pk = _query(pg_url, "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary",
                (table,))
    assert pk == [("sku",)]


def test_rerun_unchanged_rewrites_nothing(dest, pg_url, table):
    dest.upsert(table, FRAME, key="sku")
    before = _versions(pg_url, table)

    result = dest.upsert(table, FRAME.copy(), key="sku")

    assert (result.inserted, result.updated, result.unchanged) == (0, 0, 3)
    assert not result.created_table and result.added_columns == ()
    assert _versions(pg_url, table) == before  # no new tuple versions, _synced_at kept


def test_one_changed_row_is_the_only_one_updated(dest, pg_url, table):
    dest.upsert(table, FRAME, key="sku")
    before = _versions(pg_url, table)
    changed = FRAME.copy()
    changed.loc[1, "price"] = 89.0

    result = dest.upsert(table, changed, key="sku")

    assert (result.inserted, result.updated, result.unchanged) == (0, 1, 2)
    after = _versions(pg_url, table)
    assert after["001"] == before["001"] and after["003"] == before["003"]
    assert after["002"][0] != before["002"][0] and after["002"][1] > before["002"][1]
    assert _rows(pg_url, table, "sku, price")[1] == ("002", 89.0)


def test_mixed_insert_update_and_unchanged(dest, pg_url, table):
    dest.upsert(table, FRAME, key="sku")
    frame = pd.DataFrame({"sku": ["003", "004", "001"], "name": ["Lamp", "Rug", "Armchair"],
                          "price": [float("nan"), 5.0, 12.5]})
    result = dest.upsert(table, frame, key="sku")
    assert (result.inserted, result.updated, result.unchanged) == (1, 1, 1)
    assert result.rows == 3
    assert [r[0] for r in _rows(pg_url, table, "sku")] == ["001", "002", "003", "004"]


def test_new_column_is_added_and_never_dropped(dest, pg_url, table):
    dest.upsert(table, FRAME, key="sku")
    wider = FRAME.assign(colour=["red", None, "blue"])

    result = dest.upsert(table, wider, key="sku")

    assert result.added_columns == ("colour",)
    assert (result.inserted, result.updated, result.unchanged) == (0, 2, 1)  # NULL -> NULL is no change
    assert _rows(pg_url, table, "sku, colour") == [("001", "red"), ("002", None), ("003", "blue")]

    narrower = FRAME[["sku", "name"]].assign(name=["Chair", "Table", "Lamp XL"])
    result = dest.upsert(table, narrower, key="sku")
    assert (result.inserted, result.updated, result.unchanged) == (0, 1, 2)
    assert _rows(pg_url, table, "sku, name, price, colour") == [
        ("001", "Chair", 12.5, "red"), ("002", "Table", 99.0, None), ("003", "Lamp XL", None, "blue")]


def test_nulls_and_text_values_are_stable_across_reruns(dest, pg_url, table):
    frame = pd.DataFrame({"sku": ["0001", "0002"], "gtin": ["0012345678905", None],
                          "qty": [3, 4], "note": ['tab\there, "quote"; DROP TABLE x', "line\nbreak"]})
    first = dest.upsert(table, frame, key="sku")
    second = dest.upsert(table, frame, key="sku")
    assert first.inserted == 2 and (second.updated, second.unchanged) == (0, 2)
    assert _rows(pg_url, table, "sku, gtin, qty, note") == [
        ("0001", "0012345678905", "3", 'tab\there, "quote"; DROP TABLE x'), ("0002", None, "4", "line\nbreak")]


def test_only_key_column(dest, pg_url, table):
    keys = pd.DataFrame({"sku": ["a", "b"]})
    assert dest.upsert(table, keys, key="sku").inserted == 2
    result = dest.upsert(table, pd.DataFrame({"sku": ["b", "c"]}), key="sku")
    assert (result.inserted, result.updated, result.unchanged) == (1, 0, 1)


def test_schema_qualified_table(dest, pg_url):
    schema = f"claro_{secrets.token_hex(3)}"
    _query_exec(pg_url, f'CREATE SCHEMA "{schema}"')
    result = dest.upsert(f"{schema}.items", FRAME, key="sku")
    assert result.inserted == 3
    assert _query(pg_url, f'SELECT count(*) FROM "{schema}"."items"') == [(3,)]


def test_quoted_column_names_cannot_inject(dest, pg_url, table):
    frame = pd.DataFrame({"sku": ["1"], 'x" text); DROP TABLE pg_class; --': ["v"]})
    assert dest.upsert(table, frame, key="sku").inserted == 1
    assert _query(pg_url, "SELECT count(*) FROM information_schema.columns WHERE table_name = %s",
                  (table,)) == [(3,)]


@pytest.mark.parametrize("bad", [
    "products; DROP TABLE users", 'products"--', "a.b.c", "1products", "", " products", "prod-ucts",
    "public.", ".products", "x" * 64, "products\x00", "products\n", "päckchen", "pg_temp.t; --",
])
def test_injection_looking_table_names_are_refused(dest, pg_url, bad):
    before = _query(pg_url, "SELECT count(*) FROM pg_class")
    with pytest.raises(ValueError, match="invalid table name"):
        dest.upsert(bad, FRAME, key="sku")
    assert _query(pg_url, "SELECT count(*) FROM pg_class") == before


def test_parse_table_name():
    assert parse_table_name("products") == (None, "products")
    assert parse_table_name("catalogue.Products_2") == ("catalogue", "Products_2")
    assert parse_table_name("x" * 63) == (None, "x" * 63)


@pytest.mark.parametrize("frame, message", [
    (FRAME.drop(columns="sku"), "not in the frame"),
    (pd.concat([FRAME, FRAME.iloc[:1]]), "duplicate values"),
    (FRAME.assign(sku=["1", None, "3"]), "empty values"),
    (FRAME.assign(_synced_at="x"), "maintained by the destination"),
])
def test_bad_frames_are_refused_before_writing(dest, pg_url, table, frame, message):
    with pytest.raises(ValueError, match=message):
        dest.upsert(table, frame, key="sku")
    assert _query(pg_url, "SELECT to_regclass(%s)::text", (table,)) == [(None,)]


def test_failed_upsert_changes_nothing(dest, pg_url, table):
    dest.upsert(table, FRAME, key="sku")
    before = _rows(pg_url, table)
    broken = FRAME.assign(price=["1.5", "not a number", "2"], extra=["a", "b", "c"])
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):
        dest.upsert(table, broken, key="sku")
    assert _rows(pg_url, table) == before
    columns = _query(pg_url, "SELECT column_name FROM information_schema.columns WHERE table_name = %s",
                     (table,))
    assert ("extra",) not in columns  # the ALTER TABLE was rolled back too


def test_existing_table_without_unique_key_is_refused(dest, pg_url, table):
    _query_exec(pg_url, f'CREATE TABLE "{table}" (sku text, name text)')
    with pytest.raises(ValueError, match="no primary key or unique index"):
        dest.upsert(table, FRAME, key="sku")


def test_existing_table_with_other_types(dest, pg_url, table):
    _query_exec(pg_url, f'CREATE TABLE "{table}" (sku text PRIMARY KEY, name text, qty integer)')
    frame = pd.DataFrame({"sku": ["a", "b"], "name": ["x", "y"], "qty": [1, 2]})
    assert dest.upsert(table, frame, key="sku").inserted == 2
    assert dest.upsert(table, frame, key="sku").unchanged == 2
    assert _rows(pg_url, table, "sku, qty, _synced_at IS NOT NULL") == [("a", 1, True), ("b", 2, True)]


def test_concurrent_upserts_into_a_new_table(dest, pg_url, table):
    frames = [pd.DataFrame({"sku": [f"{w}-{i}" for i in range(50)], "v": [float(i) for i in range(50)]})
              for w in range(4)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda f: dest.upsert(table, f, key="sku"), frames))
    assert sum(r.inserted for r in results) == 200
    assert sum(r.created_table for r in results) == 1
    assert _query(pg_url, f'SELECT count(*) FROM "{table}"') == [(200,)]


def test_url_forms_and_env_var_in_an_asset(pg_url, table, monkeypatch):
    assert to_conninfo("postgresql+psycopg2://u@h:5/db") == "postgresql://u@h:5/db"
    assert to_conninfo("postgres://u@h/db") == "postgresql://u@h/db"
    assert to_conninfo("host=h dbname=d") == "host=h dbname=d"
    sqlalchemy_url = pg_url.replace("postgresql://", "postgresql+psycopg://", 1)
    monkeypatch.setenv("CLARO_TEST_PG_URL", sqlalchemy_url)

    @dg.asset
    def published(postgres: PostgresDestination) -> int:
        return postgres.upsert(table, FRAME, key="sku").inserted

    resources = {"postgres": PostgresDestination.from_env("CLARO_TEST_PG_URL")}
    result = dg.materialize([published], resources=resources)
    assert result.success and result.output_for_node("published") == 3


def _query_exec(pg_url: str, statement: str) -> None:
    with psycopg.connect(pg_url) as conn:
        conn.execute(statement)
