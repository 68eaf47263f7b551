"""A small project for the REST API's tests: a spec, a store with three products, API tokens of each scope, the
app of `claro serve` over it, and a fake launcher that plays Dagster's part."""

from __future__ import annotations

import socket
import threading
from datetime import timedelta

import pandas as pd
import uvicorn
from starlette.testclient import TestClient

from claro_dagster.catalogue.api_access import ApiTokens
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.resources.dagster_api import RunNotFound, WebserverUnreachable
from claro_dagster.spec.models import (
    ApiClientSpec,
    ApiSpec,
    AttributeSpec,
    CatalogueSpec,
    PipelineSpec,
    ProjectSpec,
)
from claro_dagster.web.app import create_app
from tests.e2e.harness import wait_until


def make_spec() -> ProjectSpec:
    return ProjectSpec(
        catalogues={"products": CatalogueSpec(key="sku", attributes={
            "sku": AttributeSpec(type="text", required=True), "title": AttributeSpec(type="text"),
            "price": AttributeSpec(type="number"), "status": AttributeSpec(type="enum", values=["active", "draft"]),
            "launched": AttributeSpec(type="date")})},
        pipelines={"onboarding": PipelineSpec(catalogue="products")},
        api=ApiSpec(max_confidence=80, clients={"trusted": ApiClientSpec(max_confidence=95)}),
    )


class FakeLauncher:
    """Dagster's part, played in memory: runs move through the statuses a test sets."""

    def __init__(self) -> None:
        self.launched: list[tuple] = []
        self.statuses: dict[str, list[str]] = {}
        self.down = False
        self.jobs: set[str] = set()  # the code location's jobs `has_job` knows (e.g. dbt_build)

    def launch(self, catalogue, target, filter, *, launched_by="slack"):
        if self.down:
            raise WebserverUnreachable("http://127.0.0.1:3999", "connection refused: nothing listens on that port")
        run_id = f"run-{len(self.launched) + 1}"
        self.launched.append((catalogue, target, filter, launched_by))
        self.statuses[run_id] = ["QUEUED", "STARTED", "SUCCESS"]
        return run_id

    def run_status(self, run_id):
        if self.down:
            raise WebserverUnreachable("http://127.0.0.1:3999", "connection refused: nothing listens on that port")
        if run_id not in self.statuses:
            raise RunNotFound(f"Dagster has no run {run_id!r}")
        steps = self.statuses[run_id]
        return steps.pop(0) if len(steps) > 1 else steps[0]

    def recent_runs(self, limit=20):
        return [{"run_id": r, "status": s[0], "tags": {"claro/catalogue": "products"}}
                for r, s in list(self.statuses.items())[:limit]]

    def status(self, ref):
        return "n/a"

    def has_job(self, name):
        if self.down:
            raise WebserverUnreachable("http://127.0.0.1:3999", "connection refused: nothing listens on that port")
        return name in self.jobs


class Project:
    def __init__(self, folder, url: str | None = None):
        self.spec = make_spec()
        self.url = url or f"sqlite:///{folder / 'store.db'}"
        self.launcher = FakeLauncher()
        store = self.store()
        store.import_records("products", pd.DataFrame({
            "sku": ["A1", "B2", "C3"], "title": ["Mug", "Cup", "Jug"], "price": [4.5, 3.0, 12.0],
            "status": ["active", "active", "draft"], "launched": ["2026-01-01", None, "2026-03-01"]}),
            change_set_id="import-1")
        self.tokens = ApiTokens(store)
        self.secrets = {}
        for name, scopes in {"reader": ["read"], "proposer": ["propose", "read"], "reviewer": ["review"],
                             "runner": ["run"], "admin": ["admin"], "trusted": ["propose"]}.items():
            self.secrets[name] = self.tokens.create(name, scopes, expires_in=timedelta(days=1), by="test").secret
        store.dispose()
        self.app = create_app(lambda: self.spec, lambda spec: CatalogueStore(spec, self.url), self.launcher,
                              signing_secret="x")
        self.client = TestClient(self.app)

    def store(self) -> CatalogueStore:
        return CatalogueStore(self.spec, self.url)

    def get(self, path, token="reader", **params):
        return self.client.get("/api/v1" + path, params=params, headers=self.auth(token))

    def post(self, path, body, token="proposer"):
        return self.client.post("/api/v1" + path, json=body, headers=self.auth(token))

    def auth(self, token):
        return {"Authorization": f"Bearer {self.secrets.get(token, token)}"} if token else {}


class Served:
    """An ASGI app served by uvicorn on a loopback port, in a thread."""

    def __init__(self, app):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        wait_until(lambda: (self.server.started, None), 60, 0.02, what="uvicorn to start")

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()
