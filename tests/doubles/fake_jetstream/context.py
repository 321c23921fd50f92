"""What the connections of one instance share: its universe and timeline, its fault queue,
its zstd compressor, the wakers of the open connections, its stop flag and log; and the
one thing done below the WebSocket layer, cutting a connection mid-frame.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from websockets.asyncio.server import ServerConnection

from tests.doubles.fake_jetstream.faults import FaultQueue
from tests.doubles.fake_jetstream.records import ConnectionRecord
from tests.doubles.fake_jetstream.timeline import Timeline
from tests.doubles.fake_jetstream.universe import Universe
from tests.doubles.fake_jetstream.wire import OPCODE_BINARY, OPCODE_TEXT, Zstd, frame_head

CUT_PAUSE = 0.2  # seconds between the last whole frame and a deliberate cut
LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a TCP RST


def now_us() -> int:
    return time.time_ns() // 1000


class Waker:
    """A sleep that `wake()` (a fault injected, the client gone, the server stopping) ends."""

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None

    def wake(self) -> None:
        if self._future is not None and not self._future.done():
            self._future.set_result(None)

    async def sleep(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._future = future
        handle = loop.call_later(max(0.0, seconds), self.wake)
        try:
            await future
        finally:
            handle.cancel()
            self._future = None


@dataclass
class Context:
    """Shared by the sessions of one instance; used on its event loop only (but `faults`
    and `timeline`, which are thread-safe)."""

    universe: Universe
    timeline: Timeline
    faults: FaultQueue
    log: Callable[[str], None]
    zstd: Zstd = field(default_factory=Zstd)
    wakers: set[Waker] = field(default_factory=set)
    stopping: bool = False

    def wake_all(self) -> None:
        for waker in list(self.wakers):
            waker.wake()

    async def cut(self, ws: ServerConnection, index: int, compress: bool,
                  record: ConnectionRecord) -> None:
        """`drop_mid_frame`: once what was sent has left (and had time to be read), the
        first half of event `index`'s frame, then a TCP RST with no close frame."""
        transport = ws.transport
        await _drained(ws)
        await asyncio.sleep(CUT_PAUSE)
        data = self.universe.wire(index, self.timeline.stamp(index))
        payload = self.zstd.compress(data) if compress else data
        opcode = OPCODE_BINARY if compress else OPCODE_TEXT
        transport.write(frame_head(opcode, len(payload)) + payload[: max(1, len(payload) // 2)])
        await _drained(ws)
        await asyncio.sleep(0.05)
        record.partial.append(index)
        record.ended = "dropped mid-frame"
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        transport.abort()


async def _drained(ws: ServerConnection) -> None:
    """Wait until the transport's write buffer is empty (or the connection is gone)."""
    while ws.transport.get_write_buffer_size() > 0 and not ws.transport.is_closing():
        await asyncio.sleep(0.01)
