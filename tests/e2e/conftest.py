"""End-to-end fixtures: the real webserver + daemon of a temporary project (`dagster_stack`), and their process
logs attached to the report of a failed e2e test."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.harness import DagsterStack


@pytest.fixture
def dagster_env() -> dict[str, str]:
    """Extra environment variables of the Dagster processes; a test module overrides this fixture to set some."""
    return {}


@pytest.fixture
def dagster_stack(tmp_path: Path, dagster_env: dict[str, str]):
    stack = DagsterStack(tmp_path, extra_env=dagster_env)
    stack.prepare()
    try:
        stack.start()
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    stack = getattr(item, "funcargs", {}).get("dagster_stack")
    if stack is not None:
        for title, text in stack.log_tails():
            report.sections.append((title, text))
