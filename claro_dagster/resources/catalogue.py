"""The catalogue store as a Dagster resource, and the IO manager that keeps each batch stage's rows.

Stage outputs persist per (asset, batch) under the project home, so any one stage can be re-run for
one batch from the UI without re-running the stages before it.

One catalogue store per process: Dagster builds the resource anew for every sensor tick and every run, and
opening a store creates an engine and syncs the schema, so `shared_store` keeps the stores it opened (per spec
version, home and database URL) and disposes their engines when they are replaced or the process ends.

The store's URL may hold a password. The resource's `database_url` is therefore the environment
variable (`dg.EnvVar("CLARO_DATABASE_URL")`): the Dagster UI shows its name, and Dagster reads its value
only when a run starts. Errors opening the store name it with the password hidden.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import os
import pickle
import threading
from collections import OrderedDict
from functools import cached_property
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow as pa

from claro_dagster.catalogue.batches import InvalidBatchKey, check_batch_key
from claro_dagster.catalogue.changes import StoreError
from claro_dagster.catalogue.opening import DATABASE_URL_ENV, redact, redacted_url  # noqa: F401 - re-exported
from claro_dagster.catalogue.opening import open_store as _open_store
from claro_dagster.catalogue.schema import embedded_database_url
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.spec import load_spec
from claro_dagster.spec.models import ProjectSpec


def database_url_setting() -> dg.EnvVar | None:
    """`CatalogueResource.database_url` for this environment: the variable when it is set (the UI shows its
    name, never the URL), else None (the embedded SQLite store under the project home)."""
    return dg.EnvVar(DATABASE_URL_ENV) if os.environ.get(DATABASE_URL_ENV) else None


class StoreMisconfigured(dg.Failure, StoreError):
    """The catalogue store's settings are wrong: a stage fails at once instead of being retried, and the
    command line prints it like any other StoreError."""

    def __init__(self, description: str):
        super().__init__(description=description, allow_retries=False)


def open_store(spec: ProjectSpec, url: str | None = None, *, home: Path | None = None) -> CatalogueStore:
    """Open the catalogue store (see `catalogue.opening.open_store`); StoreMisconfigured when the settings are at
    fault, so a run does not retry what cannot succeed."""
    return _open_store(spec, url, home=home, misconfigured=StoreMisconfigured)


@functools.lru_cache(maxsize=8)
def _load_spec(path: str, mtime_ns: int, size: int) -> ProjectSpec:
    """Dagster builds the resource anew for every run; parsing the YAML each time costs a tenth of a second.
    Keyed on modification time and size, so an edited spec is read again."""
    return load_spec(path)


#: Stores this process opened, least recently used first: (spec file, its mtime and size, home, URL) -> store.
_STORES: OrderedDict[tuple, CatalogueStore] = OrderedDict()
_STORES_LOCK = threading.Lock()
#: More than one project per process happens in tests and benchmarks; beyond this many, the oldest is closed.
MAX_STORES = 8


def shared_store(spec_path: str | Path, home: str | Path, url: str | None = None) -> CatalogueStore:
    """This process's catalogue store for a spec file (as it is now), a project home and a database URL.

    Opened once and then reused by every sensor tick and run of the process. An edited spec opens a new store
    (its schema synced to the edit) and the store of the older version is disposed; so is the least recently
    used beyond `MAX_STORES`, and every store when the process exits. Disposing closes pooled connections
    only: a caller still holding a store keeps working, on fresh connections.
    """
    path = Path(spec_path)
    stat = path.stat()
    place = (str(path.resolve()), str(Path(home).resolve()), url)
    key = (*place, stat.st_mtime_ns, stat.st_size)
    with _STORES_LOCK:
        store = _STORES.get(key)
        if store is not None:
            _STORES.move_to_end(key)
            return store
        store = open_store(_load_spec(str(path), stat.st_mtime_ns, stat.st_size), url, home=Path(home))
        for older in [k for k in _STORES if k[:3] == place]:  # an earlier version of the same spec
            _dispose(_STORES.pop(older))
        _STORES[key] = store
        while len(_STORES) > MAX_STORES:
            _dispose(_STORES.popitem(last=False)[1])
        return store


def close_stores() -> None:
    """Dispose every store `shared_store` opened (at process exit; tests call it to start afresh)."""
    with _STORES_LOCK:
        while _STORES:
            _dispose(_STORES.popitem()[1])


def _dispose(store: CatalogueStore) -> None:
    with contextlib.suppress(Exception):  # a database already gone (dropped, server stopped) has nothing to close
        store.dispose()


atexit.register(close_stores)


class CatalogueResource(dg.ConfigurableResource):
    """The project: its spec, its home folder and its catalogue store."""

    spec_path: str
    home: str
    # Set it to `database_url_setting()` (an EnvVar): a plain string would show its password in the UI.
    database_url: str | None = None

    @property
    def spec(self) -> ProjectSpec:
        path = Path(self.spec_path)
        stat = path.stat()
        return _load_spec(str(path), stat.st_mtime_ns, stat.st_size)

    @cached_property
    def spec_version(self) -> str:
        """Hash of the spec file as loaded: publishing checks the batch was validated under the same rules."""
        return hashlib.sha256(Path(self.spec_path).read_bytes()).hexdigest()[:16]

    @cached_property
    def store(self) -> CatalogueStore:
        """The process's store for this project (`shared_store`), the same for the whole life of this resource
        (a run keeps the store it started with even if the spec is edited meanwhile)."""
        url = self.database_url
        if isinstance(url, dg.EnvVar):  # Dagster resolves it for runs; `claro` uses the resource outside them
            url = url.get_value()
        # No URL is the embedded store, decided when the definitions loaded: a variable set later (in a run's or
        # the daemon's environment) does not move the store behind the back of the code location.
        return shared_store(self.spec_path, self.home, url or embedded_database_url(Path(self.home)))

    @property
    def home_dir(self) -> Path:
        return Path(self.home)

    def batch_dir(self, batch: str) -> Path:
        path = self.home_dir / "batches" / check_batch_key(batch)
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

    def _path(self, asset_key: dg.AssetKey, partition: str | None, suffix: str) -> Path:
        # Batch keys contain dots: build the name whole (with_suffix would cut the content version off).
        if partition is not None:
            try:
                check_batch_key(partition)  # a partition key is a file name here: never a path
            except InvalidBatchKey as exc:
                raise dg.Failure(str(exc), allow_retries=False) from None
        return Path(self.base_dir).joinpath(*asset_key.path) / f"{partition or 'all'}{suffix}"

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame) -> None:
        if obj is None:
            return
        partition = context.partition_key if context.has_partition_key else None
        parquet, pkl = (self._path(context.asset_key, partition, s) for s in (".parquet", ".pkl"))
        parquet.parent.mkdir(parents=True, exist_ok=True)
        for stale in (parquet, pkl):
            stale.unlink(missing_ok=True)
        try:
            obj.to_parquet(parquet, index=False)
        except (pa.ArrowException, ValueError, TypeError):
            parquet.unlink(missing_ok=True)
            with open(pkl, "wb") as handle:
                pickle.dump(obj, handle, protocol=pickle.HIGHEST_PROTOCOL)

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        partition = context.asset_partition_key if context.has_asset_partitions else None
        parquet, pkl = (self._path(context.asset_key, partition, s) for s in (".parquet", ".pkl"))
        if parquet.exists():
            return pd.read_parquet(parquet)
        if pkl.exists():
            with open(pkl, "rb") as handle:
                return pickle.load(handle)
        stage = "/".join(context.asset_key.path)
        raise dg.Failure(f"no stored output of {stage} for batch {partition}: "
                         f"materialize {stage} for this batch first", allow_retries=False)
