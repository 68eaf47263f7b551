"""dagster-airlift: Airflow's DAGs as assets in the same Dagster UI as the catalogue (observation only).

    pip install -e '.[airlift]'                                   # dagster-airlift 0.29.27 (the Dagster family)
    export AIRFLOW_WEBSERVER_URL=http://airflow:8080 AIRFLOW_USERNAME=admin AIRFLOW_PASSWORD=...
    dagster dev -f examples/airflow/airlift_observe.py             # or add `defs` to a workspace of its own

Each Airflow DAG becomes an asset `airflow/dag/<dag_id>`, with a sensor that polls Airflow's REST API and records a
materialization for each successful DAG run: the nightly `claro_nightly_onboarding` DAG shows up beside the
products assets it feeds, with its run history and source. It only observes: Dagster does not schedule, start or
retry the DAG, and the claro runs the DAG starts are Dagster runs of their own (tagged `claro/launched_by=api:...`).
dagster-airlift 0.29 speaks Airflow's `/api/v1` REST API, which Airflow 2 serves and Airflow 3 removed (see the
README, "Prefect and Airflow").
"""

from __future__ import annotations

import os

import dagster as dg
from dagster_airlift.core import AirflowBasicAuthBackend, AirflowInstance, build_defs_from_airflow_instance

NEEDED = ("AIRFLOW_WEBSERVER_URL", "AIRFLOW_USERNAME", "AIRFLOW_PASSWORD")


def airflow_instance() -> AirflowInstance:
    missing = [name for name in NEEDED if not os.environ.get(name)]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} not set: the Airflow webserver to observe and a user of it "
                           "(its REST API with basic auth)")
    return AirflowInstance(
        auth_backend=AirflowBasicAuthBackend(webserver_url=os.environ["AIRFLOW_WEBSERVER_URL"],
                                             username=os.environ["AIRFLOW_USERNAME"],
                                             password=os.environ["AIRFLOW_PASSWORD"]),
        name="airflow",
    )


def build_defs() -> dg.Definitions:
    """Only the DAGs tagged `claro` (the example DAG is); drop dag_selector_fn to observe every DAG."""
    def tagged_claro(dag) -> bool:
        return any(tag.get("name") == "claro" for tag in dag.metadata.get("tags") or [])

    return build_defs_from_airflow_instance(airflow_instance=airflow_instance(), dag_selector_fn=tagged_claro)


defs = build_defs()
