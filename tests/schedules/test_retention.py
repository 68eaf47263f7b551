"""Retention: the daily prune removes what is old and keeps what rollback, history and delivery need."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import dagster as dg
import pandas as pd
import pytest
import yaml

from claro_dagster.catalogue.batches import BatchRegistry
from claro_dagster.catalogue.changes import Change, ChangeSet
from claro_dagster.catalogue.outbox import WebhookOutbox
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.schedules.retention import JOB, SCHEDULE, prune
from claro_dagster.spec.loader import SpecError, load_spec
from claro_dagster.spec.models import (
    AttributeSpec,
    CatalogueSpec,
    NotificationsSpec,
    ProjectSpec,
    RetentionSpec,
    WebhookSpec,
)

ERP = WebhookSpec(url="http://127.0.0.1:9/hook", events=["change.*"], secret_env="X", mode="batched",
                  max_batch=100, max_wait_seconds=0)


def project(retention: RetentionSpec | None = None) -> ProjectSpec:
    return ProjectSpec(
        catalogues={"products": CatalogueSpec(key="sku", attributes={"sku": AttributeSpec(type="text"),
                                                                     "price": AttributeSpec(type="number")})},
        notifications=NotificationsSpec(webhooks={"erp": ERP}), retention=retention or RetentionSpec())


def stage_file(stages, batch: str, stage: str = "batch_raw"):
    path = stages / "products" / stage / f"{batch}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"PAR1")
    return path


def test_prune_removes_what_is_old_and_keeps_what_rollback_history_and_delivery_need(store_url, tmp_path):
    spec = project()
    store = CatalogueStore(spec, store_url)
    outbox = WebhookOutbox(store)
    store.import_records("products", pd.DataFrame({"sku": ["A1", "B2", "C3"], "price": [1.0, 2.0, 3.0]}),
                         change_set_id="import-1", run_id="run-import")
    today = datetime.now(UTC)
    delivered = outbox.plan("erp", ERP, today)
    outbox.mark_delivered_many([(d.id, 200) for d in delivered], today)
    store.apply(ChangeSet("reprice-1", "products", "reprice", [Change("A1", "price", 9.0)], run_id="run-reprice"))
    [waiting] = outbox.plan("erp", ERP, today + timedelta(minutes=1))  # not delivered: its event must stay
    # Batches: only `published` ones lose their stage files and partitions.
    batches = BatchRegistry(store)
    stages = tmp_path / "stages"
    files = {}
    for key, status in (("acme-old-published", "published"), ("acme-awaiting", "awaiting_review"),
                        ("acme-halted", "halted")):
        batches.register(key, catalogue="products", source="acme", filename=f"{key}.csv", uri=f"/in/{key}")
        batches.set_status(key, status)
        files[key] = [stage_file(stages, key), stage_file(stages, key, "batch_validated")]
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("products_batches", list(files))
    history_before = store.history("products", "A1")

    # A day later nothing is old enough yet.
    report = prune(store, spec, stages, today + timedelta(days=1), instance=instance)
    assert (report.webhook_deliveries, report.events, report.stage_files, report.partitions) == (0, 0, 0, {})

    report = prune(store, spec, stages, today + timedelta(days=100), instance=instance)
    assert report.webhook_deliveries == len(delivered) == 1
    assert report.stage_files == 2 and not any(p.exists() for p in files["acme-old-published"])
    assert all(p.exists() for key in ("acme-awaiting", "acme-halted") for p in files[key])
    assert report.partitions == {"products_batches": ["acme-old-published"]}
    assert sorted(instance.get_dynamic_partitions("products_batches")) == ["acme-awaiting", "acme-halted"]
    # Events: the delivered import's are gone; the undelivered delivery's event stays (and the newest always).
    remaining = [e["id"] for e in store.events(limit=100)]
    assert report.events == 3 and remaining == list(waiting.event_ids)
    assert [e["id"] for e in outbox.events_of(waiting)] == list(waiting.event_ids)
    assert set(outbox.rendered([waiting])) == {waiting.id}  # its rendered message too
    assert outbox.log(status="pending") == [waiting]
    # Rollback and history read nothing that was pruned; batch records stay for `claro batches`.
    assert store.history("products", "A1") == history_before
    assert store.rollback("run-reprice").restored == 1
    assert store.records("products").set_index("sku")["price"].to_dict() == {"A1": 1.0, "B2": 2.0, "C3": 3.0}
    assert {b.key for b in batches.list()} == set(files)
    # New events after a prune get new ids: planning carries on past the cursor.
    store.apply(ChangeSet("reprice-2", "products", "reprice", [Change("B2", "price", 7.0)]))
    [later] = outbox.plan("erp", ERP, today + timedelta(minutes=1))
    assert later.first_event_id > waiting.last_event_id
    store.dispose()


def test_a_subscription_that_never_ran_keeps_every_event_and_null_keeps_forever(tmp_path):
    spec = project(RetentionSpec(webhook_deliveries_days=None, stage_files_days=None, batches_days=None))
    store = CatalogueStore(spec, f"sqlite:///{tmp_path / 'c.db'}")
    store.import_records("products", pd.DataFrame({"sku": ["A1", "B2"], "price": [1.0, 2.0]}), change_set_id="i")
    later = datetime.now(UTC) + timedelta(days=1000)
    assert prune(store, spec, tmp_path / "stages", later).events == 0  # `erp` has not received them yet
    without_hooks = project(RetentionSpec(events_days=1))
    without_hooks.notifications.webhooks.clear()
    assert prune(store, without_hooks, tmp_path / "stages", later).events == 1  # all but the newest
    store.dispose()


def test_old_dbt_run_folders_and_unfinished_portal_uploads_go_what_suppliers_see_stays(tmp_path):
    spec = project(RetentionSpec(stage_files_days=7))
    store = CatalogueStore(spec, f"sqlite:///{tmp_path / 'c.db'}")
    home = tmp_path / "home"
    old_run, new_run = home / "dbt/target/runs/1a2b3c4d", home / "dbt/target/runs/5e6f7a8b"
    stale, arriving = home / "portal/acme/incoming/tmp1.csv", home / "portal/acme/incoming/tmp2.csv"
    kept = [home / "portal/acme/results/acme-1.json", home / "portal/acme/halted/acme-1/prices.csv"]
    for folder in (old_run, new_run):
        (folder / "manifest.json").parent.mkdir(parents=True, exist_ok=True)
        (folder / "manifest.json").write_text("{}")
    for path in (stale, arriving, *kept):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("sku\n")
    ten_days_ago = (datetime.now(UTC) - timedelta(days=10)).timestamp()
    for path in (old_run, stale, *kept):
        os.utime(path, (ten_days_ago, ten_days_ago))

    report = prune(store, spec, home / "stages", home=home)
    assert report.work_files == 2
    assert not old_run.exists() and not stale.exists()
    assert new_run.exists() and arriving.exists() and all(p.exists() for p in kept)
    assert prune(store, spec, home / "stages").work_files == 0  # without the home, only the store and stages
    store.dispose()


def test_the_daily_schedule_is_registered_running_and_its_job_prunes(tmp_path):
    from claro_dagster.definitions import build_definitions

    spec_path = tmp_path / "claro.yaml"
    spec_path.write_text(yaml.safe_dump({
        "catalogues": {"products": {"key": "sku", "attributes": {"sku": {"type": "text"}}}},
        "pipelines": {"onboarding": {"catalogue": "products"}},
        "retention": {"stage_files_days": 7, "cron": "15 4 * * *"}}))
    defs = build_definitions(spec_path, tmp_path / "home")
    schedule = defs.resolve_schedule_def(SCHEDULE)
    assert schedule.cron_schedule == "15 4 * * *" and schedule.execution_timezone == "UTC"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    instance = dg.DagsterInstance.ephemeral()
    result = defs.resolve_job_def(JOB).execute_in_process(instance=instance)
    assert result.success
    logged = [e.user_message for e in instance.all_logs(result.run_id) if e.user_message.startswith("pruned ")]
    assert logged == ["pruned 0 delivered webhook deliveries, 0 outbox events, 0 stage files, 0 dbt run folders and "
                      "unfinished uploads and 0 batch partitions"]


def test_retention_keys_are_checked(tmp_path):
    def spec_with(extra: str):
        path = tmp_path / "claro.yaml"
        path.write_text("catalogues:\n  products: {key: sku, attributes: {sku: {type: text}}}\n" + extra)
        return path

    assert load_spec(spec_with("")).retention == RetentionSpec(webhook_deliveries_days=30, events_days=90,
                                                               stage_files_days=14, batches_days=90,
                                                               cron="30 3 * * *")
    assert load_spec(spec_with("retention: {events_days: null}\n")).retention.events_days is None
    with pytest.raises(SpecError, match=r"claro.yaml:5 retention.events_days: should be greater than or equal to 1"):
        load_spec(spec_with("retention:\n  cron: 0 4 * * *\n  events_days: 0\n"))
