"""Alerts by email: the notifier that queues each alert and delivers the outbox.

Email: alerts to the team and the daily report, over SMTP with STARTTLS and login.

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
import logging
import smtplib
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from collector.alerts.outbox import Outbox
from collector.alerts.rate import AlertLedger
from collector.alerts.smtp import (
    SMTP_TIMEOUT,
    MailCredentials,
    describe_failure,
    known_secrets,
    load_mail_credentials,
    redact,
    send_mail,
)
from collector.errors import (
    CollectorError,
    CredentialsError,
    DiskFullError,
    SettingsError,
)
from collector.settings import (
    Settings,
)

log = logging.getLogger("collector.mail")
LATE_AFTER = 300.0  # a mail delivered this much after its alert says when it was raised


class EmailNotifier:
    """Mails alerts through the outbox (a `collector.alerts.notify.Notifier`); never raises."""

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
        "Details: `collector status` and `journalctl -u collector.service` on the host.",
        "The same alert is emailed at most once an hour.",
    ]
    return "\n".join(lines) + "\n"
