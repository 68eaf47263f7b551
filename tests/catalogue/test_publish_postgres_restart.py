"""PostgreSQL restarted while a change set is being published (issue 15, "Bad input and faults"): the catalogue has
none of the change set, the writer's error says what happened and what to do, and publishing it again applies it
whole, once.

The server is a private cluster of this module (`initdb` + `pg_ctl` in a temporary folder, on a free port), never
the machine's shared one, which other tests use at the same time. The publish is held mid-write, deterministically:
a trigger on the history table makes each history insert wait for an advisory lock the test holds, so the writer
has opened its change set, taken the catalogue lock and written record values when the test sees (in
`pg_stat_activity`) its insert waiting; then the test restarts the server, `-m fast` (clients are disconnected, as
a planned restart does) and `-m immediate` (the server stops without a shutdown checkpoint and recovers from WAL,
as a crash does).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from claro_dagster.catalogue.changes import Change, ChangeSet
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.catalogue.writer import CatalogueConnectionLost
from claro_dagster.spec.models import AttributeSpec, CatalogueSpec, ProjectSpec
from tests.e2e.harness import free_port, wait_until

pytestmark = pytest.mark.postgres
HOLD = 815_077  # the advisory lock the trigger waits for while the test holds it


class PrivateCluster:
    """A PostgreSQL cluster of its own in a temporary folder (as user `postgres` when run as root: initdb refuses
    root), trust authentication on 127.0.0.1 and a free port; `restart(mode)` is `pg_ctl restart -m mode`."""

    def __init__(self) -> None:
        initdb = shutil.which("initdb") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))), None)
        if initdb is None:
            pytest.fail("initdb is not installed: apt-get install postgresql (the test starts a private cluster)")
        self.bindir = Path(initdb).parent
        self.root = Path(tempfile.mkdtemp(prefix="claro-pg-restart-"))
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.root, "postgres")
        self.data = self.root / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg(self, *args: str, timeout: float = 120) -> None:
        done = subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            raise AssertionError(f"{' '.join(args)} failed ({done.returncode}): {done.stdout}{done.stderr}\n"
                                 f"{self.log()}")

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def start(self) -> None:
        self._pg(str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self._pg(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-o",
                 f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off", "start")

    def restart(self, mode: str) -> None:
        self._pg(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"), "-w",
                 "-m", mode, "restart")

    def stop(self) -> None:
        subprocess.run([*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                        "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def private_postgres():
    cluster = PrivateCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def make_spec() -> ProjectSpec:
    return ProjectSpec(catalogues={"products": CatalogueSpec(key="sku", attributes={
        "sku": AttributeSpec(type="text", required=True), "title": AttributeSpec(type="text"),
        "price": AttributeSpec(type="number")})})


SKUS = [f"SKU-{n:03d}" for n in range(40)]


def counts(store: CatalogueStore, change_set: str) -> dict[str, int]:
    t = store.t
    with store.engine.connect() as conn:
        return {name: conn.execute(sa.select(sa.func.count()).select_from(t[name]).where(
            (t[name].c.id if name == "change_sets" else t[name].c.change_set) == change_set)).scalar_one()
            for name in ("change_sets", "history", "events", "provenance")}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_restarted_mid_publish_leaves_none_of_the_change_set(private_postgres, mode):
    database = f"claro_restart_{mode}"
    admin = sa.create_engine(private_postgres.url.replace("postgresql://", "postgresql+psycopg://", 1),
                             isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{database}"'))
    admin.dispose()
    url = private_postgres.url.rsplit("/", 1)[0] + f"/{database}"
    store = CatalogueStore(make_spec(), url)
    store.import_records("products", pd.DataFrame({"sku": SKUS, "title": [f"Mug {s}" for s in SKUS],
                                                   "price": [10.0] * len(SKUS)}), change_set_id="import-1")
    before = store.records("products").sort_values("sku").reset_index(drop=True)
    history = store.t["history"]
    with store.engine.begin() as conn:  # the hold point: every history insert waits while the test holds HOLD
        conn.execute(sa.text(f"CREATE FUNCTION claro_hold() RETURNS trigger AS $$ BEGIN "
                             f"PERFORM pg_advisory_xact_lock_shared({HOLD}); RETURN NEW; END $$ LANGUAGE plpgsql"))
        conn.execute(sa.text(f'CREATE TRIGGER claro_hold BEFORE INSERT ON "{history.name}" FOR EACH ROW '
                             "EXECUTE FUNCTION claro_hold()"))
    change_set = ChangeSet("normalize-1", "products", "normalize",
                           [Change(s, "title", f"MUG {s}") for s in SKUS] + [Change(s, "price", 12.5) for s in SKUS])

    holder = store.engine.connect()
    holder.execute(sa.select(sa.func.pg_advisory_lock(HOLD)))
    holder.commit()
    failure: list[BaseException] = []

    def publish():
        try:
            store.apply(change_set)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            failure.append(exc)

    publisher = threading.Thread(target=publish)
    publisher.start()

    def held() -> tuple[bool, object]:
        # the writer's transaction is open, has written values, and waits at its first history row
        row = holder.execute(sa.text(
            "SELECT pid, xact_start IS NOT NULL, query FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND wait_event = 'advisory' AND pid <> pg_backend_pid()")).first()
        holder.commit()
        return row is not None and row[1], row

    def alive() -> None:
        assert publisher.is_alive(), f"the publish ended before it reached the hold point: {failure}"

    wait_until(held, 60, 0.02, what="the publish to wait at its first history row", guard=alive)
    private_postgres.restart(mode)
    publisher.join(60)
    assert not publisher.is_alive()
    holder.invalidate()
    holder.close()

    # The writer's error says what happened, to which change set, and what to do.
    assert len(failure) == 1 and isinstance(failure[0], CatalogueConnectionLost), failure
    message = str(failure[0])
    assert "normalize-1" in message and "products" in message and "publish it again" in message, message

    # Nothing of the change set: not its record values, history, events or provenance.
    store.dispose()
    assert counts(store, "normalize-1") == {"change_sets": 0, "history": 0, "events": 0, "provenance": 0}
    assert store.records("products").sort_values("sku").reset_index(drop=True).equals(before)

    # Published again (the run's retry): applied whole, once; a third time is a no-op.
    result = store.apply(change_set)
    assert (result.applied, result.already_applied) == (2 * len(SKUS), False)
    assert counts(store, "normalize-1") == {"change_sets": 1, "history": 2 * len(SKUS), "events": 2 * len(SKUS),
                                            "provenance": 1}
    after = store.records("products").sort_values("sku")
    assert after["title"].tolist() == [f"MUG {s}" for s in SKUS] and set(after["price"]) == {12.5}
    assert store.apply(change_set).already_applied
    assert counts(store, "normalize-1")["history"] == 2 * len(SKUS)
    store.dispose()
