"""Parallel batches (issue 15 item 2): fifty overlapping batches of one catalogue published by four processes
at once on PostgreSQL leave the catalogue, its history, its review queue and its events exactly as publishing
the same batches one after another (in the order they committed) does: no update lost, no record created twice,
no history row lost or duplicated, every change set whole."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.e2e.harness import wait_until

sys.path.insert(0, str(Path(__file__).parent))

import parallel_batches
from parallel_batches import START_LOCK, batches, make_spec, publish

from claro_dagster.catalogue.store import CatalogueStore

pytestmark = pytest.mark.postgres
WORKERS = 4


@pytest.fixture
def two_databases(postgres_server):
    """Two fresh databases on the real server (the parallel run and the sequential one), dropped after."""
    base = postgres_server.rpartition("/")[0]
    admin = sa.create_engine(postgres_server.replace("postgresql://", "postgresql+psycopg://", 1),
                             isolation_level="AUTOCOMMIT")
    names = [f"claro_par_{uuid.uuid4().hex[:8]}", f"claro_seq_{uuid.uuid4().hex[:8]}"]
    with admin.connect() as conn:
        for name in names:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield [f"{base}/{name}" for name in names]
    with admin.connect() as conn:
        for name in names:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def snapshot(store: CatalogueStore) -> dict:
    """Everything a publish writes, without the ids and times that differ between two databases."""
    t = store.t
    with store.engine.connect() as conn:
        history = conn.execute(sa.select(t["history"].c.record, t["history"].c.field, t["history"].c.old,
                                         t["history"].c.new, t["history"].c.change_set, t["history"].c.kind)).all()
        proposals = conn.execute(sa.select(t["proposals"].c.change_set, t["proposals"].c.record,
                                           t["proposals"].c.field, t["proposals"].c.old, t["proposals"].c.new,
                                           t["proposals"].c.status)).all()
        events = conn.execute(sa.select(t["events"].c.type, t["events"].c.record, t["events"].c.field,
                                        t["events"].c.change_set, t["events"].c.payload)).all()
        sets = conn.execute(sa.select(t["change_sets"].c.id, t["change_sets"].c.applied, t["change_sets"].c.queued,
                                      t["change_sets"].c.created, t["change_sets"].c.unchanged)).all()
        # which change set last wrote each field: the provenance of every value
        prov = t["provenance"]
        rec = store.rec["products"]
        fields = ["title", "price", "stock", "brand"]
        written = {}
        for field in fields:
            column = rec.c[f"{field}__prov"]
            rows = conn.execute(sa.select(rec.c.sku, prov.c.change_set).select_from(
                rec.outerjoin(prov, prov.c.id == sa.func.coalesce(column, rec.c._created_prov)))).all()
            written[field] = sorted(rows)
    records = store.records("products").sort_values("sku").reset_index(drop=True)
    return {"records": records.astype(object).where(records.notna(), None).to_dict("records"),
            "history": sorted(map(tuple, history), key=repr), "proposals": sorted(map(tuple, proposals), key=repr),
            "events": sorted(map(tuple, events), key=repr), "change_sets": sorted(map(tuple, sets)),
            "written_by": written}


def test_fifty_overlapping_batches_from_four_processes_equal_the_sequential_result(two_databases):
    parallel_url, sequential_url = two_databases
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get(
        "PYTHONPATH", "")])}
    engine = sa.create_engine(parallel_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as gate:  # the database is empty: the workers create the store's tables
        gate.execute(sa.text(f"SELECT pg_advisory_lock({START_LOCK})"))
        gate.commit()
        workers = [subprocess.Popen([sys.executable, parallel_batches.__file__, parallel_url, str(n), str(WORKERS)],
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for n in range(WORKERS)]
        # Open the start line once every worker waits at it.
        def waiting():
            n = gate.execute(sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                                     "AND objid = :k AND database = (SELECT oid FROM pg_database WHERE datname = "
                                     "current_database())"), {"k": START_LOCK}).scalar_one()
            gate.commit()
            return n >= WORKERS, f"{n} of {WORKERS} workers at the start line"

        def alive() -> None:
            assert all(w.poll() is None for w in workers), [w.communicate() for w in workers if w.poll() is not None]

        wait_until(waiting, 120, 0.05, what="the workers to reach the start line", guard=alive)
        gate.execute(sa.text(f"SELECT pg_advisory_unlock({START_LOCK})"))
        gate.commit()
    engine.dispose()
    outputs = [w.communicate(timeout=600) for w in workers]
    assert [w.returncode for w in workers] == [0] * WORKERS, outputs
    store = CatalogueStore(make_spec(), parallel_url)

    todo = batches()
    cs = store.t["change_sets"]
    with store.engine.connect() as conn:
        committed = list(conn.execute(sa.select(cs.c.id).order_by(cs.c.seq)).scalars())
    assert sorted(committed) == sorted(b[0] for b in todo)  # each published once, though each was sent twice
    # The batches really interleaved: commit order is not the order of any one worker's list.
    assert committed != [b[0] for b in todo]

    sequential = CatalogueStore(make_spec(), sequential_url)
    by_id = {b[0]: b for b in todo}
    for cs_id in committed:
        publish(sequential, *by_id[cs_id])
    parallel, expected = snapshot(store), snapshot(sequential)
    store.dispose()
    sequential.dispose()

    assert len(parallel["records"]) == len({r["sku"] for r in parallel["records"]})  # no record created twice
    assert parallel["records"] == expected["records"]
    assert parallel["written_by"] == expected["written_by"]
    assert len(parallel["history"]) == len(expected["history"]) > 200
    assert parallel["history"] == expected["history"]  # no history row lost or duplicated, every old value right
    assert Counter(parallel["history"]) == Counter(expected["history"])
    assert parallel["proposals"] == expected["proposals"] and any(p[5] == "queued" for p in parallel["proposals"])
    assert parallel["events"] == expected["events"]
    assert parallel["change_sets"] == expected["change_sets"]
