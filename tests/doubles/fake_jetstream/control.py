"""The control API under `/_control/` (plain HTTP on the instance's own port, no auth,
loopback only): the door through which the lab and the fault suite, running each instance as
a separate process, read its log and queue or drop its faults; the same operations
`FakeJetstream` offers in-process.

`GET /_control/log`, `GET /_control/faults`, `POST /_control/faults` (one JSON object or a
list; 201 `{"queued": n}`, 400 `{"error": ...}`), `DELETE /_control/faults`.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, Protocol

import orjson

from tests.doubles.fake_jetstream.faults import Fault, FaultError

CONTROL_PREFIX = b"/_control/"


class Controlled(Protocol):
    """What the control API needs of an instance."""

    def log(self) -> dict[str, Any]: ...

    def pending_faults(self) -> list[dict[str, Any]]: ...

    def inject(self, *faults: Fault) -> None: ...

    def clear_faults(self) -> None: ...


def response(status: int, body: Any) -> bytes:
    """A whole HTTP/1.1 response with a JSON body; the connection closes after it."""
    payload = orjson.dumps(body)
    reason = HTTPStatus(status).phrase
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n")
    return head.encode() + payload


def handle(instance: Controlled, method: str, path: str, body: bytes) -> bytes:
    """Answer one control request."""
    path = path.split("?", 1)[0]
    if path == "/_control/log" and method == "GET":
        return response(200, instance.log())
    if path != "/_control/faults":
        return response(404, {"error": f"no such control endpoint: {path}"})
    if method == "GET":
        return response(200, instance.pending_faults())
    if method == "DELETE":
        instance.clear_faults()
        return response(200, [])
    if method == "POST":
        try:
            payload = orjson.loads(body)
            items = payload if isinstance(payload, list) else [payload]
            faults = [Fault.from_json(item) for item in items]
        except (orjson.JSONDecodeError, FaultError, TypeError) as error:
            return response(400, {"error": str(error)})
        instance.inject(*faults)
        return response(201, {"queued": len(faults)})
    return response(405, {"error": f"{method} not allowed on {path}"})


def content_length(head: bytes) -> int | None:
    """The Content-Length of a request head (0 when absent, None when unreadable)."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            try:
                length = int(value.strip())
            except ValueError:
                return None
            return length if length >= 0 else None
    return 0
