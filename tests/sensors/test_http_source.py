"""`kind: http` sources through the sensor: each pull becomes a batch through the onboarding stages into the demo's
products catalogue, an unchanged feed (304) makes no batch, the watermark moves only with a written batch, and a pull
that fails halfway (a page timing out, a loop) writes nothing and is resumed by the next tick without duplicates.
The feed is a real local HTTP server (tests/http_fakes.py)."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import dagster as dg
import pytest
from batches import tick

from claro_dagster.catalogue.batches import BatchRegistry
from claro_dagster.definitions import build_definitions
from claro_dagster.sensors.inbound import http_cursor_name
from claro_dagster.spec import DEMO_DIR
from tests.http_fakes import RecordingServer

SOURCE = """\
  erp_http:
    kind: http
    catalogue: products
    http:
      url: /api/items
      url_env: CLARO_TEST_HTTP_FEED
      records: data
      paginate: {style: page, page_param: page, limit_param: per_page, page_size: 2}
      incremental: {field: updated_at, param: updated_since}
      conditional: true                 # the feed's ETag covers all its pages
      auth: {type: bearer, token_env: CLARO_TEST_HTTP_TOKEN}
      timeout_seconds: 0.5
      max_attempts: 1
      every: hourly
"""


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"the demo spec no longer has exactly one {old!r}: update this test's spec helper"
    return text.replace(old, new)


def spec_with_http_source(tmp_path) -> str:
    text = (DEMO_DIR / "claro.yaml").read_text(encoding="utf-8")
    text = replace_once(text, "\nsources:\n", "\nsources:\n" + SOURCE)
    text = replace_once(text, "sources: [acme_csv, globex_xlsx]", "sources: [acme_csv, globex_xlsx, erp_http]")
    (tmp_path / "claro.yaml").write_text(text, encoding="utf-8")
    return tmp_path / "claro.yaml"


class Feed:
    """A paged product API: `updated_since` filters, `hang_page` makes one page never answer, ETag on the whole."""

    def __init__(self, items: list[dict]):
        self.items = items
        self.hang_page: int | None = None

    def __call__(self, request):
        if request.headers.get("Authorization") != "Bearer s3cret":
            return 401, {}, {"error": "unauthorized"}
        q = {k: v[0] for k, v in parse_qs(urlsplit(request.path).query).items()}
        page, size = int(q["page"]), int(q["per_page"])
        if page == self.hang_page:
            return "hang"
        etag = f'"{len(self.items)}-{self.items[-1]["updated_at"]}"'
        if request.headers.get("If-None-Match") == etag:
            return 304, {"ETag": etag}, b""
        chosen = [i for i in self.items if i["updated_at"] > q.get("updated_since", "")]
        return 200, {"ETag": etag}, {"data": chosen[(page - 1) * size: page * size]}




def item(n: int, title: str, price: float, minute: int) -> dict:
    return {"sku": f"ACM-{40000 + n}", "title": title, "price": price, "updated_at": f"2026-12-01T09:{minute:02d}:00Z"}


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("CLARO_TEST_HTTP_TOKEN", "s3cret")
    return monkeypatch


def test_each_pull_becomes_a_batch_and_an_unchanged_feed_makes_none(env, tmp_path) -> None:
    feed = Feed([item(1, "Enamel kettle", 24.5, 0), item(2, "Steel toaster", 39.0, 1), item(3, "Mug", 5.0, 2)])
    with RecordingServer(feed) as server, dg.instance_for_test() as instance:
        env.setenv("CLARO_TEST_HTTP_FEED", server.url)
        defs = build_definitions(spec_with_http_source(tmp_path), tmp_path / "home")
        claro = defs.resources["claro"]
        assert defs.resolve_sensor_def("erp_http_http").minimum_interval_seconds == 3600
        [run] = tick(defs, instance, "erp_http_http")
        assert run.success
        [batch] = [b for b in BatchRegistry(claro.store).list() if b.source == "erp_http"]
        assert batch.status == "published"
        record = claro.store.record("products", "ACM-40002")
        assert (record["title"], record["price"]) == ("Steel toaster", 39.0)
        state = json.loads(claro.store.get_cursor(http_cursor_name("erp_http")))
        assert state["watermark"] == "2026-12-01T09:02:00Z" and state["etag"]
        # provenance: each page's URL beside the batch file
        [note] = claro.inbox_dir("erp_http").rglob("*.pull.json")
        pages = json.loads(note.read_text())["pages"]
        assert [p["records"] for p in pages] == [2, 1] and pages[1]["url"].endswith("/api/items?page=2&per_page=2")
        # and each record's page URL in the batch (a column the demo's mapping leaves unmapped)
        [pulled] = claro.inbox_dir("erp_http").rglob("erp_http-*.csv")
        rows = pulled.read_text().splitlines()
        assert rows[0].endswith(",_source_url") and rows[3].endswith("/api/items?page=2&per_page=2")
        # each value cites the page it came from
        citation = claro.store.provenance("products", "ACM-40003", "price").citation
        assert citation == pages[1]["url"] and claro.store.provenance("products", "ACM-40001", "title").citation \
            == pages[0]["url"]
        asked = len(server.requests)
        assert tick(defs, instance, "erp_http_http") == []  # unchanged: one 304, no batch
        assert len(server.requests) == asked + 1 and "If-None-Match" in server.requests[-1].headers
        feed.items.append(item(1, "Enamel kettle", 22.0, 9))
        [run] = tick(defs, instance, "erp_http_http")
        assert run.success and claro.store.record("products", "ACM-40001")["price"] == 22.0
        assert query_of(server.requests[-1])["updated_since"] == "2026-12-01T09:02:00Z"
        assert len([b for b in BatchRegistry(claro.store).list() if b.source == "erp_http"]) == 2


def query_of(request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(request.path).query).items()}


def test_a_page_timing_out_halfway_writes_nothing_and_the_next_tick_resumes(env, tmp_path) -> None:
    feed = Feed([item(n, f"Item {n}", 10.0 + n, n) for n in range(1, 6)])
    feed.hang_page = 2
    with RecordingServer(feed) as server, dg.instance_for_test() as instance:
        env.setenv("CLARO_TEST_HTTP_FEED", server.url)
        defs = build_definitions(spec_with_http_source(tmp_path), tmp_path / "home")
        claro = defs.resources["claro"]
        with pytest.raises(Exception) as failed:
            tick(defs, instance, "erp_http_http")
        chain = [failed.value, failed.value.__cause__, failed.value.__context__]
        assert any("/api/items?page=2" in str(e) and "timed out" in str(e) for e in chain)
        inbox = claro.inbox_dir("erp_http")
        assert not inbox.exists() or not list(inbox.rglob("*.csv")) and not list(inbox.rglob("*.part"))
        assert claro.store.get_cursor(http_cursor_name("erp_http")) is None  # nothing moved
        feed.hang_page = None
        server.release.set()
        [run] = tick(defs, instance, "erp_http_http")
        assert run.success
        [batch] = [b for b in BatchRegistry(claro.store).list() if b.source == "erp_http"]
        [pulled] = inbox.rglob("erp_http-*.csv")
        lines = pulled.read_text().splitlines()
        assert len(lines) == 6 and len(set(lines)) == 6  # the header and five records, each once
        assert query_of(next(r for r in server.requests if "page=1" in r.path)).get("updated_since") is None


def test_a_looping_feed_fails_the_tick_naming_the_url_and_makes_no_batch(env, tmp_path) -> None:
    with RecordingServer(lambda r: (200, {}, {"data": [item(1, "Kettle", 1.0, 0), item(2, "Mug", 2.0, 1)]})) as server:
        env.setenv("CLARO_TEST_HTTP_FEED", server.url)
        defs = build_definitions(spec_with_http_source(tmp_path), tmp_path / "home")
        claro = defs.resources["claro"]
        with dg.instance_for_test() as instance, pytest.raises(Exception) as failed:
            tick(defs, instance, "erp_http_http")
        chain = [failed.value, failed.value.__cause__, failed.value.__context__]
        assert any("loop:" in str(e) and "/api/items?page=2" in str(e) for e in chain)
        assert not claro.inbox_dir("erp_http").exists() or not list(claro.inbox_dir("erp_http").rglob("*.csv"))
        assert claro.store.get_cursor(http_cursor_name("erp_http")) is None


def test_the_spec_check_names_what_an_http_source_lacks(tmp_path) -> None:
    from claro_dagster.spec import load_spec

    text = (DEMO_DIR / "claro.yaml").read_text(encoding="utf-8")
    broken = SOURCE.replace("token_env: CLARO_TEST_HTTP_TOKEN", "token: oops")
    (tmp_path / "claro.yaml").write_text(replace_once(text, "\nsources:\n", "\nsources:\n" + broken))
    with pytest.raises(Exception, match="token"):
        load_spec(tmp_path / "claro.yaml")
    broken = SOURCE.replace("page_size: 2}", "page_size: 2}\n      paginate: {style: cursor}").replace(
        "      paginate: {style: page, page_param: page, limit_param: per_page, page_size: 2}\n", "")
    (tmp_path / "claro.yaml").write_text(replace_once(text, "\nsources:\n", "\nsources:\n" + broken))
    with pytest.raises(Exception, match="cursor_path"):
        load_spec(tmp_path / "claro.yaml")


def test_a_cron_source_pulls_at_its_times_only(env, tmp_path, monkeypatch) -> None:
    import datetime as dt

    from claro_dagster.sensors import inbound

    feed = Feed([item(1, "Enamel kettle", 24.5, 0)])
    now = [dt.datetime(2026, 12, 2, 5, 30, tzinfo=dt.UTC)]
    monkeypatch.setattr(inbound, "_http_now", lambda: now[0])
    with RecordingServer(feed) as server, dg.instance_for_test() as instance:
        env.setenv("CLARO_TEST_HTTP_FEED", server.url)
        path = spec_with_http_source(tmp_path)
        path.write_text(replace_once(path.read_text(), "      every: hourly\n", "      cron: '0 6 * * *'\n"))
        defs = build_definitions(path, tmp_path / "home")
        sensor = defs.resolve_sensor_def("erp_http_http")
        assert sensor.minimum_interval_seconds == 60

        def evaluate(cursor):
            context = dg.build_sensor_context(instance=instance, instance_ref=instance.get_ref(), cursor=cursor,
                                              definitions=defs,
                                              resources={"claro": defs.resources["claro"]})
            return sensor.evaluate_tick(context)

        first = evaluate(None)  # the first tick pulls, and says when the next pull is due
        assert len(first.run_requests) == 1 and json.loads(first.cursor) == {"due": "2026-12-02T06:00:00+00:00"}
        asked = len(server.requests)
        now[0] = dt.datetime(2026, 12, 2, 5, 59, tzinfo=dt.UTC)
        early = evaluate(first.cursor)
        assert len(server.requests) == asked and early.cursor == first.cursor  # not yet: no request at all
        now[0] = dt.datetime(2026, 12, 2, 6, 0, 30, tzinfo=dt.UTC)
        evaluate(first.cursor)
        assert len(server.requests) == asked + 1  # due: pulled (the feed is unchanged: one 304)
