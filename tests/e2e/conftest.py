"""End-to-end fixtures: attach the Dagster process logs to the report of a failed e2e test."""

from __future__ import annotations

import pytest


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
