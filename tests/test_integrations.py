"""claro_dagster.integrations without the servers: the modules load in Prefect's and Airflow's own virtualenvs
without Dagster; missing settings are named; the dagster-airlift example says what it needs."""

from __future__ import annotations

import runpy

import pytest

from claro_dagster.integrations import ClaroError, connect
from tests.e2e.orchestrators import REPO, run_in_venv

NO_DAGSTER = ("import sys, claro_dagster.integrations.{0} as m\n"
              "loaded = sorted(n for n in sys.modules if n.split('.')[0] in ('dagster', 'dagster_graphql', 'pandas'))\n"
              "print('dagster modules:', loaded, m.ClaroRunFailed.__name__)")


@pytest.mark.parametrize("venv, tool", [("prefect", "prefect"), ("airflow", "airflow"), ("airflow2", "airflow")])
def test_the_integration_loads_in_its_own_venv_without_dagster(venv, tool, tmp_path):
    # .venvs/airflow2: the Airflow 2 that dagster-airlift observes (tests/e2e/test_airlift_e2e.py); PYTHONPATH: the
    # checkout under test, whichever one the venv's editable install points at
    env = {"PREFECT_HOME": str(tmp_path / "prefect"), "AIRFLOW_HOME": str(tmp_path / "airflow"),
           "PYTHONPATH": str(REPO)}
    done = run_in_venv(venv, ["-c", NO_DAGSTER.format(tool)], env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "dagster modules: [] ClaroRunFailed" in done.stdout
    no_dagster = run_in_venv(venv, ["-c", "import dagster"], env=env, cwd=tmp_path, timeout=60)
    assert no_dagster.returncode != 0 and "No module named 'dagster'" in no_dagster.stdout


def test_connect_names_the_missing_settings(monkeypatch):
    monkeypatch.delenv("CLARO_API_URL", raising=False)
    monkeypatch.delenv("CLARO_API_TOKEN", raising=False)
    with pytest.raises(ClaroError, match=r"CLARO_API_URL and CLARO_API_TOKEN not set: pass url=/token="):
        connect()
    monkeypatch.setenv("CLARO_API_URL", "http://127.0.0.1:1")
    with pytest.raises(ClaroError, match=r"^CLARO_API_TOKEN not set"):
        connect()


def test_the_airlift_example_names_the_airflow_settings_it_needs(monkeypatch):
    for name in ("AIRFLOW_WEBSERVER_URL", "AIRFLOW_USERNAME", "AIRFLOW_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match="AIRFLOW_WEBSERVER_URL, AIRFLOW_USERNAME, AIRFLOW_PASSWORD not set"):
        runpy.run_path(str(REPO / "examples" / "airflow" / "airlift_observe.py"))
