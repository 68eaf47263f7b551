"""The distributed engine end to end (issue 15 item 3): 200 supplier files dropped at once into the inbox of a
production deployment (PostgreSQL instance and catalogue store, queued run coordinator, dagster-celery's run
launcher on the machine's RabbitMQ, two Celery worker processes). The real inbox sensor in the real daemon
requests the runs. Every batch is processed exactly once (one run per batch key, every file moved to processed/,
every batch published) and the catalogue (records and their history) equals an in-process run of the same files.

Throughput is measured by benchmarks/celery_load.py, never asserted here.
"""

from __future__ import annotations

import shutil
from collections import Counter
from typing import Any

import dagster as dg
import pytest

from claro_dagster.catalogue.batches import BatchRegistry
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.definitions import build_definitions
from claro_dagster.local import receive, run_batch
from claro_dagster.spec import load_spec
from tests.e2e.celery_stack import CATALOGUE, SOURCE, CeleryStack
from tests.e2e.harness import receipt_key

FILES = int(__import__("os").environ.get("CLARO_TEST_CELERY_FILES", "200"))
ROWS = 20
ALL_DONE_TIMEOUT = 840  # about 4 to 6 min on 2 cores; CI runs other tests beside it
JOB = "suppliers_onboarding"  # the job of the batch runs the inbox sensor requests


def catalogue_state(store: CatalogueStore) -> tuple[list[dict], dict[str, list[tuple]]]:
    """Records (sorted by key) and each record's history (value, source and batch of every change), comparable
    across two stores: no timestamps or sequence numbers."""
    frame = store.records(CATALOGUE)
    records = sorted(frame.astype(str).to_dict("records"), key=lambda r: r["supplier_id"])
    history = {}
    for record in records:
        entries = store.history(CATALOGUE, record["supplier_id"])
        history[record["supplier_id"]] = sorted(
            (e.field, str(e.old), str(e.new), e.kind, e.provenance.operation if e.provenance else None,
             e.provenance.source if e.provenance else None, e.reason) for e in entries)
    return records, history


@pytest.fixture
def celery_stack(tmp_path, postgres_server):
    stack = CeleryStack(tmp_path / "distributed", postgres_server, workers=2)
    stack.root.mkdir()
    stack.prepare()
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


@pytest.mark.e2e
@pytest.mark.postgres
@pytest.mark.timeout(1200)
def test_200_files_at_once_through_two_celery_workers_exactly_once(celery_stack: CeleryStack, tmp_path):
    stack = celery_stack
    files = stack.drop_files(FILES, ROWS)
    keys = {receipt_key(SOURCE, path): path.name for path in files}
    assert len(keys) == FILES
    contents = {path.name: path.read_bytes() for path in files}

    instance = dg.DagsterInstance.from_config(str(stack.dagster_home))
    try:
        def all_finished() -> tuple[bool, Any]:
            every = instance.get_runs()
            runs = [r for r in every if r.job_name == JOB]
            statuses = Counter(r.status.value for r in runs)
            done = sum(statuses[s] for s in ("SUCCESS", "FAILURE", "CANCELED"))
            failed = [r for r in runs if r.status == dg.DagsterRunStatus.FAILURE]
            if failed:
                raise AssertionError(f"run {failed[0].run_id} of {failed[0].tags.get('claro/batch')} failed: "
                                     f"{stack.describe()}")
            return len(runs) >= FILES and done == len(runs), (dict(statuses), Counter(r.job_name for r in every))

        stack.wait(all_finished, ALL_DONE_TIMEOUT, f"{FILES} batch runs to finish", interval=2.0)
        every = instance.get_runs()
        print("runs by job:", Counter(r.job_name for r in every))
        runs = [r for r in every if r.job_name == JOB]
        # exactly once: one run per batch key, every one successful, nothing else launched
        per_key = Counter(r.tags.get("claro/batch") for r in runs)
        assert set(per_key) == set(keys), set(per_key) ^ set(keys)
        assert set(per_key.values()) == {1}, {k: n for k, n in per_key.items() if n != 1}
        assert {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
        # ... executed by both Celery workers (each run is a Celery task; its engine events name the task)
        assert all(r.tags.get("dagster-celery/task_id") for r in runs)
        workers = set()
        for n in range(stack.workers):
            log = (stack.logs / f"worker{n + 1}.log").read_text(errors="replace")
            if "succeeded in" in log:
                workers.add(n)
        assert workers == set(range(stack.workers)), "a Celery worker executed no run"
    finally:
        instance.dispose()

    inbox = stack.home / "inbox" / "suppliers"
    assert sorted(p.name for p in inbox.iterdir() if p.is_file()) == []  # no file left pending (or lost)
    for key, name in keys.items():
        assert (inbox / "processed" / key / name).read_bytes() == contents[name]

    distributed = CatalogueStore(load_spec(stack.spec_path), stack.store_url)
    batches = BatchRegistry(distributed).list(CATALOGUE)
    assert {b.key: b.status for b in batches} == {key: "published" for key in keys}
    assert distributed.count(CATALOGUE) == FILES * ROWS

    # the same files, one by one, in this process on the embedded store: the same catalogue
    home = tmp_path / "in_process"
    defs = build_definitions(stack.spec_path, home)
    claro = defs.resources["claro"]
    local_inbox = claro.inbox_dir(SOURCE)
    local_inbox.mkdir(parents=True, exist_ok=True)
    with dg.DagsterInstance.ephemeral() as local_instance:
        for name in sorted(contents):
            (local_inbox / name).write_bytes(contents[name])
            result = run_batch(defs, local_instance, receive(claro, SOURCE, local_inbox / name), quiet=True,
                               notify=False)
            assert result.success, name
    assert catalogue_state(distributed) == catalogue_state(claro.store)
    shutil.rmtree(home, ignore_errors=True)
