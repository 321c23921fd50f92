"""The fewer-ids guard's comparison, and how departed servers show in the report (pure)."""

from __future__ import annotations

import lzma
from pathlib import Path

import orjson
import pytest

from collector.layout import HourKey
from collector.process import fewer_ids
from collector.process.fewer_ids import FewerIds, UnreadableIds, fewer_ids_alert
from collector.process.write import report_line, reported_servers
from collector.report import day as daily_report
from collector.sources.x import X_SOURCE
from collector.sources.x.merge import HourIndex

REPORT_EXTRA = X_SOURCE.report_columns  # the day report's columns after diff %
SKIPS = X_SOURCE.skip_reasons


def compare_ids(published: list[bytes], merged: list[int], moved_ok: set[int],
                cap: int = fewer_ids.MISSING_COUNT_CAP) -> fewer_ids.IdComparison:
    """`fewer_ids.compare_ids` with X's reading of an IDs line."""
    return fewer_ids.compare_ids(published, merged, moved_ok, X_SOURCE.parse_id, cap)


def check_fewer_ids(hour: HourKey, path: Path, merged: list[int],
                    moved_ok: set[int]) -> FewerIds | None:
    return fewer_ids.check_fewer_ids(hour, path, merged, moved_ok, X_SOURCE.parse_id)


def with_hour(report: daily_report.DayReport, line: daily_report.HourLine,
              servers: tuple[str, ...]) -> daily_report.DayReport:
    """`daily_report.with_hour` with X's report columns."""
    return daily_report.with_hour(report, line, servers, REPORT_EXTRA)

HOUR = HourKey("2026-02-03", "10")


def lines(*ids: int) -> list[bytes]:
    return [b"%d\n" % i for i in ids]


def test_a_superset_misses_nothing() -> None:
    found = compare_ids(lines(1, 5, 9), [1, 2, 5, 9, 12], set())
    assert (found.published, found.missing, found.moved, found.capped) == (3, 0, 0, False)
    assert compare_ids([], [], set()).missing == 0


def test_missing_ids_are_counted_with_examples() -> None:
    found = compare_ids(lines(1, 2, 3, 4, 5, 6, 7), [2, 6], set())
    assert found.missing == 5 and found.examples == (1, 3, 4)
    assert found.published == 7


def test_ids_the_previous_hour_received_first_are_excused() -> None:
    found = compare_ids(lines(1, 2, 3), [3], {1, 2, 99})
    assert (found.missing, found.moved) == (0, 2)
    found = compare_ids(lines(1, 2, 3), [3], {1})
    assert (found.missing, found.moved, found.examples) == (1, 1, (2,))


def test_counting_stops_at_the_cap() -> None:
    found = compare_ids(lines(*range(1, 100)), [], set(), cap=10)
    assert found.capped and found.missing == 10 and found.published == 10


@pytest.mark.parametrize("bad", [
    [b"1\n", b"1\n"],  # not ascending: a repeated id could make the walk endless
    [b"2\n", b"1\n"],
    [b"1\n", b"x\n"],
    [b"1"],  # no newline
    [b"\n"],
    [b"\xd9\xa3\n"],  # a non-ASCII digit
    [b"-1\n"],
])
def test_a_file_that_is_no_ids_file_is_unreadable(bad: list[bytes]) -> None:
    with pytest.raises(UnreadableIds):
        compare_ids(bad, [1, 2], set())


def test_check_reads_only_an_existing_file_and_replaces_an_unreadable_one(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "2026-02-03_10_IDs.txt.xz"
    assert check_fewer_ids(HOUR, path, [1], set()) is None  # no file: nothing to compare
    path.write_bytes(lzma.compress(b"1\n2\n3\n"))
    assert check_fewer_ids(HOUR, path, [1, 2, 3, 4], set()) is None
    fewer = check_fewer_ids(HOUR, path, [1, 3], set())
    assert fewer == FewerIds(HOUR, 3, 2, 1, (2,), False)
    assert ("kept the published outputs of 2026-02-03T10: the new merge lacks 1 of its 3 ids "
            "(e.g. 2); they are not replaced until the hour's chunks change") in caplog.text
    assert fewer.ledger_entry() == {"published": 3, "merged": 2, "missing": 1}
    path.write_bytes(b"not xz")
    assert check_fewer_ids(HOUR, path, [1], set()) is None
    assert "the existing IDs file of 2026-02-03T10 cannot be read" in caplog.text


def test_one_alert_names_every_kept_hour() -> None:
    kept = [FewerIds(HourKey("2026-02-03", f"{h:02d}"), 10, 8, 2, (5, 6), False)
            for h in range(3)]
    subject, body = fewer_ids_alert(kept)
    assert subject == ("3 hours kept their published outputs: re-merging 2026-02-03T00 "
                       "would drop 2 of its 10 ids (e.g. 5, 6)")
    assert "- 2026-02-03T02: the merge lacks 2 of its 10 ids (e.g. 5, 6); it has 8 ids" in body
    one, _ = fewer_ids_alert(kept[:1])
    assert one.startswith("1 hour kept their")
    capped = FewerIds(HOUR, 10, 0, 10, (1,), True)
    assert capped.describe() == "at least 10 of its 10 ids (e.g. 1)"


# ---- departed servers in the report ----------------------------------------------------------

def test_a_departed_server_is_shown_only_in_hours_it_has_chunks_in() -> None:
    names = ("srv2", "srv3", "srv1", "srv9")  # servers srv2, srv3; srv1 and srv9 departed
    assert reported_servers(("srv2", "srv3"), names, {"srv1", "srv2"}) == (
        "srv2", "srv3", "srv1")
    assert reported_servers(("srv2", "srv3"), names, set()) == ("srv2", "srv3")


def _message(tweet_id: int) -> bytes:
    return orjson.dumps({"data": {"id": str(tweet_id), "text": "t", "author_id": "1"},
                         "__twarc": {"retrieved_at": "2026-02-03T09:00:00+00:00"}}) + b"\n"


def test_diff_counts_only_the_servers_shown() -> None:
    index = HourIndex(("srv2", "srv3", "srv1"))
    index.add_chunk(0, _message(1) + _message(2))
    index.add_chunk(1, _message(1) + _message(2))
    alone = report_line(HOUR, index, SKIPS, shown=("srv2", "srv3"))
    assert alone.per_server == {"srv2": 2, "srv3": 2} and alone.diff == 0
    everyone = report_line(HOUR, index, SKIPS)  # the departed srv1 counted: it has nothing
    assert everyone.per_server["srv1"] == 0 and everyone.diff == 2 == index.diff()
    index.add_chunk(2, _message(1))
    line = report_line(HOUR, index, SKIPS, shown=("srv2", "srv3", "srv1"))
    assert line.per_server == {"srv2": 2, "srv3": 2, "srv1": 1} and line.diff == 1


def _line(hour: str, counts: dict[str, int]) -> daily_report.HourLine:
    return daily_report.HourLine(hour, counts, 5, 0, {"duplicates": 0})


def test_the_report_keeps_a_departed_column_while_a_line_counts_it() -> None:
    # Written by the old main srv1 while it was one of the servers.
    old = daily_report.DayReport((), {})
    old = with_hour(old, _line("08", {"srv1": 5, "srv2": 5}), ("srv1", "srv2"))
    old = with_hour(old, _line("09", {"srv1": 5, "srv2": 5}), ("srv1", "srv2"))
    # srv2 is the main now; srv1 is gone: its chunks of 09 still merged, none in 10.
    servers = ("srv2", "srv3")
    report = with_hour(old, _line("09", {"srv2": 5, "srv3": 4, "srv1": 5}),
                         servers)
    report = with_hour(report, _line("10", {"srv2": 5, "srv3": 5}), servers)
    assert report.columns[:5] == ("hour", "srv2", "srv3", "srv1", "total")
    text = daily_report.render_report(report)
    parsed = daily_report.parse_report(text)
    assert parsed.hours() == ["08", "09", "10"]  # every line readable
    assert [parsed.rows[h]["srv1"] for h in ("08", "09", "10")] == ["5", "5", ""]
    assert [parsed.rows[h]["srv3"] for h in ("08", "09", "10")] == ["", "4", "5"]
    # Reprocessing 08 without srv1's chunks leaves 09's count: the column stays.
    again = with_hour(parsed, _line("08", {"srv2": 5, "srv3": 0}), servers)
    assert again.columns[3] == "srv1" and again.rows["08"]["srv1"] == ""
    # A day with no count of srv1 has no column for it.
    fresh = with_hour(daily_report.DayReport((), {}),
                                   _line("11", {"srv2": 5, "srv3": 5}), servers)
    assert "srv1" not in fresh.columns
    # Updating cells keeps the departed column too.
    cells = daily_report.with_cells(parsed, "10", {"quarantined": 1}, servers,
                                    REPORT_EXTRA)
    assert cells is not None and cells.columns == parsed.columns


def test_a_departed_column_with_no_count_left_goes() -> None:
    report = daily_report.parse_report(
        "hour\tsrv2\tsrv1\ttotal\tdiff\tdiff %\n09\t5\t5\t5\t0\t0.00\n")
    report = with_hour(report, _line("09", {"srv2": 5}), ("srv2",))
    assert report.columns[:3] == ("hour", "srv2", "total")


def test_at_uri_ids_compare_in_byte_order() -> None:
    """A Bluesky IDs file holds AT-URIs in ascending byte order; the same walk applies."""
    def at_uri(line: bytes) -> bytes | None:
        return line if line.startswith(b"at://") else None

    published = [b"at://did:plc:a/app.bsky.feed.post/1\n", b"at://did:plc:b/app.bsky.feed.post/2\n"]
    merged = [b"at://did:plc:b/app.bsky.feed.post/2"]
    found = fewer_ids.compare_ids(published, merged, set(), at_uri)
    assert (found.published, found.missing) == (2, 1)
    assert found.examples == (b"at://did:plc:a/app.bsky.feed.post/1",)
    with pytest.raises(UnreadableIds, match="line 2 is not in ascending order"):
        fewer_ids.compare_ids(list(reversed(published)), merged, set(), at_uri)
    with pytest.raises(UnreadableIds, match="line 1 is not an id"):
        fewer_ids.compare_ids([b"123\n"], merged, set(), at_uri)
