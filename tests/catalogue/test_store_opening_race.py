"""Several processes opening a new SQLite store at the same moment (a worker, the daemon and `claro serve` after a
fresh install) all get it: the tables are created by one of them at a time, never "table ... already exists"."""

from __future__ import annotations

import multiprocessing

from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.spec import DEMO_DIR, load_spec


def open_and_count(path: str) -> int:
    store = CatalogueStore(load_spec(DEMO_DIR / "claro.yaml"), f"sqlite:///{path}")
    try:
        return store.count("products")
    finally:
        store.dispose()


def test_six_processes_opening_one_new_sqlite_store_at_once_all_succeed(tmp_path):
    # Without the schema lock this failed in about two rounds out of five on a 2-core machine.
    with multiprocessing.get_context("spawn").Pool(6) as pool:
        for round_ in range(4):
            path = str(tmp_path / f"round{round_}.db")
            assert pool.map(open_and_count, [path] * 6, chunksize=1) == [0] * 6
