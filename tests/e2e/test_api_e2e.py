"""The REST API and `ClaroClient` against a real Dagster webserver and daemon: a run started through the API
runs in Dagster and the client waits for its end."""

from __future__ import annotations

from datetime import timedelta

import pytest

from claro_dagster.catalogue.api_access import ApiTokens
from claro_dagster.catalogue.opening import open_store
from claro_dagster.client import ClaroClient
from claro_dagster.resources.dagster_api import DagsterLauncher
from claro_dagster.spec import load_spec
from claro_dagster.web.app import create_app
from tests.api_project import Served

pytestmark = pytest.mark.e2e


def test_a_run_started_through_the_api_is_awaited_by_the_client(dagster_stack):
    spec = load_spec(dagster_stack.spec_path)

    def store_factory(s):
        return open_store(s, home=dagster_stack.home)

    store = store_factory(spec)
    secret = ApiTokens(store).create("ci", ["run", "read"], expires_in=timedelta(hours=1)).secret
    store.dispose()
    launcher = DagsterLauncher(lambda: spec, store_factory, port=dagster_stack.port, timeout=60)  # a loaded machine
    served = Served(create_app(lambda: spec, store_factory, launcher, signing_secret="x"))
    try:
        client = ClaroClient(served.url, secret, timeout=120)
        run_id = client.run("products", "analyse")
        done = client.wait(run_id, timeout=300, poll=1)
        assert (done.status, done.done) == ("SUCCESS", True)
        (run,) = [r for r in dagster_stack.runs() if r["runId"] == run_id]
        tags = {t["key"]: t["value"] for t in run["tags"]}
        assert tags["claro/launched_by"] == "api:ci" and tags["claro/target"] == "analyse"
    finally:
        served.stop()
