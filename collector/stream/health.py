"""The stream's live health record, shared by `collector stream` (writer) and `status` (reader).

The record is a small JSON object rewritten in place every couple of seconds. It is padded
to a fixed size and written with one `pwrite` over the same bytes, because the disk that
holds it may be full exactly when the status matters most: overwriting already allocated
blocks needs no free space, while a temp file and rename would.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

STATUS_FILE = "stream_status.json"
RECORD_SIZE = 4096


@dataclass
class StreamHealth:
    """What the stream knows about itself; plain attributes, updated from two threads.

    Times are Unix seconds (`time.time()`), 0 meaning "never".
    """

    pid: int = field(default_factory=os.getpid)
    started_at: float = field(default_factory=time.time)
    updated_at: float = 0.0
    connected: bool = False
    connected_since: float = 0.0
    last_message_at: float = 0.0
    last_tweet_at: float = 0.0
    last_heartbeat_at: float = 0.0
    stalled: bool = False
    disk_full: bool = False
    open_chunk: str = ""
    messages: int = 0
    tweets: int = 0
    heartbeats: int = 0
    malformed_lines: int = 0
    # Why frames were skipped, per kind (Bluesky: not_json, corrupt_zstd, oversized, ...);
    # each is counted in malformed_lines too.
    skipped_frames: dict[str, int] = field(default_factory=dict)
    # Resumed connections whose replay started later than asked (an old cursor clamped by the
    # Jetstream instance), and the seconds between (events there may be missing here).
    replay_gaps: int = 0
    replay_gap_seconds: float = 0.0
    torn_lines_recovered: int = 0
    connections: int = 0
    connection_attempts: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    last_error: str = ""
    backlog_bytes: int = 0
    dropped_messages: int = 0
    stopped: bool = False

    def count_failure(self, reason: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1


class HealthFile:
    """In-place writer of the padded health record."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if os.fstat(self._fd).st_size < RECORD_SIZE:
            os.pwrite(self._fd, b" " * RECORD_SIZE, 0)

    def write(self, health: StreamHealth) -> None:
        """Overwrite the record; raises OSError only if even that is impossible."""
        health.updated_at = time.time()
        data = orjson.dumps(asdict(health))
        if len(data) > RECORD_SIZE - 1:
            health.last_error = health.last_error[:200]
            data = orjson.dumps(asdict(health))[: RECORD_SIZE - 1]
        os.pwrite(self._fd, data.ljust(RECORD_SIZE - 1) + b"\n", 0)

    def close(self) -> None:
        os.close(self._fd)


def read_health(path: Path) -> dict[str, Any] | None:
    """The last record, or None if there is none; retries once over a torn concurrent write."""
    for _ in range(3):
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            record = orjson.loads(raw.strip() or b"null")
        except orjson.JSONDecodeError:
            time.sleep(0.05)
            continue
        return record if isinstance(record, dict) else None
    return None
