"""The Supplier Portal (`/portal`) through Starlette's TestClient: uploads, their instant result, new column shapes,
templates, history, and every bad input the issue names (oversized, binary, bombs, another supplier's SKUs, the same
file twice, guessed and revoked links, concurrent suppliers)."""

from __future__ import annotations

import io
import json
import re
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import uvicorn
from openpyxl import load_workbook
from starlette.testclient import TestClient

from claro_dagster.catalogue.access import AccessTokens
from claro_dagster.catalogue.batches import BatchRegistry, batch_key, receipt_version
from claro_dagster.catalogue.intake import map_batch, read_batch, validate_mapped
from claro_dagster.catalogue.mappings import MappingBook
from claro_dagster.catalogue.portal import Portal, UploadTooLarge, UploadWriter
from claro_dagster.catalogue.store import CatalogueStore
from claro_dagster.spec.models import (
    AttributeSpec,
    CatalogueSpec,
    NotificationsSpec,
    PipelineSpec,
    ProjectSpec,
    SlackRoute,
    SourceSpec,
)
from claro_dagster.web.app import create_app
from claro_dagster.web.portal_page import COOKIE, PortalPage
from claro_dagster.web.review_page import ReviewPage
from tests import hostile
from tests.resources.test_slack import FakeSlack, postmessage_problems

START = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
TEMPLATE_HEADER = "sku (required),title (required),price,colour,supplier"
OWN_HEADER = "Article No.,Product name,Unit price,Color"  # a supplier's own shape


class Clock:
    def __init__(self) -> None:
        self.at = START

    def __call__(self) -> datetime:
        return self.at


def make_spec(max_file_mb: float = 5) -> ProjectSpec:
    return ProjectSpec(
        catalogues={
            "products": CatalogueSpec(key="sku", attributes={
                "sku": AttributeSpec(type="text", required=True, identifier=True, regex=r"^[A-Z]{3}-\d{4}$",
                                     aliases=["Article No."]),
                "title": AttributeSpec(type="text", required=True, max_length=60, aliases=["product_name"]),
                "price": AttributeSpec(type="number", min=0),
                "colour": AttributeSpec(type="enum", values=["black", "white", "grey"], synonyms={"grey": ["gray"]}),
                "supplier": AttributeSpec(type="reference", target="suppliers")}),
            "suppliers": CatalogueSpec(key="supplier_id", attributes={
                "supplier_id": AttributeSpec(type="text", required=True), "name": AttributeSpec(type="text")})},
        sources={"acme": SourceSpec(catalogue="products", kind="upload", supplier="SUP-0001", max_file_mb=max_file_mb),
                 "globex": SourceSpec(catalogue="products", kind="upload", supplier="SUP-0002"),
                 "feed": SourceSpec(catalogue="products", kind="s3", bucket="b")},
        pipelines={"onboarding": PipelineSpec(catalogue="products", sources=["acme", "globex", "feed"],
                                              error_budget=0.25)},
    )


@pytest.fixture
def project(tmp_path):
    spec = make_spec()
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = CatalogueStore(spec, url)
    store.import_records("suppliers", pd.DataFrame({"supplier_id": ["SUP-0001", "SUP-0002"],
                                                    "name": ["Acme", "Globex"]}), change_set_id="suppliers")
    store.import_records("products", pd.DataFrame({"sku": ["GLX-0001"], "title": ["Globex shirt"],
                                                   "supplier": ["SUP-0002"]}), change_set_id="globex")
    store.dispose()
    clock = Clock()
    home = tmp_path / "home"

    def open_store(_spec=None):
        return CatalogueStore(spec, url)

    app = create_app(lambda: spec, open_store, launcher=None, signing_secret="x",
                     review_page=ReviewPage(lambda: spec, open_store, secret="s"),
                     portal_page=PortalPage(lambda: spec, open_store, home, secret="portal-secret", clock=clock))
    return app, open_store, clock, home, spec


def issue(open_store, clock, source="acme", expires=timedelta(days=90)):
    store = open_store()
    try:
        return AccessTokens(store, clock=clock).issue("portal", source, expires_in=expires, by="lead")
    finally:
        store.dispose()


def sign_in(client, project, source="acme"):
    _app, open_store, clock, _home, _spec = project
    issued = issue(open_store, clock, source)
    answer = client.get(f"/portal/login?token={issued.secret}", follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/portal"
    cookie = answer.headers["set-cookie"]
    assert f"{COOKIE}=" in cookie and "HttpOnly" in cookie and "Path=/portal" in cookie and "SameSite=lax" in cookie
    return issued


def csrf_of(client) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', client.get("/portal").text).group(1)


def upload(client, name: str, content: bytes, csrf: str | None = None, **kw):
    csrf = csrf if csrf is not None else csrf_of(client)
    return client.post("/portal/upload", data={"csrf": csrf}, files={"file": (name, content, "text/csv")},
                       follow_redirects=False, **kw)


def rows(*lines: str, header: str = TEMPLATE_HEADER) -> bytes:
    return ("\n".join([header, *lines]) + "\n").encode()


GOOD = rows("ACM-0001,Trail mug,4.50,grey,", "ACM-0002,Camp cup,3.00,black,SUP-0001",
            "ACM-0003,Water jug,12,white,", "ACM-0004,Bowl,5,gray,")


def batches(open_store, source=None):
    store = open_store()
    try:
        return [b for b in BatchRegistry(store).list() if source is None or b.source == source]
    finally:
        store.dispose()


def test_an_upload_of_the_template_shape_is_checked_at_once_and_handed_to_the_inbox_sensor(project):
    _app, open_store, _clock, home, _spec = project
    with TestClient(project[0]) as client:
        sign_in(client, project)
        home_page = client.get("/portal")
        assert home_page.status_code == 200 and "Supplier Portal: acme" in home_page.text
        assert 'for="file"' in home_page.text and "No uploads yet" in home_page.text
        client.get("/portal/template.csv")  # the template's shape is known from now on
        answer = upload(client, "mugs.csv", GOOD)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/portal/batches/")
        shown = client.get(answer.headers["location"]).text
    assert "Accepted: 0 of 4 rows failed validation (0.0%); the error budget is 25%" in shown
    assert "within budget" in shown and "No row was rejected" in shown
    [batch] = batches(open_store)
    inbox = home / "inbox" / "acme"
    placed = inbox / "mugs.csv"
    assert placed.read_bytes() == GOOD and not [p for p in inbox.iterdir() if p.name.startswith(".")]
    stat = placed.stat()
    # the key the inbox sensor gives this file: its pipeline run is this batch, not a second one
    assert batch.key == batch_key("acme", "mugs.csv", receipt_version("mugs.csv", stat.st_size, stat.st_mtime_ns))
    assert batch.uri == str(placed.resolve()) and batch.status == "received" and batch.source == "acme"


def test_errors_over_the_budget_halt_the_batch_with_lines_columns_values_and_reasons(project):
    _app, open_store, _clock, home, _spec = project
    bad = rows("ACM-0001,Trail mug,4.50,grey,", "acm 2,Camp cup,-3,purple,", "ACM-0003,,12,white,",
               "ACM-0004,Bowl,5,gray,")
    with TestClient(project[0]) as client:
        sign_in(client, project)
        client.get("/portal/template.csv")
        answer = upload(client, "mugs.csv", bad)
        location = answer.headers["location"]
        shown = client.get(location).text
        by_line_desc = client.get(location + "?sort=line&order=desc").text
        errors = client.get(location + "/errors.csv")
        rejected = client.get(location + "/rejected.csv")
        history = client.get("/portal").text
    assert "Halted: 2 of 4 rows failed validation (50.0%); the error budget is 25%" in shown
    assert "over budget" in shown and "Fix the rows listed below" in shown
    # each problem on the supplier's own line and column, with the value as sent
    table = pd.read_csv(io.BytesIO(errors.content), dtype=str, keep_default_na=False)
    assert list(table.columns) == ["line", "column", "value", "reason"]
    assert set(zip(table["line"], table["column"], table["value"], strict=True)) == {
        ("3", "sku (required)", "acm 2"), ("3", "price", "-3"), ("3", "colour", "purple"),
        ("4", "title (required)", "")}
    assert "purple" in shown and "<td>3</td><td>price</td>" in shown
    first = [int(n) for n in re.findall(r"<tr><td>(\d+)</td>", by_line_desc)]
    assert first == sorted(first, reverse=True) and 'aria-sort="descending"' in by_line_desc
    sent = pd.read_csv(io.BytesIO(rejected.content), dtype=str, keep_default_na=False)
    assert sent["line"].tolist() == ["3", "4"] and "colour" in sent.columns
    assert "halted" in history and 'href="/portal/batches/' in history
    [batch] = batches(open_store)
    assert batch.status == "halted"
    assert not (home / "inbox" / "acme").exists() or not list((home / "inbox" / "acme").glob("*.csv"))


def test_a_batch_halted_in_the_portal_is_announced_on_slack_once_a_good_one_is_not(project, monkeypatch):
    spec = project[4]
    bad = rows("ACM-0001,Trail mug,4.50,grey,", "acm 2,Camp cup,-3,purple,")
    with FakeSlack() as slack:
        monkeypatch.setenv("PORTAL_TEST_SLACK_TOKEN", "xoxb-portal")
        spec.notifications = NotificationsSpec(slack_token_env="PORTAL_TEST_SLACK_TOKEN", slack_api_url=slack.base_url,
                                               slack=[SlackRoute(channel="#suppliers", events=["batch.halted"])])
        with TestClient(project[0]) as client:
            sign_in(client, project)
            client.get("/portal/template.csv")  # its columns are a known shape: no mapping to confirm
            halted = upload(client, "mugs.csv", bad).headers["location"].rsplit("/", 1)[-1]
            upload(client, "mugs.csv", bad)  # the same file again is that same batch: not a second alert
            upload(client, "good.csv", GOOD)
        requests = slack.posts()
    assert [r.json()["channel"] for r in requests] == ["#suppliers"]
    assert postmessage_problems(requests[0]) == []
    text = json.dumps(requests[0].json())
    assert "Batch halted: mugs.csv (acme)" in text and f"claro rejected {halted}" in text


def test_a_new_shape_shows_the_proposed_mapping_to_confirm_and_a_repeat_shape_is_mapped_automatically(project):
    _app, open_store, _clock, home, spec = project
    first = rows("ACM-0001,Trail mug,4.50,grey", "ACM-0002,Camp cup,3,black", header=OWN_HEADER)
    again = rows("ACM-0003,Water jug,12,white", "ACM-0004,Bowl,5,grey", header=OWN_HEADER)
    with TestClient(project[0]) as client:
        sign_in(client, project)
        csrf = csrf_of(client)
        answer = upload(client, "own.csv", first, csrf)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/portal/mapping/")
        proposal = client.get(answer.headers["location"]).text
        assert 'value="sku" selected' in proposal and 'value="title" selected' in proposal
        assert 'value="price" selected' in proposal and 'value="colour" selected' in proposal
        assert "Confirm the columns of own.csv" in client.get("/portal").text  # waiting, listed at home
        assert batches(open_store) == []  # nothing is validated before the supplier confirms
        # a required field left without a column is refused, saying which
        missing = client.post(answer.headers["location"], data={"csrf": csrf, "col-0": "", "col-1": "title",
                                                                 "col-2": "price", "col-3": "colour"})
        assert missing.status_code == 400 and "Required field(s) sku have no column" in missing.text
        confirmed = client.post(answer.headers["location"], data={"csrf": csrf, "col-0": "sku", "col-1": "title",
                                                                  "col-2": "price", "col-3": "colour"},
                                follow_redirects=False)
        assert confirmed.status_code == 303 and confirmed.headers["location"].startswith("/portal/batches/")
        assert "Accepted: 0 of 2 rows" in client.get(confirmed.headers["location"]).text
        repeat = upload(client, "own-week2.csv", again, csrf)
        assert repeat.headers["location"].startswith("/portal/batches/")  # no mapping page this time
    store = open_store()
    try:
        saved = MappingBook(home / "mappings").list("acme")
    finally:
        store.dispose()
    assert [s[3] for s in saved] == ["confirmed"]
    assert [b.status for b in batches(open_store)] == ["received", "received"]


def test_the_templates_have_the_catalogue_columns_required_marked_drop_downs_and_a_valid_example(project):
    _app, open_store, _clock, _home, spec = project
    with TestClient(project[0]) as client:
        sign_in(client, project)
        csv = client.get("/portal/template.csv")
        xlsx = client.get("/portal/template.xlsx")
        assert csv.headers["content-disposition"] == 'attachment; filename="acme-template.csv"'
        accepted = upload(client, "template.xlsx", xlsx.content)
        assert accepted.headers["location"].startswith("/portal/batches/")  # the template's shape maps itself
        assert "Accepted: 0 of 1 rows failed" in client.get(accepted.headers["location"]).text
    lines = csv.content.decode("utf-8-sig").splitlines()
    assert lines[0] == TEMPLATE_HEADER
    assert lines[1] == "AAA-1111,Example title,1,black,SUP-0001"
    book = load_workbook(io.BytesIO(xlsx.content))
    sheet = book["Products"]
    assert [c.value for c in sheet[1]] == TEMPLATE_HEADER.split(",")
    assert sheet["A1"].font.bold and "required" in sheet["A1"].comment.text
    [check] = [v for v in sheet.data_validations.dataValidation if v.type == "list"]
    assert check.formula1 == '"black,white,grey"' and str(check.sqref) == "D2:D10001"
    assert [c.value for c in sheet[2]] == ["AAA-1111", "Example title", 1, "black", "SUP-0001"] or \
        [str(c.value) for c in sheet[2]] == ["AAA-1111", "Example title", "1", "black", "SUP-0001"]


def test_an_upload_over_the_size_limit_is_refused_before_it_is_stored_in_full(tmp_path):
    """A real server (uvicorn) and a client that sends 200 KB of a body that never ends: the 413 must come back
    while the client is still sending, so the server cannot have waited for (or stored) the whole file."""
    spec = make_spec(max_file_mb=0.05)  # 52 KB
    url = f"sqlite:///{tmp_path / 'store.db'}"
    CatalogueStore(spec, url).dispose()
    home = tmp_path / "home"

    def open_store(_spec=None):
        return CatalogueStore(spec, url)

    clock = Clock()
    app = create_app(lambda: spec, open_store, launcher=None, signing_secret="x",
                     portal_page=PortalPage(lambda: spec, open_store, home, secret="k", clock=clock))
    project = (app, open_store, clock, home, spec)
    with TestClient(app) as client:
        sign_in(client, project)
        csrf = csrf_of(client)
        cookie = client.cookies.get(COOKIE)
        declared = client.post("/portal/upload", content=b"x" * 10,
                               headers={"content-type": "multipart/form-data; boundary=b0undary",
                                        "content-length": str(200 * 1024 * 1024)})
    assert declared.status_code == 413  # a declared length over the limit: refused without reading the body

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        conn = socket.create_connection(sock.getsockname(), timeout=20)
        head = (f"--b0undary\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n--b0undary\r\n"
                'Content-Disposition: form-data; name="file"; filename="big.csv"\r\nContent-Type: text/csv\r\n\r\n'
                "sku,title\n").encode()
        conn.sendall((f"POST /portal/upload HTTP/1.1\r\nHost: x\r\nCookie: {COOKIE}={cookie}\r\n"
                      "Content-Type: multipart/form-data; boundary=b0undary\r\nTransfer-Encoding: chunked\r\n\r\n"
                      ).encode())
        for block in [head] + [b"ACM-0001,mug\n" * 5000] * 3:  # about 200 KB, and the body never ends
            conn.sendall(f"{len(block):x}\r\n".encode() + block + b"\r\n")
        answer = conn.recv(65536).decode("utf-8", "replace")
        conn.close()
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()
    assert answer.startswith("HTTP/1.1 413") and "larger than this portal accepts (0.05 MB)" in answer
    incoming = home / "portal" / "acme" / "incoming"
    assert not incoming.exists() or list(incoming.iterdir()) == []  # the part received was deleted
    assert batches(open_store) == []


def test_the_upload_writer_never_holds_more_than_the_limit(tmp_path):
    writer = UploadWriter(tmp_path, limit=100_000)
    sizes = []
    with pytest.raises(UploadTooLarge):
        for _ in range(100):
            writer.write(b"x" * 30_000)
            sizes.append(writer.path.stat().st_size if writer.path.exists() else 0)
    assert max(sizes) <= 100_000 and list(tmp_path.iterdir()) == []


def test_a_binary_file_named_csv_is_refused_by_its_content(project, tmp_path):
    _app, open_store, _clock, home, _spec = project
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
    with TestClient(project[0]) as client:
        sign_in(client, project)
        answer = upload(client, "products.csv", png)
        nul = upload(client, "products.csv", hostile.csv_with_nul_bytes(tmp_path / "nul.csv").read_bytes())
        xls = upload(client, "products.csv", hostile.password_protected(tmp_path / "p.xlsx").read_bytes())
    assert answer.status_code == 415 and "neither CSV text nor an Excel workbook" in answer.text
    assert nul.status_code == 415
    assert xls.status_code == 415 and "Excel 97-2003 (.xls) or password-protected" in xls.text
    assert batches(open_store) == [] and list((home / "portal" / "acme" / "incoming").iterdir()) == []


def test_a_workbook_named_csv_is_read_as_the_workbook_it_is(project):
    with TestClient(project[0]) as client:
        sign_in(client, project)
        xlsx = client.get("/portal/template.xlsx").content
        answer = upload(client, "products.csv", xlsx)
        assert "Accepted" in client.get(answer.headers["location"]).text
    [batch] = batches(project[1])
    assert batch.filename == "products.xlsx"


@pytest.mark.parametrize("bomb", [hostile.zip_bomb, hostile.shared_strings_bomb, hostile.entity_bomb])
def test_an_xlsx_bomb_is_quarantined_with_its_reason(project, tmp_path, bomb):
    _app, open_store, _clock, home, _spec = project
    content = bomb(tmp_path / "bomb.xlsx").read_bytes()
    with TestClient(project[0]) as client:
        sign_in(client, project)
        answer = upload(client, "bomb.xlsx", content)
        shown = client.get(answer.headers["location"]).text
        history = client.get("/portal").text
    assert "Quarantined: The file cannot be read" in shown and "quarantined" in history
    [batch] = batches(open_store)
    assert batch.status == "quarantined" and batch.stage == "batch_raw"
    assert (home / "portal" / "acme" / "quarantine" / batch.key / "bomb.xlsx").exists()
    assert not (home / "inbox" / "acme").exists()


def test_another_suppliers_skus_are_rejected_by_the_portal_and_by_the_pipeline_core_alike(project):
    _app, open_store, _clock, home, spec = project
    theirs = rows("ACM-0001,Trail mug,4.50,grey,", "GLX-0001,Globex shirt v2,9,black,",
                  "ACM-0003,Water jug,12,white,SUP-0002", "ACM-0004,Bowl,5,gray,", "ACM-0005,Plate,5,grey,",
                  "ACM-0006,Fork,1,grey,", "ACM-0007,Knife,1,grey,", "ACM-0008,Spoon,1,grey,")
    with TestClient(project[0]) as client:
        sign_in(client, project)
        client.get("/portal/template.csv")
        answer = upload(client, "mixed.csv", theirs)
        errors = client.get(answer.headers["location"] + "/errors.csv").content
    table = pd.read_csv(io.BytesIO(errors), dtype=str, keep_default_na=False)
    assert table[["line", "column", "value"]].values.tolist() == [["3", "sku (required)", "GLX-0001"],
                                                                   ["4", "supplier", "SUP-0002"]]
    assert "'GLX-0001' is a product of supplier 'SUP-0002', not of 'SUP-0001'" in table["reason"][0]
    assert "names supplier 'SUP-0002': this source sends the products of 'SUP-0001' only" in table["reason"][1]
    # the pipeline's stages call the same core: the same rows fail for the same reasons
    [batch] = batches(open_store)
    store = open_store()
    try:
        raw = read_batch(batch.uri, spec.sources["acme"], spec.catalogues["products"]).frame
        mapping = MappingBook(home / "mappings").resolve("acme", list(raw.columns[:-1] if raw.columns[-1].startswith(
            "__") else raw.columns), store.catalogue("products"))[0]
        result = validate_mapped(map_batch(raw, mapping, store, "products", "acme", spec.sources["acme"]), store,
                                 "products", spec.sources["acme"])
    finally:
        store.dispose()
    assert result.errors["line"].tolist() == [3, 4] and batch.status == "received"


def test_the_same_file_uploaded_twice_is_one_batch(project):
    _app, open_store, _clock, _home, _spec = project
    with TestClient(project[0]) as client:
        sign_in(client, project)
        client.get("/portal/template.csv")
        first = upload(client, "mugs.csv", GOOD)
        second = upload(client, "mugs-copy.csv", GOOD)
        shown = client.get(second.headers["location"]).text
    assert first.headers["location"] == second.headers["location"]
    assert "This file was uploaded before, as mugs.csv" in shown and "nothing new was received" in shown
    assert len(batches(open_store)) == 1


def test_a_guessed_or_revoked_link_is_refused_and_failures_are_rate_limited(project):
    _app, open_store, clock, _home, _spec = project
    with TestClient(project[0]) as client:
        guessed = client.get("/portal/login?token=" + "A" * 43)
        assert guessed.status_code == 403 and "This link is not valid" in guessed.text
        issued = sign_in(client, project)
        assert client.get("/portal").status_code == 200
        store = open_store()
        try:
            AccessTokens(store, clock=clock).revoke(issued.token.id)
        finally:
            store.dispose()
        after = client.get("/portal")  # a signed-in session ends with its link
        assert after.status_code == 403 and "expired or been revoked" in after.text
        reused = client.get(f"/portal/login?token={issued.secret}")
        assert reused.status_code == 403 and "revoked" in reused.text
        review = issue(open_store, clock)  # a portal link is not a review link, nor the other way round
        assert client.get(f"/review/login?token={review.secret}").status_code == 403
        expired = issue(open_store, clock, expires=timedelta(hours=1))
        clock.at += timedelta(hours=2)
        assert "expired on" in client.get(f"/portal/login?token={expired.secret}").text
        for _ in range(10):
            client.get("/portal/login?token=nope")
        good = issue(open_store, clock)
        limited = client.get(f"/portal/login?token={good.secret}")
    assert limited.status_code == 429 and "Too many failed attempts" in limited.text


def test_forms_need_the_sessions_csrf_token_and_a_supplier_sees_only_their_own_batches(project):
    with TestClient(project[0]) as acme, TestClient(project[0]) as globex:
        sign_in(acme, project, "acme")
        sign_in(globex, project, "globex")
        acme.get("/portal/template.csv")
        forged = upload(acme, "mugs.csv", GOOD, csrf="not-the-token")
        assert forged.status_code == 403 and batches(project[1]) == []
        own = upload(acme, "mugs.csv", GOOD).headers["location"]
        assert globex.get(own).status_code == 404
        assert globex.get(own + "/rejected.csv").status_code == 404
        assert "mugs.csv" not in globex.get("/portal").text and "mugs.csv" in acme.get("/portal").text
        assert acme.get("/portal", cookies={COOKIE: "forged"}).status_code in (200, 401)


def test_an_s3_source_has_no_portal(project):
    _app, open_store, clock, _home, _spec = project
    with TestClient(project[0]) as client:
        issued = issue(open_store, clock, "feed")
        answer = client.get(f"/portal/login?token={issued.secret}")
    assert answer.status_code == 403 and "another way (s3)" in answer.text


def test_concurrent_uploads_from_two_suppliers_each_make_their_own_batch(project):
    _app, open_store, _clock, home, _spec = project
    files = {"acme": rows(*[f"ACM-{i:04d},Mug {i},{i},grey," for i in range(1, 400)]),
             "globex": rows(*[f"GLX-{i:04d},Shirt {i},{i},black," for i in range(2, 400)])}
    answers: dict[str, list] = {"acme": [], "globex": []}
    clients = {s: TestClient(project[0]) for s in files}
    for source, client in clients.items():
        client.__enter__()
        sign_in(client, project, source)
        client.get("/portal/template.csv")
    barrier = threading.Barrier(4)

    def send(source: str, copy: int):
        csrf = csrf_of(clients[source])
        barrier.wait()
        answers[source].append(upload(clients[source], f"{source}.csv", files[source], csrf))

    threads = [threading.Thread(target=send, args=(s, n)) for s in files for n in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        for client in clients.values():
            client.__exit__(None, None, None)
    for source in files:
        codes = [a.status_code for a in answers[source]]
        assert codes == [303, 303], codes
        made = batches(open_store, source)
        assert len(made) == 1, made  # the same file twice at once is still one batch
        assert made[0].status == "received" and (home / "inbox" / source / f"{source}.csv").exists()


def test_a_ten_thousand_row_file_gets_its_result_within_seconds(project, capsys):
    lines = [f"ACM-{i:04d},Mug {i},{i % 50}.5,{'purple' if i % 40 == 0 else 'grey'},"
             for i in range(10_000)]
    with TestClient(project[0]) as client:
        sign_in(client, project)
        client.get("/portal/template.csv")
        started = time.perf_counter()
        answer = upload(client, "big.csv", rows(*lines))
        shown = client.get(answer.headers["location"]).text
        took = time.perf_counter() - started
    assert "Accepted: 250 of 10000 rows failed validation (2.5%)" in shown
    with capsys.disabled():
        print(f"\n10,000-row upload: result page after {took:.2f} s")


def test_the_portal_core_imports_no_dagster():
    import subprocess
    import sys

    code = ("import sys; import claro_dagster.catalogue.portal, claro_dagster.web.portal_page; "
            "print('dagster' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "False"


def test_portal_results_survive_a_new_portal_object(project):
    _app, open_store, _clock, home, spec = project
    with TestClient(project[0]) as client:
        sign_in(client, project)
        client.get("/portal/template.csv")
        upload(client, "mugs.csv", GOOD)
    store = open_store()
    try:
        [entry] = Portal(spec, store, home).history("acme")
    finally:
        store.dispose()
    assert (entry.rows_in, entry.accepted, entry.rejected, entry.label) == (4, 4, 0, "publishing")


def test_history_labels_follow_the_registry_and_long_enum_lists_go_on_a_hidden_sheet(project, tmp_path):
    _app, open_store, _clock, home, spec = project
    with TestClient(project[0]) as client:
        sign_in(client, project)
        client.get("/portal/template.csv")
        location = upload(client, "mugs.csv", GOOD).headers["location"]
        key = location.rsplit("/", 1)[-1]
        store = open_store()
        try:
            BatchRegistry(store).set_status(key, "awaiting_review", stage="review_checkpoint",
                                            message="2 change(s) wait for review")
        finally:
            store.dispose()
        assert "awaiting review" in client.get("/portal").text
        assert "some changes wait for the catalogue team" in client.get(location).text
    many = [f"shade number {i} of the autumn range" for i in range(40)]
    long_spec = make_spec()
    long_spec.catalogues["products"].attributes["colour"] = AttributeSpec(type="enum", values=many)
    store = CatalogueStore(long_spec, f"sqlite:///{tmp_path / 'long.db'}")
    try:
        workbook = load_workbook(io.BytesIO(Portal(long_spec, store, tmp_path / "h").template_xlsx("acme")))
    finally:
        store.dispose()
    [check] = [v for v in workbook["Products"].data_validations.dataValidation if v.type == "list"]
    assert check.formula1 == "'Lists'!$A$1:$A$40" and workbook["Lists"].sheet_state == "hidden"
    assert [workbook["Lists"].cell(row=i, column=1).value for i in (1, 40)] == [many[0], many[39]]


def test_a_changed_file_under_a_name_still_waiting_in_the_inbox_gets_a_name_and_batch_of_its_own(project):
    _app, open_store, _clock, home, _spec = project
    changed = rows("ACM-0001,Trail mug,5.00,grey,", "ACM-0002,Camp cup,3.50,black,")
    with TestClient(project[0]) as client:
        sign_in(client, project)
        client.get("/portal/template.csv")
        upload(client, "mugs.csv", GOOD)
        upload(client, "mugs.csv", changed)
    inbox = home / "inbox" / "acme"
    assert (inbox / "mugs.csv").read_bytes() == GOOD and (inbox / "mugs~2.csv").read_bytes() == changed
    made = {b.filename: b for b in batches(open_store)}
    assert set(made) == {"mugs.csv", "mugs~2.csv"}
    stat = (inbox / "mugs~2.csv").stat()
    assert made["mugs~2.csv"].key == batch_key("acme", "mugs~2.csv",
                                               receipt_version("mugs~2.csv", stat.st_size, stat.st_mtime_ns))


def test_a_page_shows_the_first_thousand_problems_in_the_chosen_order_and_the_download_has_them_all(project):
    bad = rows(*[f"ACM-{i:04d},Mug {i},-{i},grey," for i in range(3000)])
    with TestClient(project[0]) as client:
        sign_in(client, project)
        client.get("/portal/template.csv")
        location = upload(client, "bad.csv", bad).headers["location"]
        first = client.get(location).text
        last = client.get(location + "?sort=line&order=desc").text
        everything = client.get(location + "/errors.csv")
    assert "2,999 problem(s) in 2,999 rejected row(s)" in first and "the first 1,000 are shown" in first
    assert len(re.findall(r"<tr><td>\d", first)) == 1000
    assert re.search(r"<tr><td>(\d+)</td>", last).group(1) == "3001"
    assert len(pd.read_csv(io.BytesIO(everything.content))) == 2999
