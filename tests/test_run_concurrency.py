"""Production concurrency limits (issue 15 item 1): the run tags the definitions and sensors put on runs are the
ones dagster.prod.yaml's queued run coordinator limits on, and the coordinator's own dequeue logic (the daemon's
iteration, on a real instance) launches at most one run per source, one per destination and two per Shopify
connector at a time; the next run of a source starts when the previous one finished."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.test_utils import create_run_for_test, create_test_daemon_workspace_context
from dagster._core.workspace.load_target import EmptyWorkspaceTarget
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon
from ruamel.yaml import YAML

from claro_dagster.definitions import build_definitions
from claro_dagster.spec import DEMO_DIR

PROD_YAML = Path(__file__).parents[1] / "dagster.prod.yaml"


@pytest.fixture
def prod_instance():
    """A real instance with dagster.prod.yaml's run coordinator (its limits as shipped) and a launcher that
    records launches instead of starting processes."""
    coordinator = YAML(typ="safe").load(PROD_YAML.read_text())["run_coordinator"]
    with dg.instance_for_test(overrides={
            "run_coordinator": coordinator,
            "run_launcher": {"module": "dagster._core.test_utils", "class": "MockedRunLauncher"}}) as instance:
        with create_test_daemon_workspace_context(EmptyWorkspaceTarget(), instance) as workspace:
            yield instance, workspace


def dequeue(instance, workspace) -> set[str]:
    """One iteration of the queued run coordinator daemon; the ids of the runs it launched."""
    before = {r.run_id for r in instance.run_launcher.queue()}
    list(QueuedRunCoordinatorDaemon(interval_seconds=1).run_iteration(workspace))
    return {r.run_id for r in instance.run_launcher.queue()} - before


def finish(instance, run_ids) -> None:
    for run_id in run_ids:
        instance.report_run_failed(instance.get_run_by_id(run_id))  # any finished state frees its slot


def test_destination_and_onboarding_runs_carry_the_tags_the_coordinator_limits_on(tmp_path):
    defs = build_definitions(DEMO_DIR / "claro.yaml", tmp_path / "home")
    shopify = defs.resolve_job_def("products_shopify_store").run_tags
    assert shopify["claro/destination"] == "shopify_store" and shopify["claro/connector"] == "shopify"
    amazon = defs.resolve_job_def("products_amazon_listings").run_tags
    assert (amazon["claro/destination"], amazon["claro/connector"]) == ("amazon_listings", "amazon")
    limited = {(limit["key"]) for limit in YAML(typ="safe").load(PROD_YAML.read_text())["run_coordinator"]["config"][
        "tag_concurrency_limits"]}
    assert limited == {"claro/source", "claro/destination", "claro/connector"}


def test_queued_runs_start_one_per_source_and_destination_and_two_per_shopify_connector(prod_instance, tmp_path):
    instance, workspace = prod_instance
    defs = build_definitions(DEMO_DIR / "claro.yaml", tmp_path / "home")
    onboarding = dict(defs.resolve_job_def("products_onboarding").run_tags)

    repository = RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("claro_dagster"), "__repository__")

    def queued(job: str, tags: dict) -> str:
        return create_run_for_test(instance, job_name=job, status=dg.DagsterRunStatus.QUEUED, tags=tags,
                                   remote_job_origin=RemoteJobOrigin(repository, job)).run_id

    # The inbound sensors tag each run with its source (sensors/inbound.py); three files of acme, one of globex.
    acme = [queued("products_onboarding", {**onboarding, "claro/source": "acme_csv", "claro/batch": f"b{n}"})
            for n in range(3)]
    globex = queued("products_onboarding", {**onboarding, "claro/source": "globex_xlsx", "claro/batch": "g1"})
    shop = [queued("products_shopify_store", dict(defs.resolve_job_def("products_shopify_store").run_tags))
            for _ in range(2)]
    # Three Shopify stores: different destinations, one connector kind limited to two at once.
    stores = [queued(f"products_store_{n}", {"claro/destination": f"store_{n}", "claro/connector": "shopify"})
              for n in range(3)]

    first = dequeue(instance, workspace)
    assert len(first & set(acme)) == 1 and globex in first
    assert len(first & (set(shop) | set(stores))) == 2  # the Shopify connector's limit, across destinations
    assert dequeue(instance, workspace) == set()  # nothing more until something finishes

    finish(instance, first)
    second = dequeue(instance, workspace)
    assert len(second & set(acme)) == 1 and globex not in second
    assert len(second & (set(shop) | set(stores))) == 2
    launched_shop = (first | second) & set(shop)
    assert len(launched_shop) <= 2
    finish(instance, second)
    third = dequeue(instance, workspace)
    assert len(third & set(acme)) == 1
    finish(instance, third)
    dequeue(instance, workspace)
    # Every run started exactly once, never two of one source or one destination at a time.
    assert sorted(r.run_id for r in instance.run_launcher.queue()) == sorted([*acme, globex, *shop, *stores])


def test_two_daemons_started_by_mistake_launch_each_batch_once(tmp_path):
    """Two sensor daemons evaluate the same inbox from the same cursor: they request the same run keys (file and
    content version), and the second finds each key answered by the first's run (the daemon's own check,
    `fetch_existing_runs`), so every batch runs once."""
    import os
    import shutil
    import time
    from types import SimpleNamespace

    from dagster._core.storage.tags import RUN_KEY_TAG, SENSOR_NAME_TAG
    from dagster._daemon.sensor import fetch_existing_runs

    defs = build_definitions(DEMO_DIR / "claro.yaml", tmp_path / "home")
    claro = defs.resources["claro"]
    inbox = claro.inbox_dir("acme_csv")
    inbox.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DEMO_DIR / "inbox" / "acme" / "acme_products_cp1252.csv", inbox / "acme.csv")
    os.utime(inbox / "acme.csv", (time.time() - 60, time.time() - 60))
    name = "acme_csv_inbox"
    sensor = defs.resolve_sensor_def(name)
    with dg.instance_for_test() as instance:
        def tick() -> list[dg.RunRequest]:  # one daemon's evaluation, from the cursor both read (none yet)
            context = dg.build_sensor_context(
                instance=instance, instance_ref=instance.get_ref(), definitions=defs,
                resources={k: defs.resources[k] for k in sensor.required_resource_keys})
            return list(sensor.evaluate_tick(context).run_requests or [])

        first, second = tick(), tick()
        assert [r.run_key for r in first] == [r.run_key for r in second] and len(first) == 1
        assert first[0].tags["claro/source"] == "acme_csv"  # the tag the per-source limit acts on
        assert fetch_existing_runs(instance, SimpleNamespace(name=name), second) == {}
        for request in first:  # the first daemon launches its runs
            create_run_for_test(instance, job_name="products_onboarding", status=dg.DagsterRunStatus.NOT_STARTED,
                                tags={**request.tags, RUN_KEY_TAG: request.run_key, SENSOR_NAME_TAG: name})
        assert set(fetch_existing_runs(instance, SimpleNamespace(name=name), second)) == {r.run_key for r in second}
