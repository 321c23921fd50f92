"""Durable minute chunks: the only code that writes captured messages to disk.

A chunk is written as `<name>.jsonl.part` and renamed to `<name>.jsonl` when its minute ends,
when the stream stops, or at the next start after a crash, so readers (send, process) only
ever see closed, whole-line files. Data is written with `os.write` from an in-memory
backlog: when the disk is full the backlog simply waits (bounded) and is written, in order,
when space returns, so a full disk delays lines but never tears or reorders them.
"""

from __future__ import annotations

import errno
import logging
import os
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from collector.fsutil import fsync_dir
from collector.layout import PART_SUFFIX, chunk_path, iter_part_files

log = logging.getLogger("collector.chunks")

# Keep at most this much unwritten data in memory while the disk is full (hours of stream).
MAX_BACKLOG_BYTES = 256 * 1024 * 1024


@dataclass
class RecoveryResult:
    """What start-up found of chunks a previous run left open."""

    chunks: int = 0
    torn_lines: int = 0
    empty_removed: int = 0


def recover_part_files(root: Path) -> RecoveryResult:
    """Close every `.part` chunk left by a crash: keep whole lines, drop one torn last line."""
    result = RecoveryResult()
    for part in iter_part_files(root):
        final = part.with_name(part.name[: -len(PART_SUFFIX)])
        with part.open("rb+") as handle:
            data = handle.read()
            keep = data.rfind(b"\n") + 1
            if keep < len(data):
                result.torn_lines += 1
                log.warning("dropped a torn last line of %d bytes from %s", len(data) - keep, part)
                handle.truncate(keep)
            handle.flush()
            os.fsync(handle.fileno())
        if keep == 0:
            part.unlink()
            result.empty_removed += 1
            continue
        os.rename(part, final)
        fsync_dir(final.parent)
        result.chunks += 1
        log.info("recovered chunk %s", final.name)
    return result


class DiskFull(Exception):
    """Internal signal: the backlog could not be written now; retry later."""


class _OpenChunk:
    def __init__(self, final: Path, minute_end: float) -> None:
        self.final = final
        self.part = final.with_name(final.name + PART_SUFFIX)
        self.minute_end = minute_end
        self.fd: int | None = None
        self.dirty = False

    def ensure_open(self) -> int:
        if self.fd is None:
            self.part.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.part, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        return self.fd


class ChunkWriter:
    """Appends lines to the chunk of their minute of receipt and closes chunks on time.

    Not thread-safe: one thread (the stream's writer loop) owns it.
    """

    def __init__(self, root: Path, server_id: str, zone: ZoneInfo, started_at: float) -> None:
        self.root = root
        self.server_id = server_id
        self.zone = zone
        self.first_minute = int(started_at // 60)
        self.current: _OpenChunk | None = None
        # End of the last minute whose chunk was closed: a line stamped before it (the reader
        # stamped it just before the minute ended, the writer took it after) joins the next
        # chunk, for a new chunk of a closed minute would take that chunk's name while the
        # closed one still waits in the backlog, and its rename would replace it.
        self.closed_until = 0.0
        # FIFO of pending work: (chunk, bytes) to append, or (chunk, None) to close it.
        self.backlog: deque[tuple[_OpenChunk, bytes | None]] = deque()
        self.backlog_bytes = 0
        self.dropped = 0
        self.closed_chunks = 0

    @property
    def open_chunk_name(self) -> str:
        return self.current.part.name if self.current else ""

    def add(self, received_at: float, line: bytes) -> bool:
        """Queue one line (ending in `\\n`); False if dropped because the backlog is full."""
        chunk = self.current
        if chunk is None or received_at >= chunk.minute_end:
            chunk = self._rotate(max(received_at, self.closed_until))
        if self.backlog_bytes + len(line) > MAX_BACKLOG_BYTES:
            self.dropped += 1
            return False
        self.backlog.append((chunk, line))
        self.backlog_bytes += len(line)
        return True

    def tick(self, now: float) -> None:
        """Close the open chunk once its minute is over, even if no message arrives."""
        if self.current is not None and now >= self.current.minute_end:
            self.close()

    def close(self) -> None:
        """Queue the closing of the open chunk (its minute is over, or the stream stops)."""
        if self.current is not None:
            self.backlog.append((self.current, None))
            self.closed_until = self.current.minute_end
            self.current = None

    def _rotate(self, received_at: float) -> _OpenChunk:
        self.close()
        minute = int(received_at // 60)
        moment = datetime.fromtimestamp(received_at, UTC)
        mid_minute = minute == self.first_minute
        final = chunk_path(self.root, self.server_id, moment, self.zone, mid_minute)
        while final.exists() or final.with_name(final.name + PART_SUFFIX).exists():
            # Two starts within one second: never reuse a name an earlier run wrote.
            moment = moment.replace(second=(moment.second + 1) % 60)
            final = chunk_path(self.root, self.server_id, moment, self.zone, True)
        self.current = _OpenChunk(final, (minute + 1) * 60.0)
        return self.current

    def flush(self, sync: bool) -> None:
        """Write the backlog in order; with `sync`, fsync what was written.

        Raises DiskFull (keeping the unwritten rest) when the disk has no room.
        """
        touched: dict[int, _OpenChunk] = {}
        try:
            while self.backlog:
                chunk, data = self.backlog[0]
                if data is None:
                    self._finish(chunk)
                    touched.pop(id(chunk), None)
                else:
                    self._write_head(chunk, data)
                    touched[id(chunk)] = chunk
                self.backlog.popleft()
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(str(error)) from None
            raise
        finally:
            if sync:
                for chunk in touched.values():
                    if chunk.fd is not None and chunk.dirty:
                        try:
                            os.fsync(chunk.fd)
                            chunk.dirty = False
                        except OSError as error:
                            log.warning("fsync of %s failed: %s", chunk.part.name, error)

    def _write_head(self, chunk: _OpenChunk, data: bytes) -> None:
        fd = chunk.ensure_open()
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            chunk.dirty = True
            self.backlog_bytes -= written
            view = view[written:]
            if view:
                # Keep only what is left, so a retry after ENOSPC continues mid-line.
                self.backlog[0] = (chunk, bytes(view))

    def _finish(self, chunk: _OpenChunk) -> None:
        if chunk.fd is None:
            return  # nothing was ever written to it
        os.fsync(chunk.fd)
        os.close(chunk.fd)
        chunk.fd = None
        os.rename(chunk.part, chunk.final)
        fsync_dir(chunk.final.parent)
        self.closed_chunks += 1
