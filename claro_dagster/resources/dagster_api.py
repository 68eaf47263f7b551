"""Dagster's own GraphQL API, as the web app and the CLI use it to launch and report runs.

Every call goes through `DagsterLauncher._call`, which turns the GraphQL client's errors (whose text
repeats the whole query and its variables) into a sentence a person can act on: when the webserver
does not answer, `WebserverUnreachable` says where it was expected and how to start it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from claro_dagster.catalogue.batches import BatchRegistry
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.spec.models import ProjectSpec

ASSET_JOB = "__ASSET_JOB"  # Dagster's implicit job over every asset of a code location
DBT_BUILD_JOB = "dbt_build"  # the dbt project's job, defined when the code location has $CLARO_DBT_PROJECT
JOBS = """
query Jobs {
  repositoriesOrError { ... on RepositoryConnection { nodes { name jobs { name } } } }
}"""
RECENT_RUNS = """
query RecentRuns($limit: Int!) {
  runsOrError(limit: $limit) { ... on Runs { results { runId status tags { key value } } } }
}"""
RUN_FAILURES = """
query RunFailures($runId: ID!) {
  runOrError(runId: $runId) {
    ... on Run {
      eventConnection(limit: 10000) {
        events {
          __typename
          ... on MessageEvent { message stepKey }
          ... on ExecutionStepFailureEvent { error { message } }
          ... on RunFailureEvent { pipelineFailureError: error { message } }
        }
      }
    }
  }
}"""
START_HINT = "Start it with `claro dev` (the Dagster webserver and daemon), then try again."


class DagsterApiError(RuntimeError):
    """Dagster answered, but could not do what was asked (its own words, never the raw query)."""


class WebserverUnreachable(DagsterApiError):
    """The Dagster webserver did not answer (not started, stopped, or a proxy in front of it failed)."""

    def __init__(self, url: str, why: str):
        self.url, self.why = url, why
        super().__init__(f"The Dagster webserver at {url} is unreachable ({why}). {START_HINT}")


def _reason(exc: BaseException) -> str:
    """Why a connection failed, in a few words (requests' messages nest the whole retry story)."""
    import requests

    if isinstance(exc, requests.exceptions.Timeout):
        return "it did not answer in time"
    if isinstance(exc, requests.exceptions.ConnectionError):
        text = str(exc).lower()
        if "refused" in text:
            return "connection refused: nothing listens on that port"
        if "name or service not known" in text or "nodename nor servname" in text or "resolution" in text:
            return "its host name does not resolve"
        return "the connection failed"
    return type(exc).__name__


def explain(exc: Exception, url: str, what: str) -> DagsterApiError:
    """The error to show for a failed GraphQL call (`what`: e.g. "launch export on products")."""
    import requests
    from gql.transport.exceptions import TransportQueryError, TransportServerError

    causes = []
    cause: BaseException | None = exc
    while cause is not None and len(causes) < 10:
        causes.append(cause)
        cause = cause.__cause__ or cause.__context__
    for c in causes:
        if isinstance(c, requests.exceptions.RequestException):
            return WebserverUnreachable(url, _reason(c))
        if isinstance(c, TransportServerError):
            return WebserverUnreachable(url, f"it answered HTTP {c.code}" if c.code else "it answered with an error")
        if isinstance(c, TransportQueryError):
            messages = [e.get("message", "") for e in (c.errors or []) if isinstance(e, dict)]
            return DagsterApiError(f"Dagster could not {what}: {'; '.join(m for m in messages if m) or c}")
    text = str(exc.args[0]) if exc.args else type(exc).__name__
    if "query" in text and "variables" in text:  # the client's generic wrapper: never show the query
        text = type(causes[-1]).__name__
    details = [str(a) for a in exc.args[1:2] if a]
    return DagsterApiError(f"Dagster could not {what}: {text}" + (f" ({details[0]})" if details else ""))


ASSETS_LOCATION = """
query AssetsLocation($keys: [AssetKeyInput!]) {
  assetNodes(assetKeys: $keys) { isExecutable repository { name location { name } } }
}"""


class RunNotFound(DagsterApiError, LookupError):
    """Dagster has no run with this id."""


class DagsterLauncher:
    """Launches operations and pipelines as runs of a running Dagster (webserver + daemon) and reports them."""

    def __init__(self, spec_loader: Callable[[], ProjectSpec], store_factory: Callable[[ProjectSpec], CatalogueStore],
                 host: str = "127.0.0.1", port: int = 3000, *, timeout: int = 10):
        from dagster_graphql import DagsterGraphQLClient

        self.spec_loader, self.store_factory = spec_loader, store_factory
        self.url = f"http://{host}:{port}"
        self.client = DagsterGraphQLClient(host, port_number=port, use_https=False, timeout=timeout)

    def _call(self, what: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from dagster_graphql import DagsterGraphQLClientError

        try:
            return function(*args, **kwargs)
        except DagsterGraphQLClientError as exc:
            raise explain(exc, self.url, what) from None

    def launch(self, catalogue: str, target: str, filter: str | None, *, launched_by: str = "slack") -> str:
        from claro_dagster.definitions import op_config, operation_job_name
        from claro_dagster.schedules.from_spec import target_keys

        spec = self.spec_loader()
        tags = {"claro/catalogue": catalogue, "claro/target": target, "claro/launched_by": launched_by}
        pipeline = spec.pipelines.get(target)
        selection = None
        if target == DBT_BUILD_JOB:  # the dbt project's models and tests (no record filter: dbt reads whole tables)
            job, run_config = DBT_BUILD_JOB, {}
        elif pipeline is not None and pipeline.after is not None:
            # A chained pipeline is a run of its own job, as its sensor starts it: its operations and destinations,
            # for the records its filter (and this one) selects.
            import dagster as dg

            job = target
            keys = [dg.AssetKey([pipeline.catalogue, t]) for t in (*pipeline.operations, *pipeline.destinations)]
            filter = " and ".join(f"({f})" for f in (pipeline.filter, filter) if f) or None
            run_config = op_config(keys, filter)
        else:
            keys = target_keys(spec, "slack", target if pipeline is not None else f"{catalogue}/{target}")
            run_config = op_config(keys, filter)
            # One operation or destination is a run of its own job (`products_analyse`), as `claro run` and the
            # sensors make it. What an onboarding pipeline publishes (analyse, export, its destinations) spans
            # several jobs: Dagster's asset job on those assets. A destination whose settings are missing where
            # Dagster runs is skipped in such a run, saying which variable to set (`skip_unconfigured`).
            job = ASSET_JOB if pipeline is not None else operation_job_name(catalogue, target)
            selection = [k.path for k in keys] if job == ASSET_JOB else None
        if filter:
            tags["claro/filter"] = filter
        what = f"launch {target} on {catalogue}"
        where = self._assets_location(keys, what) if job == ASSET_JOB else {}
        return self._call(what, self.client.submit_job_execution, job, **where, asset_selection=selection,
                          run_config=run_config, tags=tags)

    def has_job(self, name: str) -> bool:
        """Whether the code location Dagster serves has the job `name` (e.g. `dbt_build`, only with dbt set up)."""
        result = self._call("list the jobs of the code location", self.client._execute, JOBS, {})
        repositories = (result.get("repositoriesOrError") or {}).get("nodes") or []
        return any(job["name"] == name for r in repositories for job in r.get("jobs") or [])

    def _assets_location(self, keys: list[Any], what: str) -> dict[str, str]:
        """The code location and repository that define `keys`: every location of a workspace has an `__ASSET_JOB`
        (e.g. examples/airflow/workspace.yaml, the catalogue beside dagster-airlift's), so Dagster must be told
        which. Empty (Dagster then picks, or says why it cannot) when no single location defines them all."""
        result = self._call(what, self.client._execute, ASSETS_LOCATION, {"keys": [{"path": k.path} for k in keys]})
        places = {(n["repository"]["location"]["name"], n["repository"]["name"])
                  for n in result.get("assetNodes") or [] if n.get("isExecutable")}
        if len(places) != 1:
            return {}
        ((location, repository),) = places
        return {"repository_location_name": location, "repository_name": repository}

    def status(self, ref: str | None) -> str:
        if ref is None:
            # The client has no public "recent runs".
            result = self._call("list recent runs", self.client._execute, RECENT_RUNS, {"limit": 5})
            runs = result["runsOrError"].get("results", [])
            return "\n".join(f"{r['runId'][:8]} {r['status'].lower()}" for r in runs) or "no runs yet"
        spec = self.spec_loader()
        store = self.store_factory(spec)
        try:
            batch = BatchRegistry(store).get(ref)
        finally:
            store.dispose()
        if batch is not None:
            return f"batch {batch.key} ({batch.filename}): {batch.status}: {batch.message or ''}"
        return f"run {ref}: {self._call(f'read run {ref}', self.client.get_run_status, ref).value.lower()}"

    def run_status(self, run_id: str) -> str:
        """The run's Dagster status (QUEUED, STARTED, SUCCESS, FAILURE, CANCELED, ...); RunNotFound if none."""
        from dagster_graphql import DagsterGraphQLClientError

        try:
            return self.client.get_run_status(run_id).value
        except DagsterGraphQLClientError as exc:
            if exc.args and exc.args[0] in ("RunNotFoundError", "PipelineRunNotFoundError"):
                raise RunNotFound(f"Dagster has no run {run_id!r}") from None
            raise explain(exc, self.url, f"read run {run_id}") from None

    def run_error(self, run_id: str) -> str | None:
        """Why a run failed, in Dagster's words: each failed step's error (`step: message`), else the run's."""
        result = self._call(f"read the failure of run {run_id}", self.client._execute, RUN_FAILURES, {"runId": run_id})
        events = ((result.get("runOrError") or {}).get("eventConnection") or {}).get("events") or []
        steps = [f"{e.get('stepKey')}: {(e.get('error') or {}).get('message') or e.get('message')}".strip()
                 for e in events if e["__typename"] == "ExecutionStepFailureEvent"]
        if steps:
            return "; ".join(steps)[:4000]
        runs = [((e.get("pipelineFailureError") or {}).get("message") or e.get("message") or "").strip()
                for e in events if e["__typename"] == "RunFailureEvent"]
        return "; ".join(r for r in runs if r)[:4000] or None

    def recent_runs(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest runs: run id, Dagster status and claro's tags (catalogue, target, who launched it)."""
        result = self._call("list recent runs", self.client._execute, RECENT_RUNS, {"limit": limit})
        return [{"run_id": r["runId"], "status": r["status"],
                 "tags": {t["key"]: t["value"] for t in r.get("tags", []) if t["key"].startswith("claro/")}}
                for r in result["runsOrError"].get("results", [])]
