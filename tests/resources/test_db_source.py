"""PostgreSQL / Supabase source pulls (claro_dagster.resources.db_source) against the real PostgreSQL server, each test
in its own throwaway database."""

from __future__ import annotations

import csv
import json
import uuid

import psycopg
import pytest

from claro_dagster.resources.db_source import DbSource, DbSourceError, pull, redact
from claro_dagster.resources.watermark import NextCursor

pytestmark = pytest.mark.postgres

T0 = "2026-11-30 09:00:00+00"


@pytest.fixture
def db(postgres_server):
    """A database of this test's own on the real server, dropped after."""
    base, _, _ = postgres_server.rpartition("/")
    name = f"claro_src_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{base}/{name}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (sku text PRIMARY KEY, title text, price numeric, "
                     "updated_at timestamptz, deleted_at timestamptz)")
    yield url
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sql(url: str, statement: str, params=()) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement, params)


def add(url: str, *rows: tuple) -> None:
    """(sku, title, price, minutes after T0[, deleted])"""
    for sku, title, price, minutes, *deleted in rows:
        sql(url, "INSERT INTO items VALUES (%s, %s, %s, %s::timestamptz + make_interval(mins => %s), "
                 "CASE WHEN %s THEN now() END) ON CONFLICT (sku) DO UPDATE SET title = excluded.title, "
                 "price = excluded.price, updated_at = excluded.updated_at, deleted_at = excluded.deleted_at",
            (sku, title, price, T0, minutes, bool(deleted and deleted[0])))


def source(**kw) -> DbSource:
    kw = {"name": "erp_pg", "url_env": "ERP_DATABASE_URL", "key": "sku", "watermark": "updated_at",
          "table": "items", **kw}
    return DbSource(**kw)


def rows_of(result) -> list[dict]:
    with result.path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def run(db, tmp_path, cursor, **kw):
    on_chunk = kw.pop("on_chunk", None)
    return pull(source(**kw), cursor, tmp_path / "inbox", environ={"ERP_DATABASE_URL": db}, on_chunk=on_chunk)


def test_a_pull_writes_one_file_then_a_second_pull_takes_nothing(db, tmp_path) -> None:
    add(db, ("ACM-20001", "Kettle", 20.5, 0), ("ACM-20002", "Toaster, steel", 30, 5))
    first = run(db, tmp_path, None)
    assert [(r["sku"], r["title"], r["price"]) for r in rows_of(first)] == [
        ("ACM-20001", "Kettle", "20.5"), ("ACM-20002", "Toaster, steel", "30")]
    assert first.cursor == {"value": "2026-11-30 09:05:00+00", "type": "timestamp with time zone",
                            "keys": ["ACM-20002"]}
    note = json.loads(first.note.read_text())
    assert (note["from"], note["after"], note["upto"], note["rows"]) == ("items", None, first.cursor, 2)
    assert first.path.name.startswith("erp_pg-") and first.path.suffix == ".csv"
    assert not list((tmp_path / "inbox").glob(".*part"))  # the partial file became the batch file
    second = run(db, tmp_path, first.cursor)
    assert (second.path, second.cursor, second.rows) == (None, None, 0)
    assert len(list((tmp_path / "inbox").glob("*.csv"))) == 1
    add(db, ("ACM-20001", "Kettle", 19.0, 9))
    third = run(db, tmp_path, first.cursor)
    assert [(r["sku"], r["price"]) for r in rows_of(third)] == [("ACM-20001", "19")]


def test_cells_with_quotes_commas_and_line_breaks_come_back_as_they_were(db, tmp_path) -> None:
    add(db, ("ACM-20001", 'The "Big" kettle,\nline two', 20.5, 0), ("ACM-20002", None, None, 1))
    result = run(db, tmp_path, None)
    assert [(r["sku"], r["title"], r["price"], r["deleted_at"]) for r in rows_of(result)] == [
        ("ACM-20001", 'The "Big" kettle,\nline two', "20.5", ""), ("ACM-20002", "", "", "")]
    assert result.path.read_text().splitlines()[1].startswith('"ACM-20001","The ""Big"" kettle,')


def test_rows_sharing_the_boundary_watermark_are_never_lost(db, tmp_path) -> None:
    add(db, *[(f"ACM-2000{i}", f"Item {i}", i, 0) for i in (1, 2, 3)])
    first = run(db, tmp_path, None, max_rows=2, chunk_rows=1)  # the pull ends between rows of one watermark
    assert [r["sku"] for r in rows_of(first)] == ["ACM-20001", "ACM-20002"]
    assert first.cursor["keys"] == ["ACM-20001", "ACM-20002"]  # chunks of one row: the tie spans chunks
    second = run(db, tmp_path, first.cursor, max_rows=2)
    assert [r["sku"] for r in rows_of(second)] == ["ACM-20003"]
    assert second.cursor["keys"] == ["ACM-20001", "ACM-20002", "ACM-20003"]
    add(db, ("ACM-20000", "Late", 1, 0))  # written later with the very same watermark and a smaller key
    third = run(db, tmp_path, second.cursor)
    assert [r["sku"] for r in rows_of(third)] == ["ACM-20000"]
    assert run(db, tmp_path, third.cursor).cursor is None


def test_next_cursor_reads_only_a_chunks_tail() -> None:
    following = NextCursor({"value": "5", "type": "integer", "keys": ["a"]})
    following.see_chunk([("5", "b"), ("5", "c")], 0, 1)
    following.see_chunk([("5", "d")], 0, 1)
    assert following.cursor("integer")["keys"] == ["a", "b", "c", "d"]
    following.see_chunk([("5", "e"), ("6", "f"), ("6", "g")], 0, 1)
    assert following.cursor("integer") == {"value": "6", "type": "integer", "keys": ["f", "g"]}


def test_a_query_source_and_an_integer_watermark(db, tmp_path) -> None:
    sql(db, "CREATE TABLE stock (id bigint PRIMARY KEY, sku text, version bigint)")
    sql(db, "INSERT INTO stock SELECT g, 'ACM-' || (20000 + g), g * 10 FROM generate_series(1, 25) g")
    settings = {"table": None, "query": "SELECT id, sku, version FROM stock WHERE id % 2 = 1;", "key": "id",
                "watermark": "version"}
    first = run(db, tmp_path, None, chunk_rows=4, **settings)
    assert [int(r["id"]) for r in rows_of(first)] == list(range(1, 26, 2))
    assert first.cursor == {"value": "250", "type": "bigint", "keys": ["25"]}
    sql(db, "UPDATE stock SET version = 1000 WHERE id IN (3, 4)")
    second = run(db, tmp_path, first.cursor, **settings)
    assert [r["id"] for r in rows_of(second)] == ["3"]


def test_soft_deleted_rows_are_archived_when_the_spec_says_how(db, tmp_path) -> None:
    add(db, ("ACM-20001", "Kettle", 20, 0), ("ACM-20002", "Toaster", 30, 1, True))
    result = run(db, tmp_path, None, soft_delete="deleted_at", soft_delete_sets={"status": "archived"})
    rows = rows_of(result)
    assert [(r["sku"], r["status"]) for r in rows] == [("ACM-20001", ""), ("ACM-20002", "archived")]
    assert result.soft_deleted == ["ACM-20002"]
    assert json.loads(result.note.read_text())["soft_deleted"] == ["ACM-20002"]


def test_a_soft_delete_rule_overrides_a_column_the_table_has(db, tmp_path) -> None:
    sql(db, "ALTER TABLE items ADD COLUMN status text DEFAULT 'active'")
    add(db, ("ACM-20001", "Kettle", 20, 0), ("ACM-20002", "Toaster", 30, 1, True))
    result = run(db, tmp_path, None, soft_delete="deleted_at", soft_delete_sets={"status": 'arch"ived'})
    assert [(r["sku"], r["status"]) for r in rows_of(result)] == [("ACM-20001", "active"),
                                                                  ("ACM-20002", 'arch"ived')]


def test_soft_deleted_rows_without_a_rule_are_left_out_and_reported(db, tmp_path) -> None:
    sql(db, "ALTER TABLE items ADD COLUMN gone boolean")
    add(db, ("ACM-20001", "Kettle", 20, 0), ("ACM-20002", "Toaster", 30, 1))
    sql(db, "UPDATE items SET gone = (sku = 'ACM-20002')")
    result = run(db, tmp_path, None, soft_delete="gone")
    assert [r["sku"] for r in rows_of(result)] == ["ACM-20001"]  # false is not deleted; true is
    assert result.soft_deleted == ["ACM-20002"] and result.cursor["keys"] == ["ACM-20002"]
    sql(db, "UPDATE items SET gone = true, updated_at = updated_at + interval '1 hour' WHERE sku = 'ACM-20001'")
    only = run(db, tmp_path, result.cursor, soft_delete="gone")
    # nothing left to onboard: no batch file, but the note reports the key and the cursor moves past it
    assert only.path is None and only.soft_deleted == ["ACM-20001"] and only.cursor["keys"] == ["ACM-20001"]
    assert json.loads(only.note.read_text())["soft_deleted"] == ["ACM-20001"]


def test_null_watermarks_are_refused_naming_the_column_and_count(db, tmp_path) -> None:
    add(db, ("ACM-20001", "Kettle", 20, 0))
    sql(db, "INSERT INTO items (sku, title) VALUES ('ACM-20009', 'No date'), ('ACM-20008', 'No date')")
    with pytest.raises(DbSourceError) as refused:
        run(db, tmp_path, None)
    message = str(refused.value)
    assert "2 row(s) of table items have no updated_at" in message and "'ACM-20008', 'ACM-20009'" in message
    assert "COALESCE(updated_at" in message
    assert not list((tmp_path / "inbox").iterdir())  # nothing written
    # the way out the message gives: a query giving them a watermark; they are pulled once, first
    fixed = run(db, tmp_path, None, table=None,
                query="SELECT sku, title, COALESCE(updated_at, '-infinity') AS updated_at FROM items")
    assert [r["sku"] for r in rows_of(fixed)] == ["ACM-20008", "ACM-20009", "ACM-20001"]


def test_a_source_that_goes_backwards_is_reported_and_a_row_moved_back_waits_for_its_next_change(db, tmp_path):
    add(db, ("ACM-20001", "Kettle", 20, 0), ("ACM-20002", "Toaster", 30, 10))
    first = run(db, tmp_path, None)
    add(db, ("ACM-20001", "Kettle v2", 21, 5))  # updated, but its watermark is older than the cursor
    second = run(db, tmp_path, first.cursor)
    assert second.cursor is None and second.warnings == []  # not pulled: the watermark is all a pull sees
    add(db, ("ACM-20001", "Kettle v3", 22, 11))  # its next change passes the cursor: it arrives
    third = run(db, tmp_path, first.cursor)
    assert [(r["sku"], r["title"]) for r in rows_of(third)] == [("ACM-20001", "Kettle v3")]
    sql(db, "UPDATE items SET updated_at = updated_at - interval '1 day'")  # e.g. restored from an old backup
    fourth = run(db, tmp_path, third.cursor)
    assert fourth.cursor is None
    [warning] = fourth.warnings
    assert "older than the stored cursor 2026-11-30 09:11:00+00" in warning and "went backwards" in warning


def test_a_connection_dropped_mid_pull_writes_nothing_and_the_next_pull_takes_every_row_once(db, tmp_path):
    sql(db, "INSERT INTO items SELECT 'ACM-' || (10000 + g), 'Item ' || g, g, %s::timestamptz + "
            "make_interval(secs => g) FROM generate_series(1, 500) g", (T0,))

    def drop(written: int) -> None:
        if written >= 200:
            sql(db, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE "
                    "'claro_dagster source%%' AND pid <> pg_backend_pid()")

    with pytest.raises(DbSourceError) as lost:
        run(db, tmp_path, None, chunk_rows=100, on_chunk=drop)
    assert "connection to the database in ERP_DATABASE_URL was lost" in str(lost.value)
    assert "cursor did not move" in str(lost.value)
    assert list((tmp_path / "inbox").iterdir()) == []  # no partial file, no note
    again = run(db, tmp_path, None, chunk_rows=100)  # the cursor is still None: resumes from the start
    skus = [r["sku"] for r in rows_of(again)]
    assert len(skus) == 500 == len(set(skus))
    assert len(list((tmp_path / "inbox").glob("*.csv"))) == 1


def test_a_missing_variable_a_wrong_url_and_refused_auth_name_the_variable_and_hide_the_password(db, tmp_path):
    with pytest.raises(DbSourceError, match="ERP_DATABASE_URL is not set"):
        pull(source(), None, tmp_path, environ={})
    base = db.split("://", 1)[1].split("@", 1)[1]
    for url in (f"postgresql://nobody_{uuid.uuid4().hex[:6]}:s3cretpw@{base}",  # refused: no such role
                "postgresql://postgres:s3cretpw@127.0.0.1:1/postgres"):  # nothing listens there
        with pytest.raises(DbSourceError) as refused:
            pull(source(), None, tmp_path, environ={"ERP_DATABASE_URL": url})
        message = str(refused.value)
        assert "could not connect to the database in ERP_DATABASE_URL" in message
        assert "s3cretpw" not in message and ":***@" in message
    assert redact("host=db password=hunter2 user=x") == "host=db password=*** user=x"


def test_a_missing_column_names_the_setting_to_fix(db, tmp_path) -> None:
    add(db, ("ACM-20001", "Kettle", 20, 0))
    with pytest.raises(DbSourceError, match=r"has no column 'changed_at' \(its 'watermark'\)"):
        run(db, tmp_path, None, watermark="changed_at")
    with pytest.raises(DbSourceError, match="invalid table name"):
        run(db, tmp_path, None, table="items; DROP TABLE items")


def test_the_module_imports_no_dagster() -> None:
    import subprocess
    import sys

    code = "import sys, claro_dagster.resources.db_source; print('dagster' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
