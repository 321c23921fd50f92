"""Alert mail through a real SMTP server on loopback (aiosmtpd) with STARTTLS and login.

The server requires STARTTLS before AUTH and AUTH before MAIL, like a real submission
server, so every delivered mail here proves that the client upgraded to TLS (trusting a
throwaway self-signed certificate through `COLLECTOR_SMTP_CAFILE`) and logged in.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collector import cli
from collector.alerts import notify
from collector.alerts.email import EmailNotifier
from collector.alerts.notify import (
    FanOutNotifier,
    LogNotifier,
    deliver_queued_alerts,
    make_notifier,
)
from collector.alerts.outbox import OUTBOX_DIR, OUTBOX_MAX_AGE, Outbox
from collector.alerts.rate import ALERT_STATE_FILE, AlertLedger
from collector.alerts.smtp import CAFILE_ENV, MailCredentials, send_mail
from collector.errors import DiskFullError
from collector.settings import Settings, load_settings
from tests.conftest import BEARER_TOKEN, SettingsWriter
from tests.doubles.smtp import SmtpDouble
from tests.integration.helpers import (
    REPO_ROOT,
    SMTP_PASSWORD,
    error_lines,
    free_port,
    smtp_double,
    write_mail_credentials,
)

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def trust_test_ca(monkeypatch: pytest.MonkeyPatch, tls_files: tuple[Path, Path]) -> None:
    monkeypatch.setenv(CAFILE_ENV, str(tls_files[0]))


def mail_settings(write_settings: SettingsWriter, tmp_path: Path, port: int,
                  password: str = SMTP_PASSWORD, notifications: bool = True,
                  starttls: str | None = None) -> Settings:
    write_mail_credentials(tmp_path / "mailkeys", port, password, starttls)
    path = write_settings(notifications=str(notifications),
                          email_credentials_dst=str(tmp_path / "mailkeys"))
    return load_settings(path)


def email_notifier_of(notifier: notify.Notifier) -> EmailNotifier:
    assert isinstance(notifier, FanOutNotifier)
    found = [n for n in notifier.notifiers if isinstance(n, EmailNotifier)]
    assert len(found) == 1
    return found[0]


def all_text(smtp: SmtpDouble) -> str:
    return "\n".join(message.as_string() for message in smtp.messages)


def test_alert_is_mailed_over_starttls_with_login(
        smtp: SmtpDouble, write_settings: SettingsWriter, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    settings = mail_settings(write_settings, tmp_path, smtp.port)
    caplog.set_level(logging.INFO)
    notifier = make_notifier(settings)
    notifier.alert(notify.STREAM_STALLED, "no tweet for 300 s",
                   "The connection is up but only heartbeats arrive.")
    email_notifier_of(notifier).wait(30)

    [message] = smtp.wait_for(1)
    assert message["Subject"] == "[collector srv1] stream_stalled: no tweet for 300 s"
    assert message["From"] == "collector@example.org"
    assert message["To"] == "team@example.org, oncall@example.org"
    body = message.get_content()
    assert "no tweet for 300 s" in body
    assert "The connection is up but only heartbeats arrive." in body
    assert "host:   srv1 (secondary)" in body
    [(mail_from, rcpt_tos, over_tls)] = smtp.envelopes
    assert (mail_from, rcpt_tos, over_tls) == (
        "collector@example.org", ["team@example.org", "oncall@example.org"], True)
    assert (smtp.logins[-1][1]) is True  # the accepted login
    # Every alert is logged too, mailed or not.
    assert "ALERT stream_stalled on srv1: no tweet for 300 s" in caplog.text
    assert "alert stream_stalled emailed" in caplog.text
    assert len(list((tmp_path / "maildir").glob("*.eml"))) == 1
    assert SMTP_PASSWORD not in all_text(smtp) + caplog.text


def test_same_kind_is_mailed_once_an_hour_across_notifiers(
        smtp: SmtpDouble, write_settings: SettingsWriter, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    settings = mail_settings(write_settings, tmp_path, smtp.port)
    caplog.set_level(logging.INFO)
    now = [1_800_000_000.0]
    first = EmailNotifier(settings, clock=lambda: now[0], background=False)
    # A second notifier stands for another process (cron's upload vs. the stream): the
    # rule lives in the shared state file, not in memory.
    second = EmailNotifier(settings, clock=lambda: now[0], background=False)

    first.alert(notify.STREAM_STALLED, "no tweet for 300 s")
    now[0] += 1800
    second.alert(notify.STREAM_STALLED, "no tweet for 600 s")
    assert len(smtp.wait_for(1)) == 1
    assert "alert stream_stalled not emailed again: already sent 1800 s ago" in caplog.text

    second.alert(notify.UPLOAD_FAILING, "OSF upload failing: 503")  # another kind: sent
    now[0] += 1801  # an hour and a second after the first stalled mail
    first.alert(notify.STREAM_STALLED, "no tweet for 3900 s")
    messages = smtp.wait_for(3)
    assert [m["Subject"] for m in messages] == [
        "[collector srv1] stream_stalled: no tweet for 300 s",
        "[collector srv1] upload_failing: OSF upload failing: 503",
        "[collector srv1] stream_stalled: no tweet for 3900 s",
    ]
    assert (settings.state_dir / ALERT_STATE_FILE).is_file()


def test_concurrent_processes_send_one_mail(
        smtp: SmtpDouble, write_settings: SettingsWriter, tmp_path: Path) -> None:
    """Four processes raise the same alert at once: the locked state file lets one mail out."""
    settings = mail_settings(write_settings, tmp_path, smtp.port)
    script = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "from collector.settings import load_settings\n"
        "from collector.alerts.notify import make_notifier\n"
        "make_notifier(load_settings(__import__('pathlib').Path(sys.argv[1])))"
        ".alert('process_failing', 'merge failed')\n"
    )
    workers = [subprocess.Popen([sys.executable, "-c", script, str(settings.path)],
                                cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
               for _ in range(4)]
    outputs = [worker.communicate(timeout=60)[1] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0, 0, 0]
    assert len(smtp.wait_for(1)) == 1
    time.sleep(0.3)  # a late second mail would have arrived by now
    assert len(smtp.messages) == 1
    assert sum("already sent" in output for output in outputs) == 3


def test_a_claim_made_an_instant_later_by_another_process_counts_as_sent(
        tmp_path: Path) -> None:
    """A process reads its clock before it gets the lock: the claim it then finds may be a
    few milliseconds in its future, and still counts (it mailed twice under load before)."""
    ledger = AlertLedger(tmp_path)
    assert ledger.claim("process_failing", 1000.0) is None
    assert ledger.claim("process_failing", 999.99) == 1000.0
    assert ledger.claim("process_failing", 1000.0 + ledger.interval - 1) == 1000.0
    assert ledger.claim("process_failing", 1000.0 + ledger.interval) is None


def test_dead_mail_server_is_logged_and_never_raises(
        write_settings: SettingsWriter, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    settings = mail_settings(write_settings, tmp_path, port)
    caplog.set_level(logging.INFO)
    notifier = EmailNotifier(settings, background=False)
    notifier.alert(notify.STREAM_CRASHED, "the previous run ended without a clean stop")
    assert (f"alert stream_crashed not emailed: cannot send through 127.0.0.1:{port}: "
            "Connection refused; kept in the outbox (1 waiting)") in caplog.text
    # The mail is queued and counts as sent: a repeat within the hour queues nothing more,
    # but retries the queue.
    caplog.clear()
    notifier.alert(notify.STREAM_CRASHED, "again")
    assert "already sent" in caplog.text
    assert "Connection refused; kept in the outbox (1 waiting)" in caplog.text
    assert len(list((settings.state_dir / OUTBOX_DIR).glob("*.json"))) == 1


def test_alert_raised_while_mail_is_down_arrives_once_it_is_back(
        tls_files: tuple[Path, Path], write_settings: SettingsWriter, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """The real smtplib against the SMTP double: down (nothing listens on the port), then
    up on the same port; the queued alert goes out once, on the next scheduled flush."""
    port = free_port()
    settings = mail_settings(write_settings, tmp_path, port)
    caplog.set_level(logging.INFO)
    notifier = make_notifier(settings)
    notifier.alert(notify.STREAM_CRASHED, f"crashed; token {BEARER_TOKEN} in a debug text")
    email_notifier_of(notifier).wait(30)
    assert "Connection refused; kept in the outbox (1 waiting)" in caplog.text
    [queued] = (settings.state_dir / OUTBOX_DIR).glob("*.json")
    stored = queued.read_text()
    assert "stream_crashed" in stored
    assert BEARER_TOKEN not in stored and SMTP_PASSWORD not in stored  # redacted before stored
    assert deliver_queued_alerts(settings) == 1  # still down: still waiting

    with smtp_double(tls_files, port=port) as smtp:
        assert deliver_queued_alerts(settings) == 0
        [message] = smtp.wait_for(1)
        assert deliver_queued_alerts(settings) == 0
        time.sleep(0.3)
        assert len(smtp.messages) == 1  # delivered once, not again
    assert " ".join(str(message["Subject"]).split()) == (
        "[collector srv1] stream_crashed: crashed; token [redacted] in a debug text")
    assert "host:   srv1 (secondary)" in message.get_content()
    assert list((settings.state_dir / OUTBOX_DIR).glob("*.json")) == []


def test_queued_mails_go_out_oldest_first_on_the_next_alert(
        smtp: SmtpDouble, write_settings: SettingsWriter, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A mail queued earlier (here: by a process that met a dead server) goes out ahead of
    the next alert, with a line saying it is late."""
    settings = mail_settings(write_settings, tmp_path, smtp.port)
    now = [1_800_000_000.0]
    outbox = Outbox(settings.state_dir)
    outbox.put(notify.UPLOAD_FAILING, "[collector srv1] upload_failing: OSF 507",
               "OSF upload failing\n", now[0])
    now[0] += 600
    EmailNotifier(settings, clock=lambda: now[0], background=False).alert(
        notify.DISK_FULL, "disk full")
    first, second = smtp.wait_for(2)
    assert first["Subject"] == "[collector srv1] upload_failing: OSF 507"
    assert "Delivered late: raised" in first.get_content()
    assert second["Subject"] == "[collector srv1] disk_full: disk full"
    assert "Delivered late" not in second.get_content()
    assert len(outbox) == 0


def test_held_back_alert_still_retries_the_queue(
        smtp: SmtpDouble, write_settings: SettingsWriter, tmp_path: Path) -> None:
    settings = mail_settings(write_settings, tmp_path, smtp.port)
    now = [1_800_000_000.0]
    notifier = EmailNotifier(settings, clock=lambda: now[0], background=False)
    notifier.alert(notify.STREAM_FAILING, "HTTP 503")
    assert len(smtp.wait_for(1)) == 1
    Outbox(settings.state_dir).put(notify.SEND_FAILING, "queued earlier", "x\n", now[0])
    now[0] += 60
    notifier.alert(notify.STREAM_FAILING, "HTTP 503 again")  # held back by the hourly rule
    assert [m["Subject"] for m in smtp.wait_for(2)] == [
        "[collector srv1] stream_failing: HTTP 503", "queued earlier"]


def test_queued_mails_older_than_the_limit_are_dropped_and_counted(
        smtp: SmtpDouble, write_settings: SettingsWriter, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    settings = mail_settings(write_settings, tmp_path, smtp.port)
    now = 1_800_000_000.0
    outbox = Outbox(settings.state_dir)
    outbox.put(notify.SEND_FAILING, "ancient 1", "x\n", now - OUTBOX_MAX_AGE - 10)
    outbox.put(notify.SEND_FAILING, "ancient 2", "x\n", now - OUTBOX_MAX_AGE - 5)
    outbox.put(notify.SEND_FAILING, "recent", "x\n", now - 60)
    EmailNotifier(settings, clock=lambda: now, background=False).deliver_pending()
    assert [m["Subject"] for m in smtp.wait_for(1)] == ["recent"]
    assert "dropped 2 queued alert mail(s) older than 7 days" in caplog.text
    assert len(outbox) == 0


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"),
                    reason="mounting a small tmpfs needs root")
def test_disk_full_alert_is_mailed_when_the_disk_really_is_full(
        smtp: SmtpDouble, write_settings: SettingsWriter, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """The alert's usual cause: neither the hourly-rule ledger nor the outbox can be written
    (both raise DiskFullError), and the mail still goes out, from memory."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], check=True)
    try:
        write_mail_credentials(tmp_path / "mailkeys", smtp.port)
        settings = load_settings(write_settings(
            notifications="True", email_credentials_dst=str(tmp_path / "mailkeys"),
            data_storage_dst=str(disk / "data")))
        settings.state_dir.mkdir(parents=True)
        with contextlib.suppress(OSError), (disk / "filler").open("wb") as filler:
            while True:
                filler.write(b"\0" * 4096)
                filler.flush()
        notifier = EmailNotifier(settings, background=False)
        notifier.alert(notify.DISK_FULL, "no space left")
        assert [m["Subject"] for m in smtp.wait_for(1)] == [
            "[collector srv1] disk_full: no space left"]
        assert "rate-limiting in memory only" in caplog.text
        notifier.alert(notify.DISK_FULL, "still no space")  # the hourly rule still holds
        time.sleep(0.5)
        assert len(smtp.messages) == 1
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_alert_is_mailed_from_memory_when_the_outbox_cannot_be_written(
        smtp: SmtpDouble, write_settings: SettingsWriter, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    settings = mail_settings(write_settings, tmp_path, smtp.port)

    def disk_full(*args: object) -> Path:
        raise DiskFullError("disk full while writing the outbox")

    monkeypatch.setattr(Outbox, "put", disk_full)
    EmailNotifier(settings, background=False).alert(notify.DISK_FULL, "no space left")
    assert [m["Subject"] for m in smtp.wait_for(1)] == ["[collector srv1] disk_full: no space left"]
    assert "alert disk_full not queued (disk full while writing the outbox)" in caplog.text


@pytest.mark.usefixtures("cli_logging")
def test_upload_command_mails_the_queue(
        tls_files: tuple[Path, Path], write_settings: SettingsWriter, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`collector upload` (the main's hourly cron job) delivers queued alerts, here with OSF
    upload off so that the command has nothing else to do."""
    port = free_port()
    write_mail_credentials(tmp_path / "mailkeys", port)
    settings = load_settings(write_settings(notifications="True", osf_enabled="False",
                                            email_credentials_dst=str(tmp_path / "mailkeys")))
    EmailNotifier(settings, background=False).alert(notify.PROCESS_FAILING, "merge failed")
    assert len(Outbox(settings.state_dir)) == 1
    with smtp_double(tls_files, port=port) as smtp:
        assert cli.main(["--settings", str(settings.path), "upload"]) == 0
        [message] = smtp.wait_for(1)
    assert message["Subject"] == "[collector srv1] process_failing: merge failed"
    assert len(Outbox(settings.state_dir)) == 0
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.usefixtures("cli_logging")
def test_send_command_mails_the_queue_even_when_the_push_fails(
        tls_files: tuple[Path, Path], write_settings: SettingsWriter, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`collector send` (a secondary's hourly cron job) delivers queued alerts, also when
    the main cannot be reached (here: nothing listens on its SSH port)."""
    port, main_port = free_port(), free_port()
    write_mail_credentials(tmp_path / "mailkeys", port)
    settings = load_settings(write_settings(notifications="True", main_port=str(main_port),
                                            email_credentials_dst=str(tmp_path / "mailkeys")))
    EmailNotifier(settings, background=False).alert(notify.STREAM_CRASHED, "killed")
    chunk = settings.data_storage_dst / "2026-02-03" / "10" / "srv1_2026-02-03_10-00.jsonl"
    chunk.parent.mkdir(parents=True)
    chunk.write_text('{"data": {"id": "1"}}\n')
    with smtp_double(tls_files, port=port) as smtp:
        assert cli.main(["--settings", str(settings.path), "send"]) == 1
        [message] = smtp.wait_for(1)
    assert message["Subject"] == "[collector srv1] stream_crashed: killed"
    assert len(Outbox(settings.state_dir)) == 0
    err = capsys.readouterr().err
    assert error_lines(err, "send") == [
        f"collector send: error: cannot push to the main incoming@127.0.0.1:{main_port}: "
        "connection refused (is sshd running on the main, and is main_port right?); "
        "1 chunks kept here"]
    assert "Traceback" not in err
    assert chunk.exists()


def test_stream_command_succeeds_with_mail_server_down(
        write_settings: SettingsWriter, tmp_path: Path) -> None:
    """`collector stream` with no API and no mail server: alerts fail in the log, the
    command itself starts, stops cleanly on SIGTERM and exits 0."""
    write_mail_credentials(tmp_path / "mailkeys", free_port())
    settings_path = write_settings(notifications="True",
                                   email_credentials_dst=str(tmp_path / "mailkeys"))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "collector", "--settings", str(settings_path), "stream"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        started = (tmp_path / "data" / ".collector")
        while time.monotonic() < deadline and not any(started.glob("*")):
            time.sleep(0.1)
        time.sleep(1.0)  # let the started alert go through its (failing) delivery
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert "alert stream_started not emailed: cannot send through 127.0.0.1:" in stderr
    assert "Connection refused" in stderr
    assert "Traceback" not in stderr
    assert SMTP_PASSWORD not in stderr and BEARER_TOKEN not in stderr


def test_wrong_password_is_logged_without_the_password(
        smtp: SmtpDouble, write_settings: SettingsWriter, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    wrong = "Wrong-Pa55word-0000"
    settings = mail_settings(write_settings, tmp_path, smtp.port, password=wrong)
    caplog.set_level(logging.DEBUG)
    EmailNotifier(settings, background=False).alert(notify.STREAM_STOPPED, "stream stopped")
    assert "alert stream_stopped not emailed: cannot send through 127.0.0.1:" in caplog.text
    assert "login refused (535 5.7.8 Authentication credentials invalid); check user and " \
           "password" in caplog.text
    assert smtp.logins and not any(ok for _, ok in smtp.logins)
    assert smtp.messages == []
    assert wrong not in caplog.text and SMTP_PASSWORD not in caplog.text


def test_notifications_off_sends_nothing(
        smtp: SmtpDouble, write_settings: SettingsWriter, tmp_path: Path) -> None:
    settings = mail_settings(write_settings, tmp_path, smtp.port, notifications=False)
    notifier = make_notifier(settings)
    assert isinstance(notifier, LogNotifier)
    notifier.alert(notify.STREAM_STALLED, "no tweet for 300 s")
    assert smtp.wait_for(1, timeout=0.5) == []
    assert not (settings.state_dir / ALERT_STATE_FILE).exists()


def test_secrets_in_an_alert_text_are_blanked(
        smtp: SmtpDouble, write_settings: SettingsWriter, tmp_path: Path) -> None:
    settings = mail_settings(write_settings, tmp_path, smtp.port)
    EmailNotifier(settings, background=False).alert(
        notify.STREAM_FAILING, f"HTTP 401 with token {BEARER_TOKEN}",
        f"debug dump: password={SMTP_PASSWORD}")
    [message] = smtp.wait_for(1)
    text = message.as_string()
    assert BEARER_TOKEN not in text and SMTP_PASSWORD not in text
    assert "[redacted]" in message["Subject"] and "[redacted]" in message.get_content()


def test_missing_credentials_file_is_logged(
        write_settings: SettingsWriter, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "nokeys").mkdir()
    settings = load_settings(write_settings(notifications="True",
                                            email_credentials_dst=str(tmp_path / "nokeys")))
    EmailNotifier(settings, background=False).alert(notify.DISK_FULL, "disk full")
    assert "alert disk_full not emailed" in caplog.text
    assert "email_credentials.txt does not exist" in caplog.text


def test_starttls_off_talks_plain_smtp(tmp_path: Path) -> None:
    """`starttls=False` for a relay without TLS (e.g. a local MTA): the mail goes in clear."""
    with SmtpDouble() as plain:
        credentials = MailCredentials("127.0.0.1", plain.port, "", "", "a@example.org",
                                      ("b@example.org",), starttls=False)
        send_mail(credentials, "plain", "hello", timeout=10)
        [message] = plain.wait_for(1)
    assert message["Subject"] == "plain"
    assert plain.envelopes[0][2] is False


def test_starttls_required_but_not_offered_fails(tmp_path: Path) -> None:
    """With the default `starttls=True` the client refuses to log in over plain text."""
    import smtplib

    with SmtpDouble() as plain:
        credentials = MailCredentials("127.0.0.1", plain.port, "u", "p", "a@example.org",
                                      ("b@example.org",))
        with pytest.raises(smtplib.SMTPNotSupportedError):
            send_mail(credentials, "x", "y", timeout=10)
        assert plain.messages == []


def test_untrusted_certificate_is_refused(
        smtp: SmtpDouble, monkeypatch: pytest.MonkeyPatch, write_settings: SettingsWriter,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Without the test CA the system trust store rejects the self-signed certificate."""
    monkeypatch.delenv(CAFILE_ENV)
    settings = mail_settings(write_settings, tmp_path, smtp.port)
    EmailNotifier(settings, background=False).alert(notify.STREAM_STARTED, "started")
    assert "TLS failed: CERTIFICATE_VERIFY_FAILED" in caplog.text
    assert smtp.messages == []


def test_silent_mail_server_times_out_without_holding_the_caller(
        write_settings: SettingsWriter, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """A server that accepts TCP and never greets: `alert` returns at once (delivery runs on
    a worker thread) and the worker gives up after its timeout with one log line."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        settings = mail_settings(write_settings, tmp_path, silent.getsockname()[1])
        notifier = EmailNotifier(settings, timeout=0.5)
        started = time.monotonic()
        notifier.alert(notify.STREAM_STALLED, "no tweet for 300 s")
        assert time.monotonic() - started < 0.3
        notifier.wait(10)
    assert "alert stream_stalled not emailed: cannot send through 127.0.0.1:" in caplog.text
    assert "timed out" in caplog.text
