"""One catalogue store per process: sensor ticks and runs reuse it; engines are disposed when replaced or at exit."""

from __future__ import annotations

import shutil

import dagster as dg
import pytest

import claro_dagster.resources.catalogue as catalogue_module
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.resources.catalogue import CatalogueResource, close_stores, shared_store
from claro_dagster.sensors.chaining import build_review_checkpoint_sensor
from claro_dagster.spec import DEMO_DIR


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A copy of the demo spec; counts the stores opened and disposed."""
    close_stores()
    spec = tmp_path / "claro.yaml"
    shutil.copyfile(DEMO_DIR / "claro.yaml", spec)
    opened, disposed = [], []
    original_open, original_dispose = catalogue_module.open_store, CatalogueStore.dispose

    def open_store(*args, **kwargs):
        store = original_open(*args, **kwargs)
        opened.append(store)
        return store

    def dispose(self):
        disposed.append(self)
        original_dispose(self)

    monkeypatch.setattr(catalogue_module, "open_store", open_store)
    monkeypatch.setattr(CatalogueStore, "dispose", dispose)
    yield spec, tmp_path / "home", opened, disposed
    close_stores()


def test_sensor_ticks_in_one_process_share_one_store(project):
    spec, home, opened, _ = project
    claro = CatalogueResource(spec_path=str(spec), home=str(home))
    sensor = build_review_checkpoint_sensor("products_onboarding", "products",
                                            dg.AssetKey(["products", "review_checkpoint"]))
    with dg.instance_for_test() as instance:
        for _ in range(3):  # Dagster builds the resource anew for each tick
            context = dg.build_sensor_context(instance=instance, resources={"claro": claro})
            result = sensor.evaluate_tick(context)
            assert result.skip_message and "still wait for review" in result.skip_message
    assert len(opened) == 1
    assert CatalogueResource(spec_path=str(spec), home=str(home)).store is opened[0]  # and so does a run


def test_an_edited_spec_opens_a_new_store_and_disposes_the_old_one(project):
    spec, home, opened, disposed = project
    first = shared_store(spec, home)
    assert shared_store(spec, home) is first
    spec.write_text(spec.read_text() + "\n# edited\n")
    second = shared_store(spec, home)
    assert second is not first and disposed == [first]
    assert second.count("products") == 0  # the new store works; so does the old one, on fresh connections
    assert first.count("products") == 0


def test_stores_beyond_the_limit_and_at_exit_are_disposed(project, tmp_path, monkeypatch):
    spec, _, opened, disposed = project
    monkeypatch.setattr(catalogue_module, "MAX_STORES", 2)
    stores = [shared_store(spec, tmp_path / f"home{i}") for i in range(3)]
    assert disposed == [stores[0]]  # the least recently used
    close_stores()
    assert sorted(map(id, disposed)) == sorted(map(id, stores))
    assert shared_store(spec, tmp_path / "home2") is not stores[2]  # opened afresh after close_stores
