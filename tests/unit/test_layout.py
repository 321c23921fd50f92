"""Chunk names and hour labels, including both clock-change days in CET."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from collector.layout import (
    HourKey,
    chunk_filename,
    chunk_path,
    hour_bounds,
    hour_of,
    iter_closed_chunks,
    parse_chunk,
)

CET = ZoneInfo("CET")


def test_chunk_name_is_local_minute() -> None:
    moment = datetime(2026, 11, 27, 20, 9, 31, tzinfo=UTC)
    assert chunk_filename("srv1", moment, CET, mid_minute=False) == "srv1_2026-11-27_21-09.jsonl"
    assert chunk_filename("srv1", moment, CET, mid_minute=True) == (
        "srv1_2026-11-27_21-09-31.jsonl"
    )
    assert chunk_path(Path("/d"), "srv1", moment, CET) == Path(
        "/d/2026-11-27/21/srv1_2026-11-27_21-09.jsonl"
    )


def test_fall_back_day_labels_the_repeated_hour_02b() -> None:
    # 2026-10-25: 03:00 CEST becomes 02:00 CET; 00:30 UTC is 02:30 CEST, 01:30 UTC 02:30 CET.
    first = datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    second = datetime(2026, 10, 25, 1, 30, tzinfo=UTC)
    assert str(hour_of(first, CET)) == "2026-10-25T02"
    assert str(hour_of(second, CET)) == "2026-10-25T02b"
    assert chunk_filename("s", second, CET, False) == "s_2026-10-25_02b-30.jsonl"
    assert hour_bounds(HourKey("2026-10-25", "02"), CET) == (
        datetime(2026, 10, 25, 0, 0, tzinfo=UTC), datetime(2026, 10, 25, 1, 0, tzinfo=UTC))
    assert hour_bounds(HourKey("2026-10-25", "02b"), CET) == (
        datetime(2026, 10, 25, 1, 0, tzinfo=UTC), datetime(2026, 10, 25, 2, 0, tzinfo=UTC))


def test_spring_forward_day_has_23_distinct_hours() -> None:
    start = datetime(2026, 3, 28, 23, 0, tzinfo=UTC)  # 00:00 CET on 2026-03-29
    labels = [str(hour_of(start + timedelta(hours=h), CET)) for h in range(23)]
    assert len(set(labels)) == 23
    assert "2026-03-29T02" not in labels
    assert labels[:3] == ["2026-03-29T00", "2026-03-29T01", "2026-03-29T03"]


def test_every_minute_of_a_year_maps_to_one_chunk_and_back() -> None:
    seen: set[str] = set()
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    for _ in range(0, 366 * 24 * 60, 7):
        name = chunk_filename("srv-a_1", moment, CET, False)
        assert name not in seen
        seen.add(name)
        chunk = parse_chunk(Path(name))
        assert chunk is not None and chunk.server_id == "srv-a_1"
        assert chunk.hour == hour_of(moment, CET)
        moment += timedelta(minutes=7)


def test_hour_key_parse() -> None:
    assert HourKey.parse("2026-10-25T02b") == HourKey("2026-10-25", "02b")
    for bad in ("2026-10-25 02", "2026-13-01T02", "2026-10-25T24", "x"):
        with pytest.raises(ValueError):
            HourKey.parse(bad)


def test_iter_closed_chunks_ignores_parts_and_hidden(tmp_path: Path) -> None:
    hour = tmp_path / "2026-11-27" / "21"
    hour.mkdir(parents=True)
    (hour / "srv1_2026-11-27_21-01.jsonl").write_text("{}\n")
    (hour / "srv1_2026-11-27_21-02.jsonl.part").write_text("{}\n")
    (hour / ".srv1_2026-11-27_21-03.jsonl.XyZ12").write_text("{}\n")
    (tmp_path / ".collector").mkdir()
    names = [chunk.path.name for chunk in iter_closed_chunks(tmp_path)]
    assert names == ["srv1_2026-11-27_21-01.jsonl"]
