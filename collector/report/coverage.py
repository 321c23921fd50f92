"""Per-minute tweet counts per server, and the day's coverage plot drawn from them.

The hourly merge already parses every line, so it records, per processed hour, how many
distinct tweets each server captured in each minute of the hour:
`data_vault_dst/YYYY-mm-dd/.coverage/YYYY-mm-dd_HH.json` (hidden folder, so the upload and
anything listing the day's outputs ignore it). The daily report plots these counts: a
minute in which a server captured nothing is a gap in that server's capture, which is what
the redundancy is there to cover, so gaps are drawn as a band of their own per server.

Minutes are minutes of the labelled hour (`HourKey`), so the repeated hour of a fall-back
day (`02b`) has its own file and is placed after `02` on the time axis, which counts real
elapsed hours since local midnight (23, 24 or 25 on a day).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from collector.fsutil import write_bytes_atomic
from collector.layout import HourKey, hour_bounds, hour_of

log = logging.getLogger("collector.coverage")

COVERAGE_DIR = ".coverage"
FORMAT_VERSION = 1

# server -> minute of the hour (0-59) -> distinct tweets
HourCounts = dict[str, dict[int, int]]


def coverage_path(vault_day_dir: Path, hour: HourKey) -> Path:
    return vault_day_dir / COVERAGE_DIR / f"{hour.file_prefix}.json"


def write_hour_coverage(vault_day_dir: Path, hour: HourKey,
                        counts: Mapping[str, Mapping[int, int]]) -> Path:
    """Store one hour's per-minute counts atomically and deterministically; return the path.

    Reprocessing an hour replaces its file. Minutes with no tweets may be left out.
    """
    for server, minutes in counts.items():
        for minute, count in minutes.items():
            if not 0 <= minute <= 59 or count < 0:
                raise ValueError(f"bad coverage for {server} in {hour}: minute {minute}, "
                                 f"count {count}")
    payload = {
        "version": FORMAT_VERSION,
        "hour": str(hour),
        "counts": {server: {str(m): c for m, c in sorted(minutes.items()) if c}
                   for server, minutes in sorted(counts.items())},
    }
    path = coverage_path(vault_day_dir, hour)
    text = json.dumps(payload, sort_keys=True, separators=(",", ":")) + "\n"
    write_bytes_atomic(path, text.encode())
    return path


def read_day_coverage(vault_day_dir: Path) -> dict[HourKey, HourCounts]:
    """Every recorded hour of the day; unreadable files are logged and skipped (a report
    with one hour missing from its plot beats no report)."""
    folder = vault_day_dir / COVERAGE_DIR
    if not folder.is_dir():
        return {}
    day: dict[HourKey, HourCounts] = {}
    for path in sorted(folder.glob("*.json")):
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            hour = HourKey.parse(payload["hour"])
            counts = {str(server): {int(m): int(c) for m, c in minutes.items()}
                      for server, minutes in payload["counts"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            log.warning("skipping unreadable coverage file %s: %s", path,
                        type(error).__name__)
            continue
        day[hour] = counts
    return day


def day_hours(day: str, zone: ZoneInfo) -> list[HourKey]:
    """The labelled hours of a local day in time order: 23, 24 or 25 of them."""
    start = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=zone).astimezone(UTC)
    hours: list[HourKey] = []
    moment = start
    while True:
        key = hour_of(moment, zone)
        if key.day != day:
            break
        if not hours or hours[-1] != key:
            hours.append(key)
        moment += timedelta(hours=1)
    return hours


@dataclass(frozen=True)
class ServerSeries:
    """One server's minutes over the day: x in hours since local midnight (elapsed time),
    count None where the hour was not processed, 0 where the server captured nothing."""

    server: str
    x_hours: list[float]
    counts: list[int | None]

    @property
    def gap_minutes(self) -> int:
        return sum(1 for c in self.counts if c == 0)

    @property
    def covered_minutes(self) -> int:
        return sum(1 for c in self.counts if c)


def day_series(day: str, coverage: Mapping[HourKey, HourCounts], servers: Sequence[str],
               zone: ZoneInfo) -> list[ServerSeries]:
    """The plot's data, in `servers` order: one point per minute of the day per server."""
    hours = day_hours(day, zone)
    midnight = hour_bounds(hours[0], zone)[0] if hours else datetime.now(UTC)
    series: list[ServerSeries] = []
    for server in servers:
        xs: list[float] = []
        counts: list[int | None] = []
        for hour in hours:
            offset = (hour_bounds(hour, zone)[0] - midnight).total_seconds() / 3600
            recorded = coverage.get(hour)
            minutes = recorded.get(server, {}) if recorded is not None else None
            for minute in range(60):
                xs.append(offset + minute / 60)
                counts.append(None if minutes is None else minutes.get(minute, 0))
        series.append(ServerSeries(server, xs, counts))
    return series


def gap_runs(series: ServerSeries) -> list[tuple[float, float]]:
    """Runs of consecutive gap minutes as (start, width) in hours, for `broken_barh`."""
    runs: list[tuple[float, float]] = []
    for x, count in zip(series.x_hours, series.counts, strict=True):
        if count != 0:
            continue
        if runs and abs(runs[-1][0] + runs[-1][1] - x) < 1e-9:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1 / 60)
        else:
            runs.append((x, 1 / 60))
    return runs


def plot_day(day: str, coverage: Mapping[HourKey, HourCounts], servers: Sequence[str],
             zone: ZoneInfo, record_name: str = "tweets") -> bytes:
    """The day's coverage plot as PNG bytes: records (`record_name`) per minute per server
    (top) and each server's gaps as red bars (bottom), time of day in `zone` on the x axis."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    from matplotlib.figure import Figure

    hours = day_hours(day, zone)
    series = day_series(day, coverage, servers, zone)
    figure = Figure(figsize=(14, 4 + 0.35 * len(servers)), dpi=100)
    grid = figure.add_gridspec(2, 1, height_ratios=[4, 0.5 + 0.4 * len(servers)], hspace=0.08)
    counts_axis = figure.add_subplot(grid[0])
    gaps_axis = figure.add_subplot(grid[1], sharex=counts_axis)
    for s in series:
        values = [float("nan") if c is None else float(c) for c in s.counts]
        counts_axis.step(s.x_hours, values, where="post", linewidth=0.8,
                         label=f"{s.server} ({s.gap_minutes} gap min)")
    counts_axis.set_ylabel(f"{record_name} per minute")
    counts_axis.set_title(f"Stream coverage {day} ({zone.key})")
    counts_axis.grid(True, alpha=0.3)
    counts_axis.set_ylim(bottom=0)
    if series:
        counts_axis.legend(loc="upper right", fontsize="small")
    unprocessed = [h for h in hours if h not in coverage]
    for index, s in enumerate(series):
        row = len(series) - 1 - index
        gaps_axis.broken_barh(gap_runs(s), (row + 0.1, 0.8), facecolors="tab:red")
        # Hours not processed yet are grey: unknown, which is not the same as a gap.
        starts = [s.x_hours[hours.index(h) * 60] for h in unprocessed]
        gaps_axis.broken_barh([(x, 1.0) for x in starts], (row + 0.1, 0.8),
                              facecolors="lightgrey")
    gaps_axis.set_yticks([len(series) - 1 - i + 0.5 for i in range(len(series))],
                         [s.server for s in series])
    gaps_axis.set_ylim(0, max(len(series), 1))
    gaps_axis.set_xlabel("red: minutes without a tweet; grey: hour not processed")
    span = float(len(hours))
    gaps_axis.set_xlim(0, span)
    ticks = [float(i) for i in range(len(hours))]
    gaps_axis.set_xticks(ticks, [h.hour for h in hours], fontsize="small")
    counts_axis.tick_params(labelbottom=False)
    buffer = io.BytesIO()
    # No timestamp or version in the metadata: the same counts give the same bytes.
    figure.savefig(buffer, format="png", metadata={"Software": None}, bbox_inches="tight")
    return buffer.getvalue()
