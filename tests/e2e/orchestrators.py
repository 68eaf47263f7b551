"""Helpers of the Prefect and Airflow tests: `claro serve`'s app over a real Dagster stack with an API token, and the
orchestrator's own virtualenv (`.venvs/prefect`, `.venvs/airflow`, made by `.ci/run`) to run flows and DAGs in."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pandas as pd

from claro_dagster.catalogue.api_access import ApiTokens
from claro_dagster.catalogue.opening import open_store
from claro_dagster.client import ClaroClient
from claro_dagster.resources.dagster_api import DagsterLauncher
from claro_dagster.spec import load_spec
from claro_dagster.web.app import create_app
from tests.api_project import Served
from tests.e2e.harness import DagsterStack

REPO = Path(__file__).resolve().parents[2]


def venv_python(name: str) -> Path:
    """The python of `.venvs/<name>`; an assertion saying how to make it when it is missing."""
    python = REPO / ".venvs" / name / "bin" / "python"
    assert python.exists(), (f"{python} is missing: `bash .ci/run` makes it (or see the README, "
                             f"'Prefect and Airflow', for the two pip commands)")
    return python


@contextmanager
def served_api(stack: DagsterStack, token_name: str, records: list[dict] | None = None,
               database_url: str | None = None):
    """`claro serve`'s app (REST API) over the stack, and a token with scopes run and read: (url, token).
    `records`: products imported into the store first (so that a destination has something to push);
    `database_url`: the stack's catalogue store when it is not the embedded SQLite one under its home."""
    spec = load_spec(stack.spec_path)

    def store_factory(s):
        return open_store(s, database_url, home=stack.home)

    store = store_factory(spec)
    if records:
        store.import_records("products", pd.DataFrame(records), change_set_id="orchestrator-test")
    secret = ApiTokens(store).create(token_name, ["run", "read"], expires_in=timedelta(hours=1)).secret
    store.dispose()
    launcher = DagsterLauncher(lambda: spec, store_factory, port=stack.port, timeout=60)
    served = Served(create_app(lambda: spec, store_factory, launcher, signing_secret="x"))
    try:
        yield served.url, secret
    finally:
        served.stop()


def client(url: str, token: str) -> ClaroClient:
    return ClaroClient(url, token, timeout=120)


def venv_env(env: dict[str, str]) -> dict[str, str]:
    """This process's environment without its CLARO_/DAGSTER_/PREFECT_/AIRFLOW* variables and PYTHONPATH, plus `env`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CLARO_", "DAGSTER_", "PREFECT_", "AIRFLOW"))}
    base.pop("PYTHONPATH", None)
    return {**base, **env}


def run_in_venv(name: str, args: list[str], *, env: dict[str, str], cwd: Path, timeout: float = 240):
    """Run `python args...` in the orchestrator's venv with only the given extra environment (no CLARO_/DAGSTER_
    of this process); the CompletedProcess, output as text (stdout and stderr together)."""
    return subprocess.run([str(venv_python(name)), *args], env=venv_env(env), cwd=cwd, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)


@contextmanager
def onboarding_stack(root: Path, extra_env: dict[str, str], workspace: Path | None = None):
    """The demo's stack, its products_onboarding pipeline whole: a destination whose variables the test machine
    does not have is skipped in a pipeline run, saying which to set (the destinations' own tests cover them).
    `workspace`: a workspace file to load instead of the module alone."""
    stack = DagsterStack(root, extra_env=extra_env)
    if workspace is not None:
        stack.locations = ["-w", str(workspace)]
    stack.prepare()
    try:
        stack.start()
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()


@contextmanager
def postgres_database(postgres_server: str, name_prefix: str):
    """A database of its own on the test PostgreSQL server (the `postgres_server` fixture's), dropped after: its
    URL."""
    import uuid

    import sqlalchemy as sa

    server, _, _ = postgres_server.rpartition("/")
    name = f"{name_prefix}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(f"{server}/postgres".replace("postgresql://", "postgresql+psycopg://", 1),
                             isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{server}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


RUN_EVENTS = """
query RunEvents($runId: ID!) {
  runOrError(runId: $runId) {
    ... on Run {
      eventConnection(limit: 10000) {
        events {
          __typename
          ... on MessageEvent { message level stepKey }
          ... on AssetCheckEvaluationEvent { evaluation { checkName success assetKey { path } } }
        }
      }
    }
  }
}"""


def run_events(stack: DagsterStack, run_id: str) -> list[dict]:
    return stack.graphql(RUN_EVENTS, runId=run_id)["runOrError"]["eventConnection"]["events"]


def run_warnings(stack: DagsterStack, run_id: str) -> list[str]:
    """The messages the run logged at WARNING (a destination skipped for its missing settings says so there)."""
    return [e["message"] for e in run_events(stack, run_id) if e.get("level") == "WARNING"]


def check_evaluations(stack: DagsterStack, run_id: str) -> dict[tuple[str, str], bool]:
    """The asset checks the run evaluated: (asset, check) -> passed."""
    return {("/".join(e["evaluation"]["assetKey"]["path"]), e["evaluation"]["checkName"]): e["evaluation"]["success"]
            for e in run_events(stack, run_id) if e["__typename"] == "AssetCheckEvaluationEvent"}
