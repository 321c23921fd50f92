"""Chunk lines, whatever the source: one JSON message per line, the last one maybe torn.

`parse_json_line` is the one parser of a captured line (orjson first, the standard library
for what orjson refuses), used by the stream's transport and by the merge alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import orjson

# Why a line was not merged, whatever the source; each becomes a column of the day report
# (a source adds its own reasons: `Source.skip_reasons`).
SKIP_NOT_JSON = "not_json"  # not valid JSON (and not the last line of its chunk)
SKIP_TORN = "torn_line"  # an unparseable last line without its newline


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
