"""Load test of the distributed engine (issue 15 item 3): supplier files dropped at once into the inbox of a
production deployment whose runs are executed by N Celery worker processes (dagster-celery's run launcher on
RabbitMQ, PostgreSQL instance and catalogue store, the daemon's inbox sensor and queued run coordinator).

    python benchmarks/celery_load.py --workers 1 2 4 --files 200 --rows 20
    python benchmarks/celery_load.py --workers 2 --files 40 --rows 250     # bigger files

The clock starts when the files are in the inbox and stops when every batch run has finished; each setting is a
fresh stack (databases, queue, daemon, workers). Printed per setting: batches per minute, rows per second, and the
mean duration of each stage's step (the per-stage costs the capacity model of deploy/README.md starts from).
Not a test: nothing is asserted but that every batch run succeeded once.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/celery_load.py` from anywhere

import dagster as dg  # noqa: E402

from tests.e2e.celery_stack import CeleryStack  # noqa: E402

DEFAULT_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
JOB = "suppliers_onboarding"


def measure(workers: int, files: int, rows: int, admin_url: str, max_runs: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="claro-celery-load-") as tmp:
        stack = CeleryStack(Path(tmp) / "stack", admin_url, workers=workers, max_runs=max_runs)
        stack.root.mkdir()
        stack.prepare()
        try:
            stack.start()
            # wait for the workers to be ready and the sensor to have ticked once, so only the load is timed
            stack.wait(lambda: (all("ready." in (stack.logs / f"worker{n + 1}.log").read_text(errors="replace")
                                    for n in range(workers)), "workers starting"), 120, "Celery workers ready")
            instance = dg.DagsterInstance.from_config(str(stack.dagster_home))
            try:
                before = database_sizes(admin_url, stack.databases)  # empty databases: ~7.5 MiB each
                started = time.monotonic()
                stack.drop_files(files, rows)

                def finished():
                    runs = [r for r in instance.get_runs() if r.job_name == JOB]
                    done = [r for r in runs if r.is_finished]
                    return len(runs) >= files and len(done) == len(runs), len(done)

                stack.wait(finished, 3600, f"{files} batch runs", interval=1.0)
                elapsed = time.monotonic() - started
                runs = [r for r in instance.get_runs() if r.job_name == JOB]
                statuses = Counter(r.status.value for r in runs)
                per_key = Counter(r.tags.get("claro/batch") for r in runs)
                stage_seconds: dict[str, list[float]] = defaultdict(list)
                run_seconds = []
                for run in runs:
                    stats = instance.get_run_stats(run.run_id)
                    if stats.start_time and stats.end_time:
                        run_seconds.append(stats.end_time - stats.start_time)
                    for step in instance.get_run_step_stats(run.run_id):
                        if step.start_time and step.end_time:
                            stage_seconds[step.step_key.split("__", 1)[1]].append(step.end_time - step.start_time)
                sizes = database_sizes(admin_url, stack.databases)
            finally:
                instance.dispose()
        finally:
            stack.stop()
    return {
        "workers": workers, "files": files, "rows_per_file": rows, "seconds": round(elapsed, 1),
        "batches_per_minute": round(files / elapsed * 60, 1), "rows_per_second": round(files * rows / elapsed, 1),
        "statuses": dict(statuses), "runs_per_batch": sorted(set(per_key.values())),
        "mean_run_seconds": round(statistics.mean(run_seconds), 2) if run_seconds else None,
        "mean_stage_seconds": {k: round(statistics.mean(v), 3) for k, v in stage_seconds.items()},
        "dagster_db_kib_per_run": round((sizes[0] - before[0]) / 1024 / max(len(runs), 1), 1),
        "store_db_bytes_per_row": round((sizes[1] - before[1]) / (files * rows)),
    }


def database_sizes(admin_url: str, names: list[str]) -> list[int]:
    """pg_database_size of each database (the Dagster instance's, the catalogue store's) after the load."""
    import sqlalchemy as sa

    engine = sa.create_engine(admin_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as conn:
        sizes = [conn.execute(sa.text("SELECT pg_database_size(:n)"), {"n": n}).scalar_one() for n in names]
    engine.dispose()
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--max-runs", type=int, default=8, help="max_concurrent_runs of the queued coordinator")
    parser.add_argument("--postgres-url", default=DEFAULT_ADMIN, help="a database to connect to to create others")
    args = parser.parse_args()
    if args.files * args.rows > 10_000:
        parser.error("the demo's supplier ids are SUP-dddd: files x rows must stay at most 10,000")
    for workers in args.workers:
        print(json.dumps(measure(workers, args.files, args.rows, args.postgres_url, args.max_runs)), flush=True)


if __name__ == "__main__":
    main()
