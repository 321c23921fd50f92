"""The body of an admitted stream: messages sent when due on the one global clock, late ones
coalesced into chunks, heartbeats when idle, and stream faults fired at their count.

This is where the fake's timing lives; what a request gets before its stream starts is the
endpoint's business, and which fault comes next is the fault queue's.
"""

from __future__ import annotations

import math
import time
from enum import Enum

import orjson

from tests.doubles.fake_api.connection import Connection
from tests.doubles.fake_api.faults import Fault, FaultQueue, Pending, describe
from tests.doubles.fake_api.lines import Lines
from tests.doubles.fake_api.log import Log
from tests.doubles.fake_api.records import Record
from tests.doubles.fake_api.wire import (
    DISCONNECT_BODIES,
    HEARTBEAT,
    HTML_LINE,
    LAST_CHUNK,
    MALFORMED_LINE,
    chunk,
    head,
)

CUT_PAUSE = 0.3  # seconds between the last whole line and a deliberate reset


class Clock:
    """The one global clock: message i is due at `t0 + i / rate` (monotonic seconds)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.t0 = time.monotonic()

    def restart(self) -> None:
        self.t0 = time.monotonic()

    def index_at(self, when: float) -> int:
        """First message index due at or after monotonic time `when`."""
        return max(0, math.ceil((when - self.t0) * self.rate))


class _Outcome(Enum):
    CONTINUE = "continue"
    ENDED = "ended"  # response ended with the zero chunk; the socket may serve more requests
    RESET = "reset"  # socket already reset and closed


class Streamer:
    """Writes admitted streams."""

    def __init__(self, clock: Clock, heartbeat_interval: float, faults: FaultQueue,
                 log: Log) -> None:
        self._clock = clock
        self._heartbeat_interval = heartbeat_interval
        self._faults = faults
        self._log = log

    def stream(self, conn: Connection, record: Record, lines: Lines,
               headers: dict[str, str]) -> bool:
        """Stream until a fault ends it, the client goes or the server stops; True when the
        response ended properly and the socket may serve another request."""
        clock = self._clock
        opened = time.monotonic()
        index = max(0, clock.index_at(opened) - int(record.backfill_minutes * 60 * clock.rate))
        record.first_index = index
        record.status = 200
        conn.send(head(200, {
            "content-type": "application/json", "transfer-encoding": "chunked",
            "cache-control": "no-cache, no-store, max-age=0", **headers,
        }))
        last_write = time.monotonic()
        pending: Pending | None = None
        base = 0
        try:
            while True:
                if pending is None:
                    pending = self._faults.claim(record.id, record.token)
                    base = record.whole_count
                if pending is not None and record.whole_count - base >= pending.fault.after:
                    self._faults.take(pending)
                    fault, pending = pending.fault, None
                    record.events.append(describe(fault))
                    outcome, index = self._fire(conn, record, lines, fault, index)
                    if outcome is not _Outcome.CONTINUE:
                        return outcome is _Outcome.ENDED
                    last_write = time.monotonic()
                    continue
                now = time.monotonic()
                due = math.floor((now - clock.t0) * clock.rate) + 1  # indices below are due
                if index < due:
                    limit = due - index
                    if pending is not None:
                        limit = min(limit, base + pending.fault.after - record.whole_count)
                    payload, count = lines.batch(index, limit)
                    conn.send(chunk(payload))
                    record.add_whole(index, count)
                    index += count
                    last_write = time.monotonic()
                    continue
                heartbeat_at = last_write + self._heartbeat_interval
                if now >= heartbeat_at:
                    conn.send(chunk(HEARTBEAT))
                    last_write = now
                    continue
                conn.wait(min(clock.t0 + index / clock.rate, heartbeat_at),
                          wake=self._faults.injections if pending is None else None)
        finally:
            if pending is not None:
                self._faults.unclaim(pending)

    def _fire(self, conn: Connection, record: Record, lines: Lines, fault: Fault,
              index: int) -> tuple[_Outcome, int]:
        self._log(f"conn {record.id}: fault {describe(fault)} at message {index}")
        kind = fault.kind
        if kind in ("drop_mid_line", "rst"):
            conn.wait(time.monotonic() + CUT_PAUSE)
            if kind == "drop_mid_line":
                line = lines.line(index)
                conn.send(chunk(line[: len(line) // 2]))
                record.partial.append(index)
            conn.reset()
            return _Outcome.RESET, index
        if kind == "clean_end":
            conn.send(LAST_CHUNK)
            return _Outcome.ENDED, index
        if kind == "partial_then_end":
            line = lines.line(index)
            conn.send(chunk(line[: len(line) // 2]) + LAST_CHUNK)
            record.partial.append(index)
            return _Outcome.ENDED, index
        if kind == "operational_disconnect":
            payload = orjson.dumps(DISCONNECT_BODIES[fault.variant]) + b"\r\n"
            conn.send(chunk(payload) + (LAST_CHUNK if fault.close else b""))
            return (_Outcome.ENDED if fault.close else _Outcome.CONTINUE), index
        if kind in ("malformed_line", "non_json_line"):
            conn.send(chunk(MALFORMED_LINE if kind == "malformed_line" else HTML_LINE))
            return _Outcome.CONTINUE, index
        if kind == "silent_stall":
            conn.wait(time.monotonic() + fault.seconds)
            return _Outcome.CONTINUE, index
        # heartbeat_stall: heartbeats only, then skip what fell due meanwhile
        until = time.monotonic() + fault.seconds
        while (now := time.monotonic()) < until:
            conn.wait(min(until, now + self._heartbeat_interval))
            if time.monotonic() < until:
                conn.send(chunk(HEARTBEAT))
        resume = max(index, self._clock.index_at(until))
        if resume > index:
            record.events.append(f"skipped {index}-{resume - 1}")
        return _Outcome.CONTINUE, resume
