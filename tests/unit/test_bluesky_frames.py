"""The pure parts of the Bluesky capture: URL, frames to chunk lines, zstd with Jetstream's
real dictionary, the cursor from chunks on disk, the clamped-replay rule, close codes."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit
from zoneinfo import ZoneInfo

import orjson
import pytest
import zstandard
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Close
from websockets.http11 import Response

from collector.layout import chunk_path
from collector.sources.bluesky import cursor, frames
from collector.sources.bluesky.closes import close_code, end_failure, retry_after
from collector.sources.bluesky.frames import FrameHandler, SkipLog, SkippedFrame
from collector.stream.backoff import Failure

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "jetstream-samples"
URL = "wss://jetstream.us-east.bsky.network/subscribe"
NOW = 1_783_176_000.0  # 2026-07-04T14:40Z, just after the sample window
RETRIEVED = re.compile(rb'^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}\+00:00$')


def sample_lines() -> list[bytes]:
    return [line for name in ("production_v1_window.jsonl", "golden_v1.jsonl")
            for line in (SAMPLES / name).read_bytes().splitlines() if line]


@pytest.fixture(scope="module")
def handler() -> FrameHandler:
    return FrameHandler(URL)


@pytest.fixture(scope="module")
def compressor() -> zstandard.ZstdCompressor:
    dictionary = zstandard.ZstdCompressionDict(frames.load_dictionary())
    return zstandard.ZstdCompressor(dict_data=dictionary)


# ---- the URL ---------------------------------------------------------------------------------

def test_url_repeats_wanted_collections_and_adds_compress_and_cursor() -> None:
    url = cursor.subscribe_url(URL, ("app.bsky.feed.post", "app.bsky.graph.*"), True,
                               1_783_175_888_085_434)
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == URL
    assert parse_qsl(parts.query) == [("wantedCollections", "app.bsky.feed.post"),
                                      ("wantedCollections", "app.bsky.graph.*"),
                                      ("compress", "true"), ("cursor", "1783175888085434")]
    assert "app.bsky.graph.*" in url  # the prefix wildcard stays readable


def test_url_of_the_live_tail_without_compression() -> None:
    assert cursor.subscribe_url(URL, ("app.bsky.feed.post",), False, None) == (
        URL + "?wantedCollections=app.bsky.feed.post")


# ---- frames to lines -------------------------------------------------------------------------

def test_every_real_event_becomes_itself_plus_collector(handler: FrameHandler) -> None:
    received = 1_765_000_000.25
    for raw in sample_lines():
        event = handler.event(raw, received)
        assert event.line.endswith(b"}\n") and event.line.count(b"\n") == 1
        # The event's bytes are kept verbatim, the key is appended at the end.
        assert event.line.startswith(raw[:-1] + b',"__collector":{')
        parsed = orjson.loads(event.line)
        meta = parsed.pop("__collector")
        assert parsed == orjson.loads(raw)
        assert list(orjson.loads(event.line))[-1] == "__collector"
        assert meta == {"retrieved_at": "2025-12-06T05:46:40.250000+00:00", "url": URL}
        assert event.time_us == parsed["time_us"]
        assert event.is_commit == (parsed["kind"] == "commit")


def test_retrieved_at_is_utc_iso_with_microseconds(handler: FrameHandler) -> None:
    for moment in (NOW, NOW + 0.000001, NOW + 0.5, NOW + 59.999999, 0.0):
        text = frames.retrieved_at_text(moment)
        assert RETRIEVED.match(text.encode())
        assert datetime.fromisoformat(text).timestamp() == pytest.approx(moment, abs=1e-6)
        assert handler.stamp(moment) == frames.stamp_bytes(text, URL)


def test_whitespace_around_the_object_is_handled(handler: FrameHandler) -> None:
    raw = b'  {"did":"d","time_us":1783175888085434,"kind":"identity"}  \r\n'
    line = handler.event(raw, NOW).line
    assert line.startswith(b'{"did":"d"') and line.count(b"\n") == 1
    assert orjson.loads(line)["kind"] == "identity"


def test_a_frame_spread_over_lines_is_compacted_to_one(handler: FrameHandler) -> None:
    raw = b'{\n "time_us": 1783175888085434,\r\n "kind": "commit", "text": "a\\nb"\n}'
    event = handler.event(raw, NOW)
    assert event.line.count(b"\n") == 1 and b"\r" not in event.line
    parsed = orjson.loads(event.line)
    assert parsed["text"] == "a\nb" and event.is_commit


def test_what_orjson_refuses_but_json_allows_is_kept(handler: FrameHandler) -> None:
    raw = b'{"time_us":1783175888085434,"big":123456789012345678901234567890,"s":"\\ud800"}'
    line = handler.event(raw, NOW).line
    assert line.startswith(raw[:-1])
    assert json.loads(line)["big"] == 123456789012345678901234567890


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        (b"", frames.NOT_JSON),
        (b"not json", frames.NOT_JSON),
        (b'{"time_us":1783175888085434', frames.NOT_JSON),  # truncated
        (b'{"time_us":1783175888085434,"t":"\xff\xfe"}', frames.NOT_JSON),  # bad UTF-8
        (b"[1, 2]", frames.NOT_OBJECT),
        (b"null", frames.NOT_OBJECT),
        (b"{}", frames.NO_TIME_US),
        (b'{"kind":"commit"}', frames.NO_TIME_US),
        (b'{"time_us":"1783175888085434"}', frames.NO_TIME_US),
        (b'{"time_us":1783175888085434.5}', frames.NO_TIME_US),
        (b'{"time_us":true}', frames.NO_TIME_US),
        (b'{"time_us":-5}', frames.NO_TIME_US),
        (frames.ZSTD_MAGIC + b"garbage after the magic", frames.CORRUPT_ZSTD),
    ],
)
def test_frames_that_are_no_event_are_refused_by_kind(handler: FrameHandler, frame: bytes,
                                                      kind: str) -> None:
    with pytest.raises(SkippedFrame) as caught:
        handler.event(frame, NOW)
    assert caught.value.kind == kind
    assert kind in frames.SKIP_KINDS


def test_an_oversized_frame_is_refused_before_parsing() -> None:
    small = FrameHandler(URL, max_event=100)
    with pytest.raises(SkippedFrame) as caught:
        small.event(b'{"time_us":1783175888085434,"x":"' + b"a" * 100 + b'"}', NOW)
    assert caught.value.kind == frames.OVERSIZED
    assert frames.MAX_EVENT_BYTES == 1024 * 1024 < frames.LIBRARY_MAX_SIZE


def test_preview_is_short_and_printable() -> None:
    text = frames.preview(b"\x00\x01" + b"x" * 500)
    assert len(text) < 100 and "\x00" not in text and text.endswith("...")


# ---- zstd with the real dictionary ----------------------------------------------------------

def test_the_shipped_dictionary_is_jetstreams() -> None:
    dictionary = zstandard.ZstdCompressionDict(frames.load_dictionary())
    assert dictionary.dict_id() == frames.DICTIONARY_ID == 1612007021
    licence = Path(frames.__file__).with_name("LICENSE-jetstream-dictionary").read_text()
    assert "MIT License" in licence and "legacy_subscribe.zdict" in licence


@pytest.mark.parametrize("content_size", [True, False])
def test_compressed_frames_round_trip(handler: FrameHandler, content_size: bool) -> None:
    dictionary = zstandard.ZstdCompressionDict(frames.load_dictionary())
    compressor = zstandard.ZstdCompressor(dict_data=dictionary,
                                          write_content_size=content_size)
    for raw in sample_lines():
        frame = compressor.compress(raw)
        assert frame[:4] == frames.ZSTD_MAGIC
        assert (zstandard.frame_content_size(frame) == len(raw)) is content_size
        assert handler.event(frame, NOW).line == handler.event(raw, NOW).line


def test_a_compressed_event_larger_than_the_limit_fits_no_buffer() -> None:
    limited = FrameHandler(URL, max_event=64 * 1024)
    dictionary = zstandard.ZstdCompressionDict(frames.load_dictionary())
    big = b'{"time_us":1783175888085434,"x":"' + b"a" * 200_000 + b'"}'
    for content_size in (True, False):
        frame = zstandard.ZstdCompressor(dict_data=dictionary,
                                         write_content_size=content_size).compress(big)
        assert len(frame) < 64 * 1024  # small on the wire, large once decompressed
        with pytest.raises(SkippedFrame) as caught:
            limited.event(frame, NOW)
        assert caught.value.kind == frames.OVERSIZED


def test_a_frame_without_size_beyond_the_first_guess_still_decompresses(
        handler: FrameHandler) -> None:
    dictionary = zstandard.ZstdCompressionDict(frames.load_dictionary())
    compressor = zstandard.ZstdCompressor(dict_data=dictionary, write_content_size=False)
    raw = b'{"time_us":1783175888085434,"x":"' + os.urandom(60_000).hex().encode() + b'"}'
    assert len(raw) > frames.FIRST_OUTPUT_GUESS
    assert handler.event(compressor.compress(raw), NOW).line.startswith(raw[:-1])


@pytest.mark.parametrize("damage", ["truncated", "flipped", "trailing", "bad_header"])
def test_corrupt_zstd_frames_are_refused(handler: FrameHandler,
                                         compressor: zstandard.ZstdCompressor,
                                         damage: str) -> None:
    raw = sample_lines()[1]
    frame = compressor.compress(raw)
    if damage == "truncated":
        frame = frame[:-5]
    elif damage == "flipped":
        # A flipped literal without a checksum decodes to other valid bytes (Jetstream writes
        # no checksum: then only the JSON checks can notice); with one, zstd notices.
        dictionary = zstandard.ZstdCompressionDict(frames.load_dictionary())
        frame = zstandard.ZstdCompressor(dict_data=dictionary, write_checksum=True).compress(raw)
        middle = len(frame) // 2
        frame = frame[:middle] + bytes([frame[middle] ^ 0xFF]) + frame[middle + 1:]
    elif damage == "trailing":
        frame += b"xx"
    else:
        frame = frame[:4] + b"\xff" * 4
    with pytest.raises(SkippedFrame) as caught:
        handler.event(frame, NOW)
    assert caught.value.kind == frames.CORRUPT_ZSTD


# ---- the cursor -------------------------------------------------------------------------------

def line(time_us: object, **extra: object) -> bytes:
    return orjson.dumps({"did": "d", "time_us": time_us, "kind": "commit", **extra,
                         "__collector": {"retrieved_at": "x", "url": URL}}) + b"\n"


T0 = 1_783_175_888_000_000


def test_largest_time_us_ignores_a_torn_last_line_and_order() -> None:
    data = line(T0 + 5) + line(T0 + 9) + line(T0 + 2) + b'{"did":"d","time_us":' + b"9" * 16
    assert cursor.largest_time_us(data, starts_mid_line=False, now=NOW) == T0 + 9


def test_largest_time_us_skips_the_cut_first_line_of_a_tail() -> None:
    whole = line(T0 + 50) + line(T0 + 7)
    tail = whole[5:]  # the read started inside the first line
    assert cursor.largest_time_us(tail, starts_mid_line=True, now=NOW) == T0 + 7
    assert cursor.largest_time_us(whole, starts_mid_line=False, now=NOW) == T0 + 50


def test_largest_time_us_trusts_only_times() -> None:
    data = (b"not json\n" + b"[1]\n" + line("12") + line(True) + line(42)
            + line(int(NOW * 1e6) + 2 * cursor.FUTURE_LIMIT_US) + line(T0)
            + orjson.dumps({"data": {"id": "1"}}) + b"\n")
    assert cursor.largest_time_us(data, starts_mid_line=False, now=NOW) == T0
    assert cursor.largest_time_us(b"", starts_mid_line=False, now=NOW) is None


def test_rewind_and_clamp_tolerance() -> None:
    assert cursor.rewound(None) is None
    assert cursor.rewound(T0) == T0 - 10 * cursor.SECOND_US
    assert cursor.CLAMP_TOLERANCE_US == 60 * cursor.SECOND_US >= 2 * cursor.REWIND_US
    asked = T0 - cursor.REWIND_US
    assert cursor.replay_gap(None, T0 + 10**12) is None  # the live tail asked for nothing
    assert cursor.replay_gap(asked, asked - 5 * cursor.SECOND_US) is None  # non-monotonic
    assert cursor.replay_gap(asked, asked + cursor.CLAMP_TOLERANCE_US) is None
    gap = 36 * 3600 * cursor.SECOND_US
    assert cursor.replay_gap(asked, asked + gap) == gap


def write_chunk(root: Path, server: str, moment: datetime, data: bytes,
                mid_minute: bool = False, part: bool = False) -> Path:
    path = chunk_path(root, server, moment, ZoneInfo("CET"), mid_minute)
    if part:
        path = path.with_name(path.name + ".part")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_cursor_from_chunks_reads_this_servers_newest_chunks(tmp_path: Path) -> None:
    at = datetime(2026, 7, 4, 14, 38, tzinfo=UTC)  # 16:38 in CET (summer time)
    write_chunk(tmp_path, "srv1", at.replace(minute=30), line(T0 + 100))
    write_chunk(tmp_path, "srv1", at.replace(minute=37), line(T0 + 300) + line(T0 + 200))
    # Left open by a crash, its last line torn: the whole lines before it count.
    newest = write_chunk(tmp_path, "srv1", at.replace(second=25),
                         line(T0 + 400) + line(T0 + 350) + b'{"did":"d","time_us":17831759',
                         mid_minute=True, part=True)
    write_chunk(tmp_path, "srv2", at.replace(minute=39), line(T0 + 10**9))  # another server
    write_chunk(tmp_path, "srv10", at.replace(minute=39), line(T0 + 10**9))
    stray = tmp_path / "2026-07-04" / "16" / "srv1_notes.jsonl.txt"
    stray.write_bytes(line(T0 + 10**9))
    found = cursor.cursor_from_chunks(tmp_path, "srv1", NOW)
    assert found == cursor.ChunkCursor(T0 + 400, newest)


def test_cursor_from_chunks_stops_at_the_newest_few(tmp_path: Path) -> None:
    at = datetime(2026, 7, 4, 10, 0, tzinfo=UTC)
    for minute in range(10):
        write_chunk(tmp_path, "srv1", at.replace(minute=minute), line(T0 + minute))
    write_chunk(tmp_path, "srv1", at.replace(hour=9), line(T0 + 10**9))  # long ago, odd
    found = cursor.cursor_from_chunks(tmp_path, "srv1", NOW)
    assert found is not None and found.time_us == T0 + 9


def test_cursor_from_chunks_without_jetstream_events(tmp_path: Path) -> None:
    assert cursor.cursor_from_chunks(tmp_path / "missing", "srv1", NOW) is None
    at = datetime(2026, 7, 4, 10, 0, tzinfo=UTC)
    for minute in range(3):  # X chunks: no time_us
        write_chunk(tmp_path, "srv1", at.replace(minute=minute), b'{"data":{"id":"1"}}\n')
    assert cursor.cursor_from_chunks(tmp_path, "srv1", NOW) is None


def test_cursor_from_a_big_chunk_reads_its_tail_only(tmp_path: Path) -> None:
    at = datetime(2026, 7, 4, 10, 0, tzinfo=UTC)
    # 3 MB whose largest time_us is in its first line, beyond the 2 MiB tail that is read.
    filler = b"".join(line(T0 + 10**8 - n, pad="x" * 1000) for n in range(3000))
    write_chunk(tmp_path, "srv1", at, filler + line(T0 + 5) + line(T0 + 6))
    found = cursor.cursor_from_chunks(tmp_path, "srv1", NOW)
    assert found is not None
    # The tail's largest: earlier than the chunk's (a longer rewind), never later.
    assert T0 + 6 < found.time_us < T0 + 10**8


def test_symlinked_folders_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write_chunk(outside, "srv1", datetime(2026, 7, 4, 10, 0, tzinfo=UTC), line(T0))
    root = tmp_path / "root"
    root.mkdir()
    (root / "2026-07-05").symlink_to(outside / "2026-07-04")
    assert cursor.cursor_from_chunks(root, "srv1", NOW) is None


# ---- the transport's pure rules -------------------------------------------------------------

@pytest.mark.parametrize(
    ("code", "failure"),
    [(None, Failure.NETWORK), (1000, Failure.NETWORK), (1001, Failure.NETWORK),
     (1006, Failure.NETWORK), (1009, Failure.NETWORK), (1011, Failure.NETWORK),
     (1012, Failure.NETWORK), (1008, Failure.HTTP), (1013, Failure.HTTP),
     (4000, Failure.HTTP), (4999, Failure.HTTP)],
)
def test_close_codes_map_to_backoff_kinds(code: int | None, failure: Failure) -> None:
    assert end_failure(code) is failure


def test_close_codes_say_who_closed() -> None:
    assert close_code(ConnectionClosed(Close(1011, "boom"), None)) == (
        1011, "closed by the server with 1011 (boom)")
    assert close_code(ConnectionClosed(None, Close(1009, ""))) == (
        1009, "closed by the collector with 1009")
    assert close_code(ConnectionClosed(None, None)) == (
        None, "connection lost without a close frame")


@pytest.mark.parametrize(("header", "seconds"), [("7", 7.0), ("", None), ("soon", None),
                                                 ("Wed, 21 Oct 2026 07:28:00 GMT", None)])
def test_retry_after_in_seconds_only(header: str, seconds: float | None) -> None:
    headers = Headers({"Retry-After": header} if header else {})
    error = InvalidStatus(Response(429, "Too Many Requests", headers))
    assert retry_after(error) == seconds


def test_skip_log_says_once_a_minute_per_kind_how_many_it_left_out() -> None:
    skips = SkipLog(interval=60.0)
    assert skips.due("not_json", 1000.0) == 0
    assert skips.due("not_json", 1001.0) is None
    assert skips.due("oversized", 1002.0) == 0  # each kind its own minute
    assert skips.due("not_json", 1030.0) is None
    assert skips.due("not_json", 1060.0) == 2
    assert skips.due("not_json", 1061.0) is None


def test_the_package_ships_jetstreams_own_dictionary() -> None:
    """The collector's copy is byte for byte the one in the real events' folder (the fake
    Jetstream compresses with that one), and it is the dictionary Jetstream names."""
    import zstandard

    from collector.sources.bluesky.frames import load_dictionary

    shipped = load_dictionary()
    assert shipped == (SAMPLES / "legacy_subscribe.zdict").read_bytes()
    assert zstandard.ZstdCompressionDict(shipped).dict_id() == 1612007021
