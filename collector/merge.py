"""Merging one hour: chunk lines in, the rows of the three files out (pure logic).

An hour holds ~200,000 distinct tweets and every server delivers most of them. The merge
runs in two passes (see `HourIndex`): pass 1 parses every line and keeps one small entry per
distinct id (where the kept copy's line is, which servers saw it); pass 2 reads the kept
lines back in output order and renders each row once, straight into the compressors.

A rendered tweet is a record (`tweet_record`): a small header, the UTF-8 tweets row, then the
head of the users row (`author_id,lang,`); the users row is that head plus the tweets row's
author columns, which are the same ten fields in the same order, so nothing is rendered twice.

Which copy of a duplicate id is kept: the one retrieved first (`__twarc.retrieved_at`, an
ISO-8601 UTC string, so string order is time order), ties going to the first one read.
Chunks are always read in the same order (servers in settings order, then chunk name, then
line), so the choice, and hence every output byte, is deterministic.

Users: one row per distinct author, taken from that author's most recent tweet of the hour
(largest tweet id: snowflake ids grow with time) that carries the author object; only when no
tweet of the hour carries it is the row left with empty author columns.
"""

from __future__ import annotations

import json
import re
import struct
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

TWEET_COLUMNS = (
    "id", "conversation_id", "author_id", "created_at", "retrieved_at", "source", "lang",
    "text", "reference_type", "referenced_tweet_id", "author.created_at", "author.location",
    "author.name", "author.username", "author.verified", "author.protected",
    "author.public_metrics.followers_count", "author.public_metrics.following_count",
    "author.public_metrics.tweet_count", "author.public_metrics.listed_count",
)
USER_COLUMNS = (
    "author_id", "lang", "author.created_at", "author.location", "author.name",
    "author.username", "author.verified", "author.protected",
    "author.public_metrics.followers_count", "author.public_metrics.following_count",
    "author.public_metrics.tweet_count", "author.public_metrics.listed_count",
)
_METRICS = ("followers_count", "following_count", "tweet_count", "listed_count")

# Why a line was not merged; each becomes a column of the daily report.
SKIP_NOT_JSON = "not_json"  # not valid JSON (and not the last line of its chunk)
SKIP_TORN = "torn_line"  # an unparseable last line without its newline
SKIP_NO_DATA = "no_data"  # valid JSON but no tweet: an error or a disconnect notice
SKIP_BAD_TWEET = "bad_tweet"  # `data` present but without a numeric id
SKIP_REASONS = (SKIP_NOT_JSON, SKIP_TORN, SKIP_NO_DATA, SKIP_BAD_TWEET)

# A record without retrieval time loses every tie against one with it ('~' sorts after digits).
_NO_RETRIEVED_AT = "~"
# Finds a character that makes a cell need quotes (a C-level scan: the merge checks ~3 million
# cells an hour, and testing each character against a set cost a third of the rendering).
_needs_quotes = re.compile('[,"\r\n]').search

# A record is one bytes object (see module docstring): a fixed header, then the rows.
# Header: server mask, end of the tweets row, start of its author columns, start and length
# of retrieved_at inside the row, whether the author object was included.
_HEADER = struct.Struct("<QIIIHB")
HEADER_SIZE = _HEADER.size
MAX_SERVERS = 64


def field_text(value: Any) -> str:
    """One CSV cell: strings as they are, booleans `True`/`False`, counts as integers."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def csv_cell(text: str) -> str:
    """Quote like the csv module's QUOTE_MINIMAL, so csv/pandas read the text back unchanged."""
    if _needs_quotes(text) is None:
        return text
    return '"' + text.replace('"', '""') + '"'


def csv_line(cells: Sequence[str]) -> str:
    """Cells joined as one CSV line (without its newline)."""
    line = ",".join(cells)
    # Fast path: no cell needs quoting when the line has no quote, CR, LF or extra comma.
    if ('"' not in line and "\n" not in line and "\r" not in line
            and line.count(",") == len(cells) - 1):
        return line
    return ",".join(map(csv_cell, cells))


def _author_of(message: dict[str, Any], author_id: Any) -> dict[str, Any] | None:
    includes = message.get("includes")
    if not isinstance(includes, dict):
        return None
    users = includes.get("users")
    if not isinstance(users, list):
        return None
    for user in users:
        if isinstance(user, dict) and user.get("id") == author_id:
            return user
    return None


def _text(value: Any) -> str:
    """`field_text` with the common case (a string) inlined by the caller's fast path."""
    return value if type(value) is str else field_text(value)


def _author_cells(author: dict[str, Any] | None) -> list[str]:
    if author is None:
        return [""] * 10
    get = author.get
    metrics = get("public_metrics")
    if not isinstance(metrics, dict):
        metrics = {}
    return [
        _text(get("created_at")), _text(get("location")), _text(get("name")),
        _text(get("username")), field_text(get("verified")), field_text(get("protected")),
        field_text(metrics.get("followers_count")), field_text(metrics.get("following_count")),
        field_text(metrics.get("tweet_count")), field_text(metrics.get("listed_count")),
    ]


def _reference(tweet: dict[str, Any]) -> tuple[str, str]:
    refs = tweet.get("referenced_tweets")
    if isinstance(refs, list) and refs and isinstance(refs[0], dict):
        return field_text(refs[0].get("type")), field_text(refs[0].get("id"))
    return "original", ""


def tweet_id_of(tweet: dict[str, Any]) -> int | None:
    """The numeric id of a tweet object, or None when it has none."""
    raw_id = tweet.get("id")
    if isinstance(raw_id, str):
        return int(raw_id) if raw_id.isascii() and raw_id.isdigit() else None
    if isinstance(raw_id, int) and not isinstance(raw_id, bool) and raw_id >= 0:
        return raw_id
    return None


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





def render_tweet_row(tweet_id: int, tweet: dict[str, Any], message: dict[str, Any],
                     retrieved_at: str) -> bytes:
    """The tweets CSV line of a tweet: the same bytes as `tweet_row(tweet_record(...))`
    (`csv_line` quotes cell by cell, so one line of 20 cells equals the record's pieces)
    with less work; pass 2 renders 200,000 of them an hour."""
    get = tweet.get
    author_id_value = get("author_id")
    reference_type, referenced_id = _reference(tweet)
    cells = [str(tweet_id), _text(get("conversation_id")), _text(author_id_value),
             _text(get("created_at")), retrieved_at, _text(get("source")), _text(get("lang")),
             _text(get("text")), reference_type, referenced_id]
    cells += _author_cells(_author_of(message, author_id_value))
    return (csv_line(cells) + "\n").encode("utf-8", "replace")


def render_user_row(tweet: dict[str, Any], message: dict[str, Any]) -> bytes:
    """The users CSV line of a tweet, alone: the same bytes as `user_row(tweet_record(...))`
    for less than half the work (pass 2 renders a users row for most tweets)."""
    get = tweet.get
    author_id_value = get("author_id")
    head = csv_line((_text(author_id_value), _text(get("lang"))))
    tail = csv_line(_author_cells(_author_of(message, author_id_value)))
    return (head + "," + tail + "\n").encode("utf-8", "replace")


def tweet_row(record: bytes) -> bytes:
    """The record's line of the tweets CSV."""
    tweet_end = _HEADER.unpack_from(record)[1]
    return record[HEADER_SIZE: HEADER_SIZE + tweet_end]


def user_row(record: bytes) -> bytes:
    """The record's line of the users CSV."""
    _, tweet_end, tail_start, _, _, _ = _HEADER.unpack_from(record)
    return record[HEADER_SIZE + tweet_end:] + record[HEADER_SIZE + tail_start:
                                                     HEADER_SIZE + tweet_end]




def parse_json_line(line: bytes) -> Any:
    """The JSON value of a line; orjson first, stdlib json for what orjson refuses
    (integers beyond 64 bits, lone surrogates), so a line twarc wrote is never lost."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(line)
    except (ValueError, RecursionError):
        return None


def split_chunk(data: bytes) -> Iterator[tuple[bytes, bool]]:
    """Lines of a chunk with a flag for 'last line without its newline' (maybe torn)."""
    lines = data.split(b"\n")
    last = lines.pop()  # b"" when the chunk ends with a newline, as closed chunks do
    for line in lines:
        yield line, False
    if last.strip():
        yield last, True


# Pass 1 keeps, per distinct tweet id, one `bytes` entry (see `HourIndex`): this header, then
# the retrieval key (`key_len` bytes), then the author id (the rest).
# Header: server mask, chunk number, line offset and length, the tweet's position in `data`,
# whether the author object was included, length of the retrieval key.
_ENTRY = struct.Struct("<QIIIHBH")
ENTRY_SIZE = _ENTRY.size

# pass 2 reads a line back: (chunk number, offset, length) -> the line's bytes
LineReader = Callable[[int, int, int], bytes]


def tweet_ids_in(data: bytes) -> set[int]:
    """Every tweet id of one chunk's messages (lines that are not tweets are ignored)."""
    found: set[int] = set()
    for line, _ in split_chunk(data):
        tweets = _tweets_of(parse_json_line(line)) if line.strip() else None
        for tweet in tweets or ():
            tweet_id = tweet_id_of(tweet) if isinstance(tweet, dict) else None
            if tweet_id is not None:
                found.add(tweet_id)
    return found


def _tweets_of(message: Any) -> list[Any] | None:
    """The tweet objects of a parsed line, or None when it carries none."""
    if not isinstance(message, dict):
        return None
    data_value = message.get("data")
    if isinstance(data_value, dict):
        return [data_value]
    if isinstance(data_value, list) and data_value:
        return data_value
    return None


def _retrieved_at(message: dict[str, Any]) -> str:
    meta = message.get("__twarc")
    retrieved = meta.get("retrieved_at") if isinstance(meta, dict) else None
    return retrieved if isinstance(retrieved, str) else ""


@dataclass
class HourIndex:
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

    servers: Sequence[str]
    entries: dict[int, bytes] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    lines: int = 0
    chunks: int = 0
    # server -> minute of the hour -> distinct tweets the server captured in that minute
    coverage: dict[str, dict[int, int]] = field(default_factory=dict)
    _minute_key: tuple[int, int] | None = field(default=None, repr=False)
    _minute_ids: set[int] = field(default_factory=set, repr=False)

    def add_chunk(self, server_index: int, data: bytes, minute: int = 0,
                  chunk_no: int | None = None) -> int:
        """Index every line of one chunk of server number `server_index`; returns the
        chunk's number (by default, how many chunks came before), which pass 2's line
        reader receives back.

        `minute` is the chunk's minute (from its name) for the coverage counts. Chunks of
        one server and minute are adjacent in name order, so one set of ids at a time is
        enough to count each minute's distinct tweets.
        """
        if chunk_no is None:
            chunk_no = self.chunks
        self.chunks += 1
        self._enter_minute(server_index, minute)
        minute_ids = self._minute_ids
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
            tweets = _tweets_of(message)
            if tweets is None:
                self.skipped[SKIP_TORN if maybe_torn and message is None else
                             SKIP_NOT_JSON if message is None else SKIP_NO_DATA] += 1
                continue
            retrieved_at = _retrieved_at(message)
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

    def _enter_minute(self, server_index: int, minute: int) -> None:
        key = (server_index, minute)
        if key != self._minute_key:
            self._close_minute()
            self._minute_key = key

    def _close_minute(self) -> None:
        if self._minute_key is not None:
            server_index, minute = self._minute_key
            minutes = self.coverage.setdefault(self.servers[server_index], {})
            minutes[minute] = minutes.get(minute, 0) + len(self._minute_ids)
        self._minute_ids = set()
        self._minute_key = None

    def minute_counts(self) -> dict[str, dict[int, int]]:
        """Distinct tweets per server and minute (servers without any tweet included)."""
        self._close_minute()
        counts: dict[str, dict[int, int]] = {server: {} for server in self.servers}
        for server, minutes in self.coverage.items():
            counts[server].update({m: n for m, n in minutes.items() if n})
        return counts

    def sorted_ids(self) -> list[int]:
        return sorted(self.entries)

    def server_counts(self) -> list[int]:
        """Distinct tweets each server captured, in `servers` order."""
        by_mask = Counter(entry[:8] for entry in self.entries.values())
        masks = {int.from_bytes(mask, "little"): n for mask, n in by_mask.items()}
        return [sum(n for mask, n in masks.items() if mask >> i & 1)
                for i in range(len(self.servers))]

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
            key_len = _ENTRY.unpack_from(entry)[6]
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

    def kept_copy(self, tweet_id: int,
                  read_line: LineReader) -> tuple[dict[str, Any], dict[str, Any], int]:
        """Pass 2: the kept copy of `tweet_id` read back: (tweet, message, server mask)."""
        entry = self.entries[tweet_id]
        mask, chunk_no, offset, length, position, _, _ = _ENTRY.unpack_from(entry)
        message = parse_json_line(read_line(chunk_no, offset, length))
        tweets = _tweets_of(message)
        if tweets is None or len(tweets) <= position or not isinstance(tweets[position], dict):
            raise RuntimeError(f"tweet {tweet_id} changed on disk during the merge")
        return tweets[position], message, mask

    def record(self, tweet_id: int, read_line: LineReader) -> bytes:
        """The kept copy of `tweet_id` rendered (see `tweet_record`)."""
        tweet, message, mask = self.kept_copy(tweet_id, read_line)
        return tweet_record(tweet_id, tweet, message, _retrieved_at(message), mask)

    def drop_received_earlier(self, earlier_ids: set[int]) -> int:
        """Remove the tweets the previous hour already received; returns how many.

        A tweet belongs to the hour of its first receipt by any server: a copy received
        again in this hour (a backfill after a reconnect, or two servers' clocks either
        side of the hour) would otherwise be published in two hours. Each removed id
        counts as a duplicate; the coverage counts keep it (they describe capture).
        """
        entries = self.entries
        dropped = [tweet_id for tweet_id in earlier_ids if tweet_id in entries]
        for tweet_id in dropped:
            del entries[tweet_id]
        self.duplicates += len(dropped)
        return len(dropped)

    def absorb(self, later: HourIndex) -> None:
        """Merge in the index of the chunks that come after this one's in reading order.

        Gives exactly what indexing all chunks in one object would: the kept copy is the
        first one with the smallest retrieval key, so `later`'s wins only when strictly
        earlier; every occurrence after an id's first counts as a duplicate. `later` must
        start at a new (server, minute), so coverage counts simply add up.
        """
        self._close_minute()
        later._close_minute()
        entries = self.entries
        for tweet_id, entry in later.entries.items():
            kept = entries.get(tweet_id)
            if kept is None:
                entries[tweet_id] = entry
                continue
            self.duplicates += 1
            both = (int.from_bytes(kept[:8], "little")
                    | int.from_bytes(entry[:8], "little")).to_bytes(8, "little")
            winner = entry if _entry_key(entry) < _entry_key(kept) else kept
            entries[tweet_id] = both + winner[8:]
        self.duplicates += later.duplicates
        self.skipped.update(later.skipped)
        self.lines += later.lines
        self.chunks += later.chunks
        for server, minutes in later.coverage.items():
            mine = self.coverage.setdefault(server, {})
            for minute, count in minutes.items():
                mine[minute] = mine.get(minute, 0) + count



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
        tweets = _tweets_of(message)
        if tweets is None or len(tweets) <= tweet_no or not isinstance(tweets[tweet_no], dict):
            raise RuntimeError(f"tweet {self.ids[position]} changed on disk during the merge")
        return tweets[tweet_no], message, mask

    def tweet_rows(self, read_line: LineReader) -> Iterator[bytes]:
        """The tweets CSV rows, ascending by id, rendered from the kept lines."""
        for position, tweet_id in enumerate(self.ids):
            tweet, message, _ = self._kept(position, read_line)
            yield render_tweet_row(tweet_id, tweet, message, _retrieved_at(message))

    def user_rows(self, read_line: LineReader) -> Iterator[bytes]:
        """The users CSV rows, ascending by author id."""
        for position in self.users:
            tweet, message, _ = self._kept(position, read_line)
            yield render_user_row(tweet, message)


def _entry(tweet: dict[str, Any], message: dict[str, Any], retrieved_at: str, mask: int,
           chunk_no: int, offset: int, length: int, position: int) -> bytes:
    author_id_value = tweet.get("author_id")
    has_author = _author_of(message, author_id_value) is not None
    # The retrieval key compares like the rendered cell did before two passes existed, so
    # which copy wins is unchanged even for hostile values (quotes, commas).
    key = (retrieved_at if _needs_quotes(retrieved_at) is None else
           csv_cell(retrieved_at)).encode("utf-8", "replace")[:0xFFFF]
    author = (author_id_value if type(author_id_value) is str else
              field_text(author_id_value)).encode("utf-8", "replace")
    return _ENTRY.pack(mask, chunk_no, offset, length, min(position, 0xFFFF), has_author,
                       len(key)) + key + author


def _entry_key(entry: bytes) -> bytes:
    """The entry's retrieval key; a copy without retrieval time sorts last."""
    key_len = _ENTRY.unpack_from(entry)[6]
    return entry[ENTRY_SIZE: ENTRY_SIZE + key_len] or b"~"



def blocks_of(rows: Iterable[bytes], block_size: int, header: bytes = b"") -> Iterator[bytes]:
    """Cut a stream of rows into blocks of at least `block_size` bytes, at row boundaries.

    The cut points depend only on the bytes, never on timing or thread count, which keeps the
    compressed output byte-identical from run to run. No rows and no header still give one
    (empty) block, so an hour without tweets is a valid, empty `.xz` file.
    """
    parts = [header] if header else []
    size = len(header)
    cut = False
    for row in rows:
        parts.append(row)
        size += len(row)
        if size >= block_size:
            yield b"".join(parts)
            parts, size, cut = [], 0, True
    if parts or not cut:
        yield b"".join(parts)


def header_line(columns: Sequence[str]) -> bytes:
    return (csv_line(columns) + "\n").encode()
