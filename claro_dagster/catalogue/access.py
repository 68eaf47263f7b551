"""Personal access links for the web app: a supplier's link to the Supplier Portal (`portal`, for one source) and a
reviewer's link to the review page (`review`, for one person named in the spec's `reviewers`).

A link carries a random token (32 bytes, urlsafe base64, `secrets.token_urlsafe`); only its SHA-256 is stored, with
whom and what it is for, when it was made and by whom, when it expires, and whether it was revoked. A token is
looked up by its hash (the index lookup can reveal at most something about the hash, never the token) and the
stored hash is then compared in constant time (`hmac.compare_digest`).

Failed attempts are rate-limited per client address: `MAX_FAILURES` failures within `FAILURE_WINDOW` refuse every
further attempt from that address (even with a good token) until the window ends. The counter is a row per
address in a table beside the tokens, so every worker process of the web app shares it. The tables live beside the
catalogue's own and are created when first used (like the channel state's).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from claro_dagster.catalogue.changes import StoreError
from claro_dagster.catalogue.common import aware, now

KINDS = ("portal", "review", "api")  # api: a token of the REST API, with scopes (see `api_access.py`)
LOGIN_PATHS = {"portal": "/portal/login", "review": "/review/login"}
MAX_FAILURES = 10
FAILURE_WINDOW = timedelta(minutes=15)

metadata = sa.MetaData()
access_tokens = sa.Table(
    "claro_access_tokens", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.Text, nullable=False),  # portal | review | api
    sa.Column("subject", sa.Text, nullable=False),  # the source (portal) or the reviewer (review)
    sa.Column("token_hash", sa.Text, nullable=False, unique=True),  # sha256 hex of the token
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("created_by", sa.Text),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
    sa.Column("last_used_at", sa.DateTime(timezone=True)),
)
access_failures = sa.Table(
    "claro_access_failures", metadata,
    sa.Column("client", sa.Text, primary_key=True),
    sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
    sa.Column("failures", sa.Integer, nullable=False),
)


class AccessError(StoreError):
    """A command-line mistake (unknown token id, bad duration); the message says what to do."""


class AccessDenied(Exception):
    """A link that does not grant access; `reason` is safe to show to the person who followed it."""

    def __init__(self, reason: str, *, rate_limited: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.rate_limited = rate_limited


@dataclass(frozen=True)
class AccessToken:
    id: int
    kind: str
    subject: str
    created_at: datetime
    created_by: str | None
    expires_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None

    def status(self, at: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.expires_at <= at else "active"


@dataclass(frozen=True)
class Issued:
    token: AccessToken
    secret: str  # shown once, never stored

    def link(self, base_url: str) -> str:
        return login_link(base_url, self.token.kind, self.secret)


def login_link(base_url: str, kind: str, secret: str) -> str:
    return f"{base_url.rstrip('/')}{LOGIN_PATHS[kind]}?token={secret}"


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


_DURATION = re.compile(r"^\s*(\d+)\s*([dhwm]?)\s*$")
_UNITS = {"": "days", "d": "days", "h": "hours", "w": "weeks", "m": "minutes"}


def parse_duration(text: str) -> timedelta:
    """`90d`, `12h`, `2w`, `30m` (a bare number is days)."""
    match = _DURATION.match(text or "")
    if not match or int(match.group(1)) <= 0:
        raise AccessError(f"--expires {text!r} is not a duration such as 90d, 12h, 2w or 30m")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


class AccessTokens:
    """Issue, list, revoke and verify the access links of one store."""

    def __init__(self, store: Any, *, clock: Callable[[], datetime] = now,
                 max_failures: int = MAX_FAILURES, window: timedelta = FAILURE_WINDOW):
        self.engine: sa.Engine = store.engine
        self.clock = clock
        self.max_failures = max_failures
        self.window = window
        metadata.create_all(self.engine)

    # ------------------------------------------------------------------ the command line
    def issue(self, kind: str, subject: str, *, expires_in: timedelta, by: str | None = None) -> Issued:
        if kind not in KINDS:
            raise AccessError(f"unknown link kind {kind!r}; kinds are: {', '.join(KINDS)}")
        secret = secrets.token_urlsafe(32)
        at = self.clock()
        row = {"kind": kind, "subject": subject, "token_hash": token_hash(secret), "created_at": at,
               "created_by": by, "expires_at": at + expires_in, "revoked_at": None, "last_used_at": None}
        with self.engine.begin() as conn:
            new_id = conn.execute(access_tokens.insert().values(**row)).inserted_primary_key[0]
        return Issued(self.get(new_id), secret)

    def list(self, kind: str | None = None) -> list[AccessToken]:
        query = sa.select(access_tokens).order_by(access_tokens.c.id)
        if kind is not None:
            query = query.where(access_tokens.c.kind == kind)
        with self.engine.connect() as conn:
            return [self._token(r) for r in conn.execute(query).fetchall()]

    def get(self, token_id: int) -> AccessToken:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(access_tokens).where(access_tokens.c.id == token_id)).first()
        if row is None:
            raise AccessError(f"no access link with id {token_id}; `claro portal tokens` lists them")
        return self._token(row)

    def revoke(self, token_id: int) -> AccessToken:
        token = self.get(token_id)
        if token.revoked_at is None:
            with self.engine.begin() as conn:
                conn.execute(access_tokens.update().where(access_tokens.c.id == token_id)
                             .values(revoked_at=self.clock()))
        return self.get(token_id)

    # ------------------------------------------------------------------ the web app
    def verify(self, secret: str | None, *, kind: str, client: str) -> AccessToken:
        """The token a link carries, if it grants `kind` access now; else AccessDenied (and a failure counted
        against `client`, the caller's address). A rate-limited address is refused before the token is looked at."""
        at = self.clock()
        if self._limited(client, at):
            raise AccessDenied("Too many failed attempts from your address. Wait 15 minutes, then open your "
                               "link again.", rate_limited=True)
        digest = token_hash(secret or "")
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(access_tokens).where(access_tokens.c.token_hash == digest)).first()
        if row is None or not hmac.compare_digest(row.token_hash, digest) or row.kind != kind:
            self._fail(client, at)
            raise AccessDenied("This link is not valid. Ask the catalogue team for a new one.")
        token = self._token(row)
        if token.revoked_at is not None:
            self._fail(client, at)
            raise AccessDenied("This link has been revoked. Ask the catalogue team for a new one.")
        if token.expires_at <= at:
            self._fail(client, at)
            raise AccessDenied(f"This link expired on {token.expires_at:%Y-%m-%d %H:%M} UTC. "
                               "Ask the catalogue team for a new one.")
        with self.engine.begin() as conn:
            conn.execute(access_tokens.update().where(access_tokens.c.id == token.id).values(last_used_at=at))
        return token

    def still_valid(self, token_id: int) -> bool:
        """Whether a signed-in session's link is still neither revoked nor expired (checked on every request)."""
        try:
            return self.get(token_id).status(self.clock()) == "active"
        except AccessError:
            return False

    def _limited(self, client: str, at: datetime) -> bool:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(access_failures).where(access_failures.c.client == client)).first()
        return (row is not None and aware(row.window_start) + self.window > at
                and row.failures >= self.max_failures)

    def _fail(self, client: str, at: datetime) -> None:
        f = access_failures
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(f).where(f.c.client == client)).first()
            if row is None:
                conn.execute(f.insert().values(client=client, window_start=at, failures=1))
            elif aware(row.window_start) + self.window <= at:
                conn.execute(f.update().where(f.c.client == client).values(window_start=at, failures=1))
            else:
                conn.execute(f.update().where(f.c.client == client).values(failures=f.c.failures + 1))

    @staticmethod
    def _token(r) -> AccessToken:
        return AccessToken(r.id, r.kind, r.subject, aware(r.created_at), r.created_by, aware(r.expires_at),
                           aware(r.revoked_at), aware(r.last_used_at))


def known_reviewers(spec: Any) -> list[str]:
    """The people the spec names as reviewers: members of its reviewer groups, and names in pipeline routing rules
    that are not groups."""
    groups = spec.reviewers
    names = {m for members in groups.values() for m in members}
    for pipe in spec.pipelines.values():
        for rule in pipe.routing:
            names |= {r for r in rule.reviewers if r not in groups}
    return sorted(names)
