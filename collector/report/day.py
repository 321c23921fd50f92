"""The day report `YYYY-mm-dd_report.txt`: one tab-separated line per processed hour.

Columns: `hour`, one per server id in `servers` order (distinct tweets that server captured),
`total` (distinct tweets), `diff` (tweets not captured by every server), `diff %` (diff as a
percentage of total, two decimals), then the merge's own counts: `duplicates` (lines whose
tweet id was already merged, within or across servers, or received in the previous hour
already), `chunks`, one column per skip reason (`not_json`, `torn_line`, `no_data`,
`bad_tweet`), and `quarantined`: entries found in this hour's chunk folders (any server)
that were no chunk files (a symlink, FIFO, socket, device, hard link, oversized or misnamed
file) and were moved to the quarantine instead of being read. An entry that lands in an
hour's folder after the hour was processed updates that cell of its line in place.

The file is read by column name, so a report written before a server joined the fleet is
still read, and rewritten with today's columns (missing cells empty) when an hour of that day
is reprocessed. `collector report` reuses `read_report`.

A server that left `servers` (a destroyed main, a retired secondary) keeps a column after
those of `servers`, sorted, for as long as some line of the day has a count for it: its
chunks were merged into those hours (`collector.process` merges a departed server's chunks
until retention removes them). Lines of hours it has no chunks in leave that cell empty, and
a day it has no count in has no column for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from collector.fsutil import write_bytes_atomic


def report_name(day: str) -> str:
    return f"{day}_report.txt"


def report_columns(servers: Sequence[str], extra: Sequence[str]) -> tuple[str, ...]:
    """`extra`: the source's own counts after `diff %` (`Source.report_columns`)."""
    return ("hour", *servers, "total", "diff", "diff %", *extra)


def diff_percent(diff: int, total: int) -> str:
    return f"{100.0 * diff / total:.2f}" if total else "0.00"


@dataclass(frozen=True)
class HourLine:
    """The report line of one hour, as numbers (the file holds their text)."""

    hour: str
    per_server: Mapping[str, int]
    total: int
    diff: int
    extra: Mapping[str, int] = field(default_factory=dict)

    def cells(self, columns: Sequence[str]) -> dict[str, str]:
        values = {"hour": self.hour, "total": str(self.total), "diff": str(self.diff),
                  "diff %": diff_percent(self.diff, self.total)}
        values.update({server: str(n) for server, n in self.per_server.items()})
        values.update({name: str(n) for name, n in self.extra.items()})
        return {column: values.get(column, "") for column in columns}


@dataclass
class DayReport:
    """A day report as read from disk: its header and one cell mapping per hour line."""

    columns: tuple[str, ...]
    rows: dict[str, dict[str, str]]

    def hours(self) -> list[str]:
        """Hour labels in hour order (`02` < `02b` < `03`)."""
        return sorted(self.rows)


def parse_report(text: str) -> DayReport:
    """Parse the tab-separated text; lines with the wrong number of cells are dropped."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return DayReport((), {})
    columns = tuple(lines[0].split("\t"))
    rows: dict[str, dict[str, str]] = {}
    for line in lines[1:]:
        cells = line.split("\t")
        if len(cells) == len(columns):
            row = dict(zip(columns, cells, strict=True))
            rows[row.get("hour", "")] = row
    return DayReport(columns, rows)


def read_report(path: Path) -> DayReport:
    """The report at `path`, or an empty one when the day has none yet."""
    try:
        return parse_report(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return DayReport((), {})


def render_report(report: DayReport) -> str:
    out = ["\t".join(report.columns)]
    for hour in report.hours():
        row = report.rows[hour]
        out.append("\t".join(row.get(column, "") for column in report.columns))
    return "\n".join(out) + "\n"


def server_columns(report: DayReport, servers: Sequence[str],
                   line: HourLine | None = None) -> tuple[str, ...]:
    """The day's server columns (pure): `servers`, then, sorted, every other server that
    has a count in `line` or in a line of `report` (other than `line`'s hour, which `line`
    replaces). Server columns of a report are those between `hour` and `total`."""
    old = report.columns
    earlier = old[1:old.index("total")] if old[:1] == ("hour",) and "total" in old else ()
    replaced = line.hour if line is not None else None
    others = {server for server in earlier if server not in servers and any(
        row.get(server, "") for hour, row in report.rows.items() if hour != replaced)}
    if line is not None:
        others |= {server for server in line.per_server if server not in servers}
    return (*servers, *sorted(others))


def with_hour(report: DayReport, line: HourLine, servers: Sequence[str],
              extra: Sequence[str]) -> DayReport:
    """The report with `line` added or replacing the line of the same hour (pure)."""
    columns = report_columns(server_columns(report, servers, line), extra)
    rows = {hour: {column: row.get(column, "") for column in columns}
            for hour, row in report.rows.items()}
    rows[line.hour] = line.cells(columns)
    return DayReport(columns, rows)


def with_cells(report: DayReport, hour: str, counts: Mapping[str, int],
               servers: Sequence[str], extra: Sequence[str]) -> DayReport | None:
    """The report with some counts of an existing hour line replaced, in today's columns;
    None when the report has no line for `hour` (pure)."""
    if hour not in report.rows:
        return None
    columns = report_columns(server_columns(report, servers), extra)
    rows = {label: {column: row.get(column, "") for column in columns}
            for label, row in report.rows.items()}
    rows[hour].update({name: str(n) for name, n in counts.items() if name in columns})
    return DayReport(columns, rows)


def update_report_cells(folder: Path, day: str, hour: str, counts: Mapping[str, int],
                        servers: Sequence[str], extra: Sequence[str]) -> bool:
    """Replace counts of an hour line already in the day's report, atomically; False (and
    nothing written) when the hour has no line yet: it gets its counts when processed."""
    path = folder / report_name(day)
    before = read_report(path)
    report = with_cells(before, hour, counts, servers, extra)
    if report is None:
        return False
    text = render_report(report)
    if text != render_report(before):  # unchanged: no new version to upload
        write_bytes_atomic(path, text.encode("utf-8"))
    return True


def update_report(folder: Path, day: str, line: HourLine, servers: Sequence[str],
                  extra: Sequence[str]) -> Path:
    """Replace (or add) the hour's line in the day's report file, atomically."""
    path = folder / report_name(day)
    report = with_hour(read_report(path), line, servers, extra)
    write_bytes_atomic(path, render_report(report).encode("utf-8"))
    return path
