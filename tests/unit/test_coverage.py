"""Per-minute coverage files, the plot's data (DST days included) and the PNG itself."""

from __future__ import annotations

import io
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from collector.layout import HourKey
from collector.report.coverage import (
    COVERAGE_DIR,
    coverage_path,
    day_hours,
    day_series,
    gap_runs,
    plot_day,
    read_day_coverage,
    write_hour_coverage,
)

CET = ZoneInfo("CET")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    hour = HourKey("2026-11-26", "14")
    path = write_hour_coverage(tmp_path, hour, {"srv1": {0: 12, 1: 0, 59: 3}, "srv2": {5: 7}})
    assert path == tmp_path / COVERAGE_DIR / "2026-11-26_14.json"
    # Zero minutes are not stored: absent means no tweet.
    assert read_day_coverage(tmp_path) == {hour: {"srv1": {0: 12, 59: 3}, "srv2": {5: 7}}}
    assert not list(path.parent.glob("*.tmp"))


def test_rewrite_replaces_and_is_deterministic(tmp_path: Path) -> None:
    hour = HourKey("2026-11-26", "02")
    first = write_hour_coverage(tmp_path, hour, {"srv2": {3: 1}, "srv1": {4: 2}}).read_bytes()
    again = write_hour_coverage(tmp_path, hour, {"srv1": {4: 2}, "srv2": {3: 1}}).read_bytes()
    assert first == again
    write_hour_coverage(tmp_path, hour, {"srv1": {4: 9}})
    assert read_day_coverage(tmp_path)[hour] == {"srv1": {4: 9}}


@pytest.mark.parametrize("minute,count", [(60, 1), (-1, 1), (0, -5)])
def test_impossible_counts_are_refused(tmp_path: Path, minute: int, count: int) -> None:
    with pytest.raises(ValueError):
        write_hour_coverage(tmp_path, HourKey("2026-11-26", "02"), {"srv1": {minute: count}})


def test_unreadable_file_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = HourKey("2026-11-26", "01")
    write_hour_coverage(tmp_path, good, {"srv1": {0: 1}})
    coverage_path(tmp_path, HourKey("2026-11-26", "02")).write_text("{not json")
    assert read_day_coverage(tmp_path) == {good: {"srv1": {0: 1}}}
    assert "skipping unreadable coverage file" in caplog.text


def test_missing_folder_is_empty(tmp_path: Path) -> None:
    assert read_day_coverage(tmp_path / "nothing") == {}


def test_day_hours_follow_dst() -> None:
    fall_back = [h.hour for h in day_hours("2026-10-25", CET)]
    assert len(fall_back) == 25
    assert fall_back[:5] == ["00", "01", "02", "02b", "03"]
    spring = [h.hour for h in day_hours("2026-03-29", CET)]
    assert len(spring) == 23 and "02" not in spring
    assert len(day_hours("2026-11-26", CET)) == 24


def test_series_places_02b_after_02_and_tells_gaps_from_unprocessed() -> None:
    day = "2026-10-25"
    coverage = {
        HourKey(day, "02"): {"srv1": {m: 5 for m in range(60)}, "srv2": {}},
        HourKey(day, "02b"): {"srv1": {m: 6 for m in range(30)},
                              "srv2": {m: 4 for m in range(60)}},
    }
    srv1, srv2 = day_series(day, coverage, ["srv1", "srv2"], CET)
    assert (srv1.server, srv2.server) == ("srv1", "srv2")
    assert len(srv1.x_hours) == 25 * 60
    index_02, index_02b = 2 * 60, 3 * 60
    assert srv1.x_hours[index_02] == 2.0 and srv1.x_hours[index_02b] == 3.0
    assert srv1.counts[index_02] == 5 and srv1.counts[index_02b] == 6
    assert srv1.counts[index_02b + 30] == 0  # processed, nothing captured: a gap
    assert srv1.counts[0] is None  # 00 not processed: unknown, not a gap
    assert (srv1.covered_minutes, srv1.gap_minutes) == (90, 30)
    assert (srv2.covered_minutes, srv2.gap_minutes) == (60, 60)


def test_gap_runs_merge_consecutive_minutes() -> None:
    day = "2026-11-26"
    minutes = {m: 1 for m in range(60) if not (10 <= m < 13 or m == 40)}
    [series] = day_series(day, {HourKey(day, "05"): {"srv1": minutes}}, ["srv1"], CET)
    runs = gap_runs(series)
    assert len(runs) == 2
    assert runs[0][0] == pytest.approx(5 + 10 / 60) and runs[0][1] == pytest.approx(3 / 60)
    assert runs[1][0] == pytest.approx(5 + 40 / 60) and runs[1][1] == pytest.approx(1 / 60)


def test_plot_is_a_real_png_and_deterministic() -> None:
    import matplotlib.image

    day = "2026-10-25"
    coverage = {HourKey(day, h.hour): {"srv1": {m: 20 + m % 7 for m in range(60)},
                                       "srv2": {m: 19 for m in range(0, 60, 2)}}
                for h in day_hours(day, CET)[:6]}
    png = plot_day(day, coverage, ["srv1", "srv2"], CET)
    assert png.startswith(PNG_SIGNATURE)
    assert len(png) > 10_000
    assert plot_day(day, coverage, ["srv1", "srv2"], CET) == png
    pixels = matplotlib.image.imread(io.BytesIO(png), format="png")
    height, width = pixels.shape[:2]
    assert width > 800 and height > 300
    assert pixels.std() > 0.05  # not a blank canvas


def test_plot_of_a_day_without_counts_still_renders() -> None:
    assert plot_day("2026-11-26", {}, ["srv1"], CET).startswith(PNG_SIGNATURE)
