"""The BigQuery connector against `tests/bigquery_fake.py`, which checks every request against Google's BigQuery v2
discovery document (tests/contracts/google/bigquery.v2.json) and keeps the rows it loads."""

from __future__ import annotations

import datetime as dt
import io
import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from claro_dagster.resources.bigquery import (
    BigQueryError,
    BigQuerySchemaError,
    BigQueryTable,
    Column,
    Layout,
    job_id_for,
    table_columns,
)
from claro_dagster.spec.models import AttributeSpec, CatalogueSpec
from tests.bigquery_fake import Contract, ContractError, FakeBigQuery

PROJECT, DATASET, TABLE = "test-project", "claro", "products"
CATALOGUE = CatalogueSpec(key="sku", attributes={
    "sku": AttributeSpec(type="text", required=True),
    "title": AttributeSpec(type="text", max_length=20),
    "price": AttributeSpec(type="number"),
    "launch_date": AttributeSpec(type="date"),
    "colour": AttributeSpec(type="enum", values=["red", "blue"]),
})
COLUMNS = list(CATALOGUE.attributes)
LAYOUT = Layout(partition_field="launch_date", granularity="MONTH", cluster_by=("colour",))


@pytest.fixture
def fake():
    with FakeBigQuery() as server:
        yield server
        assert server.contract_errors == []  # every request the connector sent is one the API documents


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def connector(fake, **kwargs) -> tuple[BigQueryTable, Sleeps]:
    sleeps = Sleeps()
    return BigQueryTable(PROJECT, endpoint_url=fake.url, sleep=sleeps, **kwargs), sleeps


def frame(*rows: tuple) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLUMNS)


ROWS = frame(("ACM-1", "Kettle", 19.5, "2026-03-01", "red"), ("ACM-2", "Toaster", 30.0, "2026-04-15", "blue"),
             ("ACM-3", "Mug", None, None, None))


def push(table: BigQueryTable, rows: pd.DataFrame, mode: str, job_id: str | None = None, columns=COLUMNS):
    cols = table_columns(CATALOGUE, columns, LAYOUT)
    return table.push(DATASET, TABLE, rows[columns], cols, "sku", mode, LAYOUT, job_id=job_id)


def stored(fake) -> dict[str, dict]:
    return {r["sku"]: r for r in fake.rows(PROJECT, DATASET, TABLE)}


def test_append_creates_the_dataset_and_a_partitioned_clustered_table_and_loads_parquet(fake) -> None:
    table, _ = connector(fake)
    result = push(table, ROWS, "append", job_id=job_id_for("bq", 0, 3))
    assert result.created_table and result.jobs == ["claro_bq_0_3"]
    resource = fake.tables[(PROJECT, DATASET, TABLE)]["resource"]
    assert resource["timePartitioning"] == {"type": "MONTH", "field": "launch_date"}
    assert resource["clustering"] == {"fields": ["colour"]}
    assert fake.schema(PROJECT, DATASET, TABLE) == {"sku": "STRING", "title": "STRING", "price": "FLOAT",
                                                     "launch_date": "DATE", "colour": "STRING"}
    # one load job of one Parquet file, not streaming inserts
    [load] = fake.calls("bigquery.jobs.insert")
    assert load.params["uploadType"] == "multipart"
    assert load.body["metadata"]["configuration"]["load"]["sourceFormat"] == "PARQUET"
    assert fake.calls("bigquery.tabledata.insertAll") == []
    assert stored(fake) == {
        "ACM-1": {"sku": "ACM-1", "title": "Kettle", "price": 19.5, "launch_date": dt.date(2026, 3, 1),
                  "colour": "red"},
        "ACM-2": {"sku": "ACM-2", "title": "Toaster", "price": 30.0, "launch_date": dt.date(2026, 4, 15),
                  "colour": "blue"},
        "ACM-3": {"sku": "ACM-3", "title": "Mug", "price": None, "launch_date": None, "colour": None}}
    # polled through PENDING/RUNNING to DONE
    assert len(fake.calls("bigquery.jobs.get")) >= 2


def test_a_retried_append_finds_its_first_load_instead_of_loading_twice(fake) -> None:
    table, _ = connector(fake)
    push(table, ROWS, "append", job_id=job_id_for("bq", 0, 3))
    again = push(table, ROWS, "append", job_id=job_id_for("bq", 0, 3))  # e.g. the cursor write was lost
    assert again.found_existing_job and again.jobs == ["claro_bq_0_3"]
    assert len(fake.rows(PROJECT, DATASET, TABLE)) == 3  # BigQuery answered 409; nothing loaded twice
    assert len(fake.calls("bigquery.jobs.insert")) == 2


def test_an_append_whose_first_job_failed_is_retried_under_a_new_id(fake) -> None:
    table, _ = connector(fake)
    bad = ROWS.copy()
    bad.loc[1, "title"] = "x" * 25  # longer than the column's maxLength (20)
    with pytest.raises(BigQueryError):
        push(table, bad, "append", job_id="claro_bq_0_3")
    result = push(table, ROWS, "append", job_id="claro_bq_0_3")
    assert result.jobs == ["claro_bq_0_3_r2"] and not result.found_existing_job
    assert len(fake.rows(PROJECT, DATASET, TABLE)) == 3


def test_replace_truncates_and_keeps_the_layout(fake) -> None:
    table, _ = connector(fake)
    push(table, ROWS, "append", job_id="first")
    push(table, ROWS.iloc[:1], "replace")
    assert list(stored(fake)) == ["ACM-1"]
    [_, replace] = fake.calls("bigquery.jobs.insert")
    config = replace.body["metadata"]["configuration"]["load"]
    assert config["writeDisposition"] == "WRITE_TRUNCATE" and "schemaUpdateOptions" not in config
    assert fake.tables[(PROJECT, DATASET, TABLE)]["resource"]["clustering"] == {"fields": ["colour"]}


def test_merge_loads_a_staging_table_then_one_merge_on_the_key_then_drops_the_staging_table(fake) -> None:
    table, _ = connector(fake)
    push(table, ROWS, "merge")
    changed = frame(("ACM-2", "Toaster XL", 35.0, "2026-04-15", "blue"), ("ACM-4", "Jug", 9.0, None, "red"))
    result = push(table, changed, "merge")
    assert (result.inserted, result.updated) == (1, 1)
    rows = stored(fake)
    assert sorted(rows) == ["ACM-1", "ACM-2", "ACM-3", "ACM-4"]
    assert (rows["ACM-2"]["title"], rows["ACM-2"]["price"]) == ("Toaster XL", 35.0)
    assert rows["ACM-1"]["title"] == "Kettle"
    queries = [c.body["configuration"]["query"]["query"] for c in fake.calls("bigquery.jobs.insert")
               if "query" in (c.body or {}).get("configuration", {})]
    assert len(queries) == 2 and all(q.startswith("MERGE `test-project.claro.products` T USING") for q in queries)
    assert [k for k in fake.tables if k[2] != TABLE] == []  # staging dropped
    assert len(fake.calls("bigquery.tables.delete")) == 2
    staging = [c.body for c in fake.calls("bigquery.tables.insert") if c.body["tableReference"]["tableId"] != TABLE]
    assert len(staging) == 2 and all(int(t["expirationTime"]) > 0 for t in staging)  # gone by itself if left


def test_a_new_attribute_becomes_a_new_column(fake) -> None:
    table, _ = connector(fake)
    push(table, ROWS, "append", job_id="a", columns=["sku", "price", "launch_date", "colour"])
    result = push(table, ROWS, "append", job_id="b")
    assert result.added_columns == ["title"]
    [_, second] = fake.calls("bigquery.jobs.insert")
    assert second.body["metadata"]["configuration"]["load"]["schemaUpdateOptions"] == ["ALLOW_FIELD_ADDITION"]
    assert fake.schema(PROJECT, DATASET, TABLE)["title"] == "STRING"
    assert [r["title"] for r in fake.rows(PROJECT, DATASET, TABLE)] == [None, None, None, "Kettle", "Toaster", "Mug"]


def test_merge_adds_a_new_column_with_a_patch(fake) -> None:
    table, _ = connector(fake)
    push(table, ROWS, "merge", columns=["sku", "price", "launch_date", "colour"])
    result = push(table, ROWS, "merge")
    assert result.added_columns == ["title"] and len(fake.calls("bigquery.tables.patch")) == 1
    assert stored(fake)["ACM-1"]["title"] == "Kettle"


def test_a_type_change_is_refused_pointing_at_schema_diff(fake) -> None:
    table, _ = connector(fake)
    push(table, ROWS, "merge")
    fields = fake.tables[(PROJECT, DATASET, TABLE)]["resource"]["schema"]["fields"]
    fields[2]["type"] = "STRING"  # price was written as text by an earlier version of the catalogue
    with pytest.raises(BigQuerySchemaError, match=r"price is STRING in the table but FLOAT.*claro schema-diff"):
        push(table, ROWS, "merge")


def test_a_load_job_failing_on_one_bad_row_names_the_record(fake) -> None:
    table, _ = connector(fake)
    bad = ROWS.copy()
    bad.loc[1, "title"] = "A toaster with a name far too long"
    with pytest.raises(BigQueryError, match=r"job claro_bq_0_3 failed \(invalid\): record 'ACM-2': .*title.*row 2"):
        push(table, bad, "append", job_id="claro_bq_0_3")
    assert fake.rows(PROJECT, DATASET, TABLE) == []  # the job failed whole


def test_a_value_that_cannot_be_typed_is_refused_before_sending_naming_the_record(fake) -> None:
    table, _ = connector(fake)
    bad = ROWS.copy()
    bad.loc[2, "launch_date"] = "next spring"
    with pytest.raises(BigQueryError, match=r"record 'ACM-3': launch_date = 'next spring' is not a date"):
        push(table, bad, "append", job_id="x")
    assert fake.calls("bigquery.jobs.insert") == []


def test_quota_errors_are_retried_with_backoff(fake) -> None:
    table, sleeps = connector(fake)
    fake.fail("bigquery.tables.get", 429, "rateLimitExceeded", times=2)
    fake.fail("bigquery.jobs.get", 403, "quotaExceeded", times=1, retry_after=7)
    fake.fail("bigquery.jobs.insert", 503, "backendError", times=1)  # the upload is refused whole, then resent
    push(table, ROWS, "append", job_id="x")
    assert len(stored(fake)) == 3 and len(fake.jobs) == 1
    assert 7 in sleeps  # Retry-After honoured
    assert len(fake.calls("bigquery.tables.get")) == 3


def test_quota_errors_that_do_not_stop_fail_clearly_without_moving_anything(fake) -> None:
    table, sleeps = connector(fake, max_attempts=4)
    fake.fail("bigquery.tables.get", 403, "quotaExceeded", times=10)
    with pytest.raises(BigQueryError, match=r"still refused after 4 attempts \(quota: HTTP 403.*raise it in the "
                                            r"Google Cloud console"):
        push(table, ROWS, "append", job_id="x")
    # three waits between four attempts, each within the exponential full-jitter bound (0.5 s, 1 s, 2 s)
    assert len(sleeps) == 3 and all(0 <= s <= 0.5 * 2 ** n for n, s in enumerate(sleeps))
    assert len(fake.calls("bigquery.tables.get")) == 4 and fake.calls("bigquery.jobs.insert") == []


def test_a_revoked_service_account_key_fails_naming_the_variable(fake, tmp_path, monkeypatch) -> None:
    key = tmp_path / "key.json"
    key.write_text(json.dumps(fake.service_account_key()))
    monkeypatch.setenv("CLARO_BQ_KEY", str(key))
    table, _ = connector(fake, credentials_env="CLARO_BQ_KEY")
    push(table, ROWS, "append", job_id="x")  # the key works: a token was issued and sent
    fake.revoke()
    fresh, _ = connector(fake, credentials_env="CLARO_BQ_KEY")
    with pytest.raises(BigQueryError, match=r"refused the service-account key in CLARO_BQ_KEY.*invalid_grant.*"
                                            r"create a new key and point CLARO_BQ_KEY at it"):
        push(fresh, ROWS, "append", job_id="y")


def test_an_unset_credentials_variable_is_named(fake, monkeypatch) -> None:
    monkeypatch.delenv("CLARO_BQ_KEY", raising=False)
    table, _ = connector(fake, credentials_env="CLARO_BQ_KEY")
    with pytest.raises(BigQueryError, match="CLARO_BQ_KEY is not set"):
        push(table, ROWS, "append", job_id="x")


# -- the fake's own rules, as the API documents them --------------------------------------------------------


def client(fake):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    return bigquery.Client(project=PROJECT, credentials=AnonymousCredentials(),
                           client_options={"api_endpoint": fake.url})


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: setattr(t, "clustering_fields", ["a", "b", "c", "d", "e"]), "only 4 allowed"),
    (lambda t: setattr(t, "clustering_fields", ["f"]), "FLOAT which is not supported for clustering"),
    (lambda t: setattr(t, "time_partitioning", __import__("google.cloud.bigquery").cloud.bigquery.TimePartitioning(
        field="a")), "can only be of type TIMESTAMP, DATE or DATETIME"),
    (lambda t: setattr(t, "time_partitioning", __import__("google.cloud.bigquery").cloud.bigquery.TimePartitioning(
        type_="HOUR", field="d")), "HOUR partitioning is not supported for a DATE column"),
])
def test_the_fake_refuses_layouts_bigquery_refuses(fake, change, message) -> None:
    from google.api_core.exceptions import BadRequest
    from google.cloud import bigquery

    bq = client(fake)
    bq.create_dataset("test-project.ds")
    table = bigquery.Table("test-project.ds.t", schema=[bigquery.SchemaField(n, "STRING") for n in "abcde"]
                           + [bigquery.SchemaField("f", "FLOAT"), bigquery.SchemaField("d", "DATE")])
    change(table)
    with pytest.raises(BadRequest, match=message):
        bq.create_table(table)


def test_the_fake_takes_a_resumable_upload(fake) -> None:
    from google.cloud import bigquery

    bq = client(fake)
    bq.create_dataset("test-project.ds")
    sink = io.BytesIO()
    pq.write_table(pa.table({"a": ["x", "y"]}), sink)
    sink.seek(0)
    job = bq.load_table_from_file(sink, "test-project.ds.t", job_config=bigquery.LoadJobConfig(
        source_format="PARQUET"), num_retries=0)  # no size: the SDK uses the resumable protocol
    job.result()
    assert fake.rows("test-project", "ds", "t") == [{"a": "x"}, {"a": "y"}]
    assert fake.calls("bigquery.jobs.insert")[0].params["uploadType"] == "resumable"


def test_the_contract_check_refuses_what_the_discovery_document_does_not_allow() -> None:
    contract = Contract()
    method, params, upload = contract.match("POST", "/bigquery/v2/projects/p/jobs", {})
    assert method.id == "bigquery.jobs.insert" and params == {"projectId": "p"} and not upload
    with pytest.raises(ContractError, match="unknown field 'destination'"):
        contract.check_body(method, {"configuration": {"load": {"destination": {}}}})
    with pytest.raises(ContractError, match="not one of"):
        contract.check_body(method, {"configuration": {"load": {"jsonExtension": "YAML"}}})
    with pytest.raises(ContractError, match="'yes' is not a boolean"):
        contract.check_body(method, {"configuration": {"load": {"autodetect": "yes"}}})
    with pytest.raises(ContractError, match="unknown query parameter"):
        contract.check_params(method, params, {"bogus": "1"}, False)
    with pytest.raises(ContractError, match="no method"):
        contract.match("GET", "/bigquery/v2/projects/p/nothing", {})
    results = contract.match("GET", "/bigquery/v2/projects/p/queries/j", {})[0]
    with pytest.raises(ContractError, match="'many' is not a integer"):
        contract.check_params(results, {"projectId": "p", "jobId": "j"}, {"maxResults": "many"}, False)


def test_table_columns_follow_the_attribute_types() -> None:
    ranged = Layout(partition_field="price", range=(0, 1000, 10))
    assert table_columns(CATALOGUE, COLUMNS, ranged) == [
        Column("sku", "STRING", "REQUIRED"), Column("title", "STRING", max_length=20), Column("price", "INTEGER"),
        Column("launch_date", "DATE"), Column("colour", "STRING")]
