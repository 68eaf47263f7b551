"""The distributed engine of issue 15 item 3, started for real: the Dagster daemon (inbox sensor, queued run
coordinator) on a PostgreSQL instance, dagster-celery's `CeleryRunLauncher` sending each run to a RabbitMQ queue,
and N Celery worker processes executing the runs (CLARO_DEPLOYMENT=prod, CLARO_EXECUTOR=in_process: a run's five
stages run in the warm worker that took it). The catalogue store is PostgreSQL too.

Used by tests/e2e/test_celery_e2e.py (2 workers) and benchmarks/celery_load.py (1, 2, 4 workers). Every process
is in its own process group and stopped by `stop()`; the queue and both databases are unique per stack.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import sys
import uuid
from pathlib import Path

import sqlalchemy as sa

from tests.e2e.harness import DEMO, LOCATION, DagsterStack, group_members, tail, wait_until

DEFAULT_BROKER = "pyamqp://guest:guest@127.0.0.1:5672//"  # the RabbitMQ of the test machine ($CLARO_TEST_BROKER)
SOURCE = "suppliers_csv"
CATALOGUE = "suppliers"
COUNTRIES = ("GB", "DE", "IE", "ES", "FR", "NL")

INSTANCE_YAML = """\
storage:
  postgres:
    postgres_db:
      username: postgres
      password: ""
      hostname: {host}
      port: {port}
      db_name: {db}
      scheme: postgresql+psycopg2
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: {max_runs}
    dequeue_interval_seconds: 1
run_launcher:
  module: dagster_celery.launcher
  class: CeleryRunLauncher
  config:
    broker: "{broker}"
    backend: "rpc://"
    default_queue: "{queue}"
    # a broker restarting while the daemon sends a run: keep trying for about a minute before the launch fails
    config_source: {{task_default_queue: "{queue}",
                    task_publish_retry_policy: {{max_retries: 60, interval_start: 0, interval_step: 0.5,
                                                 interval_max: 1}}}}
# what a worker killed mid-run needs (deploy/README.md "Faults"): the worker the broker gives its task to next fails
# the run, and the daemon retries it; run monitoring would leave it STARTED
run_monitoring:
  enabled: false
run_retries:
  enabled: true
  max_retries: 2
  retry_on_asset_or_op_failure: false
sensors:
  use_threads: true
  num_workers: 2
telemetry:
  enabled: false
"""


def supplier_file(index: int, rows: int) -> bytes:
    """A supplier master file of `rows` distinct suppliers, valid for the demo spec (ids SUP-dddd: files x rows
    stay under 10,000; the files of one load share no supplier, so arrival order cannot change the result)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["supplier_id", "name", "contact_email", "country", "lead_time_days"])
    for row in range(rows):
        writer.writerow([f"SUP-{index * rows + row:04d}", f"Supplier {index} {row} Ltd",
                         f"data{row}@s{index}.example.com", COUNTRIES[(index + row) % len(COUNTRIES)],
                         str(7 + (index * 31 + row) % 50)])
    return out.getvalue().encode()


def create_database(admin_url: str, name: str) -> str:
    engine = sa.create_engine(admin_url.replace("postgresql://", "postgresql+psycopg://", 1),
                              isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def drop_database(admin_url: str, name: str) -> None:
    engine = sa.create_engine(admin_url.replace("postgresql://", "postgresql+psycopg://", 1),
                              isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


class CeleryStack(DagsterStack):
    """Daemon + `workers` Celery workers on PostgreSQL and RabbitMQ (no webserver: the test reads the instance)."""

    def __init__(self, root: Path, admin_url: str, *, workers: int = 2, broker: str | None = None,
                 max_runs: int = 8):
        self.tag = uuid.uuid4().hex[:10]
        self.admin_url = admin_url
        self.broker = broker or os.environ.get("CLARO_TEST_BROKER") or DEFAULT_BROKER
        self.queue = f"claro-test-{self.tag}"
        self.workers = workers
        self.max_runs = max_runs
        self.databases = [f"claro_celery_dagster_{self.tag}", f"claro_celery_store_{self.tag}"]
        self.killed: dict = {}  # workers a fault test killed
        super().__init__(root)

    def prepare(self) -> None:
        dagster_url = create_database(self.admin_url, self.databases[0])
        self.store_url = create_database(self.admin_url, self.databases[1])
        self.extra_env.update(CLARO_DEPLOYMENT="prod", CLARO_EXECUTOR="in_process", CLARO_DATABASE_URL=self.store_url)
        self.spec_path.parent.mkdir(parents=True)
        (self.spec_path).write_bytes((DEMO / "claro.yaml").read_bytes())
        self.home.mkdir()
        self.dagster_home.mkdir()
        self.logs.mkdir()
        parsed = sa.engine.make_url(dagster_url)
        (self.dagster_home / "dagster.yaml").write_text(INSTANCE_YAML.format(
            host=parsed.host, port=parsed.port or 5432, db=parsed.database, max_runs=self.max_runs,
            broker=self.broker, queue=self.queue))
        # the Celery app of `celery -A claro_dagster.celery_worker` (dagster-celery's app with the fault settings)
        # reads this module (as `dagster-celery worker start` writes)
        config_dir = self.root / "celery_config"
        config_dir.mkdir()
        (config_dir / "dagster_celery_config.py").write_text(
            f"broker_url = {self.broker!r}\nresult_backend = 'rpc://'\ntask_default_queue = {self.queue!r}\n")
        self.extra_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (os.environ.get("PYTHONPATH", ""), str(Path(__file__).resolve().parents[2]), str(config_dir))
            if p)
        import subprocess
        subprocess.run([sys.executable, "-c", "import dagster; dagster.DagsterInstance.get().dispose()"],
                       env=self.env(), cwd=self.root, check=True, timeout=120)

    def start(self, only: tuple[str, ...] | None = None) -> None:
        import subprocess
        bindir = Path(sys.executable).parent
        for n in range(self.workers):
            name = f"worker{n + 1}"
            args = [str(bindir / "celery"), "-A", "claro_dagster.celery_worker", "worker", "-Q", self.queue,
                    "--concurrency", "1", "--prefetch-multiplier", "1", "-n", f"{name}-{self.tag}@%h",
                    "--loglevel", "INFO", "--without-gossip", "--without-mingle"]
            with open(self.logs / f"{name}.log", "wb") as log:
                self.procs[name] = subprocess.Popen(args, cwd=self.spec_path.parent, env=self.env(), stdout=log,
                                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                    start_new_session=True)
        super().start(only=("daemon",))

    def start_second_daemon(self, name: str = "daemon2") -> None:
        """Another `dagster-daemon run` on the same instance, as an operator might start by mistake."""
        import subprocess
        with open(self.logs / f"{name}.log", "wb") as log:
            self.procs[name] = subprocess.Popen(
                [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-m", LOCATION],
                cwd=self.spec_path.parent, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)

    def worker_of_task(self, task_id: str) -> str | None:
        """The worker ("worker1", ...) whose log says it received Celery task `task_id` first, if any."""
        for name in sorted(n for n in [*self.procs, *self.killed] if n.startswith("worker")):
            if f"[{task_id}] received" in tail(self.logs / f"{name}.log", 10_000):
                return name
        return None

    def kill_worker(self, name: str) -> None:
        """SIGKILL a worker's process group (its main process and the pool process executing the run), as a lost
        node or the OOM killer would: nothing of it runs a handler or closes a connection cleanly."""
        proc = self.procs.pop(name)  # no longer one of the processes that must stay alive
        self.killed[name] = proc
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        wait_until(lambda: (not group_members(proc.pid), group_members(proc.pid)), 30, 0.1,
                   what=f"the processes of {name} to exit after SIGKILL")

    def drop_files(self, count: int, rows: int) -> list[Path]:
        """Write `count` supplier files into the inbox at once (each as `.part`, renamed into place)."""
        inbox = self.home / "inbox" / "suppliers"
        inbox.mkdir(parents=True, exist_ok=True)
        parts = []
        for index in range(count):
            part = inbox / f"suppliers_{index:04d}.csv.part"
            part.write_bytes(supplier_file(index, rows))
            parts.append(part)
        finals = []
        for part in parts:
            final = part.with_suffix("")
            os.rename(part, final)
            finals.append(final)
        return finals

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            for name in self.databases:
                drop_database(self.admin_url, name)
