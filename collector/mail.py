"""Email: alerts to the team and the daily report, over SMTP with STARTTLS and login.

Mail is a side channel: a dead or misconfigured mail server must never stop capture,
merging or uploading. So `EmailNotifier.alert` never raises; it logs one line instead. The
same alert kind is mailed at most once an hour per host, a rule kept in a small JSON file
under `settings.state_dir` because the stream service and the cron jobs (send, process,
upload) are separate processes that all alert. Delivery runs on a short-lived worker thread
so that a mail server that accepts the connection and then hangs (up to `SMTP_TIMEOUT`)
cannot hold up the stream's writer loop; the thread is not a daemon, so a cron command's
process still waits for its mail before exiting.

Alerts go through a durable outbox, because an alert raised while the mail server is down
is exactly the one the team needs once it is back (the once-an-hour rule would otherwise
swallow the repeats too). Each alert is composed and written to
`state_dir/mail_outbox/<time>_<kind>.json` (atomically, already redacted: subject and body
only, never credentials), then the outbox is delivered oldest first and each file removed
once the server accepted it. A failed delivery leaves the mail queued, logs one line, and
stops the round (the next mail would meet the same server). Queued mail goes out on the
next use of the notifier in any process of the host (an alert, even one the hourly rule
holds back) and on every `collector upload` run (hourly on the main, see
`deliver_pending`). A queued alert counts as sent for the hourly rule, so an outage of the
mail server queues at most one mail per kind and hour. Delivery is at least once: a crash
between the server's acceptance and the file's removal sends that mail again. Mails late by
more than a few minutes say when they were raised; alerts still queued after
`OUTBOX_MAX_AGE` are dropped with a logged count. If the outbox cannot be written (disk
full), the alert is mailed straight from memory as before the outbox existed.

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
import secrets as random_names
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

from collector.errors import (
    CollectorError,
    CredentialsError,
    DiskFullError,
    RemoteError,
    SettingsError,
)
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
OUTBOX_DIR = "mail_outbox"
OUTBOX_MAX_AGE = 7 * 86400.0  # queued alerts older than this are dropped (and counted)
LATE_AFTER = 300.0  # a mail delivered this much after its alert says when it was raised


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
        mailed if that is less than `interval` from `now` (then nothing is recorded).

        Either side: a process reads its clock before it gets the lock, so a claim made
        an instant later by another process can look a little in the future (four processes
        alerting at once mailed twice under load when only the past counted)."""
        with self._locked() as sent:
            last = sent.get(kind)
            if last is not None and abs(now - last) < self.interval:
                return last
            sent[kind] = now
            return None

    def release(self, kind: str, claimed_at: float) -> None:
        """Forget a claim whose mail failed, so the next occurrence tries again."""
        with self._locked() as sent:
            if sent.get(kind) == claimed_at:
                del sent[kind]


@dataclass(frozen=True)
class QueuedMail:
    """One alert mail in the outbox: composed and redacted when the alert was raised."""

    path: Path
    kind: str
    subject: str
    body: str
    raised_at: float


class Outbox:
    """Alert mails waiting for the mail server, one JSON file each, oldest first.

    Every process of the host shares it; `deliver` holds an exclusive lock on the folder
    so that two processes never send the same queued mail.
    """

    def __init__(self, state_dir: Path, max_age: float = OUTBOX_MAX_AGE) -> None:
        self.folder = state_dir / OUTBOX_DIR
        self.lock_path = state_dir / (OUTBOX_DIR + ".lock")
        self.max_age = max_age

    def put(self, kind: str, subject: str, body: str, raised_at: float) -> Path:
        """Queue one mail (atomically: a crash leaves it whole or absent)."""
        name = f"{int(raised_at * 1e6):017d}_{kind}_{random_names.token_hex(3)}.json"
        path = self.folder / name
        payload = {"kind": kind, "subject": subject, "body": body, "raised_at": raised_at}
        write_bytes_atomic(path, (json.dumps(payload, sort_keys=True) + "\n").encode())
        return path

    def paths(self) -> list[Path]:
        """Queued files, oldest first (names start with the time); temporaries skipped."""
        try:
            return sorted(path for path in self.folder.iterdir()
                          if path.suffix == ".json" and not path.name.startswith("."))
        except FileNotFoundError:
            return []

    def __len__(self) -> int:
        return len(self.paths())

    def read(self, path: Path) -> QueuedMail | None:
        """The queued mail, or None (logged) for a file that is not one: it is set aside."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return QueuedMail(path, str(raw["kind"]), str(raw["subject"]), str(raw["body"]),
                              float(raw["raised_at"]))
        except FileNotFoundError:
            return None  # delivered by another process meanwhile
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("queued alert %s is unreadable (%s); moved aside", path.name,
                        type(error).__name__)
            with contextlib.suppress(OSError):
                path.rename(path.with_name("." + path.name + ".unreadable"))
            return None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield


class EmailNotifier:
    """Mails alerts (implements `collector.notify.Notifier`) through the outbox; never raises."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time,
                 background: bool = True, timeout: float = SMTP_TIMEOUT) -> None:
        self.settings = settings
        self.clock = clock
        self.background = background
        self.timeout = timeout
        self.ledger = AlertLedger(settings.state_dir)
        self.outbox = Outbox(settings.state_dir)
        self._threads: list[threading.Thread] = []
        self._local_sent: dict[str, float] = {}  # fallback when the state file is unusable

    def alert(self, kind: str, subject: str, body: str = "") -> None:
        try:
            claimed_at = self._claim(kind)
            if claimed_at is None:
                # Held back by the hourly rule, but still a good moment to retry the queue.
                if self.outbox.paths():
                    self._run(self._deliver_outbox)
                return
            mail_subject, mail_body = self._compose(kind, subject, body, claimed_at)
            try:
                self.outbox.put(kind, mail_subject, mail_body, claimed_at)
            except (OSError, CollectorError) as error:  # disk full: mail it from memory
                log.warning("alert %s not queued (%s); mailing it without the outbox", kind,
                            error.strerror if isinstance(error, OSError) else error)
                self._run(lambda: self._deliver_now(kind, mail_subject, mail_body, claimed_at))
                return
            self._run(self._deliver_outbox)
        except Exception as error:  # an alert must never break its caller
            log.error("alert %s not emailed: %s", kind, type(error).__name__)

    def deliver_pending(self) -> int:
        """Deliver what the outbox holds, in this thread; returns how many mails still wait."""
        try:
            self._deliver_outbox()
            return len(self.outbox)
        except Exception as error:  # never break the command that asked
            log.error("queued alerts not emailed: %s", type(error).__name__)
            return -1

    def wait(self, timeout: float | None = None) -> None:
        """Block until the mails handed to worker threads are delivered or have failed."""
        for worker in list(self._threads):
            worker.join(timeout)

    def _run(self, work: Callable[[], object]) -> None:
        if not self.background:
            work()
            return
        worker = threading.Thread(target=self._guarded, args=(work,), name="mail-delivery",
                                  daemon=False)
        self._threads = [t for t in self._threads if t.is_alive()] + [worker]
        worker.start()

    @staticmethod
    def _guarded(work: Callable[[], object]) -> None:
        try:
            work()
        except Exception as error:  # never let a worker thread die with a traceback
            log.error("alert mail delivery failed: unexpected %s", type(error).__name__)

    def _claim(self, kind: str) -> float | None:
        now = self.clock()
        try:
            last = self.ledger.claim(kind, now)
        except (OSError, DiskFullError) as error:  # a full disk is the alert's usual cause
            log.warning("alert state under %s unusable (%s); rate-limiting in memory only",
                        self.settings.state_dir,
                        error.strerror if isinstance(error, OSError) else "disk full")
            last = self._local_sent.get(kind)
            if last is not None and not 0 <= now - last < self.ledger.interval:
                last = None
        if last is not None:
            log.info("alert %s not emailed again: already sent %.0f s ago "
                     "(at most once an hour; a mail still queued counts as sent)", kind,
                     max(0.0, now - last))
            return None
        self._local_sent[kind] = now
        return now

    def _compose(self, kind: str, subject: str, body: str, now: float) -> tuple[str, str]:
        """Subject and body as mailed, with every secret this host knows blanked out."""
        credentials: MailCredentials | None = None
        with contextlib.suppress(CredentialsError, SettingsError, OSError):
            credentials = load_mail_credentials(self.settings)
        secrets = known_secrets(self.settings, credentials)
        return (redact(f"[collector {self.settings.server_id}] {kind}: {subject}", secrets),
                redact(alert_body(self.settings, kind, subject, body, now), secrets))

    def _deliver_now(self, kind: str, subject: str, body: str, claimed_at: float) -> None:
        """Without the outbox: one try; a failure forgets the claim so a repeat tries again."""
        failure = self._send(kind, subject, body)
        if failure is None:
            return
        log.error("alert %s not emailed: %s", kind, failure)
        with contextlib.suppress(OSError, DiskFullError):
            self.ledger.release(kind, claimed_at)
        self._local_sent.pop(kind, None)

    def _deliver_outbox(self) -> None:
        """Send the queued mails oldest first; stop at the first failure (logged once)."""
        with self.outbox.locked():
            now = self.clock()
            paths = self.outbox.paths()
            for number, path in enumerate(paths):
                mail = self.outbox.read(path)
                if mail is None:
                    continue
                if now - mail.raised_at > self.outbox.max_age:
                    self._drop_stale(paths[number:], now)
                    continue
                body = mail.body
                if now - mail.raised_at > LATE_AFTER:
                    raised = datetime.fromtimestamp(mail.raised_at, self.settings.timezone)
                    body += (f"\nDelivered late: raised {raised:%Y-%m-%d %H:%M:%S %Z}, kept "
                             "in the outbox while the mail server could not be reached.\n")
                failure = self._send(mail.kind, mail.subject, body)
                if failure is not None:
                    waiting = len(paths) - number
                    log.error("alert %s not emailed: %s; kept in the outbox (%d waiting), "
                              "retried on the next alert or `collector upload`", mail.kind,
                              failure, waiting)
                    return
                mail.path.unlink(missing_ok=True)

    def _drop_stale(self, paths: list[Path], now: float) -> None:
        """Remove every queued mail older than the outbox's age limit, with one log line."""
        dropped = 0
        for path in paths:
            mail = self.outbox.read(path)
            if mail is not None and now - mail.raised_at > self.outbox.max_age:
                path.unlink(missing_ok=True)
                dropped += 1
        if dropped:
            log.warning("dropped %d queued alert mail(s) older than %.0f days: the mail server "
                        "was unreachable all that time", dropped, self.outbox.max_age / 86400)

    def _send(self, kind: str, subject: str, body: str) -> str | None:
        """Send one composed mail; None when the server took it, else one safe line."""
        credentials: MailCredentials | None = None
        try:
            credentials = load_mail_credentials(self.settings)
            secrets = known_secrets(self.settings, credentials)
            send_mail(credentials, redact(subject, secrets), redact(body, secrets),
                      timeout=self.timeout)
        except (OSError, smtplib.SMTPException, CredentialsError, SettingsError) as error:
            where = (f"{credentials.server}:{credentials.port}" if credentials is not None
                     else "the mail server")
            secrets = [credentials.password] if credentials is not None else []
            return f"cannot send through {where}: {describe_failure(error, secrets)}"
        log.info("alert %s emailed to %s", kind, ", ".join(credentials.toaddrs))
        return None


def deliver_pending(settings: Settings) -> int:
    """Mail what the outbox holds (cron's hook; nothing when notifications are off).

    Returns how many mails still wait (-1 if that is unknown); never raises.
    """
    if not settings.notifications:
        return 0
    notifier = EmailNotifier(settings, background=False)
    if not notifier.outbox.paths():
        return 0
    return notifier.deliver_pending()


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
