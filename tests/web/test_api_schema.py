"""Property-based tests of the REST API generated from its OpenAPI document (schemathesis): for every operation,
requests built from the document's schemas (valid ones, and invalid ones) never get a server error, and every
answer has a status, content type and body the document declares.

The cases are drawn with hypothesis from schemathesis' strategies rather than through schemathesis' pytest plugin
(its `parametrize` does not run under pytest 9, which this project uses)."""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.api_project import Project

ITEMS = int(os.environ.get("CLARO_API_EXAMPLES", "30"))  # cases per operation and mode; more for a deeper search


@pytest.fixture(scope="module")
def api_project(tmp_path_factory):
    return Project(tmp_path_factory.mktemp("api-schema"))


@pytest.fixture(scope="module")
def operations(api_project):
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", api_project.app)
    return {op.ok().label: op.ok() for op in schema.get_all_operations()}


LABELS = ["GET /me", "GET /catalogues", "GET /catalogues/{catalogue}/records",
          "GET /catalogues/{catalogue}/records/{key}", "POST /catalogues/{catalogue}/proposals", "GET /changes",
          "GET /review", "GET /review/{id}", "POST /review/{id}/decision", "GET /runs", "POST /runs",
          "GET /runs/{run_id}", "GET /batches", "GET /batches/{key}", "GET /audit"]


def test_the_document_lists_the_operations_tested(operations):
    assert sorted(operations) == sorted(LABELS)


@pytest.mark.parametrize("label", LABELS)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_each_operation_conforms_to_the_document(operations, api_project, label, mode):
    operation = operations[label]

    @given(st.data())
    @settings(max_examples=ITEMS, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(data):
        case = data.draw(operation.as_strategy(generation_mode=mode))
        # Not positive_data_acceptance: a filter or an attribute name can fit the schema and still be refused (400/422)
        # by meaning, which no schema can say; every other check (no 5xx, declared statuses, content types and
        # bodies, negative data refused) applies.
        case.call_and_validate(headers=api_project.auth("admin"), excluded_checks=[positive_data_acceptance])

    check()
