"""Run-status sensors on the real onboarding assets: outbox events for webhooks, Slack alerts for people.

Runs are real (the demo spec's onboarding graph in a test instance); the sensors are evaluated with
`build_run_status_sensor_context` on each run and its own success/failure event, as the daemon
would, and once through `evaluate_tick` with the run-status machinery's cursor. Slack is a local
HTTP server standing in for the Web API (the approach of `tests/resources/test_slack.py`, whose
contract checks cover the message format; here we check who was told what).
"""

from __future__ import annotations

import itertools
import json
import shutil
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from http_fakes import RecordingServer, Request

from claro_dagster.catalogue.batches import BatchRegistry
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.definitions import build_definitions
from claro_dagster.local import receive, run_batch
from claro_dagster.resources.slack import SlackNotifier
from claro_dagster.sensors.notifications import (
    SENSOR_COMPLETED,
    SENSOR_FAILED,
    SENSOR_NAMES,
    SENSOR_STARTED,
    build_notification_sensors,
    write_run_event,
)
from claro_dagster.spec import DEMO_DIR, load_spec

WEBSERVER = "http://dagster.test:3000"
SUPPLIERS = DEMO_DIR / "inbox" / "suppliers" / "suppliers.csv"
HEADER = "sku,title,brand,gtin,price,weight,colour,size,supplier,status\n"
STAGES = ["batch_raw", "batch_mapped", "batch_validated", "batch_normalized", "records"]

# The demo's one route, plus routes that show who hears what.
ROUTES = """  slack:
    - channel: "#catalogue-alerts"
      catalogues: [products]
      verbosity: summary
    - channel: "#suppliers"
      catalogues: [suppliers]
    - channel: "#completions"
      events: [run.completed]
    - channel: "#validation"
      operations: [validate]
    - channel: "#review"
      catalogues: [products]
      events: [review.queued]
      verbosity: per_record
"""
DEMO_ROUTES = """  slack:
    - channel: "#catalogue-alerts"
      catalogues: [products]
      verbosity: summary
"""


# ---------------------------------------------------------------------------------------------- fake Slack
class FakeSlack(RecordingServer):
    """Slack's Web API on 127.0.0.1: records requests and answers chat.postMessage like Slack does."""

    def __init__(self) -> None:
        self._ts = itertools.count(1)
        super().__init__(self._reply)

    @property
    def base_url(self) -> str:
        return f"{self.url}/api/"

    @property
    def posts(self) -> list[dict[str, Any]]:
        """The JSON of every chat.postMessage request, in order."""
        return [r.json() for r in self.requests if r.path.endswith("/chat.postMessage")]

    def summaries(self) -> list[dict[str, Any]]:
        """Top-level messages (not thread replies)."""
        return [p for p in self.posts if "thread_ts" not in p]

    def heard(self) -> list[tuple[str, str]]:
        """(channel, header text) of every top-level message, in order."""
        return [(p["channel"], p["blocks"][0]["text"]["text"]) for p in self.summaries()]

    def _reply(self, request: Request) -> tuple[int, dict[str, str], dict[str, Any]]:
        n = next(self._ts)
        ts = f"{1764300000 + n}.{n:06d}"
        return 200, {}, {"ok": True, "channel": "C0123456789", "ts": ts,
                         "message": {"type": "message", "text": request.json().get("text", ""), "ts": ts}}


@pytest.fixture
def fake_slack():
    with FakeSlack() as fake:
        yield fake


# ---------------------------------------------------------------------------------------------- project
class Project:
    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance, root: Path):
        self.defs, self.instance, self.root = defs, instance, root
        self.claro = defs.resources["claro"]
        self.spec = self.claro.spec
        self.sensors = {s.name: s for s in build_notification_sensors(self.spec, WEBSERVER)}

    def run(self, source: str, name: str, text: str | None = None, src: Path | None = None,
            stages: tuple[str, ...] | None = None, *, notify: bool = False) -> dg.ExecuteInProcessResult:
        """A run of a batch's stages; left to the sensors (as a run the daemon launched) unless `notify`."""
        inbox = self.claro.inbox_dir(source)
        inbox.mkdir(parents=True, exist_ok=True)
        path = inbox / name
        if src is not None:
            shutil.copyfile(src, path)
        else:
            path.write_text(text, encoding="utf-8")
        self.batch = receive(self.claro, source, path)
        kwargs = {"stages": stages} if stages else {}
        return run_batch(self.defs, self.instance, self.batch, quiet=True, notify=notify, **kwargs)

    def evaluate(self, sensor_name: str, result: dg.ExecuteInProcessResult, slack: SlackNotifier | None = None,
                 sensors: dict[str, dg.SensorDefinition] | None = None) -> Any:
        """Evaluate a sensor on one run with the run's own event, as the daemon does."""
        run = result.dagster_run
        if sensor_name == SENSOR_STARTED:
            [record] = self.instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_START)
            event = record.dagster_event
        elif sensor_name == SENSOR_COMPLETED:
            event = result.get_run_success_event()
        else:
            event = result.get_run_failure_event()
        resources: dict[str, Any] = {"claro": self.claro}
        if slack is not None:
            resources["slack"] = slack
        context = dg.build_run_status_sensor_context(sensor_name=sensor_name, dagster_instance=self.instance,
                                                     dagster_run=run, dagster_event=event, resources=resources)
        if sensor_name == SENSOR_FAILED:
            context = context.for_run_failure()
        return (sensors or self.sensors)[sensor_name](context)

    def run_events(self, run_id: str | None = None) -> list[dict[str, Any]]:
        events = [e for e in self.claro.store.events() if e["type"].startswith("run.")]
        return [e for e in events if run_id is None or e["payload"]["run_id"] == run_id]


@pytest.fixture(autouse=True)
def slack_token(monkeypatch):
    """Slack is on only where its token's variable is set (as in the daemon's environment)."""
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-test")


def write_spec(root: Path, routes: str = ROUTES, *, token: bool = True) -> Path:
    text = (DEMO_DIR / "claro.yaml").read_text()
    assert DEMO_ROUTES in text  # the demo's notifications block, replaced below
    if not token:  # the spec refuses Slack routes without a token: no Slack at all
        routes = ""
        text = text.replace("  slack_token_env: SLACK_BOT_TOKEN\n", "")
    text = text.replace(DEMO_ROUTES, routes)
    text = "\n".join(line for line in text.splitlines() if not line.startswith("  channels:")) + "\n"  # any channel
    spec = root / "claro.yaml"
    spec.write_text(text)
    return spec


@pytest.fixture
def project(tmp_path):
    """The demo's onboarding graph on a copy of its spec, suppliers already published."""
    defs = build_definitions(write_spec(tmp_path), tmp_path / "home")
    with dg.instance_for_test() as instance:
        p = Project(defs, instance, tmp_path)
        assert p.run("suppliers_csv", "suppliers.csv", src=SUPPLIERS).success
        yield p


def notifier(base_url: str, **kwargs: Any) -> SlackNotifier:
    return SlackNotifier(token="xoxb-test", base_url=base_url, webserver_url=WEBSERVER, **kwargs)


def gtin(i: int) -> str:
    from stdnum import ean

    body = f"506012399{i:03d}"
    return body + ean.calc_check_digit(body)


def good_rows(n: int = 4) -> str:
    rows = [f"TST-{i:04d},Trail mug {i},Acme Outdoor,{gtin(i)},{i}.50,0.3,grey,M,SUP-0001,active"
            for i in range(1, n + 1)]
    return HEADER + "\n".join(rows) + "\n"


def bad_rows() -> str:
    """One good row and three that fail validation: 75% of rows, over the demo's 25% budget."""
    rows = good_rows(1)
    rows += "TST-0100,,Acme Outdoor,5060123000048,abc,0.3,teal,M,SUP-9999,active\n"
    rows += "TST-0101,No price,Acme Outdoor,1234,free,heavy,pink,XXXL,SUP-0001,active\n"
    rows += "bad sku,Mug,Acme Outdoor,,1,0.3,grey,M,SUP-0404,active\n"
    return rows


def blocks_text(post: dict[str, Any]) -> str:
    return json.dumps(post["blocks"], ensure_ascii=False)


def button_url(post: dict[str, Any]) -> str:
    [actions] = [b for b in post["blocks"] if b["type"] == "actions"]
    return actions["elements"][0]["url"]


# ---------------------------------------------------------------------------------------------- definitions
def test_sensors_run_by_default_and_need_slack_only_with_a_token(tmp_path):
    spec = load_spec(write_spec(tmp_path))
    sensors = build_notification_sensors(spec, WEBSERVER)
    assert [s.name for s in sensors] == list(SENSOR_NAMES)
    assert all(s.default_status == dg.DefaultSensorStatus.RUNNING for s in sensors)
    assert [s.required_resource_keys for s in sensors] == [{"claro"}, {"claro", "slack"}, {"claro", "slack"}]

    quiet = tmp_path / "quiet"
    quiet.mkdir()
    no_token = build_notification_sensors(load_spec(write_spec(quiet, token=False)), WEBSERVER)
    assert all(s.required_resource_keys == {"claro"} for s in no_token)

    # They load beside the real assets and resources.
    defs = build_definitions(tmp_path / "claro.yaml", tmp_path / "home")
    full = dg.Definitions(assets=list(defs.assets), sensors=sensors, executor=dg.in_process_executor,
                          resources={**defs.resources, "slack": notifier("http://127.0.0.1:9/api/")})
    dg.Definitions.validate_loadable(full)
    assert {s.name for s in full.sensors} == set(SENSOR_NAMES)


# ---------------------------------------------------------------------------------------------- completed
def test_a_good_batch_writes_started_and_completed_once_and_tells_routes_that_opted_in(project, fake_slack):
    result = project.run("acme_csv", "weekly.csv", good_rows())
    assert result.success
    slack = notifier(fake_slack.base_url)
    assert project.evaluate(SENSOR_STARTED, result) is None
    assert project.evaluate(SENSOR_COMPLETED, result, slack) is None

    run_id = result.run_id
    events = project.run_events(run_id)
    assert [e["type"] for e in events] == ["run.started", "run.completed"]
    assert all(e["catalogue"] == "products" and e["change_set"] == f"run:{run_id}" for e in events)
    started, completed = (e["payload"] for e in events)
    assert started["status"] == "STARTED" and completed["status"] == "SUCCESS"
    assert completed["run_id"] == run_id and completed["job"] == result.dagster_run.job_name
    # products_onboarding has a review checkpoint after records
    assert completed["assets"] == [f"products/{s}" for s in sorted([*STAGES, "review_checkpoint"])]
    assert completed["catalogue"] == "products" and completed["pipeline"] == "products_onboarding"
    assert completed["partition"] == completed["batch"] == project.batch.key
    assert completed["source"] == "acme_csv"
    assert completed["schedule"] is None and completed["filter"] is None
    assert completed["url"] == f"{WEBSERVER}/runs/{run_id}"
    assert completed["counts"]["rows published"] == 4 and completed["counts"]["records created"] == 4

    # Only a route that lists run.completed hears about a success; the catalogue's catch-all route does not.
    assert fake_slack.heard() == [("#completions", ":white_check_mark: Run completed: products_onboarding, "
                                                   f"batch {project.batch.key}")]
    [post] = fake_slack.posts
    assert button_url(post) == f"{WEBSERVER}/runs/{run_id}"

    # The daemon may evaluate the run again (after a crash): nothing is written or posted twice.
    project.evaluate(SENSOR_STARTED, result)
    project.evaluate(SENSOR_COMPLETED, result, slack)
    assert [e["type"] for e in project.run_events(run_id)] == ["run.started", "run.completed"]
    assert len(fake_slack.posts) == 1


def test_a_scheduled_export_says_which_schedule_and_record_filter_it_ran(project, fake_slack):
    assert project.run("acme_csv", "weekly.csv", good_rows()).success
    schedule = project.defs.resolve_schedule_def("hourly_active_export")
    with dg.build_schedule_context(instance=project.instance,
                                   scheduled_execution_time=datetime(2026, 11, 28, 10, tzinfo=UTC)) as context:
        [request] = schedule.evaluate_tick(context).run_requests
    result = dg.materialize(list(project.defs.assets), selection=[dg.AssetKey(["products", "export"])],
                            instance=project.instance, resources=project.defs.resources,
                            run_config=request.run_config, tags=request.tags)
    assert result.success
    project.evaluate(SENSOR_COMPLETED, result, notifier(fake_slack.base_url))

    [_, event] = project.run_events(result.run_id)  # its run.started, then this
    payload = event["payload"]
    assert payload["schedule"] == "hourly_active_export" and payload["filter"] == 'status == "active"'
    assert payload["catalogue"] == "products" and payload["assets"] == ["products/export"]
    assert payload["pipeline"] is None and payload["batch"] is None and payload["partition"] is None
    assert fake_slack.heard() == [("#completions", ":white_check_mark: Run completed: products/export")]
    assert "*Operation*\\nexport" in blocks_text(fake_slack.posts[0])


def test_changes_queued_for_review_are_announced_with_their_records(project, fake_slack):
    assert project.run("acme_csv", "first.csv", good_rows()).success
    # Globex contradicts a title Acme sent: the demo's thresholds send the overwrite to review.
    result = project.run("globex_xlsx", "second.csv", good_rows().replace("Trail mug 1,", "Trail mug one,"))
    assert result.success
    project.evaluate(SENSOR_COMPLETED, result, notifier(fake_slack.base_url))

    [_, completed] = project.run_events(result.run_id)
    assert completed["payload"]["counts"]["queued for review"] == 1
    heard = fake_slack.heard()
    assert ("#completions", f":white_check_mark: Run completed: products_onboarding, batch {project.batch.key}") \
        in heard
    review = [(c, h) for c, h in heard if "review" in h]
    assert review == [("#catalogue-alerts", ":eyes: 1 change wait for review in products"),
                      ("#review", ":eyes: 1 change wait for review in products")]
    summary = next(p for p in fake_slack.summaries() if p["channel"] == "#review")
    assert "queued by this run: *1*" in blocks_text(summary)
    # The per_record route gets the records in a thread under its summary; the summary route does not.
    replies = [p for p in fake_slack.posts if "thread_ts" in p]
    assert [r["channel"] for r in replies] == ["#review"]
    assert "TST-0001 · title: Trail mug 1 → Trail mug one" in blocks_text(replies[0])
    assert not any(c == "#suppliers" for c, _ in heard)


# ---------------------------------------------------------------------------------------------- failed
def test_a_halted_batch_sends_its_budget_message_and_the_rejected_rows_command(project, fake_slack):
    result = project.run("acme_csv", "bad.csv", bad_rows())
    assert not result.success
    key = project.batch.key
    assert BatchRegistry(project.claro.store).get(key).status == "halted"
    slack = notifier(fake_slack.base_url)
    assert project.evaluate(SENSOR_FAILED, result, slack) is None

    [started, event] = project.run_events(result.run_id)  # the started sensor had not ticked: written with it
    payload = event["payload"]
    assert started["type"] == "run.started" and started["payload"]["status"] == "STARTED"
    assert event["type"] == "run.failed" and event["catalogue"] == "products"
    assert payload["status"] == "FAILURE" and payload["halted"] is True
    assert payload["failed_stage"] == "products/batch_validated"
    assert payload["error"].startswith("3 of 4 rows failed validation (75.0%); the error budget is 25%")
    assert payload["rejected_rows"] == f"claro rejected {key}" and payload["batch_status"] == "halted"
    assert payload["url"] == f"{WEBSERVER}/runs/{result.run_id}"

    # batch.halted, not run.failed: the gate did its job. Routes for other catalogues hear nothing.
    assert fake_slack.heard() == [("#catalogue-alerts", ":octagonal_sign: Batch halted: bad.csv (acme_csv)"),
                                  ("#validation", ":octagonal_sign: Batch halted: bad.csv (acme_csv)")]
    for post in fake_slack.posts:
        text = blocks_text(post)
        assert "the error budget is 25%" in text and f"claro rejected {key}" in text
        assert "rows failed: *3*" in text and "*Stage*\\nbatch_validated" in text
        assert button_url(post) == f"{WEBSERVER}/runs/{result.run_id}"

    project.evaluate(SENSOR_FAILED, result, slack)
    assert len(project.run_events(result.run_id)) == 2 and len(fake_slack.posts) == 2


def test_a_failed_stage_alert_names_the_stage_and_links_the_run(project, fake_slack):
    result = project.run("acme_csv", "empty.csv", "")
    assert not result.success
    project.evaluate(SENSOR_FAILED, result, notifier(fake_slack.base_url))

    [_, event] = project.run_events(result.run_id)
    payload = event["payload"]
    assert payload["failed_stage"] == "products/batch_raw" and payload["halted"] is False
    assert payload["error"] == "empty.csv: the file is empty (0 bytes); export it again and resend it"
    assert payload["failed_steps"] == ["products__batch_raw"] and payload["batch_status"] == "quarantined"

    # The catalogue's route hears it; the validate route (another stage) and the suppliers route do not.
    assert fake_slack.heard() == [("#catalogue-alerts", f":red_circle: Run failed: products/batch_raw, "
                                                        f"batch {project.batch.key}")]
    [post] = fake_slack.posts
    text = blocks_text(post)
    assert "*Stage*\\nbatch_raw" in text and "the file is empty (0 bytes)" in text
    assert button_url(post) == f"{WEBSERVER}/runs/{result.run_id}"
    assert result.run_id[:8] in post["text"]


def test_publishing_a_halted_batch_by_hand_is_a_run_failure_at_records(project, fake_slack):
    assert not project.run("acme_csv", "bad.csv", bad_rows()).success
    again = run_batch(project.defs, project.instance, project.batch, stages=("batch_normalized", "records"),
                      quiet=True, notify=False)
    assert not again.success
    project.evaluate(SENSOR_FAILED, again, notifier(fake_slack.base_url))
    [_, event] = project.run_events(again.run_id)
    assert event["payload"]["failed_stage"] == "products/records" and event["payload"]["halted"] is False
    assert "records will not publish it until batch_validated passes its gate" in event["payload"]["error"]
    assert [h for _, h in fake_slack.heard()] == [f":red_circle: Run failed: products/records, "
                                                  f"batch {project.batch.key}"]


# ---------------------------------------------------------------------------------------------- Slack trouble
def test_slack_down_never_fails_the_tick_and_the_outbox_still_gets_the_event(project, closed_port):
    down = notifier(f"http://127.0.0.1:{closed_port}/api/", connection_retries=0, timeout_seconds=2)
    failed = project.run("acme_csv", "bad.csv", bad_rows())
    assert project.evaluate(SENSOR_FAILED, failed, down) is None
    good = project.run("acme_csv", "good.csv", good_rows())
    assert project.evaluate(SENSOR_COMPLETED, good, down) is None
    assert [e["type"] for e in project.run_events(failed.run_id)] == ["run.started", "run.failed"]
    assert [e["type"] for e in project.run_events(good.run_id)] == ["run.started", "run.completed"]


def test_without_a_slack_token_the_sensors_only_write_the_outbox(tmp_path, fake_slack):
    defs = build_definitions(write_spec(tmp_path, token=False), tmp_path / "home")
    with dg.instance_for_test() as instance:
        p = Project(defs, instance, tmp_path)
        assert p.spec.notifications.slack_token_env is None
        assert p.run("suppliers_csv", "suppliers.csv", src=SUPPLIERS).success
        result = p.run("acme_csv", "bad.csv", bad_rows())
        p.evaluate(SENSOR_FAILED, result)  # no slack resource at all
        [_, event] = p.run_events(result.run_id)
        assert event["payload"]["halted"] is True
    assert fake_slack.posts == []


# ---------------------------------------------------------------------------------------------- machinery
def test_through_the_run_status_machinery_the_first_tick_sets_the_cursor_then_each_run_is_reported_once(
        project, fake_slack):
    sensor = project.sensors[SENSOR_FAILED]
    resources = {"claro": project.claro, "slack": notifier(fake_slack.base_url)}

    def tick(cursor: str | None):
        context = dg.build_sensor_context(instance=project.instance, cursor=cursor, resources=resources)
        return sensor.evaluate_tick(context)

    first = tick(None)  # the failure of the fixture's runs before this point is never reported
    assert project.run_events() == [] and first.cursor
    failed = project.run("acme_csv", "empty.csv", "")
    second = tick(first.cursor)
    assert [(e["type"], e["payload"]["run_id"]) for e in project.run_events()] == [
        ("run.started", failed.run_id), ("run.failed", failed.run_id)]
    assert [r.run_status for r in second.dagster_run_reactions] == [dg.DagsterRunStatus.FAILURE]
    assert all(r.error is None for r in second.dagster_run_reactions)
    third = tick(second.cursor)
    assert third.dagster_run_reactions == [] and len(project.run_events()) == 2
    assert len(fake_slack.posts) == 1


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_concurrent_evaluations_write_a_run_event_once(backend, request, tmp_path, demo_spec):
    url = f"sqlite:///{tmp_path / 'catalogue.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    store = CatalogueStore(demo_spec, url)
    runs = [f"r-{i}" for i in range(5)]  # several races: without the lock, most of them write twice
    for run_id in runs:
        start = threading.Barrier(8)
        written: list[bool] = []

        def evaluate(run_id=run_id, start=start, written=written):
            start.wait()
            written.append(write_run_event(store, "run.failed", "products", {"run_id": run_id, "status": "FAILURE"}))

        threads = [threading.Thread(target=evaluate) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(written) == [False] * 7 + [True], run_id
    assert [(e["type"], e["change_set"]) for e in store.events()] == [("run.failed", f"run:{r}") for r in runs]
    # Another type for the same run is its own event.
    assert write_run_event(store, "run.started", "products", {"run_id": "r-0", "status": "STARTED"})
    store.engine.dispose()


# ---------------------------------------------------------------------------------------------- in-process runs
def with_slack(project: Project, slack: SlackNotifier) -> Project:
    """The project's definitions with Slack pointed at the fake (as `claro run` has them with a token set)."""
    defs = project.defs
    project.defs = dg.Definitions(assets=list(defs.assets), sensors=list(defs.sensors), executor=dg.in_process_executor,
                                  resources={**defs.resources, "slack": slack})
    return project


def types_in_order(project: Project, run_id: str) -> list[str]:
    events = project.run_events(run_id)
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    return [e["type"] for e in events]


def evaluate_all(project: Project, result: dg.ExecuteInProcessResult, slack: SlackNotifier) -> None:
    """What the daemon's three sensors would do with the run, if they saw it."""
    project.evaluate(SENSOR_STARTED, result, slack)
    project.evaluate(SENSOR_COMPLETED if result.success else SENSOR_FAILED, result, slack)


def test_an_in_process_run_records_started_then_completed_and_the_sensors_add_nothing(project, fake_slack):
    slack = notifier(fake_slack.base_url)
    result = with_slack(project, slack).run("acme_csv", "weekly.csv", good_rows(), notify=True)
    assert result.success
    assert types_in_order(project, result.run_id) == ["run.started", "run.completed"]
    started, completed = (e["payload"] for e in project.run_events(result.run_id))
    assert started["status"] == "STARTED" and completed["status"] == "SUCCESS"
    assert completed["batch"] == project.batch.key and completed["counts"]["rows published"] == 4
    assert fake_slack.heard() == [("#completions", ":white_check_mark: Run completed: products_onboarding, "
                                                   f"batch {project.batch.key}")]

    evaluate_all(project, result, slack)
    assert types_in_order(project, result.run_id) == ["run.started", "run.completed"]
    assert len(fake_slack.posts) == 1


def test_a_failing_in_process_run_records_run_failed_and_alerts_like_the_sensor(project, fake_slack):
    slack = notifier(fake_slack.base_url)
    result = with_slack(project, slack).run("acme_csv", "bad.csv", bad_rows(), notify=True)
    assert not result.success
    assert types_in_order(project, result.run_id) == ["run.started", "run.failed"]
    failed = project.run_events(result.run_id)[1]["payload"]
    assert failed["halted"] is True and failed["rejected_rows"] == f"claro rejected {project.batch.key}"
    assert fake_slack.heard() == [("#catalogue-alerts", ":octagonal_sign: Batch halted: bad.csv (acme_csv)"),
                                  ("#validation", ":octagonal_sign: Batch halted: bad.csv (acme_csv)")]

    evaluate_all(project, result, slack)
    assert types_in_order(project, result.run_id) == ["run.started", "run.failed"]
    assert len(fake_slack.posts) == 2


def test_a_rerun_whose_stage_input_is_missing_is_recorded_as_failed_with_why(project):
    """`claro rerun` of a stage whose input was never stored: the run fails; the event says why."""
    project.run("acme_csv", "weekly.csv", good_rows(), stages=("batch_raw",))
    again = run_batch(project.defs, project.instance, project.batch, stages=("records",), quiet=True)
    assert not again.success
    assert types_in_order(project, again.run_id) == ["run.started", "run.failed"]
    payload = project.run_events(again.run_id)[1]["payload"]
    assert payload["status"] == "FAILURE" and "materialize products/batch_normalized for this batch first" \
        in payload["error"]


def test_started_comes_first_even_when_the_completed_sensor_ticks_before_the_started_one(project, fake_slack):
    slack = notifier(fake_slack.base_url)
    result = project.run("acme_csv", "weekly.csv", good_rows())
    project.evaluate(SENSOR_COMPLETED, result, slack)
    assert types_in_order(project, result.run_id) == ["run.started", "run.completed"]
    project.evaluate(SENSOR_STARTED, result)
    assert types_in_order(project, result.run_id) == ["run.started", "run.completed"]

    failed = project.run("acme_csv", "bad.csv", bad_rows())
    project.evaluate(SENSOR_FAILED, failed, slack)
    project.evaluate(SENSOR_STARTED, failed)
    assert types_in_order(project, failed.run_id) == ["run.started", "run.failed"]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_run_end_written_concurrently_with_its_start_leaves_one_started_first(backend, request, tmp_path,
                                                                                demo_spec):
    url = f"sqlite:///{tmp_path / 'catalogue.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    store = CatalogueStore(demo_spec, url)
    for i in range(5):
        run_id = f"r-{i}"
        start = threading.Barrier(6)

        def write(kind: str, start=start, run_id=run_id) -> None:
            start.wait()
            payload = {"run_id": run_id, "status": kind}
            if kind == "run.started":
                write_run_event(store, kind, "products", payload)
            else:
                write_run_event(store, kind, "products", payload, started={"run_id": run_id, "status": "STARTED"})

        threads = [threading.Thread(target=write, args=(kind,)) for kind in ["run.started", "run.completed"] * 3]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [e["type"] for e in store.events() if e["change_set"] == f"run:{run_id}"] == \
            ["run.started", "run.completed"], run_id
    store.engine.dispose()
