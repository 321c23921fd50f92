"""`collector process`: merge every due hour of every server into the published outputs.

What is due: an hour whose end lies `process_grace_minutes` in the past and that has chunks
the ledger has not seen merged (new hours, and late chunks of hours already processed, e.g.
from a secondary that was cut off for a while). So a missed cron run, or days of downtime,
lose nothing: the next run processes every such hour, oldest first.

The ledger (`state_dir/process_ledger.json`) records, per hour, the chunks (server, name,
size) its outputs were made from. It is written after the outputs, so a crash in between
only means the hour is processed again, with byte-identical results. Raw chunks are kept
`raw_retention_days` after their hour so late data can still be merged with everything;
then the whole hour's chunks are removed together and the hour is marked pruned (a chunk
arriving even later cannot be merged completely any more: it is logged and removed).

Hour boundaries: a tweet belongs to the hour of its first receipt by any server. A copy
received again after the hour changed (a `backfill_minutes` reconnect, two servers' clocks
either side of the boundary) is dropped from the later hour: each hour is merged together
with the ids of the previous hour's last `LOOKBACK_MINUTES` of chunks, and those chunks are
part of what the ledger records for it, so a late one there reprocesses both hours.

Sources: this host's own chunks and every secondary's incoming folder, in `servers` order,
then the incoming folders of departed servers (in no `servers` any more: a destroyed main
after a promotion, a retired secondary), sorted, read like any secondary's. Their chunks are
merged until retention removes them, so an hour they captured keeps every id; the report
shows a departed server only in the hours it has chunks in (`reported_servers`).

Never fewer ids: before an hour's outputs are replaced, its existing IDs file is compared
with the new merge (`check_fewer_ids`). If the merge lacks any id the file holds, other than
ids the previous hour's tail received first (the rule above moved those, legitimately),
nothing of the hour is replaced (IDs, tweets, users, coverage, report line): the hour is
recorded in the ledger with `fewer_ids` so it is not merged again until its chunks change,
logged one line, counted (`ProcessResult.fewer_ids`) and alerted (`fewer_ids`, once per run).

Safety: one run at a time (`flock` on `state_dir/process.lock`); outputs are written
atomically (collector.outputs); inputs are only ever read, and removed only by retention
after their hour's outputs exist.

Trust: a secondary's folder holds whatever its key pushed. The scan (`collector.layout.
scan_tree`) never follows a link below a source's root and reads only regular single-link
files named like that server's chunks, up to `max_chunk_mb`; anything else in the tree (a
symlink, FIFO, socket, device, hard link, oversized or misnamed file, unreadable folder) is
moved, never deleted, to `incoming_dst/.quarantine/<server_id>/<path>.<time>` (the main's
own: `data_storage_dst/.quarantine/<server_id>/`), logged one line each, counted in the
report's `quarantined` column of the hour whose folder held it, and alerted
(`entries_quarantined`); every other hour is processed as usual. A chunk is opened with
`O_NOFOLLOW|O_NONBLOCK` and checked again with fstat, so an entry swapped after the scan is
never read either, and at most the size fstat saw is read.

Speed and memory (measured numbers in docs/process.md): each hour is merged in two passes
(collector.merge.HourIndex). Pass 1 parses every line once, split across helper interpreters
for a large hour, and keeps one small entry per distinct tweet; pass 2 reads the kept lines
back in id order and renders each row once, straight into a pool of xz threads (liblzma
releases the GIL), so rendering overlaps compression on every core. Hours are processed one
at a time, so memory follows the size of one hour, never the number of hours.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import lzma
import os
import pickle
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Container, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import orjson

from collector import notify
from collector.coverage import write_hour_coverage
from collector.daily_report import HourLine, update_report, update_report_cells
from collector.errors import CollectorError, DiskFullError, LockedError, SettingsError
from collector.layout import (
    CHUNK_NAME,
    DEFAULT_MAX_CHUNK_MB,
    MIB,
    Entry,
    EntryChanged,
    HourKey,
    Rejected,
    UnsafeEntry,
    hour_bounds,
    hour_of,
    is_day_name,
    is_hour_name,
    move_entry,
    open_chunk,
    read_at_most,
    remove_entry,
    scan_tree,
)
from collector.merge import (
    MAX_SERVERS,
    SKIP_REASONS,
    USER_COLUMNS,
    HourIndex,
    blocks_of,
    header_line,
    tweet_ids_in,
)
from collector.merge import TWEET_COLUMNS as TWEET_HEADER
from collector.outputs import (
    BLOCK_SIZE,
    CompressJob,
    compress_to_files,
    remove_stale_temps,
    write_bytes_atomic,
)
from collector.settings import Settings

log = logging.getLogger("collector.process")

LEDGER_NAME = "process_ledger.json"
LOCK_NAME = "process.lock"
# Beside the chunk folders (same filesystem, so a move is a rename) but outside every
# secondary's own folder, which is all its key can write to.
QUARANTINE_DIR = ".quarantine"


# ---- where the chunks are --------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    """Where one server's chunks are found on the main, and where its rejects go."""

    index: int
    server_id: str
    root: Path
    quarantine: Path
    own: bool = False  # the main's own data_storage_dst (its stream's `.part` files live there)


@dataclass(frozen=True)
class ChunkFile:
    source: Source
    path: Path
    size: int  # as the scan saw it (lstat); the ledger records it
    entry: Entry  # path below the source's root and inode, to open it without links

    @property
    def key(self) -> str:
        return f"{self.source.server_id}/{self.path.name}"


def sources(settings: Settings) -> list[Source]:
    """This host's own chunks and every other server's incoming folder, in `servers` order,
    then the folders of departed servers (`departed_server_ids`, sorted).

    The order is the merge's reading order, which decides ties (collector.merge): servers
    first keeps every hour of a fleet that lost no host exactly as before; a departed
    server comes last because it is no longer in `servers`, and its chunks are still read
    exactly like a secondary's folder (they may have been written by anyone holding its
    key, or by the dead main's key as replicas).
    """
    found = []
    for index, server_id in enumerate(settings.servers):
        if server_id == settings.server_id:
            root = settings.data_storage_dst
            quarantine = settings.data_storage_dst / QUARANTINE_DIR / server_id
        else:
            assert settings.incoming_dst is not None  # required on the main
            root = settings.incoming_dst / server_id
            quarantine = settings.incoming_dst / QUARANTINE_DIR / server_id
        found.append(Source(index, server_id, root, quarantine,
                            own=server_id == settings.server_id))
    for server_id in departed_server_ids(settings):
        assert settings.incoming_dst is not None  # departed_server_ids found it there
        found.append(Source(len(found), server_id, settings.incoming_dst / server_id,
                            settings.incoming_dst / QUARANTINE_DIR / server_id))
    if len(found) > MAX_SERVERS:
        raise CollectorError(f"{len(found)} servers to merge (servers and departed folders in "
                             f"{settings.incoming_dst}); at most {MAX_SERVERS} are supported")
    return found


def source_ids(all_sources: list[Source]) -> tuple[str, ...]:
    """The server ids by merge index: the names of the index's server bits."""
    return tuple(source.server_id for source in all_sources)


# A server id as the role writes it (an inventory name); anything else in incoming_dst is
# not a server's folder.
_SERVER_FOLDER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def departed_server_ids(settings: Settings) -> list[str]:
    """Servers no longer in `servers` whose incoming folder on this main still exists, sorted.

    A host removed from the fleet (destroyed, or retired) leaves chunks here until retention
    removes them: they are still merged (an hour is never published with fewer ids than
    before) and replicated like the main's own (`collector.replicate`), since the host that
    held the other copy is gone. Dot folders (`.quarantine`) are never a server's.
    """
    if settings.incoming_dst is None:
        return []
    try:
        names = [entry.name for entry in os.scandir(settings.incoming_dst)
                 if entry.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []
    return sorted(name for name in names
                  if _SERVER_FOLDER.match(name) and name not in settings.servers)


@dataclass
class Scan:
    """What the chunk folders hold: chunks by hour, and the entries to quarantine."""

    hours: dict[HourKey, list[ChunkFile]] = field(default_factory=dict)
    rejected: list[tuple[Source, Rejected]] = field(default_factory=list)


def scan_sources(all_sources: list[Source], max_bytes: int) -> Scan:
    """Every closed chunk by hour (per hour in server order, then name order) and every
    entry that is not one; reads nothing but folder listings and moves nothing.

    A server that never pushed has no folder: nothing to merge. A source's root that exists
    but cannot be read is an error, not an empty folder (skipping it would publish hours
    without that server); anything below the root that is wrong is a reject instead, so it
    cannot stop the other hours (collector.layout.scan_tree).
    """
    scan = Scan()
    for source in all_sources:
        try:
            tree = scan_tree(source.root, source.server_id, max_bytes, own=source.own)
        except OSError as error:
            raise CollectorError(f"cannot read the chunks of {source.server_id} under "
                                 f"{source.root}: {os.strerror(error.errno or 0)}") from None
        for found in tree.chunks:
            scan.hours.setdefault(found.chunk.hour, []).append(
                ChunkFile(source, found.chunk.path, found.size, found.entry))
        scan.rejected += [(source, rejected) for rejected in tree.rejected]
        for relative in tree.changed:
            log.warning("%s entry %s changed while it was scanned; the next run looks at it "
                        "again", source.server_id, shown(relative))
    for chunks in scan.hours.values():
        chunks.sort(key=lambda c: (c.source.index, c.path.name))
    return scan


# ---- quarantine ------------------------------------------------------------------------------

def shown(text: str) -> str:
    """A name as it may appear in a log line or mail subject: whatever a pushed file name
    holds (newlines, control or undecodable bytes) is escaped, so it cannot forge a line."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def quarantine_name(name: str, stamp: str, attempt: int = 0) -> str:
    """`<name>.<stamp>[-<attempt>]`: the time keeps a second entry of the same name apart,
    and no quarantined entry can take the name of a day or hour folder there (pure)."""
    return f"{name}.{stamp}" + (f"-{attempt}" if attempt else "")


def entry_hour(parts: tuple[str, ...]) -> HourKey | None:
    """The hour whose folder held an entry (or that the entry is the folder of); None above
    the hour level (pure)."""
    if len(parts) >= 2 and is_day_name(parts[0]) and is_hour_name(parts[1]):
        return HourKey(parts[0], parts[1])
    return None


@dataclass(frozen=True)
class QuarantinedEntry:
    """One entry taken out of a chunk tree (or found there and impossible to move)."""

    server_id: str
    entry: str  # path below the server's chunk folder
    reason: str
    moved_to: Path | None  # None: it could not be moved; it stays and is never read
    hour: HourKey | None  # the hour whose folder held it


class Quarantine:
    """Moves rejected entries out of the chunk trees, logging one line for each.

    Never deletes: an entry is renamed (a link as a link) into the source's quarantine
    folder under a name no one else uses. An entry that changed since it was looked at is
    left for the next run's scan to decide; one that cannot be moved (another filesystem,
    permissions) stays, is reported, and is never read.
    """

    def __init__(self, now: datetime) -> None:
        self.stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.entries: list[QuarantinedEntry] = []

    def take(self, source: Source, rejected: Rejected) -> None:
        entry, where = rejected.entry, shown(rejected.entry.relative)
        reason = shown(rejected.reason)  # may quote a pushed name ("a chunk of <server>")
        moved_to: Path | None = None
        try:
            moved_to = self._free_destination(source, entry.parts)
            move_entry(source.root, entry, moved_to)
        except EntryChanged:
            log.warning("%s entry %s changed while it was checked; the next run looks at it "
                        "again", source.server_id, where)
            return
        except OSError as error:
            log.warning("cannot quarantine %s entry %s (%s): %s; it stays and is not read",
                        source.server_id, where, reason, os.strerror(error.errno or 0))
            moved_to = None
        else:
            log.warning("quarantined %s entry %s (%s): moved to %s", source.server_id, where,
                        reason, shown(str(moved_to)))
        self.entries.append(QuarantinedEntry(source.server_id, entry.relative, reason,
                                             moved_to, entry_hour(entry.parts)))

    def _free_destination(self, source: Source, parts: tuple[str, ...]) -> Path:
        # Each level 0700 (mkdir's `parents` would leave the upper ones at the umask's
        # mode): what is kept there is hostile, and only this account needs to go in.
        base = source.quarantine.parent  # `.quarantine`, beside the servers' folders
        folder = base.parent
        for part in (base.name, source.quarantine.name, *parts[:-1]):
            folder = folder / part
            folder.mkdir(mode=0o700, exist_ok=True)
        attempt = 0
        while os.path.lexists(folder / quarantine_name(parts[-1], self.stamp, attempt)):
            attempt += 1  # only this process (under the lock) writes here
        return folder / quarantine_name(parts[-1], self.stamp, attempt)


def quarantined_in_hour(all_sources: list[Source], hour: HourKey) -> int:
    """How many entries the quarantine folders hold from this hour's folders (any server):
    the report's `quarantined` count, so it survives the hour being processed again."""
    count = 0
    for source in all_sources:
        day = source.quarantine / hour.day
        for name, is_folder in _names(day):
            if name.startswith(f"{hour.hour}."):
                count += 1  # the hour folder itself (a link, an unreadable folder)
            elif name == hour.hour and is_folder:
                count += len(_names(day / name))
    return count


def quarantined_total(all_sources: list[Source]) -> int:
    """Every entry the quarantine folders hold (what `collector status` shows): the names
    with a time suffix, found without following links or entering a quarantined folder."""
    count = 0
    folders = [source.quarantine for source in all_sources]
    while folders:
        folder = folders.pop()
        for name, is_folder in _names(folder):
            if _STAMPED.search(name):
                count += 1
            elif is_folder:
                folders.append(folder / name)
    return count


_STAMPED = re.compile(r"\.\d{8}T\d{6}Z(?:-\d+)?$")


def _names(folder: Path) -> list[tuple[str, bool]]:
    """Entry names of a folder and whether each is a real folder (links not followed)."""
    try:
        with os.scandir(folder) as entries:
            return [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
    except (FileNotFoundError, NotADirectoryError):
        return []


def quarantine_alert(entries: list[QuarantinedEntry], limit: int = 20) -> tuple[str, str]:
    """Subject and body of the `entries_quarantined` alert (pure)."""
    first = entries[0]
    count = f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"
    subject = (f"{count} in the chunk folders quarantined, not read: {first.server_id} "
               f"{shown(first.entry)} ({first.reason})")
    if len(entries) > 1:
        subject += f" and {len(entries) - 1} more"
    lines = [f"- {e.server_id} {shown(e.entry)}: {e.reason}; "
             + (f"moved to {shown(str(e.moved_to))}" if e.moved_to is not None
                else "could not be moved: it stays, and is never read")
             for e in entries[:limit]]
    if len(entries) > limit:
        lines.append(f"- ... and {len(entries) - limit} more (one log line each)")
    body = "\n".join([
        "These entries in the chunk folders are not chunk files (a symlink, FIFO, socket,",
        "device, hard link, a file larger than max_chunk_mb, a misnamed file or an unreadable",
        "folder). Nothing was read from them; every other hour was processed as usual.",
        "", *lines, "",
        "Quarantine: incoming_dst/.quarantine/<server_id>/ (the main's own chunks:",
        "data_storage_dst/.quarantine/<server_id>/). Nothing there is ever deleted by the",
        "collector. A real chunk moved there by mistake goes back to its hour folder under",
        "its name without the time suffix; the next run merges it as a late chunk.",
    ])
    return subject, body


# ---- the ledger ------------------------------------------------------------------------------

@dataclass
class Ledger:
    """What each processed hour was made from: {hour: {"chunks": {key: size}} or pruned};
    an hour whose outputs were kept by the fewer-ids guard also holds `fewer_ids`
    ({"published", "merged", "missing"} counts)."""

    path: Path
    hours: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Ledger:
        try:
            data = orjson.loads(path.read_bytes())
            hours = data["hours"]
            if not isinstance(hours, dict):
                raise TypeError("hours")
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError, KeyError, TypeError) as error:
            # Losing the ledger costs reprocessing (same bytes), never a wrong output.
            log.warning("ignoring unreadable ledger %s (%s)", path, type(error).__name__)
            return cls(path)
        return cls(path, hours)

    def save(self) -> None:
        write_bytes_atomic(self.path, orjson.dumps({"version": 1, "hours": self.hours},
                                                   option=orjson.OPT_SORT_KEYS))

    def is_current(self, hour: HourKey, chunks: list[ChunkFile]) -> bool:
        """True when every chunk present now was merged, with the same size."""
        entry = self.hours.get(str(hour))
        if entry is None:
            return False
        if entry.get("pruned"):
            return True
        merged = entry.get("chunks", {})
        return all(merged.get(chunk.key) == chunk.size for chunk in chunks)

    def is_pruned(self, hour: HourKey) -> bool:
        return bool(self.hours.get(str(hour), {}).get("pruned"))

    def record(self, hour: HourKey, chunks: list[ChunkFile],
               fewer_ids: FewerIds | None = None) -> None:
        """The hour was merged from `chunks`; with `fewer_ids`, its outputs were kept
        instead (`fewer_ids`: published, merged, missing counts), so the same chunks are
        not merged again (is_current) but any new or changed chunk is."""
        entry: dict[str, Any] = {
            "chunks": {chunk.key: chunk.size for chunk in chunks},
            "processed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        if fewer_ids is not None:
            entry["fewer_ids"] = fewer_ids.ledger_entry()
        self.hours[str(hour)] = entry


# ---- planning (pure given the scan) ----------------------------------------------------------

# How far back into the previous hour a repeated receipt is looked for: backfill reaches 5
# minutes back, plus delivery delay and clock differences between servers.
LOOKBACK_MINUTES = 10


def previous_hour(hour: HourKey, settings: Settings) -> HourKey:
    start, _ = hour_bounds(hour, settings.timezone)
    return hour_of(start - timedelta(minutes=1), settings.timezone)


def lookback_chunks(hour: HourKey, scan: dict[HourKey, list[ChunkFile]],
                    settings: Settings) -> list[ChunkFile]:
    """The previous hour's chunks of its last `LOOKBACK_MINUTES` (every server)."""
    return [chunk for chunk in scan.get(previous_hour(hour, settings), [])
            if chunk_minute(chunk.path) >= 60 - LOOKBACK_MINUTES]


def hour_inputs(hour: HourKey, scan: dict[HourKey, list[ChunkFile]],
                settings: Settings) -> list[ChunkFile]:
    """Every chunk an hour's outputs depend on: its own and the previous hour's tail."""
    return scan.get(hour, []) + lookback_chunks(hour, scan, settings)


def hour_exists(hour: HourKey, settings: Settings) -> bool:
    """False for the hour clocks skip in spring, or a `b` hour on a day without fall-back."""
    start, _ = hour_bounds(hour, settings.timezone)
    return hour_of(start, settings.timezone) == hour


def is_due(hour: HourKey, settings: Settings, now: datetime) -> bool:
    _, end = hour_bounds(hour, settings.timezone)
    return now >= end + timedelta(minutes=settings.process_grace_minutes)


def output_paths(vault: Path, hour: HourKey) -> tuple[Path, Path, Path]:
    folder = vault / hour.day
    prefix = hour.file_prefix
    return (folder / f"{prefix}_IDs.txt.xz", folder / f"{prefix}_tweets.csv.xz",
            folder / f"{prefix}_users.csv.xz")


def due_hours(scan: dict[HourKey, list[ChunkFile]], ledger: Ledger, settings: Settings,
              now: datetime, vault: Path) -> list[HourKey]:
    """Hours that are due and have chunks not yet merged (or whose outputs went missing)."""
    due = []
    for hour in sorted(scan):
        if not is_due(hour, settings, now) or ledger.is_pruned(hour):
            continue
        outputs_there = all(path.exists() for path in output_paths(vault, hour))
        if not outputs_there or not ledger.is_current(hour, hour_inputs(hour, scan, settings)):
            due.append(hour)
    return due


# ---- processing one hour ---------------------------------------------------------------------

@dataclass
class Timings:
    """Where the time went (seconds, wall clock), summed over the hours processed."""

    reading: float = 0.0  # pass 1: reading chunk files from disk
    merging: float = 0.0  # pass 1: parsing JSON, dropping duplicates; then ordering
    rendering: float = 0.0  # pass 2: reading kept lines back, rendering rows (overlaps xz)
    compressing: float = 0.0  # pass 2 as a whole: rendering, compressing, writing the files

    def as_dict(self) -> dict[str, float]:
        return {"reading": self.reading, "merging": self.merging,
                "rendering": self.rendering, "compressing": self.compressing}


@dataclass
class HourResult:
    hour: HourKey
    tweets: int
    users: int
    line: HourLine
    fewer_ids: FewerIds | None = None  # set: nothing was written (see check_fewer_ids)


@dataclass
class ProcessResult:
    hours: list[HourResult] = field(default_factory=list)  # hours whose outputs were written
    pruned_hours: int = 0
    timings: Timings = field(default_factory=Timings)
    quarantined: list[QuarantinedEntry] = field(default_factory=list)
    # Hours merged but not written: their published IDs file holds ids the merge lacks.
    fewer_ids: list[FewerIds] = field(default_factory=list)


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


def chunk_minute(path: Path) -> int:
    match = CHUNK_NAME.match(path.name)
    return int(match["minute"]) if match else 0


# Below this many bytes of chunks an hour is indexed in this process alone: starting a helper
# interpreter (~0.1 s) would cost more than it saves.
PARALLEL_MIN_BYTES = 32 * 1024 * 1024


def open_checked(chunk: ChunkFile, quarantine: Quarantine, max_bytes: int
                 ) -> tuple[int, int] | None:
    """A scanned chunk opened to read (descriptor, size to read), or None when it must not
    be read: gone (logged), or no longer a regular single-link file within the limit, or
    unreadable (quarantined; nothing of it is read)."""
    try:
        return open_chunk(chunk.source.root, chunk.entry.parts, max_bytes)
    except (FileNotFoundError, EntryChanged):
        log.warning("chunk %s vanished while processing", shown(str(chunk.path)))
    except UnsafeEntry as unsafe:  # quarantine what is there now, if it is still that
        found = Entry(chunk.entry.parts, unsafe.device, unsafe.inode)
        quarantine.take(chunk.source, Rejected(found, unsafe.reason))
    except OSError as error:
        quarantine.take(chunk.source, Rejected(
            chunk.entry, f"an unreadable file ({os.strerror(error.errno or 0)})"))
    return None


def received_earlier(chunks: list[ChunkFile], quarantine: Quarantine, max_bytes: int
                     ) -> tuple[set[int], list[ChunkFile]]:
    """Tweet ids in these chunks (the previous hour's tail), and the chunks read."""
    found: set[int] = set()
    read: list[ChunkFile] = []
    for chunk in chunks:
        opened = open_checked(chunk, quarantine, max_bytes)
        if opened is None:
            continue
        fd, size = opened
        try:
            found |= tweet_ids_in(read_at_most(fd, size))
        except OSError as error:
            raise CollectorError(f"cannot read chunk {shown(str(chunk.path))}: "
                                 f"{os.strerror(error.errno or 0)}") from None
        finally:
            os.close(fd)
        read.append(chunk)
    return found, read


def read_hour(hour: HourKey, chunks: list[ChunkFile], servers: tuple[str, ...],
              timings: Timings, workers: int = 1,
              earlier: list[ChunkFile] | None = None, quarantine: Quarantine | None = None,
              max_bytes: int = DEFAULT_MAX_CHUNK_MB * MIB) -> HourRead:
    """Pass 1: index every chunk of the hour (one small entry per distinct tweet).

    A large hour is split into `workers` groups of consecutive chunks (cut only where the
    server or minute changes): the last group is indexed here, the others by helper
    interpreters (`python -m collector.process --index`), so parsing uses every core; the
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
        groups = _split_jobs(jobs, workers if total >= PARALLEL_MIN_BYTES else 1)
        started = time.perf_counter()
        helpers = [_start_helper(servers, group) for group in groups[:-1]]
        try:
            mine = index_chunks(servers, groups[-1] if groups else [])
            partials = [_helper_result(helper) for helper in helpers]
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
            ids, earlier_read = received_earlier(earlier, quarantine, max_bytes)
            index.drop_received_earlier(ids)
        read_seconds = max([mine[1], *(p[1] for p in partials)])
        timings.reading += read_seconds
        timings.merging += time.perf_counter() - started - read_seconds
    except BaseException:
        lines.close()
        raise
    return HourRead(index, lines, opened + earlier_read, ids)


# (chunk number, server number, minute, path to read it by, bytes to read: fstat's at open)
IndexJob = tuple[int, int, int, str, int]


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
        jobs.append((len(lines.fds) - 1, chunk.source.index, chunk_minute(chunk.path),
                     f"/proc/{os.getpid()}/fd/{fd}", size))
    return jobs, opened


def _split_jobs(jobs: list[IndexJob], groups: int) -> list[list[IndexJob]]:
    """Consecutive groups of about equal count, cut only where (server, minute) changes."""
    if groups <= 1 or len(jobs) < 2:
        return [jobs]
    result: list[list[IndexJob]] = [[]]
    target = len(jobs) / groups
    for job in jobs:
        current = result[-1]
        if (len(current) >= target and len(result) < groups
                and current[-1][1:3] != job[1:3]):
            result.append([])
        result[-1].append(job)
    return result


def index_chunks(servers: tuple[str, ...], jobs: list[IndexJob]) -> tuple[HourIndex, float]:
    """Index the chunks of `jobs` in order; returns the index and the seconds spent reading."""
    index = HourIndex(servers)
    reading = 0.0
    for chunk_no, server_index, minute, path, size in jobs:
        started = time.perf_counter()
        # The path is this process's descriptor of a file checked to be regular: no FIFO
        # or device can be reached through it, and no more than fstat's size is read.
        with open(path, "rb") as handle:
            data = handle.read(size)
        reading += time.perf_counter() - started
        index.add_chunk(server_index, data, minute, chunk_no)
    return index, reading


def _start_helper(servers: tuple[str, ...], jobs: list[IndexJob]) -> subprocess.Popen[bytes]:
    request = orjson.dumps({"servers": servers, "jobs": jobs}).decode()
    return subprocess.Popen([sys.executable, "-m", "collector.process", "--index", request],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _helper_result(helper: subprocess.Popen[bytes]) -> tuple[HourIndex, float]:
    out, err = helper.communicate()
    if helper.returncode != 0 or not out:
        last = (err.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        raise CollectorError(f"indexing helper failed ({helper.returncode}): {last}")
    index, reading = pickle.loads(out)
    if not isinstance(index, HourIndex):
        raise CollectorError("indexing helper returned no index")
    return index, float(reading)


def _index_helper_main(request: str) -> None:
    """Entry of a helper: index the chunks named in `request`, pickle the result to stdout."""
    tune_malloc()
    data = orjson.loads(request)
    result = index_chunks(tuple(data["servers"]),
                          [(int(a), int(b), int(c), str(d), int(e))
                           for a, b, c, d, e in data["jobs"]])
    sys.stdout.buffer.write(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.buffer.flush()


def reported_servers(servers: tuple[str, ...], all_ids: tuple[str, ...],
                     present: set[str]) -> tuple[str, ...]:
    """The servers an hour's report line and coverage counts show (pure): every server of
    `servers` (one without chunks shows 0: it missed the hour), then each departed server
    that has chunks in the hour. A departed server after its death is no missing capture,
    just no longer part of the fleet: counting it would make every later tweet a `diff`."""
    return (*servers, *(s for s in all_ids if s not in servers and s in present))


def report_line(hour: HourKey, index: HourIndex, quarantined: int = 0,
                shown: tuple[str, ...] | None = None) -> HourLine:
    """The hour's report line over the servers `shown` (default: all the index's); `diff`
    counts the tweets that not every shown server captured."""
    shown = tuple(index.servers) if shown is None else shown
    counts = dict(zip(index.servers, index.server_counts(), strict=True))
    bits = sum(1 << n for n, server in enumerate(index.servers) if server in shown)
    masks = Counter(entry[:8] for entry in index.entries.values())
    diff = sum(n for mask, n in masks.items() if int.from_bytes(mask, "little") & bits != bits)
    extra = {"duplicates": index.duplicates, "chunks": index.chunks}
    extra.update({reason: index.skipped.get(reason, 0) for reason in SKIP_REASONS})
    extra["quarantined"] = quarantined
    return HourLine(hour.hour, {server: counts[server] for server in shown},
                    len(index.entries), diff, extra)


_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters
_M_MMAP_THRESHOLD = -3


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None  # not glibc: its defaults stay, only the memory margin is smaller


def tune_malloc() -> None:
    """Keep glibc from holding on to freed memory: allocations of 256 KiB and more (chunk
    data, the index's tables, xz's ~46 MB of match-finder tables per compressor, 4 MiB
    blocks) get their own mappings, returned to the system as soon as they are freed.
    glibc's default raises that threshold to the largest block freed so far (up to 32 MiB)
    and then keeps up to twice as much freed memory, which measured ~25 MB of peak here."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, 256 * 1024)
        libc.mallopt(_M_TRIM_THRESHOLD, 1024 * 1024)


def release_free_memory() -> None:
    """Hand memory freed by Python back to the system (glibc keeps some otherwise), so the
    peak of pass 1 and the compressors' memory do not add up."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def _timed(rows: Iterator[bytes], timings: Timings) -> Iterator[bytes]:
    """The rows, adding the time spent producing them to `timings.rendering`."""
    while True:
        started = time.perf_counter()
        row = next(rows, None)
        timings.rendering += time.perf_counter() - started
        if row is None:
            return
        yield row


def write_hour(hour: HourKey, read: HourRead, settings: Settings, vault: Path,
               pool: ThreadPoolExecutor, workers: int, timings: Timings,
               quarantined: int = 0, shown: tuple[str, ...] | None = None) -> HourResult:
    """Pass 2: render the rows into the compressors and write the hour's three files, its
    coverage counts and its report line; all atomically.

    Unless the hour's IDs file already holds ids this merge lacks (`check_fewer_ids`): then
    nothing is written and the result says so (`fewer_ids`), so an hour is never published
    again with fewer ids than before. `shown` are the servers of the report line and the
    coverage counts (`reported_servers`; default every server of the index).
    """
    index, lines = read.index, read.lines
    try:
        started = time.perf_counter()
        line = report_line(hour, index, quarantined, shown)
        minute_counts = {server: minutes for server, minutes in index.minute_counts().items()
                         if server in line.per_server}
        plan = index.plan()
        # Pass 2 needs only the plan: give the index's memory back before the compressors
        # take theirs.
        read.index = HourIndex(index.servers)
        del index
        release_free_memory()
        ids_path, tweets_path, users_path = output_paths(vault, hour)
        fewer = check_fewer_ids(hour, ids_path, plan.ids, read.earlier_ids)
        timings.merging += time.perf_counter() - started
        if fewer is not None:
            return HourResult(hour, len(plan.ids), len(plan.users), line, fewer)

        started = time.perf_counter()
        remove_stale_temps(ids_path.parent)
        tweets = _timed(plan.tweet_rows(lines.read_line), timings)
        users = _timed(plan.user_rows(lines.read_line), timings)
        jobs = [
            CompressJob(tweets_path, blocks_of(tweets, BLOCK_SIZE, header_line(TWEET_HEADER))),
            CompressJob(users_path, blocks_of(users, BLOCK_SIZE, header_line(USER_COLUMNS))),
            CompressJob(ids_path, blocks_of((b"%d\n" % i for i in plan.ids), BLOCK_SIZE)),
        ]
        # One block more than there are compressors: the next block is rendered while
        # every compressor is busy, and memory stays at a few blocks.
        compress_to_files(jobs, settings.xz_preset, pool, in_flight=workers + 1)
        write_hour_coverage(ids_path.parent, hour, minute_counts)
        update_report(ids_path.parent, hour.day, line, settings.servers)
        timings.compressing += time.perf_counter() - started
    finally:
        lines.close()
    return HourResult(hour, len(plan.ids), len(plan.users), line)


# ---- the fewer-ids guard ---------------------------------------------------------------------

# Counting the missing ids stops here: the guard's decision is made at the first one, the count
# only tells the operator how bad it is, and a hostile or broken file cannot keep it reading.
MISSING_COUNT_CAP = 1_000_000
_EXAMPLES = 3


class UnreadableIds(ValueError):
    """An existing IDs file that is not one: not xz, or lines that are not ascending ids."""


@dataclass(frozen=True)
class IdComparison:
    """A published IDs file against a new merge's ids (`compare_ids`)."""

    published: int  # ids read from the published file
    missing: int  # of those, ids the merge lacks and the previous hour's tail does not excuse
    moved: int  # ids the merge lacks because the previous hour's tail received them first
    examples: tuple[int, ...]  # the first few missing ids (public tweet ids, fine to log)
    capped: bool  # counting stopped at MISSING_COUNT_CAP: `missing` is a lower bound


def compare_ids(published: Iterable[bytes], merged: Sequence[int], moved_ok: Container[int],
                cap: int = MISSING_COUNT_CAP) -> IdComparison:
    """Which ids of a published IDs file (its lines, ascending) the new merge (`merged`,
    ascending) lacks; ids in `moved_ok` (received in the previous hour's tail) do not count
    as missing: the LOOKBACK rule moved them to the previous hour, legitimately (pure).

    One pass over both sorted sequences, holding nothing but a few counters, so the cost is
    reading the file; UnreadableIds when a line is not an ASCII id with its newline, or the
    ids do not strictly ascend (so no file can make the walk longer than the merge, the
    excused ids and `cap` missing ones).
    """
    position, count = 0, len(merged)
    read = missing = moved = 0
    examples: list[int] = []
    last = -1
    for line in published:
        if not line.endswith(b"\n") or not line[:-1].isdigit():  # bytes: ASCII digits
            raise UnreadableIds(f"line {read + 1} is not an id")
        tweet_id = int(line[:-1])
        if tweet_id <= last:
            raise UnreadableIds(f"line {read + 1} is not in ascending order")
        last = tweet_id
        read += 1
        while position < count and merged[position] < tweet_id:
            position += 1
        if position < count and merged[position] == tweet_id:
            position += 1
        elif tweet_id in moved_ok:
            moved += 1
        else:
            missing += 1
            if len(examples) < _EXAMPLES:
                examples.append(tweet_id)
            if missing >= cap:
                return IdComparison(read, missing, moved, tuple(examples), True)
    return IdComparison(read, missing, moved, tuple(examples), False)


@dataclass(frozen=True)
class FewerIds:
    """An hour whose new merge lacked published ids: its outputs were kept as they were."""

    hour: HourKey
    published: int
    merged: int
    missing: int
    examples: tuple[int, ...]
    capped: bool

    def ledger_entry(self) -> dict[str, Any]:
        return {"published": self.published, "merged": self.merged, "missing": self.missing}

    def describe(self) -> str:
        """`12 of its 2000 ids (e.g. 1234, 1240)` (pure)."""
        at_least = "at least " if self.capped else ""
        examples = ", ".join(str(i) for i in self.examples)
        return f"{at_least}{self.missing} of its {self.published} ids (e.g. {examples})"


def check_fewer_ids(hour: HourKey, ids_path: Path, merged: Sequence[int],
                    moved_ok: Container[int]) -> FewerIds | None:
    """Whether writing this merge would publish the hour with fewer ids than its IDs file
    holds now: a FewerIds (and one warning) if so, else None.

    Why: after a promotion, a restore, or chunks lost or quarantined, a re-merge can see
    less than the merge that was published; replacing the file would take those ids off
    OSF. Only an existing file is read (xz-decompressing a few MB, streamed: nothing but
    counters is kept). A file that cannot be read as an IDs file cannot be compared: it is
    logged and replaced by the merge, which repairs it.
    """
    try:
        with lzma.open(ids_path, "rb") as handle:
            found = compare_ids(handle, merged, moved_ok)
    except FileNotFoundError:
        return None
    except (OSError, lzma.LZMAError, EOFError, UnreadableIds) as error:
        detail = (os.strerror(error.errno) if isinstance(error, OSError) and error.errno
                  else str(error) or type(error).__name__)
        log.warning("the existing IDs file of %s cannot be read (%s); it cannot be compared "
                    "and is replaced by the new merge", hour, detail)
        return None
    if not found.missing:
        return None
    fewer = FewerIds(hour, found.published, len(merged), found.missing, found.examples,
                     found.capped)
    log.warning("kept the published outputs of %s: the new merge lacks %s; they are not "
                "replaced until the hour's chunks change", hour, fewer.describe())
    return fewer


def fewer_ids_alert(kept: list[FewerIds], limit: int = 20) -> tuple[str, str]:
    """Subject and body of the `fewer_ids` alert, one per run (pure)."""
    first = kept[0]
    subject = (f"{len(kept)} hour{'s' if len(kept) > 1 else ''} kept their published "
               f"outputs: re-merging {first.hour} would drop {first.describe()}")
    lines = [f"- {k.hour}: the merge lacks {k.describe()}; it has {k.merged} ids"
             for k in kept[:limit]]
    if len(kept) > limit:
        lines.append(f"- ... and {len(kept) - limit} more (one log line each)")
    body = "\n".join([
        "Merging these hours again from the chunks this main holds now gave fewer ids than",
        "their published IDs files hold, so their outputs (IDs, tweets, users, report line)",
        "were left as they are: an hour is never published again with fewer ids.",
        "", *lines, "",
        "Usually some chunks the published merge used are not on this host (yet): after a",
        "promotion, a secondary that has not re-pushed its kept chunks, or a chunk moved to",
        "the quarantine. Each hour is merged again as soon as its chunks change; nothing is",
        "retried before that. Its entry in state_dir/process_ledger.json says `fewer_ids`.",
    ])
    return subject, body


# ---- retention -------------------------------------------------------------------------------

def prune_old_chunks(scan: dict[HourKey, list[ChunkFile]], ledger: Ledger, settings: Settings,
                     now: datetime) -> int:
    """Remove the chunks of processed hours older than `raw_retention_days`; count hours."""
    keep_after = now - timedelta(days=settings.raw_retention_days)
    pruned = 0
    for hour, chunks in sorted(scan.items()):
        _, end = hour_bounds(hour, settings.timezone)
        if end > keep_after or str(hour) not in ledger.hours:
            continue
        if not ledger.is_pruned(hour) and not ledger.is_current(hour, chunks):
            continue  # late chunks not merged yet (e.g. this run failed first): keep them
        if ledger.is_pruned(hour):
            log.warning("removing %d chunks that arrived for %s after its raw chunks were "
                        "removed; they cannot be merged completely any more", len(chunks), hour)
        # Removed through folder descriptors: a folder swapped for a link meanwhile cannot
        # make retention remove anything outside the chunk tree.
        for chunk in chunks:
            with contextlib.suppress(FileNotFoundError, EntryChanged):
                remove_entry(chunk.source.root, chunk.entry.parts)
        for source, parts in {(chunk.source, chunk.entry.parts[:-1]) for chunk in chunks}:
            with contextlib.suppress(OSError, EntryChanged):
                remove_entry(source.root, parts, folder=True)  # only when empty
                remove_entry(source.root, parts[:-1], folder=True)
        ledger.hours[str(hour)] = {"pruned": True}
        pruned += 1
    return pruned


# ---- locking and progress --------------------------------------------------------------------

@contextlib.contextmanager
def process_lock(state_dir: Path) -> Iterator[None]:
    """One `collector process` at a time; a second one fails at once with LockedError."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / LOCK_NAME, "a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError("another collector process is running") from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class Progress:
    """A one-line counter on a terminal; plain log lines otherwise (cron, journald)."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.stream = stream
        self.tty = stream.isatty()
        self.done = 0

    def reading(self, hour: HourKey) -> None:
        if self.tty:
            self.stream.write(f"\rprocess: {self.done}/{self.total} hours done, "
                              f"reading {hour}   ")
            self.stream.flush()

    def finished(self, result: HourResult) -> None:
        self.done += 1
        if self.tty:
            self.stream.write(f"\rprocess: {self.done}/{self.total} hours done "
                              f"({result.hour}: {result.tweets} tweets)   ")
            if self.done == self.total:
                self.stream.write("\n")
            self.stream.flush()
        if result.fewer_ids is not None:
            return  # check_fewer_ids logged its one line
        log.info("processed %s (%d/%d): %d tweets, %d users, diff %d, %d lines skipped",
                 result.hour, self.done, self.total, result.tweets, result.users,
                 result.line.diff, sum(result.line.extra.get(r, 0) for r in SKIP_REASONS))


# ---- the command -----------------------------------------------------------------------------

def process(settings: Settings, hour: HourKey | None = None, force: bool = False,
            now: datetime | None = None, workers: int | None = None,
            progress_stream: TextIO | None = None) -> ProcessResult:
    """Merge every due hour with unmerged chunks (or just `hour`); then apply retention.

    Any failure (full disk, unreadable chunks, a second run holding the lock, a bug) is
    alerted as `process_failing` before it propagates: the hourly cron run has no one
    watching its exit status, and unmerged hours are not published.
    """
    try:
        return _process(settings, hour, force, now, workers, progress_stream)
    except Exception as error:
        detail = str(error) if isinstance(error, CollectorError) else (
            f"{type(error).__name__}: {error}")
        notifier = notify.make_notifier(settings)
        if isinstance(error, DiskFullError):
            notifier.alert(notify.DISK_FULL, str(error))
        notifier.alert(notify.PROCESS_FAILING, f"collector process failed: {detail}",
                       "Hours that are due stay unprocessed until a run succeeds; the next "
                       "hourly run retries them all.")
        raise


def _process(settings: Settings, hour: HourKey | None, force: bool, now: datetime | None,
             workers: int | None, progress_stream: TextIO | None) -> ProcessResult:
    if not settings.is_main or settings.data_vault_dst is None:
        raise SettingsError(f"{settings.source}: collector process runs on the main "
                            f"(role=main with data_vault_dst)")
    now = now or datetime.now(UTC)
    tune_malloc()
    vault = settings.data_vault_dst
    workers = workers or max(1, min(os.cpu_count() or 1, 4))
    with process_lock(settings.state_dir):
        replica = unadopted_replica(settings)
        if replica is not None:
            raise CollectorError(f"{replica} holds replicas this main has not adopted yet (it "
                                 f"has no {LEDGER_NAME}): run collector adopt first, or hours "
                                 f"would be published without them")
        ledger = Ledger.load(settings.state_dir / LEDGER_NAME)
        all_sources = sources(settings)
        found = scan_sources(all_sources, settings.max_chunk_bytes)
        quarantine = Quarantine(now)
        result = ProcessResult(quarantined=quarantine.entries)
        try:
            # First, so that nothing below ever meets a reject, and this run's report lines
            # count what it moved.
            for source, rejected in found.rejected:
                quarantine.take(source, rejected)
            scan = found.hours
            if hour is not None:
                todo = [_check_named_hour(hour, scan, settings, force, now)]
            else:
                todo = due_hours(scan, ledger, settings, now, vault)
            _run_pipeline(todo, scan, settings, vault, ledger, workers, result,
                          Progress(len(todo), progress_stream or sys.stderr), all_sources,
                          quarantine)
            recount_quarantined(quarantine.entries, {r.hour for r in result.hours},
                                all_sources, settings, vault)
            if hour is None:
                result.pruned_hours = prune_old_chunks(scan, ledger, settings, now)
                if result.pruned_hours:
                    ledger.save()
        finally:
            # Even when the run fails later: a moved entry is not found again, so this is
            # the only moment it can be told.
            if quarantine.entries:
                subject, body = quarantine_alert(quarantine.entries)
                notify.make_notifier(settings).alert(notify.ENTRIES_QUARANTINED, subject, body)
            # Likewise: a kept hour is in the ledger already, so no later run tells it again
            # until its chunks change. Once per run, however many hours.
            if result.fewer_ids:
                subject, body = fewer_ids_alert(result.fewer_ids)
                notify.make_notifier(settings).alert(notify.FEWER_IDS, subject, body)
        return result


def unadopted_replica(settings: Settings) -> Path | None:
    """`replica_dst` when it holds something (chunks, vault files, a ledger) while this main
    has no ledger of its own yet: a host just promoted whose `collector adopt` has not run.

    Processing then would publish every hour from the survivors' chunks alone, without the
    old main's chunks and vault, and the vault copy adopted later would lose to those files
    (adopt keeps the local one). `collector adopt` always leaves a ledger behind once it
    found anything, so this only ever holds until it ran once.
    """
    if settings.replica_dst is None or os.path.lexists(settings.state_dir / LEDGER_NAME):
        return None
    for part in ("chunks", "vault", "state"):
        try:
            with os.scandir(settings.replica_dst / part) as entries:
                if any(not entry.name.startswith(".") for entry in entries):
                    return settings.replica_dst
        except OSError:
            continue  # missing or unreadable: adopt would find nothing there either
    return None


def recount_quarantined(entries: list[QuarantinedEntry], processed: set[HourKey],
                        all_sources: list[Source], settings: Settings, vault: Path) -> None:
    """Bring the `quarantined` cell of hours already in a report up to date when this run
    moved entries from their folders but did not process them (they had nothing new)."""
    for hour in sorted({e.hour for e in entries if e.hour and e.moved_to} - processed):
        counts = {"quarantined": quarantined_in_hour(all_sources, hour)}
        try:
            update_report_cells(output_paths(vault, hour)[0].parent, hour.day, hour.hour,
                                counts, settings.servers)
        except (OSError, CollectorError) as error:  # the count is also in log and alert
            log.warning("cannot update the quarantined count of %s in its report: %s", hour,
                        error.strerror if isinstance(error, OSError) else error)


def _check_named_hour(hour: HourKey, scan: dict[HourKey, list[ChunkFile]], settings: Settings,
                      force: bool, now: datetime) -> HourKey:
    if not hour_exists(hour, settings):
        raise CollectorError(f"hour {hour} does not exist in {settings.timezone.key} "
                             f"(clock change)")
    if not scan.get(hour):
        raise CollectorError(f"no closed chunks for hour {hour}")
    if not force and not is_due(hour, settings, now):
        raise CollectorError(f"hour {hour} is not due yet (use --force to process it now)")
    return hour


def _run_pipeline(todo: list[HourKey], scan: dict[HourKey, list[ChunkFile]], settings: Settings,
                  vault: Path, ledger: Ledger, workers: int, result: ProcessResult,
                  progress: Progress, all_sources: list[Source],
                  quarantine: Quarantine) -> None:
    """Process the hours one after the other, each on every core; finish them in order.

    Hours do not overlap: pass 1 of hour h+1 beside the compressors of hour h would hold a
    second index (~70 MB) next to them, and both phases already use every core (pass 1
    through helper interpreters, pass 2 through the xz threads). What does overlap is the
    disk: while hour h is compressed, the kernel is asked to read hour h+1's chunks ahead
    (`posix_fadvise` WILLNEED), which costs no memory of this process.
    """
    if not todo:
        log.info("no hour to process")
        return
    timings = result.timings
    names = source_ids(all_sources)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xz") as pool:
        for number, hour in enumerate(todo):
            progress.reading(hour)
            chunks = scan[hour]
            earlier = lookback_chunks(hour, scan, settings)
            hour_read = read_hour(hour, chunks, names, timings, workers, earlier,
                                  quarantine, settings.max_chunk_bytes)
            if number + 1 < len(todo):
                read_ahead(scan[todo[number + 1]], settings.max_chunk_bytes)
            merged = hour_read.read
            shown = reported_servers(settings.servers, names,
                                     {chunk.source.server_id for chunk in chunks})
            hour_result = write_hour(hour, hour_read, settings, vault, pool, workers, timings,
                                     quarantined_in_hour(all_sources, hour), shown)
            del hour_read
            ledger.record(hour_result.hour, merged, hour_result.fewer_ids)
            ledger.save()
            if hour_result.fewer_ids is None:
                result.hours.append(hour_result)
            else:
                result.fewer_ids.append(hour_result.fewer_ids)
            progress.finished(hour_result)


def read_ahead(chunks: list[ChunkFile], max_bytes: int) -> None:
    """Ask the kernel to start reading these chunks into the page cache (best effort; opened
    as safely as for reading, so a swapped entry is merely skipped here)."""
    for chunk in chunks:
        with contextlib.suppress(OSError, AttributeError, EntryChanged, UnsafeEntry):
            fd, _ = open_chunk(chunk.source.root, chunk.entry.parts, max_bytes)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)


if __name__ == "__main__" and sys.argv[1:2] == ["--index"]:
    _index_helper_main(sys.argv[2])
