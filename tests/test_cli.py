"""The `claro` command as a user types it: the installed console script in a subprocess.

One `claro run` of a small project (tests/cli_project.py) is shared by the module; each test works on
its own copy of that home and checks what was printed, the exit code and the catalogue afterwards.
Every `claro` process pays Dagster's import time, so each test runs as few commands as it can.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cli_project import FIRST_FILE, UPDATE_FILE, claro, write_spec, write_supplier_files

from claro_dagster.catalogue.outbox import RetryPolicy, WebhookOutbox
from claro_dagster.catalogue.review import ReviewQueue
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.spec import load_spec


@dataclass
class Project:
    root: Path

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def spec(self) -> Path:
        return self.root / "claro.yaml"

    def claro(self, *args: str, **kw):
        kw.setdefault("spec", self.spec)
        return claro(*args, home=self.home, **kw)

    @contextmanager
    def store(self):
        store = CatalogueStore(load_spec(self.spec), home=self.home)
        try:
            yield store
        finally:
            store.dispose()

    def value(self, sku: str, field: str):
        with self.store() as store:
            record = store.record("products", sku)
        return None if record is None else record[field]

    def open_items(self) -> dict[str, object]:
        """Open review items by record."""
        with self.store() as store:
            return {item.record: item for item in ReviewQueue(store).list()}


@dataclass
class Prepared:
    project: Project
    files: list[Path]  # as the supplier sent them
    uploads: list[subprocess.CompletedProcess[str]]
    run: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Prepared:
    """A home where `claro upload` put both supplier files and `claro run` took them: 4 products, 3 price
    changes waiting for review. Shared by the module: tests work on copies (the `project` fixture)."""
    root = tmp_path_factory.mktemp("cli")
    project = Project(root / "project")
    project.home.mkdir(parents=True)
    write_spec(project.spec)
    files = write_supplier_files(root / "from_supplier")
    uploads = [project.claro("upload", str(path), "--source", "shop_csv") for path in files]
    return Prepared(project, files, uploads, project.claro("run"))


@pytest.fixture
def project(prepared, tmp_path) -> Project:
    copy = Project(tmp_path / "project")
    shutil.copytree(prepared.project.root, copy.root)
    return copy


def update_run(project: Project) -> str:
    """The Dagster run that published the second file (it created SKU-4)."""
    with project.store() as store:
        return store.provenance("products", "SKU-4", "title").run_id


# --------------------------------------------------------------------------------------------- run, rerun
def test_upload_puts_the_files_in_the_sources_inbox(prepared):
    inbox = prepared.project.home / "inbox" / "shop"
    for path, result in zip(prepared.files, prepared.uploads, strict=True):
        assert result.returncode == 0, result.stderr
        received, how = result.stdout.strip().splitlines()
        assert received == f"{path.name} -> {inbox / path.name}"
        assert how == "the shop_csv_inbox sensor (`claro dev`) or `claro run` processes it"
        # Issue 8 item 7: progress on stderr, as plain lines when stderr is not a terminal
        size = path.stat().st_size
        assert result.stderr.startswith(f"upload {path.name}: {size:,} of {size:,} bytes ("), result.stderr
    # `claro run` took them: each now lies under processed/<batch>/, byte for byte as sent
    processed = {p.name: p.read_bytes() for p in (inbox / "processed").glob("*/*")}
    assert processed == {path.name: path.read_bytes() for path in prepared.files}


def test_run_publishes_the_inbox_files_and_queues_contradictions(prepared):
    project, result = prepared.project, prepared.run
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"published   {FIRST_FILE}: 12 applied (3 new records), 0 queued for review" in out
    assert f"published   {UPDATE_FILE}: 4 applied (1 new records), 3 queued for review" in out
    assert "products: 4 records" in out
    assert "review queue: 3 open item(s)" in out
    with project.store() as store:
        frame = store.records("products")
    assert frame.set_index("sku")["price"].to_dict() == {"SKU-1": 4.5, "SKU-2": 3.0, "SKU-3": 12.0, "SKU-4": 8.0}
    items = project.open_items()
    assert {(k, i.field, i.old, i.new) for k, i in items.items()} == {
        ("SKU-1", "price", 4.5, 5.5), ("SKU-2", "price", 3.0, 3.5), ("SKU-3", "price", 12.0, 15.0)}
    inbox = project.home / "inbox" / "shop"
    assert sorted(p.name for p in inbox.iterdir() if p.is_file()) == []  # both moved to processed/


def test_rerun_repeats_one_stage_of_a_batch_and_changes_nothing(project):
    with project.store() as store:
        batch = _batch_of(store, FIRST_FILE)
    result = project.claro("rerun", batch, "records")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"records for {batch}: done (run ")
    assert "batch is published" in result.stdout
    assert project.value("SKU-1", "price") == 4.5  # the queued 5.5 stays queued
    assert len(project.open_items()) == 3


def _batch_of(store, filename: str) -> str:
    from claro_dagster.catalogue.batches import BatchRegistry

    (batch,) = [b.key for b in BatchRegistry(store).list() if b.filename == filename]
    return batch


# --------------------------------------------------------------------------------------------- upload
def test_upload_into_an_upload_source_is_processed_like_an_inbox(project, tmp_path):
    # Issue 7 item 7: `upload` sources receive files through `claro upload` and are processed.
    new = tmp_path / "portal_file.csv"
    new.write_text("sku,title,price,weight,status\nSKU-6,Tray,7,0.8,draft\n", encoding="utf-8")
    uploaded = project.claro("upload", str(new), "--source", "portal")
    assert uploaded.returncode == 0, uploaded.stderr
    ran = project.claro("run")
    assert ran.returncode == 0, ran.stderr
    assert "published   portal_file.csv" in ran.stdout
    assert project.value("SKU-6", "title") == "Tray"


# --------------------------------------------------------------------------------------------- export, records
def test_export_writes_the_filtered_records(project, tmp_path):
    out = tmp_path / "active.csv"
    result = project.claro("export", "--format", "csv", "--filter", 'status == "active" and title contains "CUP"',
                           "--columns", "sku,price", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"1 record(s) -> {out}"
    assert result.stderr.startswith("export products: 1 records ("), result.stderr  # progress, plain lines
    everything = project.claro("export", "--out", str(tmp_path / "all.csv"))
    assert everything.returncode == 0, everything.stderr
    assert everything.stderr.startswith("export products: 4 of 4 records ("), everything.stderr
    with out.open(newline="", encoding="utf-8") as f:
        assert list(csv.reader(f)) == [["sku", "price"], ["SKU-2", "3"]]


def test_records_refuses_a_filter_whose_literal_has_the_wrong_type(project):
    result = project.claro("records", "--filter", 'price > "5"', "--format", "json")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(
        "error: filter error at position 8: 'price' is a number attribute and \"5\" is text: "
        "write the number without quotes")
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------------------------- review
def test_review_approve_reject_and_edit(project):
    items = project.open_items()
    approved = project.claro("review", "approve", str(items["SKU-1"].id), "--by", "ann")
    assert approved.returncode == 0, approved.stderr
    assert approved.stdout.strip() == "approved: 1 value(s) written, 0 already as proposed"
    rejected = project.claro("review", "reject", str(items["SKU-2"].id), "--note", "typo in the file")
    assert rejected.returncode == 0, rejected.stderr
    assert rejected.stdout.strip() == "rejected 1 item(s)"
    edited = project.claro("review", "edit", str(items["SKU-3"].id), "14.25", "--by", "raj")
    assert edited.returncode == 0, edited.stderr
    assert edited.stdout.strip() == f"applied your value to item {items['SKU-3'].id} (1 written)"

    assert project.open_items() == {}
    with project.store() as store:
        prices = store.records("products").set_index("sku")["price"].to_dict()
        who = {sku: store.provenance("products", sku, "price").reviewer for sku in ("SKU-1", "SKU-3")}
        decided = {i.record: (i.status, i.decided_by) for i in ReviewQueue(store).list(status=["approved", "rejected",
                                                                                              "edited"])}
    assert prices == {"SKU-1": 5.5, "SKU-2": 3.0, "SKU-3": 14.25, "SKU-4": 8.0}
    assert who == {"SKU-1": "ann", "SKU-3": "raj"}
    assert decided == {"SKU-1": ("approved", "ann"), "SKU-2": ("rejected", "tester"), "SKU-3": ("edited", "raj")}


def test_review_approve_of_an_unknown_item_exits_1(project):
    result = project.claro("review", "approve", "999")
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "999" in result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------------------------- rollback
def test_rollback_removes_what_a_run_created(project):
    run = update_run(project)
    result = project.claro("rollback", "--run", run)
    assert result.returncode == 0, result.stderr
    assert "removed 1 records created by the run" in result.stdout
    assert project.value("SKU-4", "title") is None  # SKU-4 is gone
    assert project.value("SKU-1", "price") == 4.5


def test_rollback_restores_values_approved_from_the_run(project):
    # Issue 7 item 2: approvals keep the run that proposed them, so rolling the run back undoes them.
    run = update_run(project)
    with project.store() as store:
        queue = ReviewQueue(store)
        queue.approve([i.id for i in queue.list() if i.record in ("SKU-1", "SKU-2")], by="ann")
    assert (project.value("SKU-1", "price"), project.value("SKU-2", "price")) == (5.5, 3.5)
    result = project.claro("rollback", "--run", run, "--by", "lee")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("restored ")
    assert (project.value("SKU-1", "price"), project.value("SKU-2", "price")) == (4.5, 3.0)
    assert project.value("SKU-4", "title") is None


def test_rollback_withdraws_what_still_waits_then_finds_nothing_and_exits_non_zero(project):
    # Issue 7 item 2: the update run wrote nothing to SKU-3; its price change waits for review.
    run = update_run(project)
    withdrawn = project.claro("rollback", "--run", run, "--record", "SKU-3")
    assert withdrawn.returncode == 0, withdrawn.stderr
    assert "withdrew 1 of its changes that waited for review" in withdrawn.stdout
    with project.store() as store:
        assert [i.record for i in ReviewQueue(store).list(status="withdrawn")] == ["SKU-3"]
    result = project.claro("rollback", "--run", run, "--record", "SKU-3")
    assert result.returncode != 0
    assert "nothing to roll back" in result.stderr and "Traceback" not in result.stderr
    assert "restored 0" not in result.stdout


# --------------------------------------------------------------------------------------------- schema-diff
def test_schema_diff_lists_then_applies_a_type_change(project):
    write_spec(project.spec, weight_type="number")
    listed = project.claro("schema-diff")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0] == "products.weight: text -> number: 3 of 4 value(s) convert"
    assert lines[1].startswith("  SKU-3: 'heavy' would not convert (")
    assert lines[2:] == ["  apply with: claro schema-diff --apply products.weight"]
    applied = project.claro("schema-diff", "--apply", "products.weight", "--yes")
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.strip() == (
        "products.weight: now number; 3 converted, 1 cleared (their values are in `claro history`)")
    with project.store() as store:
        weights = {sku: store.record("products", sku)["weight"] for sku in ("SKU-1", "SKU-2", "SKU-3", "SKU-4")}
        cleared = store.history("products", "SKU-3", "weight")
    assert weights == {"SKU-1": 0.35, "SKU-2": 0.2, "SKU-3": None, "SKU-4": 1.0}
    assert [(e.old, e.new) for e in cleared][-1] == ("heavy", None)


# --------------------------------------------------------------------------------------------- webhooks
def test_webhooks_log_and_retry(project):
    with project.store() as store:
        outbox = WebhookOutbox(store)
        now = datetime.now(UTC)
        planned = outbox.plan("erp", load_spec(project.spec).notifications.webhooks["erp"], now)
        assert planned, "the run's change.applied events make deliveries"
        dead = outbox.mark_failed(planned[0].id, 503, "Service Unavailable", now, RetryPolicy(max_attempts=1))
    assert dead.status == "dead"
    logged = project.claro("webhooks", "log", "--status", "dead")
    assert logged.returncode == 0, logged.stderr
    row = [line for line in logged.stdout.splitlines() if f" {dead.id} " in line]
    assert len(row) == 1 and "erp" in row[0] and "dead" in row[0] and "503" in row[0]
    assert "Service Unavailable" in logged.stdout

    retried = project.claro("webhooks", "retry", str(dead.id))
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.strip() == f"delivery {dead.id} (erp, {dead.webhook_id}) is due again"
    with project.store() as store:
        again = WebhookOutbox(store).get(dead.id)
    assert (again.status, again.attempts, again.webhook_id) == ("pending", 0, dead.webhook_id)


# --------------------------------------------------------------------------------------------- output formats
def test_every_listing_prints_one_json_array_and_csv_with_the_same_fields(project):
    # Issue 8 item 8: --format table|csv|json everywhere; json is one array with an object per row.
    with project.store() as store:
        batch = _batch_of(store, FIRST_FILE)
    listings = {
        "records": (["records"], {"sku", "title", "price", "weight", "status"}),
        "history": (["history", "SKU-1", "--field", "price"], {"at", "record", "field", "kind", "old", "new", "by",
                                                                "run_id", "source", "confidence"}),
        "batches": (["batches"], {"batch", "file", "status", "stage", "message"}),
        "rejected": (["rejected", batch], {"line", "reasons"}),
        "review list": (["review", "list"], {"id", "record", "field", "old", "new", "confidence", "status"}),
        "webhooks log": (["webhooks", "log"], {"id", "subscription", "status", "events", "webhook-id"}),
        "schedules": (["schedules"], {"schedule", "target", "cron", "timezone", "next_runs"}),
        "mapping show": (["mapping", "show", "shop_csv"], {"source", "shape", "status", "column", "attribute"}),
    }
    for name, (args, fields) in listings.items():
        as_json = project.claro(*args, "--format", "json")
        assert as_json.returncode == 0, (name, as_json.stderr)
        rows = json.loads(as_json.stdout)
        assert isinstance(rows, list) and all(isinstance(r, dict) for r in rows), name
        as_csv = project.claro(*args, "--format", "csv")
        assert as_csv.returncode == 0, (name, as_csv.stderr)
        header = next(csv.reader(io.StringIO(as_csv.stdout)), [])
        if rows:
            assert set(rows[0]) == set(header), name
            assert fields <= set(header), (name, header)
        table = project.claro(*args)
        assert table.returncode == 0, (name, table.stderr)
    records = json.loads(project.claro("records", "--format", "json").stdout)
    assert {r["sku"]: r["price"] for r in records} == {"SKU-1": 4.5, "SKU-2": 3.0, "SKU-3": 12.0, "SKU-4": 8.0}
    queued = json.loads(project.claro("review", "list", "--format", "json").stdout)
    assert sorted((r["record"], r["new"]) for r in queued) == [("SKU-1", 5.5), ("SKU-2", 3.5), ("SKU-3", 15.0)]
    unknown = project.claro("batches", "--format", "xml")
    assert unknown.returncode == 1 and unknown.stderr.startswith("error: unknown format 'xml'; formats are: table, "
                                                                 "csv, json")


def test_webhooks_log_shows_the_webhook_id_and_advertises_only_options_it_has(project):
    with project.store() as store:
        planned = WebhookOutbox(store).plan("erp", load_spec(project.spec).notifications.webhooks["erp"],
                                            datetime.now(UTC))
    assert planned
    logged = project.claro("webhooks", "log")
    assert logged.returncode == 0, logged.stderr
    assert "webhook-id" in logged.stdout and planned[0].webhook_id in logged.stdout
    assert "--columns" not in logged.stderr  # it has no --columns option
    listed = project.claro("review", "list")  # more fields than a table shows, and no --columns either
    assert "--columns" not in listed.stderr and "use --format csv|json for all" in listed.stderr
    as_json = json.loads(project.claro("webhooks", "log", "--format", "json").stdout)
    assert {d["webhook-id"] for d in as_json} == {d.webhook_id for d in planned}


def test_help_documents_the_json_format():
    from cli_project import claro_command

    shown = subprocess.run([*claro_command(), "records", "--help"], capture_output=True, text=True,
                           env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}, timeout=120)
    assert shown.returncode == 0
    assert "one JSON array with an object per row" in " ".join(shown.stdout.split())


# --------------------------------------------------------------------------------------------- --spec
def test_run_with_spec_never_reads_the_claro_yaml_of_the_working_directory(tmp_path):
    # Issue 8 item 12: the code location reads no spec when imported; `--spec X` is the only spec read.
    from cli_project import REPO, WEBHOOK_SECRET_ENV, claro_command

    home, elsewhere = tmp_path / "home", tmp_path / "project"
    home.mkdir()
    elsewhere.mkdir()
    spec = write_spec(elsewhere / "claro.yaml")
    (home / "claro.yaml").write_text("catalogues: [this is not a spec\n", encoding="utf-8")
    inbox = home / "inbox" / "shop"
    inbox.mkdir(parents=True)
    shutil.copy(write_supplier_files(tmp_path / "files")[0], inbox)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLARO_")}
    env.update(CLARO_HOME=str(home), PYTHONPATH=str(REPO), COLUMNS="200", NO_COLOR="1")
    env[WEBHOOK_SECRET_ENV] = "s"
    ran = subprocess.run([*claro_command(), "--spec", str(spec), "run"], cwd=home, env=env, capture_output=True,
                         text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    assert f"published   {FIRST_FILE}: 12 applied (3 new records)" in ran.stdout
    broken = subprocess.run([*claro_command(), "check"], cwd=home, env=env, capture_output=True, text=True,
                            timeout=120)
    assert broken.returncode == 1 and broken.stderr.startswith("claro.yaml:")  # it is there, and broken
