"""Dagster's own GraphQL API, as the web app and the CLI use it to launch and report runs."""

from __future__ import annotations

from collections.abc import Callable

from dagster_graphql import DagsterGraphQLClient

from claro_dagster.catalogue.batches import BatchRegistry
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.schedules.from_spec import target_keys
from claro_dagster.spec.models import ProjectSpec

ASSET_JOB = "__ASSET_JOB"  # Dagster's implicit job over every asset of a code location
RECENT_RUNS = """
query RecentRuns($limit: Int!) {
  runsOrError(limit: $limit) { ... on Runs { results { runId status tags { key value } } } }
}"""


class DagsterLauncher:
    """Launches operations and pipelines as runs of a running Dagster (webserver + daemon) and reports them."""

    def __init__(self, spec_loader: Callable[[], ProjectSpec], store_factory: Callable[[ProjectSpec], CatalogueStore],
                 host: str = "127.0.0.1", port: int = 3000):
        self.spec_loader, self.store_factory = spec_loader, store_factory
        self.client = DagsterGraphQLClient(host, port_number=port, use_https=False, timeout=10)

    def launch(self, catalogue: str, target: str, filter: str | None) -> str:
        spec = self.spec_loader()
        keys = target_keys(spec, "slack", target if target in spec.pipelines else f"{catalogue}/{target}")
        run_config = {"ops": {"__".join(k.path): {"config": {"filter": filter}} for k in keys}} if filter else {}
        tags = {"claro/catalogue": catalogue, "claro/target": target, "claro/launched_by": "slack"}
        if filter:
            tags["claro/filter"] = filter
        return self.client.submit_job_execution(ASSET_JOB, asset_selection=[k.path for k in keys],
                                                run_config=run_config, tags=tags)

    def status(self, ref: str | None) -> str:
        if ref is None:
            result = self.client._execute(RECENT_RUNS, {"limit": 5})  # the client has no public "recent runs"
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
        return f"run {ref}: {self.client.get_run_status(ref).value.lower()}"
