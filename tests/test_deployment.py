"""One setting chooses local or production (issue 15 item 1): CLARO_DEPLOYMENT=local|prod. Production missing
its PostgreSQL settings fails when the definitions load, naming the variable; local stays zero-config."""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path

import dagster as dg
import pytest

from claro_dagster.definitions import build_definitions
from claro_dagster.deployment import DeploymentError, current_deployment
from claro_dagster.spec import DEMO_DIR

ROOT = Path(__file__).parents[1]
PG_VARS = {"DAGSTER_PG_USERNAME": "dagster", "DAGSTER_PG_PASSWORD": "pw", "DAGSTER_PG_HOST": "db.internal",
           "DAGSTER_PG_DB": "dagster"}


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("CLARO_DEPLOYMENT", "CLARO_DATABASE_URL", "DAGSTER_HOME", "CLARO_MAX_CONCURRENT_STEPS",
                 "CLARO_EXECUTOR",
                 "CLARO_CELERY_BROKER", "CLARO_CELERY_QUEUE", *PG_VARS):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def build(tmp_path):
    return build_definitions(DEMO_DIR / "claro.yaml", tmp_path / "home")


def executor_of(defs) -> dg.ExecutorDefinition:
    return defs.resolve_job_def("products_onboarding").executor_def


def test_local_is_the_default_in_process_on_the_embedded_store(clean_env, tmp_path):
    defs = build(tmp_path)
    assert executor_of(defs).name == "in_process"
    assert defs.resources["claro"].database_url is None  # the embedded SQLite store under the home


def test_local_with_a_database_url_uses_that_store_and_says_so_once_without_the_password(clean_env, tmp_path,
                                                                                          caplog):
    url = f"postgresql://claro:s3cret@db-{uuid.uuid4().hex[:8]}.internal:5432/claro"  # a warning not given before
    clean_env.setenv("CLARO_DATABASE_URL", url)
    with caplog.at_level(logging.WARNING, logger="claro_dagster.deployment"):
        defs = build(tmp_path)
        build(tmp_path)  # loaded again (a reload in the UI): not said again
    assert executor_of(defs).name == "in_process" and current_deployment().store == "CLARO_DATABASE_URL"
    claro = defs.resources["claro"]
    assert isinstance(claro.database_url, dg.EnvVar) and claro.database_url.env_var_name == "CLARO_DATABASE_URL"
    [warning] = [r.getMessage() for r in caplog.records if "CLARO_DATABASE_URL is set" in r.getMessage()]
    assert warning.startswith("CLARO_DEPLOYMENT=local and CLARO_DATABASE_URL is set: the catalogue store is "
                              "postgresql://claro:***@db-")
    assert "Unset CLARO_DATABASE_URL for the embedded store" in warning and "CLARO_DEPLOYMENT=prod" in warning
    assert "s3cret" not in warning


def test_local_without_a_database_url_keeps_the_embedded_store_whatever_is_set_later(clean_env, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="claro_dagster.deployment"):
        defs = build(tmp_path)
    assert caplog.records == [] and current_deployment().store == "embedded"
    # Set only where a run or the daemon executes, after the code location loaded: the store does not move.
    clean_env.setenv("CLARO_DATABASE_URL", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    store = defs.resources["claro"].store
    assert store.url == f"sqlite:///{(tmp_path / 'home' / 'catalogue.db').resolve()}"
    assert not (tmp_path / "elsewhere.db").exists()


def test_production_without_its_database_url_fails_at_load_naming_the_variable(clean_env, tmp_path):
    clean_env.setenv("CLARO_DEPLOYMENT", "prod")
    with pytest.raises(DeploymentError, match="CLARO_DATABASE_URL is not set") as raised:
        build(tmp_path)
    assert "DAGSTER_HOME is not set" in str(raised.value)


def test_production_refuses_sqlite_and_a_local_dagster_instance(clean_env, tmp_path):
    clean_env.setenv("CLARO_DEPLOYMENT", "prod")
    clean_env.setenv("CLARO_DATABASE_URL", f"sqlite:///{tmp_path / 'c.db'}")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    clean_env.setenv("DAGSTER_HOME", str(home))
    with pytest.raises(DeploymentError) as raised:
        build(tmp_path)
    message = str(raised.value)
    assert "CLARO_DATABASE_URL is not a PostgreSQL URL" in message
    assert "does not store runs on PostgreSQL" in message and "queued run coordinator" not in message


def test_production_runs_steps_in_several_processes_on_postgresql(clean_env, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.prod.yaml", home / "dagster.yaml")
    clean_env.setenv("CLARO_DEPLOYMENT", "prod")
    clean_env.setenv("DAGSTER_HOME", str(home))
    clean_env.setenv("CLARO_DATABASE_URL", "postgresql://claro:pw@db.internal:5432/claro")
    with pytest.raises(DeploymentError, match="DAGSTER_PG_HOST is not set"):  # dagster.prod.yaml reads it
        build(tmp_path)
    for name, value in PG_VARS.items():
        clean_env.setenv(name, value)
    clean_env.setenv("CLARO_MAX_CONCURRENT_STEPS", "6")
    defs = build(tmp_path)
    executor = executor_of(defs)
    assert executor.name == "multiprocess"
    assert current_deployment().max_concurrent_steps == 6
    claro = defs.resources["claro"]
    assert isinstance(claro.database_url, dg.EnvVar) and claro.database_url.env_var_name == "CLARO_DATABASE_URL"


def test_an_unknown_deployment_names_the_choices(clean_env, tmp_path):
    clean_env.setenv("CLARO_DEPLOYMENT", "staging")
    with pytest.raises(DeploymentError, match=r"CLARO_DEPLOYMENT='staging' is not one of local, prod"):
        build(tmp_path)


def _complete_prod(env, tmp_path):
    env.setenv("CLARO_DEPLOYMENT", "prod")
    env.setenv("CLARO_DATABASE_URL", "postgresql://claro@db.internal:5432/claro")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.prod.yaml", home / "dagster.yaml")
    env.setenv("DAGSTER_HOME", str(home))
    for name, value in PG_VARS.items():
        env.setenv(name, value)


def test_celery_executor_in_production_needs_its_broker(clean_env, tmp_path):
    _complete_prod(clean_env, tmp_path)
    clean_env.setenv("CLARO_EXECUTOR", "celery")
    clean_env.delenv("CLARO_CELERY_BROKER", raising=False)
    with pytest.raises(DeploymentError, match="CLARO_CELERY_BROKER is not set"):
        current_deployment()
    clean_env.setenv("CLARO_EXECUTOR", "dask")
    with pytest.raises(DeploymentError, match="CLARO_EXECUTOR=.dask. is not one of multiprocess, celery, in_process"):
        current_deployment()


def test_celery_executor_sends_steps_to_the_named_broker_and_queue(clean_env, tmp_path):
    from claro_dagster.deployment import executor_for

    _complete_prod(clean_env, tmp_path)
    clean_env.setenv("CLARO_EXECUTOR", "celery")
    clean_env.setenv("CLARO_CELERY_BROKER", "pyamqp://guest@rabbit.internal:5672//")
    clean_env.setenv("CLARO_CELERY_QUEUE", "claro-steps")
    deployment = current_deployment()
    assert (deployment.executor, deployment.celery_broker, deployment.celery_queue) == (
        "celery", "pyamqp://guest@rabbit.internal:5672//", "claro-steps")
    executor = executor_for(deployment)
    assert executor.name == "celery"
    config = executor.apply_config_mapping({}).value["config"]
    assert config["broker"] == "pyamqp://guest@rabbit.internal:5672//"
    assert config["config_source"] == {"task_default_queue": "claro-steps"}
    clean_env.delenv("CLARO_EXECUTOR")
    assert executor_for(current_deployment()).name == "multiprocess"


def test_the_celery_run_launcher_needs_run_retries_and_no_run_monitoring(clean_env, tmp_path):
    """With CeleryRunLauncher a run whose worker was killed is failed by the worker the broker gives it to next, and
    run retries run it again (deploy/README.md "Faults"); run monitoring would leave it STARTED instead."""
    from ruamel.yaml import YAML

    _complete_prod(clean_env, tmp_path)
    clean_env.setenv("CLARO_EXECUTOR", "in_process")
    path = tmp_path / "dagster_home" / "dagster.yaml"
    yaml = YAML(typ="safe")
    config = yaml.load(path.read_text())
    config["run_launcher"] = {"module": "dagster_celery.launcher", "class": "CeleryRunLauncher",
                              "config": {"broker": "pyamqp://guest@rabbit.internal:5672//", "default_queue": "claro"}}
    with open(path, "w") as out:  # dagster.prod.yaml as it is: monitoring on (for the default launcher), retries on
        yaml.dump(config, out)
    with pytest.raises(DeploymentError, match="run_monitoring: enabled: true. with CeleryRunLauncher") as refused:
        current_deployment()
    assert "no `run_retries`" not in str(refused.value)
    config["run_monitoring"] = {"enabled": False}
    config["run_retries"] = {"enabled": False}
    with open(path, "w") as out:
        yaml.dump(config, out)
    with pytest.raises(DeploymentError, match="no `run_retries` with CeleryRunLauncher"):
        current_deployment()
    config["run_retries"] = {"enabled": True, "max_retries": 2, "retry_on_asset_or_op_failure": False}
    with open(path, "w") as out:
        yaml.dump(config, out)
    assert current_deployment().executor == "in_process"
