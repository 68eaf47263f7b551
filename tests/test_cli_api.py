"""`claro api tokens create|list|revoke` through the console script, and the tokens they make used on the REST API."""

from __future__ import annotations

import json
import re

import pytest
from cli_project import claro, write_spec
from starlette.testclient import TestClient

from claro_dagster.catalogue.opening import open_store
from claro_dagster.spec import load_spec
from claro_dagster.web.app import create_app

SECRET = re.compile(r"^([A-Za-z0-9_-]{43})$", re.M)


class NoLauncher:
    def launch(self, *a, **kw):
        raise AssertionError("nothing is launched here")

    def status(self, ref):
        raise AssertionError("nothing is launched here")


@pytest.fixture
def project(tmp_path):
    spec = write_spec(tmp_path / "claro.yaml")
    home = tmp_path / "home"
    home.mkdir()
    return spec, home


def test_create_list_use_and_revoke(project):
    spec, home = project
    made = claro("api", "tokens", "create", "erp", "--scope", "read,propose", "--expires", "2w",
                 home=home, spec=spec, user="lead")
    assert made.returncode == 0, made.stderr
    assert "API token 1 for erp (read, propose), valid until" in made.stdout
    assert "claro api tokens revoke 1" in made.stdout
    secret, = SECRET.findall(made.stdout)

    listed = claro("api", "tokens", "list", "--format", "json", home=home, spec=spec)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["name"], r["scopes"], r["status"], r["by"]) for r in rows] == [
        (1, "erp", "read,propose", "active", "lead")]
    assert secret not in listed.stdout

    loaded = load_spec(spec)
    app = create_app(lambda: loaded, lambda s: open_store(s, home=home), NoLauncher(), signing_secret="x")
    client = TestClient(app)
    headers = {"Authorization": f"Bearer {secret}"}
    assert client.get("/api/v1/me", headers=headers).json()["scopes"] == ["read", "propose"]
    proposed = client.post("/api/v1/catalogues/products/proposals", headers=headers, json={"changes": [
        {"record": "SKU-1", "field": "title", "value": "Mug", "confidence": 99}]})
    assert proposed.status_code == 200 and proposed.json()["source"] == "api:erp"

    again = claro("api", "tokens", "create", "erp", "--scopes", "read", home=home, spec=spec)
    assert again.returncode == 1 and "an active API token named 'erp' exists already (id 1)" in again.stderr

    revoked = claro("api", "tokens", "revoke", "1", home=home, spec=spec)
    assert revoked.returncode == 0 and "revoked API token 1 (erp)" in revoked.stdout
    refused = client.get("/api/v1/me", headers=headers)
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]
    rows = json.loads(claro("api", "tokens", "list", "--format", "json", home=home, spec=spec).stdout)
    assert rows[0]["status"] == "revoked" and rows[0]["last_used"] is not None


def test_bad_input_says_what_to_do(project):
    spec, home = project
    scope = claro("api", "tokens", "create", "erp", "--scope", "write", home=home, spec=spec)
    assert scope.returncode == 1
    assert "unknown scope(s) 'write'; scopes are: read, propose, review, run, admin" in scope.stderr
    expires = claro("api", "tokens", "create", "erp", "--scope", "read", "--expires", "soon", home=home, spec=spec)
    assert expires.returncode == 1 and "not a duration" in expires.stderr
    missing = claro("api", "tokens", "revoke", "7", home=home, spec=spec)
    assert missing.returncode == 1 and "no API token with id 7; `claro api tokens list` lists them" in missing.stderr
