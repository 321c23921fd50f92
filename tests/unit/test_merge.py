"""Pure merge logic: CSV cells that survive csv/pandas, duplicates, users, skips, the report."""

from __future__ import annotations

import csv
import io
import itertools
import struct
from typing import Any

import orjson
import pandas as pd
import pytest

from collector.csvrows import blocks_of, csv_cell, csv_line, header_line
from collector.lines import SKIP_NOT_JSON, SKIP_TORN, parse_json_line
from collector.report import day as daily_report
from collector.sources import LineReader
from collector.sources.x import X_SOURCE
from collector.sources.x.merge import ENTRY, HourIndex
from collector.sources.x.schema import (
    SKIP_BAD_TWEET,
    SKIP_NO_DATA,
    TWEET_COLUMNS,
    USER_COLUMNS,
    _author_cells,
    _author_of,
    _reference,
    _text,
    retrieved_at_of,
    tweets_of,
)

# ---- the record path: an independent rendering the tests compare pass 2 with -------------
# One bytes object per tweet: a fixed header, then the tweets row, then the head of the users
# row (`author_id,lang,`); the users row is that head plus the tweets row's author columns.
# Header: server mask, end of the tweets row, start of its author columns, start and length
# of retrieved_at inside the row, whether the author object was included.
_HEADER = struct.Struct("<QIIIHB")
HEADER_SIZE = _HEADER.size


def tweet_record(tweet_id: int, tweet: dict[str, Any], message: dict[str, Any],
                 retrieved_at: str, mask: int) -> bytes:
    """The record (header + rows) of one tweet of a message."""
    get = tweet.get
    author_id_value = get("author_id")
    author = _author_of(message, author_id_value)
    author_id = _text(author_id_value)
    lang = _text(get("lang"))
    reference_type, referenced_id = _reference(tweet)
    lead = csv_line((str(tweet_id), _text(get("conversation_id")), author_id,
                     _text(get("created_at")))).encode("utf-8", "replace") + b","
    retrieved = csv_cell(retrieved_at).encode("utf-8", "replace")
    body = b"," + csv_line((_text(get("source")), lang, _text(get("text")), reference_type,
                            referenced_id)).encode("utf-8", "replace") + b","
    tail = csv_line(_author_cells(author)).encode("utf-8", "replace") + b"\n"
    users_head = csv_line((author_id, lang)).encode("utf-8", "replace") + b","
    tail_start = len(lead) + len(retrieved) + len(body)
    header = _HEADER.pack(mask, tail_start + len(tail), tail_start, len(lead),
                          min(len(retrieved), 0xFFFF), author is not None)
    return b"".join((header, lead, retrieved, body, tail, users_head))


def tweet_row(record: bytes) -> bytes:
    """The record's line of the tweets CSV."""
    tweet_end = _HEADER.unpack_from(record)[1]
    return record[HEADER_SIZE: HEADER_SIZE + tweet_end]


def user_row(record: bytes) -> bytes:
    """The record's line of the users CSV."""
    _, tweet_end, tail_start, _, _, _ = _HEADER.unpack_from(record)
    return record[HEADER_SIZE + tweet_end:] + record[HEADER_SIZE + tail_start:
                                                     HEADER_SIZE + tweet_end]


REPORT_EXTRA = X_SOURCE.report_columns  # the day report's columns after diff %

HOSTILE_TEXTS = [
    "line one\nline two",
    "carriage\rreturn and \r\n both",
    'she said "hi", then left',
    "comma, separated, values",
    "tab\there",
    "emoji 😊💙👍 and 中文",
    "  leading and trailing spaces  ",
    '"',
    ",",
    "",
    "\\N",
    "NA",
]


def message(tweet_id: int, text: str = "hello", author: str = "42",
            retrieved_at: str = "2026-01-01T00:00:01+00:00", include_author: bool = True,
            refs: list[dict[str, str]] | None = None, followers: Any = 10) -> dict[str, Any]:
    data: dict[str, Any] = {"id": str(tweet_id), "text": text, "author_id": author,
                            "conversation_id": str(tweet_id),
                            "created_at": "2026-01-01T00:00:00.000Z", "lang": "en",
                            "source": "Twitter Web App"}
    if refs is not None:
        data["referenced_tweets"] = refs
    msg: dict[str, Any] = {"data": data, "includes": {}}
    if include_author:
        msg["includes"]["users"] = [{
            "id": author, "name": "Name, \"the\" one", "username": "user" + author,
            "created_at": "2010-01-01T00:00:00.000Z", "location": "Here\nThere",
            "protected": False, "verified": True,
            "public_metrics": {"followers_count": followers, "following_count": 2,
                               "tweet_count": 3, "listed_count": 0},
        }]
    msg["__twarc"] = {"url": "u", "version": "2.14.0", "retrieved_at": retrieved_at}
    return msg


def chunk(*messages: dict[str, Any] | bytes) -> bytes:
    return b"".join(m if isinstance(m, bytes) else orjson.dumps(m) + b"\n" for m in messages)


class HourMerge(HourIndex):
    """The two passes of an hour's merge over chunks held in memory (pass 2 reads lines
    back from them as `collector.process` does from the chunk files)."""

    def __init__(self, servers: tuple[str, ...]) -> None:
        super().__init__(servers)
        self.data: list[bytes] = []

    def add_chunk(self, server_index: int, data: bytes, minute: int = 0,
                  chunk_no: int | None = None) -> int:
        self.data.append(data)
        return super().add_chunk(server_index, data, minute, len(self.data) - 1)

    def read_line(self, chunk_no: int, offset: int, length: int) -> bytes:
        return self.data[chunk_no][offset: offset + length]

    def kept_copy(self, tweet_id: int,
                  read_line: LineReader) -> tuple[dict[str, Any], dict[str, Any], int]:
        """Pass 2: the kept copy of `tweet_id` read back: (tweet, message, server mask)."""
        entry = self.entries[tweet_id]
        mask, chunk_no, offset, length, position, _, _ = ENTRY.unpack_from(entry)
        message = parse_json_line(read_line(chunk_no, offset, length))
        tweets = tweets_of(message)
        if tweets is None or len(tweets) <= position or not isinstance(tweets[position], dict):
            raise RuntimeError(f"tweet {tweet_id} changed on disk during the merge")
        return tweets[position], message, mask

    def record(self, tweet_id: int, read_line: LineReader) -> bytes:
        """The kept copy of `tweet_id` rendered as a record (`tweet_record`)."""
        tweet, message, mask = self.kept_copy(tweet_id, read_line)
        return tweet_record(tweet_id, tweet, message, retrieved_at_of(message), mask)

    @property
    def records(self) -> dict[int, bytes]:
        """Every kept copy rendered (see `tweet_record`), by tweet id."""
        return {i: self.record(i, self.read_line) for i in self.entries}

    def tweets(self) -> list[bytes]:
        """Pass 2's tweets rows, as `collector process` renders them."""
        return list(self.plan().tweet_rows(self.read_line))

    def users(self) -> list[bytes]:
        return list(self.plan().user_rows(self.read_line))


def parse_rows(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


@pytest.mark.parametrize("text", HOSTILE_TEXTS)
def test_hostile_text_round_trips_through_csv_and_pandas(text: str) -> None:
    merge = HourMerge(("a",))
    merge.add_chunk(0, chunk(message(1, text)))
    record = merge.records[1]
    data = header_line(TWEET_COLUMNS) + tweet_row(record)
    [header, row] = parse_rows(data)
    assert header == list(TWEET_COLUMNS)
    assert row[TWEET_COLUMNS.index("text")] == text
    assert row[TWEET_COLUMNS.index("author.location")] == "Here\nThere"
    frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    assert frame["text"].tolist() == [text]
    assert merge.tweets() == [tweet_row(record)]  # pass 2 renders the very same bytes
    assert frame["author.name"].tolist() == ['Name, "the" one']


def test_row_values_booleans_integers_references_and_users_row() -> None:
    merge = HourMerge(("a",))
    merge.add_chunk(0, chunk(message(7, refs=[{"type": "quoted", "id": "5"},
                                              {"type": "replied_to", "id": "6"}],
                                     followers=123.0)))
    [row] = parse_rows(tweet_row(merge.records[7]))
    values = dict(zip(TWEET_COLUMNS, row, strict=True))
    assert values["reference_type"] == "quoted" and values["referenced_tweet_id"] == "5"
    assert values["author.verified"] == "True" and values["author.protected"] == "False"
    assert values["author.public_metrics.followers_count"] == "123"  # never 123.0
    assert values["retrieved_at"] == "2026-01-01T00:00:01+00:00"
    [user] = parse_rows(user_row(merge.records[7]))
    assert merge.users() == [user_row(merge.records[7])]
    assert dict(zip(USER_COLUMNS, user, strict=True)) == {
        "author_id": "42", "lang": "en", **{k: values[k] for k in USER_COLUMNS[2:]}}


def test_no_referenced_tweets_is_original_and_missing_author_leaves_cells_empty() -> None:
    merge = HourMerge(("a",))
    merge.add_chunk(0, chunk(message(8, include_author=False)))
    values = dict(zip(TWEET_COLUMNS, parse_rows(tweet_row(merge.records[8]))[0], strict=True))
    assert values["reference_type"] == "original" and values["referenced_tweet_id"] == ""
    assert values["author_id"] == "42"
    assert all(values[c] == "" for c in TWEET_COLUMNS[10:])


def test_duplicate_keeps_earliest_retrieval_and_counts_servers_once() -> None:
    merge = HourMerge(("a", "b", "c"))
    merge.add_chunk(0, chunk(message(1, "late", retrieved_at="2026-01-01T00:00:05+00:00"),
                             message(2), message(2)))
    merge.add_chunk(1, chunk(message(1, "early", retrieved_at="2026-01-01T00:00:02+00:00"),
                             message(3)))
    merge.add_chunk(2, chunk(message(1, "latest", retrieved_at="2026-01-01T00:00:09+00:00")))
    assert sorted(merge.records) == [1, 2, 3]
    assert "early" in tweet_row(merge.records[1]).decode()
    assert merge.duplicates == 3
    assert merge.server_counts() == [2, 2, 1]
    assert merge.diff() == 2  # only tweet 1 was captured by all three


def test_users_come_from_each_authors_latest_tweet_that_carries_the_author() -> None:
    merge = HourMerge(("a",))
    merge.add_chunk(0, chunk(message(30, author="9", followers=1),
                             message(10, author="10", followers=2),
                             message(20, author="9", followers=3),
                             message(40, author="9", include_author=False),
                             message(50, author="77", include_author=False)))
    users = [parse_rows(row)[0] for row in merge.users()]
    assert [u[0] for u in users] == ["9", "10", "77"]  # numeric order, not text order
    assert users[0][USER_COLUMNS.index("author.public_metrics.followers_count")] == "1"
    assert users[2][2:] == [""] * 10


def test_bad_lines_are_counted_by_reason_and_never_fatal() -> None:
    merge = HourMerge(("a",))
    data = chunk(
        message(1),
        b"this is not json\n",
        orjson.dumps({"errors": [{"title": "operational-disconnect"}]}) + b"\n",
        orjson.dumps({"data": {"text": "no id"}}) + b"\n",
        b"[1, 2]\n",
        b"\r\n",
        orjson.dumps(message(2))[:40],  # torn last line, no newline
    )
    merge.add_chunk(0, data)
    assert sorted(merge.records) == [1]
    assert merge.skipped == {SKIP_NOT_JSON: 1, SKIP_NO_DATA: 2, SKIP_BAD_TWEET: 1,
                             SKIP_TORN: 1}


def test_json_that_orjson_refuses_is_read_by_the_stdlib() -> None:
    merge = HourMerge(("a",))
    big = b'{"data":{"id":"5","text":"x","author_id":"1","n":123456789012345678901234567890}}\n'
    merge.add_chunk(0, big)
    assert list(merge.records) == [5]


def test_blocks_depend_only_on_the_bytes() -> None:
    rows = [b"%d,row\n" % i for i in range(1000)]
    blocks = list(blocks_of(rows, 100, b"h\n"))
    assert b"".join(blocks) == b"h\n" + b"".join(rows)
    assert all(len(b) >= 100 for b in blocks[:-1])
    assert blocks == list(blocks_of(iter(rows), 100, b"h\n"))


def test_report_line_replaced_and_hours_in_order() -> None:
    servers = ("s1", "s2")
    report = daily_report.DayReport((), {})
    for hour, total in (("03", 5), ("02b", 4), ("02", 3), ("03", 6)):
        report = daily_report.with_hour(
            report, daily_report.HourLine(hour, {"s1": total, "s2": 1}, total, total - 1,
                                          {"duplicates": 2}), servers, REPORT_EXTRA)
    text = daily_report.render_report(report)
    lines = text.splitlines()
    assert lines[0].split("\t")[:6] == ["hour", "s1", "s2", "total", "diff", "diff %"]
    assert [line.split("\t")[0] for line in lines[1:]] == ["02", "02b", "03"]
    assert lines[3].split("\t")[:6] == ["03", "6", "1", "6", "5", "83.33"]
    assert daily_report.parse_report(text).rows["02b"]["duplicates"] == "2"


def test_report_written_before_a_server_joined_is_still_read() -> None:
    old = "hour\ts1\ttotal\tdiff\tdiff %\n01\t9\t9\t0\t0.00\n"
    report = daily_report.with_hour(daily_report.parse_report(old),
                                    daily_report.HourLine("02", {"s1": 1, "s2": 1}, 1, 0),
                                    ("s1", "s2"), REPORT_EXTRA)
    assert report.rows["01"]["s1"] == "9" and report.rows["01"]["s2"] == ""


def _stamp(second: int) -> str:
    return f"2026-01-01T00:00:{second:02d}+00:00"


# (server number, minute, chunk): ties, earlier copies read later, duplicates within a chunk
# and across servers, and bad lines, so the merge of partial indexes meets every case.
GROUPED_CHUNKS = [
    (0, 0, chunk(message(1, "late", retrieved_at=_stamp(5)), message(2), message(2))),
    (0, 0, chunk(message(3, retrieved_at=_stamp(7)), b"junk\n")),
    (0, 1, chunk(message(1, "tie", retrieved_at=_stamp(5)), message(4, retrieved_at=""))),
    (1, 0, chunk(message(1, "early", retrieved_at=_stamp(2)), message(5))),
    (1, 1, chunk(message(3, "b", retrieved_at=_stamp(7)), message(4, retrieved_at=_stamp(9)),
                 orjson.dumps({"errors": []}) + b"\n")),
    (1, 2, chunk(message(2, retrieved_at=_stamp(0)), message(6))),
]


def _index(parts: list[tuple[int, int, bytes]], first_no: int = 0) -> HourIndex:
    index = HourIndex(("a", "b"))
    for number, (server, minute, data) in enumerate(parts, start=first_no):
        index.add_chunk(server, data, minute, number)
    return index


def _summary(index: HourIndex) -> tuple[Any, ...]:
    return (index.entries, index.duplicates, dict(index.skipped), index.lines, index.chunks,
            index.minute_counts(), index.server_counts(), index.diff())


@pytest.mark.parametrize("cuts", [(1,), (2,), (3,), (5,), (2, 4), (1, 3, 5)])
def test_indexes_of_consecutive_chunk_groups_merge_exactly_like_one_pass(
        cuts: tuple[int, ...]) -> None:
    whole = _index(GROUPED_CHUNKS)
    bounds = [0, *cuts, len(GROUPED_CHUNKS)]
    parts = [_index(GROUPED_CHUNKS[a:b], a) for a, b in itertools.pairwise(bounds)]
    merged = parts[0]
    for later in parts[1:]:
        merged.absorb(later)
    assert _summary(merged) == _summary(whole)
    assert whole.duplicates == 6 and whole.server_counts() == [4, 6]
    kept_chunk = {i: int.from_bytes(e[8:12], "little") for i, e in whole.entries.items()}
    # earliest retrieval wins; a tie stays with the first read; no time loses to any time
    assert kept_chunk == {1: 3, 2: 5, 3: 1, 4: 4, 5: 3, 6: 5}


def test_minute_counts_are_distinct_tweets_per_server_and_minute() -> None:
    index = HourIndex(("a", "b", "c"))
    index.add_chunk(0, chunk(message(1), message(2), message(2)), 0)
    index.add_chunk(0, chunk(message(2), message(3), b"not json\n"), 0)  # same minute, reopened
    index.add_chunk(0, chunk(message(1)), 1)  # seen again a minute later: counted there too
    index.add_chunk(1, chunk(message(1), orjson.dumps({"errors": []}) + b"\n"), 5)
    assert index.minute_counts() == {"a": {0: 3, 1: 1}, "b": {5: 1}, "c": {}}


def test_no_rows_still_make_one_block_so_an_empty_hour_is_valid_xz() -> None:
    assert list(blocks_of(iter([]), 100)) == [b""]
    assert list(blocks_of(iter([]), 100, b"h\n")) == [b"h\n"]
    assert list(blocks_of(iter([b"x" * 100]), 100)) == [b"x" * 100]
