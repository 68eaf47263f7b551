"""The IO manager that keeps each batch stage's rows."""

import dagster as dg
import pandas as pd

from claro_dagster.resources.catalogue import BatchFrameIOManager

KEY = dg.AssetKey(["products", "batch_raw"])


def store_and_load(manager, partition, frame=None):
    if frame is not None:
        manager.handle_output(dg.build_output_context(asset_key=KEY, partition_key=partition), frame)
    return manager.load_input(dg.build_input_context(asset_key=KEY, partition_key=partition))


def test_batches_of_the_same_file_name_keep_their_own_rows(tmp_path):
    """Batch keys differ only after the last dot (the content version): neither may overwrite the other."""
    manager = BatchFrameIOManager(base_dir=str(tmp_path))
    old, new = "acme_csv.products.csv.1111111111", "acme_csv.products.csv.2222222222"
    store_and_load(manager, old, pd.DataFrame({"sku": ["A"]}))
    store_and_load(manager, new, pd.DataFrame({"sku": ["B"]}))
    assert list(store_and_load(manager, old)["sku"]) == ["A"]
    assert list(store_and_load(manager, new)["sku"]) == ["B"]


def test_a_frame_parquet_cannot_hold_is_kept_exactly(tmp_path):
    manager = BatchFrameIOManager(base_dir=str(tmp_path))
    mixed = pd.DataFrame({"price": [1.5, "1,299.00 GBP", None]}, dtype=object)  # a stage keeps bad values as sent
    assert store_and_load(manager, "b.1", mixed)["price"].tolist() == [1.5, "1,299.00 GBP", None]
