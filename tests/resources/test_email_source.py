"""The mailbox poll against a real IMAP server (dovecot, started privately by tests/email_server.py): spreadsheets
(CSV, XLSX, both inside a ZIP) are handed over with the message's provenance and the message moved to Processed;
bad mail is quarantined with its reason and never deleted; a server restart mid-poll and a changed UIDVALIDITY
neither skip a message nor process one twice."""

from __future__ import annotations

import io
import ssl
import zipfile

import pytest
from email_server import ImapServer, mail

from claro_dagster.resources.email_source import EmailSettings, EmailSourceError, MailLimits, poll

CSV = b"sku,title,price\nACM-1,Kettle,24.50\nACM-2,Toaster,39.00\n"


def xlsx(rows: list[list]) -> bytes:
    import openpyxl

    book = openpyxl.Workbook()
    for row in rows:
        book.active.append(row)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def zipped(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


@pytest.fixture
def server():
    with ImapServer() as s:
        yield s


def settings(server: ImapServer, **kw) -> EmailSettings:
    from email_server import PASSWORD, USER

    kw = {"port": server.port, "tls": "none", **kw}
    return EmailSettings(host=server.host, user=USER, password=PASSWORD,
                         allowed_senders=("orders@acme.test", "@globex.test"), **kw)


class Recorder:
    def __init__(self):
        self.mails, self.state = [], None

    def accept(self, m):
        self.mails.append(m)

    def save(self, state):
        self.state = state

    def poll(self, server, **kw):
        return poll(settings(server, **kw), self.state, self.accept, self.save)


def test_spreadsheets_are_handed_over_with_provenance_and_the_mail_moved(server) -> None:
    book = xlsx([["sku", "title"], ["GLX-1", "Lamp"], ["GLX-2", "Desk"]])
    server.deliver(mail("Acme Orders <orders@acme.test>", "Prices December", [("prices.csv", CSV)],
                        message_id="<p1@acme.test>", return_path="<b-17@bounce.acme.test>"))
    server.deliver(mail("ann@globex.test", "Catalogue", [("files.zip", zipped({"a/products.xlsx": book,
                                                                                  "notes.txt": b"hello"}))]))
    rec = Recorder()
    handled = rec.poll(server)
    assert [m.quarantine for m in handled] == [None, None]
    first, second = handled
    assert (first.message_id, first.sender, first.subject, first.citation) == \
        ("p1@acme.test", "orders@acme.test", "Prices December", "mid:p1@acme.test")
    assert [(s.name, s.suffix, s.rows, s.data) for s in first.spreadsheets] == [("prices.csv", ".csv", 3, CSV)]
    assert [(s.name, s.suffix, s.rows) for s in second.spreadsheets] == [("files.zip/a/products.xlsx", ".xlsx", 3)]
    assert second.spreadsheets[0].data == book
    assert server.messages("INBOX") == [] and len(server.messages("Processed")) == 2
    assert rec.state["last_uid"] == 2 and set(rec.state["done"]) == {"p1@acme.test", second.message_id}
    assert rec.state["pending"] == {}
    assert rec.poll(server) == [] and len(rec.mails) == 2  # nothing new: nothing handed over again


def test_bad_mail_is_quarantined_with_its_reason_and_nothing_is_deleted(server) -> None:
    bomb = zipped({"huge.csv": b"sku\n" + b"0" * (60 * 1024 * 1024)})  # 60 MB of zeros, about 60 KB zipped
    cases = {
        "unknown": mail("mallory@evil.test", "prices", [("p.csv", CSV)]),
        "none": mail("orders@acme.test", "no file", [("photo.jpg", b"\xff\xd8\xff")]),
        "binary": mail("orders@acme.test", "binary", [("p.csv", b"\x00\x01\x02binary\x00" * 10)]),
        "damaged": mail("orders@acme.test", "damaged", [("p.xlsx", b"PK\x03\x04 not really a workbook")]),
        "forged": mail("orders@acme.test", "forged", [("p.csv", CSV)], return_path="<x@evil.test>"),
        "lookalike": mail("orders@acme.test", "lookalike", [("p.csv", CSV)], return_path="<x@notacme.test>"),
        "many": mail("orders@acme.test", "many", [(f"p{i}.csv", CSV) for i in range(50)]),
        "bomb": mail("orders@acme.test", "bomb", [("b.zip", bomb)]),
        "nested": mail("orders@acme.test", "nested", [("n.zip", zipped({"inner.zip": zipped({"p.csv": CSV})}))]),
        "xlsx bomb": mail("orders@acme.test", "xlsx bomb", [("p.xlsx", zipped({
            "[Content_Types].xml": b"<Types/>", "xl/worksheets/sheet1.xml": b"<row/>" * (2 * 1024 * 1024)}))]),
        "wide": mail("orders@acme.test", "wide", [("w.zip", zipped({f"p{i}.csv": CSV for i in range(60)}))]),
    }
    for message in cases.values():
        server.deliver(message)
    rec = Recorder()
    limits = MailLimits(max_unzipped_bytes=50 * 1024 * 1024)
    handled = {m.subject: m.quarantine for m in rec.poll(server, limits=limits)}
    assert all(m.spreadsheets == [] for m in rec.mails)
    assert handled["prices"].startswith("unknown sender mallory@evil.test: add it (or @evil.test)")
    assert handled["no file"] == "no CSV, XLSX or ZIP attachment (attached: photo.jpg): attach the product file"
    assert handled["binary"].startswith("unreadable attachment p.csv: binary content")
    assert handled["damaged"].startswith("unreadable attachment p.xlsx: a damaged ZIP archive")
    assert handled["forged"].startswith("From domain acme.test does not match the envelope sender x@evil.test")
    assert handled["lookalike"].startswith("From domain acme.test does not match the envelope sender x@notacme")
    assert handled["many"].startswith("too many attachments (50; at most 20 per mail)")
    assert "b.zip: expands to" in handled["bomb"] and "ZIP bomb" in handled["bomb"]
    assert "inner.zip is an archive inside the archive" in handled["nested"]
    assert "w.zip: 60 files in the archive" in handled["wide"]
    assert "p.xlsx: xl/worksheets/sheet1.xml is compressed" in handled["xlsx bomb"]
    assert server.messages("INBOX") == [] and server.messages("Processed") == []
    assert sorted(m["Subject"] for m in server.messages("Quarantine")) == sorted(handled)  # all kept


def test_a_server_restart_mid_poll_loses_no_message_and_repeats_none(server) -> None:
    for n in range(1, 4):
        server.deliver(mail("orders@acme.test", f"file {n}", [(f"p{n}.csv", CSV)], message_id=f"<m{n}@acme.test>"))
    rec = Recorder()

    def accept_then_restart(m):
        rec.mails.append(m)
        if len(rec.mails) == 2:
            server.restart()  # the poll's connection dies under it, between two messages

    with pytest.raises(Exception):  # noqa: B017 - the connection error is whatever the socket raised
        poll(settings(server), None, accept_then_restart, rec.save)
    assert [m.message_id for m in rec.mails] == ["m1@acme.test", "m2@acme.test"]
    assert len(server.messages("Processed")) == 1  # m2 was handed over but not moved
    rec.poll(server)
    assert [m.message_id for m in rec.mails] == ["m1@acme.test", "m2@acme.test", "m3@acme.test"]
    assert sorted(m["Message-ID"] for m in server.messages("Processed")) == \
        ["<m1@acme.test>", "<m2@acme.test>", "<m3@acme.test>"]
    assert server.messages("INBOX") == []


def test_a_changed_uidvalidity_rescans_without_processing_twice(server) -> None:
    first = mail("orders@acme.test", "file", [("p.csv", CSV)], message_id="<same@acme.test>")
    server.deliver(first)
    rec = Recorder()
    rec.poll(server)
    server.deliver(first)  # the same message again (a rebuilt mailbox, a client copying it back) ...
    server.deliver(mail("orders@acme.test", "new", [("q.csv", CSV)], message_id="<new@acme.test>"))
    rec.state = {**rec.state, "uidvalidity": rec.state["uidvalidity"] + 1, "last_uid": 99}  # ... renumbered
    rec.poll(server)
    assert [m.message_id for m in rec.mails] == ["same@acme.test", "new@acme.test"]
    assert len(server.messages("Processed")) == 3 and server.messages("INBOX") == []
    assert rec.state["last_uid"] == 3


def test_without_move_the_mail_is_copied_flagged_and_expunged(server, monkeypatch) -> None:
    from imapclient import IMAPClient

    real = IMAPClient.has_capability
    monkeypatch.setattr(IMAPClient, "has_capability", lambda self, c: c != "MOVE" and real(self, c))
    server.deliver(mail("orders@acme.test", "file", [("p.csv", CSV)]))
    rec = Recorder()
    assert len(rec.poll(server)) == 1
    assert server.messages("INBOX") == [] and len(server.messages("Processed")) == 1


def test_a_refused_login_names_the_settings_to_check(server) -> None:
    wrong = settings(server)
    wrong.password = "nope"
    with pytest.raises(EmailSourceError, match="refused the login of 'catalogue'.*email.password_env"):
        poll(wrong, None, lambda m: None, lambda s: None)


def test_a_message_no_check_foresaw_is_quarantined_not_left_blocking(server, monkeypatch) -> None:
    import claro_dagster.resources.email_source as email_source

    def broken(uid, raw, limits, allowed):
        if b"poison" in raw:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        return read(uid, raw, limits, allowed)

    read = email_source.read_message
    monkeypatch.setattr(email_source, "read_message", broken)
    server.deliver(mail("orders@acme.test", "poison", [("p.csv", CSV)]))
    server.deliver(mail("orders@acme.test", "fine", [("p.csv", CSV)]))
    rec = Recorder()
    first, second = rec.poll(server)
    assert first.quarantine.startswith("unreadable message (UnicodeDecodeError") and second.quarantine is None
    assert [m["Subject"] for m in server.messages("Quarantine")] == ["poison"]
    assert [m["Subject"] for m in server.messages("Processed")] == ["fine"]


@pytest.mark.parametrize("tls", ["starttls", "ssl"])
def test_tls_modes_verify_the_servers_certificate(tls) -> None:
    with ImapServer(tls=True) as server:
        server.deliver(mail("orders@acme.test", "file", [("p.csv", CSV)]))
        port = server.port if tls == "starttls" else server.tls_port
        rec = Recorder()
        handled = poll(settings(server, port=port, tls=tls, ca_file=str(server.ca_file)), None, rec.accept, rec.save)
        assert [m.subject for m in handled] == ["file"]
        # without trusting the server's certificate, the connection is refused, not downgraded
        with pytest.raises(ssl.SSLCertVerificationError):
            poll(settings(server, port=port, tls=tls), None, rec.accept, rec.save)


def test_a_poll_takes_at_most_max_messages_and_the_next_one_the_rest(server) -> None:
    for n in range(5):
        server.deliver(mail("orders@acme.test", f"file {n}", [("p.csv", CSV)]))
    rec = Recorder()
    assert len(poll(settings(server), None, rec.accept, rec.save, max_messages=3)) == 3
    assert len(server.messages("INBOX")) == 2
    assert len(poll(settings(server), rec.state, rec.accept, rec.save, max_messages=3)) == 2
    assert [m.subject for m in rec.mails] == [f"file {n}" for n in range(5)]
