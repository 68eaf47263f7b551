"""Supabase's REST mode (resources/supabase.py) against the PostgREST-compatible fake (tests/postgrest_fake.py,
following tests/contracts/postgrest/upsert-contract.md), which writes into the real PostgreSQL: rows read back
with SQL. Also the fake's own contract rules, so a fake that drifted from PostgREST fails here."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest
from postgrest_fake import API_KEY, FakePostgrest

from claro_dagster.resources.http import HttpClient
from claro_dagster.resources.supabase import PREFER_UPSERT, PostgrestTable, SupabaseError, rest_url_from_env

pytestmark = pytest.mark.postgres


@pytest.fixture
def table(pg_url):
    name = f"items_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (sku text PRIMARY KEY, title text, price double precision)")
    yield name
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture
def fake(pg_url):
    with FakePostgrest(pg_url) as server:
        yield server
    assert server.violations == []


def rows(pg_url, table):
    with psycopg.connect(pg_url) as conn:
        return conn.execute(f"SELECT sku, title, price FROM {table} ORDER BY sku").fetchall()


def client(fake, table, key=API_KEY, **options):
    return PostgrestTable(fake.rest_url, key, table, http=HttpClient(sleep=lambda s: None, **options))


def test_upsert_in_batches_inserts_then_updates_without_duplicates(fake, table, pg_url):
    data = [{"sku": f"S{i}", "title": f"Item {i}", "price": i + 0.5} for i in range(5)]
    result = client(fake, table).upsert(data, "sku", batch_size=2)
    assert (result.rows, result.requests) == (5, 3)
    assert rows(pg_url, table) == [(f"S{i}", f"Item {i}", i + 0.5) for i in range(5)]
    [first, *_] = fake.posts()
    assert first.path == f"/rest/v1/{table}?on_conflict=sku"
    assert (first.headers["apikey"], first.headers["Authorization"]) == (API_KEY, f"Bearer {API_KEY}")
    assert first.headers["Prefer"] == PREFER_UPSERT and len(first.json()) == 2
    client(fake, table).upsert([{"sku": "S1", "title": "Renamed", "price": 9.0}], "sku", batch_size=10)
    assert rows(pg_url, table)[1] == ("S1", "Renamed", 9.0) and len(rows(pg_url, table)) == 5


def test_rows_with_different_keys_are_sent_with_the_same_keys(fake, table, pg_url):
    client(fake, table).upsert([{"sku": "A", "title": "a"}, {"sku": "B", "price": 2.0}], "sku", batch_size=10)
    assert rows(pg_url, table) == [("A", "a", None), ("B", None, 2.0)]
    assert [sorted(r) for r in fake.posts()[0].json()] == [["price", "sku", "title"]] * 2


def test_a_5xx_is_retried_by_the_http_layer_and_the_row_is_written_once(fake, table, pg_url):
    fake.fail_next.append((503, {"Retry-After": "0"}, {"code": "PGRST000", "message": "Could not connect"}))
    client(fake, table).upsert([{"sku": "A", "title": "a", "price": 1.0}], "sku", batch_size=10)
    assert len(fake.posts()) == 2 and rows(pg_url, table) == [("A", "a", 1.0)]
    assert fake.posts()[0].body == fake.posts()[1].body


def test_a_wrong_key_is_refused_with_what_to_check(fake, table, pg_url):
    with pytest.raises(SupabaseError, match="HTTP 401.*Invalid API key"):
        client(fake, table, key="wrong").upsert([{"sku": "A"}], "sku", batch_size=10)
    assert rows(pg_url, table) == []


def test_a_missing_table_says_to_create_it(fake, pg_url):
    with pytest.raises(SupabaseError, match="PGRST205.*create the table first"):
        client(fake, "no_such_table").upsert([{"sku": "A"}], "sku", batch_size=10)


def test_an_unknown_column_is_refused_and_nothing_of_the_batch_is_written(fake, table, pg_url):
    with pytest.raises(SupabaseError, match=r"rows 1-2 of 2 .*PGRST204.*'colour' column"):
        client(fake, table).upsert([{"sku": "A", "colour": "red"}, {"sku": "B", "colour": "blue"}], "sku", 10)
    assert rows(pg_url, table) == []


def test_rest_url_from_the_project_url_or_its_own_variable(monkeypatch):
    monkeypatch.setenv("SB_URL", "https://xyz.supabase.co/")
    monkeypatch.setenv("SB_REST", "http://127.0.0.1:1/rest/v1")
    assert rest_url_from_env(None, "SB_URL") == "https://xyz.supabase.co/rest/v1"
    assert rest_url_from_env("SB_REST", "SB_URL") == "http://127.0.0.1:1/rest/v1"
    monkeypatch.delenv("SB_URL")
    with pytest.raises(SupabaseError, match="SB_URL .* is not set"):
        rest_url_from_env(None, "SB_URL")


# ---------------------------------------------------------------------------------- the fake follows PostgREST
def post(fake, table, body, prefer=None, query="", key=API_KEY):
    import requests

    headers = {"apikey": key, "Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if prefer:
        headers["Prefer"] = prefer
    return requests.post(f"{fake.rest_url}/{table}{query}", data=json.dumps(body) if not isinstance(body, bytes)
                         else body, headers=headers, timeout=10)


def test_fake_duplicate_without_resolution_is_409_with_postgres_code(fake, table):
    assert post(fake, table, {"sku": "A"}).status_code == 201
    answer = post(fake, table, {"sku": "A"})
    assert answer.status_code == 409 and answer.json()["code"] == "23505"
    assert set(answer.json()) == {"code", "message", "details", "hint"}
    assert answer.headers["Proxy-Status"] == "PostgREST; error=23505"


def test_fake_merge_answers_200_when_only_updating_and_representation_lists_rows(fake, table):
    assert post(fake, table, [{"sku": "A", "title": "a"}], "resolution=merge-duplicates").status_code == 201
    answer = post(fake, table, [{"sku": "A", "title": "b"}], "return=representation, resolution=merge-duplicates",
                  "?on_conflict=sku")
    assert answer.status_code == 200 and answer.json() == [{"sku": "A", "title": "b", "price": None}]
    assert answer.headers["Preference-Applied"] == "resolution=merge-duplicates, return=representation"


def test_fake_ignore_duplicates_returns_only_inserted_rows(fake, table, pg_url):
    post(fake, table, [{"sku": "A", "title": "a"}])
    answer = post(fake, table, [{"sku": "A", "title": "x"}, {"sku": "B", "title": "b"}],
                  "resolution=ignore-duplicates,return=representation")
    assert answer.status_code == 201 and [r["sku"] for r in answer.json()] == ["B"]
    assert rows(pg_url, table) == [("A", "a", None), ("B", "b", None)]


def test_fake_refuses_mismatched_keys_bad_json_and_missing_keys(fake, table):
    mismatch = post(fake, table, [{"sku": "A"}, {"sku": "B", "title": "b"}])
    assert (mismatch.status_code, mismatch.json()["code"], mismatch.json()["message"]) == (
        400, "PGRST102", "All object keys must match")
    assert post(fake, table, b"{not json").json()["message"] == "Empty or invalid json"
    assert post(fake, table, {"sku": "A"}, key="other").status_code == 401
    import requests

    bare = requests.post(f"{fake.rest_url}/{table}", json={"sku": "A"}, timeout=10)
    assert bare.status_code == 401 and "No API key" in bare.json()["message"]


# ------------------------------------------------------------------------------------------------ claro check
def spec_problems(tmp_path, monkeypatch, dest: str) -> list[str]:
    from claro_dagster.spec import SpecError, load_spec

    monkeypatch.chdir(tmp_path)
    (tmp_path / "claro.yaml").write_text(
        "catalogues:\n  products:\n    key: sku\n    attributes:\n      sku: {type: text}\n"
        "destinations:\n  sb:\n    kind: supabase\n    catalogue: products\n" + dest, encoding="utf-8")
    try:
        load_spec("claro.yaml")
    except SpecError as error:
        return str(error).splitlines()
    return []


@pytest.mark.parametrize("dest, message", [
    ("    mode: rest\n    url_env: SB_URL\n    api_key_env: SB_KEY\n    table: items\n", None),
    ("    mode: sql\n    url_env: SB_DB\n    table: items\n", None),
    ("    url_env: SB_DB\n    table: items\n", "destinations.sb.mode: a supabase destination needs 'mode': sql"),
    ("    mode: merge\n    url_env: SB_DB\n    table: items\n", "destinations.sb.mode: a supabase destination needs"),
    ("    mode: rest\n    url_env: SB_URL\n    table: items\n", "destinations.sb.api_key_env: a supabase rest "
                                                               "destination needs 'api_key_env'"),
    ("    mode: sql\n    table: items\n", "destinations.sb.url_env: a supabase sql destination needs 'url_env'"),
    ("    mode: rest\n    url_env: U\n    api_key_env: K\n", "destinations.sb.table: a supabase destination needs"),
])
def test_claro_check_supabase_modes(tmp_path, monkeypatch, dest, message):
    found = spec_problems(tmp_path, monkeypatch, dest)
    if message is None:
        assert found == []
    else:
        assert any(message in line for line in found), found
