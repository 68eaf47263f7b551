"""`claro duplicates list|show|merge|reject|unmerge` and merge proposals in `claro review list`, through the real
`claro` entry point."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.spec import load_spec
from tests.cli_project import claro

SPEC = """\
name: dedupe-cli
catalogues:
  products:
    key: sku
    attributes:
      sku: {type: text, identifier: true}
      title: {type: text}
      brand: {type: text}
      gtin: {type: text, identifier: true, format: gtin}
      colour: {type: text}
      status: {type: enum, values: [active, archived]}
    dedupe:
      attributes: {title: 3, brand: 1, gtin: 4}
      retire_attribute: status
      retire_value: archived
  orders:
    key: order
    attributes:
      order: {type: text}
      product: {type: reference, target: products}
"""


@pytest.fixture
def project(tmp_path):
    spec = tmp_path / "claro.yaml"
    spec.write_text(SPEC, encoding="utf-8")
    home = tmp_path / "home"
    home.mkdir()
    store = CatalogueStore(load_spec(spec), f"sqlite:///{home / 'catalogue.db'}")
    try:
        store.import_records("products", pd.DataFrame([
            {"sku": "A1", "title": "Acme Steel Bottle 500ml", "brand": "Acme", "gtin": "5012345678900",
             "colour": None, "status": "active"},
            {"sku": "B2", "title": "Acme Steel Botle 0.5 L", "brand": "Acme", "gtin": None, "colour": "red",
             "status": "active"},
            {"sku": "C3", "title": "Acme Steel Bottle 750ml", "brand": "Acme", "gtin": "5011111111116",
             "colour": "red", "status": "active"},
            {"sku": "C4", "title": "Acme Steel Bottle 750ml", "brand": "Acme", "gtin": "05011111111116",
             "colour": "red", "status": "active"}]), change_set_id="import-1", run_id="import")
        store.import_records("orders", pd.DataFrame([{"order": "O1", "product": "B2"}]), change_set_id="import-2",
                             run_id="import")
    finally:
        store.dispose()
    return home, spec


def run(project, *args):
    home, spec = project
    return claro(*args, home=home, spec=spec, user="ann")


def listed(project, *args) -> list[dict]:
    result = run(project, *args, "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_find_list_show_merge_and_unmerge(project):
    found = run(project, "duplicates", "find")
    assert found.returncode == 0, found.stderr
    assert "4 records compared: 2 new merge proposal(s) queued for review" in found.stdout
    proposals = {(p["survivor"], p["duplicate"]): p for p in listed(project, "duplicates", "list")}
    assert set(proposals) == {("A1", "B2"), ("C3", "C4")}
    merge_id = proposals[("A1", "B2")]["id"]
    review = {i["id"]: i for i in listed(project, "review", "list", "--operation", "dedupe")}
    assert (review[merge_id]["record"], review[merge_id]["field"], review[merge_id]["new"]) == ("B2", "merged_into",
                                                                                                "A1")
    shown = run(project, "duplicates", "show", str(merge_id))
    assert shown.returncode == 0, shown.stderr
    assert "A1 (survivor)" in shown.stdout and "B2 (duplicate)" in shown.stdout
    assert "filled from B2: A1 has none" in shown.stdout

    merged = run(project, "duplicates", "merge", str(merge_id))
    assert merged.returncode == 0, merged.stderr
    assert "merged B2 into A1: 3 value(s) written" in merged.stdout  # A1.colour, B2.status, O1.product
    assert listed(project, "records", "--catalogue", "orders")[0]["product"] == "A1"
    assert [p["status"] for p in listed(project, "duplicates", "list", "--status", "merged")] == ["merged"]

    undone = run(project, "duplicates", "unmerge", str(merge_id))
    assert undone.returncode == 0, undone.stderr
    assert "restored 3 field values" in undone.stdout
    assert listed(project, "records", "--catalogue", "orders")[0]["product"] == "B2"
    statuses = {r["sku"]: r["status"] for r in listed(project, "records")}
    assert statuses["B2"] == "active"


def test_reject_is_final_and_deciding_twice_says_why(project):
    assert run(project, "duplicates", "find").returncode == 0
    [pair] = [p for p in listed(project, "duplicates", "list") if p["survivor"] == "C3"]
    rejected = run(project, "duplicates", "reject", str(pair["id"]), "--note", "two listings on purpose")
    assert rejected.returncode == 0, rejected.stderr
    assert "C3 and C4 will not be proposed again" in rejected.stdout
    again = run(project, "duplicates", "merge", str(pair["id"]))
    assert again.returncode == 1
    assert f"error: merge proposal {pair['id']} is rejected, not open" in again.stderr
    assert "0 new merge proposal(s)" in run(project, "duplicates", "find").stdout
    missing = run(project, "duplicates", "show", "999")
    assert missing.returncode == 1 and "error: no merge proposal 999" in missing.stderr
