"""The demo's products sent to Supabase (sql mode: the real PostgreSQL; rest mode: the PostgREST-compatible fake of
tests/postgrest_fake.py writing into the real PostgreSQL, after tests/contracts/postgrest/upsert-contract.md) and to
a custom REST endpoint (a local HTTP server keeping what it receives): all records first, nothing the second time,
exactly the changed record after a change; a 200 with an error body is a failure kept per record."""

from __future__ import annotations

import os
import uuid

import dagster as dg
import psycopg
import pytest
import yaml
from batches import demo_spec_syncing, publish_demo_products
from http_fakes import RecordingServer
from postgrest_fake import API_KEY, FakePostgrest

from claro_dagster.catalogue.changes import Change, ChangeSet
from claro_dagster.catalogue.channels import ChannelState
from claro_dagster.catalogue.opening import open_store
from claro_dagster.definitions import build_definitions
from claro_dagster.spec import DEMO_DIR, load_spec
from tests.cli_project import claro as run_claro
from tests.cli_project import write_spec

COLUMNS = ["sku", "title", "price", "brand", "gtin"]
ERP_BODY = {"sku": "sku", "name": "title", "price": {"amount": "price", "currency": {"value": "GBP"}},
            "brand": {"attribute": "brand"}}


def project(tmp_path, monkeypatch, destinations: dict, env: dict):
    """The demo spec with `destinations` added (and synced by products_onboarding), its products published."""
    text = (DEMO_DIR / "claro.yaml").read_text(encoding="utf-8")
    for name in ("CLARO_S3_ENDPOINT_URL", "CLARO_WAREHOUSE_URL"):  # the demo's other destinations stay idle
        monkeypatch.delenv(name, raising=False)
    block = "\n".join("  " + line for line in yaml.safe_dump(destinations).splitlines())
    text = text.replace("\ndestinations:\n", "\ndestinations:\n" + block + "\n", 1)
    text = demo_spec_syncing(*destinations, text=text)
    (tmp_path / "claro.yaml").write_text(text, encoding="utf-8")
    defs = build_definitions(tmp_path / "claro.yaml", tmp_path / "home")
    for name, value in env.items():  # after the definitions: batches do not trigger a sync by themselves
        monkeypatch.setenv(name, value)
    return defs


def sync(defs, instance, name):
    result = dg.materialize(list(defs.assets), selection=[dg.AssetKey(["products", name])], instance=instance,
                            resources=defs.resources)
    [event] = result.get_asset_materialization_events()
    meta = {k: v.value for k, v in event.materialization.metadata.items()}
    checks = result.get_asset_check_evaluations()
    return meta | ({"check_passed": checks[0].passed} if checks else {})


def table_rows(pg_url, table):
    with psycopg.connect(pg_url) as conn:
        return {r[0]: r[1:] for r in conn.execute(f"SELECT sku, title, price, brand, gtin FROM {table}").fetchall()}


def push_failed_events(store) -> list[dict]:
    import json

    from claro_dagster.catalogue.push_failures import PUSH_FAILED

    e = store.t["events"]
    with store.engine.connect() as conn:
        rows = conn.execute(e.select().where(e.c.type == PUSH_FAILED).order_by(e.c.id)).mappings().all()
    return [dict(row, payload=json.loads(row["payload"])) for row in rows]


def catalogue_rows(claro):
    frame = claro.store.records("products")
    return {r["sku"]: (r["title"], r["price"], r["brand"], r["gtin"]) for r in frame.to_dict("records")}


@pytest.fixture
def pg_table(pg_url):
    name = f"sb_products_{uuid.uuid4().hex[:8]}"
    yield name
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.mark.postgres
def test_supabase_sql_mode_upserts_through_the_database_url(tmp_path, monkeypatch, pg_url, pg_table):
    dest = {"kind": "supabase", "mode": "sql", "catalogue": "products", "url_env": "TEST_SUPABASE_DB_URL",
            "table": pg_table, "columns": COLUMNS}
    defs = project(tmp_path, monkeypatch, {"supabase_db": dest}, {"TEST_SUPABASE_DB_URL": pg_url})
    claro = defs.resources["claro"]
    with dg.instance_for_test() as instance:
        publish_demo_products(defs, instance)
        first = sync(defs, instance, "supabase_db")
        assert first["rows_sent"] == first["inserted"] == 10
        assert table_rows(pg_url, pg_table) == catalogue_rows(claro)
        assert sync(defs, instance, "supabase_db")["rows_sent"] == 0
        claro.store.apply(ChangeSet("fix-1", "products", "enrich", [Change("ACM-10105", "price", 69.5, 99)]))
        third = sync(defs, instance, "supabase_db")
        assert (third["rows_sent"], third["updated"]) == (1, 1)
        assert table_rows(pg_url, pg_table)["ACM-10105"][1] == 69.5


@pytest.mark.postgres
def test_supabase_rest_mode_upserts_through_postgrest_in_batches(tmp_path, monkeypatch, pg_url, pg_table):
    with psycopg.connect(pg_url, autocommit=True) as conn:  # PostgREST never creates tables
        conn.execute(f"CREATE TABLE {pg_table} (sku text PRIMARY KEY, title text, price numeric, brand text, "
                     "gtin text)")
    with FakePostgrest(pg_url) as fake:
        dest = {"kind": "supabase", "mode": "rest", "catalogue": "products", "url_env": "TEST_SUPABASE_URL",
                "api_key_env": "TEST_SUPABASE_KEY", "table": pg_table, "columns": COLUMNS, "batch_size": 4}
        defs = project(tmp_path, monkeypatch, {"supabase_api": dest},
                       {"TEST_SUPABASE_URL": fake.url, "TEST_SUPABASE_KEY": API_KEY})
        claro = defs.resources["claro"]
        with dg.instance_for_test() as instance:
            publish_demo_products(defs, instance)
            first = sync(defs, instance, "supabase_api")
            assert (first["rows_sent"], first["requests"]) == (10, 3)
            assert [len(p.json()) for p in fake.posts()] == [4, 4, 2]
            assert {p.path for p in fake.posts()} == {f"/rest/v1/{pg_table}?on_conflict=sku"}
            got = {k: (t, float(p), b, g) for k, (t, p, b, g) in table_rows(pg_url, pg_table).items()}
            assert got == catalogue_rows(claro)
            fake.requests.clear()
            assert sync(defs, instance, "supabase_api")["rows_sent"] == 0 and fake.requests == []
            claro.store.apply(ChangeSet("fix-1", "products", "enrich", [Change("ACM-10105", "price", 69.5, 99)]))
            fake.fail_next.append((503, {"Retry-After": "0"}, {"code": "PGRST003", "message": "Timed out"}))
            third = sync(defs, instance, "supabase_api")  # the 503 is retried by the HTTP layer
            assert (third["rows_sent"], third["requests"]) == (1, 1) and len(fake.posts()) == 2
            assert [r["sku"] for r in fake.posts()[-1].json()] == ["ACM-10105"]
            assert float(table_rows(pg_url, pg_table)["ACM-10105"][1]) == 69.5
            assert len(table_rows(pg_url, pg_table)) == 10
            # a refused request fails the run and keeps the cursor: the next sync sends the record again
            claro.store.apply(ChangeSet("fix-2", "products", "enrich", [Change("ACM-10105", "price", 70.5, 99)]))
            monkeypatch.setenv("TEST_SUPABASE_KEY", "wrong")
            with pytest.raises(Exception, match="Invalid API key"):
                sync(defs, instance, "supabase_api")
            monkeypatch.setenv("TEST_SUPABASE_KEY", API_KEY)
            assert sync(defs, instance, "supabase_api")["rows_sent"] == 1
            assert float(table_rows(pg_url, pg_table)["ACM-10105"][1]) == 70.5
        assert fake.violations == []


class Erp:
    """A proprietary system's item endpoint: PUT /api/items/<sku> with a bearer token; answers 200 with
    `{"error": ...}` for items it refuses (as many such systems do)."""

    def __init__(self, token: str):
        self.token = token
        self.items: dict[str, dict] = {}
        self.refuse: dict[str, str] = {}
        self.server = RecordingServer(self.handle)

    def handle(self, request):
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return (401, {}, {"error": "unauthorized"})
        sku = request.path.rsplit("/", 1)[1]
        if sku in self.refuse:
            return (200, {}, {"error": self.refuse[sku]})
        self.items[sku] = request.json()
        return (200, {}, {"id": sku, "error": None})


def test_rest_destination_sends_changed_records_and_keeps_200_errors_per_record(tmp_path, monkeypatch):
    erp = Erp("erp-token")
    try:
        dest = {"kind": "rest", "catalogue": "products", "url": erp.server.url + "/api/items/{sku}",
                "method": "PUT", "body": ERP_BODY, "auth": {"type": "bearer", "token_env": "TEST_ERP_TOKEN"}}
        defs = project(tmp_path, monkeypatch, {"erp": dest}, {"TEST_ERP_TOKEN": "erp-token"})
        claro = defs.resources["claro"]
        erp.refuse["ACM-10102"] = "item is locked for editing"
        with dg.instance_for_test() as instance:
            publish_demo_products(defs, instance)
            first = sync(defs, instance, "erp")
            assert (first["created"], first["failed"], first["check_passed"]) == (9, 1, False)
            catalogue = catalogue_rows(claro)
            assert set(erp.items) == set(catalogue) - {"ACM-10102"}
            for sku, item in erp.items.items():
                title, price, brand, _ = catalogue[sku]
                assert item == {"sku": sku, "name": title, "price": {"amount": price, "currency": "GBP"},
                                "brand": brand}
            [failure] = ChannelState(claro.store).failures("erp")
            assert (failure.record, failure.error) == ("ACM-10102", "HTTP 200 with error: item is locked for editing")
            assert [(e["record"], e["payload"]["error"]) for e in push_failed_events(claro.store)] == [
                ("ACM-10102", "HTTP 200 with error: item is locked for editing")]  # alerted like the sales channels
            refused_key = next(r.headers["Idempotency-Key"] for r in erp.server.requests
                               if r.path.endswith("/ACM-10102"))
            erp.server.requests.clear()
            del erp.refuse["ACM-10102"]
            second = sync(defs, instance, "erp")  # only the refused record, with the same idempotency key
            assert (second["created"], second["unchanged"], second["failed"], second["check_passed"]) == (
                1, 0, 0, True)
            assert [r.headers["Idempotency-Key"] for r in erp.server.requests] == [refused_key]
            erp.server.requests.clear()
            assert sync(defs, instance, "erp")["calls"] == 0 and erp.server.requests == []
            claro.store.apply(ChangeSet("fix-1", "products", "enrich", [Change("ACM-10105", "price", 69.5, 99)]))
            third = sync(defs, instance, "erp")
            assert (third["updated"], third["calls"]) == (1, 1)
            assert [r.path for r in erp.server.requests] == ["/api/items/ACM-10105"]
            assert erp.items["ACM-10105"]["price"]["amount"] == 69.5
            assert ChannelState(claro.store).counts("erp") == {"pushed": 10}
    finally:
        erp.server.close()


# ------------------------------------------------------------------------------ claro push, the real entry point
ERP_SPEC = """\
destinations:
  erp:
    kind: rest
    catalogue: products
    url: %(url)s/api/items/{sku}
    method: PUT
    body: {sku: sku, name: title, price: {amount: price}}
    auth: {type: api_key, key_env: CLI_TEST_ERP_KEY, name: X-Erp-Key}
"""


def test_claro_push_and_status_for_a_rest_destination(tmp_path, monkeypatch):
    erp = Erp("unused")

    def handle(request):  # this ERP takes an API key header
        if request.headers.get("X-Erp-Key") != "k-123":
            return (401, {}, {"error": "unauthorized"})
        sku = request.path.rsplit("/", 1)[1]
        if request.json()["price"]["amount"] < 0:
            return (200, {}, {"error": "price must not be negative"})
        erp.items[sku] = request.json()
        return (200, {}, {"error": None})

    erp.server.handler = handle
    try:
        spec = write_spec(tmp_path / "claro.yaml")
        spec.write_text(spec.read_text(encoding="utf-8") + ERP_SPEC % {"url": erp.server.url}, encoding="utf-8")
        home = tmp_path / "home"
        home.mkdir()
        monkeypatch.setenv("CLARO_HOME", str(home))
        store = open_store(load_spec(spec), home=home)
        store.apply(ChangeSet("load", "products", "enrich", [
            Change(sku, field, value, 100) for sku, title, price in (("SKU-1", "Mug", 4.5), ("SKU-2", "Cup", -3))
            for field, value in (("title", title), ("price", price))]))
        store.dispose()
        monkeypatch.setenv("CLI_TEST_ERP_KEY", "k-123")  # not CLARO_*: cli_project.claro drops those
        assert os.environ["CLI_TEST_ERP_KEY"] == "k-123"

        dry = run_claro("push", "erp", "--dry-run", home=home, spec=spec)
        assert dry.returncode == 0, dry.stderr
        assert "would create SKU-1" in dry.stdout and "would create SKU-2" in dry.stdout
        assert erp.server.requests == []

        pushed = run_claro("push", "erp", home=home, spec=spec)
        assert pushed.returncode == 1, pushed.stderr  # one record refused with a 200 error body
        assert "create SKU-1" in pushed.stdout
        assert "failed SKU-2: HTTP 200 with error: price must not be negative" in pushed.stdout
        assert erp.items == {"SKU-1": {"sku": "SKU-1", "name": "Mug", "price": {"amount": 4.5}}}

        status = run_claro("push", "status", "erp", home=home, spec=spec)
        assert status.returncode == 0, status.stderr
        assert "erp: 1 failed, 1 pushed" in status.stdout
        assert "push.failed SKU-2 (SKU-2): HTTP 200 with error: price must not be negative" in status.stdout
    finally:
        erp.server.close()
