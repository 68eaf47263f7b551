"""Tokens of the REST API (`/api/v1`): access tokens of kind `api` with scopes, and the audit log of API writes.

An API token is an `AccessTokens` token (same table, same hashing, expiry, revocation and rate-limited failures)
of kind `api` whose subject is the token's name (the external system it was made for: `erp`, `pim-sync`). Its
scopes sit in a table beside the tokens:

    read     records, one record with provenance and history, the change feed, review items, runs, batches
    propose  propose changes (a change set through the gate, with the token as source)
    review   decide review items
    run      start operations and pipelines
    admin    everything above, and the audit log

Every write through the API (a proposal, a decision, a run started) is kept in the audit log with the token's
name and id, what was asked, and what came of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from claro_dagster.catalogue.access import (
    AccessDenied,
    AccessError,
    AccessToken,
    AccessTokens,
    metadata,
)
from claro_dagster.catalogue.common import aware, dumps, loads, now

API_KIND = "api"
SCOPES = ("read", "propose", "review", "run", "admin")

api_scopes = sa.Table(
    "claro_api_scopes", metadata,
    sa.Column("token", sa.Integer, primary_key=True),  # claro_access_tokens.id
    sa.Column("scope", sa.Text, primary_key=True),
)
api_audit = sa.Table(
    "claro_api_audit", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("token", sa.Integer, nullable=False),
    sa.Column("token_name", sa.Text, nullable=False),
    sa.Column("action", sa.Text, nullable=False),  # propose | review | run
    sa.Column("target", sa.Text),  # catalogue, review item, run target
    sa.Column("status", sa.Integer, nullable=False),  # the HTTP status answered
    sa.Column("detail", sa.Text),  # JSON: what was asked and what came of it
)


@dataclass(frozen=True)
class ApiToken:
    """An API token as listed (never its secret)."""

    token: AccessToken
    scopes: tuple[str, ...]

    @property
    def id(self) -> int:
        return self.token.id

    @property
    def name(self) -> str:
        return self.token.subject

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


@dataclass(frozen=True)
class IssuedApiToken:
    token: ApiToken
    secret: str  # shown once, never stored


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    token: int
    token_name: str
    action: str
    target: str | None
    status: int
    detail: Any


def check_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    wanted = tuple(dict.fromkeys(s.strip() for s in scopes if s.strip()))
    if not wanted:
        raise AccessError(f"give at least one --scope; scopes are: {', '.join(SCOPES)}")
    unknown = [s for s in wanted if s not in SCOPES]
    if unknown:
        raise AccessError(f"unknown scope(s) {', '.join(map(repr, unknown))}; scopes are: {', '.join(SCOPES)}")
    return wanted


class ApiTokens:
    """Create, list, revoke and verify API tokens; write and read the audit log."""

    def __init__(self, store: Any, *, clock: Callable[[], datetime] = now, **limits: Any):
        self.tokens = AccessTokens(store, clock=clock, **limits)
        self.engine: sa.Engine = self.tokens.engine
        self.clock = clock

    # ------------------------------------------------------------------ the command line
    def create(self, name: str, scopes: Sequence[str], *, expires_in: timedelta, by: str | None = None
               ) -> IssuedApiToken:
        """A new token for `name` (unique among the active API tokens: the audit log names writes by it)."""
        name = (name or "").strip()
        if not name:
            raise AccessError("give the token a name: the system it is for, e.g. `claro api tokens create erp`")
        wanted = check_scopes(scopes)
        at = self.clock()
        clash = [t for t in self.list() if t.name == name and t.token.status(at) == "active"]
        if clash:
            raise AccessError(f"an active API token named {name!r} exists already (id {clash[0].id}); revoke it "
                              f"first (`claro api tokens revoke {clash[0].id}`) or choose another name")
        issued = self.tokens.issue(API_KIND, name, expires_in=expires_in, by=by)
        with self.engine.begin() as conn:
            conn.execute(api_scopes.insert(), [{"token": issued.token.id, "scope": s} for s in wanted])
        return IssuedApiToken(ApiToken(issued.token, wanted), issued.secret)

    def list(self) -> list[ApiToken]:
        scopes = self._scopes()
        return [ApiToken(t, scopes.get(t.id, ())) for t in self.tokens.list(API_KIND)]

    def get(self, token_id: int) -> ApiToken:
        try:
            token = self.tokens.get(token_id)
        except AccessError:
            token = None
        if token is None or token.kind != API_KIND:
            raise AccessError(f"no API token with id {token_id}; `claro api tokens list` lists them")
        return ApiToken(token, self._scopes([token_id]).get(token_id, ()))

    def revoke(self, token_id: int) -> ApiToken:
        self.get(token_id)
        self.tokens.revoke(token_id)
        return self.get(token_id)

    # ------------------------------------------------------------------ the API
    def verify(self, secret: str | None, *, client: str) -> ApiToken:
        """The API token `secret` is, if active; else AccessDenied (a failure counted against `client`)."""
        try:
            token = self.tokens.verify(secret, kind=API_KIND, client=client)
        except AccessDenied as exc:
            # The messages of AccessTokens speak of links; an API client holds a token.
            reason = exc.reason.replace("This link", "This API token").replace(
                "open your link again", "try again").replace(
                "Ask the catalogue team for a new one.", "Ask an admin for a new one (`claro api tokens create`).")
            raise AccessDenied(reason, rate_limited=exc.rate_limited) from None
        return ApiToken(token, self._scopes([token.id]).get(token.id, ()))

    def audit(self, token: ApiToken, action: str, target: str | None, status: int, detail: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(api_audit.insert().values(at=self.clock(), token=token.id, token_name=token.name,
                                                   action=action, target=target, status=status,
                                                   detail=dumps(detail)))

    def audit_log(self, *, after: int = 0, limit: int = 100, token_name: str | None = None) -> list[AuditEntry]:
        query = sa.select(api_audit).where(api_audit.c.id > after).order_by(api_audit.c.id).limit(limit)
        if token_name is not None:
            query = query.where(api_audit.c.token_name == token_name)
        with self.engine.connect() as conn:
            rows = conn.execute(query).fetchall()
        return [AuditEntry(r.id, aware(r.at), r.token, r.token_name, r.action, r.target, r.status, loads(r.detail))
                for r in rows]

    def _scopes(self, ids: Iterable[int] | None = None) -> dict[int, tuple[str, ...]]:
        query = sa.select(api_scopes.c.token, api_scopes.c.scope)
        if ids is not None:
            query = query.where(api_scopes.c.token.in_(list(ids)))
        out: dict[int, list[str]] = {}
        with self.engine.connect() as conn:
            for token, scope in conn.execute(query):
                out.setdefault(token, []).append(scope)
        return {k: tuple(s for s in SCOPES if s in v) for k, v in out.items()}
