"""`kind: bigquery` destinations and sources are checked against their catalogue and BigQuery's layout rules,
each problem with its file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from claro_dagster.spec import SpecError, load_spec

CATALOGUE = """\
catalogues:
  products:
    key: sku
    attributes:
      sku: {type: text}
      title: {type: text}
      colour: {type: enum, values: [red, blue]}
      size: {type: enum, values: [S, M, L]}
      brand: {type: text}
      supplier: {type: text}
      price: {type: number}
      launch_date: {type: date}
"""
GOOD = """\
destinations:
  warehouse:
    kind: bigquery
    catalogue: products
    project: acme-analytics
    dataset: catalogue
    table: products
    mode: merge
    partition_by: {attribute: launch_date, granularity: MONTH}
    cluster_by: [colour, size]
    credentials_env: CLARO_BQ_KEY
sources:
  erp:
    kind: bigquery
    catalogue: products
    project: acme-erp
    dataset: exports
    table: items
    key: sku
    watermark: updated_at
"""


def load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> list[str]:
    monkeypatch.chdir(tmp_path)
    Path("claro.yaml").write_text(text, encoding="utf-8")
    try:
        load_spec("claro.yaml")
    except SpecError as error:
        return str(error).splitlines()
    return []


def test_a_good_bigquery_destination_and_source_have_no_problem(tmp_path, monkeypatch) -> None:
    assert load(tmp_path, monkeypatch, CATALOGUE + GOOD) == []
    spec = load_spec(tmp_path / "claro.yaml")
    dest = spec.destinations["warehouse"]
    assert (dest.mode, dest.partition_by.granularity, dest.cluster_by) == ("merge", "MONTH", ["colour", "size"])


def test_more_than_four_clustering_columns_are_refused_with_the_line(tmp_path, monkeypatch) -> None:
    text = CATALOGUE + GOOD.replace("cluster_by: [colour, size]", "cluster_by: [colour, size, brand, supplier, title]")
    assert load(tmp_path, monkeypatch, text) == [
        "claro.yaml:22 destinations.warehouse.cluster_by: BigQuery clusters by at most 4 columns, got 5: keep the "
        "four most filtered on"]


@pytest.mark.parametrize(("partition", "message"), [
    ("{attribute: title, granularity: DAY}", "'title' is a text attribute; BigQuery partitions by a date or an "
                                             "integer column"),
    ("{attribute: launch_date, granularity: HOUR}", "written as a DATE column, which BigQuery partitions by DAY, "
                                                    "MONTH or YEAR, not HOUR"),
    ("{attribute: price}", "an integer-range partition needs 'start', 'end' and 'interval'"),
    ("{attribute: price, start: 100, end: 0, interval: 10}", "'end' (0) must be greater than 'start' (100)"),
    ("{ingestion_time: true, attribute: launch_date}", "partition by ingestion time takes only 'granularity'"),
    ("{attribute: nope}", "'nope' is not an attribute of catalogue 'products'"),
])
def test_partitioning_follows_bigquery_rules(tmp_path, monkeypatch, partition, message) -> None:
    text = CATALOGUE + GOOD.replace("{attribute: launch_date, granularity: MONTH}", partition)
    [problem] = load(tmp_path, monkeypatch, text)
    assert problem.startswith("claro.yaml:21 destinations.warehouse.partition_by") and message in problem


def test_a_number_attribute_cannot_be_clustered(tmp_path, monkeypatch) -> None:
    text = CATALOGUE + GOOD.replace("cluster_by: [colour, size]", "cluster_by: [colour, price]")
    [problem] = load(tmp_path, monkeypatch, text)
    assert problem.startswith("claro.yaml:22 destinations.warehouse.cluster_by[1]:") and "FLOAT" in problem


def test_a_bigquery_source_needs_a_table_or_a_query_and_its_watermark(tmp_path, monkeypatch) -> None:
    text = CATALOGUE + GOOD.replace("    watermark: updated_at\n", "    query: SELECT * FROM x\n")
    assert load(tmp_path, monkeypatch, text) == [
        "claro.yaml:25 sources.erp: a bigquery source needs exactly one of 'table' (with 'dataset') or 'query'",
        "claro.yaml:25 sources.erp.watermark: a bigquery source needs 'watermark': the column that grows with "
        "every change, e.g. updated_at"]
