"""End to end on the real Dagster processes: `dagster-webserver` + `dagster-daemon` on a copy of the demo.

A supplier file dropped into an inbox is picked up by the inbox sensor (run by the daemon), onboarded
through the five stage assets and published to the catalogue; one stage is then re-executed for that
batch through GraphQL, and a binary file is quarantined with its reason while the good batch stays
published. Everything is observed from outside, as a person or a script would: GraphQL on the
webserver, the catalogue store and the inbox folders.

Each process runs in its own process group (the run workers the daemon launches stay in its group), so
teardown can stop every process it started: TERM to each group, then KILL after a deadline.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from dagster_graphql import DagsterGraphQLClient

from claro_dagster.assets.onboarding import STAGES
from claro_dagster.catalogue.batches import BatchRegistry, batch_key, content_version
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "demo"
SOURCE = "suppliers_csv"
CATALOGUE = "suppliers"
LOCATION = "claro_dagster.definitions"  # the code location name of `-m claro_dagster.definitions`, as `claro dev`

SERVER_START_TIMEOUT = 90  # ~25 s on an idle machine; the code location imports pandas, pyarrow and the spec
FIRST_BATCH_TIMEOUT = 180
RUN_TIMEOUT = 120
STOP_TIMEOUT = 20
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}


# ------------------------------------------------------------------------------------------------ polling

class GraphQLQueryError(AssertionError):
    """The server answered but refused the query: a bug in the test or a schema change, never transient."""


def wait_until(predicate: Callable[[], tuple[bool, Any]], timeout: float, interval: float = 0.5, *,
               what: str, guard: Callable[[], None] | None = None, details: Callable[[], str] | None = None) -> Any:
    """Poll `predicate() -> (done, state)` until done; return the state.

    Connection errors and missing files count as "not yet" (their text becomes the state). On timeout,
    raise TimeoutError naming `what`, the last state seen and `details()`. `guard()` runs before each
    poll and raises to stop waiting at once (a server process died).
    """
    deadline = time.monotonic() + timeout
    last: Any = "<never evaluated>"
    while True:
        if guard is not None:
            guard()
        try:
            done, state = predicate()
        except (requests.RequestException, OSError) as exc:
            done, state = False, f"{type(exc).__name__}: {exc}"
        if done:
            return state
        last = state
        if time.monotonic() >= deadline:
            extra = f"\n{details()}" if details is not None else ""
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}; last state seen: {last!r}{extra}")
        time.sleep(interval)


# ------------------------------------------------------------------------------------------------ processes

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "(comm)": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def processes_with_env(marker: str) -> list[int]:
    """Pids of this user's processes whose environment contains `marker` (e.g. our unique DAGSTER_HOME=...)."""
    found = []
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in environ.split(b"\0") and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<{exc}>"
    return "\n".join(text.splitlines()[-lines:])


class DagsterStack:
    """The webserver and the daemon of one temporary project, and how to talk to them."""

    def __init__(self, root: Path):
        self.root = root
        self.spec_path = root / "project" / "claro.yaml"
        self.home = root / "home"
        self.dagster_home = root / "dagster"
        self.logs = root / "logs"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.http = requests.Session()
        self.http.trust_env = False  # loopback only: never through a proxy from the environment
        self._client: DagsterGraphQLClient | None = None

    # ---- setup and teardown
    def prepare(self) -> None:
        self.spec_path.parent.mkdir(parents=True)
        shutil.copyfile(DEMO / "claro.yaml", self.spec_path)
        self.home.mkdir()
        self.dagster_home.mkdir()
        shutil.copyfile(REPO / "dagster.yaml", self.dagster_home / "dagster.yaml")  # embedded SQLite instance
        self.logs.mkdir()

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CLARO_", "DAGSTER_"))}
        env.update(CLARO_SPEC=str(self.spec_path), CLARO_HOME=str(self.home), DAGSTER_HOME=str(self.dagster_home),
                   PYTHONUNBUFFERED="1")
        return env

    def start(self) -> None:
        bindir = Path(sys.executable).parent
        commands = {
            "webserver": [str(bindir / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(self.port), "-m", LOCATION],
            "daemon": [str(bindir / "dagster-daemon"), "run", "-m", LOCATION],
        }
        for name, args in commands.items():
            assert Path(args[0]).exists(), f"{args[0]} is missing: install dagster-webserver in this venv"
            with open(self.logs / f"{name}.log", "wb") as log:
                # cwd = the project folder: nothing lands in the repo, and no ./claro.yaml or ./dagster.yaml is read
                self.procs[name] = subprocess.Popen(args, cwd=self.spec_path.parent, env=self.env(), stdout=log,
                                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                    start_new_session=True)

    def stop(self) -> None:
        """TERM every group, wait with a deadline, KILL what is left; then fail on processes that escaped."""
        self.http.close()
        started = time.monotonic()
        for proc in self.procs.values():
            _signal_group(proc.pid, signal.SIGTERM)
        try:
            wait_until(self._all_stopped, STOP_TIMEOUT, 0.2, what="the Dagster process groups to exit after SIGTERM")
            how = "SIGTERM"
        except TimeoutError as exc:
            how = f"SIGKILL ({exc})"
            for proc in self.procs.values():
                _signal_group(proc.pid, signal.SIGKILL)
            wait_until(self._all_stopped, 10, 0.2, what="the Dagster process groups to exit after SIGKILL")
        print(f"dagster processes stopped by {how} in {time.monotonic() - started:.1f} s")
        strays = processes_with_env(f"DAGSTER_HOME={self.dagster_home}")
        for pid in strays:
            os.kill(pid, signal.SIGKILL)
        assert not strays, f"processes outside the webserver and daemon groups were left running: {strays}"

    def _all_stopped(self) -> tuple[bool, dict]:
        state = {name: (proc.poll(), group_members(proc.pid)) for name, proc in self.procs.items()}
        return all(code is not None and not members for code, members in state.values()), state

    # ---- diagnostics
    def assert_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"dagster {name} exited with code {proc.returncode}:\n"
                                     f"{tail(self.logs / f'{name}.log')}")

    def log_tails(self) -> list[tuple[str, str]]:
        return [(f"dagster {name} log ({self.logs / f'{name}.log'})", tail(self.logs / f"{name}.log", 150))
                for name in self.procs]

    def describe(self) -> str:
        inbox = self.home / "inbox"
        files = sorted(p.relative_to(inbox).as_posix() for p in inbox.rglob("*") if p.is_file()) \
            if inbox.exists() else []
        return f"logs: {self.logs}; files under {inbox}: {files}"

    def wait(self, predicate: Callable[[], tuple[bool, Any]], timeout: float, what: str, interval: float = 0.5) -> Any:
        return wait_until(predicate, timeout, interval, what=what, guard=self.assert_alive, details=self.describe)

    def wait_ready(self) -> None:
        def answered() -> tuple[bool, Any]:
            response = self.http.get(f"{self.url}/server_info", timeout=5)
            return response.ok, f"HTTP {response.status_code}"

        self.wait(answered, SERVER_START_TIMEOUT, f"GET {self.url}/server_info to answer")

    # ---- GraphQL
    @property
    def client(self) -> DagsterGraphQLClient:
        if self._client is None:
            self._client = DagsterGraphQLClient("127.0.0.1", port_number=self.port, timeout=60)
        return self._client

    def graphql(self, query: str, **variables: Any) -> dict:
        response = self.http.post(f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=60)
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise GraphQLQueryError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def materializations(self, stage: str, partition: str) -> list[dict]:
        data = self.graphql(MATERIALIZATIONS, path=[CATALOGUE, stage], partitions=[partition])["assetOrError"]
        if data["__typename"] == "AssetNotFoundError":
            return []  # not materialized yet
        assert data["__typename"] == "Asset", data
        return data["assetMaterializations"]

    def runs(self, **tags: str) -> list[dict]:
        data = self.graphql(RUNS, tags=[{"key": k, "value": v} for k, v in tags.items()])["runsOrError"]
        assert data["__typename"] == "Runs", data
        return data["results"]

    def run(self, run_id: str) -> dict:
        data = self.graphql(RUN, runId=run_id)["runOrError"]
        assert data["__typename"] == "Run", data
        return data

    def failure_messages(self, run_id: str) -> list[str]:
        events = self.graphql(FAILURES, runId=run_id)["runOrError"]["eventConnection"]["events"]
        return [f"{e.get('stepKey') or 'run'}: {(e.get('error') or {}).get('message') or e['message']}"
                for e in events if e["__typename"] in ("ExecutionStepFailureEvent", "RunFailureEvent")]

    def wait_for_run(self, run_id: str, timeout: float = RUN_TIMEOUT) -> str:
        def finished() -> tuple[bool, str]:
            status = self.client.get_run_status(run_id).value
            return status in TERMINAL, status

        return self.wait(finished, timeout, f"run {run_id} to finish")


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


MATERIALIZATIONS = """
query Materializations($path: [String!]!, $partitions: [String!]) {
  assetOrError(assetKey: {path: $path}) {
    __typename
    ... on Asset { assetMaterializations(partitions: $partitions) { runId partition timestamp } }
  }
}"""

RUNS = """
query Runs($tags: [ExecutionTag!]) {
  runsOrError(filter: {tags: $tags}) {
    __typename
    ... on Runs { results { runId status parentRunId rootRunId tags { key value } stepStats { stepKey status } } }
    ... on PythonError { message }
  }
}"""

RUN = """
query Run($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run {
      runId status jobName parentRunId stepKeysToExecute
      assetSelection { path }
      tags { key value }
      stepStats { stepKey status }
      assetMaterializations { assetKey { path } partition }
      eventConnection { hasMore events { __typename ... on MessageEvent { stepKey eventType } } }
    }
    ... on RunNotFoundError { message }
    ... on PythonError { message }
  }
}"""

FAILURES = """
query Failures($runId: ID!) {
  runOrError(runId: $runId) {
    ... on Run {
      eventConnection {
        events {
          __typename
          ... on MessageEvent { message stepKey }
          ... on ExecutionStepFailureEvent { error { message } }
        }
      }
    }
  }
}"""


# ------------------------------------------------------------------------------------------------ helpers

def drop_file(inbox: Path, name: str, data: bytes) -> Path:
    """Upload like a supplier would: write `<name>.part` (ignored by the sensor), then rename into place."""
    inbox.mkdir(parents=True, exist_ok=True)
    part = inbox / f"{name}.part"
    part.write_bytes(data)
    final = inbox / name
    os.rename(part, final)
    return final


def step_key(stage: str) -> str:
    return f"{CATALOGUE}__{stage}"


def tags_of(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["tags"]}


def brief(runs: list[dict]) -> list[tuple]:
    return [(r["runId"][:8], r["status"], r.get("parentRunId") and r["parentRunId"][:8]) for r in runs]


@pytest.fixture
def dagster_stack(tmp_path: Path):
    stack = DagsterStack(tmp_path)
    stack.prepare()
    try:
        stack.start()
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()


# ------------------------------------------------------------------------------------------------ the test

@pytest.mark.e2e
@pytest.mark.timeout(480)
def test_inbox_batch_through_real_webserver_and_daemon(dagster_stack: DagsterStack):
    stack = dagster_stack
    spec = load_spec(stack.spec_path)
    assert spec.sources[SOURCE].path == "inbox/suppliers"
    inbox = stack.home / "inbox" / "suppliers"

    # 1. A supplier file arrives; the inbox sensor (RUNNING by default) requests a run for its batch.
    demo_file = DEMO / "inbox" / "suppliers" / "suppliers.csv"
    good = drop_file(inbox, "suppliers.csv", demo_file.read_bytes())
    key = batch_key(SOURCE, "suppliers.csv", content_version(good))

    def published() -> tuple[bool, Any]:
        mats = stack.materializations("records", key)
        runs = stack.runs(**{"claro/batch": key})
        failed = [r for r in runs if r["status"] == "FAILURE"]
        if not mats and failed:  # the good file never fails: stop at once and say why
            raise AssertionError(f"the run for {key} failed: {stack.failure_messages(failed[0]['runId'])}")
        return bool(mats), {"records materializations": mats, "runs": brief(runs)}

    state = stack.wait(published, FIRST_BATCH_TIMEOUT, f"a materialization of suppliers/records for {key}",
                       interval=1.0)
    mats = state["records materializations"]
    assert [m["partition"] for m in mats] == [key]
    first_run_id = mats[0]["runId"]
    assert stack.wait_for_run(first_run_id) == "SUCCESS", stack.failure_messages(first_run_id)

    first_run = stack.run(first_run_id)
    assert tags_of(first_run)["claro/batch"] == key
    assert tags_of(first_run)["claro/source"] == SOURCE
    assert tags_of(first_run)["dagster/partition"] == key
    assert {s["stepKey"]: s["status"] for s in first_run["stepStats"]} == {step_key(s): "SUCCESS" for s in STAGES}
    assert sorted((tuple(m["assetKey"]["path"]), m["partition"]) for m in first_run["assetMaterializations"]) == \
        sorted(((CATALOGUE, s), key) for s in STAGES)

    # ... the 5 suppliers are in the catalogue and the file was moved to processed/<batch>/
    store = CatalogueStore(spec, home=stack.home)
    try:
        registry = BatchRegistry(store)
        assert store.count(CATALOGUE) == 5
        assert registry.get(key).status == "published"
        assert not good.exists(), "the inbox file should have been moved out of the inbox"
        processed = inbox / "processed" / key / "suppliers.csv"
        assert processed.read_bytes() == demo_file.read_bytes()

        before = {stage: stack.materializations(stage, key) for stage in STAGES}
        assert {stage: len(m) for stage, m in before.items()} == dict.fromkeys(STAGES, 1)

        # 2. A broken file arrives while one stage of the good batch is re-executed (the instance allows two runs).
        junk = b"supplier_id,name\n\x00\x01\x02\x03PK\x00\x00binary\xff\xfe\x00junk\n" * 64
        broken = drop_file(inbox, "broken.csv", junk)
        broken_key = batch_key(SOURCE, "broken.csv", content_version(broken))

        # 3. Re-execute ONE stage (batch_normalized) for the good batch through GraphQL.
        rerun_id = stack.client.submit_job_execution(
            "__ASSET_JOB", repository_location_name=LOCATION, asset_selection=[[CATALOGUE, "batch_normalized"]],
            tags={"dagster/partition": key})
        assert stack.wait_for_run(rerun_id) == "SUCCESS", stack.failure_messages(rerun_id)
        rerun = stack.run(rerun_id)
        assert rerun["jobName"] == "__ASSET_JOB"
        assert tags_of(rerun)["dagster/partition"] == key
        assert rerun["stepKeysToExecute"] == [step_key("batch_normalized")]
        assert rerun["assetSelection"] == [{"path": [CATALOGUE, "batch_normalized"]}]
        assert [(s["stepKey"], s["status"]) for s in rerun["stepStats"]] == [(step_key("batch_normalized"), "SUCCESS")]
        assert not rerun["eventConnection"]["hasMore"]
        stepped = {e["stepKey"] for e in rerun["eventConnection"]["events"] if e.get("stepKey")}
        assert stepped == {step_key("batch_normalized")}, f"steps seen in the event log of the re-run: {stepped}"
        assert [(m["assetKey"]["path"], m["partition"]) for m in rerun["assetMaterializations"]] == \
            [([CATALOGUE, "batch_normalized"], key)]

        after = {stage: stack.materializations(stage, key) for stage in STAGES}
        assert len(after["batch_normalized"]) == 2
        assert rerun_id in {m["runId"] for m in after["batch_normalized"]}
        for stage in ("batch_raw", "batch_mapped", "batch_validated", "records"):
            assert after[stage] == before[stage], f"{stage} was materialized again by the one-stage re-run"

        # 4. The broken file is quarantined with its reason; its run failed; the good batch stays published.
        quarantined = inbox / "quarantine" / broken_key / "broken.csv"
        reason_file = quarantined.with_name("broken.csv.reason.txt")

        def refused() -> tuple[bool, Any]:
            runs = stack.runs(**{"claro/batch": broken_key})
            first = [r for r in runs if r["parentRunId"] is None]
            failed = bool(first) and first[0]["status"] == "FAILURE"
            return failed and quarantined.exists() and reason_file.exists(), {
                "runs": brief(runs), "quarantined": quarantined.exists(), "reason": reason_file.exists()}

        stack.wait(refused, RUN_TIMEOUT, f"the run of {broken_key} to fail and quarantine broken.csv")
        broken_runs = stack.runs(**{"claro/batch": broken_key})
        assert all(r["status"] in ("FAILURE", "QUEUED", "STARTING", "STARTED", "NOT_STARTED") for r in broken_runs), \
            brief(broken_runs)  # a retry (run_retries in dagster.yaml) may still be on its way: it must not succeed
        original = next(r for r in broken_runs if r["parentRunId"] is None)
        steps = {s["stepKey"]: s["status"] for s in original["stepStats"]}
        assert steps[step_key("batch_raw")] == "FAILURE", steps
        assert all(status != "SUCCESS" for status in steps.values()), steps
        failures = stack.failure_messages(original["runId"])
        assert any(m.startswith(step_key("batch_raw")) and "not a text file" in m for m in failures), failures

        reason = reason_file.read_text(encoding="utf-8")
        assert "broken.csv" in reason and "not a text file" in reason, reason
        assert quarantined.read_bytes() == junk
        assert not broken.exists()
        assert registry.get(broken_key).status == "quarantined"
        assert stack.materializations("records", broken_key) == []

        assert registry.get(key).status == "published"
        assert store.count(CATALOGUE) == 5
        assert processed.exists()
        assert stack.materializations("records", key) == before["records"]
        good_runs = stack.runs(**{"claro/batch": key})
        assert [r["runId"] for r in good_runs] == [first_run_id], "the sensor must not request the same batch twice"
    finally:
        store.dispose()
