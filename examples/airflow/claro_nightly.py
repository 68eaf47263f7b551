"""Example Airflow DAG: every night, the products onboarding pipeline through claro, then the dbt build.

Put this file in Airflow's dags folder, with claro_dagster installed in Airflow's environment without its
dependencies (`pip install --no-deps claro-dagster requests`, see the README, "Prefect and Airflow"), and
`CLARO_API_URL` / `CLARO_API_TOKEN` (a token with scope run) in the worker's and triggerer's environment.

`ClaroRunOperator` starts the pipeline in Dagster through `claro serve` and defers to `ClaroRunTrigger` until the
run ends; the DAG run fails with the run's error if it fails, so dbt only builds on fresh, published records.
The dbt step runs `dbt build` on `CLARO_DBT_PROJECT` (e.g. examples/dbt against the catalogue's PostgreSQL); unset,
it says so and skips. Try it without a scheduler: `python examples/airflow/claro_nightly.py` (runs `dag.test()`).

To see this DAG beside the catalogue's assets in the Dagster UI, see `airlift_observe.py` (dagster-airlift).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import datetime

try:
    from airflow.sdk import DAG, task  # Airflow 3
except ImportError:  # Airflow 2 (e.g. the deployment airlift_observe.py observes)
    from airflow import DAG
    from airflow.decorators import task

from claro_dagster.integrations.airflow import ClaroRunOperator

with DAG(dag_id="claro_nightly_onboarding", schedule="0 2 * * *", start_date=datetime(2026, 1, 1), catchup=False,
         tags=["claro"], doc_md=__doc__) as dag:
    onboard = ClaroRunOperator(task_id="products_onboarding", catalogue="products", target="products_onboarding",
                               poll_interval=2)

    @task(task_id="dbt_build")
    def dbt_build() -> str:
        project_dir = os.environ.get("CLARO_DBT_PROJECT")
        if not project_dir:
            print("CLARO_DBT_PROJECT is not set: the dbt build is skipped")
            return "skipped"
        dbt = shutil.which("dbt")
        if dbt is None:
            raise RuntimeError("dbt is not installed in this environment: pip install dbt-core dbt-postgres")
        done = subprocess.run([dbt, "build", "--project-dir", project_dir, "--profiles-dir", project_dir],
                              capture_output=True, text=True)
        print(done.stdout[-4000:])
        if done.returncode != 0:
            raise RuntimeError(f"dbt build failed (exit {done.returncode}): {(done.stdout + done.stderr)[-2000:]}")
        return "built"

    onboard >> dbt_build()


if __name__ == "__main__":
    import sys

    dag_run = dag.test()
    print(f"claro_nightly_onboarding: {dag_run.state}")
    sys.exit(0 if dag_run.state == "success" else 1)
