"""Email: alerts to the team and the daily report, over SMTP with STARTTLS and login.

Mail is a side channel: a dead or misconfigured mail server must never stop capture,
merging or uploading. So `EmailNotifier.alert` never raises; it logs one line instead. The
same alert kind is mailed at most once an hour per host, a rule kept in a small JSON file
under `settings.state_dir` because the stream service and the cron jobs (send, process,
upload) are separate processes that all alert. Delivery runs on a short-lived worker thread
so that a mail server that accepts the connection and then hangs (up to `SMTP_TIMEOUT`)
cannot hold up the stream's writer loop; the thread is not a daemon, so a cron command's
process still waits for its mail before exiting.

No secret reaches a mail, a log line or an exception: the SMTP password and the API and OSF
tokens this host knows are blanked out of every subject and body, and SMTP errors are logged
by their code and server reply only, with the password blanked as well.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

from collector.errors import CredentialsError, RemoteError, SettingsError
from collector.outputs import write_bytes_atomic
from collector.settings import (
    Settings,
    read_bearer_token,
    read_email_credentials,
    read_osf_token,
)

log = logging.getLogger("collector.mail")

SMTP_TIMEOUT = 30.0
ALERT_INTERVAL = 3600.0  # the same alert kind is mailed at most once per this many seconds
ALERT_STATE_FILE = "alerts_sent.json"
CAFILE_ENV = "COLLECTOR_SMTP_CAFILE"  # tests and the lab only: trust this CA instead
IMPLICIT_TLS_PORT = 465
REDACTED = "[redacted]"


@dataclass(frozen=True)
class MailCredentials:
    """The parsed `email_credentials.txt`; the password never shows in a repr."""

    server: str
    port: int
    user: str
    password: str = field(repr=False)
    fromaddr: str
    toaddrs: tuple[str, ...]
    starttls: bool = True

    @classmethod
    def from_mapping(cls, values: dict[str, str], source: str) -> MailCredentials:
        """Validate the raw key/value pairs; errors name the key, never a value."""
        try:
            port = int(values["port"])
        except ValueError:
            raise CredentialsError(f"{source}: port must be a number") from None
        if not 1 <= port <= 65535:
            raise CredentialsError(f"{source}: port must be from 1 to 65535")
        starttls_text = values.get("starttls", "True").strip().lower()
        if starttls_text not in ("true", "false", "yes", "no", "1", "0", "on", "off"):
            raise CredentialsError(f"{source}: starttls must be True or False")
        toaddrs = tuple(a.strip() for a in values["toaddr"].split(",") if a.strip())
        return cls(
            server=values["server"],
            port=port,
            user=values.get("user", ""),
            password=values.get("password", ""),
            fromaddr=values["fromaddr"],
            toaddrs=toaddrs,
            starttls=starttls_text in ("true", "yes", "1", "on"),
        )


def load_mail_credentials(settings: Settings) -> MailCredentials:
    """Read `email_credentials_dst/email_credentials.txt` (CredentialsError if unusable)."""
    values = read_email_credentials(settings)
    source = str(settings.email_credentials_dst) + "/email_credentials.txt"
    return MailCredentials.from_mapping(values, source)


@dataclass(frozen=True)
class Attachment:
    filename: str
    content: bytes
    maintype: str = "application"
    subtype: str = "octet-stream"


def redact(text: str, secrets: Sequence[str]) -> str:
    """`text` with every secret blanked out (secrets shorter than 4 characters are ignored,
    as blanking them would mangle ordinary words without protecting anything)."""
    for secret in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def build_message(credentials: MailCredentials, subject: str, body: str,
                  attachments: Sequence[Attachment] = ()) -> EmailMessage:
    """A plain-text mail; the subject is kept on one line so it cannot inject headers."""
    message = EmailMessage()
    message["Subject"] = " ".join(subject.split())
    message["From"] = credentials.fromaddr
    message["To"] = ", ".join(credentials.toaddrs)
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = make_msgid(domain=socket.getfqdn() or "collector")
    message.set_content(body)
    for attachment in attachments:
        message.add_attachment(attachment.content, maintype=attachment.maintype,
                               subtype=attachment.subtype, filename=attachment.filename)
    return message


def tls_context() -> ssl.SSLContext:
    """The system trust store, or the CA file in `$COLLECTOR_SMTP_CAFILE` (tests, the lab)."""
    cafile = os.environ.get(CAFILE_ENV) or None
    return ssl.create_default_context(cafile=cafile)


def send_mail(credentials: MailCredentials, subject: str, body: str,
              attachments: Sequence[Attachment] = (), timeout: float = SMTP_TIMEOUT) -> None:
    """Deliver one mail: STARTTLS unless turned off (implicit TLS on port 465), then login.

    Raises `OSError` or `smtplib.SMTPException` on failure; the callers decide whether a
    failure is fatal (the report command) or only logged (alerts).
    """
    message = build_message(credentials, subject, body, attachments)
    context = tls_context()
    client: smtplib.SMTP
    if credentials.port == IMPLICIT_TLS_PORT:
        client = smtplib.SMTP_SSL(credentials.server, credentials.port, timeout=timeout,
                                  context=context)
    else:
        client = smtplib.SMTP(credentials.server, credentials.port, timeout=timeout)
    with client:
        client.ehlo()
        if credentials.starttls and credentials.port != IMPLICIT_TLS_PORT:
            client.starttls(context=context)
            client.ehlo()
        if credentials.user and credentials.password:
            client.login(credentials.user, credentials.password)
        client.send_message(message, from_addr=credentials.fromaddr,
                            to_addrs=list(credentials.toaddrs))


def describe_failure(error: BaseException, secrets: Sequence[str] = ()) -> str:
    """One safe line about a mail failure: the SMTP code and reply, or the socket error."""
    if isinstance(error, smtplib.SMTPAuthenticationError):
        reply = error.smtp_error.decode("utf-8", "replace") if isinstance(
            error.smtp_error, bytes) else str(error.smtp_error)
        text = f"login refused ({error.smtp_code} {reply}); check user and password"
    elif isinstance(error, smtplib.SMTPResponseException):
        reply = error.smtp_error.decode("utf-8", "replace") if isinstance(
            error.smtp_error, bytes) else str(error.smtp_error)
        text = f"server replied {error.smtp_code} {reply}"
    elif isinstance(error, smtplib.SMTPRecipientsRefused):
        text = f"recipients refused: {', '.join(error.recipients)}"
    elif isinstance(error, smtplib.SMTPException):  # before OSError: it is a subclass
        text = str(error) or type(error).__name__
    elif isinstance(error, ssl.SSLError):
        text = f"TLS failed: {error.reason or error}"
    elif isinstance(error, OSError):
        text = error.strerror or type(error).__name__
        if isinstance(error, TimeoutError | socket.timeout):
            text = "timed out"
    else:
        text = str(error) or type(error).__name__
    return redact(" ".join(text.split()), secrets)


def known_secrets(settings: Settings, credentials: MailCredentials | None) -> list[str]:
    """Every secret this host holds that a careless alert text could contain."""
    secrets = [credentials.password] if credentials is not None else []
    readers: tuple[Callable[[Settings], str], ...] = (read_bearer_token, read_osf_token)
    for reader in readers:
        with contextlib.suppress(CredentialsError, SettingsError):
            secrets.append(reader(settings))
    return secrets


class AlertLedger:
    """When each alert kind was last mailed, shared by every process through a locked file."""

    def __init__(self, state_dir: Path, interval: float = ALERT_INTERVAL) -> None:
        self.path = state_dir / ALERT_STATE_FILE
        self.lock_path = state_dir / (ALERT_STATE_FILE + ".lock")
        self.interval = interval

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, float]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            sent = self._read()
            before = dict(sent)
            yield sent
            if sent != before:
                self._write(sent)

    def _read(self) -> dict[str, float]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            log.warning("alert state %s is unreadable; starting it afresh", self.path)
            return {}
        if not isinstance(raw, dict):
            return {}
        return {str(k): float(v) for k, v in raw.items() if isinstance(v, int | float)}

    def _write(self, sent: dict[str, float]) -> None:
        write_bytes_atomic(self.path, (json.dumps(sent, sort_keys=True) + "\n").encode())

    def claim(self, kind: str, now: float) -> float | None:
        """Record `kind` as mailed at `now` and return None, or return when it last was
        mailed if that is less than `interval` ago (then nothing is recorded)."""
        with self._locked() as sent:
            last = sent.get(kind)
            if last is not None and 0 <= now - last < self.interval:
                return last
            sent[kind] = now
            return None

    def release(self, kind: str, claimed_at: float) -> None:
        """Forget a claim whose mail failed, so the next occurrence tries again."""
        with self._locked() as sent:
            if sent.get(kind) == claimed_at:
                del sent[kind]


class EmailNotifier:
    """Mails alerts (implements `collector.notify.Notifier`); never raises."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time,
                 background: bool = True, timeout: float = SMTP_TIMEOUT) -> None:
        self.settings = settings
        self.clock = clock
        self.background = background
        self.timeout = timeout
        self.ledger = AlertLedger(settings.state_dir)
        self._threads: list[threading.Thread] = []
        self._local_sent: dict[str, float] = {}  # fallback when the state file is unusable

    def alert(self, kind: str, subject: str, body: str = "") -> None:
        try:
            claimed_at = self._claim(kind)
            if claimed_at is None:
                return
            if self.background:
                worker = threading.Thread(target=self._deliver, args=(kind, subject, body,
                                                                      claimed_at),
                                          name=f"mail-{kind}", daemon=False)
                self._threads = [t for t in self._threads if t.is_alive()] + [worker]
                worker.start()
            else:
                self._deliver(kind, subject, body, claimed_at)
        except Exception as error:  # an alert must never break its caller
            log.error("alert %s not emailed: %s", kind, type(error).__name__)

    def wait(self, timeout: float | None = None) -> None:
        """Block until the mails handed to worker threads are delivered or have failed."""
        for worker in list(self._threads):
            worker.join(timeout)

    def _claim(self, kind: str) -> float | None:
        now = self.clock()
        try:
            last = self.ledger.claim(kind, now)
        except OSError as error:
            log.warning("alert state under %s unusable (%s); rate-limiting in memory only",
                        self.settings.state_dir, error.strerror)
            last = self._local_sent.get(kind)
            if last is not None and not 0 <= now - last < self.ledger.interval:
                last = None
        if last is not None:
            log.info("alert %s not emailed again: already sent %.0f s ago "
                     "(at most once an hour)", kind, now - last)
            return None
        self._local_sent[kind] = now
        return now

    def _deliver(self, kind: str, subject: str, body: str, claimed_at: float) -> None:
        credentials: MailCredentials | None = None
        try:
            credentials = load_mail_credentials(self.settings)
            secrets = known_secrets(self.settings, credentials)
            mail_subject = redact(f"[collector {self.settings.server_id}] {kind}: {subject}",
                                  secrets)
            mail_body = redact(alert_body(self.settings, kind, subject, body, self.clock()),
                               secrets)
            send_mail(credentials, mail_subject, mail_body, timeout=self.timeout)
        except (OSError, smtplib.SMTPException, CredentialsError, SettingsError) as error:
            where = (f"{credentials.server}:{credentials.port}" if credentials is not None
                     else "the mail server")
            secrets = [credentials.password] if credentials is not None else []
            log.error("alert %s not emailed: cannot send through %s: %s", kind, where,
                      describe_failure(error, secrets))
            with contextlib.suppress(OSError):
                self.ledger.release(kind, claimed_at)
            self._local_sent.pop(kind, None)
            return
        except Exception as error:  # never let a worker thread die with a traceback
            log.error("alert %s not emailed: unexpected %s", kind, type(error).__name__)
            return
        log.info("alert %s emailed to %s", kind, ", ".join(credentials.toaddrs))


def alert_body(settings: Settings, kind: str, subject: str, body: str, now: float) -> str:
    """The text of an alert mail: what happened, where, when, and how to look closer."""
    when = datetime.fromtimestamp(now, settings.timezone).strftime("%Y-%m-%d %H:%M:%S %Z")
    lines = [subject, ""]
    if body:
        lines += [body, ""]
    lines += [
        f"host:   {settings.server_id} ({settings.role})",
        f"alert:  {kind}",
        f"time:   {when}",
        "",
        "Details: `collector status` and `journalctl -u collector-stream` on the host.",
        "The same alert is emailed at most once an hour.",
    ]
    return "\n".join(lines) + "\n"


def send_or_raise(settings: Settings, subject: str, body: str,
                  attachments: Sequence[Attachment] = (),
                  timeout: float = SMTP_TIMEOUT) -> MailCredentials:
    """Send a mail whose delivery is the caller's whole job (the report): failures raise
    `RemoteError` with one safe line instead of being only logged."""
    credentials = load_mail_credentials(settings)
    secrets = known_secrets(settings, credentials)
    try:
        send_mail(credentials, redact(subject, secrets), redact(body, secrets), attachments,
                  timeout=timeout)
    except (OSError, smtplib.SMTPException) as error:
        raise RemoteError(f"cannot send mail through {credentials.server}:{credentials.port}: "
                          f"{describe_failure(error, secrets)}") from None
    return credentials
