"""The batch registry: finding a published copy of received content, forgetting a receipt that was only a copy."""

from __future__ import annotations

import pytest

from claro_dagster.catalogue.batches import BatchRegistry, batch_key, receipt_version
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.spec.models import AttributeSpec, CatalogueSpec, ProjectSpec


@pytest.fixture
def registry(tmp_path):
    spec = ProjectSpec(catalogues={"products": CatalogueSpec(key="sku", attributes={
        "sku": AttributeSpec(type="text", required=True)})})
    store = CatalogueStore(spec, f"sqlite:///{tmp_path / 'catalogue.db'}")
    yield BatchRegistry(store)
    store.dispose()


def receive(registry, version: str, filename: str = "weekly.csv", content: str = "c0ffee"):
    key = batch_key("acme", filename, version)
    registry.register(key, catalogue="products", source="acme", filename=filename, uri=f"/in/{filename}",
                      content_version=content)
    return key


def test_copy_of_finds_only_published_batches_of_the_same_source_name_and_content(registry):
    first = receive(registry, receipt_version("weekly.csv", 10, 1))
    assert registry.copy_of("acme", "weekly.csv", "c0ffee") is None  # received, not published
    assert registry.copy_of("acme", "weekly.csv", "c0ffee", published=False).key == first
    registry.set_status(first, "published", stage="records")
    assert registry.copy_of("acme", "weekly.csv", "c0ffee").key == first
    assert registry.copy_of("acme", "weekly.csv", "other") is None
    assert registry.copy_of("acme", "other.csv", "c0ffee") is None
    assert registry.copy_of("globex", "weekly.csv", "c0ffee") is None


def test_forget_receipt_removes_only_a_batch_never_processed(registry):
    fresh = receive(registry, receipt_version("weekly.csv", 10, 2))
    worked = receive(registry, receipt_version("weekly.csv", 10, 3))
    registry.set_status(worked, "received", stage="batch_raw")
    assert registry.forget_receipt(fresh) and registry.get(fresh) is None
    assert not registry.forget_receipt(worked) and registry.get(worked) is not None
