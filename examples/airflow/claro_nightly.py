"""Example Airflow DAG: every night, the products onboarding pipeline through claro, then the dbt build.

Put this file in Airflow's dags folder, with claro_dagster installed in Airflow's environment without its
dependencies (`pip install --no-deps claro-dagster requests`, see the README, "Prefect and Airflow"), and
`CLARO_API_URL` / `CLARO_API_TOKEN` (a token with scope run) in the worker's and triggerer's environment.

`ClaroRunOperator` starts the pipeline in Dagster through `claro serve` and defers to `ClaroRunTrigger` until the
run ends; the DAG run fails with the run's error if it fails, so dbt only builds on fresh, published records.
The dbt step starts the Dagster job `dbt_build` the same way (its models are assets below the catalogue's records,
its dbt tests asset checks); the code location has it when Dagster runs with `CLARO_DBT_PROJECT` (e.g. examples/dbt,
the catalogue on PostgreSQL). Without it the step is skipped, saying so. Try it without a scheduler:
`python examples/airflow/claro_nightly.py` (runs `dag.test()`).

To see this DAG beside the catalogue's assets in the Dagster UI, see `airlift_observe.py` (dagster-airlift).
"""

from __future__ import annotations

from datetime import datetime

try:
    from airflow.sdk import DAG  # Airflow 3
except ImportError:  # Airflow 2 (e.g. the deployment airlift_observe.py observes)
    from airflow import DAG

from claro_dagster.integrations.airflow import ClaroRunOperator

with DAG(dag_id="claro_nightly_onboarding", schedule="0 2 * * *", start_date=datetime(2026, 1, 1), catchup=False,
         tags=["claro"], doc_md=__doc__) as dag:
    onboard = ClaroRunOperator(task_id="products_onboarding", catalogue="products", target="products_onboarding",
                               poll_interval=2)
    dbt_build = ClaroRunOperator(task_id="dbt_build", catalogue="products", target="dbt_build", poll_interval=2,
                                 skip_if_unavailable=True)

    onboard >> dbt_build


if __name__ == "__main__":
    import sys

    dag_run = dag.test()
    print(f"claro_nightly_onboarding: {dag_run.state}")
    sys.exit(0 if dag_run.state == "success" else 1)
