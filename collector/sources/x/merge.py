"""Merging one hour of X: chunk lines in, the rows of the tweets and users files out (pure).

An hour holds ~200,000 distinct tweets and every server delivers most of them. The merge
runs in two passes (see `HourIndex`): pass 1 parses every line and keeps one small entry per
distinct id (where the kept copy's line is, which servers saw it); pass 2 reads the kept
lines back in output order and renders each row once, straight into the compressors.

Pass 2 renders each tweets row and each users row straight from the kept line
(`collector.sources.x.schema`); the tests render the same rows a second, independent way and
compare the bytes.

Which copy of a duplicate id is kept: the one retrieved first (`__twarc.retrieved_at`, an
ISO-8601 UTC string, so string order is time order), ties going to the first one read.
Chunks are always read in the same order (servers in settings order, then chunk name, then
line), so the choice, and hence every output byte, is deterministic.

Users: one row per distinct author, taken from that author's most recent tweet of the hour
(largest tweet id: snowflake ids grow with time) that carries the author object; only when no
tweet of the hour carries it is the row left with empty author columns.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from collector.csvrows import csv_cell, field_text, needs_quotes
from collector.lines import SKIP_NOT_JSON, SKIP_TORN, parse_json_line, split_chunk
from collector.sources import LineReader
from collector.sources.entries import EntryIndex
from collector.sources.x.schema import (
    SKIP_BAD_TWEET,
    SKIP_NO_DATA,
    _author_of,
    render_tweet_row,
    render_user_row,
    retrieved_at_of,
    tweet_id_of,
    tweets_of,
)

MAX_SERVERS = 64


# Pass 1 keeps, per distinct tweet id, one `bytes` entry (see `HourIndex`): this header, then
# the retrieval key (`key_len` bytes), then the author id (the rest).
# Header: server mask, chunk number, line offset and length, the tweet's position in `data`,
# whether the author object was included, length of the retrieval key.
ENTRY = struct.Struct("<QIIIHBH")
ENTRY_SIZE = ENTRY.size


@dataclass
class HourIndex(EntryIndex):
    """Pass 1 of an hour's merge: which line holds the kept copy of every distinct tweet.

    Why two passes: rendering every row at read time held the whole hour's rendered rows
    (~130 MB for 200,000 tweets) until the last chunk was read, and did all the rendering
    on one core before compression could start. Pass 1 keeps only a ~100-byte entry per
    distinct id (where its kept line is, which servers saw it, its retrieval time and
    author), plus the per-minute coverage counts; pass 2 (`tweet_rows`, `user_rows`)
    reads the kept lines back in output order and renders each row once, straight into
    the block compressors, so rendering overlaps compression and nothing of the hour but
    the entries stays in memory.

    Call `add_chunk` for every chunk in a fixed order (servers in `servers` order, then
    chunk name), which makes the copy kept for a duplicate id, and every output byte,
    deterministic (see the module docstring for the rule).
    """

    entries: dict[int, bytes] = field(default_factory=dict)

    @staticmethod
    def entry_key(entry: bytes) -> bytes:
        return _entry_key(entry)

    def add_chunk(self, server_index: int, data: bytes, minute: int = 0,
                  chunk_no: int | None = None) -> int:
        """Index every line of one chunk of server number `server_index`; returns the
        chunk's number (by default, how many chunks came before), which pass 2's line
        reader receives back.

        `minute` is the chunk's minute (from its name) for the coverage counts. Chunks of
        one server and minute are adjacent in name order, so one set of ids at a time is
        enough to count each minute's distinct tweets.
        """
        chunk_no = self.start_chunk(server_index, minute, chunk_no)
        minute_ids = self.minute_ids
        mask = 1 << server_index
        entries = self.entries
        offset = 0
        for line, maybe_torn in split_chunk(data):
            line_offset = offset
            offset += len(line) + 1
            if not line.strip():
                continue  # blank line (a stray keep-alive): not a message
            self.lines += 1
            message = parse_json_line(line)
            tweets = tweets_of(message)
            if tweets is None:
                self.skipped[SKIP_TORN if maybe_torn and message is None else
                             SKIP_NOT_JSON if message is None else SKIP_NO_DATA] += 1
                continue
            retrieved_at = retrieved_at_of(message)
            new_key = retrieved_at.encode("utf-8", "replace") or b"~"
            for position, tweet in enumerate(tweets):
                tweet_id = tweet_id_of(tweet) if isinstance(tweet, dict) else None
                if tweet_id is None:
                    self.skipped[SKIP_BAD_TWEET] += 1
                    continue
                minute_ids.add(tweet_id)
                kept = entries.get(tweet_id)
                if kept is None:
                    entries[tweet_id] = _entry(tweet, message, retrieved_at, mask, chunk_no,
                                               line_offset, len(line), position)
                    continue
                # A duplicate: it replaces the kept copy only if it was retrieved first.
                self.duplicates += 1
                both = int.from_bytes(kept[:8], "little") | mask
                if new_key < _entry_key(kept):
                    entries[tweet_id] = _entry(tweet, message, retrieved_at, both, chunk_no,
                                               line_offset, len(line), position)
                else:
                    entries[tweet_id] = both.to_bytes(8, "little") + kept[8:]
        return chunk_no

    def counts(self) -> dict[str, int]:
        """X has no counts of its own beyond the skip reasons."""
        return {}

    def sorted_ids(self) -> list[int]:
        return sorted(self.entries)

    def diff(self) -> int:
        """Tweets that not every server captured."""
        everyone = ((1 << len(self.servers)) - 1).to_bytes(8, "little")
        return sum(1 for entry in self.entries.values() if entry[:8] != everyone)

    def authors_in_order(self, ids: Sequence[int]) -> list[int]:
        """For each author, ascending by numeric author id, the tweet id its users row comes
        from: its most recent tweet (largest id) whose kept copy carries the author object,
        else its most recent tweet."""
        chosen: dict[bytes, tuple[int, bool]] = {}
        entries = self.entries
        for tweet_id in ids:  # ascending, so a later tweet of an author is a more recent one
            entry = entries[tweet_id]
            has_author = bool(entry[ENTRY_SIZE - 3])
            key_len = ENTRY.unpack_from(entry)[6]
            author = entry[ENTRY_SIZE + key_len:]
            if not author:
                continue
            before = chosen.get(author)
            if has_author or before is None or not before[1]:
                chosen[author] = (tweet_id, has_author)
        return [chosen[a][0] for a in sorted(chosen, key=lambda a: (len(a), a))]

    def plan(self) -> MergePlan:
        """What pass 2 needs, compactly, so the index can be dropped before compression.

        The entries are ~100 small objects' worth of memory per tweet, and freeing them
        gives their memory back (they were the last objects of their arenas); the plan is
        two flat arrays and the sorted ids, about a fifth of that.
        """
        ids = self.sorted_ids()
        position_of = {tweet_id: n for n, tweet_id in enumerate(ids)}
        users = array("I", (position_of[t] for t in self.authors_in_order(ids)))
        del position_of
        entries = self.entries
        locations = b"".join(entries[t][:_LOCATION.size] for t in ids)
        # Flat ids, unless one does not fit 64 bits (never seen, but `id` is only a string).
        flat: Sequence[int] = array("Q", ids) if not ids or ids[-1] < 1 << 64 else ids
        return MergePlan(flat, locations, users)

# The head of an entry: server mask, chunk number, line offset, line length, tweet position.
_LOCATION = struct.Struct("<QIIIH")


@dataclass
class MergePlan:
    """Pass 2's input: ids ascending, where each one's kept copy is (`_LOCATION` records in
    the same order) and, ascending by author, the position of each users row's tweet."""

    ids: Sequence[int]
    locations: bytes
    users: array[int]

    def _kept(self, position: int,
              read_line: LineReader) -> tuple[dict[str, Any], dict[str, Any], int]:
        mask, chunk_no, offset, length, tweet_no = _LOCATION.unpack_from(
            self.locations, position * _LOCATION.size)
        message = parse_json_line(read_line(chunk_no, offset, length))
        tweets = tweets_of(message)
        if tweets is None or len(tweets) <= tweet_no or not isinstance(tweets[tweet_no], dict):
            raise RuntimeError(f"tweet {self.ids[position]} changed on disk during the merge")
        return tweets[tweet_no], message, mask

    def tweet_rows(self, read_line: LineReader) -> Iterator[bytes]:
        """The tweets CSV rows, ascending by id, rendered from the kept lines."""
        for position, tweet_id in enumerate(self.ids):
            tweet, message, _ = self._kept(position, read_line)
            yield render_tweet_row(tweet_id, tweet, message, retrieved_at_of(message))

    def user_rows(self, read_line: LineReader) -> Iterator[bytes]:
        """The users CSV rows, ascending by author id."""
        for position in self.users:
            tweet, message, _ = self._kept(position, read_line)
            yield render_user_row(tweet, message)

    def output_rows(self, read_line: LineReader) -> list[Iterator[bytes]]:
        """The tweets rows, then the users rows (the order of `X_SOURCE.outputs`)."""
        return [self.tweet_rows(read_line), self.user_rows(read_line)]

    def summary(self) -> str:
        return f"{len(self.ids)} tweets, {len(self.users)} users"


def _entry(tweet: dict[str, Any], message: dict[str, Any], retrieved_at: str, mask: int,
           chunk_no: int, offset: int, length: int, position: int) -> bytes:
    author_id_value = tweet.get("author_id")
    has_author = _author_of(message, author_id_value) is not None
    # The retrieval key compares like the rendered cell did before two passes existed, so
    # which copy wins is unchanged even for hostile values (quotes, commas).
    key = (retrieved_at if needs_quotes(retrieved_at) is None else
           csv_cell(retrieved_at)).encode("utf-8", "replace")[:0xFFFF]
    author = (author_id_value if type(author_id_value) is str else
              field_text(author_id_value)).encode("utf-8", "replace")
    return ENTRY.pack(mask, chunk_no, offset, length, min(position, 0xFFFF), has_author,
                       len(key)) + key + author


def _entry_key(entry: bytes) -> bytes:
    """The entry's retrieval key; a copy without retrieval time sorts last."""
    key_len = ENTRY.unpack_from(entry)[6]
    return entry[ENTRY_SIZE: ENTRY_SIZE + key_len] or b"~"
