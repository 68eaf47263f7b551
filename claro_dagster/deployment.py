"""Local or production: one setting, `CLARO_DEPLOYMENT=local|prod`, chooses the catalogue store, the executor
and what the Dagster instance must be, when the code location loads.

* local (the default): the embedded SQLite store under the project home; the in-process executor (SQLite has one
  writer); the Dagster instance of `dagster.yaml` (SQLite under $DAGSTER_HOME). $CLARO_DATABASE_URL is the one
  way to put a local deployment's catalogue store elsewhere (PostgreSQL for the dbt models, tests on PostgreSQL):
  when it is set at load, the code location uses that store and says so once, as a warning naming the variable
  (a URL left over in a shell would otherwise send a laptop's runs into another database unseen). The store is
  decided at load: a variable set later, only in a run's or the daemon's environment, does not move it.
* prod: the catalogue store on PostgreSQL at $CLARO_DATABASE_URL (required); the multiprocess executor, at most
  $CLARO_MAX_CONCURRENT_STEPS steps of a run at once (default 4); the Dagster instance on PostgreSQL with the
  queued run coordinator and its concurrency limits per source, destination and connector (`dagster.prod.yaml`
  copied to $DAGSTER_HOME/dagster.yaml, its DAGSTER_PG_* variables set).
* prod with `CLARO_EXECUTOR=celery`: as prod, but each step of a run is a Celery task sent to the broker at
  $CLARO_CELERY_BROKER (RabbitMQ or Redis) on queue $CLARO_CELERY_QUEUE (default dagster), executed by
  `dagster-celery worker start -A dagster_celery.app -q QUEUE` processes on any number of machines.
* prod with `CLARO_EXECUTOR=in_process` and dagster-celery's `CeleryRunLauncher` in dagster.yaml: each whole run
  is a Celery task, executed in a warm worker process (no interpreter start per run or step; workers
  `celery -A claro_dagster.celery_worker worker`); the measured engine of the 200-file load test (deploy/README.md
  "Capacity model"). Its instance must have run retries and no run monitoring (deploy/README.md "Faults").

A production setting that misses any of this fails at load with a message naming the variable or file to
fix, instead of quietly running on SQLite. The local setting stays zero-config: `claro run` on the bundled demo
works from a fresh clone.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml import YAML, YAMLError

from claro_dagster.catalogue.opening import DATABASE_URL_ENV, redacted_url

log = logging.getLogger(__name__)
_warned: set[str] = set()  # the local-store warnings this process has given (each once)

DEPLOYMENT_ENV = "CLARO_DEPLOYMENT"
MAX_STEPS_ENV = "CLARO_MAX_CONCURRENT_STEPS"
EXECUTOR_ENV = "CLARO_EXECUTOR"  # prod only: multiprocess (default) | celery
CELERY_BROKER_ENV = "CLARO_CELERY_BROKER"  # the Celery broker URL, e.g. pyamqp://guest@rabbitmq:5672//
CELERY_QUEUE_ENV = "CLARO_CELERY_QUEUE"  # the queue the workers listen on (`-Q`), default "dagster"
EXECUTORS = ("multiprocess", "celery", "in_process")
DEPLOYMENTS = ("local", "prod")
DEFAULT_MAX_STEPS = 4


class DeploymentError(ValueError):
    """The deployment setting, or what it requires, is wrong; the message says what to set."""


@dataclass(frozen=True)
class Deployment:
    name: str  # local | prod
    max_concurrent_steps: int = 1
    executor: str = "in_process"  # in_process (local) | multiprocess | celery (prod, $CLARO_EXECUTOR)
    celery_broker: str | None = None
    celery_queue: str = "dagster"
    store: str = "embedded"  # embedded (SQLite under the project home) | CLARO_DATABASE_URL

    @property
    def production(self) -> bool:
        return self.name == "prod"


def current_deployment(env: dict[str, str] | None = None) -> Deployment:
    """The deployment $CLARO_DEPLOYMENT names (default local), checked: a production deployment whose settings
    are incomplete raises DeploymentError naming each missing variable or file."""
    env = os.environ if env is None else env
    name = (env.get(DEPLOYMENT_ENV) or "local").strip().lower()
    if name not in DEPLOYMENTS:
        raise DeploymentError(f"{DEPLOYMENT_ENV}={env.get(DEPLOYMENT_ENV)!r} is not one of {', '.join(DEPLOYMENTS)}: "
                              "set it to local (embedded SQLite, one process) or prod (PostgreSQL, several workers)")
    if name == "local":
        url = (env.get(DATABASE_URL_ENV) or "").strip()
        if not url:
            return Deployment("local")
        _warn_once(local_store_warning(url))
        return Deployment("local", store=DATABASE_URL_ENV)
    problems = production_problems(env) + _executor_problems(env)
    if problems:
        raise DeploymentError(f"{DEPLOYMENT_ENV}=prod but the production settings are incomplete:\n  - "
                              + "\n  - ".join(problems))
    executor = (env.get(EXECUTOR_ENV) or "multiprocess").strip().lower()
    return Deployment("prod", max_concurrent_steps=_max_steps(env), executor=executor, store=DATABASE_URL_ENV,
                      celery_broker=(env.get(CELERY_BROKER_ENV) or "").strip() or None,
                      celery_queue=(env.get(CELERY_QUEUE_ENV) or "").strip() or "dagster")


def local_store_warning(url: str) -> str:
    """What a local deployment says when $CLARO_DATABASE_URL moves its catalogue store (the password hidden)."""
    return (f"{DEPLOYMENT_ENV}=local and {DATABASE_URL_ENV} is set: the catalogue store is {redacted_url(url)}, not "
            f"the embedded SQLite store under the project home. Unset {DATABASE_URL_ENV} for the embedded store; "
            f"for production (PostgreSQL instance, queued runs, several workers) set {DEPLOYMENT_ENV}=prod.")


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def _executor_problems(env) -> list[str]:
    executor = (env.get(EXECUTOR_ENV) or "multiprocess").strip().lower()
    if executor not in EXECUTORS:
        return [f"{EXECUTOR_ENV}={env.get(EXECUTOR_ENV)!r} is not one of {', '.join(EXECUTORS)}: multiprocess runs "
                "a run's steps in processes of its run worker, celery sends them to Celery workers, in_process runs "
                "them in the run worker (for the Celery run launcher, whose workers each execute whole runs)"]
    if executor == "celery" and not (env.get(CELERY_BROKER_ENV) or "").strip():
        return [f"{EXECUTOR_ENV}=celery but {CELERY_BROKER_ENV} is not set: set it to the broker the Celery workers "
                "listen on, e.g. pyamqp://guest@rabbitmq:5672// or redis://redis:6379/0"]
    return []


def _max_steps(env) -> int:
    raw = env.get(MAX_STEPS_ENV) or str(DEFAULT_MAX_STEPS)
    if not raw.strip().isdigit() or int(raw) < 1:
        raise DeploymentError(f"{MAX_STEPS_ENV}={raw!r}: give a whole number of steps a run may execute at once "
                              f"(at least 1; default {DEFAULT_MAX_STEPS})")
    return int(raw)


def production_problems(env) -> list[str]:
    """What a production deployment lacks, one sentence each (empty when it is complete)."""
    problems = []
    url = env.get(DATABASE_URL_ENV, "").strip()
    if not url:
        problems.append(f"{DATABASE_URL_ENV} is not set: set it to the catalogue store's PostgreSQL URL, e.g. "
                        "postgresql://claro:PASSWORD@db.internal:5432/claro")
    elif not url.startswith(("postgresql", "postgres:")):
        problems.append(f"{DATABASE_URL_ENV} is not a PostgreSQL URL (it starts {url.split(':', 1)[0]!r}): production "
                        "runs several workers, which the embedded SQLite store cannot serve")
    home = env.get("DAGSTER_HOME", "").strip()
    if not home:
        problems.append("DAGSTER_HOME is not set: point it at the folder holding the production instance's "
                        "dagster.yaml (a copy of dagster.prod.yaml)")
        return problems
    config_path = Path(home) / "dagster.yaml"
    if not config_path.is_file():
        problems.append(f"{config_path} does not exist: copy dagster.prod.yaml there")
        return problems
    try:
        config = YAML(typ="safe").load(config_path.read_text(encoding="utf-8")) or {}
    except YAMLError as exc:
        problems.append(f"{config_path} is not valid YAML: {exc}")
        return problems
    if not _postgres_storage(config):
        problems.append(f"{config_path}: the Dagster instance does not store runs on PostgreSQL (no `storage: "
                        "postgres:`); copy dagster.prod.yaml there")
    coordinator = (config.get("run_coordinator") or {}).get("class")
    queued = coordinator == "QueuedRunCoordinator" or (coordinator is None and "runs" in (config.get("concurrency")
                                                                                          or {}))
    if not queued:
        problems.append(f"{config_path}: no queued run coordinator with concurrency limits (`run_coordinator: "
                        "QueuedRunCoordinator` with tag_concurrency_limits, as in dagster.prod.yaml)")
    problems.extend(celery_launcher_problems(config, config_path))
    for variable in sorted(set(re.findall(r"\{\s*env:\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}", config_path.read_text()))):
        if not env.get(variable):
            problems.append(f"{variable} is not set ({config_path} reads it)")
    return problems


def celery_launcher_problems(config: dict, config_path: Path | str = "dagster.yaml") -> list[str]:
    """What an instance with dagster-celery's CeleryRunLauncher lacks to survive a worker killed mid-run
    (deploy/README.md "Faults"): the broker gives the run's task to another worker, which marks the run failed,
    and run retries run it again. Run monitoring would instead ignore that task and leave the run STARTED."""
    if (config.get("run_launcher") or {}).get("class") != "CeleryRunLauncher":
        return []
    problems = []
    if (config.get("run_monitoring") or {}).get("enabled"):
        problems.append(f"{config_path}: `run_monitoring: enabled: true` with CeleryRunLauncher: a run whose worker "
                        "was killed would stay STARTED (the monitor ignores the task the broker gives another "
                        "worker, and cannot see a Celery worker's health); set `run_monitoring: {enabled: false}` "
                        "and keep `run_retries` (the claro_dagster.celery_worker workers fail such a run, and the "
                        "retry runs it again)")
    retries = config.get("run_retries") or {}
    if not retries.get("enabled") or int(retries.get("max_retries") or 0) < 1:
        problems.append(f"{config_path}: no `run_retries` with CeleryRunLauncher: a run whose worker was killed "
                        "is failed and never run again; set `run_retries: {enabled: true, max_retries: 2, "
                        "retry_on_asset_or_op_failure: false}`")
    return problems


def _postgres_storage(config: dict) -> bool:
    storage = config.get("storage") or {}
    if "postgres" in storage:
        return True
    run_storage = (config.get("run_storage") or {}).get("class", "")
    return "Postgres" in run_storage


def executor_for(deployment: Deployment):
    """The Dagster executor of every job: in-process locally (SQLite has one writer), multiprocess in
    production (steps of a run in parallel processes, at most `max_concurrent_steps` at once)."""
    import dagster as dg

    if deployment.executor == "celery":
        from dagster_celery import celery_executor  # the `celery` extra: pip install 'claro-dagster[celery]'

        # Each step is a Celery task on `celery_queue`; the run worker waits for its result (rpc:// backend over
        # the broker). Steps publish under the catalogue's advisory lock, so any number of workers is safe.
        return celery_executor.configured({"broker": deployment.celery_broker, "backend": "rpc://",
                                           "config_source": {"task_default_queue": deployment.celery_queue}})
    if deployment.executor == "in_process":
        return dg.in_process_executor
    if deployment.production:
        return dg.multiprocess_executor.configured({"max_concurrent": deployment.max_concurrent_steps})
    return dg.in_process_executor
