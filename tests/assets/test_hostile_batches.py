"""A hostile workbook through the real stage assets: quarantined with its reason, while a good batch
of another source publishes (issue 7, item 4)."""

from __future__ import annotations

import shutil

import dagster as dg
from stdnum import ean

from claro_dagster.catalogue.batches import BatchRegistry
from claro_dagster.definitions import build_definitions
from claro_dagster.local import receive, run_batch
from claro_dagster.spec import DEMO_DIR
from tests import hostile

HEADER = "sku,title,brand,gtin,price,weight,colour,size,supplier,status\n"
GTIN = "506012399001" + ean.calc_check_digit("506012399001")
GOOD = HEADER + f"TST-0001,Trail mug 1,Acme Outdoor,{GTIN},1.50,0.3,grey,M,SUP-0001,active\n"


def test_hostile_workbook_is_quarantined_and_other_batches_publish(tmp_path):
    spec = tmp_path / "claro.yaml"
    shutil.copyfile(DEMO_DIR / "claro.yaml", spec)
    defs = build_definitions(spec, tmp_path / "home")
    claro = defs.resources["claro"]
    registry = BatchRegistry(claro.store)
    with dg.instance_for_test() as instance:

        def run(source, name, build=None, text=None):
            inbox = claro.inbox_dir(source)
            inbox.mkdir(parents=True, exist_ok=True)
            path = inbox / name
            build(path) if build else path.write_text(text, encoding="utf-8")
            batch = receive(claro, source, path)
            return batch, run_batch(defs, instance, batch)

        suppliers, result = run("suppliers_csv", "suppliers.csv",
                                text=(DEMO_DIR / "inbox" / "suppliers" / "suppliers.csv").read_text())
        assert result.success
        # the 1.7 KB workbook that aborted the whole process: its parser dies in a child, not here
        bad, result = run("globex_xlsx", "globex_week.xlsx", build=hostile.far_away_cell)
        assert not result.success
        status = registry.get(bad.key)
        assert status.status == "quarantined"
        assert "globex_week.xlsx: refused:" in status.message and "has a cell at XFD1048576" in status.message
        folder = claro.inbox_dir("globex_xlsx") / "quarantine" / bad.key
        assert (folder / "globex_week.xlsx").exists()
        reason = (folder / "globex_week.xlsx.reason.txt").read_text()
        assert "XFD1048576" in reason and "save the sheet again without the empty range" in reason
        # a second hostile kind, refused by the pre-scan before any parser opens it
        bomb, result = run("globex_xlsx", "globex_strings.xlsx", build=hostile.shared_strings_bomb)
        assert not result.success and registry.get(bomb.key).status == "quarantined"
        assert "shared-strings bomb" in registry.get(bomb.key).message
        # the same process goes on: a good batch of another source publishes
        good, result = run("acme_csv", "weekly.csv", text=GOOD)
        assert result.success
        assert registry.get(good.key).status == "published"
        assert claro.store.record("products", "TST-0001")["title"] == "Trail mug 1"
