"""`collector report --day D [--send]`: the real CLI, the real day report and coverage
files, and a real SMTP server on loopback (STARTTLS and login required)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from collector.alerts.smtp import CAFILE_ENV
from collector.report.coverage import day_hours, write_hour_coverage
from collector.report.day import HourLine, update_report
from collector.report.summary import day_totals, render_table, yesterday
from collector.sources.x import X_SOURCE
from tests.conftest import BEARER_TOKEN, SettingsWriter
from tests.doubles.smtp import SmtpDouble
from tests.integration.helpers import (
    REPO_ROOT,
    SMTP_PASSWORD,
    free_port,
    write_mail_credentials,
)

REPORT_EXTRA = X_SOURCE.report_columns  # the day report's columns after diff %

pytestmark = pytest.mark.integration

DAY = "2026-10-25"  # a fall-back day: 25 hours, 02 and 02b
CET = ZoneInfo("CET")
OSF_TOKEN = "osfpat-Report-Secret-0123456789"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class MainSite:
    """A main server's settings, credentials and a vault day with report and coverage."""

    def __init__(self, root: Path, write_settings: SettingsWriter, smtp_port: int) -> None:
        self.vault = root / "vault"
        osf_keys = root / "osfkeys"
        osf_keys.mkdir()
        token = osf_keys / "osf_credentials.txt"
        token.write_text(f"token={OSF_TOKEN}\n")
        token.chmod(0o600)
        write_mail_credentials(root / "mailkeys", smtp_port)
        self.settings_path = write_settings(
            role="main", main_host=None, main_user=None, data_vault_dst=str(self.vault),
            incoming_dst=str(root / "incoming"), osf_enabled="False",
            OSF_key_dst=str(osf_keys), notifications="True",
            email_credentials_dst=str(root / "mailkeys"))

    def fill_day(self) -> None:
        """Hours 00-03 of DAY processed; srv2 missed 02b:00-14, srv1 missed 03:30-59."""
        day_dir = self.vault / DAY
        for hour in day_hours(DAY, CET)[:5]:
            srv1 = {m: 20 for m in range(60) if not (hour.hour == "03" and m >= 30)}
            srv2 = {m: 19 for m in range(60) if not (hour.hour == "02b" and m < 15)}
            write_hour_coverage(day_dir, hour, {"srv1": srv1, "srv2": srv2})
            per_server = {"srv1": sum(srv1.values()), "srv2": sum(srv2.values())}
            total = max(per_server.values()) + 10
            line = HourLine(hour.hour, per_server, total, diff=total - min(per_server.values()),
                            extra={"duplicates": 3, "chunks": 120})
            update_report(day_dir, DAY, line, ["srv1", "srv2"], REPORT_EXTRA)

    def run(self, *args: str, cafile: Path | None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        env.pop(CAFILE_ENV, None)
        if cafile is not None:
            env[CAFILE_ENV] = str(cafile)
        return subprocess.run(
            [sys.executable, "-m", "collector", "--settings", str(self.settings_path),
             "report", *args],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)


def no_secret_in(*texts: str) -> None:
    for text in texts:
        for secret in (SMTP_PASSWORD, BEARER_TOKEN, OSF_TOKEN):
            assert secret not in text


def attachments(message: EmailMessage) -> list[EmailMessage]:
    return [part for part in message.iter_attachments() if isinstance(part, EmailMessage)]


def test_report_send_delivers_table_and_png(
        smtp: SmtpDouble, tls_files: tuple[Path, Path], write_settings: SettingsWriter,
        tmp_path: Path) -> None:
    import matplotlib.image

    site = MainSite(tmp_path, write_settings, smtp.port)
    site.fill_day()
    result = site.run("--day", DAY, "--send", cafile=tls_files[0])
    assert result.returncode == 0, result.stderr

    plot_path = site.vault / DAY / f"{DAY}_coverage.png"
    assert f"plot: {plot_path}" in result.stdout
    assert "sent to team@example.org, oncall@example.org" in result.stdout
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("hour"))
    assert header.split()[:5] == ["hour", "srv1", "srv2", "total", "diff"]
    hours = [line.split()[0] for line in lines if line[:2] in ("00", "01", "02", "03")]
    assert hours == ["00", "01", "02", "02b", "03"]
    day_line = next(line for line in lines if line.startswith("day"))
    # srv1: 5 hours x 1200 minus 30 x 20; srv2: 5 x 1140 minus 15 x 19.
    assert day_line.split()[1:3] == [str(6000 - 600), str(5700 - 285)]
    assert "srv1  270 minute(s) with tweets, 30 gap minute(s)" in result.stdout
    assert "srv2  285 minute(s) with tweets, 15 gap minute(s)" in result.stdout

    [message] = smtp.wait_for(1)
    assert message["Subject"] == f"[collector srv1] daily report {DAY}"
    body = message.get_body(preferencelist=("plain",))
    assert isinstance(body, EmailMessage)
    body_text = body.get_content()
    assert header in body_text and day_line in body_text
    [png_part] = attachments(message)
    assert png_part.get_content_type() == "image/png"
    assert png_part.get_filename() == f"{DAY}_coverage.png"
    png = png_part.get_content()
    assert isinstance(png, bytes)
    assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000
    assert png == plot_path.read_bytes()
    pixels = matplotlib.image.imread(io.BytesIO(png), format="png")
    assert pixels.shape[1] > 800 and pixels.std() > 0.05
    assert smtp.envelopes[0][2] is True  # delivered over STARTTLS
    no_secret_in(result.stdout, result.stderr, message.as_string())


def test_report_without_send_prints_and_mails_nothing(
        smtp: SmtpDouble, write_settings: SettingsWriter, tmp_path: Path) -> None:
    site = MainSite(tmp_path, write_settings, smtp.port)
    site.fill_day()
    result = site.run("--day", DAY, cafile=None)
    assert result.returncode == 0, result.stderr
    assert "Collector report for 2026-10-25" in result.stdout
    assert (site.vault / DAY / f"{DAY}_coverage.png").read_bytes().startswith(PNG_SIGNATURE)
    assert smtp.wait_for(1, timeout=0.3) == []


def test_missing_report_is_one_line_error(
        write_settings: SettingsWriter, tmp_path: Path) -> None:
    site = MainSite(tmp_path, write_settings, free_port())
    result = site.run("--day", "2026-11-20", cafile=None)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"collector report: error: no report for 2026-11-20: "
        f"{site.vault}/2026-11-20/2026-11-20_report.txt does not exist "
        "(no hour of that day has been processed)"]


def test_send_with_mail_server_down_fails_in_one_line(
        write_settings: SettingsWriter, tmp_path: Path) -> None:
    port = free_port()
    site = MainSite(tmp_path, write_settings, port)
    site.fill_day()
    result = site.run("--day", DAY, "--send", cafile=None)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        f"collector report: error: cannot send mail through 127.0.0.1:{port}: "
        "Connection refused")
    assert "Traceback" not in result.stderr
    no_secret_in(result.stdout, result.stderr)


def test_send_with_wrong_password_names_no_password(
        smtp: SmtpDouble, tls_files: tuple[Path, Path], write_settings: SettingsWriter,
        tmp_path: Path) -> None:
    site = MainSite(tmp_path, write_settings, smtp.port)
    write_mail_credentials(tmp_path / "mailkeys", smtp.port, password="Not-The-Pa55word")
    site.fill_day()
    result = site.run("--day", DAY, "--send", cafile=tls_files[0])
    assert result.returncode != 0
    assert "login refused (535" in result.stderr
    assert "Not-The-Pa55word" not in result.stderr + result.stdout
    assert smtp.messages == []


def test_bad_day_is_refused(write_settings: SettingsWriter, tmp_path: Path) -> None:
    site = MainSite(tmp_path, write_settings, free_port())
    result = site.run("--day", "2026-13-45", cafile=None)
    assert result.returncode == 2
    assert "is not a day like 2026-11-27" in result.stderr


def test_default_day_is_yesterday_in_the_settings_zone() -> None:
    # 00:30 CET on 1 Dec is still 30 Nov in UTC: yesterday is 30 Nov in CET.
    now = datetime(2026, 11, 30, 23, 30, tzinfo=ZoneInfo("UTC"))
    assert yesterday(CET, now) == "2026-11-30"
    assert yesterday(ZoneInfo("UTC"), now) == "2026-11-29"


def test_table_aligns_numbers_and_sums_the_day() -> None:
    columns = ("hour", "srv1", "srv2", "total", "diff", "diff %", "chunks")
    rows = [
        {"hour": "00", "srv1": "1000", "srv2": "990", "total": "1005", "diff": "20",
         "diff %": "1.99", "chunks": "120"},
        {"hour": "02b", "srv1": "7", "srv2": "", "total": "7", "diff": "7",
         "diff %": "100.00", "chunks": "1"},
    ]
    totals = day_totals(columns, rows)
    assert totals == {"hour": "day", "srv1": "1007", "srv2": "990", "total": "1012",
                      "diff": "27", "diff %": "2.67", "chunks": "121"}
    table = render_table(columns, [*rows, totals]).splitlines()
    assert table[0] == "hour  srv1  srv2  total  diff  diff %  chunks"
    assert table[2] == "00    1000   990   1005    20    1.99     120"
    assert table[3] == "02b      7            7     7  100.00       1"
    assert table[4].startswith("----")
    assert table[5] == "day   1007   990   1012    27    2.67     121"
