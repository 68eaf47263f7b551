"""Authentication for HTTP requests a connector sends: bearer token, basic, API key (header or query parameter)
and OAuth2 client credentials, each secret read from the environment variable a spec names (`..._env`).

Interface (meant to be shared by every HTTP connector, e.g. the REST destination and the HTTP pull source):

* `auth_from_spec(spec, environ=os.environ) -> HttpAuth` builds the authenticator from an auth spec with
  `type` and the `_env` keys (`HttpAuthSpec` in spec/models.py); `required_env(spec)` lists the variables it needs.
* `HttpAuth.apply(headers, params)` adds the credentials to a request's headers / query parameters;
* `HttpAuth.refresh()` is called once after a 401: OAuth2 drops its cached token and returns True (send again),
  the static kinds return False (the 401 stands);
* `send(client, auth, method, url, **kwargs)` sends through the project's `HttpClient` (retries, backoff) with the
  credentials applied, and sends once more after a 401 when `refresh()` says so.

The OAuth2 client-credentials grant is a dozen lines (RFC 6749 section 4.4): a library such as authlib or
requests-oauthlib would bring its own HTTP transport, and every request must go through the project's HTTP layer.
The client authenticates to the token endpoint with HTTP basic (RFC 6749 section 2.3.1, the method every server
must support); the token is cached, for the whole process (a sensor builds a new client each tick), until 30
seconds before its `expires_in`.
"""

from __future__ import annotations

import base64
import os
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import requests

from claro_dagster.resources.http import HttpClient, HttpError, body_excerpt

EXPIRY_MARGIN = 30.0  # seconds: a token this close to expiry is fetched again before use
_TOKENS: dict[tuple[str, str, str], tuple[str, float]] = {}  # (token URL, client id, scope) -> (token, expires at)
_TOKENS_LOCK = threading.Lock()


class AuthError(Exception):
    """Credentials that are missing or refused; the message names the variable or endpoint to fix."""


class HttpAuth:
    """No authentication (the base of the others)."""

    kind = "none"

    def apply(self, headers: MutableMapping[str, str], params: MutableMapping[str, str]) -> None:
        """Add the credentials to a request's headers and query parameters."""

    def refresh(self) -> bool:
        """After a 401: forget cached credentials; True when sending again may succeed."""
        return False

    def secrets(self) -> list[str]:
        """The secret values, for redaction in errors and logs."""
        return []


class BearerAuth(HttpAuth):
    kind = "bearer"

    def __init__(self, token: str):
        self.token = token

    def apply(self, headers, params) -> None:
        headers["Authorization"] = f"Bearer {self.token}"

    def secrets(self) -> list[str]:
        return [self.token]


class BasicAuth(HttpAuth):
    kind = "basic"

    def __init__(self, username: str, password: str):
        self.username, self.password = username, password

    def apply(self, headers, params) -> None:
        pair = base64.b64encode(f"{self.username}:{self.password}".encode()).decode("ascii")
        headers["Authorization"] = f"Basic {pair}"

    def secrets(self) -> list[str]:
        return [self.password]


class ApiKeyAuth(HttpAuth):
    kind = "api_key"

    def __init__(self, key: str, name: str = "X-API-Key", location: str = "header"):
        self.key, self.name, self.location = key, name, location

    def apply(self, headers, params) -> None:
        (headers if self.location == "header" else params)[self.name] = self.key

    def secrets(self) -> list[str]:
        return [self.key]


class OAuth2ClientCredentials(HttpAuth):
    """OAuth2 client credentials: a token fetched from `token_url`, cached until expiry, refetched after a 401."""

    kind = "oauth2_client_credentials"

    def __init__(self, token_url: str, client_id: str, client_secret: str, scope: str | None = None, *,
                 http: HttpClient | None = None, clock: Callable[[], float] = time.time):
        self.token_url, self.client_id, self.client_secret, self.scope = token_url, client_id, client_secret, scope
        self.http = http or HttpClient()
        self.clock = clock
        self.token: str | None = None
        self.fetches = 0  # how many tokens this one fetched (tests: cached means one)

    def apply(self, headers, params) -> None:
        with _TOKENS_LOCK:
            cached = _TOKENS.get(self._key())
        if cached is None or self.clock() >= cached[1] - EXPIRY_MARGIN:
            cached = self._fetch()
        self.token = cached[0]
        headers["Authorization"] = f"Bearer {self.token}"

    def refresh(self) -> bool:
        with _TOKENS_LOCK:
            _TOKENS.pop(self._key(), None)
        self.token = None
        return True

    def _key(self) -> tuple[str, str, str]:
        return self.token_url, self.client_id, self.scope or ""

    def secrets(self) -> list[str]:
        return [s for s in (self.client_secret, self.token) if s]

    def _fetch(self) -> tuple[str, float]:
        form = {"grant_type": "client_credentials", **({"scope": self.scope} if self.scope else {})}
        try:
            response = self.http.post(self.token_url, data=form, auth=(self.client_id, self.client_secret),
                                      headers={"Accept": "application/json"})
            answer = response.json()
        except HttpError as exc:
            raise AuthError(f"the OAuth2 token endpoint refused the client credentials ({exc}): check the "
                            "client id and secret variables and the token URL") from exc
        except ValueError as exc:
            raise AuthError(f"the OAuth2 token endpoint {self.token_url} did not answer JSON: "
                            f"{body_excerpt(response)}") from exc
        token = answer.get("access_token") if isinstance(answer, dict) else None
        if not token:
            raise AuthError(f"the OAuth2 token endpoint {self.token_url} answered without an access_token")
        cached = (str(token), self.clock() + float(answer.get("expires_in") or 3600))
        with _TOKENS_LOCK:
            _TOKENS[self._key()] = cached
        self.fetches += 1
        return cached


def required_env(spec: Any) -> list[str]:
    """The environment variables an auth spec reads (none without a spec)."""
    if spec is None:
        return []
    names = {"bearer": ["token_env"], "basic": ["username_env", "password_env"], "api_key": ["key_env"],
             "oauth2_client_credentials": ["client_id_env", "client_secret_env", "token_url_env"]}[spec.type]
    return [getattr(spec, n) for n in names if getattr(spec, n, None)]


def auth_from_spec(spec: Any, environ: Mapping[str, str] | None = None, *, http: HttpClient | None = None,
                   clock: Callable[[], float] = time.time) -> HttpAuth:
    """The authenticator an auth spec describes, its secrets read from `environ` (default: os.environ) now."""
    if spec is None:
        return HttpAuth()
    env = os.environ if environ is None else environ

    def secret(key: str) -> str:
        name = getattr(spec, key, None)
        if not name:
            raise AuthError(f"auth type {spec.type} needs {key!r}: the environment variable holding the secret")
        value = env.get(name)
        if not value:
            raise AuthError(f"the environment variable {name!r} (the auth's {key}) is not set; set it where the "
                            "code location runs")
        return value

    if spec.type == "bearer":
        return BearerAuth(secret("token_env"))
    if spec.type == "basic":
        return BasicAuth(secret("username_env"), secret("password_env"))
    if spec.type == "api_key":
        return ApiKeyAuth(secret("key_env"), spec.name, spec.in_)
    token_url = secret("token_url_env") if spec.token_url_env else spec.token_url
    if not token_url:
        raise AuthError("auth type oauth2_client_credentials needs 'token_url' (or 'token_url_env'): the token "
                        "endpoint")
    return OAuth2ClientCredentials(token_url, secret("client_id_env"), secret("client_secret_env"), spec.scope,
                                   http=http, clock=clock)


def send(client: HttpClient, auth: HttpAuth, method: str, url: str, *,
         headers: Mapping[str, str] | None = None, params: Mapping[str, str] | None = None,
         **kwargs: Any) -> requests.Response:
    """Send with the credentials applied (the status is not raised); after a 401 ask `auth.refresh()` once and,
    if it says so, send again with fresh credentials."""
    for attempt in (1, 2):
        h, p = dict(headers or {}), dict(params or {})
        auth.apply(h, p)
        response = client.request(method, url, headers=h, params=p or None, raise_for_status=False, **kwargs)
        if response.status_code != 401 or attempt == 2 or not auth.refresh():
            return response
        response.close()
    raise AssertionError("unreachable")  # pragma: no cover
