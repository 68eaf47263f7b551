"""A PostgreSQL password in CLARO_DATABASE_URL shows nowhere the Dagster UI or `claro` can show it.

A password is planted in the URL (the test server trusts local connections, so any password works) and
looked for in what the UI shows: the resource config and everything else in the repository snapshot,
each run's config and tags, materialization metadata and the whole event log, including a run that
fails because the store cannot be opened; and in what `claro` commands print.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import dagster as dg
import pytest
from dagster._core.remote_representation.external_data import RepositorySnap
from dagster_shared.serdes import serialize_value
from typer.testing import CliRunner

from claro_dagster.catalogue.batches import Batch
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.cli import app
from claro_dagster.definitions import build_definitions
from claro_dagster.local import receive, run_batch
from claro_dagster.spec import DEMO_DIR, load_spec

PASSWORD = "planted-s3cret"
SUPPLIERS = DEMO_DIR / "inbox" / "suppliers" / "suppliers.csv"


@pytest.fixture
def secret_url(postgres_url) -> str:
    assert postgres_url.startswith("postgresql://postgres@")
    return postgres_url.replace("postgres@", f"postgres:{PASSWORD}@", 1)


def suppliers_batch(defs: dg.Definitions) -> Batch:
    claro = defs.resources["claro"]
    inbox = claro.inbox_dir("suppliers_csv")
    inbox.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SUPPLIERS, inbox / "suppliers.csv")
    return receive(claro, "suppliers_csv", inbox / "suppliers.csv")


def shown_for(instance: dg.DagsterInstance, run_id: str) -> str:
    """Everything the UI shows about a run: its config, tags and every event (errors, metadata, logs)."""
    run = instance.get_run_by_id(run_id)
    return serialize_value(run) + "".join(serialize_value(e) for e in instance.all_logs(run_id))


def test_the_database_password_is_not_in_the_repository_snapshot_or_any_run(tmp_path, monkeypatch, secret_url):
    monkeypatch.setenv("CLARO_DATABASE_URL", secret_url)
    monkeypatch.delenv("SLACK_BOT_TOKEN", raising=False)
    defs = build_definitions(DEMO_DIR / "claro.yaml", tmp_path / "home")

    # The resource's field is the variable, shown by name; the UI never sees its value.
    claro = defs.resources["claro"]
    assert isinstance(claro.database_url, dg.EnvVar) and claro.database_url.env_var_name == "CLARO_DATABASE_URL"
    with dg.instance_for_test() as instance:
        snapshot = serialize_value(RepositorySnap.from_def(defs.get_repository_def()))
        assert "CLARO_DATABASE_URL" in snapshot and PASSWORD not in snapshot

        batch = suppliers_batch(defs)
        result = run_batch(defs, instance, batch, quiet=True)
        assert result.success  # the store was reached with the planted URL
        mats = result.get_asset_materialization_events()
        assert mats and all(PASSWORD not in serialize_value(m) for m in mats)
        shown = shown_for(instance, result.run_id)
        assert PASSWORD not in shown and "rows_published" in shown

        # A store that cannot be opened when the run starts: the error says which store, without the password.
        monkeypatch.setenv("CLARO_DATABASE_URL", secret_url.rsplit("/", 1)[0] + "/no_such_catalogue_db")
        unreachable = build_definitions(DEMO_DIR / "claro.yaml", tmp_path / "home")
        failed = run_batch(unreachable, instance, batch, stages=("batch_raw",), quiet=True, notify=False)
        assert not failed.success
        [failure] = [e for e in failed.all_events if e.is_step_failure]
        # Wrong settings (no such database) fail at once: the stage's retry policy is for transient failures.
        assert not [e for e in failed.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
        error = failure.step_failure_data.error
        text = error.message + "".join(error.stack) + (error.cause.message if error.cause else "")
        assert "could not open the catalogue store at postgresql://postgres:***@127.0.0.1" in text
        assert "no_such_catalogue_db" in text and PASSWORD not in text
        assert PASSWORD not in shown_for(instance, failed.run_id)


def test_claro_commands_never_print_the_password(tmp_path, monkeypatch, secret_url):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLARO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CLARO_SPEC", raising=False)
    monkeypatch.setenv("CLARO_DATABASE_URL", secret_url)
    store = CatalogueStore(load_spec(DEMO_DIR / "claro.yaml"), secret_url)  # the tables exist
    store.engine.dispose()
    runner = CliRunner()
    for args in (["check"], ["batches"], ["records", "--catalogue", "suppliers"], ["review", "list"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert PASSWORD not in result.output

    # The real entry point, as a user types it: a store that cannot be opened is one line, without the password.
    env = {**os.environ, "CLARO_DATABASE_URL": secret_url.rsplit("/", 1)[0] + "/no_such_catalogue_db"}
    for args in (["batches"], ["run"]):
        done = subprocess.run([sys.executable, "-m", "claro_dagster.cli", *args], env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 1, done.stderr
        lines = done.stderr.splitlines()
        if args == ["run"]:  # the code location loads first: a local deployment says which store it uses
            assert lines.pop(0).startswith("CLARO_DEPLOYMENT=local and CLARO_DATABASE_URL is set: the catalogue "
                                           "store is postgresql://postgres:***@127.0.0.1:5432/no_such_catalogue_db")
        assert len(lines) == 1 and lines[0].startswith(
            "error: could not open the catalogue store at postgresql://postgres:***@127.0.0.1:5432/"
            "no_such_catalogue_db: "), done.stderr
        assert 'database "no_such_catalogue_db" does not exist' in done.stderr and "Traceback" not in done.stderr
        assert PASSWORD not in done.stdout + done.stderr
