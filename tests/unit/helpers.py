"""Plain helpers the unit tests of `status` and `metrics` (and `retention`) share.

Both commands judge a host from the files the others leave; these write such files.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from collector.layout import chunk_path
from collector.settings import Settings, load_settings
from collector.stream.health import STATUS_FILE, HealthFile, StreamHealth
from tests.conftest import SettingsWriter


def running_stream(state_dir: Path) -> None:
    """The health file of a stream connected a minute ago, so only the tested part judges."""
    now = time.time()
    health = StreamHealth(connected=True, connected_since=now - 60, last_message_at=now,
                          last_tweet_at=now, open_chunk="srv1_x.jsonl.part")
    HealthFile(state_dir / STATUS_FILE).write(health)


def chunk(root: Path, server: str, moment: datetime, age_seconds: float = 0) -> Path:
    """A closed one-line chunk of `server` for `moment` (CET), last written `age_seconds` ago."""
    path = chunk_path(root, server, moment, ZoneInfo("CET"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"data": {"id": "1"}}\n')
    when = time.time() - age_seconds
    os.utime(path, (when, when))
    return path


def stamp(path: Path) -> tuple[int, int]:
    """How a ledger records a file, (size, mtime_ns), computed here apart from the collector."""
    status = path.lstat()
    return status.st_size, status.st_mtime_ns


def replica_host(write_settings: SettingsWriter, tmp_path: Path) -> Settings:
    """A secondary with a replica tree at tmp_path/replica (as the role creates it), stream up."""
    replica = tmp_path / "replica"
    for folder in ("chunks", "vault", "state"):
        (replica / folder).mkdir(parents=True)
    settings = load_settings(write_settings(replica_dst=str(replica)))
    running_stream(settings.state_dir)
    return settings
