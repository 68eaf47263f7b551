"""HTTP pulls (claro_dagster/resources/http_source.py) against real local HTTP servers (tests/http_fakes.py): every
pagination style, every authentication mode, conditional requests, and the bad input of issue 11 (loops, cursors
going backwards, timeouts, HTML and malformed JSON, 429 with Retry-After, 5xx, an expired OAuth2 token)."""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs, urlsplit

import pytest

from claro_dagster.resources.http import HttpClient, HttpError
from claro_dagster.resources.http_source import HttpPullError, pull, records_csv
from claro_dagster.spec.models import HttpPullSpec
from tests.http_fakes import RecordingServer

ITEMS = [{"sku": f"ACM-{30000 + i}", "title": f"Item {i}", "updated_at": f"2026-12-01T10:{i:02d}:00Z"}
         for i in range(7)]


def spec(**keys) -> HttpPullSpec:
    return HttpPullSpec.model_validate({"url": "/items", **keys})


def client(waits: list | None = None) -> HttpClient:
    return HttpClient(max_attempts=3, sleep=(waits.append if waits is not None else lambda s: None))


def query(request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(request.path).query).items()}


def feed(request, style: str, size: int = 3):
    """A paged feed of ITEMS in one of the pagination styles."""
    q = query(request)
    if style == "page":
        start = (int(q["page"]) - 1) * int(q["per_page"])
    elif style == "offset":
        start = int(q.get("offset", 0))
    else:
        start = int(q.get("cursor", q.get("from", 0)) or 0)
    page = ITEMS[start:start + size]
    more = start + size < len(ITEMS)
    if style == "cursor":
        return 200, {}, {"data": page, "meta": {"next": str(start + size) if more else None}}
    if style == "next_url":
        return 200, {}, {"data": page, "links": {"next": f"/items?from={start + size}" if more else None}}
    if style == "link_header":
        headers = {"Link": f'</items?from={start + size}>; rel="next"'} if more else {}
        return 200, headers, {"data": page}
    return 200, {}, {"data": page}


@pytest.mark.parametrize("style, paginate", [
    ("page", {"style": "page", "page_param": "page", "limit_param": "per_page", "page_size": 3}),
    ("offset", {"style": "offset", "page_size": 3}),
    ("cursor", {"style": "cursor", "cursor_path": "meta.next"}),
    ("next_url", {"style": "next_url", "next_url_path": "links.next"}),
    ("link_header", {"style": "link_header"}),
])
def test_every_pagination_style_pulls_every_record_once(style, paginate) -> None:
    with RecordingServer(lambda r: feed(r, style)) as server:
        result = pull(spec(records="data", paginate=paginate), client(), base_url=server.url)
    assert [r["sku"] for r in result.records] == [i["sku"] for i in ITEMS]
    assert len(server.requests) == len(result.pages) >= 3
    assert result.urls[0].startswith(server.url + "/items") and result.urls[-1] == result.pages[-1]["url"]


def test_placeholders_fill_the_url_and_query_and_body_are_sent() -> None:
    with RecordingServer(lambda r: feed(r, "offset")) as server:
        s = spec(url="/items?offset={offset}&limit={limit}", method="POST", body={"q": "kettles"},
                 query={"lang": "en"}, headers={"X-Shop": "acme"}, records="data",
                 paginate={"style": "offset", "page_size": 3, "limit_param": None})
        result = pull(s, client(), base_url=server.url)
    assert len(result.records) == 7
    first = server.requests[0]
    assert first.method == "POST" and first.json() == {"q": "kettles"} and first.headers["X-Shop"] == "acme"
    assert query(first) == {"offset": "0", "limit": "3", "lang": "en"}
    assert query(server.requests[1])["offset"] == "3"


def test_bearer_basic_and_api_key_auth_send_their_secret_from_the_environment() -> None:
    env = {"TOKEN": "t0k", "USER": "acme", "PASS": "s3cret", "KEY": "k3y"}
    modes = [({"type": "bearer", "token_env": "TOKEN"}, lambda r: r.headers["Authorization"] == "Bearer t0k"),
             ({"type": "basic", "username_env": "USER", "password_env": "PASS"},
              lambda r: r.headers["Authorization"] == "Basic " + base64.b64encode(b"acme:s3cret").decode()),
             ({"type": "api_key", "key_env": "KEY", "in": "header", "name": "X-Api-Key"},
              lambda r: r.headers["X-Api-Key"] == "k3y"),
             ({"type": "api_key", "key_env": "KEY", "in": "query", "name": "api_key"},
              lambda r: query(r)["api_key"] == "k3y")]
    for auth, accepted in modes:
        def handler(request, accepted=accepted):
            return (200, {}, {"data": ITEMS[:1]}) if accepted(request) else (401, {}, {"error": "unauthorized"})
        with RecordingServer(handler) as server:
            result = pull(spec(records="data", auth=auth), client(), env=env, base_url=server.url)
            assert len(result.records) == 1, auth
            with pytest.raises(HttpPullError, match="'TOKEN'|'USER'|'KEY'"):
                pull(spec(records="data", auth=auth), client(), env={}, base_url=server.url)
    # an API key in the query is hidden in what the pull reports
    assert "k3y" not in json.dumps(result.pages) and "api_key=***" in result.pages[0]["url"]


def test_oauth2_token_is_cached_until_expiry_and_refreshed_once_on_401() -> None:
    issued: list[str] = []
    revoked: set[str] = set()

    def handler(request):
        if request.path.startswith("/token"):
            form = parse_qs(request.body.decode())
            assert form["grant_type"] == ["client_credentials"] and form["scope"] == ["catalog.read"]
            assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"cid:csecret").decode()
            issued.append(f"tok{len(issued)}")
            return 200, {}, {"access_token": issued[-1], "token_type": "Bearer", "expires_in": 3600}
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in issued or token in revoked:
            return 401, {}, {"error": "invalid_token"}
        return 200, {}, {"data": ITEMS[:2]}

    env = {"CID": "cid", "CSECRET": "csecret"}
    with RecordingServer(handler) as server:
        auth = {"type": "oauth2_client_credentials", "client_id_env": "CID", "client_secret_env": "CSECRET",
                "token_url": server.url + "/token", "scope": "catalog.read"}
        now = [1000.0]
        s = spec(records="data", auth=auth)
        assert len(pull(s, client(), env=env, base_url=server.url, clock=lambda: now[0]).records) == 2
        pull(s, client(), env=env, base_url=server.url, clock=lambda: now[0])
        assert issued == ["tok0"]  # cached
        revoked.add("tok0")  # the server ends the token early: one 401, a new token, the same request again
        assert len(pull(s, client(), env=env, base_url=server.url, clock=lambda: now[0]).records) == 2
        assert issued == ["tok0", "tok1"]
        now[0] += 4000  # expired by the clock: fetched again before asking
        pull(s, client(), env=env, base_url=server.url, clock=lambda: now[0])
        assert issued == ["tok0", "tok1", "tok2"]
        revoked.update(["tok2", "tok3"])  # a refreshed token refused again: no endless refreshing
        issued_before = len(issued)
        with pytest.raises(HttpError, match="401"):
            pull(s, client(), env=env, base_url=server.url, clock=lambda: now[0])
        assert len(issued) == issued_before + 1


def test_an_unchanged_feed_costs_one_304_and_a_changed_one_is_pulled() -> None:
    version = ["v1"]

    def handler(request):
        if request.headers.get("If-None-Match") == f'"{version[0]}"':
            return 304, {"ETag": f'"{version[0]}"'}, b""
        return 200, {"ETag": f'"{version[0]}"', "Last-Modified": "Tue, 01 Dec 2026 10:00:00 GMT"}, {"data": ITEMS}

    with RecordingServer(handler) as server:
        first = pull(spec(records="data"), client(), base_url=server.url)
        assert first.state == {"etag": '"v1"', "last_modified": "Tue, 01 Dec 2026 10:00:00 GMT"}
        again = pull(spec(records="data"), client(), first.state, base_url=server.url)
        assert again.not_modified and again.records == [] and len(server.requests) == 2
        assert server.requests[1].headers["If-Modified-Since"] == "Tue, 01 Dec 2026 10:00:00 GMT"
        version[0] = "v2"
        assert len(pull(spec(records="data"), client(), first.state, base_url=server.url).records) == 7


def test_incremental_sends_the_watermark_and_keeps_the_max() -> None:
    def handler(request):
        since = query(request).get("updated_since", "")
        return 200, {}, {"data": [i for i in ITEMS if i["updated_at"] > since]}

    s = spec(records="data", incremental={"field": "updated_at", "param": "updated_since",
                                          "initial": "2026-12-01T10:03:00Z"})
    with RecordingServer(handler) as server:
        result = pull(s, client(), base_url=server.url)
        assert [r["sku"] for r in result.records] == ["ACM-30004", "ACM-30005", "ACM-30006"]
        assert result.state["watermark"] == "2026-12-01T10:06:00Z"
        assert query(server.requests[0])["updated_since"] == "2026-12-01T10:03:00Z"
        assert pull(s, client(), result.state, base_url=server.url).records == []


def test_a_feed_returning_the_same_page_forever_is_a_loop_naming_the_url() -> None:
    with RecordingServer(lambda r: (200, {}, {"data": ITEMS[:3]})) as server:
        with pytest.raises(HttpPullError, match=r"loop: http://127\.0\.0\.1:\d+/items\?page=2.*same page"):
            pull(spec(records="data", paginate={"style": "page", "page_size": 3, "limit_param": None}), client(),
                 base_url=server.url)
    with RecordingServer(lambda r: (200, {}, {"data": ITEMS[:3], "next": "/items?from=0"})) as server:
        with pytest.raises(HttpPullError, match="loop: .*/items\\?from=0"):
            pull(spec(records="data", paginate={"style": "next_url", "next_url_path": "next"}), client(),
                 base_url=server.url)
    pages = iter(range(100))
    with RecordingServer(lambda r: (200, {}, {"data": [{"n": next(pages)}], "cursor": "abc"})) as server:
        with pytest.raises(HttpPullError, match="cursor 'abc' again"):
            pull(spec(records="data", paginate={"style": "cursor", "cursor_path": "cursor"}), client(),
                 base_url=server.url)


def test_a_cursor_or_watermark_that_goes_backwards_is_refused() -> None:
    cursors = iter(["5", "9", "4"])
    with RecordingServer(lambda r: (200, {}, {"data": [{"n": r.path}], "next": next(cursors, None)})) as server:
        with pytest.raises(HttpPullError, match=r"cursor went backwards \('9' -> '4'\)"):
            pull(spec(records="data", paginate={"style": "cursor", "cursor_path": "next"}), client(),
                 base_url=server.url)
    s = spec(records="data", incremental={"field": "updated_at", "param": "since"})
    with RecordingServer(lambda r: (200, {}, {"data": ITEMS[:2]})) as server:
        with pytest.raises(HttpPullError, match="updated_at='2026-12-01T10:00:00Z', before the stored watermark"):
            pull(s, client(), {"watermark": "2026-12-01T10:05:00Z"}, base_url=server.url)


def test_html_and_malformed_json_are_clear_errors_naming_url_and_content_type() -> None:
    html = (200, {"Content-Type": "text/html; charset=utf-8"}, "<!doctype html><title>Sign in</title>")
    with RecordingServer(lambda r: html) as server:
        with pytest.raises(HttpPullError, match=r"/items answered text/html; charset=utf-8 where JSON was expected"):
            pull(spec(), client(), base_url=server.url)
    broken = (200, {"Content-Type": "application/json"}, '{"data": [{"sku": "A"')
    with RecordingServer(lambda r: broken) as server:
        with pytest.raises(HttpPullError, match=r"/items answered malformed JSON"):
            pull(spec(), client(), base_url=server.url)


def test_429_with_retry_after_and_5xx_are_retried() -> None:
    waits: list[float] = []
    with RecordingServer() as server:
        server.answer((429, {"Retry-After": "7"}, "slow down"), (503, {}, "busy"), (200, {}, {"data": ITEMS[:1]}))
        result = pull(spec(records="data"), client(waits), base_url=server.url)
    assert len(result.records) == 1 and len(server.requests) == 3
    assert waits[0] == 7 and 0 <= waits[1] <= 1.0  # Retry-After honoured, then backoff with jitter


def test_a_page_that_times_out_fails_the_pull_and_names_the_url() -> None:
    def handler(request):
        return "hang" if "page=2" in request.path else feed(request, "page")

    with RecordingServer(handler) as server:
        s = spec(records="data", timeout_seconds=0.3, max_attempts=2,
                 paginate={"style": "page", "limit_param": "per_page", "page_size": 3})
        with pytest.raises(HttpError, match=r"/items\?page=2.*timed out"):
            pull(s, client(), base_url=server.url)


def test_rate_limit_spaces_requests_to_a_host() -> None:
    from claro_dagster.resources.http import HostRateLimiter

    now, waits = [0.0], []

    def sleep(seconds: float) -> None:  # a clock that moves only when the limiter sleeps
        waits.append(seconds)
        now[0] += seconds

    s = spec(records="data", rate_limit=2, paginate={"style": "page", "limit_param": "per_page", "page_size": 3})
    with RecordingServer(lambda r: feed(r, "page")) as server:
        plain = client()
        pull(s, plain, base_url=server.url)
        assert plain.rate_limiter.interval == 0.5  # the spec's rate, set on a client that had none
        timed = HttpClient(sleep=sleep)
        timed.rate_limiter = HostRateLimiter(2, sleep=sleep, clock=lambda: now[0])
        pull(s, timed, base_url=server.url)
    assert waits == [0.5, 0.5]  # 3 requests at 2/s
    other = HostRateLimiter(2, sleep=sleep, clock=lambda: now[0])
    assert other.wait("http://a.example/x") == 0 and other.wait("http://b.example/x") == 0  # per host


def test_csv_xml_and_xlsx_pages_and_the_batch_csv() -> None:
    import pandas as pd

    xml = b"<feed><item id='1'><sku>ACM-1</sku><title>Kettle</title></item><item id='2'><sku>ACM-2</sku></item></feed>"
    buffer = __import__("io").BytesIO()
    pd.DataFrame({"sku": ["ACM-3"], "title": ["Mug"]}).to_excel(buffer, index=False)
    bomb = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;">]><feed><item>&b;</item></feed>'
    replies = {"/c": (200, {"Content-Type": "text/csv"}, "sku,title\nACM-1,Kettle\n"),
               "/x": (200, {"Content-Type": "application/xml"}, xml),
               "/s": (200, {}, buffer.getvalue()), "/bomb": (200, {}, bomb)}
    with RecordingServer(lambda r: replies[r.path]) as server:
        assert pull(spec(url="/c", format="csv"), client(), base_url=server.url).records == [
            {"sku": "ACM-1", "title": "Kettle"}]
        records = pull(spec(url="/x", format="xml", records="item"), client(), base_url=server.url).records
        assert records == [{"id": "1", "sku": "ACM-1", "title": "Kettle"}, {"id": "2", "sku": "ACM-2"}]
        assert pull(spec(url="/s", format="xlsx"), client(), base_url=server.url).records == [
            {"sku": "ACM-3", "title": "Mug"}]
        with pytest.raises(HttpPullError, match="cannot be read safely"):
            pull(spec(url="/bomb", format="xml", records="item"), client(), base_url=server.url)
    assert records_csv([{"a": 1, "b": {"x": 1}}, {"c": None, "a": 2}]) == b'a,b,c\n1,"{""x"": 1}",\n2,,\n'
    assert records_csv([{"a": 1}, {"a": 2}], ["http://h/p1", "http://h/p2"], "_source_url") == (
        b"a,_source_url\n1,http://h/p1\n2,http://h/p2\n")


def test_secrets_never_appear_in_errors() -> None:
    env = {"KEY": "k3y-very-secret"}
    s = spec(records="data", max_attempts=2,
             auth={"type": "api_key", "key_env": "KEY", "in": "query", "name": "api_key"})
    with RecordingServer(lambda r: (500, {}, "down")) as server:
        with pytest.raises(HttpError) as failed:
            pull(s, client(), env=env, base_url=server.url)
    assert "k3y-very-secret" not in str(failed.value) and "api_key=***" in str(failed.value)
    assert len(server.requests) == 2 and all(query(r)["api_key"] == "k3y-very-secret" for r in server.requests)


def test_records_at_the_watermark_are_not_taken_twice_when_the_api_answers_at_or_after_it() -> None:
    items = [dict(i) for i in ITEMS[:3]]

    def handler(request):  # `>=`: the records at the watermark come again
        since = query(request).get("since", "")
        return 200, {}, {"data": [i for i in items if i["updated_at"] >= since]}

    s = spec(records="data", incremental={"field": "updated_at", "param": "since"})
    with RecordingServer(handler) as server:
        first = pull(s, client(), base_url=server.url)
        assert len(first.records) == 3
        assert pull(s, client(), first.state, base_url=server.url).records == []
        items.append({"sku": "ACM-39999", "title": "Late", "updated_at": items[-1]["updated_at"]})  # same stamp
        items[2] = {**items[2], "title": "Item 2, renamed"}  # changed, stamp unchanged: taken again
        again = pull(s, client(), first.state, base_url=server.url)
        assert [(r["sku"], r["title"]) for r in again.records] == [("ACM-30002", "Item 2, renamed"),
                                                                   ("ACM-39999", "Late")]
        assert pull(s, client(), again.state, base_url=server.url).records == []


def test_a_paged_feed_sends_no_validators_unless_told_and_a_bad_placeholder_is_named() -> None:
    def handler(request):
        assert "If-None-Match" not in request.headers  # page 1 unchanged says nothing about page 3
        return feed(request, "page")

    s = spec(records="data", paginate={"style": "page", "limit_param": "per_page", "page_size": 3})
    with RecordingServer(handler) as server:
        assert len(pull(s, client(), {"etag": '"v1"'}, base_url=server.url).records) == 7
        with pytest.raises(HttpPullError, match=r"placeholder .*'sku'"):
            pull(spec(url="/items/{sku}"), client(), base_url=server.url)
