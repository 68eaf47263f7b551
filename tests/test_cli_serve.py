"""`claro serve` through the console script, as a user starts it: the app answers, a review link signs a reviewer in,
and behind a trusted proxy a failed sign-in is counted against the client named in X-Forwarded-For (so one guesser
cannot lock everybody behind the proxy out)."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
import requests
import sqlalchemy as sa
from cli_project import REPO, claro, claro_command, write_spec
from http_fakes import closed_port

from claro_dagster.catalogue.access import access_failures
from claro_dagster.catalogue.opening import open_store
from claro_dagster.spec import load_spec
from tests.e2e.harness import wait_until

LINK = re.compile(r"(/review/login\?token=[A-Za-z0-9_-]{43})")


@pytest.fixture
def served(tmp_path):
    spec = write_spec(tmp_path / "claro.yaml")
    spec.write_text(spec.read_text(encoding="utf-8") + "reviewers:\n  pricing: [ann]\n", encoding="utf-8")
    home = tmp_path / "home"
    home.mkdir()
    port = closed_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLARO_")}
    env.update(CLARO_HOME=str(home), CLARO_SPEC=str(spec), PYTHONPATH=str(REPO), CLARO_WEB_SECRET="s" * 32)
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen([*claro_command(), "serve", "--port", str(port), "--dagster-port", str(closed_port()),
                                "--forwarded-allow-ips", "127.0.0.1"], env=env, cwd=home, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    def alive() -> None:
        assert process.poll() is None, (tmp_path / "serve.log").read_text()

    try:
        wait_until(lambda: (requests.get(f"{base}/healthz", timeout=2).text == "ok", None), 60, 0.2,
                   what="claro serve to answer /healthz", guard=alive)
        yield base, spec, home
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_claro_serve_signs_a_reviewer_in_and_counts_failures_per_forwarded_client(served):
    base, spec, home = served
    guess = requests.get(f"{base}/review/login", params={"token": "x" * 43},
                         headers={"X-Forwarded-For": "203.0.113.9"}, allow_redirects=False, timeout=10)
    assert guess.status_code == 403 and "Access refused" in guess.text
    store = open_store(load_spec(spec), home=home)
    try:
        with store.engine.connect() as conn:
            clients = conn.execute(sa.select(access_failures.c.client)).scalars().all()
    finally:
        store.dispose()
    assert clients == ["203.0.113.9"]  # the proxy's own address (127.0.0.1) is not blamed

    invite = claro("review", "invite", "ann", "--base-url", base, home=home, spec=spec)
    assert invite.returncode == 0, invite.stderr
    session = requests.Session()
    signed_in = session.get(base + LINK.search(invite.stdout).group(1), timeout=10)
    assert signed_in.status_code == 200 and "Signed in as <strong>ann</strong>" in signed_in.text


def test_claro_serve_answers_the_rest_api_and_says_when_dagster_is_down(served):
    from claro_dagster.client import ClaroClient, DagsterUnavailable

    base, spec, home = served
    assert requests.get(f"{base}/api/v1/openapi.json", timeout=10).json()["openapi"] == "3.1.0"
    made = claro("api", "tokens", "create", "erp", "--scope", "read,propose,run", home=home, spec=spec)
    assert made.returncode == 0, made.stderr
    client = ClaroClient(base, made.stdout.strip().splitlines()[-1], max_attempts=1)
    result = client.propose([{"record": "SKU-9", "field": "title", "value": "Tray", "confidence": 99}], "products")
    assert (result.queued, result.source) == (1, "api:erp")  # capped to 80: below auto_apply, waits for review
    assert list(client.records("products")) == []
    with pytest.raises(DagsterUnavailable, match=r"The Dagster webserver at http://127\.0\.0\.1:\d+ is unreachable "
                                                 r"\(connection refused"):
        client.run("products", "analyse")
