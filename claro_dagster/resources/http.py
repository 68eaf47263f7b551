"""The one HTTP layer every connector uses: a `requests.Session` with retries, backoff and throttling.

A connector builds an `HttpClient` (usually from its resource's config) and calls `request()`;
it never writes its own retry loop. What is retried:

* connection errors and timeouts (nothing, or nothing complete, came back);
* 408, 429 and every 5xx response.

Other 4xx answers are the caller's mistake and are never retried. Between attempts the client
waits, in order of preference:

1. `Retry-After` (delta seconds, fractional allowed as Shopify sends `2.0`, or an HTTP date);
2. a vendor's reset header when the response says the quota is spent (`X-RateLimit-Reset` /
   `RateLimit-Reset`, as delta seconds or as a Unix timestamp);
3. otherwise exponential backoff with full jitter: uniform(0, min(backoff_max, backoff_base * 2**n)).

Every wait is capped at `backoff_max`. Shopify's `X-Shopify-Shop-Api-Call-Limit` ("32/40") and
Amazon's `x-amzn-RateLimit-Limit` only describe the bucket: they are logged, never waited on
(Shopify answers 429 + Retry-After when the bucket is really full).

The retry loop is written here rather than with tenacity or stamina: neither is a dependency of
the project, and the wait must be read off each response (Retry-After, reset headers), which
needs a custom wait strategy in either library; the loop itself is a dozen lines.
"""

from __future__ import annotations

import email.utils
import ipaddress
import logging
import random
import re
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import requests

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 429, *range(500, 600)})
_SECRET_PARAM = re.compile(
    r"(token|key|secret|passw|pwd|sig|signature|auth|credential|session|code)", re.IGNORECASE)
_EXCERPT = 200


class HttpError(Exception):
    """A request that did not succeed: what was asked, where (secrets removed), and what came back."""

    def __init__(self, method: str, url: str, status: int | None, body_excerpt: str = "",
                 attempts: int = 1, reason: str | None = None):
        self.method = method.upper()
        self.url = safe_url(url)
        self.status = status
        self.body_excerpt = body_excerpt
        self.attempts = attempts
        self.reason = reason
        what = f"HTTP {status}" if status is not None else (reason or "no response")
        tail = f": {body_excerpt}" if body_excerpt else ""
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"{self.method} {self.url} failed{tries}: {what}{tail}")


def safe_url(url: str) -> str:
    """The URL without user:password and with the values of secret-looking query parameters hidden."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if _SECRET_PARAM.search(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def body_excerpt(response: requests.Response, limit: int = _EXCERPT) -> str:
    """The first characters of a response body on one line, for error messages and logs."""
    try:
        text = response.content[: limit * 4].decode(response.encoding or "utf-8", errors="replace")
    except Exception:  # a body that cannot be read is no reason to lose the real error
        return ""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After value (delta seconds or HTTP date); None if unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now)


def parse_reset(value: str | None, now: float) -> float | None:
    """Seconds until a rate-limit window resets: a Unix timestamp (GitHub style) or delta seconds."""
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    if number > 1_000_000_000:  # an epoch timestamp, not a delay: no API asks to wait 30 years
        return max(0.0, number - now)
    return max(0.0, number)


class HttpClient:
    """A `requests.Session` that retries transient failures with backoff and honours throttling.

    `sleep`, `clock` and `rng` are injectable so tests never wait; `session` so a connector can
    mount adapters or share a pool.
    """

    def __init__(self, base_url: str | None = None, timeout: float = 10, max_attempts: int = 5,
                 backoff_base: float = 0.5, backoff_max: float = 60, user_agent: str = "claro-dagster/0.1",
                 *, headers: Mapping[str, str] | None = None, session: requests.Session | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None):
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.base_url = base_url
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.session = session or _Session()
        self.session.headers["User-Agent"] = user_agent
        if headers:
            self.session.headers.update(headers)
        self.sleep = sleep
        self.clock = clock
        self.rng = rng or random.Random()
        self.rate_limiter: HostRateLimiter | None = None  # set by connectors with a per-host rate limit

    # ------------------------------------------------------------------ public
    def request(self, method: str, url: str, *, max_attempts: int | None = None, raise_for_status: bool = True,
                **kwargs: Any) -> requests.Response:
        """Send a request, retrying transient failures; return the response.

        `max_attempts` overrides the client's for this call (1 = no retry, e.g. for a POST that must
        not be repeated in-process). With `raise_for_status` (default) a final status >= 400 raises
        `HttpError`; without it the response is returned as is (after the retries for 408/429/5xx).
        Connection errors and timeouts that outlast the attempts raise `HttpError` with status None.
        Other keyword arguments go to `requests.Session.request` (`timeout` defaults to the client's).
        """
        full = self.url(url)
        attempts = max_attempts or self.max_attempts
        kwargs.setdefault("timeout", self.timeout)
        for attempt in range(1, attempts + 1):
            if self.rate_limiter is not None:
                self.rate_limiter.wait(full)
            try:
                response = self.session.request(method, full, **kwargs)
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
                reason = _describe(exc)
                if attempt == attempts:
                    raise HttpError(method, full, None, attempts=attempt, reason=reason) from exc
                delay = self._backoff(attempt)
                log.warning("%s %s: %s; retry %d/%d in %.2fs", method.upper(), safe_url(full), reason,
                            attempt, attempts - 1, delay)
                self.sleep(delay)
                continue
            self._note_throttle(response)
            if response.status_code in RETRY_STATUSES and attempt < attempts:
                delay = self.retry_delay(response, attempt)
                log.warning("%s %s: HTTP %d; retry %d/%d in %.2fs", method.upper(), safe_url(full),
                            response.status_code, attempt, attempts - 1, delay)
                response.close()
                self.sleep(delay)
                continue
            if raise_for_status and response.status_code >= 400:
                raise HttpError(method, full, response.status_code, body_excerpt(response), attempts=attempt)
            return response
        raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> requests.Response:
        return self.request("PUT", url, **kwargs)

    def patch(self, url: str, **kwargs: Any) -> requests.Response:
        return self.request("PATCH", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", url, **kwargs)

    def url(self, url: str) -> str:
        """An absolute URL: relative ones are joined to `base_url`."""
        if self.base_url and not urlsplit(url).scheme:
            return urljoin(self.base_url.rstrip("/") + "/", url.lstrip("/"))
        return url

    def retry_delay(self, response: requests.Response, attempt: int) -> float:
        """How long to wait before retrying this response (attempt = 1 for the first failure)."""
        now = self.clock()
        headers = response.headers
        told = parse_retry_after(headers.get("Retry-After"), now)
        if told is None and (response.status_code == 429 or _spent(headers)):
            for name in ("X-RateLimit-Reset", "RateLimit-Reset"):
                told = parse_reset(headers.get(name), now)
                if told is not None:
                    break
        if told is not None:
            return min(told, self.backoff_max)
        return self._backoff(attempt)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ helpers
    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.backoff_max, self.backoff_base * (2 ** (attempt - 1)))
        return self.rng.uniform(0, ceiling)  # full jitter: spreads retries of many clients apart

    def _note_throttle(self, response: requests.Response) -> None:
        for name in ("X-Shopify-Shop-Api-Call-Limit", "x-amzn-RateLimit-Limit"):
            value = response.headers.get(name)
            if value is not None:
                log.debug("%s %s: %s", safe_url(response.url or ""), name, value)


class HostRateLimiter:
    """At most `per_second` requests per host (scheme://host:port): each request waits for its slot.

    Slots are spaced 1/per_second apart (no bursts: a pull is one steady stream, and servers that state a rate
    mean it per second). `clock` is monotonic and `sleep` injectable, like the client's.
    """

    def __init__(self, per_second: float, *, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        if per_second <= 0:
            raise ValueError("a rate limit must be more than 0 requests per second")
        self.interval = 1.0 / per_second
        self.sleep = sleep
        self.clock = clock
        self._next: dict[str, float] = {}

    def wait(self, url: str) -> float:
        """Wait until the host of `url` may be asked again; return the seconds waited."""
        parts = urlsplit(url)
        host = f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"
        now = self.clock()
        due = self._next.get(host, now)
        waited = max(0.0, due - now)
        if waited:
            self.sleep(waited)
        self._next[host] = max(due, now) + self.interval
        return waited


class _Session(requests.Session):
    """A Session that resolves proxy/CA settings from the environment once per host.

    requests re-reads the whole environment on every request to find proxies (about 1 ms with a
    large environment, more than a loopback round trip); the answer depends only on the host.
    """

    def __init__(self) -> None:
        super().__init__()
        self._env_settings: dict[tuple, dict[str, Any]] = {}

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        if not self.trust_env or proxies:
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc, stream, verify, cert if not isinstance(cert, list) else tuple(cert))
        settings = self._env_settings.get(key)
        if settings is None:
            settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
            self._env_settings[key] = settings
        return {**settings, "proxies": dict(settings["proxies"])}


def _spent(headers: Mapping[str, str]) -> bool:
    for name in ("X-RateLimit-Remaining", "RateLimit-Remaining"):
        value = headers.get(name)
        if value is not None:
            try:
                return float(value) <= 0
            except ValueError:
                return False
    return False


def _describe(exc: Exception) -> str:
    if isinstance(exc, requests.Timeout):
        return f"timed out ({type(exc).__name__})"
    text = str(exc)
    # urllib3 nests the useful part ("Connection refused") deep inside; keep the message short.
    match = re.search(r"\[Errno -?\d+\] [^')\"]+|Connection refused|RemoteDisconnected\([^)]*\)|"
                      r"BadStatusLine\([^)]*\)", text)
    return f"connection failed: {match.group(0) if match else type(exc).__name__}"


__all__ = ["HostRateLimiter", "HttpClient", "HttpError", "RETRY_STATUSES", "body_excerpt", "parse_reset",
           "parse_retry_after", "safe_url"]


# -- SSRF guard (opt-in per client: scraping turns it on) ---------------------------------------------------------
# Written with the standard library's `ipaddress` rather than a package (e.g. advocate, which pins an old requests and
# is unmaintained): the rule is a dozen lines, and `ipaddress` already knows every special-purpose range
# (is_private covers 10/8, 172.16/12, 192.168/16, fc00::/7 and more; is_link_local 169.254/16 and fe80::/10).

class AddressRefused(HttpError):
    """A URL the SSRF guard will not fetch: not http(s), or its host resolves to a private, loopback, link-local,
    multicast or reserved address and is not explicitly allowed."""

    def __init__(self, method: str, url: str, reason: str):
        super().__init__(method, url, None, reason=reason)


def refused_address(address: str) -> str | None:
    """Why an IP address may not be fetched (None when it is a public address)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    # most specific first: Python's is_private also covers loopback, link-local, 0/8 and 240/4
    for name in ("loopback", "link_local", "unspecified", "multicast", "reserved", "private"):
        if getattr(ip, f"is_{name}"):
            return f"{ip} is a {name.replace('_', '-')} address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return f"{ip} is a site-local address"
    return None


class AddressGuard:
    """Refuses URLs that are not http(s) or whose host resolves (every address it resolves to) into a private,
    loopback, link-local, unique-local, multicast or reserved range, unless the host is in `allow_hosts`.

    The check runs after DNS resolution, and `GuardedHttpClient` runs it again on every redirect and, on the
    address each new connection really reached (`check_peer`), so a name that resolves differently between the
    check and the connection (DNS rebinding) is refused too (connections through a proxy are checked before only).
    """

    def __init__(self, allow_hosts: Iterable[str] = (),
                 resolve: Callable[..., list] = socket.getaddrinfo):
        self.allow_hosts = {h.lower().strip("[]") for h in allow_hosts}
        self.resolve = resolve

    def check(self, method: str, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            self._refuse(method, url, f"only http and https URLs are fetched, not {parts.scheme or 'no'} scheme")
        host = (parts.hostname or "").lower()
        if not host:
            self._refuse(method, url, "the URL names no host")
        if host in self.allow_hosts:
            return
        try:
            infos = self.resolve(host, parts.port or (443 if parts.scheme == "https" else 80),
                                 proto=socket.IPPROTO_TCP)
        except (socket.gaierror, UnicodeError) as exc:
            self._refuse(method, url, f"{host} does not resolve ({exc})")
        for info in infos:
            reason = refused_address(info[4][0])
            if reason:
                self._refuse(method, url, f"{host} resolves to {reason}; list the host in the source's "
                                          "allow_hosts to fetch it anyway")

    def check_peer(self, scheme: str, host: str, port: int | None, address: str) -> None:
        """Refuse a connection that reached a refused address (after the URL's host passed `check`)."""
        if host.lower().strip("[]") in self.allow_hosts:
            return
        reason = refused_address(address)
        if reason:
            self._refuse("CONNECT", f"{scheme}://{host}:{port}/", f"{host} connected to {reason} (its address "
                                                                  "changed after it was checked)")

    def _refuse(self, method: str, url: str, reason: str) -> None:
        log.warning("refused %s %s: %s", method.upper(), safe_url(url), reason)
        raise AddressRefused(method, url, f"refused: {reason}")


class _PeerCheckingAdapter(requests.adapters.HTTPAdapter):
    """Checks the address each new connection reached against the guard, before anything is sent on it."""

    def __init__(self, guard: AddressGuard):
        self.guard = guard
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        from urllib3.connection import HTTPConnection, HTTPSConnection
        from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

        super().init_poolmanager(*args, **kwargs)
        guard = self.guard

        def checked(base: type, scheme: str) -> type:
            class Checked(base):
                def _new_conn(self):
                    sock = super()._new_conn()
                    try:
                        guard.check_peer(scheme, self.host, self.port, sock.getpeername()[0])
                    except AddressRefused:
                        sock.close()
                        raise
                    return sock
            return Checked

        self.poolmanager.pool_classes_by_scheme = {
            "http": type("GuardedPool", (HTTPConnectionPool,), {"ConnectionCls": checked(HTTPConnection, "http")}),
            "https": type("GuardedHTTPSPool", (HTTPSConnectionPool,),
                          {"ConnectionCls": checked(HTTPSConnection, "https")}),
        }


REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


class GuardedHttpClient(HttpClient):
    """An `HttpClient` whose every request, and every redirect it is sent to, passes an `AddressGuard`.

    Redirects are followed here (`allow_redirects=False` per hop) so each `Location` is checked before it is
    fetched; at most `max_redirects` hops. Retries, backoff and throttling are the base client's, per hop.
    """

    def __init__(self, *args: Any, guard: AddressGuard, max_redirects: int = 10, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.guard = guard
        self.max_redirects = max_redirects
        for prefix in ("http://", "https://"):
            self.session.mount(prefix, _PeerCheckingAdapter(guard))

    def request(self, method: str, url: str, *, max_attempts: int | None = None, raise_for_status: bool = True,
                **kwargs: Any) -> requests.Response:
        current = self.url(url)
        kwargs.pop("allow_redirects", None)
        for _ in range(self.max_redirects + 1):
            self.guard.check(method, current)
            response = super().request(method, current, max_attempts=max_attempts, raise_for_status=False,
                                       allow_redirects=False, **kwargs)
            location = response.headers.get("Location")
            if response.status_code not in REDIRECT_STATUSES or not location:
                if raise_for_status and response.status_code >= 400:
                    raise HttpError(method, current, response.status_code, body_excerpt(response))
                return response
            response.close()
            current = urljoin(current, location)
            if response.status_code == 303 or (response.status_code in (301, 302) and method.upper() == "POST"):
                method = "GET"
                kwargs.pop("data", None)
                kwargs.pop("json", None)
        raise HttpError(method, current, None, reason=f"more than {self.max_redirects} redirects")
