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
import logging
import select
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import pandas as pd
import pytest
import uvicorn
from http_fakes import RecordingServer, Request

from claro_dagster.catalogue.changes import Change, ChangeSet
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.spec.models import (
    AttributeSpec,
    CatalogueSpec,
    DestinationSpec,
    NotificationsSpec,
    PipelineSpec,
    ProjectSpec,
    SlackCommandsSpec,
)
from claro_dagster.web.app import MAX_BODY_BYTES, create_app
from claro_dagster.web.slack_commands import SlackRequestVerifier

CONTRACTS = Path(__file__).resolve().parents[1] / "contracts" / "slack"
SIGNING = json.loads((CONTRACTS / "request-signing-vectors.json").read_text())
VECTOR = SIGNING["vectors"][0]
SECRET = "test-signing-secret"
NOW = 1_764_300_000
DAGSTER = "http://dagster.test:3000"
WAIT = 10  # seconds: the longest any test waits for a background answer before failing


USER = "U2CERLKJA"  # the user every `command(...)` comes from unless told otherwise
EVERY_COMMAND = SlackCommandsSpec(run=[USER], status=[USER], review=[USER])


def make_spec(slack_commands: SlackCommandsSpec = EVERY_COMMAND, token_env: str | None = None) -> ProjectSpec:
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
        notifications=NotificationsSpec(slack_token_env=token_env, slack_commands=slack_commands),
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
        self.jobs: set[str] = set()

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

    def has_job(self, name: str) -> bool:
        return name in self.jobs


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
def make_client(launcher, store_url, spec: ProjectSpec | None = None, **kwargs) -> Iterator[Client]:
    """The real app under uvicorn. The socket listens before the server thread starts, so requests
    queue in its backlog until uvicorn accepts them: no waiting for start-up."""
    kwargs.setdefault("signing_secret", SECRET)
    kwargs.setdefault("clock", lambda: NOW)
    spec = spec or make_spec()
    app = create_app(lambda: spec, lambda spec: CatalogueStore(spec, store_url), launcher, webserver_url=DAGSTER,
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


def command(client: Client, text: str, *, response_url: str = "https://hooks.slack.test/x", ts: int = NOW,
            user_id: str = USER):
    """POST a slash command as Slack does: form-encoded, signed, with a fresh trigger_id."""
    body = urlencode({"token": "deprecated", "team_id": "T1DC2JH3J", "channel_id": "C0123456789",
                      "user_id": user_id, "user_name": "roadrunner", "command": "/claro", "text": text,
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


def test_run_dbt_build_when_the_code_location_has_it(client, launcher):
    assert "no `dbt_build` job: set CLARO_DBT_PROJECT" in answer(command(client, "run products dbt_build"))
    launcher.jobs.add("dbt_build")
    assert "takes no filter" in answer(command(client, "run products dbt_build price > 1"))
    assert "`dbt_build` on `products`" in answer(command(client, "run products dbt_build"))
    assert launcher.launches == [("products", "dbt_build", None)]


@pytest.mark.parametrize(("text", "expected"), [
    ("run produtcs export", "'produtcs' is not a catalogue, did you mean 'products'? (defined: products, suppliers)"),
    ("run products exprot", "'exprot' is not an operation or pipeline of 'products', did you mean 'export'? "
                            "(one of: products_onboarding, analyse, export, enrich, dedupe, warehouse)"),
    ("run suppliers warehouse", "(one of: analyse, export, enrich, dedupe)"),
    ("run products", "Usage: `/claro run <catalogue> <operation|pipeline> [filter]`. Catalogues: products, suppliers"),
    ("run products export colour == \"red\"", "unknown field 'colour'"),
    ("run products export price >", "The filter does not work on `products`"),
    ("run products export price > \"100\"", "'price' is a number attribute and \"100\" is text"),
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
    assert answer(command(client, "status")) == ("*Recent runs*\nRecent runs: run-0001 SUCCESS\n*Batches*\n"
                                                 "no batches yet\n*Review queue*: 0 changes waiting")
    assert launcher.statuses == ["4f1d2c3b", None]


# ---------------------------------------------------------------------------------------------- Dagster is down
def test_with_the_webserver_down_commands_say_so_and_status_answers_from_the_store(store_url, closed_port):
    """The real launcher against a port nothing listens on: `run` says the webserver is unreachable and how to
    start it (never a GraphQL query); `status` lists the runs the outbox recorded, the batches and the queue."""
    from claro_dagster.catalogue.batches import BatchRegistry
    from claro_dagster.resources.dagster_api import DagsterLauncher

    spec = make_spec()
    store = CatalogueStore(spec, store_url)
    store.import_records("products", pd.DataFrame({"sku": ["A1", "B2"], "title": ["Mug", "Cup"]}),
                         change_set_id="import-1")
    store.apply(ChangeSet("enrich-1", "products", "enrich", [Change("A1", "title", "Mug XL", 70, "longer")]))
    batches = BatchRegistry(store)
    batches.register("acme-2026-12-01-abc", catalogue="products", source="acme", filename="acme.csv", uri="/in/x")
    batches.set_status("acme-2026-12-01-abc", "halted", stage="batch_validated",
                       message="23 of 500 rows failed validation\nrow 12: price")
    run = "4f1d2c3b-aaaa-bbbb-cccc-0123456789ab"
    for event, extra in (("run.started", {}), ("run.failed", {"error": "batch_validated: 23 rows failed"})):
        store.append_event(event, change_set=f"run:{run}", catalogue="products", payload={
            "run_id": run, "job": "products_onboarding", "status": event.split(".")[1], "catalogue": "products",
            "pipeline": "products_onboarding", "batch": "acme-2026-12-01-abc", **extra})
    store.dispose()
    launcher = DagsterLauncher(lambda: spec, lambda s: CatalogueStore(s, store_url), port=closed_port, timeout=2)
    down = (f"The Dagster webserver at http://127.0.0.1:{closed_port} is unreachable (connection refused: nothing "
            "listens on that port). Start it with `claro dev` (the Dagster webserver and daemon), then try again.")
    with make_client(launcher, store_url, spec) as c:
        assert answer(command(c, "run products export")) == f"Could not launch `export` on `products`: {down}"
        status = answer(command(c, "status"))
        assert status.splitlines() == [
            f"_{down}_",
            "*Last runs recorded in the catalogue store*",
            status.splitlines()[2],
            "*Batches*",
            "• `acme-2026-12-01-abc` (acme.csv): halted at batch_validated: 23 of 500 rows failed validation",
            "*Review queue*: 1 change waiting: products 1"]
        assert status.splitlines()[2].startswith("• `4f1d2c3b` products_onboarding on products batch "
                                                 "`acme-2026-12-01-abc`: failed ")
        assert status.splitlines()[2].endswith(" UTC: batch_validated: 23 rows failed")
        by_run = answer(command(c, "status 4f1d2c3b"))
        assert by_run.startswith(f"{down}\nLast recorded in the catalogue store: run 4f1d2c3b failed ")
        by_batch = answer(command(c, "status acme-2026-12-01-abc"))
        assert by_batch.startswith("batch acme-2026-12-01-abc (acme.csv): halted")
    for text in (status, by_run):
        assert "query" not in text.lower() and "variables" not in text


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


# ---------------------------------------------------------------------------------------------- who may
OTHER = "U0OTHER01"
GROUP = "S0CATALOG"


class FakeSlackAPI(RecordingServer):
    """Slack's Web API on 127.0.0.1 for `usergroups.users.list`: members per group, or an error."""

    def __init__(self, groups: dict[str, list[str]], error: str | None = None) -> None:
        self.groups, self.error = groups, error
        super().__init__(self._reply)

    def lookups(self) -> list[dict[str, list[str]]]:
        return [parse_qs(r.body.decode()) for r in self.requests if r.path.endswith("/usergroups.users.list")]

    def _reply(self, request: Request):
        if self.error:
            return 200, {}, {"ok": False, "error": self.error}
        group = parse_qs(request.body.decode())["usergroup"][0]
        if group not in self.groups:
            return 200, {}, {"ok": False, "error": "no_such_subteam"}
        return 200, {}, {"ok": True, "users": self.groups[group]}


def refused(text: str, verb: str, user: str = USER) -> bool:
    return text.startswith(f"Sorry, you are not allowed to use `/claro {verb}` here") and \
        f"(`{user}`)" in text and f"`notifications.slack_commands.{verb}`" in text


def test_a_user_the_spec_does_not_name_is_refused_politely_and_the_refusal_is_logged(launcher, store_url, caplog):
    spec = make_spec(SlackCommandsSpec(run=[OTHER], status=[USER]))
    with caplog.at_level(logging.WARNING, logger="claro_dagster.web.slack_commands"), \
            make_client(launcher, store_url, spec) as c:
        assert refused(answer(command(c, "run products export")), "run")  # answer() checks it is ephemeral
        assert answer(command(c, "run products export", user_id=OTHER)).startswith("Launched `export`")
        assert "Recent runs: run-0001 SUCCESS" in answer(command(c, "status"))
        assert refused(answer(command(c, "status", user_id=OTHER)), "status", OTHER)
        assert "/claro run" in answer(command(c, "help", user_id=OTHER))  # help is for everyone
    assert launcher.launches == [("products", "export", None)]
    assert launcher.statuses == [None]
    logged = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert logged == [f"Slack command refused: user {USER} (roadrunner, team T1DC2JH3J) may not use 'run'; "
                      "asked '/claro run products export'",
                      f"Slack command refused: user {OTHER} (roadrunner, team T1DC2JH3J) may not use 'status'; "
                      "asked '/claro status'"]


def test_nobody_listed_means_nobody_and_a_star_means_everyone(launcher, store_url):
    with make_client(launcher, store_url, make_spec(SlackCommandsSpec())) as c:
        for verb in ("run products export", "status", "review"):
            assert refused(answer(command(c, verb)), verb.split()[0])
    assert launcher.launches == [] and launcher.statuses == []
    with make_client(launcher, store_url, make_spec(SlackCommandsSpec(status=["*"]))) as c:
        assert "Recent runs: run-0001 SUCCESS" in answer(command(c, "status", user_id=OTHER))
        assert refused(answer(command(c, "run products export", user_id=OTHER)), "run", OTHER)


def test_members_of_a_listed_user_group_may_use_the_command(launcher, store_url, monkeypatch):
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-test")
    spec = make_spec(SlackCommandsSpec(run=[GROUP]), token_env="SLACK_BOT_TOKEN")
    with FakeSlackAPI({GROUP: [USER, "U0SOMEONE"]}) as slack:
        # The lookup goes to the spec's notifications.slack_api_url (a Slack-compatible gateway, here local).
        spec = spec.model_copy(update={"notifications": spec.notifications.model_copy(
            update={"slack_api_url": f"{slack.url}/api/"})})
        with make_client(launcher, store_url, spec) as c:
            assert answer(command(c, "run products export")).startswith("Launched `export`")
            assert refused(answer(command(c, "run products export", user_id=OTHER)), "run", OTHER)
            assert answer(command(c, "run products analyse")).startswith("Launched `analyse`")
            # One lookup with the bot token, then the members are remembered for a minute.
            assert slack.lookups() == [{"usergroup": [GROUP]}]
            assert slack.requests[0].headers["Authorization"] == "Bearer xoxb-test"
    assert launcher.launches == [("products", "export", None), ("products", "analyse", None)]


def test_when_slack_cannot_list_a_group_the_user_is_refused_and_told_why(launcher, store_url, monkeypatch):
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-test")
    spec = make_spec(SlackCommandsSpec(run=[GROUP]), token_env="SLACK_BOT_TOKEN")
    with FakeSlackAPI({}, error="missing_scope") as slack, \
            make_client(launcher, store_url, spec, slack_api_url=f"{slack.url}/api/") as c:
        text = answer(command(c, "run products export"))
    assert refused(text, "run")
    assert f"I could not check your user groups: Slack did not list the members of {GROUP}: missing_scope" in text
    assert launcher.launches == []


# ---------------------------------------------------------------------------------------------- body size
def raw_request(client: Client, head: str, body_parts: Iterator[bytes]) -> tuple[int, bytes]:
    """Send a request over a plain socket, part by part, stopping early if the server has answered;
    returns the status and body of the answer. A server that waits for the whole body never answers."""
    host, port = client.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=WAIT) as sock:
        sock.sendall(head.encode())
        for part in body_parts:
            if select.select([sock], [], [], 0)[0]:  # the server has answered: stop sending
                break
            try:
                sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError):  # the server answered and closed: stop sending
                break
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


def _length(data: bytes) -> int:
    head = data.split(b"\r\n\r\n", 1)[0].decode().lower()
    return next((int(line.split(":", 1)[1]) for line in head.splitlines() if line.startswith("content-length:")), 0)


def signed_head(body_length: str, signature_body: str = "") -> str:
    return ("POST /slack/commands HTTP/1.1\r\nHost: claro\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"X-Slack-Request-Timestamp: {NOW}\r\nX-Slack-Signature: {sign(SECRET, str(NOW), signature_body)}\r\n"
            f"{body_length}\r\n")


def test_an_oversize_signed_body_is_refused_with_413_before_anything_else(client, launcher):
    body = urlencode({"user_id": USER, "command": "/claro", "text": "run products export " + "x" * MAX_BODY_BYTES})
    response = client.post("/slack/commands", content=body, headers={
        "Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": str(NOW),
        "X-Slack-Signature": sign(SECRET, str(NOW), body)})
    assert response.status_code == 413 and "not a Slack command" in response.text
    assert launcher.launches == []
    # A body at the cap is still read and checked (here: signed, so it is answered).
    fits = urlencode({"user_id": USER, "command": "/claro", "text": "help"})
    fits += "&pad=" + "x" * (MAX_BODY_BYTES - len(fits) - 5)
    assert len(fits) == MAX_BODY_BYTES
    assert "commands" in answer(client.post("/slack/commands", content=fits, headers={
        "Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": str(NOW),
        "X-Slack-Signature": sign(SECRET, str(NOW), fits)}))


def test_a_huge_declared_length_is_refused_without_waiting_for_the_body(client):
    status, body = raw_request(client, signed_head("Content-Length: 10000000000\r\n"), iter([b"text=help"]))
    assert status == 413 and b"not a Slack command" in body


def test_an_endless_chunked_body_is_cut_off_at_the_cap(client, launcher):
    """No Content-Length: the body streams in chunks and never ends; the answer comes once the cap is passed."""
    chunk = b"x" * 8192
    parts = (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for _ in range(4 * MAX_BODY_BYTES // len(chunk)))
    status, body = raw_request(client, signed_head("Transfer-Encoding: chunked\r\n"), parts)
    assert status == 413 and b"not a Slack command" in body
    assert launcher.launches == []


def test_a_slow_group_lookup_promises_no_launch_and_the_refusal_follows(launcher, store_url, monkeypatch,
                                                                        http_server):
    """Slack is slow to list the group: the interim answer promises nothing; the refusal comes on response_url."""
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-test")
    spec = make_spec(SlackCommandsSpec(run=[GROUP]), token_env="SLACK_BOT_TOKEN")
    with FakeSlackAPI({GROUP: [USER]}) as slack:
        slack.answer("hang")
        with make_client(launcher, store_url, spec, slack_api_url=f"{slack.url}/api/", ack_budget_seconds=0.2) as c:
            text = answer(command(c, "run products export", user_id=OTHER,
                                  response_url=http_server.url + "/commands/T1/1/abc"))
            assert text == "Working on it… the answer follows here in a moment."
            slack.release.set()  # the held lookup is dropped; the retry answers: OTHER is not a member
            assert http_server.wait_for(1, WAIT)
    [late] = [r.json() for r in http_server.requests]
    assert refused(late["text"], "run", OTHER) and launcher.launches == []
