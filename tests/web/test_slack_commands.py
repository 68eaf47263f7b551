"""The Slack slash-command endpoint: request signing, the commands, and Slack's 3-second budget.

Signing is checked against Slack's worked example in `tests/contracts/slack/request-signing-vectors.json`
(from Slack's "Verifying requests from Slack", as used by slackapi/python-slack-sdk's tests): the valid
vector, the SDK's negative cases (changed body, wrong signature, the real clock making it stale,
missing headers), and a replay of the same request.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import itertools
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pandas as pd
import pytest
import uvicorn

from claro_dagster.catalogue.changes import Change, ChangeSet
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.spec.models import (
    AttributeSpec,
    CatalogueSpec,
    DestinationSpec,
    PipelineSpec,
    ProjectSpec,
)
from claro_dagster.web.app import create_app
from claro_dagster.web.slack_commands import SlackRequestVerifier

CONTRACTS = Path(__file__).resolve().parents[1] / "contracts" / "slack"
SIGNING = json.loads((CONTRACTS / "request-signing-vectors.json").read_text())
VECTOR = SIGNING["vectors"][0]
SECRET = "test-signing-secret"
NOW = 1_764_300_000
DAGSTER = "http://dagster.test:3000"
WAIT = 10  # seconds: the longest any test waits for a background answer before failing


def make_spec() -> ProjectSpec:
    return ProjectSpec(
        catalogues={
            "products": CatalogueSpec(key="sku", attributes={
                "sku": AttributeSpec(type="text", required=True),
                "title": AttributeSpec(type="text"),
                "price": AttributeSpec(type="number"),
                "status": AttributeSpec(type="enum", values=["active", "draft"]),
            }),
            "suppliers": CatalogueSpec(key="code", attributes={"code": AttributeSpec(type="text")}),
        },
        pipelines={"products_onboarding": PipelineSpec(catalogue="products")},
        destinations={"warehouse": DestinationSpec(kind="postgres", catalogue="products", url_env="WAREHOUSE_URL",
                                                   table="catalogue_products")},
    )


class FakeLauncher:
    """Records launches; `hold()` makes the next launch wait until `release` is set (a busy Dagster)."""

    def __init__(self) -> None:
        self.launches: list[tuple[str, str, str | None]] = []
        self.statuses: list[str | None] = []
        self.started = threading.Event()
        self.finished = threading.Event()
        self.release: threading.Event | None = None
        self.fail: Exception | None = None

    def hold(self) -> threading.Event:
        self.release = threading.Event()
        return self.release

    def launch(self, catalogue: str, target: str, filter: str | None) -> str:
        self.started.set()
        if self.release is not None:
            assert self.release.wait(WAIT)
        if self.fail:
            raise self.fail
        self.launches.append((catalogue, target, filter))
        self.finished.set()
        return f"run-{len(self.launches):04d}"

    def status(self, ref: str | None) -> str:
        self.statuses.append(ref)
        return f"Run {ref}: SUCCESS" if ref else "Recent runs: run-0001 SUCCESS"


@pytest.fixture
def launcher() -> FakeLauncher:
    return FakeLauncher()


@pytest.fixture
def store_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


@dataclass
class Answer:
    status_code: int
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode()

    def json(self) -> Any:
        return json.loads(self.content)


class Client:
    """POSTs to the app served by uvicorn on a loopback port."""

    def __init__(self, base_url: str):
        self.base_url = base_url

    def post(self, path: str, *, content: str, headers: dict[str, str]) -> Answer:
        request = urllib.request.Request(self.base_url + path, data=content.encode(), headers=headers,
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=WAIT) as response:
                return Answer(response.status, response.read())
        except urllib.error.HTTPError as error:
            return Answer(error.code, error.read())


@contextlib.contextmanager
def make_client(launcher, store_url, **kwargs) -> Iterator[Client]:
    """The real app under uvicorn. The socket listens before the server thread starts, so requests
    queue in its backlog until uvicorn accepts them: no waiting for start-up."""
    kwargs.setdefault("signing_secret", SECRET)
    kwargs.setdefault("clock", lambda: NOW)
    app = create_app(make_spec, lambda spec: CatalogueStore(spec, store_url), launcher, webserver_url=DAGSTER,
                     **kwargs)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield Client(f"http://127.0.0.1:{sock.getsockname()[1]}")
    finally:
        server.should_exit = True
        thread.join(WAIT)
        sock.close()


@pytest.fixture
def client(launcher, store_url):
    with make_client(launcher, store_url) as c:
        yield c


_trigger = itertools.count(1)


def sign(secret: str, timestamp: str, body: str) -> str:
    """Slack's scheme, computed here with hmac/hashlib (independently of slack_sdk)."""
    digest = hmac.new(secret.encode(), f"v0:{timestamp}:{body}".encode(), hashlib.sha256).hexdigest()
    return f"v0={digest}"


def command(client: Client, text: str, *, response_url: str = "https://hooks.slack.test/x", ts: int = NOW):
    """POST a slash command as Slack does: form-encoded, signed, with a fresh trigger_id."""
    body = urlencode({"token": "deprecated", "team_id": "T1DC2JH3J", "channel_id": "C0123456789",
                      "user_id": "U2CERLKJA", "user_name": "roadrunner", "command": "/claro", "text": text,
                      "response_url": response_url, "trigger_id": f"{next(_trigger)}.47445629121.803a0bc8"})
    headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": str(ts),
               "X-Slack-Signature": sign(SECRET, str(ts), body)}
    return client.post("/slack/commands", content=body, headers=headers)


def answer(response) -> str:
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["response_type"] == "ephemeral"
    return data["text"]


# ---------------------------------------------------------------------------------------------- signing
def vector_request(client: Client, *, body: str | None = None, signature: str | None = None,
                   headers: dict[str, str] | None = None):
    body = VECTOR["body"] if body is None else body
    default = {"Content-Type": "application/x-www-form-urlencoded",
               "X-Slack-Request-Timestamp": VECTOR["timestamp"],
               "X-Slack-Signature": signature or VECTOR["expected_signature"]}
    return client.post("/slack/commands", content=body, headers=default if headers is None else headers)


@pytest.fixture
def vector_client(launcher, store_url):
    with make_client(launcher, store_url, signing_secret=VECTOR["signing_secret"],
                     clock=lambda: VECTOR["verify_with_now"]) as c:
        yield c


def test_vector_signature_is_what_slack_documents():
    assert sign(VECTOR["signing_secret"], VECTOR["timestamp"], VECTOR["body"]) == VECTOR["expected_signature"]


def test_slacks_signed_example_is_accepted(vector_client):
    # The example's text is empty: the answer is the command list.
    assert "/webhook-collect run <catalogue>" in answer(vector_request(vector_client))


def test_a_changed_body_or_wrong_signature_is_refused(vector_client, launcher):
    for response in (vector_request(vector_client, body=VECTOR["body"] + "------"),
                     vector_request(vector_client, signature="v0=lolno")):
        assert response.status_code == 401 and response.text == "invalid signature"
    assert vector_request(vector_client, headers={}).status_code == 401
    assert vector_request(vector_client, headers={"X-Slack-Request-Timestamp": "soon",
                                                  "X-Slack-Signature": "v0=x"}).status_code == 401


def test_a_stale_request_is_refused_with_the_real_clock(launcher, store_url):
    with make_client(launcher, store_url, signing_secret=VECTOR["signing_secret"], clock=time.time) as c:
        response = vector_request(c)
    assert response.status_code == 401 and response.text.startswith("stale request")


def test_a_replayed_request_is_refused(vector_client):
    assert vector_request(vector_client).status_code == 200
    replay = vector_request(vector_client)
    assert replay.status_code == 401 and replay.text.startswith("replayed request")


def test_the_window_is_five_minutes_either_way():
    verifier = SlackRequestVerifier(SECRET, clock=lambda: NOW)
    window = SIGNING["scheme"]["replay_window_seconds"]

    def check(ts: int) -> str | None:
        body = f"text=&trigger_id={ts}".encode()
        return verifier.problem(body, {"X-Slack-Request-Timestamp": str(ts),
                                       "X-Slack-Signature": sign(SECRET, str(ts), body.decode())})

    assert check(NOW - window) is None and check(NOW + window) is None
    assert check(NOW - window - 1).startswith("stale") and check(NOW + window + 1).startswith("stale")


def test_replays_are_forgotten_only_once_they_would_be_stale_anyway():
    now = [float(NOW)]
    verifier = SlackRequestVerifier(SECRET, clock=lambda: now[0])
    body = "text=status"
    headers = {"X-Slack-Request-Timestamp": str(NOW), "X-Slack-Signature": sign(SECRET, str(NOW), body)}
    assert verifier.problem(body.encode(), headers) is None
    now[0] = NOW + 300
    assert verifier.problem(body.encode(), headers).startswith("replayed")
    now[0] = NOW + 301
    assert verifier.problem(body.encode(), headers).startswith("stale")


def test_without_a_signing_secret_the_endpoint_is_unavailable(launcher, store_url, monkeypatch):
    monkeypatch.delenv("SLACK_SIGNING_SECRET", raising=False)
    with make_client(launcher, store_url, signing_secret=None) as c:
        response = command(c, "help")
    assert response.status_code == 503 and "SLACK_SIGNING_SECRET" in response.text


def test_the_signing_secret_may_come_from_the_environment(launcher, store_url, monkeypatch):
    monkeypatch.setenv("SLACK_SIGNING_SECRET", SECRET)
    with make_client(launcher, store_url, signing_secret=None) as c:
        assert "commands" in answer(command(c, "help"))


# ---------------------------------------------------------------------------------------------- run
def test_run_launches_an_operation_with_a_filter_and_links_the_run(client, launcher):
    text = answer(command(client, 'run products export status == "active"'))
    assert launcher.launches == [("products", "export", 'status == "active"')]
    assert f"<{DAGSTER}/runs/run-0001|run-0001>" in text and "`export` on `products`" in text


def test_run_undoes_slacks_escaping_and_smart_quotes(client, launcher):
    # Slack sends `>` as `&gt;` and the desktop client turns quotes into curly ones.
    answer(command(client, "run products analyse price &gt; 100 and title contains “Mug”"))
    assert launcher.launches == [("products", "analyse", 'price > 100 and title contains "Mug"')]


def test_run_a_pipeline_or_a_destination(client, launcher):
    answer(command(client, "run products products_onboarding"))
    answer(command(client, "RUN products warehouse"))
    assert launcher.launches == [("products", "products_onboarding", None), ("products", "warehouse", None)]


@pytest.mark.parametrize(("text", "expected"), [
    ("run produtcs export", "'produtcs' is not a catalogue, did you mean 'products'? (defined: products, suppliers)"),
    ("run products exprot", "'exprot' is not an operation or pipeline of 'products', did you mean 'export'? "
                            "(one of: products_onboarding, analyse, export, warehouse)"),
    ("run suppliers warehouse", "(one of: analyse, export)"),
    ("run products", "Usage: `/claro run <catalogue> <operation|pipeline> [filter]`. Catalogues: products, suppliers"),
    ("run products export colour == \"red\"", "unknown field 'colour'"),
    ("run products export price >", "The filter does not work on `products`"),
])
def test_run_refuses_unknown_catalogues_targets_and_bad_filters_with_the_choices(client, launcher, text, expected):
    assert expected in answer(command(client, text))
    assert launcher.launches == []


def test_a_failing_launch_is_answered_not_crashed(client, launcher):
    launcher.fail = ConnectionError("Dagster webserver at 127.0.0.1:3000 refused the connection")
    text = answer(command(client, "run products export"))
    assert text.startswith("Could not launch `export` on `products`") and "refused" in text


def test_a_slow_launch_is_acknowledged_in_time_and_the_run_id_follows_on_response_url(
        launcher, store_url, http_server):
    """`http_server` stands in for Slack's `response_url` (hooks.slack.com)."""
    release = launcher.hold()
    with make_client(launcher, store_url, ack_budget_seconds=0.2) as c:
        text = answer(command(c, "run products export", response_url=http_server.url + "/commands/T1/1/abc"))
        # Slack got its answer while the launch was still waiting for Dagster.
        assert launcher.started.is_set() and not launcher.finished.is_set()
        assert text.startswith("Launching `export` on `products`")
        assert http_server.requests == []
        release.set()
        assert http_server.wait_for(1, WAIT)
    [late] = [r.json() for r in http_server.requests]
    assert late["response_type"] == "ephemeral"
    assert f"<{DAGSTER}/runs/run-0001|run-0001>" in late["text"]


# ---------------------------------------------------------------------------------------------- status, review
def test_status_with_and_without_a_reference(client, launcher):
    assert answer(command(client, "status 4f1d2c3b")) == "Run 4f1d2c3b: SUCCESS"
    assert answer(command(client, "status")) == "Recent runs: run-0001 SUCCESS"
    assert launcher.statuses == ["4f1d2c3b", None]


def test_review_counts_pending_changes_per_catalogue_with_a_link(client, store_url):
    assert "Nothing is waiting for review." in answer(command(client, "review"))
    store = CatalogueStore(make_spec(), store_url)
    store.import_records("products", pd.DataFrame({"sku": ["A1", "B2", "C3"], "title": ["Mug", "Cup", "Jug"]}),
                         change_set_id="import-1")
    # 70 lies between the default review (50) and auto-apply (90) thresholds: queued for a person
    store.apply(ChangeSet("enrich-1", "products", "enrich",
                          [Change(k, "title", f"{k} XL", 70, "longer title") for k in ("A1", "B2", "C3")]))
    store.dispose()
    text = answer(command(client, "review"))
    assert text.startswith("*3 changes waiting for review*")
    assert "• products: *3*" in text and "• suppliers: *0*" in text
    assert f"<{client.base_url}/review|Open the review page>" in text


# ---------------------------------------------------------------------------------------------- help
def test_help_and_unknown_commands(client):
    help_text = answer(command(client, "help"))
    for verb in ("run <catalogue> <operation|pipeline> [filter]", "status [run id|batch]", "review", "help"):
        assert f"/claro {verb}" in help_text
    assert answer(command(client, "")) == help_text
    unknown = answer(command(client, "deploy everything"))
    assert unknown.startswith("I don't know the command `deploy`.") and help_text in unknown


def test_ssl_check_is_answered_with_nothing(client, launcher):
    body = "ssl_check=1&token=deprecated"
    response = client.post("/slack/commands", content=body, headers={
        "X-Slack-Request-Timestamp": str(NOW), "X-Slack-Signature": sign(SECRET, str(NOW), body)})
    assert response.status_code == 200 and response.content == b""
