"""Opening the catalogue store with errors a user can act on, and without Dagster.

The command line opens the store for every read (`claro records`, `history`, `review list`...) and must not pay for
importing Dagster; the Dagster resource (`resources/catalogue.py`) opens it through the same function, passing the
error type that tells a run not to retry.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import quote

import sqlalchemy as sa

from claro_dagster.catalogue.changes import StoreError
from claro_dagster.catalogue.schema import database_url as effective_database_url
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.spec.models import ProjectSpec

DATABASE_URL_ENV = "CLARO_DATABASE_URL"

#: PostgreSQL's answers to wrong settings (no such database or user, wrong password): retrying cannot help.
#: Matched on the text: libpq reports a failed connection without an SQLSTATE.
MISCONFIGURED = re.compile(r'database "[^"]*" does not exist|role "[^"]*" does not exist|'
                           r"password authentication failed|no password supplied")


def redacted_url(url: str) -> str:
    """A database URL fit for a message: its password replaced by `***`."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # unparseable: it may still hold a password, so show none of it
        return "(a database URL that cannot be parsed)"


def redact(text: str, url: str) -> str:
    """`text` with the URL's password (as written, and URL-encoded) replaced by `***`."""
    try:
        password = sa.engine.make_url(url).password
    except Exception:
        password = None
    for secret in {password, quote(password or "", safe="")} - {None, ""}:
        text = text.replace(secret, "***")
    return text


def open_store(spec: ProjectSpec, url: str | None = None, *, home: Path | None = None,
               misconfigured: type[StoreError] = StoreError) -> CatalogueStore:
    """Open the catalogue store (URL, else $CLARO_DATABASE_URL, else SQLite under `home`). When it cannot be
    opened, a StoreError says which store (password hidden), why, and what to check; `misconfigured` (a StoreError
    subclass) when the settings are at fault, so that a caller can tell retrying cannot help."""
    try:
        return CatalogueStore(spec, url, home=home)
    except (sa.exc.SQLAlchemyError, ValueError) as exc:
        where = url or os.environ.get(DATABASE_URL_ENV) or effective_database_url(home)  # as the user wrote it
        why = redact(next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__), where)
        message = (f"could not open the catalogue store at {redacted_url(where)}: {why}. Check "
                   f"{DATABASE_URL_ENV}: is the server running, does the database exist, are the user "
                   "and password right?")
        # `from None`: the driver's own error is summarised above, with the password taken out of it.
        if MISCONFIGURED.search(str(exc)):
            raise misconfigured(message) from None
        raise StoreError(message) from None
