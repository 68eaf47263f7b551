"""A batch the Supplier Portal accepts is published by the real pipeline as that same batch: the source's inbox sensor
(ticked as the daemon ticks it) requests a run for exactly the batch key the portal registered, and the stages take
the batch to published; the portal's history then says so."""

from __future__ import annotations

import hashlib
import io

import dagster as dg
import pandas as pd

from claro_dagster.catalogue.batches import BatchRegistry
from claro_dagster.catalogue.feed import change_feed
from claro_dagster.catalogue.portal import Portal, Staged
from claro_dagster.definitions import build_definitions, inbound_sensor_name
from claro_dagster.spec import DEMO_DIR
from tests.batches import tick
from tests.e2e.harness import wait_until

PORTAL_SOURCE = """  acme_portal:
    catalogue: products
    kind: upload
    supplier: SUP-0001
    max_file_mb: 10
"""


def test_a_portal_batch_is_published_by_the_pipeline_as_the_same_batch(tmp_path):
    spec = tmp_path / "claro.yaml"
    text = (DEMO_DIR / "claro.yaml").read_text(encoding="utf-8").replace("\nsources:\n", "\nsources:\n" + PORTAL_SOURCE,
                                                                         1)
    spec.write_text(text.replace("sources: [acme_csv, globex_xlsx]", "sources: [acme_csv, globex_xlsx, acme_portal]"),
                    encoding="utf-8")
    home = tmp_path / "home"
    defs = build_definitions(spec, home)
    claro = defs.resources["claro"]
    claro.store.import_records("suppliers", pd.DataFrame({"supplier_id": ["SUP-0001"], "name": ["Acme"]}),
                               change_set_id="suppliers")
    portal = Portal(claro.spec, claro.store, home)
    template = portal.template_csv("acme_portal")  # the demo's template: its example row passes every rule
    upload = tmp_path / "upload.csv"
    upload.write_bytes(template)
    outcome = portal.submit("acme_portal", Staged(upload, "acme-week1.csv", "csv", len(template),
                                                  hashlib.sha256(template).hexdigest()))
    assert outcome.kind == "accepted", outcome.message
    with dg.instance_for_test() as instance:
        runs = wait_until(lambda: (bool(r := tick(defs, instance, inbound_sensor_name("acme_portal", "upload"))), r),
                          30, 0.3, what="the inbox sensor to request the portal's batch (files younger than 1 s wait)")
        assert [r.success for r in runs] == [True]
        assert [r.dagster_run.tags["claro/batch"] for r in runs] == [outcome.key]
        assert tick(defs, instance, inbound_sensor_name("acme_portal", "upload")) == []  # the file was settled
    batches = [b for b in BatchRegistry(claro.store).list() if b.source == "acme_portal"]
    assert [(b.key, b.status) for b in batches] == [(outcome.key, "published")]
    [entry] = portal.history("acme_portal")
    assert (entry.label, entry.rows_in, entry.accepted) == ("published", 1, 1)
    example = pd.read_csv(io.BytesIO(template), dtype=str, encoding="utf-8-sig").iloc[0]
    record = claro.store.records("products").set_index("sku").loc[example["sku (required)"]]
    assert record["supplier"] == "SUP-0001" and record["title"] == example["title (required)"]
    # an external system reading the change feed sees the supplier's record created, with its values
    first, *later = [c for c in change_feed(claro.store, 0, catalogue="products").changes
                     if c["record"] == example["sku (required)"]]
    assert (first["kind"], first["operation"], first["source"]) == ("created", "publish", "acme_portal")
    assert first["values"]["supplier"] == "SUP-0001" and first["values"]["title"] == example["title (required)"]
    assert all(c["change_set"] != first["change_set"] for c in later)  # no updates from null beside it


def test_the_portal_and_the_pipeline_halt_the_same_file_with_the_same_rejected_rows(tmp_path):
    spec = tmp_path / "claro.yaml"
    text = (DEMO_DIR / "claro.yaml").read_text(encoding="utf-8").replace("\nsources:\n", "\nsources:\n" + PORTAL_SOURCE,
                                                                         1)
    spec.write_text(text.replace("sources: [acme_csv, globex_xlsx]", "sources: [acme_csv, globex_xlsx, acme_portal]"),
                    encoding="utf-8")
    home = tmp_path / "home"
    defs = build_definitions(spec, home)
    claro = defs.resources["claro"]
    claro.store.import_records("suppliers", pd.DataFrame({"supplier_id": ["SUP-0001", "SUP-0002"],
                                                          "name": ["Acme", "Globex"]}), change_set_id="suppliers")
    claro.store.import_records("products", pd.DataFrame({"sku": ["GLX-1000"], "title": ["Globex shirt"],
                                                         "supplier": ["SUP-0002"]}), change_set_id="globex")
    portal = Portal(claro.spec, claro.store, home)
    template = pd.read_csv(io.BytesIO(portal.template_csv("acme_portal")), dtype=str, encoding="utf-8-sig",
                           keep_default_na=False)
    example = template.iloc[0].to_dict()
    bad = pd.DataFrame([{**example, "sku (required)": "ACP-1001", "gtin": ""},
                        {**example, "sku (required)": "ACP-1002", "gtin": "", "price": "-1"},
                        {**example, "sku (required)": "GLX-1000", "gtin": ""},
                        {**example, "sku (required)": "ACP-1004", "gtin": "", "supplier": "SUP-0002"}])
    content = bad.to_csv(index=False).encode()
    upload = tmp_path / "upload.csv"
    upload.write_bytes(content)
    outcome = portal.submit("acme_portal", Staged(upload, "bad.csv", "csv", len(content),
                                                  hashlib.sha256(content).hexdigest()))
    assert outcome.kind == "halted", outcome.message
    # the same file dropped into the source's inbox (as `claro upload` does) goes through the pipeline's stages
    inbox = claro.inbox_dir("acme_portal")
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / "bad.csv").write_bytes(content)
    with dg.instance_for_test() as instance:
        runs = wait_until(lambda: (bool(r := tick(defs, instance, inbound_sensor_name("acme_portal", "upload"))), r),
                          30, 0.3, what="the inbox sensor to request the dropped file")
    registry = BatchRegistry(claro.store)
    [piped] = [b for b in registry.list() if b.source == "acme_portal" and b.key != outcome.key]
    assert piped.status == "halted" and runs[0].dagster_run.tags["claro/batch"] == piped.key
    by_portal = registry.rejected_rows(outcome.key)[["line", "reasons"]]
    by_pipeline = registry.rejected_rows(piped.key)[["line", "reasons"]]
    assert by_portal.values.tolist() == by_pipeline.values.tolist()
    assert by_portal["line"].tolist() == [3, 4, 5]
