"""Harness of the end-to-end tests: the real `dagster-webserver` + `dagster-daemon` on a copy of the demo.

`DagsterStack` prepares a temporary project (spec, CLARO_HOME, DAGSTER_HOME), starts both processes,
talks to the webserver over GraphQL and stops every process it started. `wait_until` / `DagsterStack.wait`
poll with a deadline (never a fixed sleep). The `dagster_stack` fixture lives in conftest.py.

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

import requests
from dagster_graphql import DagsterGraphQLClient

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "claro_dagster" / "demo"  # the bundled demo (package data)
LOCATION = "claro_dagster.definitions"  # the code location name of `-m claro_dagster.definitions`, as `claro dev`
REPOSITORY = "__repository__"  # the repository name Dagster gives a module's `Definitions`

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

    def __init__(self, root: Path, extra_env: dict[str, str] | None = None):
        self.root = root
        self.extra_env = dict(extra_env or {})  # set in both processes (and so in the run workers)
        self.spec_path = root / "project" / "claro.yaml"
        self.home = root / "home"
        self.dagster_home = root / "dagster"
        self.logs = root / "logs"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.locations = ["-m", LOCATION]  # the code locations (a test may load `-w workspace.yaml`)
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
        # Create the instance's storage once, before the webserver, its code server and the daemon all open it at
        # the same moment: concurrent first opens race on the migrations ("alembic_version has more than one
        # head") and the code location then fails to load.
        subprocess.run([sys.executable, "-c", "import dagster; dagster.DagsterInstance.get().dispose()"],
                       env=self.env(), cwd=self.root, check=True, timeout=120)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CLARO_", "DAGSTER_"))}
        env.update(CLARO_SPEC=str(self.spec_path), CLARO_HOME=str(self.home), DAGSTER_HOME=str(self.dagster_home),
                   PYTHONUNBUFFERED="1")
        env.update(self.extra_env)
        return env

    def start(self, only: tuple[str, ...] | None = None) -> None:
        """Start the webserver and the daemon (`only`: those named, e.g. ("daemon",) when nothing asks the UI)."""
        bindir = Path(sys.executable).parent
        commands = {
            "webserver": [str(bindir / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(self.port), *self.locations],
            "daemon": [str(bindir / "dagster-daemon"), "run", *self.locations],
        }
        for name, args in commands.items():
            if only is not None and name not in only:
                continue
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

    def materializations(self, asset: str, partition: str | None = None) -> list[dict]:
        """Materializations of `asset` ("catalogue/stage"), of one partition when given, newest first."""
        data = self.graphql(MATERIALIZATIONS, path=asset.split("/"),
                            partitions=None if partition is None else [partition])["assetOrError"]
        if data["__typename"] == "AssetNotFoundError":
            return []  # not materialized yet
        assert data["__typename"] == "Asset", data
        return data["assetMaterializations"]

    def runs(self, **tags: str) -> list[dict]:
        data = self.graphql(RUNS, tags=[{"key": k, "value": v} for k, v in tags.items()])["runsOrError"]
        assert data["__typename"] == "Runs", data
        return data["results"]

    def sensor_ticks(self, sensor: str, limit: int = 25) -> list[dict]:
        """The daemon's latest ticks of a sensor, newest first (status, timestamp, runIds, runKeys, skipReason)."""
        selector = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "sensorName": sensor}
        data = self.graphql(SENSOR_TICKS, selector=selector, limit=limit)["sensorOrError"]
        assert data["__typename"] == "Sensor", data
        return data["sensorState"]["ticks"]

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
    ... on Asset {
      assetMaterializations(partitions: $partitions) {
        runId partition timestamp
        metadataEntries {
          label
          ... on TextMetadataEntry { text }
          ... on IntMetadataEntry { intValue }
          ... on FloatMetadataEntry { floatValue }
          ... on BoolMetadataEntry { boolValue }
        }
      }
    }
  }
}"""

RUNS = """
query Runs($tags: [ExecutionTag!]) {
  runsOrError(filter: {tags: $tags}) {
    __typename
    ... on Runs {
      results {
        runId status jobName parentRunId rootRunId startTime endTime
        tags { key value }
        stepStats { stepKey status }
      }
    }
    ... on PythonError { message }
  }
}"""

RUN = """
query Run($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run {
      runId status jobName parentRunId stepKeysToExecute startTime endTime
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

SENSOR_TICKS = """
query SensorTicks($selector: SensorSelector!, $limit: Int) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { status ticks(limit: $limit) { tickId status timestamp runIds runKeys skipReason } } }
    ... on SensorNotFoundError { message }
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


def receipt_key(source: str, path: Path) -> str:
    """The batch key the inbox sensor gives a dropped file: from its name, size and modification time (a tick never
    reads files). Take it right after the drop: the sensor lists a file a second after its last change, and only
    the run moves it."""
    from claro_dagster.catalogue.batches import batch_key, receipt_version

    stat = path.stat()
    return batch_key(source, path.name, receipt_version(path.name, stat.st_size, stat.st_mtime_ns))


def tags_of(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["tags"]}


def brief(runs: list[dict]) -> list[tuple]:
    return [(r["runId"][:8], r["status"], r.get("parentRunId") and r["parentRunId"][:8]) for r in runs]


def metadata_of(materialization: dict) -> dict[str, Any]:
    """label -> value of a materialization's text, int, float and bool metadata entries."""
    out = {}
    for entry in materialization.get("metadataEntries") or []:
        values = [entry[k] for k in ("text", "intValue", "floatValue", "boolValue") if k in entry]
        out[entry["label"]] = values[0] if values else None
    return out
