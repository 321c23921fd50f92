"""One Jetstream v1 frame -> one chunk line: decompress, validate, splice in the receipt data.

The line is the event's JSON object exactly as received (decompressed), with one key added
at the end: `"__collector":{"retrieved_at":"<UTC, to the second>","url":"<jetstream_url>"}`.
The key is spliced into the bytes (the closing `}` dropped, `,"__collector":{...}}` appended)
rather than re-serialised, so the event stays verbatim and ingest stays cheap; the frame is
still parsed once with orjson, because a line that is not one JSON object with an integer
`time_us` must never reach a chunk.

Limits (bytes):

* `MAX_EVENT_BYTES` (1 MiB): a frame, or its decompressed event, larger than this is skipped
  and counted as `oversized`, the connection kept. A Jetstream event is a few hundred bytes
  (the largest of the 162 real samples is 1,246 bytes); blobs travel as CIDs, never inline.
* `LIBRARY_MAX_SIZE` (16 MiB), the WebSocket library's `max_size`: a frame above it makes the
  library close the connection with 1009 and the transport reconnects from its cursor. Frames
  between the two limits are read whole and skipped, so one large event never costs a
  connection.

Compressed frames are recognised by the zstd magic number, which no JSON text can start
with, not by the WebSocket frame type: the transport reads frames with `decode=False`, so a
text frame of invalid UTF-8 is counted and skipped here instead of making the library close
a good connection with 1007.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any, NamedTuple

import orjson
import zstandard

MAX_EVENT_BYTES = 1024 * 1024
LIBRARY_MAX_SIZE = 16 * 1024 * 1024

DICTIONARY_FILE = "legacy_subscribe.zdict"
DICTIONARY_ID = 1612007021
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# A frame without its content size is first decompressed into a buffer of this size: asking
# zstandard for MAX_EVENT_BYTES at once costs a 1 MiB allocation per frame (7x slower).
FIRST_OUTPUT_GUESS = 64 * 1024
SKIP_LOG_INTERVAL = 60.0  # at most one log line per skip kind per this many seconds
COLLECTOR_KEY = "__collector"

# Why a frame was skipped: the keys of the stream health's `skipped_frames`.
NOT_JSON = "not_json"
NOT_OBJECT = "not_object"
NO_TIME_US = "no_time_us"
CORRUPT_ZSTD = "corrupt_zstd"
OVERSIZED = "oversized"
SKIP_KINDS = (NOT_JSON, NOT_OBJECT, NO_TIME_US, CORRUPT_ZSTD, OVERSIZED)


class SkippedFrame(Exception):
    """The frame is not an event the collector keeps; `kind` is one of SKIP_KINDS."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class Event(NamedTuple):
    """A kept event: its chunk line and what the transport needs to know of it (a NamedTuple:
    a frozen dataclass costs a tenth of the ingest path to build)."""

    line: bytes  # newline-terminated chunk line
    time_us: int
    is_commit: bool  # commit events are the stream's records (the stall clock's "tweets")


@dataclass
class SkipLog:
    """When to log a skipped frame: one line per kind per interval, saying how many of that
    kind went unlogged since, so a flood of bad frames cannot flood the journal."""

    interval: float = SKIP_LOG_INTERVAL
    last: dict[str, float] = field(default_factory=dict)
    unlogged: dict[str, int] = field(default_factory=dict)

    def due(self, kind: str, now: float) -> int | None:
        """None: stay quiet; else log now, and this many went unlogged before."""
        if now - self.last.get(kind, -self.interval) < self.interval:
            self.unlogged[kind] = self.unlogged.get(kind, 0) + 1
            return None
        self.last[kind] = now
        return self.unlogged.pop(kind, 0)


def load_dictionary() -> bytes:
    """The zstd dictionary of `compress=true` frames, shipped in this package."""
    return (resources.files(__package__) / DICTIONARY_FILE).read_bytes()


def preview(data: bytes, limit: int = 80) -> str:
    """The start of a frame for a log line (never the whole frame, never raw control bytes)."""
    return repr(data[:limit])[2:-1] + ("..." if len(data) > limit else "")


class Decompressor:
    """zstd with Jetstream's dictionary: one digested dictionary and context for every frame.

    Not thread-safe: one per reader thread.
    """

    def __init__(self, dictionary: bytes, max_output: int = MAX_EVENT_BYTES) -> None:
        self.zstd = zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(dictionary))
        self.max_output = max_output

    def decompress(self, frame: bytes) -> bytes:
        """The frame's content, at most `max_output` bytes; raises SkippedFrame."""
        try:
            size = zstandard.frame_content_size(frame)
        except zstandard.ZstdError as error:
            raise SkippedFrame(CORRUPT_ZSTD, str(error)) from None
        if size > self.max_output:
            raise SkippedFrame(OVERSIZED, f"a zstd frame of {size} bytes")
        try:
            if size >= 0:
                # The header's size is what zstandard allocates: checked above.
                return self.zstd.decompress(frame, allow_extra_data=False)
            return self.zstd.decompress(frame, max_output_size=FIRST_OUTPUT_GUESS,
                                        allow_extra_data=False)
        except zstandard.ZstdError as error:
            if size >= 0:
                raise SkippedFrame(CORRUPT_ZSTD, str(error)) from None
            return self._unknown_size(frame)

    def _unknown_size(self, frame: bytes) -> bytes:
        """A frame without content size that did not fit the first guess: too big, or bad."""
        try:
            return self.zstd.decompress(frame, max_output_size=self.max_output,
                                        allow_extra_data=False)
        except zstandard.ZstdError as error:
            reason = str(error)
        try:
            with self.zstd.stream_reader(frame) as reader:
                if len(reader.read(self.max_output + 1)) > self.max_output:
                    raise SkippedFrame(OVERSIZED, f"a zstd frame of over {self.max_output} bytes")
        except zstandard.ZstdError:
            pass
        raise SkippedFrame(CORRUPT_ZSTD, reason)


def parse_object(data: bytes) -> dict[str, Any]:
    """The frame as a JSON object; raises SkippedFrame.

    orjson first; the standard library only for what orjson refuses and JSON allows
    (integers beyond 64 bits, lone surrogate escapes), and only on valid UTF-8, so the
    spliced line is UTF-8 whatever the parser.
    """
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        try:
            value = json.loads(data.decode("utf-8"))
        except (ValueError, RecursionError) as error:
            raise SkippedFrame(NOT_JSON, f"{type(error).__name__}: {error}") from None
    if not isinstance(value, dict):
        raise SkippedFrame(NOT_OBJECT, f"a JSON {type(value).__name__}")
    return value


def event_time(event: dict[str, Any]) -> int:
    """The event's `time_us`: a positive integer (bool is no integer here); raises SkippedFrame."""
    time_us = event.get("time_us")
    if type(time_us) is not int or time_us <= 0:
        raise SkippedFrame(NO_TIME_US, f"time_us is {preview(repr(time_us).encode(), 40)}")
    return time_us


def splice(data: bytes, obj: dict[str, Any], stamp: bytes) -> bytes:
    """`data` (one JSON object, validated) with `stamp` (`,"__collector":{...}}\\n`) spliced
    in place of its closing brace.

    An object spread over several lines (JSON allows newlines between tokens; Jetstream never
    sends them) is re-serialised compactly, since a chunk line must be one line.
    """
    if 10 in data or 13 in data:  # b"\n", b"\r" (an int's membership test is a memchr)
        try:
            data = orjson.dumps(obj)
        except TypeError:  # integers beyond 64 bits
            data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    if data[-1:] != b"}":
        data = data.rstrip()
    return data[:-1] + stamp


def stamp_bytes(retrieved_at: str, url: str) -> bytes:
    """The spliced tail: the `__collector` member, the event's closing brace and newline."""
    member = orjson.dumps({"retrieved_at": retrieved_at, "url": url})
    return b',"' + COLLECTOR_KEY.encode() + b'":' + member + b"}\n"


def retrieved_at_text(received_at: float) -> str:
    """Receipt time in UTC, ISO 8601 with microseconds (`2026-12-06T21:30:00.123456+00:00`),
    as twarc stamps X messages: the merge keeps the copy retrieved first, so the second that
    `collector.clock.utc_now_text()` gives would tie copies of one event across servers."""
    return datetime.fromtimestamp(received_at, UTC).isoformat(timespec="microseconds")


class FrameHandler:
    """Frames of one stream into chunk lines (the ingest path: keep it lean).

    Holds the decompressor, and the `__collector` tail split around the microseconds of the
    receipt time: only they change from one event to the next (formatting a datetime for each
    event would cost a tenth of the ingest path).
    """

    def __init__(self, url: str, dictionary: bytes | None = None,
                 max_event: int = MAX_EVENT_BYTES) -> None:
        self.url = url
        self.max_event = max_event
        self.decompressor = Decompressor(dictionary if dictionary is not None
                                         else load_dictionary(), max_event)
        self._second = -1
        self._head = b""
        self._tail = b'+00:00","url":' + orjson.dumps(url) + b"}}\n"

    def stamp(self, received_at: float) -> bytes:
        """`stamp_bytes(retrieved_at_text(received_at), url)`, cheaply."""
        second = int(received_at)
        if second != self._second:
            whole = datetime.fromtimestamp(second, UTC).isoformat(timespec="seconds")
            self._head = (b',"' + COLLECTOR_KEY.encode() + b'":{"retrieved_at":"'
                          + whole.removesuffix("+00:00").encode() + b".")
            self._second = second
        micro = min(999_999, round((received_at - second) * 1_000_000))
        return self._head + b"%06d" % micro + self._tail

    def event(self, frame: bytes, received_at: float) -> Event:
        """The chunk line of one frame as received; raises SkippedFrame."""
        if len(frame) > self.max_event:
            raise SkippedFrame(OVERSIZED, f"a frame of {len(frame)} bytes")
        data = self.decompressor.decompress(frame) if frame[:4] == ZSTD_MAGIC else frame
        obj = parse_object(data)
        time_us = event_time(obj)
        line = splice(data, obj, self.stamp(received_at))
        return Event(line, time_us, obj.get("kind") == "commit")
