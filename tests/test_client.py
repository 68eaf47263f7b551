"""`ClaroClient` against the real app of `claro serve` on a loopback port (uvicorn in a thread), with the fake
launcher of `tests/api_project.py` playing Dagster."""

from __future__ import annotations

import pytest

from claro_dagster.catalogue.changes import Change as StoreChange
from claro_dagster.catalogue.changes import ChangeSet
from claro_dagster.client import (
    AuthenticationError,
    BadRequest,
    ClaroClient,
    ClaroError,
    DagsterUnavailable,
    NotFound,
    ProposalRefused,
    RunCancelled,
    RunFailed,
    ScopeError,
    TargetUnavailable,
    WaitTimeout,
)
from tests.api_project import Project, Served


@pytest.fixture
def api(tmp_path):
    project = Project(tmp_path)
    served = Served(project.app)
    project.served_url = served.url
    yield project
    served.stop()


class Waits:
    """The client's sleep and clock: time passes only when the client sleeps."""

    def __init__(self):
        self.now, self.slept = 0.0, []

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds

    def clock(self):
        return self.now


def client(api, token="admin", **kw) -> ClaroClient:
    return ClaroClient(api.served_url, api.secrets.get(token, token), **kw)


def test_records_record_and_changes(api):
    c = client(api, "reader")
    assert [r["sku"] for r in c.records("products", page_size=2)] == ["A1", "B2", "C3"]
    assert list(c.records(filter="price > 4", columns=["price"])) == [{"sku": "A1", "price": 4.5},
                                                                     {"sku": "C3", "price": 12.0}]
    record = c.record("A1")  # the project has one catalogue: the client finds it
    assert record.values["title"] == "Mug" and record.provenance["price"]["change_set"] == "import-1"
    page = c.changes(0)
    assert [ch.record for ch in page.changes] == ["A1", "B2", "C3"] and page.caught_up
    assert page.changes[0].kind == "created" and page.changes[0].values["price"] == 4.5
    assert page.changes[0].type == "change.applied" and page.changes[0].extra["operation"] == "import"
    store = api.store()
    store.apply(ChangeSet("reprice", "products", "normalize", [StoreChange("B2", "price", 3.5, 100)]))
    store.dispose()
    more = c.changes(page.next)
    assert [(ch.kind, ch.record, ch.old, ch.new, ch.extra["operation"]) for ch in more.changes] == [
        ("updated", "B2", 3.0, 3.5, "normalize")]


def test_clear_errors(api):
    c = client(api, "reader")
    with pytest.raises(BadRequest) as bad:
        list(c.records("products", filter="price >> 1"))
    assert bad.value.position == 7 and "position 7" in str(bad.value)
    with pytest.raises(BadRequest, match="ahead of the newest change"):
        c.changes(999)
    with pytest.raises(NotFound, match="no record 'ZZ'"):
        c.record("ZZ", "products")
    with pytest.raises(ScopeError, match="lacks the scope propose"):
        c.propose([{"record": "A1", "field": "title", "value": "x"}], "products")
    with pytest.raises(AuthenticationError):
        client(api, "not-a-token").me()
    api.tokens.revoke(api.tokens.list()[0].id)  # the reader's token
    with pytest.raises(AuthenticationError, match="revoked"):
        c.me()
    with pytest.raises(ClaroError, match="did not answer"):
        ClaroClient("http://127.0.0.1:9", "x", max_attempts=2, sleep=lambda s: None).me()


def test_propose_lands_in_review_and_refusals_list_problems(api):
    c = client(api, "proposer")
    result = c.propose([{"record": "A1", "field": "title", "value": "Mug XL", "confidence": 99}], "products",
                       id="erp-1")
    assert (result.queued, result.applied, result.capped, result.source) == (1, 0, [0], "api:proposer")
    assert c.propose([{"record": "A1", "field": "title", "value": "Mug XL"}], "products", id="erp-1").already_applied
    with pytest.raises(ProposalRefused) as refused:
        c.propose([{"record": "A1", "field": "price", "value": "cheap"},
                   {"record": "A1", "field": "colour", "value": "red"}], "products")
    assert len(refused.value.problems) == 2 and "not a number" in refused.value.problems[0]
    reviewer = client(api, "admin")
    item = reviewer.review_items("products")[0]
    assert reviewer.decide(item["id"], "approve")["status"] == "approved"
    assert c.record("A1", "products").values["title"] == "Mug XL"
    [approved] = client(api, "reader").changes(3).changes  # after the three imported records
    assert (approved.type, approved.kind, approved.record, approved.old, approved.new) == (
        "change.approved", "updated", "A1", "Mug", "Mug XL")


def test_run_and_wait(api):
    waits = Waits()
    c = client(api, "runner", sleep=waits.sleep, clock=waits.clock)
    run_id = c.run("products", "analyse", filter="price > 1")
    done = c.wait(run_id, timeout=60, poll=5)
    assert (done.status, done.done) == ("SUCCESS", True)
    assert waits.slept == [5, 5]  # QUEUED, STARTED, then SUCCESS
    assert api.launcher.launched[-1] == ("products", "analyse", "price > 1", "api:runner")


def test_waiting_on_a_cancelled_or_failed_run_or_too_long(api):
    waits = Waits()
    c = client(api, "runner", sleep=waits.sleep, clock=waits.clock)
    cancelled = c.run("products", "onboarding")
    api.launcher.statuses[cancelled] = ["STARTED", "CANCELING", "CANCELED"]
    with pytest.raises(RunCancelled, match="cancelled") as exc:
        c.wait(cancelled, timeout=60, poll=1)
    assert exc.value.run.status == "CANCELED"
    failed = c.run("products", "export")
    api.launcher.statuses[failed] = ["FAILURE"]
    with pytest.raises(RunFailed, match="failed") as exc:
        c.wait(failed, timeout=60)
    assert not isinstance(exc.value, RunCancelled)
    slow = c.run("products", "analyse")
    api.launcher.statuses[slow] = ["STARTED"]
    with pytest.raises(WaitTimeout, match="still STARTED after 10s"):
        c.wait(slow, timeout=10, poll=3)
    assert waits.slept[-4:] == [3, 3, 3, 1]


def test_a_run_when_dagster_is_down(api):
    api.launcher.down = True
    waits = Waits()
    c = client(api, "runner", sleep=waits.sleep, max_attempts=3)
    with pytest.raises(DagsterUnavailable, match="unreachable.*claro dev"):
        c.run("products", "analyse")
    assert waits.slept == []  # starting a run is never retried
    with pytest.raises(DagsterUnavailable):
        c.status("run-1")
    assert len(waits.slept) == 2  # reading is: the HTTP layer's backoff between three attempts


def test_dbt_build_without_a_dbt_project_is_target_unavailable(api):
    c = client(api, "runner")
    with pytest.raises(TargetUnavailable, match="no dbt_build job: set CLARO_DBT_PROJECT") as exc:
        c.run("products", "dbt_build")
    assert exc.value.target == "dbt_build" and exc.value.status == 422
    with pytest.raises(ProposalRefused) as other:  # any other refused target stays a plain 422
        c.run("products", "fly")
    assert not isinstance(other.value, TargetUnavailable)
    api.launcher.jobs.add("dbt_build")
    assert c.run("products", "dbt_build") and api.launcher.launched[-1][:2] == ("products", "dbt_build")
