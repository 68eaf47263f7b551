"""`kind: postgres` / `kind: supabase` sources: the sensor pulls the real PostgreSQL into batches that go through the
demo's onboarding stages into the products catalogue; the spec block is checked."""

from __future__ import annotations

import uuid

import dagster as dg
import psycopg
import pytest
from batches import tick

from claro_dagster.catalogue.batches import BatchRegistry
from claro_dagster.definitions import build_definitions
from claro_dagster.sensors.inbound import db_cursor_name, db_source_settings, pull_db_source
from claro_dagster.spec import DEMO_DIR, SpecError, load_spec

pytestmark = pytest.mark.postgres

T0 = "2026-11-30 09:00:00+00"


@pytest.fixture
def db(postgres_server, monkeypatch):
    """A database of this test's own holding an ERP's `items` table; its URL in ERP_DATABASE_URL."""
    base, _, _ = postgres_server.rpartition("/")
    name = f"claro_src_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{base}/{name}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA erp")
        conn.execute("CREATE TABLE erp.items (sku text PRIMARY KEY, title text, price numeric, "
                     "updated_at timestamptz NOT NULL, deleted_at timestamptz)")
    monkeypatch.setenv("ERP_DATABASE_URL", url)
    yield url
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sql(url: str, statement: str, params=()) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement, params)


def upsert(url: str, sku: str, title: str, price: float, minutes: int, deleted: bool = False) -> None:
    sql(url, "INSERT INTO erp.items VALUES (%s, %s, %s, %s::timestamptz + make_interval(mins => %s), "
             "CASE WHEN %s THEN now() END) ON CONFLICT (sku) DO UPDATE SET title = excluded.title, "
             "price = excluded.price, updated_at = excluded.updated_at, deleted_at = excluded.deleted_at",
        (sku, title, price, T0, minutes, deleted))


def source_block(kind: str, extra: str = "") -> str:
    return (f"  erp_db:\n    kind: {kind}\n    catalogue: products\n    url_env: ERP_DATABASE_URL\n"
            f"    table: erp.items\n    key: sku\n    watermark: updated_at\n    chunk_rows: 1\n{extra}")


def demo_with(block: str) -> str:
    """The demo spec with the source added to the products pipeline; both replaces must match."""
    text = (DEMO_DIR / "claro.yaml").read_text(encoding="utf-8")
    assert text.count("\nsources:\n") == 1 and text.count("sources: [acme_csv, globex_xlsx]") == 1
    text = text.replace("\nsources:\n", "\nsources:\n" + block, 1)
    return text.replace("sources: [acme_csv, globex_xlsx]", "sources: [acme_csv, globex_xlsx, erp_db]")




def test_each_pull_becomes_a_batch_published_into_the_products_catalogue(db, tmp_path) -> None:
    upsert(db, "ACM-20001", "Enamel kettle", 24.5, 0)
    upsert(db, "ACM-20002", "Steel toaster", 39.0, 5)
    (tmp_path / "claro.yaml").write_text(demo_with(source_block("postgres")), encoding="utf-8")
    defs = build_definitions(tmp_path / "claro.yaml", tmp_path / "home")
    claro = defs.resources["claro"]
    with dg.instance_for_test() as instance:
        [run] = tick(defs, instance, "erp_db_postgres")
        assert run.success
        [batch] = [b for b in BatchRegistry(claro.store).list() if b.source == "erp_db"]
        assert batch.status == "published"
        record = claro.store.record("products", "ACM-20002")
        assert (record["title"], record["price"]) == ("Steel toaster", 39.0)
        cursor = claro.store.get_cursor(db_cursor_name("erp_db"))
        assert '"keys":["ACM-20002"]' in cursor  # the cursor moved with the pull
        assert tick(defs, instance, "erp_db_postgres") == []  # nothing new: no file, no batch
        assert len(list(claro.inbox_dir("erp_db").glob("*.csv"))) == 1
        upsert(db, "ACM-20001", "Enamel kettle", 22.0, 9)
        [run] = tick(defs, instance, "erp_db_postgres")
        assert run.success and claro.store.record("products", "ACM-20001")["price"] == 22.0
        assert len([b for b in BatchRegistry(claro.store).list() if b.source == "erp_db"]) == 2


def test_a_supabase_source_archives_soft_deleted_rows_and_never_deletes_a_record(db, tmp_path) -> None:
    upsert(db, "ACM-20001", "Enamel kettle", 24.5, 0)
    upsert(db, "ACM-20002", "Steel toaster", 39.0, 5)
    extra = "    soft_delete: deleted_at\n    soft_delete_sets: {status: archived}\n"
    (tmp_path / "claro.yaml").write_text(demo_with(source_block("supabase", extra)), encoding="utf-8")
    defs = build_definitions(tmp_path / "claro.yaml", tmp_path / "home")
    claro = defs.resources["claro"]
    with dg.instance_for_test() as instance:
        [run] = tick(defs, instance, "erp_db_supabase")
        assert run.success and claro.store.record("products", "ACM-20002")["status"] == "draft"
        upsert(db, "ACM-20002", "Steel toaster", 39.0, 7, deleted=True)  # deleted in the ERP
        [run] = tick(defs, instance, "erp_db_supabase")
        assert run.success
        record = claro.store.record("products", "ACM-20002")
        assert record is not None and record["status"] == "archived"  # archived, still there
        assert claro.store.record("products", "ACM-20001")["status"] == "draft"  # untouched


def test_a_failed_pull_moves_nothing_and_the_next_tick_resumes(db, tmp_path, monkeypatch) -> None:
    upsert(db, "ACM-20001", "Enamel kettle", 24.5, 0)
    (tmp_path / "claro.yaml").write_text(demo_with(source_block("postgres")), encoding="utf-8")
    defs = build_definitions(tmp_path / "claro.yaml", tmp_path / "home")
    claro = defs.resources["claro"]
    with dg.instance_for_test() as instance:
        monkeypatch.setenv("ERP_DATABASE_URL", "postgresql://postgres:pw-s3cret@127.0.0.1:1/erp")
        with pytest.raises(Exception) as failed:
            tick(defs, instance, "erp_db_postgres")
        chain = [failed.value, failed.value.__cause__, failed.value.__context__]
        assert any("could not connect to the database in ERP_DATABASE_URL" in str(e) for e in chain)
        assert not any("pw-s3cret" in str(e) for e in chain)
        assert claro.store.get_cursor(db_cursor_name("erp_db")) is None
        assert not claro.inbox_dir("erp_db").exists() or not list(claro.inbox_dir("erp_db").iterdir())
        monkeypatch.setenv("ERP_DATABASE_URL", db)
        [run] = tick(defs, instance, "erp_db_postgres")
        assert run.success and claro.store.record("products", "ACM-20001")["title"] == "Enamel kettle"


def test_a_source_that_went_backwards_is_warned_and_moves_nothing(db, tmp_path) -> None:
    upsert(db, "ACM-20001", "Enamel kettle", 24.5, 10)
    (tmp_path / "claro.yaml").write_text(demo_with(source_block("postgres")), encoding="utf-8")
    defs = build_definitions(tmp_path / "claro.yaml", tmp_path / "home")
    claro = defs.resources["claro"]
    with dg.instance_for_test() as instance:
        [run] = tick(defs, instance, "erp_db_postgres")
        assert run.success
        cursor = claro.store.get_cursor(db_cursor_name("erp_db"))
        sql(db, "UPDATE erp.items SET updated_at = updated_at - interval '1 day'")  # restored from an old backup
        assert tick(defs, instance, "erp_db_postgres") == []  # the tick logs the warning below
        settings = db_source_settings("erp_db", load_spec(tmp_path / "claro.yaml").sources["erp_db"])
        result = pull_db_source(claro.store, claro.inbox_dir("erp_db"), settings)
        [warning] = result.warnings
        assert "older than the stored cursor 2026-11-30 09:10:00+00" in warning
        assert claro.store.get_cursor(db_cursor_name("erp_db")) == cursor


SPEC = """\
catalogues:
  products:
    key: sku
    attributes:
      sku: {type: text}
      status: {type: enum, values: [active, archived]}
sources:
  erp:
    catalogue: products
"""


@pytest.mark.parametrize(("block", "message"), [
    ("    kind: postgres\n    table: items\n    key: sku\n    watermark: updated_at\n",
     "a postgres source needs 'url_env'"),
    ("    kind: supabase\n    url_env: DB\n    key: sku\n    watermark: updated_at\n",
     "a supabase source needs exactly one of 'table' or 'query'"),
    ("    kind: postgres\n    url_env: DB\n    table: items\n    key: sku\n",
     "a postgres source needs 'watermark'"),
    ("    kind: postgres\n    url_env: DB\n    table: 'a.b.c'\n    key: sku\n    watermark: w\n",
     "invalid table name"),
    ("    kind: postgres\n    url_env: DB\n    table: items\n    key: sku\n    watermark: w\n"
     "    soft_delete: gone\n    soft_delete_sets: {state: archived}\n", "state"),
    ("    kind: postgres\n    url_env: DB\n    table: items\n    key: sku\n    watermark: w\n"
     "    soft_delete_sets: {status: archived}\n", "'soft_delete_sets' needs 'soft_delete'"),
])
def test_the_spec_block_is_checked(tmp_path, block, message) -> None:
    (tmp_path / "claro.yaml").write_text(SPEC + block, encoding="utf-8")
    with pytest.raises(SpecError, match=message):
        load_spec(tmp_path / "claro.yaml")


def test_a_complete_block_loads(tmp_path) -> None:
    (tmp_path / "claro.yaml").write_text(SPEC + "    kind: supabase\n    url_env: DB\n    query: SELECT 1\n"
                                         "    key: sku\n    watermark: w\n    soft_delete: gone\n"
                                         "    soft_delete_sets: {status: archived}\n", encoding="utf-8")
    source = load_spec(tmp_path / "claro.yaml").sources["erp"]
    assert (source.kind, source.chunk_rows, source.max_rows_per_pull) == ("supabase", 10_000, 100_000)
