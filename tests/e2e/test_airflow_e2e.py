"""Airflow (`claro_dagster.integrations.airflow`) against a real Dagster webserver + daemon and `claro serve`'s API,
through `dag.test()` in `.venvs/airflow` (SQLite metadata DB in a temporary AIRFLOW_HOME): the example DAG runs the
onboarding pipeline, its operator deferring to `ClaroRunTrigger`, then the dbt build as the Dagster job `dbt_build`
(its dbt tests asset checks); without a dbt project the dbt task is skipped, saying so; a failed run
fails the task with the run's error; the trigger reports a cancelled run and the operator raises
`ClaroRunCancelled`."""

from __future__ import annotations

import re
import shutil

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
    venv_python,
)

pytestmark = pytest.mark.e2e

WAREHOUSE_RECORDS = [{"sku": "AB-1234", "title": "Mug"}]  # the warehouse push then connects, and fails


@pytest.fixture
def dagster_env() -> dict[str, str]:
    # The warehouse destination points at a port nothing listens on: its runs fail, saying so.
    return {"CLARO_WAREHOUSE_URL": f"postgresql://claro:x@127.0.0.1:{free_port()}/warehouse"}


@pytest.fixture
def dagster_stack(tmp_path, dagster_env):
    with onboarding_stack(tmp_path, dagster_env) as stack:
        yield stack


def airflow_env(tmp_path, dags, url: str, token: str) -> dict[str, str]:
    home = tmp_path / "airflow"
    env = {"CLARO_API_URL": url, "CLARO_API_TOKEN": token, "AIRFLOW_HOME": str(home),
           "AIRFLOW__CORE__DAGS_FOLDER": str(dags), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "PYTHONUNBUFFERED": "1"}
    if not home.exists():
        airflow = venv_python("airflow").parent / "airflow"
        done = run_in_venv("airflow", [str(airflow), "db", "migrate"], env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stdout[-3000:]
    return env


def test_the_example_dag_runs_the_dbt_build_in_dagster_with_its_tests_as_checks(postgres_server, tmp_path):
    """The catalogue on PostgreSQL (a database of the test's own) and CLARO_DBT_PROJECT=examples/dbt where Dagster
    runs: the DAG's dbt_build task is a run of the Dagster job `dbt_build`; dbt is not installed in .venvs/airflow."""
    dags = REPO / "examples" / "airflow"
    with postgres_database(postgres_server, "claro_airflow_dbt") as database_url:
        env = {"CLARO_DATABASE_URL": database_url, "CLARO_DBT_PROJECT": str(REPO / "examples" / "dbt")}
        with onboarding_stack(tmp_path, env) as stack, served_api(stack, "airflow", database_url=database_url) \
                as (url, token):
            done = run_in_venv("airflow", [str(dags / "claro_nightly.py")],
                               env=airflow_env(tmp_path, dags, url, token), cwd=tmp_path)
            assert done.returncode == 0, done.stdout[-4000:]
            assert "claro_nightly_onboarding: success" in done.stdout
            assert "deferred" in done.stdout.lower()  # the operator handed the wait to ClaroRunTrigger
            run_id = re.search(r"claro: started products_onboarding on products: Dagster run (\S+)",
                               done.stdout).group(1)
            dbt_run_id = re.search(r"claro: started dbt_build on products: Dagster run (\S+)", done.stdout).group(1)
            pipeline_run, dbt_run = stack.run(run_id), stack.run(dbt_run_id)
            checks = check_evaluations(stack, dbt_run_id)
    assert (pipeline_run["status"], dbt_run["status"]) == ("SUCCESS", "SUCCESS")
    tags = {t["key"]: t["value"] for t in dbt_run["tags"]}
    assert (tags["claro/target"], tags["claro/launched_by"]) == ("dbt_build", "api:airflow")
    tags = {t["key"]: t["value"] for t in pipeline_run["tags"]}
    assert (tags["claro/target"], tags["claro/launched_by"]) == ("products_onboarding", "api:airflow")
    assert checks[("dbt/stg_products", "unique_stg_products_sku")] is True
    assert len(checks) > 10 and all(checks.values()), checks


FAILING_DAG = '''
import sys
from datetime import datetime
from airflow.sdk import DAG
from claro_dagster.integrations.airflow import ClaroRunOperator

with DAG(dag_id="claro_failing", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
    ClaroRunOperator(task_id="warehouse", catalogue="products", target="warehouse", poll_interval=1)

if __name__ == "__main__":
    dag_run = dag.test()
    print(f"claro_failing: {dag_run.state}")
    sys.exit(0 if dag_run.state == "success" else 1)
'''

FOLLOW_CANCELLED = '''
import asyncio, sys
from claro_dagster.integrations.airflow import ClaroRunCancelled, ClaroRunOperator, ClaroRunTrigger

async def first_event():
    async for event in ClaroRunTrigger(sys.argv[1], poll_interval=1, timeout=120).run():
        return event.payload

event = asyncio.run(first_event())
print("event:", event)
try:
    ClaroRunOperator(task_id="analyse", catalogue="products", target="analyse").complete(event)
except ClaroRunCancelled as exc:
    print(f"ClaroRunCancelled: {exc}")
    sys.exit(3)
'''

DBT_UNAVAILABLE = '''
from airflow.exceptions import AirflowSkipException
from claro_dagster.integrations.airflow import ClaroRunOperator

try:
    ClaroRunOperator(task_id="dbt_build", catalogue="products", target="dbt_build",
                     skip_if_unavailable=True).execute({})
except AirflowSkipException as exc:
    print(f"AirflowSkipException: {exc}")
'''


def test_a_failed_run_fails_the_task_a_cancelled_one_raises_and_dbt_without_a_project_skips(dagster_stack, tmp_path):
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "claro_failing.py").write_text(FAILING_DAG)
    with served_api(dagster_stack, "airflow", WAREHOUSE_RECORDS) as (url, token):
        env = airflow_env(tmp_path, dags, url, token)
        failed = run_in_venv("airflow", [str(dags / "claro_failing.py")], env=env, cwd=tmp_path)
        api = client(url, token)
        cancelled_id = api.run("products", "analyse")
        dagster_stack.client.terminate_run(cancelled_id)
        cancelled = run_in_venv("airflow", ["-c", FOLLOW_CANCELLED, cancelled_id], env=env, cwd=tmp_path)
        skipped = run_in_venv("airflow", ["-c", DBT_UNAVAILABLE], env=env, cwd=tmp_path)
    shutil.rmtree(tmp_path / "airflow", ignore_errors=True)

    assert failed.returncode == 1, failed.stdout[-4000:]
    assert "claro_failing: failed" in failed.stdout
    (run,) = dagster_stack.runs(**{"claro/target": "warehouse"})
    assert run["status"] == "FAILURE"
    assert (f"ClaroRunFailed: claro warehouse on products did not succeed (run {run['runId']}, status FAILURE): "
            f"run {run['runId']} failed: ") in failed.stdout
    dagster_error = dagster_stack.failure_messages(run["runId"])[0]
    assert dagster_error.split("\n")[0][:60] in failed.stdout, (dagster_error, failed.stdout[-3000:])

    assert cancelled.returncode == 3, cancelled.stdout[-3000:]
    assert dagster_stack.run(cancelled_id)["status"] == "CANCELED"
    assert (f"ClaroRunCancelled: claro analyse on products did not succeed (run {cancelled_id}, status CANCELED): "
            f"run {cancelled_id} was cancelled before it finished") in cancelled.stdout

    # no dbt project where Dagster runs: the dbt task is skipped, saying what to set; no run is started
    assert ("AirflowSkipException: claro dbt_build on products skipped: the Dagster code location has no dbt_build "
            "job: set CLARO_DBT_PROJECT") in skipped.stdout, skipped.stdout[-3000:]
    assert not dagster_stack.runs(**{"claro/target": "dbt_build"})
