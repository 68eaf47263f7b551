"""Shared fixtures: the real PostgreSQL server, demo spec, stores on both backends."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from moto.server import ThreadedMotoServer

from claro_dagster.resources.s3 import S3Connection
from claro_dagster.spec import DEMO_DIR, load_spec

sys.path.insert(0, str(Path(__file__).parent))  # the tests tree is not a package: lets tests import `http_fakes`

import http_fakes

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(autouse=True)
def _no_dagster_state_storage_left_behind():
    """Dagster keeps the current definitions-state storage in a ContextVar that `DagsterInstance.__enter__` sets
    and its exit resets. A test whose temporary instances are entered and left out of order (a yield fixture's
    instance around a test's own) can leave it pointing at a disposed instance's SQLite file, and every later
    `dg.materialize` in the process then fails with "unable to open database file". Reset it after each test."""
    yield
    from dagster._core.storage.defs_state.base import _current_storage

    _current_storage.set(None)


def _answers(url: str) -> bool:
    try:
        engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
        return True
    except Exception:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_throwaway_cluster() -> tuple[str, callable]:
    """Start a private PostgreSQL cluster from Debian's server binaries (as `postgres` when root)."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        pytest.fail("no PostgreSQL answers at 127.0.0.1:5432 (or $CLARO_TEST_POSTGRES_URL) and no server binaries "
                    "are installed: `apt-get install postgresql` or point CLARO_TEST_POSTGRES_URL at a server")
    bindir = Path(bins[-1]).parent
    data = Path(tempfile.mkdtemp(prefix="claro-pg-"))
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(data, "postgres")
    port = _free_port()
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data / "db"), "-l", str(data / "log"), "-o",
                    f"-h 127.0.0.1 -p {port} -k {data}", "-w", "start"], check=True, capture_output=True)

    def stop():
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "fast", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)

    return f"postgresql://postgres@127.0.0.1:{port}/postgres", stop


@pytest.fixture(scope="session")
def postgres_server():
    """URL of a database on a real PostgreSQL server, created for this test session and dropped after."""
    url = os.environ.get("CLARO_TEST_POSTGRES_URL", DEFAULT_PG)
    stop = None
    if not _answers(url):
        url, stop = _start_throwaway_cluster()
    name = f"claro_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    base, _, _ = url.rpartition("/")
    yield f"{base}/{name}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()
    if stop:
        stop()


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh schema per test inside the session database (search_path set on the URL)."""
    schema = f"t_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(postgres_server.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    yield f"{postgres_server}?options=-csearch_path%3D{schema}"
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path):
    """Run a test on both backends: the embedded SQLite file and the real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalogue.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="session")
def demo_spec():
    return load_spec(DEMO_DIR / "claro.yaml")


@pytest.fixture
def pg_url(postgres_server):
    """A PostgreSQL database URL for connector tests (the session database)."""
    return postgres_server


@pytest.fixture(scope="session")
def moto_endpoint():
    """A moto S3 server on a free loopback port for the whole session."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def s3_connection(endpoint_url: str) -> S3Connection:
    return S3Connection(endpoint_url=endpoint_url, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


@pytest.fixture(scope="session")
def s3(moto_endpoint):
    """One connection (and boto3 client) for the session: building a client takes ~0.5 s."""
    return s3_connection(moto_endpoint)


@pytest.fixture
def bucket(s3):
    """A fresh, empty bucket per test (moto state is shared by the session)."""
    name = f"claro-test-{uuid.uuid4().hex[:10]}"
    assert s3.ensure_bucket(name)
    return name


# ---------------------------------------------------------------------------------------------- local HTTP servers
@pytest.fixture
def http_server():
    """A `http_fakes.RecordingServer` on a loopback port: records requests, answers 200 "ok" unless told otherwise."""
    with http_fakes.RecordingServer() as server:
        yield server


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on: connecting is refused, as when the other side is unreachable."""
    return http_fakes.closed_port()
