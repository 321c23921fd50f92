"""`collector report`: the day's report as an aligned text table plus the coverage plot.

The table comes from the day's `YYYY-mm-dd_report.txt` (read with
`collector.report.day.read_report`, so it follows whatever columns the merge writes), with
a `day` line of sums at the bottom; the plot comes from the per-minute counts the merge
records (`collector.report.coverage`). The cron entry at 02:00 sends yesterday's report, so the day
defaults to yesterday in `settings.timezone`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from collector.alerts.smtp import Attachment, send_or_raise
from collector.errors import CollectorError, SettingsError
from collector.fsutil import write_bytes_atomic
from collector.report.coverage import day_series, plot_day, read_day_coverage
from collector.report.day import diff_percent, read_report, report_name
from collector.settings import Settings
from collector.sources import source_for

log = logging.getLogger("collector.report")

# Columns that are not counts, so they are neither right-aligned as numbers nor summed.
_NOT_SUMMED = ("hour", "diff %")


@dataclass(frozen=True)
class RenderedReport:
    """One day's report, ready to print or mail (named so as not to clash with
    `daily_report.DayReport`, the file's parsed content)."""

    day: str
    table: str  # aligned text table, with a `day` line of sums
    coverage_summary: str  # per server: minutes with tweets and gap minutes
    png: bytes

    @property
    def text(self) -> str:
        return f"Collector report for {self.day}\n\n{self.table}\n{self.coverage_summary}"

    @property
    def png_name(self) -> str:
        return f"{self.day}_coverage.png"


def yesterday(zone: ZoneInfo, now: datetime | None = None) -> str:
    """Yesterday's date in `zone` (what the 02:00 cron run reports on)."""
    today = (now or datetime.now(zone)).astimezone(zone).date()
    return (today - timedelta(days=1)).isoformat()


def parse_day(text: str) -> str:
    """Validate a `YYYY-mm-dd` day (the format of the vault's folders); ValueError otherwise."""
    try:
        if len(text) == 10:
            return date.fromisoformat(text).isoformat()
    except ValueError:
        pass
    raise ValueError(f"{text!r} is not a day like 2026-11-27")


def vault_day_dir(settings: Settings, day: str) -> Path:
    if settings.data_vault_dst is None:
        raise SettingsError(f"{settings.path}: data_vault_dst is not set "
                            "(the report runs on the main server)")
    return settings.data_vault_dst / day


def _is_count(value: str) -> bool:
    return value.strip().lstrip("-").isdigit()


def day_totals(columns: Sequence[str], rows: Sequence[Mapping[str, str]]) -> dict[str, str]:
    """The `day` line: sums of the count columns, `diff %` recomputed from the sums."""
    totals: dict[str, str] = {"hour": "day"}
    for column in columns:
        if column in _NOT_SUMMED:
            continue
        cells = [row.get(column, "") for row in rows]
        numbers = [int(c) for c in cells if _is_count(c)]
        totals[column] = str(sum(numbers)) if numbers else ""
    if "diff %" in columns and _is_count(totals.get("diff", "")) and _is_count(
            totals.get("total", "")):
        totals["diff %"] = diff_percent(int(totals["diff"]), int(totals["total"]))
    return totals


def render_table(columns: Sequence[str], rows: Sequence[Mapping[str, str]]) -> str:
    """An aligned text table: text left-aligned, numbers right-aligned, a rule under the
    header and above the last line (the `day` sums)."""
    cells = [list(columns)] + [[row.get(column, "") for column in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    numeric = [i > 0 for i in range(len(columns))]  # every column but `hour` holds numbers

    def line(values: Sequence[str]) -> str:
        parts = [value.rjust(width) if is_number else value.ljust(width)
                 for value, width, is_number in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * width for width in widths)
    out = [line(cells[0]), rule]
    out += [line(values) for values in cells[1:-1]]
    if len(cells) > 2:
        out.append(rule)
    if len(cells) > 1:
        out.append(line(cells[-1]))
    return "\n".join(out) + "\n"


def build_report(settings: Settings, day: str) -> RenderedReport:
    """The day's table and coverage plot; a `CollectorError` if the day has no report."""
    folder = vault_day_dir(settings, day)
    path = folder / report_name(day)
    if not path.is_file():
        raise CollectorError(f"no report for {day}: {path} does not exist "
                             "(no hour of that day has been processed)")
    try:
        parsed = read_report(path)
    except (OSError, UnicodeDecodeError) as error:
        raise CollectorError(f"cannot read {path}: {error}") from None
    if not parsed.columns:
        raise CollectorError(f"the report {path} is empty")
    rows = [parsed.rows[hour] for hour in parsed.hours()]
    table = render_table(parsed.columns, [*rows, day_totals(parsed.columns, rows)])
    coverage = read_day_coverage(folder)
    series = day_series(day, coverage, settings.servers, settings.timezone)
    record_name = source_for(settings).record_name
    if coverage:
        summary_lines = [f"Coverage over {len(coverage)} processed hour(s), per minute:"]
        width = max(len(s.server) for s in series)
        summary_lines += [f"  {s.server.ljust(width)}  {s.covered_minutes} minute(s) with "
                          f"{record_name}, {s.gap_minutes} gap minute(s)" for s in series]
    else:
        summary_lines = ["Coverage: no per-minute counts recorded for this day."]
    png = plot_day(day, coverage, settings.servers, settings.timezone, record_name)
    return RenderedReport(day, table, "\n".join(summary_lines) + "\n", png)


def write_plot(settings: Settings, report: RenderedReport) -> Path:
    """Save the PNG next to the day's report (atomically) and return its path."""
    path = vault_day_dir(settings, report.day) / report.png_name
    try:
        write_bytes_atomic(path, report.png)
    except OSError as error:
        raise CollectorError(f"cannot write {path}: {error.strerror}") from None
    return path


def send_report(settings: Settings, report: RenderedReport) -> str:
    """Mail the table (body) and the plot (attachment); return the recipients.

    Sending is this command's whole job, so unlike alerts a failure raises `RemoteError`.
    It is sent whatever `notifications` says: asking for `--send` is explicit.
    """
    subject = f"[collector {settings.server_id}] daily report {report.day}"
    attachment = Attachment(report.png_name, report.png, "image", "png")
    credentials = send_or_raise(settings, subject, report.text, [attachment])
    recipients = ", ".join(credentials.toaddrs)
    log.info("report for %s emailed to %s", report.day, recipients)
    return recipients
