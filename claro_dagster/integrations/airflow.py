"""Airflow: an operator that starts a claro operation or pipeline through `claro serve`'s REST API, and a deferrable
trigger that waits for the Dagster run without holding a worker slot.

    from claro_dagster.integrations.airflow import ClaroRunOperator

    onboard = ClaroRunOperator(task_id="onboard", catalogue="products", target="products_onboarding")

The operator returns (and pushes to XCom) the Dagster run id. With `deferrable=True` (the default) it defers to
`ClaroRunTrigger`, which polls the run in the triggerer; with `deferrable=False` it polls in the worker. A run that
fails fails the task with `ClaroRunFailed` carrying the run's error; a cancelled run raises `ClaroRunCancelled`; a run
still going after `timeout` seconds raises `ClaroRunTimeout` (the Dagster run goes on). The URL and token come from
the arguments or `CLARO_API_URL` / `CLARO_API_TOKEN` in the worker's and triggerer's environment (the token is never
put in the trigger's stored arguments unless passed explicitly). Imports only the client (no Dagster). Works on
Airflow 3 (`airflow.sdk`) and Airflow 2.x (`airflow.models`), e.g. a deployment observed with dagster-airlift.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

try:
    from airflow.sdk import BaseOperator  # Airflow 3
except ImportError:  # Airflow 2
    from airflow.models import BaseOperator
from airflow.triggers.base import BaseTrigger, TriggerEvent

from claro_dagster.integrations import (
    ClaroError,
    RunCancelled,
    TargetUnavailable,
    WaitTimeout,
    connect,
    failure_message,
    skipped_message,
)

TERMINAL = ("SUCCESS", "FAILURE", "CANCELED")


class ClaroRunFailed(RuntimeError):
    """The claro run ended in FAILURE (or the API refused to start it); the message holds the run's error."""


class ClaroRunCancelled(ClaroRunFailed):
    """The claro run was cancelled (in the Dagster UI, or by a person) before it finished."""


class ClaroRunTimeout(ClaroRunFailed):
    """The claro run had not ended after `timeout` seconds."""


class ClaroRunTrigger(BaseTrigger):
    """Polls one claro run until it ends (or `timeout` passes); one event: {run_id, status, error}."""

    def __init__(self, run_id: str, *, url: str | None = None, token: str | None = None, poll_interval: float = 10,
                 timeout: float = 3600, started_at: float | None = None):
        super().__init__()
        self.run_id, self.url, self.token = run_id, url, token
        self.poll_interval, self.timeout = poll_interval, timeout
        self.started_at = started_at if started_at is not None else time.time()

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"run_id": self.run_id, "url": self.url, "token": self.token, "poll_interval": self.poll_interval,
                 "timeout": self.timeout, "started_at": self.started_at})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        client = connect(self.url, self.token)
        try:
            while True:
                try:
                    status = await asyncio.to_thread(client.status, self.run_id)
                except ClaroError as exc:
                    yield TriggerEvent({"run_id": self.run_id, "status": "ERROR", "error": str(exc)})
                    return
                if status.status in TERMINAL:
                    yield TriggerEvent({"run_id": self.run_id, "status": status.status, "error": status.error})
                    return
                if time.time() - self.started_at >= self.timeout:
                    yield TriggerEvent({"run_id": self.run_id, "status": "TIMEOUT", "last": status.status,
                                        "error": f"run {self.run_id} is still {status.status} after "
                                                 f"{self.timeout:g}s"})
                    return
                await asyncio.sleep(self.poll_interval)
        finally:
            client.close()


class ClaroRunOperator(BaseOperator):
    """Start `target` (analyse, export, enrich, a destination, a pipeline, or `dbt_build`: the dbt project's models
    and tests) on `catalogue` and wait for it. `skip_if_unavailable`: when the code location does not have the
    target (`dbt_build` without CLARO_DBT_PROJECT where Dagster runs), the task is skipped, saying so."""

    template_fields: Sequence[str] = ("catalogue", "target", "filter")
    ui_color = "#e8f1fb"

    def __init__(self, *, catalogue: str, target: str, filter: str | None = None, claro_url: str | None = None,
                 claro_token: str | None = None, deferrable: bool = True, poll_interval: float = 10,
                 timeout: float = 3600, skip_if_unavailable: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.skip_if_unavailable = skip_if_unavailable
        self.catalogue, self.target, self.filter = catalogue, target, filter
        self.claro_url, self.claro_token = claro_url, claro_token
        self.deferrable, self.poll_interval, self.timeout = deferrable, poll_interval, timeout

    def execute(self, context: Any) -> str:
        with connect(self.claro_url, self.claro_token) as client:
            try:
                run_id = client.run(self.catalogue, self.target, filter=self.filter)
            except TargetUnavailable as exc:
                if not self.skip_if_unavailable:
                    raise ClaroRunFailed(failure_message(self.catalogue, self.target, exc)) from None
                from airflow.exceptions import AirflowSkipException  # Airflow 2, and 3 (re-exported from the SDK)

                self.log.warning(skipped_message(self.catalogue, self.target, exc))
                raise AirflowSkipException(skipped_message(self.catalogue, self.target, exc)) from None
            except ClaroError as exc:
                raise ClaroRunFailed(failure_message(self.catalogue, self.target, exc)) from None
            self.log.info("claro: started %s on %s: Dagster run %s", self.target, self.catalogue, run_id)
            if self.deferrable:
                self.defer(trigger=ClaroRunTrigger(run_id, url=self.claro_url, token=self.claro_token,
                                                   poll_interval=self.poll_interval, timeout=self.timeout),
                           method_name="execute_complete", timeout=timedelta(seconds=self.timeout + 300))
            try:
                client.wait(run_id, timeout=self.timeout, poll=self.poll_interval)
            except RunCancelled as exc:
                raise ClaroRunCancelled(failure_message(self.catalogue, self.target, exc)) from None
            except WaitTimeout as exc:
                raise ClaroRunTimeout(failure_message(self.catalogue, self.target, exc)) from None
            except ClaroError as exc:
                raise ClaroRunFailed(failure_message(self.catalogue, self.target, exc)) from None
        return self._succeeded(run_id)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> str:
        return self.complete(event)

    def complete(self, event: dict[str, Any]) -> str:
        """The trigger's event: the run id on success, else the matching ClaroRunFailed."""
        run_id, status, error = event["run_id"], event["status"], event.get("error")
        if status == "SUCCESS":
            return self._succeeded(run_id)
        what = f"claro {self.target} on {self.catalogue} did not succeed (run {run_id}, status {status})"
        if status == "CANCELED":
            raise ClaroRunCancelled(f"{what}: run {run_id} was cancelled before it finished")
        if status == "TIMEOUT":
            raise ClaroRunTimeout(f"{what}: {error}")
        detail = f"run {run_id} failed: {error}" if error else f"run {run_id} failed; its logs are in the Dagster UI"
        raise ClaroRunFailed(f"{what}: {detail if status == 'FAILURE' else error}")

    def _succeeded(self, run_id: str) -> str:
        self.log.info("claro: %s on %s succeeded (run %s)", self.target, self.catalogue, run_id)
        return run_id
