"""Minute chunks: rotation on time, whole lines only, crash recovery, a disk that fills up."""

from __future__ import annotations

import errno
import os
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from collector.stream import chunks
from collector.stream.chunks import ChunkWriter, DiskFull, recover_part_files

CET = ZoneInfo("CET")
T0 = datetime(2026, 11, 27, 20, 9, 30, tzinfo=UTC).timestamp()  # 21:09:30 CET


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_lines_go_to_their_minute_and_chunks_close_on_time(tmp_path: Path) -> None:
    writer = ChunkWriter(tmp_path, "srv1", CET, started_at=T0)
    writer.add(T0, b"a\n")
    writer.add(T0 + 20, b"b\n")  # 21:09:50
    writer.add(T0 + 40, b"c\n")  # 21:10:10
    writer.flush(sync=True)
    assert files(tmp_path) == {
        "2026-11-27/21/srv1_2026-11-27_21-09-30.jsonl": b"a\nb\n",  # started mid-minute
        "2026-11-27/21/srv1_2026-11-27_21-10.jsonl.part": b"c\n",
    }
    writer.tick(T0 + 89)
    writer.flush(sync=True)
    assert "2026-11-27/21/srv1_2026-11-27_21-10.jsonl.part" in files(tmp_path)
    writer.tick(T0 + 90)  # 21:11:00: the minute is over even without a message
    writer.flush(sync=True)
    assert files(tmp_path) == {
        "2026-11-27/21/srv1_2026-11-27_21-09-30.jsonl": b"a\nb\n",
        "2026-11-27/21/srv1_2026-11-27_21-10.jsonl": b"c\n",
    }
    assert writer.closed_chunks == 2


def test_a_line_stamped_before_its_minute_closed_joins_the_next_chunk(tmp_path: Path) -> None:
    """The reader stamps a line just before a minute ends; the writer thread takes it only
    after `tick` closed that minute. Before, it opened a second chunk of the closed minute
    under the same name, and that chunk's rename replaced the first one (CI lost 40 lines)."""
    writer = ChunkWriter(tmp_path, "srv1", CET, started_at=T0)
    writer.add(T0, b"a\n")
    writer.add(T0 + 10, b"b\n")
    writer.tick(T0 + 30.01)  # 21:10:00.01: 21:09 is over, its chunk not yet written
    writer.add(T0 + 29.999, b"late\n")  # stamped 21:09:59.999
    writer.add(T0 + 31, b"c\n")
    writer.flush(sync=True)
    writer.close()
    writer.flush(sync=True)
    assert files(tmp_path) == {
        "2026-11-27/21/srv1_2026-11-27_21-09-30.jsonl": b"a\nb\n",
        "2026-11-27/21/srv1_2026-11-27_21-10.jsonl": b"late\nc\n",
    }


def test_restart_in_the_same_minute_never_overwrites(tmp_path: Path) -> None:
    first = ChunkWriter(tmp_path, "srv1", CET, started_at=T0)
    first.add(T0, b"a\n")
    first.close()
    first.flush(sync=True)
    second = ChunkWriter(tmp_path, "srv1", CET, started_at=T0)  # same second, even
    second.add(T0 + 0.5, b"b\n")
    second.close()
    second.flush(sync=True)
    assert sorted(files(tmp_path).values()) == [b"a\n", b"b\n"]


def test_recovery_keeps_whole_lines_and_drops_one_torn_line(tmp_path: Path) -> None:
    hour = tmp_path / "2026-11-27" / "21"
    hour.mkdir(parents=True)
    (hour / "srv1_2026-11-27_21-09.jsonl.part").write_bytes(b'{"a":1}\n{"b":2}\n{"c":')
    (hour / "srv1_2026-11-27_21-10.jsonl.part").write_bytes(b'{"d":4}\n')
    (hour / "srv1_2026-11-27_21-11.jsonl.part").write_bytes(b'{"e"')
    result = recover_part_files(tmp_path)
    assert (result.chunks, result.torn_lines, result.empty_removed) == (2, 2, 1)
    assert files(tmp_path) == {
        "2026-11-27/21/srv1_2026-11-27_21-09.jsonl": b'{"a":1}\n{"b":2}\n',
        "2026-11-27/21/srv1_2026-11-27_21-10.jsonl": b'{"d":4}\n',
    }


def test_full_disk_keeps_lines_in_order_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write
    budget = {"bytes": 5}

    def tight_write(fd: int, data: bytes | memoryview) -> int:
        if budget["bytes"] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        allowed = min(len(data), budget["bytes"])
        budget["bytes"] -= allowed
        return real_write(fd, bytes(data[:allowed]))

    monkeypatch.setattr(chunks.os, "write", tight_write)
    writer = ChunkWriter(tmp_path, "srv1", CET, started_at=T0)
    writer.add(T0, b"first line\n")
    writer.add(T0 + 1, b"second line\n")
    with pytest.raises(DiskFull):
        writer.flush(sync=True)
    assert writer.backlog_bytes == len(b"first line\nsecond line\n") - 5
    budget["bytes"] = 10**6  # space returns
    writer.close()
    writer.flush(sync=True)
    assert list(files(tmp_path).values()) == [b"first line\nsecond line\n"]
    assert writer.backlog_bytes == 0
