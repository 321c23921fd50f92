"""Pass 1: every chunk of an hour opened safely, indexed, and kept open for pass 2."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from collector.errors import CollectorError
from collector.layout import DEFAULT_MAX_CHUNK_MB, MIB, HourKey
from collector.process.parallel import (
    IndexJob,
    helper_result,
    index_chunks,
    split_jobs,
    start_helper,
)
from collector.process.plan import chunk_minute
from collector.process.quarantine import Quarantine
from collector.process.result import Timings
from collector.process.scan import ChunkFile
from collector.sources import HourIndex, Source
from collector.tree import (
    Entry,
    EntryChanged,
    Rejected,
    UnsafeEntry,
    open_chunk,
    read_at_most,
    shown,
)

log = logging.getLogger("collector.process")


class KeptLines:
    """Pass 2's access to the lines pass 1 indexed: the chunks stay open between the passes.

    Holding the descriptors (a few hundred at most: servers x 60 minutes) means a chunk
    removed in between is still read whole, and `os.pread` reads a line from the page cache
    without mapping the files into this process's memory.
    """

    def __init__(self) -> None:
        self.fds: list[int] = []

    def add(self, fd: int) -> None:
        self.fds.append(fd)

    def read_line(self, chunk_no: int, offset: int, length: int) -> bytes:
        return os.pread(self.fds[chunk_no], length, offset)

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []


@dataclass
class HourRead:
    """Pass 1's result for one hour: the index, the open chunks it points into, and the
    chunks that were read (the ledger records only those: one that vanished or was
    quarantined on the way was not merged)."""

    index: HourIndex
    lines: KeptLines
    read: list[ChunkFile] = field(default_factory=list)
    # Ids in the previous hour's tail (dropped from this hour if it had them): the ids the
    # fewer-ids guard excuses, since they were published in the previous hour instead.
    earlier_ids: set[int] = field(default_factory=set)


# Below this many bytes of chunks an hour is indexed in this process alone: starting a helper
# interpreter (~0.1 s) would cost more than it saves.
PARALLEL_MIN_BYTES = 32 * 1024 * 1024


def open_checked(chunk: ChunkFile, quarantine: Quarantine, max_bytes: int
                 ) -> tuple[int, int] | None:
    """A scanned chunk opened to read (descriptor, size to read), or None when it must not
    be read: gone (logged), or no longer a regular single-link file within the limit, or
    unreadable (quarantined; nothing of it is read)."""
    try:
        return open_chunk(chunk.folder.root, chunk.entry.parts, max_bytes)
    except (FileNotFoundError, EntryChanged):
        log.warning("chunk %s vanished while processing", shown(str(chunk.path)))
    except UnsafeEntry as unsafe:  # quarantine what is there now, if it is still that
        found = Entry(chunk.entry.parts, unsafe.device, unsafe.inode)
        quarantine.take(chunk.folder, Rejected(found, unsafe.reason))
    except OSError as error:
        quarantine.take(chunk.folder, Rejected(
            chunk.entry, f"an unreadable file ({os.strerror(error.errno or 0)})"))
    return None


def received_earlier(source: Source, chunks: list[ChunkFile], quarantine: Quarantine,
                     max_bytes: int) -> tuple[set[int], list[ChunkFile]]:
    """Record ids in these chunks (the previous hour's tail), and the chunks read."""
    found: set[int] = set()
    read: list[ChunkFile] = []
    for chunk in chunks:
        opened = open_checked(chunk, quarantine, max_bytes)
        if opened is None:
            continue
        fd, size = opened
        try:
            found |= source.ids_in(read_at_most(fd, size))
        except OSError as error:
            raise CollectorError(f"cannot read chunk {shown(str(chunk.path))}: "
                                 f"{os.strerror(error.errno or 0)}") from None
        finally:
            os.close(fd)
        read.append(chunk)
    return found, read


def read_hour(source: Source, hour: HourKey, chunks: list[ChunkFile], servers: tuple[str, ...],
              timings: Timings, workers: int = 1,
              earlier: list[ChunkFile] | None = None, quarantine: Quarantine | None = None,
              max_bytes: int = DEFAULT_MAX_CHUNK_MB * MIB) -> HourRead:
    """Pass 1: index every chunk of the hour (one small entry per distinct tweet).

    A large hour is split into `workers` groups of consecutive chunks (cut only where the
    server or minute changes): the last group is indexed here, the others by helper
    interpreters (`python -m collector.process.parallel --index`), so parsing uses every core; the
    partial indexes are then merged in chunk order (`HourIndex.absorb`), which gives the
    same result as one pass. Helpers read the chunks through this process's descriptors
    (`/proc/<pid>/fd/<n>`), so pass 1 and pass 2 see the very same files. Tweets found in
    `earlier` (the previous hour's tail) are then dropped: they belong to that hour.
    A chunk that is no longer what the scan saw is not read (`open_checked`).
    """
    quarantine = quarantine or Quarantine(datetime.now(UTC))
    lines = KeptLines()
    try:
        jobs, opened = _open_chunks(chunks, lines, quarantine, max_bytes)
        total = sum(job[4] for job in jobs)
        groups = split_jobs(jobs, workers if total >= PARALLEL_MIN_BYTES else 1)
        started = time.perf_counter()
        helpers = [start_helper(source, servers, group) for group in groups[:-1]]
        try:
            mine = index_chunks(source, servers, groups[-1] if groups else [])
            partials = [helper_result(source, helper) for helper in helpers]
        finally:
            for helper in helpers:
                if helper.poll() is None:
                    helper.kill()
                    helper.wait()
        index = partials[0][0] if partials else mine[0]
        for partial, _ in partials[1:] + ([mine] if partials else []):
            index.absorb(partial)
        earlier_read: list[ChunkFile] = []
        ids: set[int] = set()
        if earlier:
            ids, earlier_read = received_earlier(source, earlier, quarantine, max_bytes)
            index.drop_received_earlier(ids)
        read_seconds = max([mine[1], *(p[1] for p in partials)])
        timings.reading += read_seconds
        timings.merging += time.perf_counter() - started - read_seconds
    except BaseException:
        lines.close()
        raise
    return HourRead(index, lines, opened + earlier_read, ids)


def _open_chunks(chunks: list[ChunkFile], lines: KeptLines, quarantine: Quarantine,
                 max_bytes: int) -> tuple[list[IndexJob], list[ChunkFile]]:
    """Open the hour's chunks (kept open for pass 2); the index jobs and the chunks opened."""
    jobs: list[IndexJob] = []
    opened: list[ChunkFile] = []
    for chunk in chunks:
        checked = open_checked(chunk, quarantine, max_bytes)
        if checked is None:
            continue
        fd, size = checked
        lines.add(fd)
        opened.append(chunk)
        jobs.append((len(lines.fds) - 1, chunk.folder.index, chunk_minute(chunk.path),
                     f"/proc/{os.getpid()}/fd/{fd}", size))
    return jobs, opened


def read_ahead(chunks: list[ChunkFile], max_bytes: int) -> None:
    """Ask the kernel to start reading these chunks into the page cache (best effort; opened
    as safely as for reading, so a swapped entry is merely skipped here)."""
    for chunk in chunks:
        with contextlib.suppress(OSError, AttributeError, EntryChanged, UnsafeEntry):
            fd, _ = open_chunk(chunk.folder.root, chunk.entry.parts, max_bytes)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)
