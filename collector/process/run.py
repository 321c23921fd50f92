"""`process()`: one run over every due hour, under the process lock, oldest hour first."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from collector.alerts import notify
from collector.errors import CollectorError, DiskFullError, SettingsError
from collector.fsutil import exclusive_lock
from collector.layout import HourKey
from collector.process.daily import run_daily_pass
from collector.process.fewer_ids import fewer_ids_alert
from collector.process.ledger import LEDGER_NAME, ProcessLedger, unadopted_replica
from collector.process.memory import tune_malloc
from collector.process.plan import due_hours, hour_exists, is_due, lookback_chunks
from collector.process.quarantine import (
    Quarantine,
    quarantine_alert,
    quarantined_in_hour,
    recount_quarantined,
)
from collector.process.read import read_ahead, read_hour
from collector.process.result import HourResult, ProcessResult
from collector.process.retention import prune_old_chunks
from collector.process.scan import ChunkFile, ServerFolder, folder_ids, scan_folders, server_folders
from collector.process.write import reported_servers, write_hour
from collector.settings import Settings
from collector.sources import Source, source_for

log = logging.getLogger("collector.process")
LOCK_NAME = "process.lock"


# ---- locking and progress --------------------------------------------------------------------

@contextlib.contextmanager
def process_lock(state_dir: Path) -> Iterator[None]:
    """One `collector process` at a time; a second one fails at once with LockedError."""
    with exclusive_lock(state_dir / LOCK_NAME, "another collector process is running"):
        yield


class Progress:
    """A one-line counter on a terminal; plain log lines otherwise (cron, journald)."""

    def __init__(self, total: int, stream: TextIO, source: Source) -> None:
        self.total = total
        self.stream = stream
        self.record_name = source.record_name
        self.skip_reasons = source.skip_reasons
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
                              f"({result.hour}: {result.records} {self.record_name})   ")
            if self.done == self.total:
                self.stream.write("\n")
            self.stream.flush()
        if result.fewer_ids is not None:
            return  # check_fewer_ids logged its one line
        log.info("processed %s (%d/%d): %s, diff %d, %d lines skipped",
                 result.hour, self.done, self.total, result.summary, result.line.diff,
                 sum(result.line.extra.get(r, 0) for r in self.skip_reasons))


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
        notify.alert_failure(notifier, notify.PROCESS_FAILING,
                             f"collector process failed: {detail}",
                             "Hours that are due stay unprocessed until a run succeeds; the "
                             "next hourly run retries them all.")
        raise


def _process(settings: Settings, hour: HourKey | None, force: bool, now: datetime | None,
             workers: int | None, progress_stream: TextIO | None) -> ProcessResult:
    if not settings.is_main or settings.data_vault_dst is None:
        raise SettingsError(f"{settings.path}: collector process runs on the main "
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
        ledger = ProcessLedger.load(settings.state_dir / LEDGER_NAME)
        folders = server_folders(settings)
        found = scan_folders(folders, settings.max_chunk_bytes)
        quarantine = Quarantine(now)
        result = ProcessResult(quarantined=quarantine.entries)
        try:
            # First, so that nothing below ever meets a reject, and this run's report lines
            # count what it moved.
            for folder, rejected in found.rejected:
                quarantine.take(folder, rejected)
            scan = found.hours
            if hour is not None:
                todo = [_check_named_hour(hour, scan, settings, force, now)]
            else:
                todo = due_hours(scan, ledger, settings, now, vault)
            progress = Progress(len(todo), progress_stream or sys.stderr, source_for(settings))
            _run_pipeline(todo, scan, settings, vault, ledger, workers, result, progress,
                          folders, quarantine)
            recount_quarantined(quarantine.entries, {r.hour for r in result.hours},
                                folders, settings, vault)
            if hour is None:
                result.pruned_hours = prune_old_chunks(scan, ledger, settings, now)
                if result.pruned_hours:
                    ledger.save()
                result.daily = run_daily_pass(source_for(settings), settings, now)
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
                  vault: Path, ledger: ProcessLedger, workers: int, result: ProcessResult,
                  progress: Progress, folders: list[ServerFolder],
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
    names = folder_ids(folders)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xz") as pool:
        for number, hour in enumerate(todo):
            progress.reading(hour)
            chunks = scan[hour]
            earlier = lookback_chunks(hour, scan, settings)
            hour_read = read_hour(source_for(settings), hour, chunks, names, timings, workers,
                                  earlier, quarantine, settings.max_chunk_bytes)
            if number + 1 < len(todo):
                read_ahead(scan[todo[number + 1]], settings.max_chunk_bytes)
            merged = hour_read.read
            shown = reported_servers(settings.servers, names,
                                     {chunk.folder.server_id for chunk in chunks})
            hour_result = write_hour(hour, hour_read, settings, vault, pool, workers, timings,
                                     quarantined_in_hour(folders, hour), shown)
            del hour_read
            ledger.record(hour_result.hour, merged, hour_result.fewer_ids)
            ledger.save()
            if hour_result.fewer_ids is None:
                result.hours.append(hour_result)
            else:
                result.fewer_ids.append(hour_result.fewer_ids)
            progress.finished(hour_result)
