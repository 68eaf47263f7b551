"""The Celery app of the workers behind dagster-celery's `CeleryRunLauncher` (each whole run is one Celery task):
`celery -A claro_dagster.celery_worker worker -Q QUEUE --concurrency 1`.

It is dagster-celery's own app (`dagster_celery.app`: the same `execute_job`, `resume_job` and `execute_plan`
tasks; broker and queue from a `dagster_celery_config` module on the PYTHONPATH, the broker from
$CLARO_CELERY_BROKER when set) with the settings that decide what a fault does (deploy/README.md "Faults"):

* A worker killed mid-run (OOM, node lost, `kill -9`). The task is acknowledged only when the run ends
  (`task_acks_late`), also when the pool process executing it dies (`task_reject_on_worker_lost`), so the broker
  gives it to another worker. That worker finds the run already STARTED and, with run monitoring off, Dagster marks
  the run failed ("started a new run worker while the run was already in state STARTED"); the daemon's run retries
  (`run_retries` in dagster.yaml) then launch a retry, which re-executes the stages that had not finished. The dead
  worker's `records` stage had not committed (a change set is one transaction), so the retry publishes the batch
  once. `deployment.py` refuses a CeleryRunLauncher instance with run monitoring on (it would ignore the redelivered
  task and leave the run STARTED) or without run retries.
* The broker restarted. Workers and the daemon reconnect and keep retrying (`broker_connection_max_retries`
  None); a message is in the broker until its run ends, so one queued or running during the restart is not lost,
  provided the broker keeps it: RabbitMQ with durable queues (dagster-celery's default), Redis with persistence
  (`appendonly yes`). On Redis an unacknowledged task comes back only after `visibility_timeout`: keep it above the
  longest run, or a run still running is given to a second worker.
"""

from __future__ import annotations

import os

from dagster_celery.make_app import make_app
from dagster_celery.tasks import create_execute_job_task, create_resume_job_task, create_task

#: Longest run, in seconds, a Redis broker waits for before it gives an unacknowledged task to another worker
#: (dagster.prod.yaml's `max_runtime_seconds` is 2 h).
REDIS_VISIBILITY_TIMEOUT = 4 * 3600

FAULT_SETTINGS = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,  # a worker holds no run it has not started (another worker can take it)
    "broker_connection_retry": True,
    "broker_connection_retry_on_startup": True,
    "broker_connection_max_retries": None,  # keep reconnecting to a restarting broker
    # A worker that loses the broker puts its unacknowledged run back in the queue ("Restoring 1 unacknowledged
    # message") and lets the run go on. Cancelling it instead (True, Celery 6's default) only sends the run a
    # SIGTERM, which Dagster turns into a failed step that its retry policy runs again in the same process: the
    # same outcome, 15-60 s later. A second delivery of the run's task is harmless: Dagster ignores it once the run
    # has finished, and fails and retries a run still STARTED, whose publish then finds its change set applied.
    "worker_cancel_long_running_tasks_on_connection_loss": False,
}


def make_worker_app():
    """dagster-celery's app with the fault settings above (and $CLARO_CELERY_BROKER as the broker when set)."""
    app = make_app()
    app.conf.update(FAULT_SETTINGS)
    broker = (os.environ.get("CLARO_CELERY_BROKER") or "").strip()
    if broker:
        app.conf.broker_url = broker
    options = dict(app.conf.broker_transport_options or {})
    options.setdefault("visibility_timeout", REDIS_VISIBILITY_TIMEOUT)
    app.conf.broker_transport_options = options
    return app


app = make_worker_app()
execute_plan = create_task(app)
execute_job = create_execute_job_task(app)
resume_job = create_resume_job_task(app)
