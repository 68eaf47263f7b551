"""Prefect: start a claro operation or pipeline through `claro serve`'s REST API, wait for it, fail with its error.

    from prefect import flow
    from claro_dagster.integrations.prefect import claro_run

    @flow
    def nightly():
        claro_run("products", "products_onboarding")        # CLARO_API_URL / CLARO_API_TOKEN from the environment

`claro_run` is a task (its result: the Dagster run id); `claro_dbt_build` runs the dbt project's Dagster job
(`dbt_build`) the same way, or skips, saying so, when the code location has none; `claro_run_flow` is a ready-made
flow of one such task, to deploy as is (`claro_run_flow.serve(...)`). A run that fails fails the task, and so
the flow, with `ClaroRunFailed` carrying the run's error; a cancelled run raises `ClaroRunCancelled`; a run still
going after `timeout` seconds raises `ClaroRunTimeout` (the Dagster run goes on: cancel it in the Dagster UI if
need be).
Imports only the client (no Dagster): install it in Prefect's environment with
`pip install --no-deps -e /path/to/claro_dagster requests` (see the README, "Prefect and Airflow").
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from claro_dagster.integrations import (
    DBT_BUILD,
    ClaroError,
    RunCancelled,
    TargetUnavailable,
    WaitTimeout,
    connect,
    failure_message,
    skipped_message,
)


class ClaroRunFailed(RuntimeError):
    """The claro run ended in FAILURE (or the API refused to start it); the message holds the run's error."""


class ClaroRunCancelled(ClaroRunFailed):
    """The claro run was cancelled (in the Dagster UI, or by a person) before it finished."""


class ClaroRunTimeout(ClaroRunFailed):
    """The claro run had not ended after `timeout` seconds."""


def start_and_wait(catalogue: str, target: str, *, filter: str | None = None, url: str | None = None,
                   token: str | None = None, run_id: str | None = None, timeout: float = 3600,
                   poll: float = 5, log=None, skip_unavailable: bool = False) -> str | None:
    """Start `target` on `catalogue` (or, given `run_id`, follow that run) and wait; the run id on success.
    `skip_unavailable`: None, saying why, when the code location does not have the target (dbt not set up)."""
    with connect(url, token) as client:
        try:
            if run_id is None:
                run_id = client.run(catalogue, target, filter=filter)
                if log:
                    log.info("claro: started %s on %s: Dagster run %s", target, catalogue, run_id)
            client.wait(run_id, timeout=timeout, poll=poll)
        except TargetUnavailable as exc:
            if not skip_unavailable:
                raise ClaroRunFailed(failure_message(catalogue, target, exc)) from None
            if log:
                log.warning(skipped_message(catalogue, target, exc))
            return None
        except RunCancelled as exc:
            raise ClaroRunCancelled(failure_message(catalogue, target, exc)) from None
        except WaitTimeout as exc:
            raise ClaroRunTimeout(failure_message(catalogue, target, exc)) from None
        except ClaroError as exc:
            raise ClaroRunFailed(failure_message(catalogue, target, exc)) from None
    if log:
        log.info("claro: %s on %s succeeded (run %s)", target, catalogue, run_id)
    return run_id


@task(name="claro-run", retries=0, task_run_name="claro {target} on {catalogue}")
def claro_run(catalogue: str, target: str, filter: str | None = None, *, url: str | None = None,
              token: str | None = None, run_id: str | None = None, timeout: float = 3600, poll: float = 5) -> str:
    """Start an operation (analyse, export, a destination) or a pipeline on a catalogue and wait for it.
    Not retried by Prefect: a retry would start a second run (retry the flow instead, knowingly)."""
    return start_and_wait(catalogue, target, filter=filter, url=url, token=token, run_id=run_id, timeout=timeout,
                          poll=poll, log=get_run_logger())


@task(name="claro-dbt-build", retries=0, task_run_name="claro dbt build")
def claro_dbt_build(catalogue: str, *, url: str | None = None, token: str | None = None, timeout: float = 3600,
                    poll: float = 5) -> str | None:
    """Run the Dagster job `dbt_build` (the dbt project's models, its tests as asset checks) and wait for it; the
    run id, or None (with a warning saying what to set) when the code location has no dbt project."""
    return start_and_wait(catalogue, DBT_BUILD, url=url, token=token, timeout=timeout, poll=poll,
                          log=get_run_logger(), skip_unavailable=True)


@flow(name="claro-run", flow_run_name="claro {target} on {catalogue}")
def claro_run_flow(catalogue: str, target: str, filter: str | None = None, url: str | None = None,
                   token: str | None = None, timeout: float = 3600, poll: float = 5) -> str:
    """One claro run as a flow: fails with the run's error when the run fails."""
    return claro_run(catalogue, target, filter, url=url, token=token, timeout=timeout, poll=poll)
