"""One `/subscribe` connection's stream: from its start index, every event the subscription
wants and the instance has, as fast as the socket takes while they are past (replay), then
each when due (live tail), with the connection faults fired at their count.

This is where an instance's timing lives; where a connection starts is the timeline's
business, what goes on the wire the `wire` module's, which fault comes next the queue's.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from tests.doubles.fake_jetstream.context import Context, Waker, now_us
from tests.doubles.fake_jetstream.faults import Fault, Pending
from tests.doubles.fake_jetstream.query import Subscription
from tests.doubles.fake_jetstream.records import ConnectionRecord
from tests.doubles.fake_jetstream.wire import CORRUPT_ZSTD, malformed, padded

REPEAT_LIMIT = 10_000  # how many sent indices a connection remembers for `repeat`
SCAN_LIMIT = 1_000_000  # how far `miss`, `oversized` and a cut look ahead for wanted events
YIELD_EVERY = 256  # events between two yields to the loop during a long replay


class Session:
    """Streams one connection until it ends (see `ConnectionRecord.ended`)."""

    def __init__(self, ctx: Context, ws: ServerConnection, sub: Subscription,
                 record: ConnectionRecord) -> None:
        self.ctx = ctx
        self.ws = ws
        self.sub = sub
        self.record = record
        self.index = record.start_index
        self.sent: deque[int] = deque(maxlen=REPEAT_LIMIT)
        self.joins = False  # may the next event extend the last run (see records)?
        self.waker = Waker()
        self.closed: asyncio.Future[None] = asyncio.ensure_future(ws.wait_closed())
        self.closed.add_done_callback(lambda _: self.waker.wake())

    async def run(self) -> None:
        self.ctx.wakers.add(self.waker)
        try:
            await self._stream()
        except ConnectionClosed:
            self.record.ended = self.record.ended or self._how_it_closed()
        finally:
            self.ctx.wakers.discard(self.waker)
            self.closed.cancel()

    def _how_it_closed(self) -> str:
        if self.ctx.stopping:
            return "server stopped"
        received = self.ws.protocol.close_rcvd
        return "client went away" if received is None else f"client closed {received.code}"

    def _wanted(self, index: int) -> bool:
        """Will this connection send event `index`? (It steps over it otherwise, and a run
        of the record may not step over one the instance never had.)"""
        if not self.sub.wants(self.ctx.universe.meta(index)):
            return False
        if self.ctx.timeline.is_missing(index):
            self.joins = False
            return False
        return True

    def _next_wanted(self, index: int) -> int:
        for candidate in range(index, index + SCAN_LIMIT):
            if self._wanted(candidate):
                return candidate
        return index + SCAN_LIMIT

    async def _stream(self) -> None:
        ctx, record = self.ctx, self.record
        pending: Pending | None = None
        base = steps = 0
        try:
            while True:
                if ctx.stopping or self.closed.done():
                    record.ended = self._how_it_closed()
                    await self.ws.close(1001, "server stopping")  # a no-op once closed
                    return
                if pending is None:
                    pending = ctx.faults.claim(record.id)
                    base = record.whole_count
                if pending is not None and record.whole_count - base >= pending.fault.after:
                    ctx.faults.take(pending)
                    fault, pending = pending.fault, None
                    record.events.append(f"{fault.describe()} at index {self.index}")
                    ctx.log(f"conn {record.id}: fault {fault.describe()} at index {self.index}")
                    if not await self._fire(fault):
                        return
                    continue
                index, now = self.index, now_us()
                due = ctx.universe.due_us(index)
                if due > now:
                    await self.waker.sleep((due - now) / 1e6)
                    continue
                if not self._wanted(index):
                    self.index += 1
                else:
                    ready = ctx.timeline.ready_us(index)
                    if ready > now:
                        await self.waker.sleep((ready - now) / 1e6)
                        continue
                    self.index += 1
                    await self._send_event(index)
                steps += 1
                if steps % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
        finally:
            if pending is not None:
                ctx.faults.unclaim(pending)

    async def _send(self, data: bytes) -> None:
        if self.sub.compress:
            await self.ws.send(self.ctx.zstd.compress(data))  # bytes: a binary frame
        else:
            await self.ws.send(data, text=True)

    async def _send_event(self, index: int, *, repeat: bool = False) -> None:
        """Send event `index` unless it is too big for the subscription. A repeat goes out
        as sent before (no size check) and starts runs of its own in the record."""
        data = self.ctx.universe.wire(index, self.ctx.timeline.stamp(index))
        limit = self.sub.max_message_size
        if not repeat and limit and len(data) > limit:
            self.record.skipped_too_big += 1  # Jetstream skips it silently
            self.joins = False
            return
        await self._send(data)
        self.record.add_whole(index, joins=self.joins and not repeat)
        self.joins = self.joins if repeat else True
        self.sent.append(index)

    async def _fire(self, fault: Fault) -> bool:
        """Apply a connection fault; False when the connection is over."""
        ctx, record, kind = self.ctx, self.record, fault.kind
        if kind == "close":
            record.ended = f"closed {fault.code} {fault.reason}".strip()
            await self.ws.close(fault.code, fault.reason)
            return False
        if kind == "drop_mid_frame":
            await ctx.cut(self.ws, self._next_wanted(self.index), self.sub.compress, record)
            await self.closed
            return False
        if kind == "silence":
            until = time.monotonic() + fault.seconds
            while (left := until - time.monotonic()) > 0 and not self.closed.done():
                await self.waker.sleep(left)
        elif kind == "repeat":
            for index in list(self.sent)[-fault.count:]:
                await self._send_event(index, repeat=True)
        elif kind == "corrupt_frame":
            await self.ws.send(CORRUPT_ZSTD)
        elif kind == "malformed":
            index = self._next_wanted(self.index)
            await self._send(malformed(ctx.universe.wire(index, ctx.timeline.stamp(index))))
        elif kind == "oversized":
            await self._oversized(fault.bytes)
        elif kind == "miss":
            last, found = self.index - 1, 0
            while found < fault.count and last < self.index + SCAN_LIMIT:
                last += 1
                found += self._wanted(last)
            ctx.timeline.add_missing(self.index, last)
            record.events.append(f"instance never had {self.index}-{last}")
        return True

    async def _oversized(self, size: int) -> None:
        """One extra frame larger than `size`: the next wanted event, padded. A connection
        whose maxMessageSizeBytes is smaller skips it, as Jetstream would."""
        ctx, index = self.ctx, self._next_wanted(self.index)
        if self.sub.max_message_size and size >= self.sub.max_message_size:
            self.record.skipped_too_big += 1
            return
        stamp = ctx.timeline.stamp(index)
        zstd = ctx.zstd if self.sub.compress else None
        frame = padded(ctx.universe.event(index), stamp, size, zstd)
        if zstd is not None:
            await self.ws.send(frame)
        else:
            await self.ws.send(frame, text=True)
