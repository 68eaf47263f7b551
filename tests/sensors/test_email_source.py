"""`kind: email` sources through the sensor: a mailed CSV and a mailed XLSX (in a ZIP) end up published in the demo's
products catalogue, each value citing the mail's Message-ID; a mail from an unknown sender is quarantined with its
reason (kept beside the inbox and in the mailbox's Quarantine folder) and makes no batch; a second tick makes no
batch again. The mailbox is a real dovecot started by the test (tests/email_server.py)."""

from __future__ import annotations

import io
import json
import zipfile

import dagster as dg
import pytest
from batches import tick
from email_server import PASSWORD, USER, ImapServer, mail

from claro_dagster.catalogue.batches import BatchRegistry
from claro_dagster.definitions import build_definitions
from claro_dagster.sensors.inbound import email_cursor_name
from claro_dagster.spec import DEMO_DIR, SpecError, load_spec

SOURCE = """\
  supplier_mail:
    kind: email
    catalogue: products
    email:
      host: 127.0.0.1
      port: {port}
      tls: none                         # a server on this machine only
      user_env: CLARO_TEST_IMAP_USER
      password_env: CLARO_TEST_IMAP_PASSWORD
      allowed_senders: [orders@acme.test, "@globex.test"]
      interval_seconds: 60
"""


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"the demo spec no longer has exactly one {old!r}: update this test's spec helper"
    return text.replace(old, new)


def spec_with_email_source(tmp_path, port: int):
    text = (DEMO_DIR / "claro.yaml").read_text(encoding="utf-8")
    text = replace_once(text, "\nsources:\n", "\nsources:\n" + SOURCE.format(port=port))
    text = replace_once(text, "sources: [acme_csv, globex_xlsx]", "sources: [acme_csv, globex_xlsx, supplier_mail]")
    (tmp_path / "claro.yaml").write_text(text, encoding="utf-8")
    return tmp_path / "claro.yaml"


def workbook(rows: list[list]) -> bytes:
    import openpyxl

    book = openpyxl.Workbook()
    for row in rows:
        book.active.append(row)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def zipped(name: str, data: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, data)
    return out.getvalue()


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("CLARO_TEST_IMAP_USER", USER)
    monkeypatch.setenv("CLARO_TEST_IMAP_PASSWORD", PASSWORD)
    return monkeypatch


def test_mailed_spreadsheets_are_published_citing_their_mail(env, tmp_path) -> None:
    csv = b"sku,title,price\nACM-50001,Enamel kettle,24.50\nACM-50002,Steel toaster,39.00\n"
    xlsx = workbook([["sku", "title", "price"], ["ACM-50003", "Stoneware mug", 5.5]])
    with ImapServer() as server, dg.instance_for_test() as instance:
        server.deliver(mail("Acme Orders <orders@acme.test>", "December prices", [("prices.csv", csv)],
                            message_id="<dec-prices@acme.test>"))
        server.deliver(mail("ann@globex.test", "New mugs", [("mugs.zip", zipped("mugs.xlsx", xlsx))],
                            message_id="<mugs@globex.test>"))
        server.deliver(mail("mallory@evil.test", "Cheap prices", [("p.csv", csv)], message_id="<x@evil.test>"))
        defs = build_definitions(spec_with_email_source(tmp_path, server.port), tmp_path / "home")
        claro = defs.resources["claro"]
        assert defs.resolve_sensor_def("supplier_mail_email").minimum_interval_seconds == 60
        runs = tick(defs, instance, "supplier_mail_email")
        assert len(runs) == 2 and all(r.success for r in runs)
        batches = [b for b in BatchRegistry(claro.store).list() if b.source == "supplier_mail"]
        assert sorted(b.status for b in batches) == ["published", "published"]
        assert (claro.store.record("products", "ACM-50002")["title"], claro.store.record("products", "ACM-50002")
                ["price"]) == ("Steel toaster", 39.0)
        assert claro.store.record("products", "ACM-50003")["title"] == "Stoneware mug"
        # provenance: each value cites the mail it came in; the note beside the file names sender and subject
        assert claro.store.provenance("products", "ACM-50001", "price").citation == "mid:dec-prices@acme.test"
        assert claro.store.provenance("products", "ACM-50003", "title").citation == "mid:mugs@globex.test"
        notes = {json.loads(p.read_text())["subject"]: json.loads(p.read_text())
                 for p in claro.inbox_dir("supplier_mail").rglob("*.pull.json")}
        assert notes["New mugs"]["sender"] == "ann@globex.test" and notes["New mugs"]["attachment"] == \
            "mugs.zip/mugs.xlsx"
        # the stranger's mail: quarantined with its reason, nothing published from it, nothing deleted
        [kept] = (claro.inbox_dir("supplier_mail") / "quarantined-mail").glob("*.json")
        assert json.loads(kept.read_text())["quarantine"].startswith("unknown sender mallory@evil.test")
        assert [m["Subject"] for m in server.messages("Quarantine")] == ["Cheap prices"]
        assert len(server.messages("Processed")) == 2 and server.messages("INBOX") == []
        state = json.loads(claro.store.get_cursor(email_cursor_name("supplier_mail")))
        assert state["last_uid"] == 3
        assert tick(defs, instance, "supplier_mail_email") == []  # nothing new: no batch
        fix = b"sku,title,price\nACM-50001,Enamel kettle,22.00\n"
        server.deliver(mail("orders@acme.test", "Correction", [("fix.csv", fix)]))
        [run] = tick(defs, instance, "supplier_mail_email")
        assert run.success and claro.store.record("products", "ACM-50001")["price"] == 22.0


def test_a_missing_password_variable_fails_the_tick_naming_it(env, tmp_path) -> None:
    env.delenv("CLARO_TEST_IMAP_PASSWORD")
    with dg.instance_for_test() as instance:
        defs = build_definitions(spec_with_email_source(tmp_path, 1), tmp_path / "home")
        with pytest.raises(Exception, match="email.password_env names 'CLARO_TEST_IMAP_PASSWORD', which is not set"):
            tick(defs, instance, "supplier_mail_email")


def test_spec_check_names_what_an_email_source_lacks(tmp_path) -> None:
    text = (DEMO_DIR / "claro.yaml").read_text(encoding="utf-8")
    bad = ("  bad_mail:\n    kind: email\n    catalogue: products\n    email:\n      host: imap.example.com\n"
           "      tls: none\n      user_env: U\n      password_env: P\n      processed_folder: INBOX\n"
           "      allowed_senders: [acme, '@globex.test']\n"
           "      reply: {host: smtp.example.com, tls: none, user_env: U, from_address: c@shop.test}\n"
           "  no_block:\n    kind: email\n    catalogue: products\n")
    text = replace_once(text, "\nsources:\n", "\nsources:\n" + bad)
    (tmp_path / "claro.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(SpecError) as failed:
        load_spec(tmp_path / "claro.yaml")
    lines = str(failed.value).splitlines()
    assert any("bad_mail.email.tls" in p and "clear text" in p for p in lines)
    assert any("bad_mail.email.allowed_senders[0]" in p and "'acme' is neither an address" in p for p in lines)
    assert any("bad_mail.email.processed_folder" in p and "must differ from folder" in p for p in lines)
    assert any("no_block" in p and "needs an 'email:' block" in p for p in lines)
    assert not any("allowed_senders[1]" in p for p in lines)
    assert any("bad_mail.email.reply:" in p and "both user_env and password_env" in p for p in lines)
    assert any("bad_mail.email.reply.tls" in p and "clear text" in p for p in lines)


def test_a_server_restart_mid_tick_fails_the_tick_and_the_next_one_makes_the_rest_once(env, tmp_path,
                                                                                     monkeypatch) -> None:
    import claro_dagster.resources.email_source as email_source

    with ImapServer() as server, dg.instance_for_test() as instance:
        for n in range(1, 4):
            server.deliver(mail("orders@acme.test", f"file {n}", [(f"p{n}.csv", f"sku,title,price\nACM-5100{n},"
                                                               f"Item {n},{n}.50\n".encode())],
                                message_id=f"<r{n}@acme.test>"))
        defs = build_definitions(spec_with_email_source(tmp_path, server.port), tmp_path / "home")
        claro = defs.resources["claro"]
        read, calls = email_source.read_message, []

        def read_then_restart(*args, **kwargs):
            calls.append(args[0])
            if len(calls) == 2:
                server.restart()  # the tick's connection dies while it reads the second mail
            return read(*args, **kwargs)

        monkeypatch.setattr(email_source, "read_message", read_then_restart)
        with pytest.raises(Exception):  # noqa: B017 - whatever the broken socket raised fails the tick
            tick(defs, instance, "supplier_mail_email")
        runs = tick(defs, instance, "supplier_mail_email")
        assert len(runs) == 3 and all(r.success for r in runs)
        assert tick(defs, instance, "supplier_mail_email") == []
        batches = [b for b in BatchRegistry(claro.store).list() if b.source == "supplier_mail"]
        assert len(batches) == 3 and {b.status for b in batches} == {"published"}
        assert [claro.store.provenance("products", f"ACM-5100{n}", "title").citation for n in (1, 2, 3)] == \
            ["mid:r1@acme.test", "mid:r2@acme.test", "mid:r3@acme.test"]
        assert sorted(m["Message-ID"] for m in server.messages("Processed")) == \
            ["<r1@acme.test>", "<r2@acme.test>", "<r3@acme.test>"] and server.messages("INBOX") == []


REPLY = """\
      reply:
        host: 127.0.0.1
        port: {smtp_port}
        tls: none
        from_address: catalogue@shop.test
"""


def test_the_sender_gets_the_result_with_the_rejected_rows(env, tmp_path) -> None:
    import email
    import email.policy

    from aiosmtpd.controller import Controller
    from email_server import free_port

    class Inbox:
        def __init__(self):
            self.received = []

        async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
            self.received.append((envelope.rcpt_tos, email.message_from_bytes(envelope.content,
                                                                              policy=email.policy.default)))
            return "250 OK"

    smtp = Inbox()
    controller = Controller(smtp, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        with ImapServer() as server, dg.instance_for_test() as instance:
            rows = "".join(f"ACM-520{n:02d},Item {n},{n}.25\n" for n in range(1, 20))
            csv = f"sku,title,price\n{rows}ACM-52099,Broken item,-4\n".encode()
            server.deliver(mail("orders@acme.test", "Prices", [("prices.csv", csv)], message_id="<rep@acme.test>"))
            path = spec_with_email_source(tmp_path, server.port)
            text = replace_once(path.read_text(), "      interval_seconds: 60\n",
                                "      interval_seconds: 60\n" + REPLY.format(smtp_port=controller.port))
            path.write_text(text)
            defs = build_definitions(path, tmp_path / "home")
            [run] = tick(defs, instance, "supplier_mail_email")
            assert run.success and smtp.received == []  # the reply goes once the batch has its result
            controller.stop()  # the SMTP server is down: the tick still works, the reply waits
            server.deliver(mail("orders@acme.test", "More", [("more.csv", b"sku,title,price\nACM-52100,X,1\n")]))
            [more] = tick(defs, instance, "supplier_mail_email")
            assert more.success and smtp.received == []
            controller = Controller(smtp, hostname="127.0.0.1", port=controller.port)  # up again (a new one:
            controller.start()                                                          # a stopped one stays so)
            assert tick(defs, instance, "supplier_mail_email") == []
            assert len(smtp.received) == 2
            smtp.received = [r for r in smtp.received if r[1]["Subject"] == "Re: Prices"]
            [(to, reply)] = smtp.received
            assert to == ["orders@acme.test"] and reply["Subject"] == "Re: Prices"
            assert reply["In-Reply-To"] == "<rep@acme.test>" and reply["Auto-Submitted"] == "auto-replied"
            body = reply.get_body(("plain",)).get_content()
            assert "Your file prices.csv (20 rows) was published" in body
            assert "Rows accepted: 19. Rows rejected: 1." in body
            [attached] = list(reply.iter_attachments())
            rejected = attached.get_content()
            rejected = rejected if isinstance(rejected, str) else rejected.decode()
            assert attached.get_filename() == "rejected.csv" and "ACM-52099" in rejected and "21" in rejected
            tick(defs, instance, "supplier_mail_email")
            assert len(smtp.received) == 1  # once
    finally:
        import contextlib

        with contextlib.suppress(AssertionError):  # already stopped when the test failed while it was down
            controller.stop()


def test_a_quarantined_mail_is_announced_once_to_the_outbox_and_slack(env, tmp_path) -> None:
    from tests.resources.test_slack import FakeSlack, postmessage_problems

    with ImapServer() as server, FakeSlack() as slack, dg.instance_for_test() as instance:
        env.setenv("SLACK_BOT_TOKEN", "xoxb-test")
        spec_path = spec_with_email_source(tmp_path, server.port)
        spec_path.write_text(replace_once(spec_path.read_text(), "  slack_token_env: SLACK_BOT_TOKEN\n",
                                          f"  slack_token_env: SLACK_BOT_TOKEN\n  slack_api_url: {slack.base_url}\n"))
        server.deliver(mail("ann@globex.test", "Prices", [], message_id="<bare@globex.test>"))
        defs = build_definitions(spec_path, tmp_path / "home")
        store = defs.resources["claro"].store
        assert tick(defs, instance, "supplier_mail_email") == []
        e = store.t["events"]
        with store.engine.connect() as conn:
            rows = conn.execute(e.select().where(e.c.type == "mail.quarantined")).mappings().all()
        assert len(rows) == 1 and rows[0]["catalogue"] == "products"
        payload = json.loads(rows[0]["payload"])
        assert payload["message_id"] == "bare@globex.test" and payload["folder"] == "Quarantine"
        assert payload["quarantine"].startswith("no CSV, XLSX or ZIP attachment")
        [post] = [r.json() for r in slack.posts()]
        assert postmessage_problems(slack.posts()[0]) == []
        assert post["channel"] == "#catalogue-alerts" and "Mail quarantined: Prices" in json.dumps(post)
        assert "no CSV, XLSX or ZIP attachment" in json.dumps(post)
        assert tick(defs, instance, "supplier_mail_email") == []  # handled once: no second event, no second alert
        with store.engine.connect() as conn:
            assert len(conn.execute(e.select().where(e.c.type == "mail.quarantined")).all()) == 1
        assert len(slack.posts()) == 1
