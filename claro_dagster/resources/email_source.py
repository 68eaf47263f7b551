"""Email as a source (`kind: email`): supplier spreadsheets mailed to an IMAP mailbox become batches.

`poll()` opens the mailbox folder, reads each message newer than the last UID handled (the state the caller stores
as the source's cursor: UIDVALIDITY, last UID, the Message-IDs handled), checks it, hands its spreadsheets to the
caller's `accept` (which writes them as batch files) and then moves it to the processed or the quarantine folder
(MOVE when the server has it, else COPY + \\Deleted + EXPUNGE). Nothing is ever deleted unmoved.

Exactly once across failures: the state is saved after each message's files are written and before it is moved,
so a connection that breaks (the server restarting mid-poll) loses nothing: the next poll starts after the last
message handled, and a message handled but not yet moved (its Message-ID or UID in the state) is only moved. A
changed UIDVALIDITY (the mailbox was rebuilt, UIDs renumbered) rescans the folder from the start, and the Message-IDs
kept in the state stop a message from being processed twice.

Checks, each a quarantine with the reason: a sender not in `allowed_senders` (addresses or @domains), a From domain
that differs from the envelope sender's (the Return-Path the receiving server wrote), no CSV/XLSX/ZIP attachment,
more attachments than `max_attachments`, an attachment that cannot be read (binary content named .csv, a damaged
workbook, a ZIP bomb: total uncompressed size, member count and compression ratio are capped, nested archives refused).

Written with imapclient (well kept, handles IMAP's quoting and literal strings); no Dagster imports.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import io
import ssl
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import parseaddr
from typing import Any

TABLE_TYPES = (".csv", ".xlsx")
KEPT_MESSAGE_IDS = 10_000  # Message-IDs remembered (a rescan after a UIDVALIDITY change skips them)
MAIL_QUARANTINED = "mail.quarantined"  # the outbox event and Slack alert of a quarantined mail


class EmailSourceError(Exception):
    """The mailbox cannot be polled (login refused, folder missing); the message says what to fix."""


@dataclass(frozen=True)
class MailLimits:
    max_attachments: int = 20
    max_attachment_bytes: int = 25 * 1024 * 1024
    max_zip_members: int = 50
    max_unzipped_bytes: int = 200 * 1024 * 1024
    max_compression_ratio: int = 100


@dataclass
class EmailSettings:
    host: str
    port: int
    tls: str  # ssl | starttls | none
    user: str
    password: str
    folder: str = "INBOX"
    processed_folder: str = "Processed"
    quarantine_folder: str = "Quarantine"
    allowed_senders: tuple[str, ...] = ()
    limits: MailLimits = field(default_factory=MailLimits)
    timeout: float = 30.0
    ca_file: str | None = None  # a CA bundle to trust instead of the system's (a company CA)


def settings_from_spec(spec: Any, env: Mapping[str, str]) -> EmailSettings:
    """Settings from a source's `email:` block, the user and password read from the variables it names."""
    values = {}
    for key in ("user_env", "password_env"):
        name = getattr(spec, key)
        if not env.get(name):
            raise EmailSourceError(f"email.{key} names {name!r}, which is not set: export it before starting Dagster")
        values[key] = env[name]
    return EmailSettings(
        host=spec.host, port=spec.port or {"ssl": 993}.get(spec.tls, 143), tls=spec.tls, user=values["user_env"],
        password=values["password_env"], folder=spec.folder, processed_folder=spec.processed_folder,
        quarantine_folder=spec.quarantine_folder, allowed_senders=tuple(spec.allowed_senders),
        limits=MailLimits(max_attachments=spec.max_attachments,
                          max_attachment_bytes=int(spec.max_attachment_mb * 1024 * 1024)),
        ca_file=spec.ca_file)


@dataclass
class Spreadsheet:
    name: str  # the attachment's file name (`archive.zip/member.csv` inside a ZIP)
    data: bytes
    suffix: str  # .csv | .xlsx
    rows: int  # physical lines (CSV) or sheet rows (XLSX), for the citations


@dataclass
class Mail:
    uid: int
    message_id: str
    sender: str
    subject: str
    date: str
    attachments: list[str] = field(default_factory=list)
    spreadsheets: list[Spreadsheet] = field(default_factory=list)
    quarantine: str | None = None  # the reason, when quarantined

    @property
    def citation(self) -> str:
        return f"mid:{self.message_id}"

    def summary(self) -> dict:
        return {"uid": self.uid, "message_id": self.message_id, "sender": self.sender, "subject": self.subject,
                "date": self.date, "attachments": self.attachments, "quarantine": self.quarantine}


def quarantine_alert(source_name: str, source, mail: Mail):
    """The Slack alert for a quarantined mail (`slack.Alert`), routed by the source's catalogue and name."""
    from claro_dagster.resources.slack import Alert, clip

    return Alert(event=MAIL_QUARANTINED, title=f"Mail quarantined: {clip(mail.subject or '(no subject)', 80)}",
                 catalogue=source.catalogue, source=source_name,
                 error=f"{mail.quarantine}. The mail from {mail.sender or '(no sender)'} ({mail.message_id}) is kept "
                       f"in the {source.email.quarantine_folder} folder; nothing was imported from it.",
                 records=list(mail.attachments))


# -- checking one message (pure) -------------------------------------------------------------------------------

def _domain(address: str) -> str:
    return address.rsplit("@", 1)[-1].lower() if "@" in address else ""


def sender_allowed(address: str, allowed: tuple[str, ...]) -> bool:
    address = address.lower()
    for entry in allowed:
        entry = entry.strip().lower()
        if entry.startswith("@") and _domain(address) == entry[1:]:
            return True
        if entry == address:
            return True
    return False


def aligned(envelope_domain: str, from_domain: str) -> bool:
    """The envelope sender's domain is the From domain or a subdomain of it (DMARC's relaxed alignment: a supplier
    bouncing through bounce.acme.example still sends as acme.example), or the other way round."""
    a, b = envelope_domain.lower().rstrip("."), from_domain.lower().rstrip(".")
    return a == b or a.endswith("." + b) or b.endswith("." + a)


def read_message(uid: int, raw: bytes, limits: MailLimits, allowed: tuple[str, ...]) -> Mail:
    """The message's provenance, its spreadsheets, or the reason to quarantine it."""
    msg: EmailMessage = email.message_from_bytes(raw, policy=email.policy.default)
    sender = parseaddr(str(msg.get("From", "")))[1].lower()
    message_id = str(msg.get("Message-ID", "")).strip().strip("<>") or \
        "sha256:" + hashlib.sha256(raw).hexdigest()
    mail = Mail(uid=uid, message_id=message_id, sender=sender, subject=str(msg.get("Subject", "")),
                date=str(msg.get("Date", "")))
    parts = list(msg.iter_attachments())
    mail.attachments = [part.get_filename() or "(unnamed)" for part in parts]
    if not sender:
        mail.quarantine = "no sender address in From"
    elif not sender_allowed(sender, allowed):
        mail.quarantine = f"unknown sender {sender}: add it (or @{_domain(sender)}) to email.allowed_senders"
    elif (envelope := parseaddr(str(msg.get("Return-Path", "")))[1].lower()) and \
            not aligned(_domain(envelope), _domain(sender)):
        mail.quarantine = (f"From domain {_domain(sender)} does not match the envelope sender {envelope}: the mail "
                           "may be forged")
    elif len(parts) > limits.max_attachments:
        mail.quarantine = (f"too many attachments ({len(parts)}; at most {limits.max_attachments} per mail): send "
                           "the files in several mails or one ZIP")
    if mail.quarantine:
        return mail
    others = []
    for part in parts:
        name = part.get_filename() or "(unnamed)"
        lower = name.lower()
        if not lower.endswith((*TABLE_TYPES, ".zip")):
            others.append(name)
            continue
        data = part.get_payload(decode=True) or b""
        try:
            if lower.endswith(".zip"):
                mail.spreadsheets += _unzip(name, data, limits)
            else:
                mail.spreadsheets.append(spreadsheet(name, data, limits))
        except UnreadableAttachment as exc:
            mail.quarantine = f"unreadable attachment {exc}"
            mail.spreadsheets = []
            return mail
    if not mail.spreadsheets:
        listed = f" (attached: {', '.join(others)})" if others else ""
        mail.quarantine = f"no CSV, XLSX or ZIP attachment{listed}: attach the product file"
    return mail


class UnreadableAttachment(Exception):
    """`<name>: <why>`."""


def spreadsheet(name: str, data: bytes, limits: MailLimits) -> Spreadsheet:
    """A CSV or XLSX attachment checked by its content, not its name."""
    if len(data) > limits.max_attachment_bytes:
        raise UnreadableAttachment(f"{name}: {len(data)} bytes, over the {limits.max_attachment_bytes} allowed")
    if not data.strip():
        raise UnreadableAttachment(f"{name}: the file is empty")
    if name.lower().endswith(".csv"):
        if data.startswith(b"PK\x03\x04") or b"\x00" in data[:65536]:
            raise UnreadableAttachment(f"{name}: binary content, not a CSV text file: export the sheet as CSV")
        return Spreadsheet(name, data, ".csv", data.count(b"\n") + (not data.endswith(b"\n")))
    if not data.startswith(b"PK\x03\x04"):
        raise UnreadableAttachment(f"{name}: not an XLSX workbook (an .xlsx file is a ZIP archive): save it as "
                                   "Excel Workbook (.xlsx)")
    _check_archive(name, data, limits)
    try:
        import openpyxl

        book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
        try:
            sheet = book.worksheets[0]
            # the sheet's declared dimension (Excel and most writers give one) spares reading every row in the tick
            rows = sheet.max_row if sheet.max_row else sum(1 for _ in sheet.iter_rows(values_only=True))
        finally:
            book.close()
    except Exception as exc:  # a damaged workbook: openpyxl raises many kinds
        raise UnreadableAttachment(f"{name}: the workbook cannot be opened ({type(exc).__name__}: {exc})") from exc
    return Spreadsheet(name, data, ".xlsx", rows)


def _check_archive(name: str, data: bytes, limits: MailLimits) -> list[zipfile.ZipInfo]:
    """The archive's members, refusing a ZIP bomb by its declared sizes before anything is inflated."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
    except (zipfile.BadZipFile, ValueError) as exc:
        raise UnreadableAttachment(f"{name}: a damaged ZIP archive ({exc})") from exc
    if len(members) > limits.max_zip_members * (40 if name.lower().endswith(".xlsx") else 1):
        raise UnreadableAttachment(f"{name}: {len(members)} files in the archive, more than allowed")
    total = sum(m.file_size for m in members)
    if total > limits.max_unzipped_bytes:
        raise UnreadableAttachment(f"{name}: expands to {total} bytes, over the {limits.max_unzipped_bytes} allowed "
                                   "(a ZIP bomb?)")
    for m in members:
        if m.file_size > 1024 * 1024 and m.file_size > limits.max_compression_ratio * max(m.compress_size, 1):
            raise UnreadableAttachment(f"{name}: {m.filename} is compressed {m.file_size // max(m.compress_size, 1)}"
                                       ":1 (a ZIP bomb?)")
    return members


def _unzip(name: str, data: bytes, limits: MailLimits) -> list[Spreadsheet]:
    members = [m for m in _check_archive(name, data, limits) if not m.is_dir()]
    archive = zipfile.ZipFile(io.BytesIO(data))
    out = []
    for m in members:
        inner = m.filename.rsplit("/", 1)[-1]
        lower = inner.lower()
        if lower.endswith((".zip", ".gz", ".7z", ".rar", ".tar", ".tgz")):
            raise UnreadableAttachment(f"{name}: {m.filename} is an archive inside the archive: send the files "
                                       "themselves or one ZIP")
        if inner.startswith(".") or m.filename.startswith("__MACOSX/") or not lower.endswith(TABLE_TYPES):
            continue
        with archive.open(m) as handle:  # read at most the declared size + 1: a lying header is caught
            content = handle.read(m.file_size + 1)
        if len(content) > m.file_size:
            raise UnreadableAttachment(f"{name}: {m.filename} is larger than its header says (a ZIP bomb?)")
        out.append(spreadsheet(f"{name}/{m.filename}", content, limits))
    if not out:
        raise UnreadableAttachment(f"{name}: no CSV or XLSX file in the archive")
    return out


# -- the mailbox ---------------------------------------------------------------------------------------------

def connect(settings: EmailSettings):
    from imapclient import IMAPClient
    from imapclient.exceptions import LoginError

    context = ssl.create_default_context(cafile=settings.ca_file)
    client = IMAPClient(settings.host, port=settings.port, ssl=settings.tls == "ssl",
                        ssl_context=context if settings.tls == "ssl" else None, timeout=settings.timeout)
    try:
        if settings.tls == "starttls":
            client.starttls(context)
        client.login(settings.user, settings.password)
    except LoginError as exc:
        client.shutdown()
        raise EmailSourceError(f"{settings.host}:{settings.port} refused the login of {settings.user!r} ({exc}): "
                               "check email.user_env and email.password_env") from exc
    return client


def _move(client, uid: int, folder: str) -> None:
    if client.has_capability("MOVE"):
        client.move([uid], folder)
        return
    client.copy([uid], folder)
    client.add_flags([uid], [b"\\Deleted"])
    if client.has_capability("UIDPLUS"):
        client.uid_expunge([uid])
    else:
        client.expunge()


def poll(settings: EmailSettings, state: Mapping[str, Any] | None, accept: Callable[[Mail], None],
         save: Callable[[dict], None], *, log: Callable[[str], None] = lambda _: None,
         max_messages: int = 20) -> list[Mail]:
    """Handle the messages in `settings.folder` not handled yet (at most `max_messages`, so a tick stays short: the
    rest wait for the next poll): `accept(mail)` for each (quarantined ones too; it writes the spreadsheets), then
    `save(state)`, then the move. Returns the mails."""
    state = {"uidvalidity": None, "last_uid": 0, "done": {}, **dict(state or {})}
    done: dict[str, str] = dict(state["done"])  # Message-ID -> the folder it goes to
    handled: list[Mail] = []
    client = connect(settings)
    try:
        for folder in (settings.processed_folder, settings.quarantine_folder):
            if not client.folder_exists(folder):
                client.create_folder(folder)
        if not client.folder_exists(settings.folder):
            raise EmailSourceError(f"no folder {settings.folder!r} in the mailbox of {settings.user!r}: check "
                                   "email.folder")
        selected = client.select_folder(settings.folder)
        uidvalidity = int(selected[b"UIDVALIDITY"])
        if state["uidvalidity"] != uidvalidity:
            if state["uidvalidity"] is not None:
                log(f"UIDVALIDITY of {settings.folder} changed ({state['uidvalidity']} -> {uidvalidity}): rescanning "
                    "(messages already handled are recognised by their Message-ID)")
            state.update(uidvalidity=uidvalidity, last_uid=0, pending={})
        pending: dict[str, str] = dict(state.get("pending") or {})  # UID -> folder: handled, not moved yet
        uids = sorted(client.search(["NOT", "DELETED"]))
        for uid in uids:
            if str(uid) in pending:  # handled before a broken connection, not moved yet
                _move(client, uid, pending.pop(str(uid)))
                state["pending"] = pending
                save(_trimmed(state, done))
        for uid in [u for u in uids if u > state["last_uid"]]:
            if len(handled) >= max_messages:
                break
            raw = client.fetch([uid], ["BODY.PEEK[]"]).get(uid, {}).get(b"BODY[]")
            if raw is None:  # expunged meanwhile
                continue
            try:
                mail = read_message(uid, raw, settings.limits, settings.allowed_senders)
            except Exception as exc:  # a message no check foresaw must not block the mailbox: quarantined, kept
                mail = Mail(uid=uid, message_id="sha256:" + hashlib.sha256(raw).hexdigest(), sender="", subject="",
                            date="", quarantine=f"unreadable message ({type(exc).__name__}: {exc})")
            target = done.get(mail.message_id)
            if target is None:
                accept(mail)
                target = settings.quarantine_folder if mail.quarantine else settings.processed_folder
                done[mail.message_id] = target
                handled.append(mail)
            else:
                log(f"message {mail.message_id} (UID {uid}) was handled before: moved to {target} again")
            pending[str(uid)] = target
            state.update(last_uid=uid, pending=pending)
            save(_trimmed(state, done))
            _move(client, uid, target)
            pending.pop(str(uid))
            state["pending"] = pending
            save(_trimmed(state, done))
    finally:
        try:
            client.logout()
        except Exception:  # the connection is already gone (server restarted): nothing to close
            pass
    return handled


def _trimmed(state: dict, done: dict) -> dict:
    keep = dict(list(done.items())[-KEPT_MESSAGE_IDS:])
    return {**state, "done": keep}


# -- the reply to the sender ---------------------------------------------------------------------------------

FINAL_STATUSES = ("published", "awaiting_review", "halted", "quarantined")  # failed: may be rerun


def reply_message(note: Mapping[str, Any], status: str, detail: str | None, rejected_csv: bytes | None,
                  rejected: int, from_address: str) -> EmailMessage:
    """The summary mail to the sender of the file `note` (a mailed file's `.pull.json`) describes: its outcome, the
    rows rejected (attached as CSV, with line and reasons), as the portal shows them."""
    from email.utils import make_msgid

    rows = max(len(note.get("rows") or {}) - 1, 0)
    msg = EmailMessage()
    msg["From"] = from_address
    msg["To"] = note["sender"]
    subject = str(note.get("subject") or "")
    msg["Subject"] = subject if subject.lower().startswith("re:") else f"Re: {subject}"
    msg["In-Reply-To"] = msg["References"] = f"<{note['message_id']}>"
    msg["Message-ID"] = make_msgid(domain=from_address.rsplit("@", 1)[-1])
    msg["Auto-Submitted"] = "auto-replied"  # RFC 3834: autoresponders do not answer it
    outcome = {"published": "published to the catalogue", "awaiting_review": "accepted; some changes wait for "
               "review by the catalogue team", "halted": "halted: too many rows were rejected, nothing was published",
               "failed": "not processed: it could not be read", "quarantined": "quarantined: it could not be read"}
    lines = [f"Your file {note.get('attachment')} ({rows} rows) was {outcome.get(status, status)}.",
             f"Rows accepted: {max(rows - rejected, 0)}. Rows rejected: {rejected}."]
    if detail:
        lines.append(detail)
    if rejected_csv:
        lines.append("The rejected rows are attached (rejected.csv): each with its line and the reason. Fix them "
                     "and send the file again.")
    msg.set_content("\n\n".join(lines) + "\n")
    if rejected_csv:
        msg.add_attachment(rejected_csv, maintype="text", subtype="csv", filename="rejected.csv")
    return msg


def send_mail(spec: Any, env: Mapping[str, str], msg: EmailMessage, timeout: float = 30.0) -> None:
    """Send `msg` through the SMTP server of an `email.reply` block."""
    import smtplib

    port = spec.port or {"ssl": 465, "starttls": 587}.get(spec.tls, 25)
    context = ssl.create_default_context()
    smtp = smtplib.SMTP_SSL(spec.host, port, timeout=timeout, context=context) if spec.tls == "ssl" else \
        smtplib.SMTP(spec.host, port, timeout=timeout)
    with smtp:
        if spec.tls == "starttls":
            smtp.starttls(context=context)
        if spec.user_env:
            if not env.get(spec.user_env) or not env.get(spec.password_env or ""):
                raise EmailSourceError(f"email.reply.user_env / password_env name {spec.user_env!r} / "
                                       f"{spec.password_env!r}, not set: export them")
            smtp.login(env[spec.user_env], env[spec.password_env])
        smtp.send_message(msg)
