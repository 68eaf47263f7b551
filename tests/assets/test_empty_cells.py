"""Publishing through the real onboarding graph (demo spec) never clears what a file does not say
(issue 7 item 1): an absent column is no information, empty cells follow the source's `empty_cells`,
and defaults fill only the records a batch creates."""

from __future__ import annotations

import shutil

import dagster as dg
import pytest

from claro_dagster.catalogue.review import ReviewQueue
from claro_dagster.definitions import build_definitions
from claro_dagster.local import receive, run_batch
from claro_dagster.spec import DEMO_DIR

DEMO_INBOX = DEMO_DIR / "inbox"
SUPPLIERS = DEMO_INBOX / "suppliers" / "suppliers.csv"
HEADER = "sku,title,brand,gtin,price,weight,colour,size,supplier,status\n"


def good_rows(n: int) -> str:
    return HEADER + "".join(f"TST-{i:04d},Trail mug {i},Acme Outdoor,,{i}.50,0.3,grey,M,SUP-0001,active\n"
                            for i in range(1, n + 1))


class Project:
    def __init__(self, defs, claro, instance):
        self.defs, self.claro, self.instance = defs, claro, instance

    def run(self, source: str, src=None, *, name: str | None = None, text: str | None = None):
        inbox = self.claro.inbox_dir(source)
        inbox.mkdir(parents=True, exist_ok=True)
        target = inbox / (name or src.name)
        if src is not None:
            shutil.copyfile(src, target)
        else:
            target.write_text(text, encoding="utf-8")
        return run_batch(self.defs, self.instance, receive(self.claro, source, target))


def make_project(tmp_path, *, globex_empty_cells: str | None = None):
    spec = tmp_path / "claro.yaml"
    text = (DEMO_DIR / "claro.yaml").read_text(encoding="utf-8")
    if globex_empty_cells:
        anchor = "    sheet: Products"
        assert anchor in text
        text = text.replace(anchor, f"    empty_cells: {globex_empty_cells}\n{anchor}", 1)
    spec.write_text(text, encoding="utf-8")
    defs = build_definitions(spec, tmp_path / "home")
    claro = defs.resources["claro"]
    shutil.copytree(DEMO_DIR / "mappings", claro.home_dir / "mappings")  # the demo's confirmed mappings, as `claro run`
    return defs, claro


@pytest.fixture
def project(tmp_path):
    defs, claro = make_project(tmp_path)
    with dg.instance_for_test() as instance:
        p = Project(defs, claro, instance)
        assert p.run("suppliers_csv", SUPPLIERS).success
        yield p


def status_of(project, *keys):
    return [project.claro.store.record("products", k)["status"] for k in keys]


def test_a_file_with_only_code_name_and_price_keeps_status(project):
    assert project.run("acme_csv", name="first.csv", text=good_rows(2)).success
    assert status_of(project, "TST-0001", "TST-0002") == ["active", "active"]
    text = "sku,title,price\nTST-0001,Trail mug 1,1.50\nTST-0002,Trail mug 2,3.75\n"
    assert project.run("acme_csv", name="prices.csv", text=text).success
    assert status_of(project, "TST-0001", "TST-0002") == ["active", "active"]
    assert project.claro.store.record("products", "TST-0002")["price"] == 3.75
    assert ReviewQueue(project.claro.store).list() == []


def test_the_demo_globex_update_queues_no_status_clears(project):
    assert project.run("globex_xlsx", DEMO_INBOX / "globex" / "globex_products.xlsx").success
    before = status_of(project, "GLX-00421", "GLX-00422", "GLX-00423")
    assert project.run("globex_xlsx", DEMO_INBOX / "globex" / "globex_products_update.csv").success
    items = ReviewQueue(project.claro.store).list()
    assert items and {i.field for i in items} == {"price"}  # the contradicted prices wait; nothing else
    assert status_of(project, "GLX-00421", "GLX-00422", "GLX-00423") == before


def test_defaults_still_fill_new_records(project):
    text = "sku,title,price\nTST-0101,Camp stool,12.00\n"
    assert project.run("acme_csv", name="new.csv", text=text).success
    assert status_of(project, "TST-0101") == ["draft"]


def test_empty_cells_clear_is_a_reviewed_change_with_its_reason(tmp_path):
    defs, claro = make_project(tmp_path, globex_empty_cells="clear")
    with dg.instance_for_test() as instance:
        p = Project(defs, claro, instance)
        assert p.run("suppliers_csv", SUPPLIERS).success
        assert p.run("acme_csv", name="first.csv", text=good_rows(2)).success
        blank = good_rows(2).replace("SUP-0001,active\n", "SUP-0001,\n", 1)
        assert p.run("globex_xlsx", name="globex.csv", text=blank).success
        [item] = ReviewQueue(claro.store).list()  # Globex is trusted 80 for overwrites: below auto_apply 97
        assert (item.record, item.field, item.old, item.new, item.reason) == \
            ("TST-0001", "status", "active", None, "cleared: empty cell in globex.csv")
        assert status_of(p, "TST-0001") == ["active"]
        ReviewQueue(claro.store).approve([item.id], by="mei")
        assert status_of(p, "TST-0001") == [None]


def test_empty_cells_ignore_is_the_default(project):
    assert project.run("acme_csv", name="first.csv", text=good_rows(2)).success
    blank = good_rows(2).replace("SUP-0001,active\n", "SUP-0001,\n", 1)
    assert project.run("globex_xlsx", name="globex.csv", text=blank).success
    assert ReviewQueue(project.claro.store).list() == []
    assert status_of(project, "TST-0001") == ["active"]


