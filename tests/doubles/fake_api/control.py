"""The control API under `/_control/` (no auth, loopback only): the door through which the
lab and the fault suite, running the fake as a separate process, read its log and queue or
drop faults — the same operations `FakeStreamAPI` offers in-process.
"""

from __future__ import annotations

import orjson

from tests.doubles.fake_api.connection import Connection, Request
from tests.doubles.fake_api.faults import Fault, FaultError, FaultQueue
from tests.doubles.fake_api.records import Records
from tests.doubles.fake_api.wire import PROBLEM_BODIES


class ControlAPI:
    """`GET /_control/log`, `GET`/`POST`/`DELETE /_control/faults`."""

    def __init__(self, records: Records, faults: FaultQueue) -> None:
        self._records = records
        self._faults = faults

    def handle(self, conn: Connection, request: Request, path: str) -> bool:
        """Answer one control request; the socket may always serve another."""
        if path == "/_control/log" and request.method == "GET":
            body = {"connections": self._records.to_json(),
                    "pending_faults": self._faults.pending()}
            conn.respond(200, body)
        elif path == "/_control/faults" and request.method == "GET":
            conn.respond(200, self._faults.pending())
        elif path == "/_control/faults" and request.method == "DELETE":
            self._faults.clear()
            conn.respond(200, [])
        elif path == "/_control/faults" and request.method == "POST":
            try:
                payload = orjson.loads(request.body)
                items = payload if isinstance(payload, list) else [payload]
                faults = [Fault.from_json(item) for item in items]
            except (orjson.JSONDecodeError, FaultError, TypeError) as error:
                conn.respond(400, {"error": str(error)})
                return True
            self._faults.inject(*faults)
            conn.respond(201, {"queued": len(faults)})
        else:
            conn.respond(404, PROBLEM_BODIES[404])
        return True
