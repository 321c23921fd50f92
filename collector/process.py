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

Safety: one run at a time (`flock` on `state_dir/process.lock`); outputs are written
atomically (collector.outputs); inputs are only ever read, and removed only by retention
after their hour's outputs exist.

Speed: reading and merging run in this thread while a pool of `cpu_count` threads compresses
(liblzma releases the GIL). During catch-up the compression of hour h overlaps the reading
of hour h+1; at most two hours are in memory at once, so memory follows the size of an hour,
not the number of hours.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import orjson

from collector import notify
from collector.daily_report import HourLine, update_report
from collector.errors import CollectorError, DiskFullError, LockedError, SettingsError
from collector.layout import HourKey, hour_bounds, hour_of, parse_chunk
from collector.merge import (
    SKIP_REASONS,
    USER_COLUMNS,
    HourMerge,
    blocks_of,
    header_line,
    tweet_row,
    user_row,
    users_in_order,
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


# ---- where the chunks are --------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    """Where one server's chunks are found on the main."""

    index: int
    server_id: str
    root: Path


@dataclass(frozen=True)
class ChunkFile:
    source: Source
    path: Path
    size: int

    @property
    def key(self) -> str:
        return f"{self.source.server_id}/{self.path.name}"


def sources(settings: Settings) -> list[Source]:
    """This host's own chunks and every other server's incoming folder, in `servers` order."""
    found = []
    for index, server_id in enumerate(settings.servers):
        if server_id == settings.server_id:
            root = settings.data_storage_dst
        else:
            assert settings.incoming_dst is not None  # required on the main
            root = settings.incoming_dst / server_id
        found.append(Source(index, server_id, root))
    return found


def scan_chunks(all_sources: list[Source]) -> dict[HourKey, list[ChunkFile]]:
    """Every closed chunk by hour; per hour in server order, then name order."""
    hours: dict[HourKey, list[ChunkFile]] = {}
    for source in all_sources:
        if not source.root.is_dir():
            continue
        for day_dir in sorted(source.root.iterdir()):
            if day_dir.name.startswith(".") or not day_dir.is_dir():
                continue
            for hour_dir in sorted(day_dir.iterdir()):
                if not hour_dir.is_dir():
                    continue
                for path in sorted(hour_dir.iterdir()):
                    chunk = parse_chunk(path)
                    if chunk is None:
                        continue
                    if chunk.server_id != source.server_id:
                        log.warning("ignoring %s: it is not a chunk of %s", path, source.server_id)
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        size = path.stat().st_size
                        hours.setdefault(chunk.hour, []).append(ChunkFile(source, path, size))
    for chunks in hours.values():
        chunks.sort(key=lambda c: (c.source.index, c.path.name))
    return hours


# ---- the ledger ------------------------------------------------------------------------------

@dataclass
class Ledger:
    """What each processed hour was made from: {hour: {"chunks": {key: size}} or pruned}."""

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

    def record(self, hour: HourKey, chunks: list[ChunkFile]) -> None:
        self.hours[str(hour)] = {
            "chunks": {chunk.key: chunk.size for chunk in chunks},
            "processed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }


# ---- planning (pure given the scan) ----------------------------------------------------------

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
        if not outputs_there or not ledger.is_current(hour, scan[hour]):
            due.append(hour)
    return due


# ---- processing one hour ---------------------------------------------------------------------

@dataclass
class Timings:
    """Where the time went (seconds, wall clock), summed over the hours processed."""

    reading: float = 0.0  # reading chunk files from disk
    merging: float = 0.0  # parsing JSON, rendering rows, dropping duplicates, ordering
    compressing: float = 0.0  # compressing and writing the three files (overlaps reading)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, other: Timings) -> None:
        """Sum another thread's timings into these."""
        with self._lock:
            self.reading += other.reading
            self.merging += other.merging
            self.compressing += other.compressing

    def as_dict(self) -> dict[str, float]:
        return {"reading": self.reading, "merging": self.merging,
                "compressing": self.compressing}


@dataclass
class HourResult:
    hour: HourKey
    tweets: int
    users: int
    line: HourLine


@dataclass
class ProcessResult:
    hours: list[HourResult] = field(default_factory=list)
    pruned_hours: int = 0
    timings: Timings = field(default_factory=Timings)


def read_hour(hour: HourKey, chunks: list[ChunkFile], servers: tuple[str, ...],
              timings: Timings) -> HourMerge:
    """Merge every chunk of the hour into one record per distinct tweet."""
    merge = HourMerge(servers)
    for chunk in chunks:
        started = time.perf_counter()
        try:
            data = chunk.path.read_bytes()
        except FileNotFoundError:
            log.warning("chunk %s vanished while processing %s", chunk.path, hour)
            continue
        read_done = time.perf_counter()
        merge.add_chunk(chunk.source.index, data)
        del data
        timings.reading += read_done - started
        timings.merging += time.perf_counter() - read_done
    return merge


def report_line(hour: HourKey, merge: HourMerge) -> HourLine:
    counts = merge.server_counts()
    extra = {"duplicates": merge.duplicates, "chunks": merge.chunks}
    extra.update({reason: merge.skipped.get(reason, 0) for reason in SKIP_REASONS})
    return HourLine(hour.hour, dict(zip(merge.servers, counts, strict=True)),
                    len(merge.records), merge.diff(), extra)


def write_hour(hour: HourKey, merge: HourMerge, settings: Settings, vault: Path,
               pool: ThreadPoolExecutor, workers: int, timings: Timings) -> HourResult:
    """Write the hour's three files and its report line; all atomically."""
    started = time.perf_counter()
    ids = merge.sorted_ids()
    users = users_in_order(merge.records, ids)
    line = report_line(hour, merge)
    records = merge.records
    timings.merging += time.perf_counter() - started

    started = time.perf_counter()
    ids_path, tweets_path, users_path = output_paths(vault, hour)
    remove_stale_temps(ids_path.parent)
    jobs = [
        CompressJob(tweets_path, blocks_of((tweet_row(records[i]) for i in ids), BLOCK_SIZE,
                                           header_line(TWEET_HEADER))),
        CompressJob(users_path, blocks_of((user_row(r) for r in users), BLOCK_SIZE,
                                          header_line(USER_COLUMNS))),
        CompressJob(ids_path, blocks_of((b"%d\n" % i for i in ids), BLOCK_SIZE)),
    ]
    compress_to_files(jobs, settings.xz_preset, pool, in_flight=workers)
    update_report(ids_path.parent, hour.day, line, settings.servers)
    timings.compressing += time.perf_counter() - started
    return HourResult(hour, len(ids), len(users), line)


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
        for chunk in chunks:
            chunk.path.unlink(missing_ok=True)
        for folder in {chunk.path.parent for chunk in chunks}:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
                folder.parent.rmdir()
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
        log.info("processed %s (%d/%d): %d tweets, %d users, diff %d, %d lines skipped",
                 result.hour, self.done, self.total, result.tweets, result.users,
                 result.line.diff, sum(result.line.extra.get(r, 0) for r in SKIP_REASONS))


# ---- the command -----------------------------------------------------------------------------

def process(settings: Settings, hour: HourKey | None = None, force: bool = False,
            now: datetime | None = None, workers: int | None = None,
            progress_stream: TextIO | None = None) -> ProcessResult:
    """Merge every due hour with unmerged chunks (or just `hour`); then apply retention."""
    if not settings.is_main or settings.data_vault_dst is None:
        raise SettingsError(f"{settings.source}: collector process runs on the main "
                            f"(role=main with data_vault_dst)")
    now = now or datetime.now(UTC)
    vault = settings.data_vault_dst
    workers = workers or max(1, min(os.cpu_count() or 1, 4))
    with process_lock(settings.state_dir):
        ledger = Ledger.load(settings.state_dir / LEDGER_NAME)
        scan = scan_chunks(sources(settings))
        if hour is not None:
            todo = [_check_named_hour(hour, scan, settings, force, now)]
        else:
            todo = due_hours(scan, ledger, settings, now, vault)
        result = ProcessResult()
        try:
            _run_pipeline(todo, scan, settings, vault, ledger, workers, result,
                          Progress(len(todo), progress_stream or sys.stderr))
        except DiskFullError as error:
            notify.make_notifier(settings).alert(notify.DISK_FULL, str(error))
            raise
        if hour is None:
            result.pruned_hours = prune_old_chunks(scan, ledger, settings, now)
            if result.pruned_hours:
                ledger.save()
        return result


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
                  progress: Progress) -> None:
    """Read hour h+1 while hour h is compressed; finish hours strictly in order."""
    if not todo:
        log.info("no hour to process")
        return
    timings = result.timings
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xz") as pool, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer") as writer:
        pending: Future[HourResult] | None = None
        pending_chunks: list[ChunkFile] = []

        def finish(future: Future[HourResult], chunks: list[ChunkFile]) -> None:
            hour_result = future.result()
            ledger.record(hour_result.hour, chunks)
            ledger.save()
            result.hours.append(hour_result)
            progress.finished(hour_result)

        try:
            for hour in todo:
                progress.reading(hour)
                chunks = scan[hour]
                read_timings = Timings()
                merge = read_hour(hour, chunks, settings.servers, read_timings)
                timings.add(read_timings)
                if pending is not None:
                    finish(pending, pending_chunks)
                    pending = None
                job: Callable[[], HourResult] = _bind_write(hour, merge, settings, vault, pool,
                                                            workers, timings)
                del merge
                pending, pending_chunks = writer.submit(job), chunks
            if pending is not None:
                finish(pending, pending_chunks)
                pending = None
        finally:
            if pending is not None:
                with contextlib.suppress(BaseException):
                    pending.result()


def _bind_write(hour: HourKey, merge: HourMerge, settings: Settings, vault: Path,
                pool: ThreadPoolExecutor, workers: int,
                timings: Timings) -> Callable[[], HourResult]:
    def run() -> HourResult:
        local = Timings()
        try:
            return write_hour(hour, merge, settings, vault, pool, workers, local)
        finally:
            timings.add(local)

    return run
