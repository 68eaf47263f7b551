"""Prefect (`claro_dagster.integrations.prefect`) against a real Dagster webserver + daemon and `claro serve`'s API:
the example flow runs the onboarding pipeline, then the dbt build as the Dagster job `dbt_build` (its dbt tests asset
checks); without a dbt project the dbt step says so and is skipped; a failed run fails the flow with the
run's error; waiting on a cancelled run raises `ClaroRunCancelled`. The flows run in `.venvs/prefect` (Prefect's
ephemeral mode)."""

from __future__ import annotations

import re

import pytest

from tests.e2e.harness import free_port
from tests.e2e.orchestrators import (
    REPO,
    check_evaluations,
    client,
    onboarding_stack,
    postgres_database,
    run_in_venv,
    served_api,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def dagster_env() -> dict[str, str]:
    # The warehouse destination points at a port nothing listens on: its runs fail, saying so.
    return {"CLARO_WAREHOUSE_URL": f"postgresql://claro:x@127.0.0.1:{free_port()}/warehouse"}


@pytest.fixture
def dagster_stack(tmp_path, dagster_env):
    with onboarding_stack(tmp_path, dagster_env) as stack:
        yield stack


def prefect_env(tmp_path, url: str, token: str) -> dict[str, str]:
    return {"CLARO_API_URL": url, "CLARO_API_TOKEN": token, "PREFECT_HOME": str(tmp_path / "prefect"),
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120", "PYTHONUNBUFFERED": "1"}


def test_the_example_flow_runs_the_dbt_build_in_dagster_with_its_tests_as_checks(postgres_server, tmp_path):
    """The catalogue on PostgreSQL (a database of the test's own) and CLARO_DBT_PROJECT=examples/dbt where Dagster
    runs: the flow's second step is a run of the Dagster job `dbt_build`; dbt is not installed in .venvs/prefect."""
    with postgres_database(postgres_server, "claro_prefect_dbt") as database_url:
        env = {"CLARO_DATABASE_URL": database_url, "CLARO_DBT_PROJECT": str(REPO / "examples" / "dbt")}
        with onboarding_stack(tmp_path, env) as stack, served_api(stack, "prefect", database_url=database_url) \
                as (url, token):
            done = run_in_venv("prefect", [str(REPO / "examples" / "prefect" / "nightly_onboarding.py")],
                               env=prefect_env(tmp_path, url, token), cwd=tmp_path)
            assert done.returncode == 0, done.stdout[-4000:]
            run_id, dbt_run_id = re.search(r"nightly onboarding done: run (\S+), dbt run (\S+)", done.stdout).groups()
            pipeline_run, dbt_run = stack.run(run_id), stack.run(dbt_run_id)
            checks = check_evaluations(stack, dbt_run_id)
    assert (pipeline_run["status"], dbt_run["status"]) == ("SUCCESS", "SUCCESS")
    tags = {t["key"]: t["value"] for t in dbt_run["tags"]}
    assert (tags["claro/target"], tags["claro/launched_by"]) == ("dbt_build", "api:prefect")
    assert checks[("dbt/stg_products", "unique_stg_products_sku")] is True
    assert len(checks) > 10 and all(checks.values()), checks


WAREHOUSE_RECORDS = [{"sku": "AB-1234", "title": "Mug"}]  # the warehouse push then connects, and fails
FOLLOW = """
import sys
from prefect import flow
from claro_dagster.integrations.prefect import claro_run

@flow
def follow(run_id: str):
    return claro_run("products", "analyse", run_id=run_id, timeout=120, poll=1)

follow(sys.argv[1])
"""
DBT_UNAVAILABLE = """
from prefect import flow
from claro_dagster.integrations.prefect import claro_dbt_build

@flow
def dbt():
    print("dbt run:", claro_dbt_build("products", poll=1))

dbt()
"""


def test_a_failed_run_fails_the_flow_a_cancelled_one_raises_and_dbt_without_a_project_is_skipped(dagster_stack,
                                                                                                   tmp_path):
    with served_api(dagster_stack, "prefect", WAREHOUSE_RECORDS) as (url, token):
        env = prefect_env(tmp_path, url, token)
        script = ("from claro_dagster.integrations.prefect import claro_run_flow\n"
                  "claro_run_flow('products', 'warehouse', poll=1)")
        failed = run_in_venv("prefect", ["-c", script], env=env, cwd=tmp_path)
        api = client(url, token)
        cancelled_id = api.run("products", "analyse")
        dagster_stack.client.terminate_run(cancelled_id)
        cancelled = run_in_venv("prefect", ["-c", FOLLOW, cancelled_id], env=env, cwd=tmp_path)
        skipped = run_in_venv("prefect", ["-c", DBT_UNAVAILABLE], env=env, cwd=tmp_path)

    assert failed.returncode != 0
    (run,) = [r for r in dagster_stack.runs(**{"claro/target": "warehouse"})]
    assert run["status"] == "FAILURE"
    message = re.search(r"ClaroRunFailed: (.*)", failed.stdout).group(1)
    assert message.startswith(f"claro warehouse on products did not succeed (run {run['runId']}, status FAILURE): "
                              f"run {run['runId']} failed: ")
    dagster_error = dagster_stack.failure_messages(run["runId"])[0]
    assert dagster_error.split("\n")[0][:60] in failed.stdout, (dagster_error, failed.stdout[-3000:])
    assert "Finished in state Failed" in failed.stdout

    assert cancelled.returncode != 0
    assert dagster_stack.run(cancelled_id)["status"] == "CANCELED"
    assert (f"ClaroRunCancelled: claro analyse on products did not succeed (run {cancelled_id}, status CANCELED): "
            f"run {cancelled_id} was cancelled before it finished") in cancelled.stdout

    # no dbt project where Dagster runs: the dbt step says what to set and is skipped; no run is started
    assert skipped.returncode == 0, skipped.stdout[-3000:]
    assert "dbt run: None" in skipped.stdout
    assert ("claro dbt_build on products skipped: the Dagster code location has no dbt_build job: set "
            "CLARO_DBT_PROJECT") in skipped.stdout
    assert not dagster_stack.runs(**{"claro/target": "dbt_build"})
