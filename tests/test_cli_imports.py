"""Read-only commands answer at once: they import no Dagster module (issue 8 item 6).

Each command runs in-process (`claro_dagster.cli.main`, as the console script calls it) in a fresh Python, on a
small project with a record, a review item, a batch with a rejected row and a schedule; afterwards no module
named `dagster` or `dagster_*` may be loaded. The import graph is asserted, not the time:
`benchmarks/cli.py` measures the time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from cli_project import write_spec

from claro_dagster.catalogue.batches import BatchRegistry
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
SCHEDULES = """
schedules:
  nightly:
    target: products/analyse
    every: daily
    timezone: Europe/London
    filter: 'status == "active"'
"""
BATCH = "shop_csv.a_products.0123456789"

# Run a command as the console script does, then report which Dagster modules got imported.
CHILD = """
import json, sys
from claro_dagster.cli import main
sys.argv = ["claro", *json.loads(sys.argv[1])]
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code or 0
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "dagster" or m.startswith("dagster_"))
with open(__import__("os").environ["IMPORTS_OUT"], "w") as out:
    json.dump({"code": code, "dagster": loaded}, out)
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imports")
    spec = write_spec(root / "claro.yaml")
    spec.write_text(spec.read_text(encoding="utf-8") + SCHEDULES, encoding="utf-8")
    store = CatalogueStore(load_spec(spec), home=root / "home")
    try:
        store.import_records("products", pd.DataFrame({"sku": ["SKU-1"], "title": ["Mug"], "price": [4.5]}),
                             change_set_id="first", run_id="r1", source="shop_csv")
        store.import_records("products", pd.DataFrame({"sku": ["SKU-1"], "price": [5.5]}), change_set_id="second",
                             run_id="r2", source="shop_csv", overwrite_confidence=70)
        registry = BatchRegistry(store)
        registry.receive(BATCH, catalogue="products", source="shop_csv", filename="a_products.csv",
                         uri=str(root / "a_products.csv"), content_version="0123456789")
        registry.save_rejected(BATCH, pd.DataFrame({"__line__": [3], "__reasons__": ["price: not a number"],
                                                    "sku": ["SKU-9"], "price": ["abc"]}))
    finally:
        store.dispose()
    return root


READ_ONLY = [
    ["--help"], ["records"], ["records", "--format", "json"], ["history", "SKU-1"], ["review", "list"],
    ["batches"], ["rejected", BATCH], ["check"], ["schedules"], ["webhooks", "log"], ["mapping", "show", "shop_csv"],
    ["portal", "tokens"], ["duplicates", "list"], ["monitor", "history", "SKU-1"],
    ["api", "tokens", "list"],
]


@pytest.mark.parametrize("args", READ_ONLY, ids=" ".join)
def test_read_only_commands_import_no_dagster(project, args, tmp_path):
    out = tmp_path / "imports.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLARO_")}
    env.update(CLARO_HOME=str(project / "home"), CLARO_SPEC=str(project / "claro.yaml"), PYTHONPATH=str(REPO),
               CLARO_TEST_WEBHOOK_SECRET="s", COLUMNS="200", IMPORTS_OUT=str(out))
    ran = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], env=env, cwd=project, capture_output=True,
                         text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    result = json.loads(out.read_text())
    assert result["code"] == 0, ran.stdout + ran.stderr
    assert result["dagster"] == [], f"claro {' '.join(args)} imported {result['dagster'][:5]}"
    if args[0] in ("records", "history", "review"):
        assert "SKU-1" in ran.stdout  # the command did its work, not an early exit


def test_a_command_that_runs_things_does_import_dagster(project, tmp_path):
    # The check above can fail: `claro rerun` builds the definitions, so Dagster is loaded.
    out = tmp_path / "imports.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLARO_")}
    env.update(CLARO_HOME=str(project / "home"), CLARO_SPEC=str(project / "claro.yaml"), PYTHONPATH=str(REPO),
               IMPORTS_OUT=str(out))
    subprocess.run([sys.executable, "-c", CHILD, json.dumps(["rerun", "no-such-batch", "records"])], env=env,
                   cwd=project, capture_output=True, text=True, timeout=300)
    result = json.loads(out.read_text())
    assert result["code"] == 1 and "dagster" in result["dagster"]
