"""The shared HTTP layer against a real local HTTP server that replays scripted answers.

The throttling answers follow the vendors' documents: Slack and Shopify answer 429 with `Retry-After`
in seconds (`tests/contracts/slack/slack-limits.json`, Shopify's "2.0"), Amazon SP-API answers 429 with
`x-amzn-RateLimit-Limit` (the "Usage Plan" tables of its published API models), GitHub-style
APIs send `X-RateLimit-Reset` as a Unix time. RFC 9110 allows `Retry-After` as an HTTP date.
"""

from __future__ import annotations

import email.utils
import random

import pytest
from http_fakes import closed_port

from claro_dagster.resources.http import HttpClient, HttpError, parse_reset, parse_retry_after, safe_url

NOW = 1_800_000_000.0  # the injected clock


@pytest.fixture
def server(http_server):
    """The scripted endpoint (conftest's `http_server`): `server.answer(...)` queues its replies."""
    return http_server


class Top(random.Random):
    """Jitter that always draws the top of its range, so the backoff ceilings are visible."""

    def uniform(self, a: float, b: float) -> float:
        return b


def client(**kw) -> tuple[HttpClient, list[float]]:
    sleeps: list[float] = []
    kw.setdefault("rng", Top())
    return HttpClient(sleep=sleeps.append, clock=lambda: NOW, **kw), sleeps


# ---------------------------------------------------------------------- what is retried
@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 429])
def test_transient_statuses_are_retried_until_success(server, status):
    server.answer((status, {}, "busy"), (status, {}, "busy"), (200, {"Content-Type": "application/json"}, '{"ok": 1}'))
    http, sleeps = client()
    response = http.get(server.url + "/items")
    assert response.status_code == 200 and response.json() == {"ok": 1}
    assert len(server.requests) == 3 and len(sleeps) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_other_4xx_are_not_retried_and_raise_with_the_details(server, status):
    server.answer((status, {}, '{"errors": "title is required"}'))
    http, sleeps = client()
    with pytest.raises(HttpError) as caught:
        http.post(server.url + "/products", json={"sku": "A1"})
    assert len(server.requests) == 1 and sleeps == []
    err = caught.value
    assert (err.method, err.status, err.attempts) == ("POST", status, 1)
    assert err.url == server.url + "/products"
    assert err.body_excerpt == '{"errors": "title is required"}'
    assert str(err) == f'POST {server.url}/products failed: HTTP {status}: {{"errors": "title is required"}}'


def test_raise_for_status_false_returns_the_final_answer(server):
    server.answer((404, {}, "no such product"))
    http, _ = client()
    assert http.get(server.url + "/p/1", raise_for_status=False).status_code == 404
    server.answer((503, {}, "x"), (503, {}, "x"))
    http, sleeps = client(max_attempts=2)
    assert http.get(server.url + "/p/1", raise_for_status=False).status_code == 503
    assert len(sleeps) == 1


def test_the_same_body_is_sent_again_on_retry(server):
    server.answer((502, {}, ""))
    http, _ = client()
    http.post(server.url + "/feeds", json={"feed": [1, 2, 3]})
    assert server.requests[0].body == server.requests[1].body == b'{"feed": [1, 2, 3]}'


# ---------------------------------------------------------------------- how long it waits
def test_backoff_is_exponential_with_full_jitter_and_capped(server):
    server.answer(*[(500, {}, "")] * 6)
    http, sleeps = client(max_attempts=7, backoff_base=0.5, backoff_max=5)
    http.get(server.url + "/")
    assert sleeps == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]  # the top of each full-jitter range
    server.answer(*[(500, {}, "")] * 4)
    http, sleeps = client(max_attempts=5, backoff_base=0.5, backoff_max=5, rng=random.Random(3))
    http.get(server.url + "/")
    assert all(0 <= s <= c for s, c in zip(sleeps, [0.5, 1.0, 2.0, 4.0], strict=True))
    assert len(set(sleeps)) == 4


@pytest.mark.parametrize(("header", "expected"), [("7", 7.0), ("2.0", 2.0), ("0", 0.0)])
def test_retry_after_in_seconds_is_honoured(server, header, expected):
    server.answer((429, {"Retry-After": header}, '{"ok":false,"error":"ratelimited"}'))
    http, sleeps = client()
    assert http.get(server.url + "/chat.postMessage").status_code == 200
    assert sleeps == [expected]


def test_retry_after_as_an_http_date_is_honoured(server):
    server.answer((503, {"Retry-After": email.utils.formatdate(NOW + 42, usegmt=True)}, "maintenance"))
    http, sleeps = client()
    http.get(server.url + "/")
    assert sleeps == [42.0]


def test_retry_after_is_capped_at_backoff_max(server):
    server.answer((429, {"Retry-After": "3600"}, ""))
    http, sleeps = client(backoff_max=60)
    http.get(server.url + "/")
    assert sleeps == [60]


def test_rate_limit_reset_as_unix_time_or_delta_is_honoured_when_the_quota_is_spent(server):
    server.answer((429, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(NOW) + 12)}, ""),
                  (403, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "5"}, "quota"),
                  (429, {"RateLimit-Reset": "3"}, ""))
    http, sleeps = client()
    assert http.get(server.url + "/", raise_for_status=False).status_code == 403  # 403 is not retried
    assert sleeps == [12.0]
    assert http.get(server.url + "/").status_code == 200
    assert sleeps == [12.0, 3.0]


def test_vendor_bucket_headers_are_informational(server):
    server.answer((200, {"X-Shopify-Shop-Api-Call-Limit": "40/40"}, "{}"),
                  (429, {"Retry-After": "2.0", "X-Shopify-Shop-Api-Call-Limit": "40/40"}, ""), (200, {}, "{}"),
                  (429, {"x-amzn-RateLimit-Limit": "5.0"}, '{"errors": [{"code": "QuotaExceeded"}]}'), (200, {}, "{}"))
    http, sleeps = client(backoff_base=0.25)
    assert http.get(server.url + "/admin/api/2025-01/graphql.json").status_code == 200
    assert sleeps == []  # a full bucket alone is no reason to wait
    assert http.get(server.url + "/admin/api/2025-01/graphql.json").status_code == 200
    assert sleeps == [2.0]
    assert http.get(server.url + "/listings/2021-08-01/items").status_code == 200
    assert sleeps == [2.0, 0.25]  # SP-API sends no wait: plain backoff


# ---------------------------------------------------------------------- failures without an answer
def test_connection_refused_is_retried_then_raises_without_status():
    http, sleeps = client(max_attempts=3)
    url = f"http://127.0.0.1:{closed_port()}/hook"
    with pytest.raises(HttpError) as caught:
        http.post(url, data=b"{}")
    assert caught.value.status is None and caught.value.attempts == 3 and len(sleeps) == 2
    assert "refused" in str(caught.value).lower()


def test_a_timeout_is_retried(server):
    server.answer("hang", (200, {}, "late but fine"))
    http, sleeps = client(timeout=0.3)
    assert http.get(server.url + "/slow").text == "late but fine"
    assert len(server.requests) == 2 and len(sleeps) == 1


def test_an_answer_that_is_not_http_is_retried_then_raises(server):
    server.answer("garbage", "garbage")
    http, sleeps = client(max_attempts=2)
    with pytest.raises(HttpError) as caught:
        http.get(server.url + "/")
    assert caught.value.status is None and caught.value.attempts == 2 and len(sleeps) == 1


def test_attempts_run_out_with_status_and_a_short_excerpt(server):
    server.answer(*[(500, {}, "upstream exploded " + "x" * 5000)] * 3)
    http, _ = client(max_attempts=3)
    with pytest.raises(HttpError) as caught:
        http.get(server.url + "/")
    err = caught.value
    assert err.status == 500 and err.attempts == 3 and len(server.requests) == 3
    assert err.body_excerpt.startswith("upstream exploded xxx") and len(err.body_excerpt) <= 200
    assert "after 3 attempts: HTTP 500" in str(err)


def test_max_attempts_can_be_lowered_per_call(server):
    server.answer((500, {}, "no"))
    http, sleeps = client()
    with pytest.raises(HttpError):
        http.post(server.url + "/once", max_attempts=1)
    assert len(server.requests) == 1 and sleeps == []


# ---------------------------------------------------------------------- URLs, headers, secrets
def test_errors_never_show_credentials_or_secret_query_values(server):
    server.answer(*[(500, {}, "")] * 2)
    http, _ = client(max_attempts=2)
    url = server.url.replace("http://", "http://user:hunter2@") + "/api?api_key=SECRET1&access_token=SECRET2&page=2"
    with pytest.raises(HttpError) as caught:
        http.get(url)
    text = str(caught.value)
    assert "SECRET" not in text and "hunter2" not in text
    assert "page=2" in text and "api_key=***" in text and "***@127.0.0.1" in text
    assert safe_url("https://x.test/a?signature=abc&sku=1#frag") == "https://x.test/a?signature=***&sku=1"


def test_base_url_user_agent_and_default_headers(server):
    http, _ = client(base_url=server.url + "/admin/api/", headers={"X-Shopify-Access-Token": "t"})
    http.get("products.json")
    http.get("/orders.json")
    http.get(server.url + "/absolute")
    assert [r.path for r in server.requests] == ["/admin/api/products.json", "/admin/api/orders.json",
                                                 "/absolute"]
    assert server.requests[0].headers["User-Agent"] == "claro-dagster/0.1"
    assert server.requests[0].headers["X-Shopify-Access-Token"] == "t"


def test_the_client_keeps_one_connection_open(server):
    http, _ = client()
    for _ in range(3):
        http.get(server.url + "/")
    assert len({r.client for r in server.requests}) == 1


def test_header_parsers():
    assert parse_retry_after(None, NOW) is None
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after("-5", NOW) == 0
    assert parse_retry_after(email.utils.formatdate(NOW - 100, usegmt=True), NOW) == 0
    assert parse_reset(str(NOW + 30), NOW) == 30 and parse_reset("30", NOW) == 30 and parse_reset("x", NOW) is None
