"""Read Bluesky's Jetstream (v1 `/subscribe`) over a WebSocket and never stop.

One connection at a time on the stream's reader thread, with `websockets`' sync client:

* the URL asks for the configured collections, zstd frames when `jetstream_compress`, and a
  `cursor` when resuming (`cursor.py`: from the chunks on disk at start, from the largest
  `time_us` delivered on a reconnect, rewound 10 s either way);
* every frame becomes one chunk line (`frames.py`); a frame that is not an event (not JSON,
  no `time_us`, corrupt zstd, over 1 MiB) is counted in the health record, logged at most
  once a minute per kind, and skipped, with the connection kept;
* the connection policy is the X stream's (`ConnectionPolicy`): an established connection
  that ends is replaced at once, then with a growing wait if replacements keep dying young;
  a refused handshake backs off exponentially, 429 from a minute; 50 attempts in 15 min at
  most. Five failures in a row alert `stream_failing`, once per streak;
* Jetstream v1 has no heartbeats: the stream's writer sees no record for `stall_seconds`
  and calls `stall_detected`, which alerts and breaks the connection; the next one resumes
  from the cursor, so a stall costs repeats, not events;
* a resumed connection whose first event is far later than its cursor was clamped by the
  instance (its replay window is shorter than the outage): warned, alerted, counted.

How the end of a connection counts for the backoff is `closes.py`'s.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from collector import __version__
from collector.alerts.notify import (
    STREAM_FAILING,
    STREAM_REPLAY_CLAMPED,
    STREAM_STALLED,
    Notifier,
)
from collector.errors import CollectorError
from collector.settings import Settings
from collector.sources import CaptureRequest, Deliver
from collector.sources.bluesky.closes import (
    NORMAL_CLOSE_CODES,
    close_code,
    end_failure,
    retry_after,
    short,
)
from collector.sources.bluesky.cursor import (
    SECOND_US,
    cursor_from_chunks,
    replay_gap,
    rewound,
    subscribe_url,
    trusted,
    utc_text,
)
from collector.sources.bluesky.frames import (
    LIBRARY_MAX_SIZE,
    FrameHandler,
    SkipLog,
    SkippedFrame,
    load_dictionary,
    preview,
)
from collector.stream.backoff import ConnectionPolicy, Failure, failing_alert
from collector.stream.health import StreamHealth

log = logging.getLogger("collector.capture")

RECV_POLL = 1.0  # seconds a read waits before looking at `stop` again
# Frames the library reads ahead of the reader thread: plenty at ~2,000 events/s, and a bound
# on memory (MAX_QUEUE x LIBRARY_MAX_SIZE = 512 MiB if an instance sent nothing but 16 MiB
# frames faster than they are skipped; ~20 kB at the usual few hundred bytes a frame).
MAX_QUEUE = 32
USER_AGENT = f"collector/{__version__} (research capture; Jetstream v1 client)"


class JetstreamCapture:
    """The capture loop (`CaptureLoop`) of one host's Jetstream instance."""

    def __init__(self, settings: Settings, request: CaptureRequest, handler: FrameHandler,
                 start_cursor: int | None) -> None:
        self.settings = settings
        self.health: StreamHealth = request.health
        self.stop = request.stop
        self.deliver: Deliver = request.deliver
        self.notifier: Notifier = request.notifier
        self.policy = ConnectionPolicy(scale=request.time_scale)
        self.handler = handler
        self.start_cursor = start_cursor
        self.largest_delivered: int | None = None  # trusted time_us delivered in this run
        self.connection: ClientConnection | None = None
        self.last_attempt_end = 0.0
        self.skip_log = SkipLog()
        self.stalled_for: float | None = None  # set by stall_detected, read by the reader

    # ---- the reader thread ------------------------------------------------------------------

    def run(self) -> None:
        """Until `stop` is set: connect, read and deliver, and reconnect after any end."""
        while not self.stop.is_set():
            try:
                if not self._wait_for_turn():
                    break
                cursor = self.resume_cursor()
                connection = self._open(cursor)
                if connection is not None:
                    self._read(connection, cursor)
            except Exception as error:  # a bug or a surprise: log one line, reconnect
                self.health.count_failure("unexpected")
                log.error("the stream reader failed unexpectedly: %s", short(error))
                if self.connection is not None:
                    self._close(self.connection)
                    self.connection = None
                self.health.connected = False
                self.policy.failed(Failure.NETWORK)
                self.last_attempt_end = time.monotonic()
        self.health.connected = False

    def resume_cursor(self) -> int | None:
        """Where the next connection starts: the largest time_us delivered in this run, else
        the one found in the chunks at start, rewound; None: the live tail."""
        if self.largest_delivered is not None:
            return rewound(self.largest_delivered)
        return self.start_cursor

    def _wait_for_turn(self) -> bool:
        """Wait as the policy says; False if the stream is asked to stop meanwhile."""
        while not self.stop.is_set():
            wait = self.policy.wait_before_next(time.monotonic(), self.last_attempt_end)
            if wait <= 0:
                return True
            log.info("waiting %.1f s before reconnecting", wait)
            self.stop.wait(min(wait, 5.0))
        return False

    def _open(self, cursor: int | None) -> ClientConnection | None:
        """One connection attempt; None (counted, logged, backed off) if it failed."""
        settings = self.settings
        url = subscribe_url(settings.jetstream_url, settings.jetstream_collections,
                            settings.jetstream_compress, cursor)
        self.policy.record_attempt(time.monotonic())
        self.health.connection_attempts += 1
        timeout = float(settings.read_timeout_seconds)
        try:
            connection = connect(
                url, legacy=True, open_timeout=timeout, close_timeout=timeout,
                ping_interval=timeout, ping_timeout=timeout, max_size=LIBRARY_MAX_SIZE,
                max_queue=MAX_QUEUE, user_agent_header=USER_AGENT,
                # zstd frames are compressed already; permessage-deflate only without them.
                compression=None if settings.jetstream_compress else "deflate",
                logger=logging.getLogger("collector.capture.websocket"),
            )
        except InvalidStatus as error:
            status = error.response.status_code
            if status == 429:
                wait = retry_after(error)
                retry_at = (time.monotonic() + wait * self.policy.scale
                            if wait is not None else None)
                self._attempt_failed(Failure.RATE_LIMIT, "http_429", "HTTP 429", retry_at)
            else:
                self._attempt_failed(Failure.HTTP, f"http_{status}",
                                     f"HTTP {status} {error.response.reason_phrase}")
            return None
        except (OSError, InvalidHandshake) as error:  # refused, DNS, TLS, timeout, not WS
            self._attempt_failed(Failure.NETWORK, "connect", short(error))
            return None
        self.connection = connection
        if self.stop.is_set():  # stop came while connecting: abort() found no connection
            self._close(connection)
            return None
        return connection

    def _attempt_failed(self, failure: Failure, reason: str, detail: str,
                        retry_at: float | None = None) -> None:
        self.policy.failed(failure, retry_at)
        self.last_attempt_end = time.monotonic()
        self.health.connected = False
        self.health.count_failure(reason)
        self.health.last_error = detail
        log.warning("stream connection failed (%s): %s", reason, detail)
        self._maybe_alert()

    def _maybe_alert(self) -> None:
        text = failing_alert(self.policy.consecutive, self.health.last_error)
        if text is not None:
            self.notifier.alert(STREAM_FAILING, text)

    def _read(self, connection: ClientConnection, cursor: int | None) -> None:
        """Deliver every event of one connection until it ends or the stream stops."""
        health = self.health
        self.policy.connected()
        self.stalled_for = None
        started = time.monotonic()
        health.connected = True
        health.connected_since = time.time()
        health.connections += 1
        where = f"from cursor {utc_text(cursor)}" if cursor is not None else "at the live tail"
        log.info("connected to %s (connection %d), %s", self.settings.jetstream_url,
                 health.connections, where)
        events = 0
        first = cursor is not None
        recv = connection.recv
        handle = self.handler.event
        deliver = self.deliver
        stop = self.stop
        try:
            while not stop.is_set():
                try:
                    frame = recv(RECV_POLL, decode=False)
                except TimeoutError:
                    continue
                received_at = time.time()
                health.last_heartbeat_at = received_at  # any frame: the connection lives
                try:
                    event = handle(frame, received_at)
                except SkippedFrame as skipped:
                    self._skipped(skipped, frame, received_at)
                    continue
                if first:
                    first = False
                    self._check_replay(cursor, event.time_us)
                largest = self.largest_delivered
                if (largest is None or event.time_us > largest) and trusted(event.time_us,
                                                                            received_at):
                    self.largest_delivered = event.time_us
                deliver(received_at, event.line, event.is_commit)
                events += 1
        except ConnectionClosed as closed:
            if not stop.is_set():
                self._connection_over(closed, started, events)
                return
        self._close(connection)
        self.connection = None

    def _connection_over(self, closed: ConnectionClosed, started: float, events: int) -> None:
        lasted = time.monotonic() - started
        self.connection = None
        self.health.connected = False
        code, how = close_code(closed)
        if self.stalled_for is not None:
            how = f"stalled: no event for {self.stalled_for:.0f} s"
            self.health.count_failure("stall")
        elif code not in NORMAL_CLOSE_CODES or events == 0:
            self.health.count_failure(f"close_{code}" if code is not None else "lost")
        self.policy.connection_ended(lasted, end_failure(code))
        self.last_attempt_end = time.monotonic()
        self.health.last_error = how
        resume = self.resume_cursor()
        level = logging.INFO if code in NORMAL_CLOSE_CODES and events else logging.WARNING
        log.log(level, "stream disconnected after %.1f s and %d event(s): %s; resuming %s",
                lasted, events, how,
                f"from {utc_text(resume)}" if resume is not None else "at the live tail")
        self._maybe_alert()

    def _skipped(self, skipped: SkippedFrame, frame: bytes, now: float) -> None:
        health = self.health
        health.malformed_lines += 1
        health.skipped_frames[skipped.kind] = health.skipped_frames.get(skipped.kind, 0) + 1
        unlogged = self.skip_log.due(skipped.kind, now)
        if unlogged is None:
            return
        more = f" ({unlogged} more like it since the last such line)" if unlogged else ""
        log.warning("skipped a frame that is no Jetstream event (%s; %d bytes: %s)%s",
                    skipped, len(frame), preview(frame), more)

    def _check_replay(self, cursor: int | None, first_time_us: int) -> None:
        """Warn, alert and count when the instance clamped the cursor (see cursor.py)."""
        gap = replay_gap(cursor, first_time_us)
        if gap is None or cursor is None:
            return
        health = self.health
        health.replay_gaps += 1
        health.replay_gap_seconds += gap / SECOND_US
        host = urlsplit(self.settings.jetstream_url).hostname
        message = (f"Jetstream resumed at {utc_text(first_time_us)}, not at the cursor "
                   f"{utc_text(cursor)}: events of those {gap / SECOND_US:.0f} s may be missing "
                   f"on this host (the outage outlasted {host}'s replay window)")
        log.warning("%s", message)
        self.notifier.alert(STREAM_REPLAY_CLAMPED, message)

    @staticmethod
    def _close(connection: ClientConnection) -> None:
        """Close politely (bounded by close_timeout); a broken socket is closed anyway."""
        try:
            connection.close()
        except Exception as error:  # closing is best effort
            log.debug("closing the connection failed: %s", error)

    # ---- other threads ----------------------------------------------------------------------

    def stall_detected(self, seconds: float) -> None:
        """No record for `seconds` while connected (Jetstream v1 has no heartbeats, so a
        silent connection cannot be told from a dead one): alert and reconnect."""
        self.notifier.alert(
            STREAM_STALLED,
            f"no Jetstream event for {seconds:.0f} s although the connection is up; "
            "reconnecting from the cursor",
        )
        self.stalled_for = seconds
        self.abort()

    def abort(self) -> None:
        """Break the live connection now, from any thread.

        Shutting the socket down (the plain socket's shutdown, under TLS too) wakes the
        library's reading thread at once and tells the server; the reader then sees the
        connection closed.
        """
        connection = self.connection
        if connection is None:
            return
        try:
            socket.socket.shutdown(connection.socket, socket.SHUT_RDWR)
        except OSError as error:  # already closed
            log.debug("shutting the stream socket down failed: %s", error)


def prepare_capture(settings: Settings) -> Callable[[CaptureRequest], JetstreamCapture]:
    """Load the zstd dictionary now (a broken install fails before the stream touches
    anything); the returned builder finds the start cursor in this host's chunks, which the
    stream has recovered by then, and makes the capture loop."""
    try:
        dictionary = load_dictionary()
    except OSError as error:
        raise CollectorError(f"cannot read Jetstream's zstd dictionary shipped with the "
                             f"collector ({error.strerror}); reinstall it") from None

    def build(request: CaptureRequest) -> JetstreamCapture:
        try:
            found = cursor_from_chunks(settings.data_storage_dst, settings.server_id,
                                       time.time())
        except OSError as error:  # never guess a cursor: a live tail could skip events
            raise CollectorError(f"cannot read this host's chunks under "
                                 f"{settings.data_storage_dst} to resume from: {error}") from None
        if found is None:
            start = None
            log.info("no Jetstream event in this host's chunks: starting at the live tail")
        else:
            start = rewound(found.time_us)
            assert start is not None
            log.info("resuming from %s: the largest time_us in %s (%s) less %d s",
                     utc_text(start), found.chunk.name, utc_text(found.time_us),
                     (found.time_us - start) // SECOND_US)
        handler = FrameHandler(settings.jetstream_url, dictionary)
        return JetstreamCapture(settings, request, handler, start)

    return build
