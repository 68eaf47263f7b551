"""`claro dev`: links point at the port it serves on, and stopping it stops everything it started."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import requests
from cli_project import FIRST, FIRST_FILE, REPO, WEBHOOK_SECRET_ENV, claro, claro_command, write_spec

from claro_dagster.definitions import build_definitions
from claro_dagster.dev import DEFAULT_WEBSERVER_URL, link_url, recorded_webserver, supervise, webserver_url
from claro_dagster.local import dev_environment, instance_for, receive, run_batch
from claro_dagster.resources.catalogue import open_store
from claro_dagster.resources.dagster_api import DagsterLauncher
from claro_dagster.sensors.notifications import SENSOR_COMPLETED
from claro_dagster.spec import DEMO_DIR
from claro_dagster.spec.loader import load_spec
from tests.e2e.harness import (
    LOCATION,
    REPOSITORY,
    RUNS,
    SENSOR_TICKS,
    free_port,
    processes_with_env,
    wait_until,
)

SUPPLIERS = DEMO_DIR / "inbox" / "suppliers" / "suppliers.csv"


@pytest.fixture(autouse=True)
def no_url_from_outside(monkeypatch):
    monkeypatch.delenv("CLARO_WEBSERVER_URL", raising=False)


def test_link_url_names_the_port_and_reaches_a_wildcard_address_on_loopback():
    assert link_url("127.0.0.1", 4567) == "http://127.0.0.1:4567"
    assert link_url("0.0.0.0", 4567) == "http://127.0.0.1:4567"
    assert link_url("dagster.example.com", 80) == "http://dagster.example.com:80"
    assert link_url("::1", 4567) == "http://[::1]:4567"


def published_suppliers(defs: dg.Definitions, instance: dg.DagsterInstance, *, notify: bool):
    claro = defs.resources["claro"]
    inbox = claro.inbox_dir("suppliers_csv")
    inbox.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SUPPLIERS, inbox / SUPPLIERS.name)
    result = run_batch(defs, instance, receive(claro, "suppliers_csv", inbox / SUPPLIERS.name), quiet=True,
                       notify=notify)
    assert result.success
    return result


def run_urls(defs: dg.Definitions) -> list[str]:
    return [e["payload"]["url"] for e in defs.resources["claro"].store.events() if e["type"].startswith("run.")]


def test_the_port_of_claro_dev_is_in_every_link_its_daemon_and_code_servers_make(tmp_path, monkeypatch):
    spec = tmp_path / "claro.yaml"
    shutil.copyfile(DEMO_DIR / "claro.yaml", spec)
    env = dev_environment(tmp_path / "home", spec, webserver_url=link_url("127.0.0.1", 4567))
    assert env["CLARO_WEBSERVER_URL"] == "http://127.0.0.1:4567"
    monkeypatch.setenv("CLARO_WEBSERVER_URL", env["CLARO_WEBSERVER_URL"])  # as in the code server's environment

    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-test")
    assert build_definitions(spec, tmp_path / "home").resources["slack"].webserver_url == "http://127.0.0.1:4567"

    monkeypatch.delenv("SLACK_BOT_TOKEN")
    defs = build_definitions(spec, tmp_path / "home")
    with dg.instance_for_test() as instance:
        result = published_suppliers(defs, instance, notify=False)  # as the daemon's run: the sensors tell
        context = dg.build_run_status_sensor_context(
            sensor_name=SENSOR_COMPLETED, dagster_instance=instance, dagster_run=result.dagster_run,
            dagster_event=result.get_run_success_event(), resources={"claro": defs.resources["claro"]})
        defs.resolve_sensor_def(SENSOR_COMPLETED)(context)
    assert set(run_urls(defs)) == {f"http://127.0.0.1:4567/runs/{result.run_id}"}  # webhook payloads


def test_while_claro_dev_runs_claro_run_and_claro_serve_link_to_its_port(tmp_path):
    home = tmp_path / "home"
    spec = tmp_path / "claro.yaml"
    shutil.copyfile(DEMO_DIR / "claro.yaml", spec)
    assert webserver_url(home) == DEFAULT_WEBSERVER_URL
    with recorded_webserver(home, "http://127.0.0.1:4568"):
        assert webserver_url(home) == "http://127.0.0.1:4568"  # what `claro serve` gives slash-command replies
        defs = build_definitions(spec, home)
        with dg.instance_for_test() as instance:
            result = published_suppliers(defs, instance, notify=True)  # as `claro run` does
    assert run_urls(defs) == [f"http://127.0.0.1:4568/runs/{result.run_id}"] * 2  # started, completed
    assert webserver_url(home) == DEFAULT_WEBSERVER_URL  # claro dev stopped: its record is gone


def test_a_record_left_by_a_claro_dev_that_died_is_ignored(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "dagster").mkdir()
    (tmp_path / "dagster" / "webserver.json").write_text(f'{{"url": "http://127.0.0.1:4569", "pid": {dead.pid}}}')
    assert webserver_url(tmp_path) == DEFAULT_WEBSERVER_URL


def test_supervise_returns_the_exit_code_of_what_it_runs(tmp_path):
    assert supervise(["sh", "-c", "exit 3"], dict(os.environ)) == 3


SUPERVISOR = "import os, sys; from claro_dagster.dev import supervise; " \
             "sys.exit(supervise(['sh', '-c', sys.argv[1]], dict(os.environ), grace=1.0))"
DEAF = "trap '' INT TERM; sleep 600 & sleep 600"  # a shell and two children that ignore Ctrl-C and TERM


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_stops_the_whole_group_killing_what_ignores_it(tmp_path, sig):
    marker = f"CLARO_TEST_SUPERVISED={tmp_path}"
    env = {**os.environ, "CLARO_TEST_SUPERVISED": str(tmp_path), "PYTHONPATH": str(REPO)}
    supervisor = subprocess.Popen([sys.executable, "-c", SUPERVISOR, DEAF], env=env, stderr=subprocess.PIPE, text=True)
    try:
        # the supervisor, the shell and its two sleeps
        wait_until(lambda: (len(found := processes_with_env(marker)) >= 4, found), 30, what="the supervised group")
        supervisor.send_signal(sig)
        _, stderr = supervisor.communicate(timeout=30)
        assert supervisor.returncode == 0
        assert "killed" in stderr  # they ignored the interrupt: killed after the grace
        wait_until(lambda: (not (left := processes_with_env(marker)), left), 10, what="no process left")
    finally:
        for pid in processes_with_env(marker):
            os.kill(pid, signal.SIGKILL)


# ------------------------------------------------------------------------------------------ end to end
RECHECK = "products_recheck"  # a chained pipeline: its completion sensor answers each publication of products


def graphql(http: requests.Session, url: str, query: str, **variables) -> dict:
    body = http.post(f"{url}/graphql", json={"query": query, "variables": variables}, timeout=60).json()
    assert not body.get("errors"), body["errors"]
    return body["data"]


@pytest.mark.e2e
@pytest.mark.timeout(400)
def test_claro_dev_after_claro_run_repeats_nothing_and_term_stops_all_it_started(tmp_path):
    home, log = tmp_path / "home", tmp_path / "claro-dev.log"
    (home / "inbox" / "shop").mkdir(parents=True)
    spec = write_spec(tmp_path / "claro.yaml")
    spec.write_text(spec.read_text().replace("    error_budget: 0.5\n", f"""    error_budget: 0.5
  {RECHECK}:
    catalogue: products
    after: {{catalogue: products, operation: records}}
    operations: [validate]
""", 1))
    (home / "inbox" / "shop" / FIRST_FILE).write_text(FIRST, encoding="utf-8")
    ran = claro("run", home=home, spec=spec)
    assert ran.returncode == 0 and f"chained pipeline {RECHECK}: done" in ran.stdout, ran.stdout + ran.stderr
    with instance_for(home) as instance:
        by_claro_run = sorted(run.job_name for run in instance.get_runs())
    assert by_claro_run == sorted(["products_onboarding", "products_analyse", "products_export", RECHECK])

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLARO_", "DAGSTER_"))}
    env.update(CLARO_HOME=str(home), CLARO_SPEC=str(spec), PYTHONPATH=str(REPO), **{WEBHOOK_SECRET_ENV: "secret"})
    marker = f"DAGSTER_HOME={home / 'dagster'}"  # in the environment of every process `claro dev` starts
    with log.open("w") as out:
        claro_dev = subprocess.Popen([*claro_command(), "dev", "--port", str(port)], env=env, cwd=home, stdout=out,
                                     stderr=subprocess.STDOUT)
    http = requests.Session()
    http.trust_env = False

    def up():
        answers = http.get(f"{url}/server_info", timeout=2).ok
        started = processes_with_env(marker)
        return answers and len(started) >= 4, started  # dagster dev, webserver, daemon, code server(s)

    def alive():
        if claro_dev.poll() is not None:
            raise AssertionError(f"claro dev exited with {claro_dev.returncode}:\n{log.read_text()}")

    def ticked(sensor: str):
        selector = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "sensorName": sensor}
        ticks = graphql(http, url, SENSOR_TICKS, selector=selector, limit=5)["sensorOrError"]["sensorState"]["ticks"]
        return any(t["status"] != "STARTED" for t in ticks), ticks

    try:
        started = wait_until(up, 180, what="claro dev's UI and its processes", guard=alive, details=log.read_text)
        for pid in started:  # each of them makes its links with the port claro dev serves on
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert f"CLARO_WEBSERVER_URL={url}".encode() in environ, pid
        assert webserver_url(home) == url  # other shells' `claro run` and `claro serve` link there too

        # The daemon ticks the sensors: the chained pipeline's asks for what `claro run` already ran, and gets nothing
        [tick, *_] = wait_until(lambda: ticked(RECHECK), 120, what=f"a tick of {RECHECK}", guard=alive,
                                details=log.read_text)
        assert tick["runKeys"] and tick["runIds"] == [], tick
        wait_until(lambda: ticked("shop_csv_inbox"), 60, what="a tick of the inbox sensor", guard=alive)
        runs = graphql(http, url, RUNS, tags=[])["runsOrError"]["results"]
        assert sorted(run["jobName"] for run in runs) == by_claro_run  # no run repeated

        # `/claro run products analyse` from Slack is a run of the same job as `claro run`'s
        launcher = DagsterLauncher(lambda: load_spec(spec), lambda s: open_store(s, home=home), port=port)
        run_id = launcher.launch("products", "analyse", None)
        with instance_for(home) as instance:
            assert instance.get_run_by_id(run_id).job_name == "products_analyse"

        claro_dev.send_signal(signal.SIGTERM)
        wait_until(lambda: (claro_dev.poll() is not None and not processes_with_env(marker),
                            processes_with_env(marker)),
                   10, what="every process claro dev started to stop within 10 s", details=log.read_text)
        assert claro_dev.returncode == 0, log.read_text()
        assert webserver_url(home) == DEFAULT_WEBSERVER_URL
    finally:
        if claro_dev.poll() is None:
            claro_dev.kill()
        for pid in processes_with_env(marker):
            os.kill(pid, signal.SIGKILL)
