"""Faults of the distributed engine (issue 15 "Beyond one machine", "Bad input and faults"), on the real stack of
tests/e2e/celery_stack.py (the Dagster daemon with dagster-celery's run launcher, Celery workers of
`claro_dagster.celery_worker`, PostgreSQL instance and catalogue store), with a handful of small files:

* a Celery worker killed (SIGKILL of its whole process group) while its run is publishing the batch: the run is
  failed and retried on the other worker, the catalogue never holds part of the batch, and the retry publishes it
  exactly once;
* the broker (a private `redis-server` of the test, with its append-only file) restarted while one run publishes
  and two more wait in its queue: every run completes, every batch is published once, nothing is lost.

The publish is held deterministically, never by sleeping: a trigger on the store's events table makes the first
`change.applied` event of a change set wait for an advisory lock the test holds, so a run's `records` stage has
opened its transaction, taken the catalogue lock and written the batch's records when the test sees it waiting
(in `pg_stat_activity`).

* two daemons started by mistake on one instance: each batch still runs once (the inbox sensor's run keys;
  tests/test_run_concurrency.py shows the same for two evaluations of one tick, deterministically).

(PostgreSQL restarted mid-publish: tests/catalogue/test_publish_postgres_restart.py.)
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from claro_dagster.catalogue.batches import BatchRegistry
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.definitions import build_definitions
from claro_dagster.local import receive, run_batch
from claro_dagster.spec import load_spec
from tests.e2e.celery_stack import CATALOGUE, SOURCE, CeleryStack
from tests.e2e.harness import free_port, receipt_key, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]
JOB = "suppliers_onboarding"
ROWS = 12
HOLD = 815_099  # the advisory lock the trigger waits for while the test holds it
TASK_TAG = "dagster-celery/task_id"
FIRST_RUN_TIMEOUT = 180  # the daemon and the workers start, the sensor ticks, five stages run


class PublishHold:
    """Holds each batch publish at its first `change.applied` event while the test holds the advisory lock HOLD."""

    def __init__(self, store: CatalogueStore):
        self.store = store
        self.conn = store.engine.connect()
        events = store.t["events"].name
        self.conn.execute(sa.text(
            "CREATE FUNCTION claro_test_hold() RETURNS trigger AS $$ BEGIN IF NEW.type = 'change.applied' THEN "
            f"PERFORM pg_advisory_xact_lock_shared({HOLD}); END IF; RETURN NEW; END $$ LANGUAGE plpgsql"))
        self.conn.execute(sa.text(f'CREATE TRIGGER claro_test_hold BEFORE INSERT ON "{events}" FOR EACH ROW '
                                  "EXECUTE FUNCTION claro_test_hold()"))
        self.conn.execute(sa.select(sa.func.pg_advisory_lock(HOLD)))
        self.conn.commit()

    def waiting(self) -> list[tuple[int, str]]:
        """(pid, query) of every session waiting for an advisory lock: the held publish (at HOLD) and any publish
        queued behind its catalogue lock."""
        rows = self.conn.execute(sa.text(
            "SELECT a.pid, a.query FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE NOT l.granted AND "
            "l.locktype = 'advisory' AND a.datname = current_database()")).all()
        self.conn.commit()
        return [(r[0], r[1]) for r in rows]

    def held(self) -> tuple[bool, Any]:
        waiting = self.waiting()
        held = [pid for pid, query in waiting if "events" in query.lower()]
        return len(held) == 1, held[0] if held else waiting

    def release(self) -> None:
        self.conn.execute(sa.select(sa.func.pg_advisory_unlock(HOLD)))
        self.conn.commit()

    def close(self) -> None:
        self.conn.close()


def published(store: CatalogueStore) -> dict[str, Any]:
    """What the catalogue holds, committed: record count, publish change sets per batch, duplicate history rows."""
    t = store.t
    with store.engine.connect() as conn:
        sets = conn.execute(sa.select(t["change_sets"].c.id).where(t["change_sets"].c.operation == "publish")).scalars()
        history = conn.execute(sa.select(t["history"].c.record, t["history"].c.field, t["history"].c.change_set,
                                         t["history"].c.kind)).all()
    return {"records": store.count(CATALOGUE), "publish_sets": Counter(s.split(":")[1] for s in sets),
            "duplicate_history": [h for h, n in Counter(map(tuple, history)).items() if n > 1]}


def batch_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    return [r for r in instance.get_runs() if r.job_name == JOB]


def reference_state(stack: CeleryStack, contents: dict[str, bytes], home: Path):
    """The same files run one by one in this process on the embedded store (records and history)."""
    from tests.e2e.test_celery_e2e import catalogue_state

    defs = build_definitions(stack.spec_path, home)
    claro = defs.resources["claro"]
    inbox = claro.inbox_dir(SOURCE)
    inbox.mkdir(parents=True, exist_ok=True)
    with dg.DagsterInstance.ephemeral() as instance:
        for name in sorted(contents):
            (inbox / name).write_bytes(contents[name])
            assert run_batch(defs, instance, receive(claro, SOURCE, inbox / name), quiet=True, notify=False).success
    state = catalogue_state(claro.store)
    shutil.rmtree(home, ignore_errors=True)
    return state


@pytest.fixture
def make_stack(tmp_path, postgres_server):
    """A prepared (not started) Celery stack, its catalogue store opened (tables created) and the hold installed;
    everything stopped and dropped after."""
    made: list[tuple[CeleryStack, CatalogueStore, PublishHold]] = []

    def make(workers: int, broker: str | None = None) -> tuple[CeleryStack, CatalogueStore, PublishHold]:
        stack = CeleryStack(tmp_path / "faults", postgres_server, workers=workers, broker=broker)
        stack.root.mkdir()
        stack.prepare()
        store = CatalogueStore(load_spec(stack.spec_path), stack.store_url)
        made.append((stack, store, None))
        hold = PublishHold(store)
        made[-1] = (stack, store, hold)
        return stack, store, hold

    yield make
    for stack, store, hold in made:
        try:
            if hold is not None:
                hold.close()
            store.dispose()
        finally:
            stack.stop()


@pytest.mark.timeout(300)
def test_a_worker_killed_mid_publish_fails_the_run_and_the_retry_publishes_the_batch_once(make_stack, tmp_path):
    stack, store, hold = make_stack(workers=2)
    started = time.monotonic()
    stack.start()
    [path] = stack.drop_files(1, ROWS)
    key = receipt_key(SOURCE, path)
    contents = {path.name: path.read_bytes()}
    instance = dg.DagsterInstance.from_config(str(stack.dagster_home))
    try:
        dead_pid = stack.wait(hold.held, FIRST_RUN_TIMEOUT, "the batch's publish to wait at its first event", 0.2)
        print(f"{time.monotonic() - started:.1f} s: the publish waits at the hold")
        [first] = batch_runs(instance)
        assert first.tags.get("claro/batch") == key
        # the publish has written the batch's records in its open transaction: none of it is committed
        assert published(store)["records"] == 0
        victim = stack.worker_of_task(instance.get_run_by_id(first.run_id).tags[TASK_TAG])
        assert victim is not None, stack.describe()
        stack.kill_worker(victim)

        # RabbitMQ gives the unacknowledged run to the other worker, which fails it (the run was already STARTED);
        # the daemon retries it; the retry's publish waits for the catalogue lock the dead worker's transaction holds.
        def retried() -> tuple[bool, Any]:
            runs = {r.run_id: r for r in batch_runs(instance)}
            retry = [r for r in runs.values() if r.parent_run_id == first.run_id]
            queued = [pid for pid, _ in hold.waiting() if pid != dead_pid]
            state = (runs[first.run_id].status.value, [(r.run_id[:8], r.status.value) for r in retry], queued)
            return bool(retry and queued), state

        stack.wait(retried, 120, "the retry's publish to wait for the catalogue lock", 0.2)
        print(f"{time.monotonic() - started:.1f} s: the retry waits for the catalogue lock")
        failed = instance.get_run_by_id(first.run_id)
        assert failed.status == dg.DagsterRunStatus.FAILURE
        assert failed.tags.get("dagster/failure_reason") == "RUN_WORKER_RESTART", failed.tags
        # two publishes of the batch were under way: the catalogue still has nothing of it
        assert published(store) == {"records": 0, "publish_sets": Counter(), "duplicate_history": []}
        assert BatchRegistry(store).get(key).status != "published"

        hold.release()  # the dead worker's session finishes its statement, finds its client gone, and rolls back

        def all_finished() -> tuple[bool, Any]:
            runs = batch_runs(instance)
            return all(r.is_finished for r in runs), [(r.run_id[:8], r.status.value) for r in runs]

        stack.wait(all_finished, 120, "the retry to finish", 0.5)
        print(f"{time.monotonic() - started:.1f} s: the retry finished")
        runs = batch_runs(instance)
        assert Counter(r.status for r in runs) == {dg.DagsterRunStatus.FAILURE: 1, dg.DagsterRunStatus.SUCCESS: 1}
        [retry] = [r for r in runs if r.status == dg.DagsterRunStatus.SUCCESS]
        assert retry.parent_run_id == first.run_id and retry.tags.get("claro/batch") == key
        assert stack.worker_of_task(retry.tags[TASK_TAG]) != victim
    finally:
        instance.dispose()

    assert published(store) == {"records": ROWS, "publish_sets": Counter({key: 1}), "duplicate_history": []}
    assert BatchRegistry(store).get(key).status == "published"
    from tests.e2e.test_celery_e2e import catalogue_state

    state = catalogue_state(store)
    assert state == reference_state(stack, contents, tmp_path / "reference")
    # an operator re-runs the batch's publish afterwards: nothing changes, nothing is written twice
    done = subprocess.run([sys.executable, "-m", "claro_dagster.cli", "rerun", key, "records"], env=stack.env(),
                          cwd=stack.spec_path.parent, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "records for" in done.stdout and ": done" in done.stdout and "published" in done.stdout, done.stdout
    assert published(store) == {"records": ROWS, "publish_sets": Counter({key: 1}), "duplicate_history": []}
    assert catalogue_state(store) == state


class PrivateRedis:
    """A redis-server of the test on a free port, persisting to an append-only file so a restart keeps the
    queued tasks (as a production Redis broker must)."""

    def __init__(self, root: Path):
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            pytest.fail("redis-server is not installed: apt-get install redis-server (the broker restart test "
                        "starts its own)")
        self.root = root
        root.mkdir()
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.root / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.root),
                 "--appendonly", "yes", "--save", "", "--protected-mode", "no"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        import redis

        client = redis.Redis.from_url(self.url)

        def answers() -> tuple[bool, Any]:
            assert self.proc.poll() is None, (self.root / "redis.log").read_text()[-2000:]
            try:
                return bool(client.ping()), "PONG"
            except redis.ConnectionError as exc:
                return False, str(exc)

        wait_until(answers, 30, 0.1, what=f"redis-server on port {self.port} to answer")
        client.close()

    def queued(self, queue: str) -> int:
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            return sum(client.llen(name) for name in client.keys(f"{queue}*") if client.type(name) == b"list")
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # a clean shutdown: the append-only file is flushed
            self.proc.wait(30)


@pytest.fixture
def private_redis(tmp_path):
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.mark.timeout(300)
def test_the_broker_restarted_mid_run_loses_and_duplicates_nothing(make_stack, private_redis, tmp_path):
    stack, store, hold = make_stack(workers=1, broker=private_redis.url)
    started = time.monotonic()
    stack.start()
    files = stack.drop_files(3, ROWS)
    keys = {receipt_key(SOURCE, path) for path in files}
    contents = {path.name: path.read_bytes() for path in files}
    instance = dg.DagsterInstance.from_config(str(stack.dagster_home))
    try:
        stack.wait(hold.held, FIRST_RUN_TIMEOUT, "the first batch's publish to wait at its first event", 0.2)

        # one run publishing in the only worker, the other two sent to the broker and waiting in its queue
        def sent() -> tuple[bool, Any]:
            runs = batch_runs(instance)
            launched = [r for r in runs if r.tags.get(TASK_TAG)]
            waiting = private_redis.queued(stack.queue)
            return len(launched) == 3 and waiting == 2, (len(runs), len(launched), waiting)

        stack.wait(sent, 120, "all three runs to be sent to the broker, two of them queued there", 0.2)
        print(f"{time.monotonic() - started:.1f} s: one run publishing, two queued in the broker; restarting it")
        private_redis.stop()
        private_redis.start()
        # No count of the queue here: the worker reconnects at once and takes a queued run, or restores the one it
        # runs (both are what Celery does). That the queued runs survived is shown below: a run whose message was
        # lost would stay STARTING, and not every batch would have its one successful run.
        hold.release()

        def all_finished() -> tuple[bool, Any]:
            runs = batch_runs(instance)
            done = {r.tags.get("claro/batch") for r in runs if r.status == dg.DagsterRunStatus.SUCCESS}
            return done == keys and all(r.is_finished for r in runs), [(r.run_id[:8], r.status.value)
                                                                        for r in runs]

        state = stack.wait(all_finished, 180, "every batch to have a successful run", 0.5)
        print(f"{time.monotonic() - started:.1f} s: every run finished")
        print("runs:", state)
        runs = batch_runs(instance)
        # each batch run exactly once: no run lost (each batch has its successful run) and none run twice
        assert Counter(r.tags.get("claro/batch") for r in runs) == Counter({k: 1 for k in keys}), state
        assert {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
    finally:
        instance.dispose()

    assert published(store) == {"records": 3 * ROWS, "publish_sets": Counter({k: 1 for k in keys}),
                                "duplicate_history": []}
    assert {b.key: b.status for b in BatchRegistry(store).list(CATALOGUE)} == {k: "published" for k in keys}
    from tests.e2e.test_celery_e2e import catalogue_state

    assert catalogue_state(store) == reference_state(stack, contents, tmp_path / "reference")


@pytest.mark.timeout(300)
def test_two_daemons_started_by_mistake_run_each_batch_once(make_stack):
    stack, store, hold = make_stack(workers=1)
    hold.release()  # nothing to hold here
    stack.start()
    stack.start_second_daemon()
    files = stack.drop_files(4, ROWS)
    keys = {receipt_key(SOURCE, path) for path in files}
    instance = dg.DagsterInstance.from_config(str(stack.dagster_home))
    try:
        def all_finished() -> tuple[bool, Any]:
            runs = batch_runs(instance)
            done = {r.tags.get("claro/batch") for r in runs if r.status == dg.DagsterRunStatus.SUCCESS}
            return done == keys and all(r.is_finished for r in runs), [(r.run_id[:8], r.status.value)
                                                                        for r in runs]

        state = stack.wait(all_finished, 240, "every batch to have a successful run", 0.5)
        runs = batch_runs(instance)
        assert Counter(r.tags.get("claro/batch") for r in runs) == Counter({k: 1 for k in keys}), state
        assert {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
    finally:
        instance.dispose()
    # both daemons were evaluating the inbox sensor all along
    for name in ("daemon", "daemon2"):
        log = (stack.logs / f"{name}.log").read_text(errors="replace")
        assert "Checking for new runs for sensor: suppliers_csv_inbox" in log, f"{name} never ticked the sensor"
    assert published(store) == {"records": 4 * ROWS, "publish_sets": Counter({k: 1 for k in keys}),
                                "duplicate_history": []}
