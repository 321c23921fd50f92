"""Where a Jetstream connection resumes, and whether the instance honoured it.

A v1 cursor is a `time_us` (unix microseconds, the instance's clock). The durable truth of
what this host has is its own chunks, so a start (restart, crash, power cut) resumes from the
largest `time_us` in the newest chunks on disk, never from a separate state file that a power
cut could leave ahead of the data. Within a run, a reconnect resumes from the largest
`time_us` delivered so far. Both are rewound by `REWIND_US`:

* `time_us` is not monotonic in the stream (events come in relay order; the real sample
  window goes back by milliseconds), so the largest one seen is not a point before which
  everything has arrived;
* the cursor from chunks is read from the tail of each chunk only (lines near the end carry
  the largest times), which may miss a slightly larger time earlier in the file.

The repeats a rewind brings are removed by the merge (identity is the AT-URI), so rewinding
too far only costs bandwidth, while not rewinding enough loses events: err on rewinding.

An old cursor is silently clamped by the instance to the oldest event it keeps (36 h by
default): `replay_gap` tells from the first event of a resumed connection that events between
the cursor and that event may be missing on this host.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

import orjson

from collector.layout import CHUNK_NAME, PART_SUFFIX, is_day_name, is_hour_name

SECOND_US = 1_000_000
REWIND_US = 10 * SECOND_US
# A resumed connection whose first event is this much later than the cursor was clamped.
CLAMP_TOLERANCE_US = max(60 * SECOND_US, 2 * REWIND_US)
# A time_us further ahead of this host's clock is not trusted as a cursor: resuming from a
# bogus future time would be a live tail, losing what came in between.
FUTURE_LIMIT_US = 3600 * SECOND_US
# Below this a cursor is a v2 sequence number on v2 hosts, not a time (research/bluesky.md §4).
MIN_TIME_US = 10**15

# The start-up scan: the tail of each chunk, the newest few chunks, a bound on the search.
TAIL_BYTES = 2 * 1024 * 1024 + 64 * 1024  # holds at least one whole line of a 1 MiB event
NEWEST_CHUNKS = 4  # chunks read for the largest time_us (a restart makes a mid-minute chunk)
MAX_CHUNKS_SCANNED = 24  # then give up: older chunks are not Jetstream's (source was x)


def subscribe_url(base: str, collections: Sequence[str], compress: bool,
                  cursor: int | None) -> str:
    """The v1 `/subscribe` URL: `wantedCollections` once per collection, `compress=true`,
    `cursor=<time_us>` when resuming (none: the live tail)."""
    params = [("wantedCollections", collection) for collection in collections]
    if compress:
        params.append(("compress", "true"))
    if cursor is not None:
        params.append(("cursor", str(cursor)))
    if not params:
        return base
    return f"{base}?{urlencode(params, safe='*')}"


def rewound(time_us: int | None) -> int | None:
    """The cursor to resume from after seeing events up to `time_us` (None: live tail)."""
    if time_us is None:
        return None
    return max(MIN_TIME_US, time_us - REWIND_US)


def trusted(time_us: int, now: float) -> bool:
    """Whether `time_us` may become a cursor: a time (not a sequence), not far in the future."""
    return MIN_TIME_US <= time_us <= int(now * SECOND_US) + FUTURE_LIMIT_US


def replay_gap(cursor: int | None, first_time_us: int) -> int | None:
    """Microseconds possibly lost when a connection asked for `cursor` and its first event
    came at `first_time_us`; None when the replay started where it was asked to."""
    if cursor is None:
        return None
    gap = first_time_us - cursor
    return gap if gap > CLAMP_TOLERANCE_US else None


def utc_text(time_us: int) -> str:
    """A time_us for people: `2026-12-06T21:30:00.123456+00:00`."""
    return datetime.fromtimestamp(time_us / SECOND_US, UTC).isoformat()


def largest_time_us(data: bytes, starts_mid_line: bool, now: float) -> int | None:
    """The largest trusted top-level `time_us` of the whole lines in `data`.

    `data` is a chunk's tail: with `starts_mid_line` its first piece is the end of a line cut
    by the read and is ignored; a last piece without its newline is a torn line (a crash in
    the middle of a write) and is ignored too. Lines that are not JSON objects are skipped.
    """
    lines = data.split(b"\n")
    lines.pop()  # b"" after a final newline, else a torn line
    if starts_mid_line and lines:
        lines.pop(0)
    best: int | None = None
    for line in lines:
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(event, dict):
            continue
        time_us = event.get("time_us")
        if type(time_us) is int and trusted(time_us, now) and (best is None or time_us > best):
            best = time_us
    return best


@dataclass(frozen=True)
class ChunkCursor:
    """The largest time_us found on disk and where."""

    time_us: int
    chunk: Path


def _chunk_order(name: str, server_id: str) -> tuple[int, int, int] | None:
    """Sort key of one of `server_id`'s chunks in an hour folder: (minute, second, `.part`
    last); None for anything else."""
    part = name.endswith(PART_SUFFIX)
    match = CHUNK_NAME.match(name[: -len(PART_SUFFIX)] if part else name)
    if not match or match["server"] != server_id:
        return None
    second = match["second"]
    return int(match["minute"]), int(second) if second else 0, int(part)


def _real_folders(folder: Path, accept: Callable[[str], bool]) -> list[str]:
    """Names of the real sub-folders (not links to one) that `accept` takes, newest first."""
    with os.scandir(folder) as entries:
        names = [e.name for e in entries if e.is_dir(follow_symlinks=False) and accept(e.name)]
    return sorted(names, reverse=True)


def newest_chunks(root: Path, server_id: str) -> Iterator[Path]:
    """This server's chunks under `root/day/hour/`, closed or `.part`, newest first.

    Day and hour names sort in time order (a repeated hour `02b` between `02` and `03`);
    real folders and regular files only, so a planted symlink is never followed.
    """
    if not root.is_dir():
        return
    for day in _real_folders(root, is_day_name):
        for hour in _real_folders(root / day, is_hour_name):
            folder = root / day / hour
            with os.scandir(folder) as entries:
                found = [(key, e.name) for e in entries
                         if e.is_file(follow_symlinks=False)
                         and (key := _chunk_order(e.name, server_id)) is not None]
            for _, name in sorted(found, reverse=True):
                yield folder / name


def read_tail(path: Path, size: int = TAIL_BYTES) -> tuple[bytes, bool]:
    """The last `size` bytes of a file, and whether they start after its first byte."""
    with path.open("rb") as handle:
        length = os.fstat(handle.fileno()).st_size
        start = max(0, length - size)
        handle.seek(start)
        return handle.read(size), start > 0


def cursor_from_chunks(root: Path, server_id: str, now: float) -> ChunkCursor | None:
    """The largest time_us in this server's newest chunks (None: none holds an event).

    Reads the tails of the `NEWEST_CHUNKS` newest chunks that hold any event, looking at no
    more than `MAX_CHUNKS_SCANNED` chunks (X chunks hold no time_us).
    """
    best: ChunkCursor | None = None
    with_events = 0
    for scanned, path in enumerate(newest_chunks(root, server_id)):
        if scanned >= MAX_CHUNKS_SCANNED or with_events >= NEWEST_CHUNKS:
            break
        try:
            data, cut = read_tail(path)
        except OSError:
            continue  # vanished (sent and pruned) or unreadable: the next one will do
        time_us = largest_time_us(data, cut, now)
        if time_us is None:
            continue
        with_events += 1
        if best is None or time_us > best.time_us:
            best = ChunkCursor(time_us, path)
    return best
