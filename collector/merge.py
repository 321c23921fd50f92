"""Merging one hour: chunk lines in, one compact record per distinct tweet out (pure logic).

Why the record looks the way it does: an hour holds ~200,000 distinct tweets and every server
delivers most of them, so the merge keeps exactly one small record per distinct id and renders
its CSV rows once, at the moment the line is read. A record is a tuple
`(retrieved_at, server_mask, blob, meta, author_id)`:

* `blob` is the UTF-8 tweets row followed by the head of the users row (`author_id,lang,`);
  the users row is that head plus the tweets row's author columns, which are the same ten
  fields in the same order, so nothing is stored twice.
* `meta` packs the offsets needed to cut the blob and whether the author was included.
* `server_mask` has bit i set when server number i (in `servers` order) captured the tweet.

Which copy of a duplicate id is kept: the one retrieved first (`__twarc.retrieved_at`, an
ISO-8601 UTC string, so string order is time order), ties going to the first one read.
Chunks are always read in the same order (servers in settings order, then chunk name, then
line), so the choice, and hence every output byte, is deterministic.

Users: one row per distinct author, taken from that author's most recent tweet of the hour
(largest tweet id: snowflake ids grow with time) that carries the author object; only when no
tweet of the hour carries it is the row left with empty author columns.
"""

from __future__ import annotations

import csv
import json
import struct
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
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
_CSV_SPECIALS = frozenset(',"\r\n')

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
    if _CSV_SPECIALS.isdisjoint(text):
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


def record_mask(record: bytes) -> int:
    return int.from_bytes(record[:8], "little")


def with_mask(record: bytes, mask: int) -> bytes:
    return mask.to_bytes(8, "little") + record[8:]


def retrieved_key(record: bytes) -> bytes:
    """Sort key of the record's retrieval time; a record without one sorts last."""
    _, _, _, start, length, _ = _HEADER.unpack_from(record)
    key = record[HEADER_SIZE + start: HEADER_SIZE + start + length]
    return key or b"~"


def tweet_row(record: bytes) -> bytes:
    """The record's line of the tweets CSV."""
    tweet_end = _HEADER.unpack_from(record)[1]
    return record[HEADER_SIZE: HEADER_SIZE + tweet_end]


def user_row(record: bytes) -> bytes:
    """The record's line of the users CSV."""
    _, tweet_end, tail_start, _, _, _ = _HEADER.unpack_from(record)
    return record[HEADER_SIZE + tweet_end:] + record[HEADER_SIZE + tail_start:
                                                     HEADER_SIZE + tweet_end]


def has_author(record: bytes) -> bool:
    return bool(record[HEADER_SIZE - 1])


def author_key(record: bytes) -> bytes:
    """The author id cell of the record's users row (empty when the tweet has none)."""
    tweet_end = _HEADER.unpack_from(record)[1]
    head = record[HEADER_SIZE + tweet_end:]
    if head.startswith(b'"'):  # a quoted (hostile) author id: let csv undo the quoting
        return next(csv.reader([head.decode("utf-8")]))[0].encode()
    return head[: head.index(b",")]


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


@dataclass
class HourMerge:
    """Accumulates the chunks of one hour; `add_chunk` in a fixed order, then read results."""

    servers: Sequence[str]
    records: dict[int, bytes] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    lines: int = 0
    chunks: int = 0

    def add_chunk(self, server_index: int, data: bytes) -> None:
        """Merge every line of one chunk captured by server number `server_index`."""
        self.chunks += 1
        mask = 1 << server_index
        records = self.records
        for line, maybe_torn in split_chunk(data):
            if not line.strip():
                continue  # blank line (a stray keep-alive): not a message
            self.lines += 1
            message = parse_json_line(line)
            if not isinstance(message, dict):
                self.skipped[SKIP_TORN if maybe_torn and message is None else
                             SKIP_NOT_JSON if message is None else SKIP_NO_DATA] += 1
                continue
            data_value = message.get("data")
            if isinstance(data_value, dict):
                tweets: list[Any] = [data_value]
            elif isinstance(data_value, list) and data_value:
                tweets = data_value
            else:
                self.skipped[SKIP_NO_DATA] += 1
                continue
            meta = message.get("__twarc")
            retrieved = meta.get("retrieved_at") if isinstance(meta, dict) else None
            retrieved_at = retrieved if isinstance(retrieved, str) else ""
            for tweet in tweets:
                tweet_id = tweet_id_of(tweet) if isinstance(tweet, dict) else None
                if tweet_id is None:
                    self.skipped[SKIP_BAD_TWEET] += 1
                    continue
                kept = records.get(tweet_id)
                if kept is None:
                    records[tweet_id] = tweet_record(tweet_id, tweet, message, retrieved_at,
                                                     mask)
                    continue
                # A duplicate: render it only if it was retrieved first (it replaces the kept).
                self.duplicates += 1
                both = record_mask(kept) | mask
                if (retrieved_at.encode() or b"~") < retrieved_key(kept):
                    records[tweet_id] = tweet_record(tweet_id, tweet, message, retrieved_at,
                                                     both)
                elif both != record_mask(kept):
                    records[tweet_id] = with_mask(kept, both)

    def sorted_ids(self) -> list[int]:
        return sorted(self.records)

    def server_counts(self) -> list[int]:
        """Distinct tweets each server captured, in `servers` order."""
        by_mask = Counter(record[:8] for record in self.records.values())
        masks = {int.from_bytes(mask, "little"): n for mask, n in by_mask.items()}
        return [sum(n for mask, n in masks.items() if mask >> i & 1)
                for i in range(len(self.servers))]

    def diff(self) -> int:
        """Tweets that not every server captured."""
        everyone = ((1 << len(self.servers)) - 1).to_bytes(8, "little")
        return sum(1 for record in self.records.values() if record[:8] != everyone)


def users_in_order(records: dict[int, bytes], ids: Sequence[int]) -> list[bytes]:
    """Each author's record (see module docstring), ascending by numeric author id."""
    chosen: dict[bytes, bytes] = {}
    for tweet_id in ids:  # ascending, so a later record of an author is a more recent tweet
        record = records[tweet_id]
        author = author_key(record)
        if not author:
            continue
        if has_author(record) or author not in chosen or not has_author(chosen[author]):
            chosen[author] = record
    return [chosen[a] for a in sorted(chosen, key=lambda a: (len(a), a))]


def blocks_of(rows: Iterable[bytes], block_size: int, header: bytes = b"") -> Iterator[bytes]:
    """Cut a stream of rows into blocks of at least `block_size` bytes, at row boundaries.

    The cut points depend only on the bytes, never on timing or thread count, which keeps the
    compressed output byte-identical from run to run.
    """
    parts = [header] if header else []
    size = len(header)
    for row in rows:
        parts.append(row)
        size += len(row)
        if size >= block_size:
            yield b"".join(parts)
            parts, size = [], 0
    if parts:
        yield b"".join(parts)


def header_line(columns: Sequence[str]) -> bytes:
    return (csv_line(columns) + "\n").encode()
