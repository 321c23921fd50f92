"""The fault suite's counting rules (tests/faults/measure.py), on small hand-made inputs."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from tests.faults import measure


def _log(*runs: list[int]) -> dict[str, object]:
    return {"connections": [{"whole_runs": [run]} for run in runs]}


def test_sent_ids_are_those_first_sent_whole_inside_the_window() -> None:
    before = _log([0, 9])
    after = _log([0, 9], [5, 14])  # a second host received 5-14; 5-9 went out before
    sent = measure.sent_ids(before, after)
    assert sent == {measure.tweet_id(i) for i in range(10, 15)} - {
        measure.tweet_id(i) for i in range(10)}
    assert measure.whole_indices(after) == set(range(15))


def test_outcome_counts_lost_and_each_kind_of_duplicate() -> None:
    sent = {"1", "2", "3", "4", "5"}
    hour_a = Counter({"1": 1, "2": 2, "99": 3})  # 2 twice in one file; 99 not ours
    hour_b = Counter({"3": 1, "1": 1})  # 1 published by two hours
    tweets = [Counter({"1": 1, "2": 1}), Counter({"3": 2})]  # 3 twice in a tweets file
    row = measure.outcome("s", sent, [hour_a, hour_b], tweets, 1.5)
    assert (row.sent, row.published, row.lost, row.duplicated) == (5, 3, 2, 3)


def test_hours_between_labels_every_hour_touched_in_the_zone() -> None:
    start = datetime(2026, 11, 27, 22, 50, tzinfo=UTC).timestamp()
    end = datetime(2026, 11, 28, 0, 5, tzinfo=UTC).timestamp()
    assert measure.hours_between(start, end, ZoneInfo("CET")) == [
        "2026-11-27T23", "2026-11-28T00", "2026-11-28T01"]


def test_tweets_file_counts_rows_whose_text_spans_lines() -> None:
    text = 'id,text\n1,"two\nlines"\n2,plain\n1,"again, ""quoted"""\n'
    assert measure.tweets_file_counts(text) == Counter({"1": 2, "2": 1})
    assert measure.ids_file_counts("1\n2\n\n2\n") == Counter({"1": 1, "2": 2})


def test_rendered_rows_read_back_and_fresh_rows_replace_old_ones_in_order() -> None:
    old = [measure.Outcome("b", 10, 10, 0, 0, 2.0, "", "2026-11-27 10:00"),
           measure.Outcome("a", 5, 4, 1, 0, None, "lost one", "2026-11-27 10:00")]
    text = measure.render(old, "context")
    assert text.startswith(measure.HEADER)
    assert measure.parse_rows(text) == old
    fresh = [measure.Outcome("a", 6, 6, 0, 0, 1.0, "", "2026-11-28 10:00")]
    merged = measure.merge(measure.parse_rows(text), fresh, ["a", "b"])
    assert [row.scenario for row in merged] == ["a", "b"]
    assert merged[0] == fresh[0]


def test_longest_unreceived_run_finds_messages_no_host_received() -> None:
    before = _log([0, 9])
    # host 1 until 30, host 2 from 25: always someone streaming
    assert measure.longest_unreceived_run(before, _log([0, 30], [25, 60])) == 0
    # both hosts missed 31-34 (a backfill of 33-34 would have closed part of it)
    assert measure.longest_unreceived_run(before, _log([0, 30], [35, 60])) == 4
    assert measure.longest_unreceived_run(before, _log([0, 30], [35, 60], [33, 34])) == 2


def test_hours_between_names_a_repeated_hour_b_and_leaves_out_a_skipped_one() -> None:
    cet = ZoneInfo("CET")
    back = datetime(2026, 10, 25, 0, 30, tzinfo=UTC).timestamp()  # 02:30 CEST, then 02:30 CET
    assert measure.hours_between(back, back + 3600, cet) == ["2026-10-25T02", "2026-10-25T02b"]
    forward = datetime(2026, 3, 29, 0, 30, tzinfo=UTC).timestamp()  # 01:30 CET, then 03:30 CEST
    assert measure.hours_between(forward, forward + 3600, cet) == [
        "2026-03-29T01", "2026-03-29T03"]


def test_hours_between_finds_hours_that_start_in_the_middle_of_a_utc_hour() -> None:
    start = datetime(2026, 11, 27, 10, 20, tzinfo=UTC).timestamp()  # 15:50 in Kolkata (+5:30)
    assert measure.hours_between(start, start + 20 * 60, ZoneInfo("Asia/Kolkata")) == [
        "2026-11-27T15", "2026-11-27T16"]
