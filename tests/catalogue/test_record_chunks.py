"""Records read in chunks (exports of large catalogues), on the embedded SQLite and on PostgreSQL."""

from __future__ import annotations

import pandas as pd
import pytest

from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.spec.models import AttributeSpec, CatalogueSpec, ProjectSpec


@pytest.fixture
def store(store_url):
    spec = ProjectSpec(catalogues={"products": CatalogueSpec(key="sku", attributes={
        "sku": AttributeSpec(type="text", required=True), "title": AttributeSpec(type="text"),
        "price": AttributeSpec(type="number")})})
    s = CatalogueStore(spec, store_url)
    s.import_records("products", pd.DataFrame({"sku": [f"S{i}" for i in range(7)],
                                               "title": [f"T{i}" if i % 3 else None for i in range(7)],
                                               "price": [None if i == 2 else i * 1.5 for i in range(7)]}),
                     change_set_id="seed")
    yield s
    s.dispose()


def test_chunks_hold_what_records_holds_in_order(store):
    chunks = list(store.record_chunks("products", chunk_rows=3))
    assert [len(c) for c in chunks] == [3, 3, 1]
    pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), store.records("products"))
    assert all(c["price"].dtype == "float64" for c in chunks)  # every chunk typed like the whole


def test_a_filter_that_matches_nothing_gives_one_empty_frame_with_the_columns(store):
    chunks = list(store.record_chunks("products", filter="price > 1000", chunk_rows=3))
    assert len(chunks) == 1 and chunks[0].empty
    assert list(chunks[0].columns) == ["sku", "title", "price"]
    assert chunks[0]["price"].dtype == "float64"
