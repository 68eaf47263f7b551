"""A publish whose PostgreSQL connection is killed part way (`pg_terminate_backend`, as a server restart does)
leaves nothing of its change set behind; publishing it again applies it whole, once (issue 15 item 2)."""

from __future__ import annotations

import threading

import pandas as pd
import pytest
import sqlalchemy as sa

from claro_dagster.catalogue.changes import Change, ChangeSet
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.catalogue.writer import CatalogueConnectionLost
from claro_dagster.spec.models import AttributeSpec, CatalogueSpec, ProjectSpec
from tests.e2e.harness import wait_until

pytestmark = pytest.mark.postgres


def make_spec() -> ProjectSpec:
    return ProjectSpec(catalogues={"products": CatalogueSpec(key="sku", attributes={
        "sku": AttributeSpec(type="text", required=True), "title": AttributeSpec(type="text")})})


def counts(store, change_set: str) -> dict[str, int]:
    t = store.t
    with store.engine.connect() as conn:
        return {name: conn.execute(sa.select(sa.func.count()).select_from(t[name]).where(
            (t[name].c.id if name == "change_sets" else t[name].c.change_set) == change_set)).scalar_one()
            for name in ("change_sets", "history", "events", "provenance")}


def test_a_publish_killed_mid_write_is_all_or_nothing(postgres_url):
    store = CatalogueStore(make_spec(), postgres_url)
    store.import_records("products", pd.DataFrame({"sku": ["A1", "B2"], "title": ["Mug", "Cup"]}),
                         change_set_id="import-1")
    change_set = ChangeSet("normalize-1", "products", "normalize", [Change("A1", "title", "MUG"),
                                                                    Change("B2", "title", "CUP")])
    rec = store.rec["products"]
    blocker = store.engine.connect()
    blocker.execute(sa.select(rec.c.sku).where(rec.c.sku == "B2").with_for_update())  # B2's row stays locked
    failure: list[BaseException] = []

    def publish():
        try:
            store.apply(change_set)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            failure.append(exc)

    publisher = threading.Thread(target=publish)
    publisher.start()
    admin = store.engine.connect()
    # The publisher has opened its change set and updated A1; it now waits for B2's row lock.
    def blocked():
        pid = admin.execute(sa.text(
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database() "
            "AND query ILIKE 'UPDATE%' AND pid <> pg_backend_pid()")).scalar()
        admin.commit()
        return pid is not None, pid

    def alive() -> None:
        assert publisher.is_alive(), "the publish ended before it reached B2's row"

    pid = wait_until(blocked, 60, 0.02, what="the publish to wait for B2's row lock", guard=alive)
    assert admin.execute(sa.select(sa.func.pg_terminate_backend(pid))).scalar_one()
    admin.commit()
    publisher.join(60)
    blocker.rollback()
    blocker.close()
    assert failure and isinstance(failure[0], CatalogueConnectionLost), failure
    assert "normalize-1" in str(failure[0]) and "publish it again" in str(failure[0])

    # Nothing of the killed change set: not its record, values, history, events or provenance.
    assert counts(store, "normalize-1") == {"change_sets": 0, "history": 0, "events": 0, "provenance": 0}
    frame = store.records("products").sort_values("sku")
    assert frame["title"].tolist() == ["Mug", "Cup"]

    # Published again (the run's retry), on a fresh connection: applied whole, once.
    result = store.apply(change_set)
    assert (result.applied, result.already_applied) == (2, False)
    assert counts(store, "normalize-1") == {"change_sets": 1, "history": 2, "events": 2, "provenance": 1}
    assert store.records("products").sort_values("sku")["title"].tolist() == ["MUG", "CUP"]
    assert store.apply(change_set).already_applied
    admin.close()
    store.dispose()
