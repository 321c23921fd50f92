"""Plain HTTP control requests and WebSocket upgrades on one port.

The `websockets` server parses every request itself and refuses any with a body, so a
`POST /_control/faults` with JSON could never reach its `process_request` hook. The
connection class made here looks at the first bytes of each connection: a request for a
`/_control/` path is read whole (head and body) and answered by `control.handle`, then the
connection closes; anything else is handed unchanged to `websockets`.
"""

from __future__ import annotations

import asyncio

from websockets.asyncio.server import ServerConnection

from tests.doubles.fake_jetstream import control
from tests.doubles.fake_jetstream.query import Subscription

MAX_HEAD = 16 * 1024
MAX_BODY = 1024 * 1024


class JetstreamConnection(ServerConnection):
    """A server connection that also answers `/_control/` requests (see the module)."""

    controlled: control.Controlled  # set on the class `connection_class` makes
    subscription: Subscription | None = None  # set by process_request for /subscribe

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._front: bytearray | None = bytearray()
        self._answered = False
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._front is None:
            super().data_received(data)
            return
        if self._answered:
            return  # a control connection closes after its one answer
        self._front += data
        head_end = self._front.find(b"\r\n\r\n")
        if head_end < 0 and len(self._front) <= MAX_HEAD:
            return  # wait for the whole head
        line = bytes(self._front[: self._front.find(b"\r\n")]).split(b" ")
        if head_end < 0 or len(line) < 3 or not line[1].startswith(control.CONTROL_PREFIX):
            data, self._front = bytes(self._front), None
            super().data_received(data)  # a WebSocket upgrade (or junk): websockets decides
            return
        length = control.content_length(bytes(self._front[:head_end]))
        start = head_end + 4
        if length is not None and length <= MAX_BODY and len(self._front) < start + length:
            return  # wait for the whole body
        if length is None or length > MAX_BODY:
            answer = control.response(400, {"error": "bad or too large Content-Length"})
        else:
            body = bytes(self._front[start: start + length])
            answer = control.handle(self.controlled, line[0].decode("ascii", "replace"),
                                    line[1].decode("ascii", "replace"), body)
        self._answered = True
        self.transport.write(answer)
        self.transport.close()

    def eof_received(self) -> None:
        if self._front is not None:
            self.transport.close()  # a control request cut short (or answered): close
            return
        super().eof_received()


def connection_class(instance: control.Controlled) -> type[JetstreamConnection]:
    """A `JetstreamConnection` subclass bound to one instance (for `serve(create_connection=)`)."""

    class BoundJetstreamConnection(JetstreamConnection):
        controlled = instance

    return BoundJetstreamConnection
