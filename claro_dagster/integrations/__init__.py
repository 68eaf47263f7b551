"""Start claro runs from other orchestrators: `prefect` (a task and a flow) and `airflow` (an operator and a
deferrable trigger). They import only `claro_dagster.client` (no Dagster), so they run inside Prefect and Airflow
workers that have this package installed without its dependencies (`pip install --no-deps claro-dagster requests`).

Both read the URL of `claro serve` and an API token (scope `run`) from their arguments or from `CLARO_API_URL` and
`CLARO_API_TOKEN`, start one operation or pipeline, wait for it and fail with the run's error when it fails. The
dbt build is the Dagster job `dbt_build` started the same way (its dbt tests are asset checks in Dagster); a step
told to skip it when the code location has no such job (`TargetUnavailable`) says so instead of failing."""

from __future__ import annotations

import os

from claro_dagster.client import (
    ClaroClient,
    ClaroError,
    RunCancelled,
    RunFailed,
    RunStatus,
    TargetUnavailable,
    WaitTimeout,
)

__all__ = ["DBT_BUILD", "ClaroClient", "ClaroError", "RunCancelled", "RunFailed", "RunStatus", "TargetUnavailable",
           "WaitTimeout", "connect", "failure_message", "skipped_message"]

URL_ENV = "CLARO_API_URL"
TOKEN_ENV = "CLARO_API_TOKEN"
#: The Dagster job of the dbt project's models and tests (in the code location when CLARO_DBT_PROJECT is set there).
DBT_BUILD = "dbt_build"


def connect(url: str | None = None, token: str | None = None, *, timeout: float = 60) -> ClaroClient:
    """A client of `claro serve` from the arguments or, for what is not given, `CLARO_API_URL` / `CLARO_API_TOKEN`."""
    url = url or os.environ.get(URL_ENV)
    token = token or os.environ.get(TOKEN_ENV)
    missing = [name for name, value in ((URL_ENV, url), (TOKEN_ENV, token)) if not value]
    if missing:
        raise ClaroError(f"{' and '.join(missing)} not set: pass url=/token= or export {' and '.join(missing)} "
                         "(a token of `claro api tokens create NAME --scope run --scope read`)")
    return ClaroClient(url, token, timeout=timeout)  # type: ignore[arg-type]


def failure_message(catalogue: str, target: str, exc: ClaroError) -> str:
    """What a failed task says: which catalogue run ended how, and the run's own error."""
    run = getattr(exc, "run", None)
    where = f" (run {run.run_id}, status {run.status})" if run is not None else ""
    return f"claro {target} on {catalogue} did not succeed{where}: {exc}"


def skipped_message(catalogue: str, target: str, exc: TargetUnavailable) -> str:
    """What a step says when the code location does not have its target (e.g. dbt not set up) and it skips."""
    return f"claro {target} on {catalogue} skipped: {exc}"
