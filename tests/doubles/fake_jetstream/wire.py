"""Bytes on the wire: events serialised as Jetstream's Go server writes them, the zstd
frames of `compress=true`, and the deliberately broken frames of the faults.

Go's `encoding/json` writes compact JSON in struct order with UTF-8 left as is, but escapes
`&`, `<`, `>`, U+2028 and U+2029 (the real window has `\\u0026`); those characters can only
occur inside JSON strings, so escaping them after orjson is exact.
"""

from __future__ import annotations

import base64
import os
import struct
from typing import Any

import orjson
import zstandard

from tests.doubles.fake_jetstream.samples import dictionary

GO_ESCAPES = (
    (b"&", b"\\u0026"), (b"<", b"\\u003c"), (b">", b"\\u003e"),
    ("\u2028".encode(), b"\\u2028"), ("\u2029".encode(), b"\\u2029"),
)
TIME_US_MARK = b',"time_us":0,'
# Starts like a zstd frame (magic number), then is nothing zstd can decode.
CORRUPT_ZSTD = b"\x28\xb5\x2f\xfd" + b"\xff\xfe not a zstd frame: corrupt_frame fault \x00\x01"
OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2


def go_json(obj: Any) -> bytes:
    """`obj` as Go's encoding/json would write it."""
    data = orjson.dumps(obj)
    for raw, escaped in GO_ESCAPES:
        if raw in data:
            data = data.replace(raw, escaped)
    return data


def split_event(event: dict[str, Any]) -> tuple[bytes, bytes]:
    """An event's JSON in two parts that enclose the digits of its `time_us` (second key, as
    on the wire), so each instance stamps its own time without serialising again."""
    stamped = {"did": event["did"], "time_us": 0}
    stamped.update((key, value) for key, value in event.items() if key != "did")
    data = go_json(stamped)
    cut = data.index(TIME_US_MARK)
    return data[: cut + len(TIME_US_MARK) - 2], data[cut + len(TIME_US_MARK) - 1:]


def join_event(parts: tuple[bytes, bytes], time_us: int) -> bytes:
    return parts[0] + str(time_us).encode() + parts[1]


class Zstd:
    """One connection's zstd compressor with the v1 dictionary (not thread-safe; one per
    event loop is enough). Frames carry the dictionary id and their content size."""

    def __init__(self) -> None:
        self._dict = zstandard.ZstdCompressionDict(dictionary())
        self._compressor = zstandard.ZstdCompressor(dict_data=self._dict)

    def compress(self, data: bytes) -> bytes:
        return self._compressor.compress(data)


def decompressor() -> zstandard.ZstdDecompressor:
    """What a v1 client decompresses frames with (tests use it)."""
    return zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(dictionary()))


def malformed(data: bytes) -> bytes:
    """The first half of an event's JSON (cut on a character boundary): not JSON."""
    return data[: len(data) // 2].decode("utf-8", "ignore").encode()


def padded(event: dict[str, Any], time_us: int, size: int, zstd: Zstd | None) -> bytes:
    """The event with a `padding` key of incompressible text, so that its frame (compressed
    when `zstd` is given) is larger than `size` bytes."""
    extra = size + 64
    while True:
        body = dict(event)
        body["padding"] = base64.b64encode(os.urandom(extra * 3 // 4 + 3)).decode()[:extra]
        data = join_event(split_event(body), time_us)
        frame = zstd.compress(data) if zstd is not None else data
        if len(frame) > size:
            return frame
        extra += size - len(frame) + 64


def frame_head(opcode: int, length: int) -> bytes:
    """The header of an unmasked, final WebSocket frame (server to client)."""
    if length < 126:
        return struct.pack("!BB", 0x80 | opcode, length)
    if length < 1 << 16:
        return struct.pack("!BBH", 0x80 | opcode, 126, length)
    return struct.pack("!BBQ", 0x80 | opcode, 127, length)
