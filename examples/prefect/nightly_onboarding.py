"""Example Prefect flow: every night, the products onboarding pipeline through claro, then the dbt build.

    export CLARO_API_URL=http://127.0.0.1:8000 CLARO_API_TOKEN=...     # `claro serve`, a token with scope run
    python examples/prefect/nightly_onboarding.py                        # one run now (Prefect's ephemeral mode)
    python examples/prefect/nightly_onboarding.py --serve                # a deployment on a nightly cron (02:00)

The pipeline runs in Dagster (sources -> records -> review checkpoint -> destinations), started through
`claro serve`; the flow waits for it and fails with the run's error if it fails, so the dbt build only runs on
fresh, published records. The dbt build runs `dbt build` on the project in `CLARO_DBT_PROJECT` (e.g.
examples/dbt, against the catalogue's PostgreSQL: see examples/dbt/README.md); with it unset the step says so and
is skipped.
(Inside Dagster the same models are assets below `records` when the code location has `CLARO_DBT_PROJECT`.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess

from prefect import flow, get_run_logger, task

from claro_dagster.integrations.prefect import claro_run


@task(name="dbt-build")
def dbt_build(project_dir: str | None) -> str:
    log = get_run_logger()
    if not project_dir:
        log.warning("CLARO_DBT_PROJECT is not set: the dbt build is skipped")
        return "skipped"
    dbt = shutil.which("dbt")
    if dbt is None:
        raise RuntimeError("dbt is not installed in this environment: pip install dbt-core dbt-postgres")
    done = subprocess.run([dbt, "build", "--project-dir", project_dir, "--profiles-dir", project_dir],
                          capture_output=True, text=True)
    log.info(done.stdout[-4000:])
    if done.returncode != 0:
        raise RuntimeError(f"dbt build failed (exit {done.returncode}): {(done.stdout + done.stderr)[-2000:]}")
    return "built"


@flow(name="claro-nightly-onboarding", log_prints=True)
def nightly_onboarding(catalogue: str = "products", pipeline: str = "products_onboarding",
                       dbt_project: str | None = None, timeout: float = 3600) -> dict:
    run_id = claro_run(catalogue, pipeline, timeout=timeout, poll=2)
    dbt = dbt_build(dbt_project if dbt_project is not None else os.environ.get("CLARO_DBT_PROJECT"))
    print(f"nightly onboarding done: run {run_id}, dbt {dbt}")
    return {"run_id": run_id, "dbt": dbt}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="serve a deployment on a nightly cron")
    parser.add_argument("--cron", default="0 2 * * *")
    args = parser.parse_args()
    if args.serve:
        nightly_onboarding.serve(name="nightly", cron=args.cron)
    else:
        nightly_onboarding()
