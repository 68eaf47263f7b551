"""Real local servers for connector tests: a moto S3 server and throwaway PostgreSQL databases.

The conftests of `tests/resources/` and `tests/sensors/` load this module by path (the test tree is
not a package) and re-export its fixtures. PostgreSQL is the one at 127.0.0.1:5432 (user postgres,
trust auth) unless `CLARO_TEST_POSTGRES_URL` names another one (same variable as `tests/conftest.py`).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from moto.server import ThreadedMotoServer
from psycopg import sql

from claro_dagster.resources.s3 import S3Connection

PG_ADMIN_URL = os.environ.get("CLARO_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DB_PREFIX = "claro_test_conn_"


def s3_connection(endpoint_url: str) -> S3Connection:
    return S3Connection(
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def database_url(name: str) -> str:
    """The admin URL with its database replaced by `name` (query string kept)."""
    parts = urlsplit(PG_ADMIN_URL)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto S3 server on a free loopback port for the whole session."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3(moto_endpoint: str) -> S3Connection:
    """One connection (and boto3 client) for the session: building a client takes ~0.5 s."""
    return s3_connection(moto_endpoint)


@pytest.fixture
def bucket(s3: S3Connection) -> str:
    """A fresh, empty bucket per test (moto state is shared by the session)."""
    name = f"claro-test-{secrets.token_hex(5)}"
    assert s3.ensure_bucket(name)
    return name


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A throwaway database `claro_test_conn_<random>`, dropped at the end of the session."""
    name = DB_PREFIX + secrets.token_hex(6)
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield database_url(name)
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
