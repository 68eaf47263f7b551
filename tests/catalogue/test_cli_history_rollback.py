"""`claro rollback` and `claro history` as a user types them (the real entry point, in a subprocess; the
store behaviour under them runs on both backends in test_store_writes.py): rollback undoes what reviewers
approved of a run, says why and exits non-zero when it finds nothing, and history names who decided each
value (issue 7 item 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from claro_dagster.catalogue.review import ReviewQueue
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.spec import load_spec

SPEC = """\
catalogues:
  products:
    key: sku
    attributes:
      sku: {type: text, required: true}
      title: {type: text}
      price: {type: number}
thresholds:
  default: {auto_apply: 90, review: 60, reject: 40}
"""

CLARO = str(Path(sys.executable).parent / "claro")


@pytest.fixture
def project(tmp_path):
    """A project whose run `r2` proposed two prices that wait for review, over records imported by `r1`."""
    store_url = f"sqlite:///{tmp_path / 'catalogue.db'}"
    (tmp_path / "claro.yaml").write_text(SPEC, encoding="utf-8")
    env = {**os.environ, "CLARO_SPEC": str(tmp_path / "claro.yaml"), "CLARO_HOME": str(tmp_path / "home"),
           "CLARO_USER": "priya", "CLARO_DATABASE_URL": store_url}
    store = CatalogueStore(load_spec(tmp_path / "claro.yaml"), store_url)
    store.import_records("products", pd.DataFrame({"sku": ["A1", "B2"], "title": ["Mug", "Cup"], "price": [4.5, 3.0]}),
                         change_set_id="import-1", run_id="r1", source="acme")
    store.import_records("products", pd.DataFrame({"sku": ["A1", "B2"], "price": [9.0, 8.0]}),
                         change_set_id="import-2", run_id="r2", source="globex", overwrite_confidence=70)
    yield store, env
    store.dispose()


def claro(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([CLARO, *args], env=env, capture_output=True, text=True, timeout=120)


def test_rollback_after_approvals_restores_the_approved_values(project):
    store, env = project
    ids = {i.record: i.id for i in ReviewQueue(store).list()}
    approved = claro(env, "review", "approve", str(ids["A1"]), str(ids["B2"]))
    assert approved.returncode == 0, approved.stderr
    assert store.record("products", "A1")["price"] == 9.0
    done = claro(env, "rollback", "--run", "r2")
    assert done.returncode == 0, done.stderr
    assert "restored 2 field values" in done.stdout
    assert (store.record("products", "A1")["price"], store.record("products", "B2")["price"]) == (4.5, 3.0)
    assert store.provenance("products", "A1", "price").run_id == "r1"
    again = claro(env, "rollback", "--run", "r2")
    assert again.returncode == 1
    assert "nothing to roll back" in again.stderr and "already rolled back" in again.stderr


def test_rollback_that_finds_nothing_exits_non_zero_and_says_why(project):
    _store, env = project
    elsewhere = claro(env, "rollback", "--run", "r2", "--record", "C3")
    assert elsewhere.returncode == 1
    assert "run 'r2' wrote no values for record 'C3'" in elsewhere.stderr
    assert "2 change(s) it proposed still wait" in elsewhere.stderr
    withdrawn = claro(env, "rollback", "--run", "r2")
    assert withdrawn.returncode == 0 and "withdrew 2 of its changes that waited for review" in withdrawn.stdout
    again = claro(env, "rollback", "--run", "r2")
    assert again.returncode == 1 and "nothing to roll back" in again.stderr
    unknown = claro(env, "rollback", "--run", "nope")
    assert unknown.returncode == 1 and "no change set was written by run 'nope'" in unknown.stderr


def test_history_shows_who_decided_each_value(project):
    store, env = project
    ids = {i.record: i.id for i in ReviewQueue(store).list()}
    assert claro(env, "review", "approve", str(ids["A1"])).returncode == 0
    assert claro(env, "review", "reject", str(ids["B2"]), "--by", "raj", "--note", "too dear").returncode == 0
    rolled = claro({**env, "CLARO_USER": "zoe"}, "rollback", "--run", "r2")
    assert rolled.returncode == 0, rolled.stderr

    shown = claro(env, "history", "A1", "--field", "price", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)  # one JSON array (issue 8 item 8)
    assert [(r["kind"], r["new"], r["by"]) for r in rows] == [("created", 4.5, None), ("review", 9.0, "priya"),
                                                               ("rollback", 4.5, "zoe")]
    assert (rows[1]["proposal"], rows[1]["proposed_in"], rows[1]["run_id"]) == (ids["A1"], "import-2", "r2")
    rejected = json.loads(claro(env, "history", "B2", "--format", "json").stdout)
    assert [(r["kind"], r["new"], r["by"], r["reason"]) for r in rejected if r["kind"] == "rejected"] == \
        [("rejected", 8.0, "raj", "too dear")]

    table = claro({**env, "COLUMNS": "200"}, "history", "A1", "--field", "price")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    header = next(line for line in lines if "kind" in line)
    assert " by " in header.replace("│", " ")
    assert any("review" in line and "priya" in line for line in lines)
    assert any("rollback" in line and "zoe" in line for line in lines)
