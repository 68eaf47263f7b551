"""A batch stuck beyond the configured age is alerted (issue 15, "bad input and faults"): the `claro_stuck_batches`
sensor writes one `batch.stuck` outbox event per stuck batch and posts it to the Slack routes that want it, once
however many ticks see it; a younger batch, or a finished one, says nothing. The age is the spec's
`notifications.batch_stuck_after_seconds`, which `claro check` validates and `/metrics` reads too.

Slack is tests/resources/test_slack.py's FakeSlack (requests checked against chat.postMessage's contract); the
store is real (SQLite and PostgreSQL); the sensor is evaluated through Dagster's own tick machinery.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.test_utils import create_run_for_test

from claro_dagster.catalogue.batches import BatchRegistry
from claro_dagster.catalogue.outbox import WebhookOutbox
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.catalogue.stuck_batches import BATCH_STUCK, STUCK_AFTER_ENV, stuck_after_seconds
from claro_dagster.resources.catalogue import CatalogueResource
from claro_dagster.sensors.stuck_batches import SENSOR_STUCK, build_stuck_batch_sensor, check_stuck_batches
from claro_dagster.spec import SpecError, load_spec
from claro_dagster.web.metrics import StoreCollector
from tests.resources.test_slack import FakeSlack, limit_problems, postmessage_problems

TOKEN_ENV = "STUCK_TEST_SLACK_TOKEN"
SPEC = """\
name: stuck
catalogues:
  products:
    key: sku
    attributes:
      sku: {type: text, identifier: true, required: true}
      title: {type: text}
  suppliers:
    key: code
    attributes:
      code: {type: text, identifier: true, required: true}
sources:
  acme_csv: {catalogue: products, kind: inbox, path: inbox/acme}
pipelines:
  products_onboarding:
    catalogue: products
    sources: [acme_csv]
notifications:
  batch_stuck_after_seconds: %(after)s
  slack_token_env: STUCK_TEST_SLACK_TOKEN
  slack_api_url: %(slack_url)s
  slack:
    - channel: "#ops"
      events: [batch.stuck]
    - channel: "#products"
      catalogues: [products]
    - channel: "#suppliers"
      catalogues: [suppliers]
  webhooks:
    erp:
      url: https://erp.example.com/hook
      events: [batch.stuck]
      secret_env: STUCK_TEST_WEBHOOK_SECRET
"""


@pytest.fixture
def slack():
    with FakeSlack() as fake:
        yield fake
    for request in fake.posts():
        assert postmessage_problems(request) == [], request.json()
        assert limit_problems(request.json()) == [], request.json()


@pytest.fixture
def project(tmp_path, store_url, slack, monkeypatch):
    """The spec (stuck after 10 minutes), its `claro` resource on the test store, and a Slack token."""
    monkeypatch.setenv(TOKEN_ENV, "xoxb-test")
    monkeypatch.delenv(STUCK_AFTER_ENV, raising=False)
    spec_path = tmp_path / "claro.yaml"
    spec_path.write_text(SPEC % {"after": 600, "slack_url": slack.base_url}, encoding="utf-8")
    claro = CatalogueResource(spec_path=str(spec_path), home=str(tmp_path / "home"), database_url=store_url)
    yield claro
    claro.store.dispose()


def batch(store, key: str, status: str, age: timedelta, stage: str | None = None) -> None:
    """A batch of acme_csv whose last step was `age` ago."""
    BatchRegistry(store).register(key, catalogue="products", source="acme_csv", filename=f"{key}.csv",
                                  uri=f"/inbox/{key}.csv")
    t = store.t["batches"]
    with store.engine.begin() as conn:
        conn.execute(t.update().where(t.c.key == key).values(status=status, stage=stage,
                                                             updated_at=datetime.now(UTC) - age))


def stuck_events(store) -> list[dict]:
    e = store.t["events"]
    with store.engine.connect() as conn:
        rows = conn.execute(e.select().where(e.c.type == BATCH_STUCK).order_by(e.c.id)).mappings().all()
    return [dict(row, payload=json.loads(row["payload"])) for row in rows]


def heard(slack) -> list[tuple[str, str]]:
    """(channel, header) of each top-level message."""
    return sorted((p["channel"], p["blocks"][0]["text"]["text"]) for p in (r.json() for r in slack.posts())
                  if "thread_ts" not in p)


def test_a_stuck_batch_is_announced_once_across_ticks_and_a_younger_one_not_at_all(project, slack):
    store = project.store
    batch(store, "acme_csv.old.0001", "validated", timedelta(hours=2), stage="batch_validated")
    batch(store, "acme_csv.young.0002", "received", timedelta(minutes=5))
    batch(store, "acme_csv.done.0003", "published", timedelta(days=1), stage="records")
    sensor = build_stuck_batch_sensor()
    assert sensor.name == SENSOR_STUCK and sensor.default_status == dg.DefaultSensorStatus.RUNNING

    with dg.instance_for_test() as instance:
        for _ in range(2):  # a second tick finds the event in the outbox and says nothing
            context = dg.build_sensor_context(instance=instance, resources={"claro": project})
            result = sensor.evaluate_tick(context)
            assert result.run_requests == []

    [event] = stuck_events(store)
    assert event["catalogue"] == "products"
    # the webhook subscription listing batch.stuck gets it (planned like any outbox event)
    [delivery] = WebhookOutbox(store).plan("erp", project.spec.notifications.webhooks["erp"], datetime.now(UTC))
    assert delivery.event_ids == (event["id"],)
    payload = event["payload"]
    assert (payload["batch"], payload["status"], payload["stage"], payload["source"]) == (
        "acme_csv.old.0001", "validated", "batch_validated", "acme_csv")
    assert payload["stuck_after_seconds"] == 600 and 7200 <= payload["age_seconds"] < 7300
    assert heard(slack) == [("#ops", ":hourglass: Batch stuck: acme_csv.old.0001.csv (acme_csv)"),
                            ("#products", ":hourglass: Batch stuck: acme_csv.old.0001.csv (acme_csv)")]
    text = json.dumps(slack.posts()[0].json())
    assert "validated after batch_validated for 2 h 0 min" in text and "claro rerun acme_csv.old.0001" in text

    # The younger batch passes the limit later: announced then, once; the old one is not announced again.
    later = datetime.now(UTC) + timedelta(minutes=10)
    with dg.instance_for_test() as instance:
        assert [s.batch for s in check_stuck_batches(instance, project, now=later)] == ["acme_csv.young.0002"]
        assert check_stuck_batches(instance, project, now=later) == []
    assert [e["payload"]["batch"] for e in stuck_events(store)] == ["acme_csv.old.0001", "acme_csv.young.0002"]
    assert len(slack.posts()) == 4


def queued(instance, job: str, tags: dict[str, str]):
    """A run as the inbound sensor's request leaves it in the run queue (the daemon has not dequeued it)."""
    repository = RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("claro_dagster"), "__repository__")
    return create_run_for_test(instance, job_name=job, status=dg.DagsterRunStatus.QUEUED, tags=tags,
                               remote_job_origin=RemoteJobOrigin(repository, job))


def test_a_run_waiting_in_the_queue_beyond_the_age_is_a_stuck_batch(project, slack):
    with dg.instance_for_test() as instance:
        run = queued(instance, "products_onboarding", {"claro/source": "acme_csv",
                                                       "claro/batch": "acme_csv.waiting.0004"})
        other = queued(instance, "elsewhere", {"claro/source": "not_ours"})
        assert check_stuck_batches(instance, project) == []  # just queued
        later = datetime.now(UTC) + timedelta(minutes=11)
        [stuck] = check_stuck_batches(instance, project, now=later)
        assert check_stuck_batches(instance, project, now=later) == []
    assert (stuck.batch, stuck.status, stuck.run_id, stuck.catalogue) == (
        "acme_csv.waiting.0004", "queued", run.run_id, "products")
    assert other.run_id not in {e["payload"]["run_id"] for e in stuck_events(project.store)}
    assert [e["payload"]["run_id"] for e in stuck_events(project.store)] == [run.run_id]
    assert heard(slack) == [("#ops", ":hourglass: Batch stuck in the run queue: acme_csv.waiting.0004"),
                            ("#products", ":hourglass: Batch stuck in the run queue: acme_csv.waiting.0004")]
    assert "Dagster daemon" in json.dumps(slack.posts()[0].json())


@pytest.mark.parametrize("value, complaint", [
    ("30", "30 is not an age in seconds: give a whole number of seconds, at least 60"),
    ("1h", "'1h' is not an age in seconds"),
])
def test_claro_check_refuses_an_age_that_is_not_whole_seconds_of_at_least_a_minute(tmp_path, monkeypatch, value,
                                                                                 complaint):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "claro.yaml").write_text(SPEC % {"after": value, "slack_url": "http://127.0.0.1:9/api/"})
    with pytest.raises(SpecError) as raised:
        load_spec("claro.yaml")
    assert str(raised.value).startswith(f"claro.yaml:19 notifications.batch_stuck_after_seconds: {complaint}")


def test_metrics_count_stuck_batches_with_the_spec_age_unless_the_variable_overrides_it(project, store_url,
                                                                                      monkeypatch):
    batch(project.store, "acme_csv.a.0001", "received", timedelta(minutes=20))
    batch(project.store, "acme_csv.b.0002", "received", timedelta(minutes=5))

    def stuck_gauge() -> float:
        collector = StoreCollector(lambda: CatalogueStore(project.spec, store_url))
        [family] = [f for f in collector.collect() if f.name == "claro_batches_stuck"]
        return family.samples[0].value

    assert stuck_after_seconds(project.spec) == 600
    assert stuck_gauge() == 1  # the spec's ten minutes
    monkeypatch.setenv(STUCK_AFTER_ENV, "120")
    assert stuck_gauge() == 2  # the documented variable overrides it
    monkeypatch.setenv(STUCK_AFTER_ENV, "soon")
    with pytest.raises(ValueError, match=f"{STUCK_AFTER_ENV}='soon'.*notifications.batch_stuck_after_seconds"):
        stuck_after_seconds(project.spec)
