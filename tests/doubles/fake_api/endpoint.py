"""`GET /2/tweets/sample/stream`: what a request gets before any message — a queued request
fault, 401 (bad token), 429 (budget or slots), 400 (backfill) — or else its stream.

The refusals the collector must survive read here in one place, in the order the fake
applies them; the stream itself is the streamer's.
"""

from __future__ import annotations

import threading
import time
from urllib.parse import parse_qs

from tests.doubles.fake_api.budget import Budgets
from tests.doubles.fake_api.connection import Connection, Request
from tests.doubles.fake_api.faults import Fault, FaultQueue, describe
from tests.doubles.fake_api.lines import LineCache
from tests.doubles.fake_api.log import Log
from tests.doubles.fake_api.records import Record, Records
from tests.doubles.fake_api.stream import Streamer
from tests.doubles.fake_api.wire import (
    PROBLEM_BODIES,
    RATE_LIMITED,
    TOO_MANY_CONNECTIONS,
    invalid_backfill,
)


class StreamEndpoint:
    """Answers stream requests; every one is recorded, whatever it got."""

    def __init__(self, *, tokens: tuple[str, ...], lock: threading.RLock, records: Records,
                 faults: FaultQueue, budgets: Budgets, lines: LineCache, streamer: Streamer,
                 log: Log) -> None:
        self._tokens = tokens
        self._lock = lock
        self._records = records
        self._faults = faults
        self._budgets = budgets
        self._lines = lines
        self._streamer = streamer
        self._log = log

    def handle(self, conn: Connection, request: Request, query: str) -> bool:
        """Answer one stream request; False when the socket must not serve another."""
        auth = request.headers.get("authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
        known = token in self._tokens
        record = Record(id=0, token=token if known else None, peer=conn.peer,
                        query=query, start=time.time())
        with self._lock:  # one step: record ids and the order requests take faults agree
            self._records.add(record)
            fault = self._faults.take_request_fault(record.token)
        try:
            if fault is not None:
                return self._request_fault(conn, record, fault)
            return self._admit(conn, record, query)
        finally:
            record.end = record.end or time.time()
            self._log(f"conn {record.id} {self._log.label(record.token)} from {conn.peer}: "
                      f"status={record.status} whole={record.whole_count} "
                      f"events={record.events}")

    def _request_fault(self, conn: Connection, record: Record, fault: Fault) -> bool:
        record.events.append(describe(fault))
        if fault.kind == "no_headers":
            conn.hold(time.monotonic() + fault.seconds)
            return False
        headers: dict[str, str] = {}
        body = PROBLEM_BODIES[fault.status]
        if fault.status == 429 and fault.rate_limit_headers:
            headers = self._budgets.rate_headers(record.token, fault.remaining)
            if fault.remaining == 0:
                body = RATE_LIMITED
        record.status = fault.status
        conn.respond(fault.status, body, headers)
        return True

    def _admit(self, conn: Connection, record: Record, query: str) -> bool:
        token = record.token
        if token is None:
            record.status = 401
            conn.respond(401, PROBLEM_BODIES[401])
            return True
        params = parse_qs(query)
        backfill = _backfill(params.get("backfill_minutes"))
        admission = self._budgets.admit(token, valid=backfill is not None)
        headers = self._budgets.rate_headers(token)
        if admission.over_budget:
            record.status = 429
            conn.respond(429, RATE_LIMITED, headers)
            return True
        if admission.busy:
            record.status = 429
            conn.respond(429, TOO_MANY_CONNECTIONS, headers)
            return True
        if backfill is None:
            record.status = 400
            conn.respond(400, invalid_backfill(params["backfill_minutes"][-1]))
            return True
        try:
            record.backfill_minutes = backfill
            lines = self._lines.get(_csv(params.get("tweet.fields")),
                                    _csv(params.get("user.fields")),
                                    _csv(params.get("expansions")))
            return self._streamer.stream(conn, record, lines, headers)
        finally:
            self._budgets.release(token)


def _backfill(values: list[str] | None) -> int | None:
    """The requested backfill in minutes, 0 when absent, None when invalid (not 0-5)."""
    if not values:
        return 0
    try:
        minutes = int(values[-1])
    except ValueError:
        return None
    return minutes if 0 <= minutes <= 5 else None


def _csv(values: list[str] | None) -> tuple[str, ...]:
    if not values:
        return ()
    return tuple(item for item in values[-1].split(",") if item)
