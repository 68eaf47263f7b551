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
import logging
import random
import re
import time
from collections.abc import Callable, Mapping
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
