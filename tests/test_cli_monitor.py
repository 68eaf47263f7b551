"""`claro monitor show|history` through the real `claro` entry point: competitor listings side by side with how
each was matched, a drift monitor's figures against its baseline, a record's price history and detections."""

from __future__ import annotations

import json

import pytest

from claro_dagster.catalogue.changes import Change, ChangeSet
from claro_dagster.catalogue.opening import open_store
from claro_dagster.monitors import run_monitor
from claro_dagster.spec import load_spec
from tests.cli_project import claro, write_spec

MONITORS = """\
monitors:
  prices:
    kind: price
    catalogue: products
    price: price
    observe: [{file: rivals.csv}]
    rules:
      - {kind: competitor_gap, percent: 10}
      - {kind: threshold, percent: 10}
  quality:
    kind: drift
    catalogue: products
"""
RIVALS = ("competitor,name,brand,price,url,observed_at\n"
          "CheapMugs,Mug,Potter,3.99,https://cheap.example/mug,2026-11-30T09:00:00Z\n")


@pytest.fixture
def project(tmp_path):
    spec_path = write_spec(tmp_path / "claro.yaml")
    text = spec_path.read_text(encoding="utf-8").replace("      title: {type: text}\n",
                                                         "      title: {type: text}\n      brand: {type: text}\n")
    spec_path.write_text(text + MONITORS, encoding="utf-8")
    (tmp_path / "rivals.csv").write_text(RIVALS, encoding="utf-8")
    home = tmp_path / "home"
    home.mkdir()
    store = open_store(load_spec(spec_path), home=home)
    store.apply(ChangeSet("load", "products", "import", [
        Change(sku, f, v, 100) for sku, title, price in (("SKU-1", "Mug", 5.0), ("SKU-2", "Cup", 3.0))
        for f, v in (("title", title), ("brand", "Potter"), ("price", price), ("status", "active"))]))
    yield spec_path, home, store
    store.dispose()


def test_monitor_show_lists_competitor_prices_beside_ours_and_history_lists_a_records_prices(project):
    spec_path, home, store = project
    run_monitor(store, "prices", run_key="r1")
    store.apply(ChangeSet("cut", "products", "import", [Change("SKU-1", "price", 4.0, 100)]))
    run_monitor(store, "prices", run_key="r2")

    shown = claro("monitor", "show", "prices", "--format", "json", home=home, spec=spec_path)
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)
    assert rows == [
        {"record": "SKU-1", "our_price": 4.0, "source": "rivals", "competitor": "CheapMugs", "matched_by": "name+brand",
         "price": 3.99, "gap_percent": 0.25, "observed_at": "2026-11-30T09:00:00.000000Z",
         "url": "https://cheap.example/mug"},
        {"record": "SKU-2", "our_price": 3.0, "source": None, "competitor": None, "matched_by": None, "price": None,
         "gap_percent": None, "observed_at": None, "url": None}]

    table = claro("monitor", "show", "prices", home=home, spec=spec_path)
    assert table.returncode == 0, table.stderr
    assert "CheapMugs" in table.stdout and "competitor_gap" in table.stdout and "threshold" in table.stdout
    assert "20.2% under our 5" in table.stdout  # the detection of the first run

    history = claro("monitor", "history", "SKU-1", "--format", "json", home=home, spec=spec_path)
    assert history.returncode == 0, history.stderr
    entries = json.loads(history.stdout)
    assert [(e["what"], e["source"], e["price"]) for e in entries if e["what"] == "price"] == [
        ("price", "rivals", 3.99), ("price", "catalogue", 5.0), ("price", "catalogue", 4.0)]
    assert sorted((e["rule"], e["monitor"]) for e in entries if e["what"] == "detection") == [
        ("competitor_gap", "prices"), ("threshold", "prices")]
    assert claro("monitor", "history", "SKU-1", home=home, spec=spec_path).stdout.count("detection") == 2


def test_monitor_show_of_a_drift_monitor_and_mistakes_said_plainly(project):
    spec_path, home, store = project
    run_monitor(store, "quality", run_key="d1")
    baseline = claro("monitor", "show", "quality", home=home, spec=spec_path)
    assert baseline.returncode == 0, baseline.stderr
    assert "no detections yet (this is its baseline run)" in baseline.stdout
    store.apply(ChangeSet("more", "products", "import", [Change(f"N{i}", "price", 1.0, 100) for i in range(4)]))
    run_monitor(store, "quality", run_key="d2")
    rows = json.loads(claro("monitor", "show", "quality", "--format", "json", home=home, spec=spec_path).stdout)
    title = next(r for r in rows if r["figure"] == "fill_rate/title")
    assert (title["now"], title["baseline"], title["change"]) == (pytest.approx(1 / 3, abs=1e-4), 1.0,
                                                                  pytest.approx(-2 / 3, abs=1e-4))

    wrong = claro("monitor", "show", "prize", home=home, spec=spec_path)
    assert wrong.returncode == 1
    assert wrong.stderr.strip() == "error: 'prize' is not a monitor of the spec, did you mean 'prices'? (monitors: " \
                                   "prices, quality)"
    missing = claro("monitor", "history", "SKU-404", home=home, spec=spec_path)
    assert missing.returncode == 1 and "no record 'SKU-404' in catalogue 'products'" in missing.stderr


def test_monitor_run_runs_it_now_as_a_run_of_its_job_then_show_lists_what_it_found(project):
    spec_path, home, _ = project
    empty = claro("monitor", "show", "prices", home=home, spec=spec_path)
    assert empty.stdout.startswith("prices: nothing observed yet; it runs on its schedule, or now with `claro "
                                   "monitor run prices`")
    ran = claro("monitor", "run", "prices", home=home, spec=spec_path)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("prices: 1 new detection(s) in 2 records (run ") and "claro monitor show prices" \
        in ran.stdout
    shown = claro("monitor", "show", "prices", home=home, spec=spec_path)
    assert "CheapMugs" in shown.stdout and "competitor_gap" in shown.stdout
    (spec_path.parent / "rivals.csv").unlink()  # a competitor file gone: the run fails, saying which file
    gone = claro("monitor", "run", "prices", home=home, spec=spec_path)
    assert gone.returncode == 1 and gone.stderr.startswith("error: monitor prices failed (run ")
    assert "rivals.csv: cannot be read (No such file or directory)" in gone.stderr
