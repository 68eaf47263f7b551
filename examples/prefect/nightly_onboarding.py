"""Example Prefect flow: every night, the products onboarding pipeline through claro, then the dbt build.

    export CLARO_API_URL=http://127.0.0.1:8000 CLARO_API_TOKEN=...     # `claro serve`, a token with scope run
    python examples/prefect/nightly_onboarding.py                        # one run now (Prefect's ephemeral mode)
    python examples/prefect/nightly_onboarding.py --serve                # a deployment on a nightly cron (02:00)

The pipeline runs in Dagster (sources -> records -> review checkpoint -> destinations), started through
`claro serve`; the flow waits for it and fails with the run's error if it fails, so the dbt build only runs on
fresh, published records. The dbt build is the Dagster job `dbt_build`, started the same way: its models are assets
below the catalogue's records and its dbt tests asset checks, in the same Dagster UI. The code location has it when
Dagster runs with `CLARO_DBT_PROJECT` (e.g. examples/dbt) and the catalogue on PostgreSQL (see examples/dbt/README.md);
without it the step says so and is skipped. Nothing of dbt is installed where this flow runs.
"""

from __future__ import annotations

import argparse

from prefect import flow

from claro_dagster.integrations.prefect import claro_dbt_build, claro_run


@flow(name="claro-nightly-onboarding", log_prints=True)
def nightly_onboarding(catalogue: str = "products", pipeline: str = "products_onboarding",
                       timeout: float = 3600) -> dict:
    run_id = claro_run(catalogue, pipeline, timeout=timeout, poll=2)
    dbt_run = claro_dbt_build(catalogue, timeout=timeout, poll=2)
    dbt = f"run {dbt_run}" if dbt_run else "skipped"
    print(f"nightly onboarding done: run {run_id}, dbt {dbt}")
    return {"run_id": run_id, "dbt_run_id": dbt_run}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="serve a deployment on a nightly cron")
    parser.add_argument("--cron", default="0 2 * * *")
    args = parser.parse_args()
    if args.serve:
        nightly_onboarding.serve(name="nightly", cron=args.cron)
    else:
        nightly_onboarding()
