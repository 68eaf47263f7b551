"""Channel state in the catalogue store, on both backends."""

from __future__ import annotations

import pytest

from claro_dagster.catalogue.channels import ChannelRecord, ChannelState
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.spec.models import ProjectSpec


def test_channel_state_round_trips_and_replaces(store_url) -> None:
    spec = ProjectSpec.model_validate({"catalogues": {"products": {"key": "sku",
                                                                   "attributes": {"sku": {"type": "text"}}}}})
    store = CatalogueStore(spec, store_url)
    state = ChannelState(store)
    state.put([ChannelRecord("shop", "A", "pushed", "tee", "gid://shopify/Product/1", {"variant": "v1"}, "h1"),
               ChannelRecord("shop", "B", "failed", "tee", error="price: must be >= 0"),
               ChannelRecord("other", "A", "held", error="x")])
    state.put([ChannelRecord("shop", "B", "pushed", "tee", "gid://shopify/Product/1", {"variant": "v2"}, "h2")])
    got = state.get("shop")
    assert got["A"].remote_ids == {"variant": "v1"} and got["B"].hash == "h2" and got["B"].error is None
    assert state.counts("shop") == {"pushed": 2} and state.failures("other")[0].error == "x"
    assert ChannelState(store).get("shop", ["A"]).keys() == {"A"}  # a second open keeps the table
    with pytest.raises(ValueError, match="not one of"):
        state.put([ChannelRecord("shop", "C", "sent")])
    store.dispose()
