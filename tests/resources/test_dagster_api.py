"""Dagster's GraphQL API as the web app uses it: errors a person can act on, never the raw query."""

from __future__ import annotations

import pytest

from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.resources.dagster_api import DagsterApiError, DagsterLauncher, WebserverUnreachable
from claro_dagster.spec.models import AttributeSpec, CatalogueSpec, ProjectSpec

SPEC = ProjectSpec(catalogues={"products": CatalogueSpec(key="sku", attributes={"sku": AttributeSpec(type="text")})})


def launcher(port: int, tmp_path) -> DagsterLauncher:
    return DagsterLauncher(lambda: SPEC, lambda s: CatalogueStore(s, f"sqlite:///{tmp_path / 'c.db'}"), port=port,
                           timeout=2)


def test_nothing_listening_is_unreachable_with_how_to_start_it(closed_port, tmp_path):
    for call in (lambda d: d.launch("products", "export", None), lambda d: d.status(None),
                 lambda d: d.status("4f1d2c3b")):
        with pytest.raises(WebserverUnreachable) as info:
            call(launcher(closed_port, tmp_path))
        assert str(info.value) == (
            f"The Dagster webserver at http://127.0.0.1:{closed_port} is unreachable (connection refused: nothing "
            "listens on that port). Start it with `claro dev` (the Dagster webserver and daemon), then try again.")


def test_a_failing_proxy_is_unreachable_and_graphql_errors_are_dagsters_words(http_server, tmp_path):
    http_server.answer((502, {}, b"Bad Gateway"))
    with pytest.raises(WebserverUnreachable, match=r"unreachable \(it answered HTTP 502\)\. Start it with `claro dev`"):
        launcher(http_server.port, tmp_path).status(None)
    http_server.answer((200, {}, {"errors": [{"message": 'Cannot query field "runsOrError" on type "Query".'}]}))
    with pytest.raises(DagsterApiError) as info:
        launcher(http_server.port, tmp_path).status(None)
    assert not isinstance(info.value, WebserverUnreachable)
    assert str(info.value) == 'Dagster could not list recent runs: Cannot query field "runsOrError" on type "Query".'
    assert "query RecentRuns" not in str(info.value)


def test_run_status_and_recent_runs_for_the_rest_api(http_server, closed_port, tmp_path):
    from claro_dagster.resources.dagster_api import RunNotFound

    http_server.answer((200, {}, {"data": {"pipelineRunOrError": {"__typename": "Run", "status": "CANCELED"}}}))
    assert launcher(http_server.port, tmp_path).run_status("4f1d2c3b") == "CANCELED"
    http_server.answer((200, {}, {"data": {"pipelineRunOrError": {"__typename": "RunNotFoundError",
                                                                  "message": "Run 4f1d2c3b could not be found."}}}))
    with pytest.raises(RunNotFound, match="no run '4f1d2c3b'"):
        launcher(http_server.port, tmp_path).run_status("4f1d2c3b")
    http_server.answer((200, {}, {"data": {"runsOrError": {"results": [
        {"runId": "4f1d2c3b", "status": "SUCCESS", "tags": [{"key": "claro/target", "value": "analyse"},
                                                             {"key": "dagster/partition", "value": "x"}]}]}}}))
    assert launcher(http_server.port, tmp_path).recent_runs(5) == [
        {"run_id": "4f1d2c3b", "status": "SUCCESS", "tags": {"claro/target": "analyse"}}]
    with pytest.raises(WebserverUnreachable):
        launcher(closed_port, tmp_path).run_status("4f1d2c3b")


class RecordingGraphQL:
    """Stands in for DagsterGraphQLClient: records what `launch` submits (job, selection, config, tags)."""

    def __init__(self):
        self.submitted: list[tuple] = []
        self.locations: list[dict] = []

    def _execute(self, query, variables):  # the only query a launch makes: which location defines the assets
        return {"assetNodes": [{"isExecutable": True, "repository": {"name": "__repository__",
                                                                     "location": {"name": "claro"}}}
                               for _ in variables["keys"]]}

    def submit_job_execution(self, job, *, asset_selection=None, run_config=None, tags=None, **location):
        self.submitted.append((job, asset_selection, run_config, tags))
        self.locations.append(location)
        return f"run-{len(self.submitted)}"


def test_what_a_launch_submits_for_each_kind_of_target(tmp_path, demo_spec):
    """An operation or destination: its own job; an onboarding pipeline: Dagster's asset job on what it publishes;
    a chained pipeline: its own job with its filter and the caller's; dbt_build: the dbt project's job."""
    launcher = DagsterLauncher(lambda: demo_spec, lambda s: None, port=1, timeout=2)
    launcher.client = graphql = RecordingGraphQL()
    launcher.launch("products", "warehouse", None, launched_by="api:ci")
    launcher.launch("products", "products_onboarding", None, launched_by="api:ci")
    launcher.launch("products", "products_revalidation", 'brand == "Acme"', launched_by="api:ci")
    launcher.launch("products", "dbt_build", None, launched_by="api:ci")
    (own, _), (pipeline, selection), (chained, _), (dbt, _) = [(s[0], s[1]) for s in graphql.submitted]
    assert (own, dbt) == ("products_warehouse", "dbt_build")
    assert pipeline == "__ASSET_JOB" and selection == [["products", p] for p in (
        "analyse", "export", "shopify_store", "amazon_listings", "catalogue_dump", "warehouse")]
    assert chained == "products_revalidation"
    # the asset job is named in the location that defines the assets (every location of a workspace has one)
    assert graphql.locations[1] == {"repository_location_name": "claro", "repository_name": "__repository__"}
    assert graphql.locations[0] == graphql.locations[2] == graphql.locations[3] == {}
    config, tags = graphql.submitted[2][2], graphql.submitted[2][3]
    both = '(status == "active") and (brand == "Acme")'
    assert config == {"ops": {"products__validate": {"config": {"filter": both}}}} and tags["claro/filter"] == both
    assert graphql.submitted[3][2] == {} and graphql.submitted[3][3]["claro/target"] == "dbt_build"
