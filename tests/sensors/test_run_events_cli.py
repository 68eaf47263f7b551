"""`claro run` and `claro rerun` (in-process runs the run-status sensors never see) tell people like any run.

The real commands on the bundled demo, in a fresh project home: afterwards every run in the local
Dagster instance has exactly one `run.started` and then one `run.completed` (or `run.failed`) in the
outbox, matching how the run ended.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from claro_dagster.catalogue.batches import BatchRegistry
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.local import instance_for
from claro_dagster.spec import DEMO_DIR, load_spec


def run_events_by_run(home: Path) -> dict[str, list[tuple[str, str]]]:
    store = CatalogueStore(load_spec(DEMO_DIR / "claro.yaml"), home=home)
    try:
        out: dict[str, list[tuple[str, str]]] = {}
        for event in store.events(limit=100_000):  # oldest first
            if event["type"].startswith("run."):
                out.setdefault(event["payload"]["run_id"], []).append((event["type"], event["payload"]["status"]))
        return out
    finally:
        store.engine.dispose()


def test_claro_run_and_rerun_write_started_then_the_outcome_for_every_run(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.chdir(tmp_path)  # no ./claro.yaml here: the bundled demo
    monkeypatch.setenv("CLARO_HOME", str(home))
    for name in ("CLARO_SPEC", "CLARO_DATABASE_URL", "SLACK_BOT_TOKEN"):
        monkeypatch.delenv(name, raising=False)

    def claro(*args: str) -> None:
        """The command as a user types it, in its own process (as `claro` runs)."""
        done = subprocess.run([sys.executable, "-m", "claro_dagster.cli", *args], env=dict(os.environ),
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr

    claro("run")
    batch = BatchRegistry(CatalogueStore(load_spec(DEMO_DIR / "claro.yaml"), home=home)).list()[0].key
    claro("rerun", batch, "batch_raw")

    with instance_for(home) as instance:
        runs = {r.run_id: r.status for r in instance.get_runs()}
    assert len(runs) >= 7  # five demo batches, the chained revalidation, the rerun
    outcome = {dg.DagsterRunStatus.SUCCESS: ("run.completed", "SUCCESS"),
               dg.DagsterRunStatus.FAILURE: ("run.failed", "FAILURE")}
    assert run_events_by_run(home) == {run_id: [("run.started", "STARTED"), outcome[status]]
                                       for run_id, status in runs.items()}
