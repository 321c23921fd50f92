"""`collector stream`: capture until told to stop, never losing a line that arrived whole.

Two threads, joined by a FIFO queue as X recommends: the reader (`Capture`) only reads the
network and hands over each message with its time of receipt; the writer (this module's
loop, in the main thread) owns the chunk files, closes each minute's chunk on time even
when the stream is silent, writes the health record, watches for stalls and survives a full
disk. A slow disk therefore never slows the socket reader into a server-side disconnect.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from collector.alerts import notify
from collector.errors import CollectorError
from collector.fsutil import exclusive_lock
from collector.settings import Settings
from collector.sources import CaptureLoop, CaptureRequest, source_for
from collector.stream.backoff import time_scale
from collector.stream.chunks import ChunkWriter, DiskFull, recover_part_files
from collector.stream.health import STATUS_FILE, HealthFile, StreamHealth, read_health

log = logging.getLogger("collector.stream")

WRITE_INTERVAL = 0.5  # seconds between writes of the backlog to the chunk
SYNC_INTERVAL = 2.0  # seconds between fsyncs: a crash loses at most this much
WRITE_BATCH = 256 * 1024  # write early when this much is waiting
HEALTH_INTERVAL = 2.0
IDLE_WAIT = 0.05  # seconds the writer sleeps when nothing is queued
RECEIVE_BATCH = 10000  # lines moved per loop turn, so timers still run under full load
DISK_RETRY_INTERVAL = 2.0
STOP_DRAIN_SECONDS = 30.0  # how long a stop waits for a full disk before giving up
LOCK_FILE = "stream.lock"  # in state_dir; held for the whole run


@dataclass
class StreamSummary:
    """What one run of the stream did, for the log line at exit and for tests."""

    messages: int
    tweets: int
    chunks_closed: int
    chunks_recovered: int
    torn_lines_recovered: int
    malformed_lines: int
    connections: int
    dropped_messages: int


def _prepare_storage(settings: Settings) -> None:
    try:
        settings.data_storage_dst.mkdir(parents=True, exist_ok=True)
        settings.state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CollectorError(
            f"cannot use data_storage_dst {settings.data_storage_dst}: {error.strerror}"
        ) from None
    if not os.access(settings.data_storage_dst, os.W_OK):
        raise CollectorError(f"data_storage_dst {settings.data_storage_dst} is not writable")


@contextlib.contextmanager
def stream_lock(state_dir: Path) -> Iterator[None]:
    """One stream per host: a second one fails at once with LockedError, having touched nothing.

    Taken before crash recovery, which renames every `.part` it finds: run by a second stream
    it would close the live one's open chunk under its feet (and `send` could ship it while
    the first keeps appending). flock is released by the kernel when the holder dies, so a
    crashed stream never blocks its restart.
    """
    path = state_dir / LOCK_FILE
    with exclusive_lock(path, f"another collector stream is running on this host "
                              f"(lock {path}); not starting a second one", make_folder=False):
        yield


def run_stream(settings: Settings, notifier: notify.Notifier,
               stop: threading.Event | None = None) -> StreamSummary:
    """Capture the sampled stream into minute chunks until `stop` is set."""
    stop = stop or threading.Event()
    build_capture = source_for(settings).prepare_capture(settings)
    scale = time_scale()
    _prepare_storage(settings)
    with stream_lock(settings.state_dir):
        return _run_locked(settings, notifier, stop, build_capture, scale)


def _run_locked(settings: Settings, notifier: notify.Notifier, stop: threading.Event,
                build_capture: Callable[[CaptureRequest], CaptureLoop],
                scale: float) -> StreamSummary:
    """The capture itself, under the stream lock (recovery first, then the two threads)."""
    health_path = settings.state_dir / STATUS_FILE
    previous = read_health(health_path)
    try:
        recovery = recover_part_files(settings.data_storage_dst)
    except OSError as error:
        raise CollectorError(f"cannot recover open chunks: {error}") from None
    if previous is not None and not previous.get("stopped", True):
        notifier.alert(notify.STREAM_CRASHED,
                       f"the previous stream run (pid {previous.get('pid')}) ended without a "
                       f"clean stop; recovered {recovery.chunks} open chunk(s), "
                       f"{recovery.torn_lines} torn line(s) dropped")

    health = StreamHealth(torn_lines_recovered=recovery.torn_lines)
    health_file = HealthFile(health_path)
    writer = ChunkWriter(settings.data_storage_dst, settings.server_id, settings.timezone,
                         started_at=time.time())
    inbox: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

    def deliver(received_at: float, line: bytes, has_record: bool) -> None:
        health.messages += 1
        health.last_message_at = received_at
        if has_record:
            health.tweets += 1
            health.last_tweet_at = received_at
        inbox.put((received_at, line))

    capture = build_capture(CaptureRequest(settings, health, stop, deliver, notifier, scale))
    reader = threading.Thread(target=capture.run, name="stream-reader", daemon=True)
    notifier.alert(notify.STREAM_STARTED, f"stream started (pid {os.getpid()})")
    reader.start()
    loop = _WriterLoop(settings, notifier, writer, health, health_file, inbox, capture)
    try:
        loop.run(stop)
    finally:
        stop.set()
        capture.abort()
        reader.join(timeout=5.0)
        loop.drain_and_close()
        health.connected = False
        health.stopped = True
        loop.write_health()
        health_file.close()
    notifier.alert(notify.STREAM_STOPPED,
                   f"stream stopped: {health.messages} messages, {health.tweets} "
                   f"{source_for(settings).record_name}")
    return StreamSummary(
        messages=health.messages, tweets=health.tweets, chunks_closed=writer.closed_chunks,
        chunks_recovered=recovery.chunks, torn_lines_recovered=recovery.torn_lines,
        malformed_lines=health.malformed_lines, connections=health.connections,
        dropped_messages=writer.dropped,
    )


class _WriterLoop:
    """The main thread's loop: queue -> chunks, on a timer as well as on data."""

    def __init__(self, settings: Settings, notifier: notify.Notifier, writer: ChunkWriter,
                 health: StreamHealth, health_file: HealthFile,
                 inbox: queue.SimpleQueue[tuple[float, bytes]], capture: CaptureLoop) -> None:
        self.settings = settings
        self.notifier = notifier
        self.writer = writer
        self.health = health
        self.health_file = health_file
        self.inbox = inbox
        self.capture = capture
        self.last_write = self.last_sync = self.last_health = self.disk_retry_at = 0.0
        self.stall_alerted_at = 0.0

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if not self._receive():
                # Poll rather than block on the queue: a blocking get would wake this thread
                # for every message (GIL ping-pong with the reader, a third of the speed),
                # and SimpleQueue.get(timeout=...) was seen to hang after SIGTERM's handler.
                stop.wait(IDLE_WAIT)
            now = time.time()
            self.writer.tick(now)
            waiting = self.writer.backlog_bytes
            due = now - self.last_write >= WRITE_INTERVAL or waiting >= WRITE_BATCH
            if due and now >= self.disk_retry_at:
                self._write(sync=now - self.last_sync >= SYNC_INTERVAL)
            self._watch_stall(now)
            if now - self.last_health >= HEALTH_INTERVAL:
                self.write_health()

    def _receive(self) -> int:
        """Move what is queued (at most a batch) into the writer; return how many lines."""
        for moved in range(RECEIVE_BATCH):
            try:
                received_at, line = self.inbox.get_nowait()
            except queue.Empty:
                return moved
            self._add(received_at, line)
        return RECEIVE_BATCH

    def _add(self, received_at: float, line: bytes) -> None:
        if not self.writer.add(received_at, line):
            self.health.dropped_messages = self.writer.dropped
            if self.writer.dropped == 1:
                log.error("memory backlog full while the disk is full: dropping messages")

    def _write(self, sync: bool) -> bool:
        now = time.time()
        try:
            self.writer.flush(sync)
        except DiskFull as error:
            self.disk_retry_at = now + DISK_RETRY_INTERVAL
            if not self.health.disk_full:
                self.health.disk_full = True
                message = (f"data_storage_dst {self.settings.data_storage_dst} is full "
                           f"({error}); keeping new messages in memory until space returns")
                log.error(message)
                self.notifier.alert(notify.DISK_FULL, message)
            self.health.backlog_bytes = self.writer.backlog_bytes
            return False
        except OSError as error:
            self.disk_retry_at = now + DISK_RETRY_INTERVAL
            log.error("cannot write chunks under %s: %s; retrying",
                      self.settings.data_storage_dst, error)
            self.health.last_error = f"write failed: {error.strerror}"
            return False
        if self.health.disk_full:
            self.health.disk_full = False
            log.warning("data_storage_dst has room again; the held messages are written")
            self.notifier.alert(notify.STREAM_RECOVERED, "disk space is back; capture resumed")
        self.health.backlog_bytes = self.writer.backlog_bytes
        self.last_write = now
        if sync:
            self.last_sync = now
        return True

    def _watch_stall(self, now: float) -> None:
        """A stall is no tweet for `stall_seconds`, across reconnects; each connection that
        stays quiet that long is alerted and replaced by a fresh one."""
        health = self.health
        limit = self.settings.stall_seconds
        quiet = now - max(health.last_tweet_at, health.started_at)
        stalled = quiet >= limit
        if stalled != health.stalled:
            health.stalled = stalled
            self.write_health()  # status must see a stall at once, not at the next tick
        connection_quiet = now - max(health.last_tweet_at, health.connected_since)
        if (stalled and health.connected and connection_quiet >= limit
                and now - self.stall_alerted_at >= limit):
            self.stall_alerted_at = now
            self.capture.stall_detected(quiet)

    def write_health(self) -> None:
        self.last_health = time.time()
        self.health.open_chunk = self.writer.open_chunk_name
        self.health.backlog_bytes = self.writer.backlog_bytes
        try:
            self.health_file.write(self.health)
        except OSError as error:
            log.warning("cannot update the health record: %s", error)

    def drain_and_close(self) -> None:
        """On stop: write everything received, close the open chunk, wait out a full disk."""
        while self._receive():
            pass
        self.writer.close()
        deadline = time.time() + STOP_DRAIN_SECONDS
        while True:
            self.disk_retry_at = 0.0
            if self._write(sync=True) or time.time() >= deadline:
                break
            time.sleep(DISK_RETRY_INTERVAL)
        if self.writer.backlog:
            log.error("stopping with %d bytes that could not be written (disk full)",
                      self.writer.backlog_bytes)
