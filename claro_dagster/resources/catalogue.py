"""The catalogue store as a Dagster resource, and the IO manager that keeps each batch stage's rows.

Stage outputs persist per (asset, batch) under the project home, so any one stage can be re-run for
one batch from the UI without re-running the stages before it.
"""

from __future__ import annotations

import hashlib
import pickle
from functools import cached_property
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow as pa

from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.spec import load_spec
from claro_dagster.spec.models import ProjectSpec


class CatalogueResource(dg.ConfigurableResource):
    """The project: its spec, its home folder and its catalogue store."""

    spec_path: str
    home: str
    database_url: str | None = None

    @cached_property
    def spec(self) -> ProjectSpec:
        return load_spec(self.spec_path)

    @cached_property
    def spec_version(self) -> str:
        """Hash of the spec file as loaded: publishing checks the batch was validated under the same rules."""
        return hashlib.sha256(Path(self.spec_path).read_bytes()).hexdigest()[:16]

    @cached_property
    def store(self) -> CatalogueStore:
        return CatalogueStore(self.spec, self.database_url, home=Path(self.home))

    @property
    def home_dir(self) -> Path:
        return Path(self.home)

    def batch_dir(self, batch: str) -> Path:
        path = self.home_dir / "batches" / batch
        path.mkdir(parents=True, exist_ok=True)
        return path

    def inbox_dir(self, source: str) -> Path:
        """A source's inbox: its `path`, relative to the project home (the demo's files are copied there)."""
        src = self.spec.sources[source]
        path = Path(src.path or f"inbox/{source}")
        return path if path.is_absolute() else self.home_dir / path


class BatchFrameIOManager(dg.ConfigurableIOManager):
    """DataFrames as Parquet under `<base_dir>/<asset key>/<partition>.parquet`.

    A frame whose object columns mix types (a stage may keep a bad value beside good ones) cannot be
    Parquet; it is pickled instead, so nothing is coerced on the way through.
    """

    base_dir: str

    def _path(self, asset_key: dg.AssetKey, partition: str | None) -> Path:
        return Path(self.base_dir).joinpath(*asset_key.path) / (partition or "all")

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame) -> None:
        if obj is None:
            return
        path = self._path(context.asset_key, context.partition_key if context.has_partition_key else None)
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in (path.with_suffix(".parquet"), path.with_suffix(".pkl")):
            stale.unlink(missing_ok=True)
        try:
            obj.to_parquet(path.with_suffix(".parquet"), index=False)
        except (pa.ArrowException, ValueError, TypeError):
            path.with_suffix(".parquet").unlink(missing_ok=True)
            with open(path.with_suffix(".pkl"), "wb") as handle:
                pickle.dump(obj, handle, protocol=pickle.HIGHEST_PROTOCOL)

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        partition = context.asset_partition_key if context.has_asset_partitions else None
        path = self._path(context.asset_key, partition)
        if path.with_suffix(".parquet").exists():
            return pd.read_parquet(path.with_suffix(".parquet"))
        if path.with_suffix(".pkl").exists():
            with open(path.with_suffix(".pkl"), "rb") as handle:
                return pickle.load(handle)
        stage = "/".join(context.asset_key.path)
        raise dg.Failure(f"no stored output of {stage} for batch {partition}: "
                         f"materialize {stage} for this batch first")
