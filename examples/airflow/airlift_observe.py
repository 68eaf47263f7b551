"""dagster-airlift: an Airflow 2 deployment's DAGs, and their runs, as assets in the same Dagster UI as the catalogue.

    pip install -e '.[airlift]'                                   # dagster-airlift 0.29.27 (the Dagster family)
    export AIRFLOW_WEBSERVER_URL=http://airflow:8080 AIRFLOW_USERNAME=observer AIRFLOW_PASSWORD=...
    dagster dev -w examples/airflow/workspace.yaml                # two code locations (claro, airflow), one UI

Each Airflow DAG tagged `claro` becomes an asset `airflow/dag/<dag_id>` (tasks, owners, schedule and source code as
metadata), and a sensor (`airflow__airflow_dag_status_sensor`, running by default) polls Airflow's REST API every
`AIRLIFT_POLL_SECONDS` (30) and records a materialization of that asset for each successful DAG run, with the
run's id, type, dates and a link to it in Airflow. `DAG_DEPS` draws lineage to the claro location's assets: the
nightly `claro_nightly_onboarding` DAG is downstream of `products/records`, the asset its run refreshes.

It only observes. Dagster does not schedule, start, retry or stop the DAG (that means migrating its tasks to
Dagster with airlift's `proxying_to_dagster`, which this project does not do), and the claro runs the DAG starts
are Dagster runs of their own (tagged `claro/launched_by=api:...`), not linked to the DAG's materialization.
dagster-airlift 0.29 reads Airflow's `/api/v1` REST API with basic auth: Airflow 2 serves it (webserver with
`AIRFLOW__API__AUTH_BACKENDS=airflow.providers.fab.auth_manager.api.auth.backend.basic_auth`, a user with read
access); Airflow 3 removed `/api/v1` (its `/api/v2` takes a JWT), so it cannot observe an Airflow 3 deployment.
Airflow ignores this file (`.airflowignore`). Tested against a real Airflow 2.11: tests/e2e/test_airlift_e2e.py.
"""

from __future__ import annotations

import os

import dagster as dg
from dagster_airlift.core import AirflowBasicAuthBackend, AirflowInstance, build_defs_from_airflow_instance

NEEDED = ("AIRFLOW_WEBSERVER_URL", "AIRFLOW_USERNAME", "AIRFLOW_PASSWORD")
TAG = "claro"
POLL = "AIRLIFT_POLL_SECONDS"  # how often the sensor asks Airflow for finished DAG runs (airlift's default: 30)
# Lineage to the catalogue's assets (in the claro code location): the DAG's asset is downstream of these.
DAG_DEPS = {"claro_nightly_onboarding": [dg.AssetKey(["products", "records"])]}


def airflow_instance() -> AirflowInstance:
    missing = [name for name in NEEDED if not os.environ.get(name)]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} not set: the Airflow 2 webserver to observe and a user of it "
                           "(its REST API /api/v1 with basic auth)")
    return AirflowInstance(
        auth_backend=AirflowBasicAuthBackend(webserver_url=os.environ["AIRFLOW_WEBSERVER_URL"].rstrip("/"),
                                             username=os.environ["AIRFLOW_USERNAME"],
                                             password=os.environ["AIRFLOW_PASSWORD"]),
        name="airflow",
    )


def dag_key(dag_id: str) -> dg.AssetKey:
    """The asset airlift makes for a DAG (instance name `airflow`)."""
    return dg.AssetKey(["airflow", "dag", dag_id])


def build_defs() -> dg.Definitions:
    """Only the DAGs tagged `claro` (the example DAG is); drop dag_selector_fn to observe every DAG."""
    def tagged_claro(dag) -> bool:
        return any(tag.get("name") == TAG for tag in dag.metadata.get("tags") or [])

    defs = build_defs_from_airflow_instance(airflow_instance=airflow_instance(), dag_selector_fn=tagged_claro,
                                            sensor_minimum_interval_seconds=int(os.environ.get(POLL, "30")))
    by_key = {dag_key(dag_id): deps for dag_id, deps in DAG_DEPS.items()}

    def with_deps(spec: dg.AssetSpec) -> dg.AssetSpec:
        extra = by_key.get(spec.key)
        return spec.merge_attributes(deps=extra) if extra else spec

    return defs.map_asset_specs(func=with_deps)


defs = build_defs()
