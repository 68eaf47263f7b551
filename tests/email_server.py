"""A private, real IMAP server for the mail tests: Debian's dovecot with its own configuration (loopback, a free
port, plain-text login without TLS, one static user, Maildir under a temporary folder), started and stopped by the
test. Messages are built with the stdlib `email` package and delivered by IMAP APPEND. The mail folder survives
`stop()` / `start()`, so a restart keeps UIDs and UIDVALIDITY as a real server's restart does.

Needs the `dovecot` binary (`apt-get install dovecot-imapd`; .ci/run installs it)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from email.message import EmailMessage
from pathlib import Path

from e2e.harness import wait_until

USER, PASSWORD = "catalogue", "imap-pass"
DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ImapServer:
    def __init__(self, root: Path | None = None, *, tls: bool = False):
        # its own folder under the system temp folder by default: pytest's tmp_path sits in 0700 folders the mail
        # user (nobody, when the tests run as root) cannot pass through
        import tempfile

        self._own = root is None
        self.root = Path(tempfile.mkdtemp(prefix="claro-imap-")) if root is None else Path(root)
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.host = "127.0.0.1"
        self.tls = tls  # True: STARTTLS on `port` and implicit TLS on `tls_port`, with a certificate for 127.0.0.1
        self.tls_port = free_port() if tls else 0
        self.ca_file: Path | None = None

    def _config(self) -> Path:
        root = self.root
        for sub in ("run", "state", "mail"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:  # dovecot refuses mail access as root: the mail user is `nobody`, owning the mail
            uid, gid, internal = 65534, 65534, "dovenull"
            os.chown(root / "mail", uid, gid)
            root.chmod(0o755)  # a pytest tmp_path is 0700: the mail user must reach its folder
        else:
            uid, gid = os.getuid(), os.getgid()
            import pwd

            internal = pwd.getpwuid(uid).pw_name
        conf = root / "dovecot.conf"
        conf.write_text(f"""\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
listen = 127.0.0.1
protocols = imap
{self._ssl_settings()}
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = {internal}
default_login_user = {internal if os.geteuid() != 0 else 'dovenull'}
first_valid_uid = 1
mail_location = maildir:{root}/mail/%u
passdb {{
  driver = static
  args = password={PASSWORD}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.tls_port}
  }}
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0666
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
""", encoding="utf-8")
        return conf

    def _ssl_settings(self) -> str:
        if not self.tls:
            return "ssl = no"
        cert, key = self.root / "cert.pem", self.root / "key.pem"
        if not cert.exists():
            self._make_certificate(cert, key)
        self.ca_file = cert
        return f"ssl = yes\nssl_cert = <{cert}\nssl_key = <{key}"

    @staticmethod
    def _make_certificate(cert: Path, key: Path) -> None:
        """A self-signed certificate for 127.0.0.1 (the tests trust it as their CA)."""
        import datetime as dt
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        private = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
        now = dt.datetime.now(dt.UTC)
        certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                       .public_key(private.public_key()).serial_number(x509.random_serial_number())
                       .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                       .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                      critical=False)
                       .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                       .sign(private, hashes.SHA256()))
        cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
        key.chmod(0o600)

    def start(self) -> ImapServer:
        if not os.path.exists(DOVECOT):
            raise RuntimeError("the mail tests need dovecot: apt-get install -y dovecot-imapd (.ci/run does)")
        conf = self._config()
        self.process = subprocess.Popen([DOVECOT, "-F", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, start_new_session=True)

        def listening():
            with socket.create_connection((self.host, self.port), timeout=1) as s:
                return s.recv(100).startswith(b"* OK"), "connected"

        def alive():
            if self.process.poll() is not None:
                raise RuntimeError(f"dovecot exited ({self.process.returncode}): {self.process.stderr.read()!r}\n"
                                   f"{self.log()}")

        wait_until(listening, 15, 0.05, what=f"dovecot on port {self.port}", guard=alive, details=self.log)
        return self

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        """Stop the whole server: the master and every process it started (its process group), so open
        connections die as they do when a real server restarts."""
        import signal

        if self.process is None:
            return
        group = self.process.pid  # started in a new session: the group is the master's pid
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                continue
            if sig == signal.SIGTERM:  # children that outlive the master (imap, log, stats) go too
                try:
                    os.killpg(group, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            break
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> ImapServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if self._own:
            shutil.rmtree(self.root, ignore_errors=True)

    def client(self):
        from imapclient import IMAPClient

        client = IMAPClient(self.host, port=self.port, ssl=False, timeout=10)
        client.login(USER, PASSWORD)
        return client

    def deliver(self, message: EmailMessage | bytes, folder: str = "INBOX") -> None:
        with self.client() as client:
            if not client.folder_exists(folder):
                client.create_folder(folder)
            client.append(folder, message if isinstance(message, bytes) else message.as_bytes())

    def messages(self, folder: str) -> list[EmailMessage]:
        """The messages now in `folder` (not deleted), parsed."""
        import email
        import email.policy

        with self.client() as client:
            if not client.folder_exists(folder):
                return []
            client.select_folder(folder, readonly=True)
            uids = client.search(["NOT", "DELETED"])
            fetched = client.fetch(uids, ["RFC822"]) if uids else {}
            return [email.message_from_bytes(fetched[u][b"RFC822"], policy=email.policy.default)
                    for u in sorted(fetched)]


def mail(sender: str, subject: str, attachments: list[tuple[str, bytes]] = (), *, to: str = "catalogue@shop.test",
         return_path: str | None = None, message_id: str | None = None, body: str = "Please find attached.") -> \
        EmailMessage:
    """A message from `sender` with `attachments` ((file name, bytes) each; the type is guessed from the name)."""
    import mimetypes
    from email.utils import make_msgid

    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = message_id or make_msgid(domain=sender.rsplit("@", 1)[-1].strip(">"))
    if return_path is not None:
        msg["Return-Path"] = return_path
    msg.set_content(body)
    for name, data in attachments:
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        maintype, subtype = ctype.split("/", 1)
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg
