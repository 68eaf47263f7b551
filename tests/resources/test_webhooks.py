"""Signed webhook delivery against real local receivers that verify with the `standardwebhooks` library.

Signatures are checked against the published vectors in
tests/contracts/standard-webhooks/test-vectors.json (Standard Webhooks spec, `v1` HMAC-SHA256).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from http_fakes import RecordingServer, Reply, Request, closed_port
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from claro_dagster.catalogue.changes import Change, ChangeSet
from claro_dagster.catalogue.outbox import WebhookOutbox
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.resources.webhooks import (
    WebhookConfigError,
    WebhookSender,
    run_delivery_loop,
    sign,
)
from claro_dagster.spec.models import (
    AttributeSpec,
    CatalogueSpec,
    NotificationsSpec,
    ProjectSpec,
    WebhookSpec,
)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SECRET_ENV = "CLARO_TEST_WEBHOOK_SECRET"
VECTORS = Path(__file__).resolve().parents[1] / "contracts" / "standard-webhooks" / "test-vectors.json"
REPO = Path(__file__).resolve().parents[2]


def wait_until(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    """Wait for a condition with a deadline (polling, not sleeping as synchronisation)."""
    deadline = time.monotonic() + timeout
    event = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        event.wait(0.02)


class Receiver:
    """A webhook endpoint on a `RecordingServer`: verifies each message with the library, answers from a
    per-path script.

    An answer is a status code, ("redirect", location), "hang" (hold the request until released),
    "hold" (like hang, but counted in `holding`) or "garbage" (a reply that is not HTTP). The
    default answer is 204. Unverifiable messages get 401.
    """

    def __init__(self, secret: str = SECRET):
        self.verifier = Webhook(secret)
        self.messages: list[dict] = []
        self.answers: dict[str, deque] = {}
        self.holding = 0
        self.server = RecordingServer(self._reply)
        self.url, self.release, self.lock = self.server.url, self.server.release, self.server.lock

    def _reply(self, request: Request) -> Reply:
        headers = request.headers
        try:
            payload, error = self.verifier.verify(request.body, headers), None
        except WebhookVerificationError as exc:
            payload, error = None, str(exc)
        queue = self.answers.get(request.path)
        answer = queue.popleft() if queue else 204
        self.messages.append({"path": request.path, "id": headers.get("webhook-id"),
                              "timestamp": headers.get("webhook-timestamp"), "headers": headers,
                              "body": request.body, "payload": payload, "error": error, "answer": answer,
                              "at": time.time()})
        if answer == "hold":
            self.holding += 1
            return "hang"
        if answer in ("hang", "garbage"):
            return answer
        location = None
        if isinstance(answer, tuple):
            answer, location = 301, answer[1]
        status = 401 if error else answer
        return status, {"Location": location} if location else {}, b"bad payload" if status == 400 else b""

    def answer(self, path: str, *answers) -> None:
        self.answers.setdefault(path, deque()).extend(answers)

    def at(self, path: str) -> list[dict]:
        with self.lock:
            return [m for m in self.messages if m["path"] == path]

    def event_ids(self, path: str) -> list[int]:
        out = []
        for m in self.at(path):
            items = m["payload"]["data"]["events"] if m["payload"]["type"] == "batch" else [m["payload"]]
            out.extend(i["data"]["event_id"] for i in items)
        return out

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(autouse=True)
def secret(monkeypatch):
    monkeypatch.setenv(SECRET_ENV, SECRET)


def hook(url: str, mode: str = "per_change", **kw) -> WebhookSpec:
    kw.setdefault("events", ["change.*"])
    kw.setdefault("secret_env", SECRET_ENV)
    return WebhookSpec(url=url, mode=mode, **kw)


def project(**webhooks: WebhookSpec) -> ProjectSpec:
    return ProjectSpec(
        catalogues={"products": CatalogueSpec(key="sku", attributes={"sku": AttributeSpec(type="text"),
                                                                     "price": AttributeSpec(type="number")})},
        notifications=NotificationsSpec(webhooks=webhooks))


def open_store(spec: ProjectSpec, path: Path) -> CatalogueStore:
    return CatalogueStore(spec, f"sqlite:///{path / 'catalogue.db'}")


def create(store: CatalogueStore, n: int, first: int = 0) -> None:
    skus = [f"SKU-{i:04d}" for i in range(first, first + n)]
    store.import_records("products", pd.DataFrame({"sku": skus, "price": [10.0 + i for i in range(n)]}),
                         change_set_id=f"import-{first}-{n}", run_id="run-1")


# ---------------------------------------------------------------------- signing
def test_signatures_match_the_published_vectors():
    vectors = json.loads(VECTORS.read_text())
    for v in vectors["vectors"]:
        headers = sign(v["secret"], v["msg_id"], v["timestamp"], v["payload"].encode())
        assert headers == {"webhook-id": v["msg_id"], "webhook-timestamp": str(v["timestamp"]),
                           "webhook-signature": v["expected_signature"]}, v["name"]
        unprefixed = v["secret"].removeprefix("whsec_")
        assert sign(unprefixed, v["msg_id"], v["timestamp"], v["payload"])["webhook-signature"] == \
            v["expected_signature"]
    first = vectors["vectors"][0]
    wrong = vectors["negative_cases"][0]["signature"]
    assert sign(first["secret"], first["msg_id"], first["timestamp"], first["payload"])["webhook-signature"] != wrong


def test_a_receiver_accepts_our_signature_among_decoys_and_rejects_tampering():
    now = int(time.time())
    body = b'{"type":"change.applied","timestamp":"2026-11-28T12:00:00Z","data":{"record":"A1"}}'
    headers = sign(SECRET, "msg_1", now, body)
    decoy = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="
    headers["webhook-signature"] = f"{decoy} v2,{decoy[3:]} {headers['webhook-signature']} {decoy}"
    assert Webhook(SECRET).verify(body, headers)["data"]["record"] == "A1"
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace(b"A1", b"A2"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").verify(body, headers)


# ---------------------------------------------------------------------- delivering
def test_each_change_arrives_signed_and_verified_by_the_library(receiver, store_url):
    spec = project(erp=hook(receiver.url + "/erp"))
    store = CatalogueStore(spec, store_url)  # both backends: SQLite returns times as text, PostgreSQL as datetimes
    create(store, 2)
    store.apply(ChangeSet("reprice-1", "products", "reprice", [Change("SKU-0001", "price", 19.9, 97, "promo")],
                          run_id="run-2"))
    store.apply(ChangeSet("fill-1", "products", "enrich", [Change("NEW-1", "price", 30.0, 99, "found")],
                          run_id="run-3"))
    sender = WebhookSender(timeout=5)
    report = sender.deliver_due(store, spec)
    assert (report.planned, report.delivered, report.failed, report.errors) == (4, 4, 0, {})
    got = receiver.at("/erp")
    assert [m["error"] for m in got] == [None, None, None, None]
    assert all(m["headers"]["Content-Type"] == "application/json" for m in got)
    assert all(abs(int(m["timestamp"]) - time.time()) < 60 for m in got)
    outbox = sender.outbox(store)
    assert [m["id"] for m in got] == [d.webhook_id for d in sorted(outbox.log(), key=lambda d: d.id)]
    created, _, changed, field_by_field = (m["payload"] for m in got)
    assert created["type"] == "change.applied" and created["data"]["created"] is True
    # not only a flag: the link to fetch the new record with an API token ({record}: data.record, URL-encoded)
    assert created["data"]["link"] == "/api/v1/catalogues/products/records/{record}"
    assert created["data"]["record"] == "SKU-0000" and created["data"]["event_id"] == 1
    assert changed["type"] == "change.applied"
    assert {k: changed["data"][k] for k in ("event_id", "catalogue", "record", "field", "old", "new", "confidence",
                                            "reason", "operation", "run_id", "change_set")} == {
        "event_id": 3, "catalogue": "products", "record": "SKU-0001", "field": "price", "old": 11.0, "new": 19.9,
        "confidence": 97, "reason": "promo", "operation": "reprice", "run_id": "run-2", "change_set": "reprice-1"}
    stamp = datetime.fromisoformat(changed["timestamp"].replace("Z", "+00:00"))
    assert changed["timestamp"].endswith("Z") and abs((stamp - datetime.now(UTC)).total_seconds()) < 60
    # a record a per-field change set creates is one message like an imported one, not updates from null
    assert {k: field_by_field["data"][k] for k in ("created", "link", "record", "field", "operation", "run_id")} == {
        "created": True, "link": "/api/v1/catalogues/products/records/{record}", "record": "NEW-1", "field": None,
        "operation": "enrich", "run_id": "run-3"}
    assert outbox.counts() == {"pending": 0, "delivered": 4, "failed": 0, "dead": 0}
    assert sender.deliver_due(store, spec).busy is False
    sender.close()
    store.dispose()


def test_batched_messages_carry_their_events_in_order(receiver, store_url):
    spec = project(pim=hook(receiver.url + "/pim", "batched", max_batch=4, max_wait_seconds=0))
    store = CatalogueStore(spec, store_url)
    create(store, 10)
    report = WebhookSender().deliver_due(store, spec)
    assert (report.planned, report.delivered, report.events_delivered) == (3, 3, 10)
    payloads = [m["payload"] for m in receiver.at("/pim")]
    assert [p["type"] for p in payloads] == ["batch"] * 3
    assert [[e["data"]["event_id"] for e in p["data"]["events"]] for p in payloads] == [
        [1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    item = payloads[0]["data"]["events"][0]
    assert set(item) == {"type", "timestamp", "data"} and item["type"] == "change.applied"
    assert item["timestamp"].endswith("Z") and payloads[0]["timestamp"].endswith("Z")
    store.dispose()


def test_a_receiver_with_another_secret_rejects_and_the_delivery_fails(tmp_path):
    other = Receiver(secret="whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")
    try:
        spec = project(erp=hook(other.url + "/erp"))
        store = open_store(spec, tmp_path)
        create(store, 1)
        report = WebhookSender().deliver_due(store, spec)
        assert report.failed == 1 and report.outcomes[0].status_code == 401
        assert other.at("/erp")[0]["error"] == "No matching signature found"
    finally:
        other.close()


@pytest.mark.parametrize(("answer", "code", "error"), [
    (("redirect", "/moved"), 301, "HTTP 301 redirect to /moved (redirects are not followed)"),
    (400, 400, "HTTP 400: bad payload"),
    (500, 500, "HTTP 500"),
    ("hang", None, "timed out"),
    ("garbage", None, "connection failed"),
    ("refused", None, "refused"),
])
def test_a_failing_receiver_is_recorded_rescheduled_and_blocks_later_deliveries(receiver, tmp_path, answer, code,
                                                                                 error):
    url = f"http://127.0.0.1:{closed_port()}/hook" if answer == "refused" else receiver.url + "/hook"
    if answer != "refused":
        receiver.answer("/hook", answer)
    spec = project(erp=hook(url))
    store = open_store(spec, tmp_path)
    create(store, 3)
    sender = WebhookSender(timeout=0.5)
    t0 = datetime.now(UTC)
    report = sender.deliver_due(store, spec, now=t0)  # never raises
    assert (report.planned, report.delivered, report.failed) == (3, 0, 1)
    outcome = report.outcomes[0]
    assert (outcome.status, outcome.status_code) == ("failed", code)
    assert error in outcome.error
    head = sender.outbox(store).get(outcome.delivery_id)
    assert (head.status, head.attempts, head.last_status_code) == ("failed", 1, code)
    assert error in head.last_error
    assert t0 + timedelta(seconds=24) <= head.next_attempt_at <= t0 + timedelta(seconds=36)
    assert len(receiver.at("/hook")) == (0 if answer == "refused" else 1)  # no later delivery was tried
    assert receiver.at("/moved") == []
    receiver.release.set()
    sender.close()


def test_retries_follow_the_outbox_schedule_until_the_dead_letter_then_retry_id(receiver, tmp_path):
    receiver.answer("/hook", 503, 503, 503)
    spec = project(erp=hook(receiver.url + "/hook"))
    store = open_store(spec, tmp_path)
    create(store, 2)
    sender = WebhookSender(max_attempts=3)
    outbox = sender.outbox(store)
    now = datetime.now(UTC)
    statuses = []
    for _ in range(3):
        report = sender.deliver_due(store, spec, now=now)
        statuses.append([o.status for o in report.outcomes])
        head = outbox.log(subscription="erp", limit=2)[-1]
        assert sender.deliver_due(store, spec, now=now).outcomes == []  # one attempt per call, then wait
        now = head.next_attempt_at or now
    assert statuses == [["failed"], ["failed"], ["dead", "delivered"]]
    dead = outbox.log(status="dead")[0]
    assert dead.attempts == 3 and dead.last_status_code == 503
    ids = [m["id"] for m in receiver.at("/hook")]
    assert ids[:3] == [dead.webhook_id] * 3 and ids[3] != dead.webhook_id
    outbox.retry(dead.id)
    report = sender.deliver_due(store, spec)
    assert [(o.delivery_id, o.status) for o in report.outcomes] == [(dead.id, "delivered")]
    assert receiver.at("/hook")[-1]["id"] == dead.webhook_id  # same webhook-id: the receiver can deduplicate
    assert outbox.counts() == {"pending": 0, "delivered": 2, "failed": 0, "dead": 0}


def test_a_subscription_receives_its_events_in_order_across_failures(receiver, tmp_path):
    receiver.answer("/hook", 204, 500)
    spec = project(erp=hook(receiver.url + "/hook"))
    store = open_store(spec, tmp_path)
    create(store, 5)
    sender = WebhookSender()
    t0 = datetime.now(UTC)
    assert [o.status for o in sender.deliver_due(store, spec, now=t0).outcomes] == ["delivered", "failed"]
    assert sender.deliver_due(store, spec, now=t0 + timedelta(seconds=10)).outcomes == []
    report = sender.deliver_due(store, spec, now=t0 + timedelta(hours=1))
    assert [o.status for o in report.outcomes] == ["delivered"] * 4
    assert receiver.event_ids("/hook") == [1, 2, 2, 3, 4, 5]


def test_one_receiver_down_or_slow_never_holds_up_the_others(receiver, tmp_path):
    receiver.answer("/slow", "hang")
    spec = project(down=hook(f"http://127.0.0.1:{closed_port()}/hook"), slow=hook(receiver.url + "/slow"),
                   up=hook(receiver.url + "/up"))
    store = open_store(spec, tmp_path)
    create(store, 20)
    sender = WebhookSender(timeout=60)  # the slow receiver would hold a single queue for a minute
    stop = threading.Event()
    loop = threading.Thread(target=run_delivery_loop, args=(store, spec, stop, 0.05), kwargs={"sender": sender})
    loop.start()
    try:
        wait_until(lambda: len(receiver.at("/up")) == 20, what="20 deliveries to the healthy receiver")
        create(store, 5, first=20)
        wait_until(lambda: len(receiver.at("/up")) == 25, what="the next 5 deliveries")
        assert len(receiver.at("/slow")) == 1  # still holding its first request all this time
        outbox = sender.outbox(store)
        wait_until(lambda: outbox.log(subscription="down", status="failed"), what="the refused delivery")
        down = outbox.log(subscription="down", status="failed")
        assert len(down) == 1 and "refused" in down[0].last_error.lower()
        assert receiver.event_ids("/up") == list(range(1, 26))
    finally:
        receiver.release.set()
        stop.set()
        loop.join(timeout=90)
    assert not loop.is_alive()


def test_a_missing_or_malformed_secret_is_named_and_the_others_are_served(receiver, tmp_path, monkeypatch):
    monkeypatch.delenv("CLARO_PIM_SECRET", raising=False)
    monkeypatch.setenv("CLARO_BAD_SECRET", "whsec_!!not base64!!")
    spec = project(erp=hook(receiver.url + "/erp"), pim=hook(receiver.url + "/pim", secret_env="CLARO_PIM_SECRET"),
                   bad=hook(receiver.url + "/bad", secret_env="CLARO_BAD_SECRET"))
    store = open_store(spec, tmp_path)
    create(store, 2)
    sender = WebhookSender()
    report = sender.deliver_due(store, spec)
    assert report.delivered == 2 and len(receiver.at("/erp")) == 2
    assert report.errors["pim"].startswith("webhook 'pim': environment variable CLARO_PIM_SECRET is not set")
    assert "webhook 'bad': environment variable CLARO_BAD_SECRET does not hold a valid signing secret" in \
        report.errors["bad"]
    assert sender.outbox(store).log(subscription="pim") == []  # nothing planned, nothing lost: it waits
    with pytest.raises(WebhookConfigError, match="CLARO_PIM_SECRET") as caught:
        sender.check(spec)
    assert "CLARO_BAD_SECRET" in str(caught.value)
    with pytest.raises(WebhookConfigError, match="webhook 'pim'"):
        run_delivery_loop(store, spec, threading.Event())
    monkeypatch.setenv("CLARO_PIM_SECRET", SECRET)
    assert sender.deliver_due(store, spec).delivered == 2 and len(receiver.at("/pim")) == 2


def test_scheduled_subscriptions_are_planned_at_their_cron_ticks(receiver, tmp_path):
    spec = project(nightly=hook(receiver.url + "/nightly", "scheduled", cron="0 * * * *", max_batch=100))
    store = open_store(spec, tmp_path)
    create(store, 3)
    sender = WebhookSender()
    t0 = datetime.now(UTC).replace(minute=15, second=0, microsecond=0)
    assert sender.deliver_due(store, spec, now=t0).planned == 0  # registered at 10:15; first tick 11:00
    assert sender.deliver_due(store, spec, now=t0 + timedelta(minutes=44)).planned == 0
    report = sender.deliver_due(store, spec, now=t0 + timedelta(minutes=45, seconds=1))
    assert (report.planned, report.delivered, report.events_delivered) == (1, 1, 3)
    create(store, 2, first=3)
    assert sender.deliver_due(store, spec, now=t0 + timedelta(minutes=90)).planned == 0
    assert sender.deliver_due(store, spec, now=t0 + timedelta(minutes=105)).events_delivered == 2
    assert receiver.event_ids("/nightly") == [1, 2, 3, 4, 5]


def test_the_sender_is_a_dagster_resource(receiver, tmp_path):
    spec = project(erp=hook(receiver.url + "/erp", "batched", max_batch=50, max_wait_seconds=0))
    store = open_store(spec, tmp_path)
    create(store, 4)

    @dg.asset
    def webhook_deliveries(webhooks: WebhookSender) -> dg.MaterializeResult:
        report = webhooks.deliver_due(store, spec)
        return dg.MaterializeResult(metadata={"delivered": report.delivered, "summary": report.summary()})

    result = dg.materialize([webhook_deliveries], resources={"webhooks": WebhookSender(timeout=5)})
    assert result.success
    metadata = result.asset_materializations_for_node("webhook_deliveries")[0].metadata
    assert metadata["delivered"].value == 1
    assert receiver.event_ids("/erp") == [1, 2, 3, 4]


# ---------------------------------------------------------------------- a delivery process killed with SIGKILL
LOOP = """
import os, threading
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.resources.webhooks import WebhookSender, run_delivery_loop
from claro_dagster.spec.models import ProjectSpec
spec = ProjectSpec.model_validate_json(os.environ["CLARO_TEST_SPEC"])
store = CatalogueStore(spec, os.environ["CLARO_TEST_STORE"])
run_delivery_loop(store, spec, threading.Event(), 0.05, sender=WebhookSender(timeout=30), max_deliveries=100)
"""


def test_a_delivery_process_killed_mid_batch_loses_nothing_and_resends_with_the_same_ids(receiver, tmp_path):
    spec = project(erp=hook(receiver.url + "/erp", "batched", max_batch=10, max_wait_seconds=0))
    store = open_store(spec, tmp_path)
    create(store, 400)  # 40 deliveries
    receiver.answer("/erp", *[204] * 12, "hold")  # the 13th message is in flight when the process dies
    env = {**os.environ, "CLARO_TEST_SPEC": spec.model_dump_json(), "CLARO_TEST_STORE": store.url,
           SECRET_ENV: SECRET}

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", LOOP], env=env, cwd=REPO, stderr=subprocess.PIPE)

    first = start()
    try:
        wait_until(lambda: receiver.holding == 1 or first.poll() is not None, timeout=120,
                   what="the 13th delivery to be in flight")
        assert first.poll() is None, first.stderr.read().decode()[-2000:]
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
        first.stderr.close()
    assert len(receiver.at("/erp")) == 13
    receiver.release.set()

    second = start()
    try:
        outbox = WebhookOutbox(store)
        wait_until(lambda: outbox.counts("erp")["delivered"] == 40 or second.poll() is not None,
                   timeout=120, what="every delivery to be recorded as delivered after the restart")
        assert second.poll() is None, second.stderr.read().decode()[-2000:]
    finally:
        second.kill()
        second.wait(timeout=30)
        second.stderr.close()

    messages = [m for m in receiver.at("/erp") if m["answer"] == 204]
    assert all(m["error"] is None for m in receiver.at("/erp"))
    carriers: dict[int, set[str]] = {}
    bodies: dict[str, set[tuple[int, ...]]] = {}
    for m in receiver.at("/erp"):
        ids = tuple(e["data"]["event_id"] for e in m["payload"]["data"]["events"])
        bodies.setdefault(m["id"], set()).add(ids)
        for event_id in ids:
            carriers.setdefault(event_id, set()).add(m["id"])
    assert sorted(carriers) == list(range(1, 401))  # every event arrived at least once
    assert all(len(ids) == 1 for ids in carriers.values())  # a re-sent event always had the same webhook-id
    assert all(len(b) == 1 for b in bodies.values())  # and the same webhook-id always the same events
    held = receiver.at("/erp")[12]["id"]
    assert [m["id"] for m in messages].count(held) >= 1  # the message cut off by the kill was sent again
    assert len(bodies) == 40
    assert outbox.counts("erp") == {"pending": 0, "delivered": 40, "failed": 0, "dead": 0}


# ---------------------------------------------------------------------- three delivery processes on one store
SERVE = """
import os, sys, threading
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.resources.webhooks import WebhookSender, run_delivery_loop
from claro_dagster.spec.models import ProjectSpec
spec = ProjectSpec.model_validate_json(os.environ["CLARO_TEST_SPEC"])
store = CatalogueStore(spec, os.environ["CLARO_TEST_STORE"])
stop = threading.Event()
def until_stdin_closes():
    sys.stdin.read()
    stop.set()
threading.Thread(target=until_stdin_closes, daemon=True).start()
print("ready", flush=True)
run_delivery_loop(store, spec, stop, 0.05, sender=WebhookSender(timeout=30), max_deliveries=7)
"""


def test_three_delivery_processes_on_one_store_send_every_delivery_exactly_once(receiver, store_url):
    """Three `claro webhooks serve` processes share one store (SQLite file, then the real PostgreSQL):
    each delivery reaches its receiver once, none is missing, and each subscription's events arrive in order."""
    names = [f"sub{i}" for i in range(6)]
    spec = project(**{n: hook(receiver.url + f"/{n}", "per_change" if i % 2 else "batched", max_batch=3,
                              max_wait_seconds=0) for i, n in enumerate(names)})
    store = CatalogueStore(spec, store_url)
    WebhookOutbox(store)  # the outbox tables exist before the processes race to create them
    env = {**os.environ, "CLARO_TEST_SPEC": spec.model_dump_json(), "CLARO_TEST_STORE": store_url,
           SECRET_ENV: SECRET}
    processes = [subprocess.Popen([sys.executable, "-c", SERVE], env=env, cwd=REPO, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    try:
        for p in processes:
            assert p.stdout.readline().strip() == b"ready", p.stderr.read().decode()[-2000:]
        for first in range(0, 120, 30):  # four change sets while the three processes poll
            create(store, 30, first)
        wait_until(lambda: all(len(set(receiver.event_ids(f"/{n}"))) == 120 for n in names)
                   or any(p.poll() is not None for p in processes), timeout=240,
                   what="every event to reach every subscription")
        assert all(p.poll() is None for p in processes)
    finally:
        for p in processes:
            if p.poll() is None:
                p.stdin.close()
        for p in processes:
            try:
                p.wait(timeout=60)
            finally:
                if p.poll() is None:
                    p.kill()
    errors = [p.stderr.read().decode() for p in processes]
    assert all(p.returncode == 0 for p in processes), errors
    outbox = WebhookOutbox(store)
    stored = {d.webhook_id: d for d in outbox.log(limit=10_000)}
    assert all(d.status == "delivered" for d in stored.values())
    for n in names:
        ids = [m["id"] for m in receiver.at(f"/{n}")]
        assert len(ids) == len(set(ids)), f"{n}: a delivery was sent twice"
        assert set(ids) == {w for w, d in stored.items() if d.subscription == n}  # none missing
        assert receiver.event_ids(f"/{n}") == sorted(receiver.event_ids(f"/{n}"))  # in order
    assert all(m["error"] is None for m in receiver.messages)
    assert outbox.claims() == {}  # every process gave its subscriptions back
    store.dispose()
