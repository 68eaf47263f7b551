"""dagster-airlift (`examples/airflow/airlift_observe.py`) observing a real Airflow 2.11 webserver: `.venvs/airflow2`
(made by `.ci/run`; airlift 0.29 reads Airflow's `/api/v1`, which Airflow 3 removed), SQLite metadata DB in a temporary
AIRFLOW_HOME, DAGs folder = examples/airflow, REST API with basic auth. The Dagster webserver and daemon load
`examples/airflow/workspace.yaml` (the claro location and the airlift one); the example DAG runs the onboarding
pipeline through `claro serve` (`dag.test()`, which records the DAG run in Airflow's DB), and the airlift sensor, run
by the real daemon, turns that DAG run into a materialization of `airflow/dag/claro_nightly_onboarding`, an asset
downstream of the catalogue's `products/records`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tests.e2e.harness import SERVER_START_TIMEOUT, free_port, group_members, tail, wait_until
from tests.e2e.orchestrators import REPO, onboarding_stack, run_in_venv, served_api, venv_env, venv_python

pytestmark = pytest.mark.e2e

DAGS = REPO / "examples" / "airflow"
DAG_ID = "claro_nightly_onboarding"
USER, PASSWORD = "claro-observer", "airlift-e2e"
BASIC_AUTH = "airflow.providers.fab.auth_manager.api.auth.backend.basic_auth"
POLL_SECONDS = "5"  # the sensor's interval (airlift's default 30 s)
SENSOR_TIMEOUT = 90

ASSET = """
query Asset($path: [String!]!) {
  assetOrError(assetKey: {path: $path}) {
    __typename
    ... on Asset {
      definition { dependencyKeys { path } repository { location { name } } }
      assetMaterializations(limit: 10) {
        runId
        metadataEntries { label ... on TextMetadataEntry { text } }
      }
    }
  }
}"""


def airflow2_env(home: Path, **extra: str) -> dict[str, str]:
    # PYTHONPATH: the checkout under test, whichever one the venv's editable install of claro_dagster points at
    return {"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__API__AUTH_BACKENDS": BASIC_AUTH, "AIRFLOW__WEBSERVER__WORKERS": "1",
            "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **extra}


def airflow_cli(env: dict[str, str], cwd: Path, *args: str) -> str:
    done = run_in_venv("airflow2", [str(venv_python("airflow2").parent / "airflow"), *args], env=env, cwd=cwd)
    assert done.returncode == 0, f"airflow {' '.join(args)}:\n{done.stdout[-3000:]}"
    return done.stdout


@contextmanager
def airflow_webserver(env: dict[str, str], cwd: Path):
    """`airflow webserver` on a free loopback port, up (its start creates FAB's roles): (url, a session that
    authenticates as USER)."""
    port, log_path = free_port(), cwd / "airflow-webserver.log"
    url = f"http://127.0.0.1:{port}"
    http = requests.Session()
    http.trust_env, http.auth = False, (USER, PASSWORD)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(venv_python("airflow2").parent / "airflow"), "webserver", "--hostname",
                                 "127.0.0.1", "--port", str(port)], env=venv_env(env), cwd=cwd, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def alive() -> None:
        if proc.poll() is not None:
            raise AssertionError(f"airflow webserver exited with {proc.returncode}:\n{tail(log_path)}")

    def answers() -> tuple[bool, str]:  # a refused connection is "not yet" (wait_until)
        response = http.get(f"{url}/health", timeout=5)
        return response.status_code == 200, f"HTTP {response.status_code} {response.text[:200]}"

    try:
        wait_until(answers, SERVER_START_TIMEOUT, 0.5, what=f"GET {url}/health to answer", guard=alive)
        yield url, http
    finally:
        http.close()
        if group_members(proc.pid):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            wait_until(lambda: (not group_members(proc.pid), group_members(proc.pid)), 30, 0.2,
                       what="the airflow webserver's process group to exit after SIGTERM")
        except TimeoutError:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        finally:
            proc.wait(timeout=10)


def test_a_run_of_the_example_dag_becomes_a_materialization_of_its_asset_beside_the_catalogue(tmp_path):
    home = tmp_path / "airflow2"
    env = airflow2_env(home)
    airflow_cli(env, tmp_path, "db", "migrate")
    airflow_cli(env, tmp_path, "dags", "reserialize")  # the DAG table the REST API lists (a scheduler would do it)

    with airflow_webserver(env, tmp_path) as (airflow_url, airflow):
        # a read-only user (the role exists once the webserver has started): observing needs no more
        airflow_cli(env, tmp_path, "users", "create", "--username", USER, "--password", PASSWORD, "--role", "Viewer",
                    "--firstname", "Claro", "--lastname", "Observer", "--email", "observer@example.com")
        dags = airflow.get(f"{airflow_url}/api/v1/dags", timeout=30)
        assert dags.status_code == 200 and [d["dag_id"] for d in dags.json()["dags"]] == [DAG_ID], dags.text[:2000]
        observer = {"AIRFLOW_WEBSERVER_URL": airflow_url, "AIRFLOW_USERNAME": USER, "AIRFLOW_PASSWORD": PASSWORD,
                    "AIRLIFT_POLL_SECONDS": POLL_SECONDS}
        with onboarding_stack(tmp_path / "dagster", observer, workspace=DAGS / "workspace.yaml") as stack:
            path = ["airflow", "dag", DAG_ID]
            asset = stack.graphql(ASSET, path=path)["assetOrError"]
            assert asset["__typename"] == "Asset", asset
            assert asset["definition"]["repository"]["location"]["name"] == "airflow"
            assert {"path": ["products", "records"]} in asset["definition"]["dependencyKeys"]
            assert asset["assetMaterializations"] == []  # no DAG run yet

            with served_api(stack, "airflow") as (url, token):
                done = run_in_venv("airflow2", [str(DAGS / "claro_nightly.py")], cwd=tmp_path,
                                   env={**env, "CLARO_API_URL": url, "CLARO_API_TOKEN": token})
            assert done.returncode == 0, done.stdout[-4000:]
            assert f"{DAG_ID}: success" in done.stdout, done.stdout[-4000:]
            claro_run = re.search(r"claro: started products_onboarding on products: Dagster run (\S+)", done.stdout)
            assert stack.run(claro_run.group(1))["status"] == "SUCCESS"

            dag_runs = airflow.get(f"{airflow_url}/api/v1/dags/{DAG_ID}/dagRuns", timeout=30).json()["dag_runs"]
            assert [r["state"] for r in dag_runs] == ["success"], dag_runs
            dag_run_id = dag_runs[0]["dag_run_id"]

            def materialized() -> tuple[bool, list]:
                events = stack.graphql(ASSET, path=path)["assetOrError"]["assetMaterializations"]
                return bool(events), events

            (event,) = stack.wait(materialized, SENSOR_TIMEOUT,
                                  f"the airlift sensor to record a materialization of {'/'.join(path)}")
            metadata = {e["label"]: e.get("text") for e in event["metadataEntries"]}
            assert metadata["Airflow Run ID"] == dag_run_id
            assert event["runId"] == ""  # a runless event, reported by the sensor: Dagster did not run the DAG
