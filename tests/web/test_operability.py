"""`claro serve` operability (issue 15 item 6): liveness, readiness (the store answers) and the metrics a team
scrapes, in Prometheus text format, read from the catalogue store; JSON log lines with run, batch and source."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import dagster as dg
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from claro_dagster.catalogue import channels, outbox
from claro_dagster.catalogue.batches import BatchRegistry
from claro_dagster.catalogue.changes import Change, ChangeSet
from claro_dagster.catalogue.opening import open_store
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.run_logs import JsonLineFormatter, log_format, run_loggers
from claro_dagster.spec.models import AttributeSpec, CatalogueSpec, ProjectSpec
from claro_dagster.web.app import create_app


class NoLauncher:
    def launch(self, *a):
        raise AssertionError("nothing is launched")

    def status(self, ref):
        raise AssertionError("nothing is launched")


def make_spec() -> ProjectSpec:
    return ProjectSpec(catalogues={"products": CatalogueSpec(key="sku", attributes={
        "sku": AttributeSpec(type="text", required=True), "title": AttributeSpec(type="text")})})


def samples(body: str) -> dict[tuple[str, tuple], float]:
    """(metric name, sorted labels) -> value, parsed with Prometheus' own parser (so the format is valid)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


@pytest.fixture
def store(store_url):
    s = CatalogueStore(make_spec(), store_url)
    yield s
    s.dispose()


def app_for(spec, url):
    """The app as `claro serve` builds it: the store opened with `open_store` (errors say which, password hidden)."""
    return create_app(lambda: spec, lambda _spec: open_store(_spec, url), NoLauncher(), signing_secret="x")


def test_metrics_report_batches_review_queue_webhook_backlog_and_push_errors(store, store_url, monkeypatch):
    monkeypatch.setenv("CLARO_BATCH_STUCK_AFTER_SECONDS", "600")
    now = datetime.now(UTC)
    batches = BatchRegistry(store)
    for key, status, age in (("b1", "published", 60), ("b2", "received", 30), ("b3", "received", 7200),
                             ("b4", "failed", 10)):
        batches.register(key, catalogue="products", source="acme", filename=f"{key}.csv", uri=f"/in/{key}.csv")
        with store.engine.begin() as conn:
            t = store.t["batches"]
            conn.execute(t.update().where(t.c.key == key).values(status=status,
                                                                 updated_at=now - timedelta(seconds=age)))
    store.import_records("products", pd.DataFrame({"sku": ["A1", "B2"], "title": ["Mug", "Cup"]}),
                         change_set_id="import-1")
    store.apply(ChangeSet("enrich-1", "products", "enrich", [Change("A1", "title", "Mug XL", 70, "longer"),
                                                             Change("B2", "title", "Cup XL", 70, "longer")]))
    outbox.metadata.create_all(store.engine)
    channels.metadata.create_all(store.engine)
    with store.engine.begin() as conn:
        d = outbox.deliveries
        for n, (sub, status, age) in enumerate((("erp", "pending", 300), ("erp", "failed", 900),
                                                ("erp", "delivered", 5000), ("crm", "dead", 100))):
            conn.execute(d.insert().values(subscription=sub, webhook_id=f"msg_{n}", event_ids="[1]", status=status,
                                           attempts=1, created_at=now - timedelta(seconds=age)))
        c = channels.channel_state
        for record, status in (("A1", "failed"), ("B2", "failed"), ("C3", "pushed"), ("D4", "held")):
            conn.execute(c.insert().values(destination="shopify_store", record=record, status=status,
                                           updated_at=now))

    with TestClient(app_for(make_spec(), store_url)) as client:
        response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    got = samples(response.text)
    assert got[("claro_store_up", ())] == 1
    assert got[("claro_batches", (("catalogue", "products"), ("status", "received")))] == 2
    assert got[("claro_batches", (("catalogue", "products"), ("status", "published")))] == 1
    assert got[("claro_batches", (("catalogue", "products"), ("status", "failed")))] == 1
    assert got[("claro_batches_stuck", (("catalogue", "products"),))] == 1  # b3: two hours, the limit is ten minutes
    assert 7200 <= got[("claro_batches_oldest_unfinished_age_seconds", (("catalogue", "products"),))] < 7300
    assert got[("claro_review_queue_depth", (("catalogue", "products"),))] == 2
    assert got[("claro_webhook_backlog", (("subscription", "erp"),))] == 2
    assert 900 <= got[("claro_webhook_oldest_undelivered_age_seconds", (("subscription", "erp"),))] < 1000
    assert got[("claro_webhook_dead", (("subscription", "crm"),))] == 1
    assert ("claro_webhook_backlog", (("subscription", "crm"),)) not in got
    assert got[("claro_push_errors", (("destination", "shopify_store"),))] == 2
    assert got[("claro_push_held", (("destination", "shopify_store"),))] == 1


def test_readiness_follows_the_store_and_liveness_does_not(tmp_path):
    spec = make_spec()
    url = f"sqlite:///{tmp_path / 'store.db'}"
    CatalogueStore(spec, url).dispose()
    with TestClient(app_for(spec, url)) as client:
        assert (client.get("/healthz").status_code, client.get("/readyz").text) == (200, "ready")
    gone = "postgresql://claro:s3cret@127.0.0.1:1/nowhere"  # nothing listens on port 1
    with TestClient(app_for(spec, gone)) as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.text.startswith("not ready: could not open the catalogue store")
        assert "s3cret" not in ready.text
        metrics = samples(client.get("/metrics").text)
        assert metrics == {("claro_store_up", ()): 0}


def test_json_log_lines_carry_run_batch_and_source(monkeypatch, capsys):
    @dg.asset
    def batch_raw(context) -> None:
        context.log.info("read 12 rows")

    monkeypatch.setenv("CLARO_LOG_FORMAT", "json")
    assert log_format() == "json"
    with dg.instance_for_test() as instance:
        # the loggers the code location gets with CLARO_LOG_FORMAT=json (definitions.py passes run_loggers())
        defs = dg.Definitions(assets=[batch_raw], jobs=[dg.define_asset_job("j", [batch_raw])], loggers=run_loggers())
        result = defs.resolve_job_def("j").execute_in_process(
            instance=instance, tags={"claro/source": "acme_csv", "claro/batch": "acme-0001"},
            run_config={"loggers": {"console": {}}})
    assert result.success
    captured = capsys.readouterr().err
    lines = [json.loads(line) for line in captured.splitlines() if line.startswith("{")]
    mine = [line for line in lines if line["message"] == "read 12 rows"]
    assert len(mine) == 1, captured[-3000:]
    assert mine[0]["run_id"] == result.run_id and mine[0]["batch"] == "acme-0001" and mine[0]["source"] == "acme_csv"
    assert mine[0]["level"] == "INFO" and mine[0]["step"] == "batch_raw"

    record = logging.LogRecord("claro_dagster.web", logging.WARNING, __file__, 1, "webhook %s failed", ("erp",), None)
    record.batch = "acme-0002"
    assert json.loads(JsonLineFormatter().format(record)) | {"time": None} == {
        "time": None, "level": "WARNING", "logger": "claro_dagster.web", "message": "webhook erp failed",
        "batch": "acme-0002"}
    monkeypatch.setenv("CLARO_LOG_FORMAT", "yaml")
    with pytest.raises(ValueError, match="CLARO_LOG_FORMAT"):
        log_format()


def prod_python_logs() -> dict:
    """The `python_logs` block of dagster.prod.yaml, as the production instance reads it."""
    from pathlib import Path

    from ruamel.yaml import YAML

    return YAML(typ="safe").load((Path(__file__).parents[2] / "dagster.prod.yaml").read_text())["python_logs"]


def test_the_instance_json_handler_of_dagster_prod_yaml_logs_every_run_as_json(capsys):
    """dagster.prod.yaml's `python_logs`: every run's lines as JSON on stdout, whatever the run config says."""

    @dg.asset
    def batch_raw(context) -> None:
        context.log.warning("3 rows rejected")

    with dg.instance_for_test(overrides={"python_logs": prod_python_logs()}) as instance:
        defs = dg.Definitions(assets=[batch_raw], jobs=[dg.define_asset_job("j", [batch_raw])])
        result = defs.resolve_job_def("j").execute_in_process(
            instance=instance, tags={"claro/source": "acme_csv", "dagster/partition": "acme-0003"})
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    mine = [line for line in lines if line["message"] == "3 rows rejected"]
    assert [(m["run_id"], m["batch"], m["source"], m["level"]) for m in mine] == [
        (result.run_id, "acme-0003", "acme_csv", "WARNING")]
    assert all(line["run_id"] == result.run_id for line in lines) and len(lines) > 5


JOB = """\
import dagster as dg


@dg.asset
def batch_raw(context) -> None:
    context.log.warning("3 rows rejected")


defs = dg.Definitions(assets=[batch_raw], jobs=[dg.define_asset_job("j", [batch_raw])])
"""


@pytest.mark.e2e
def test_a_run_in_its_own_processes_logs_json_lines_on_stdout_with_run_batch_and_source(tmp_path):
    """As in production: `dagster job execute` against an instance with dagster.prod.yaml's python_logs, the step
    in a process of its own (the multiprocess executor); every line of the run on stdout is JSON."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from ruamel.yaml import YAML

    home = tmp_path / "dagster_home"
    home.mkdir()
    with (home / "dagster.yaml").open("w") as handle:
        YAML().dump({"storage": {"sqlite": {"base_dir": str(home / "storage")}}, "telemetry": {"enabled": False},
                     "python_logs": prod_python_logs()}, handle)
    (tmp_path / "job.py").write_text(JOB)
    root = str(Path(__file__).parents[2])
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": os.pathsep.join(
        [root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("CLARO_LOG_FORMAT", None)
    done = subprocess.run([sys.executable, "-m", "dagster", "job", "execute", "-f", "job.py", "-j", "j", "--tags",
                           json.dumps({"claro/source": "acme_csv", "claro/batch": "acme-0005"})],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every stdout line is JSON: a line that is not fails here
    mine = [r for r in records if r["message"] == "3 rows rejected"]
    assert len(mine) == 1, done.stdout[-3000:]
    run_id = mine[0]["run_id"]
    assert (mine[0]["batch"], mine[0]["source"], mine[0]["step"], mine[0]["level"]) == (
        "acme-0005", "acme_csv", "batch_raw", "WARNING")
    assert {r["run_id"] for r in records} == {run_id}
    events = {r.get("event") for r in records}
    assert {"STEP_START", "STEP_SUCCESS", "PIPELINE_SUCCESS"} <= events, events  # the run process and the step
    assert "3 rows rejected" in done.stderr  # Dagster's own text console lines stay on stderr
