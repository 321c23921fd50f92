"""The port: the `websockets` servers listening on it, what answers a request that is not a
control request (404 off `/subscribe`, 400 for a bad query, else the stream), a `refuse`
fault's closed port and its reopening on the same port, and closing it all on stop.

Kept apart because its life (and its one fault) concerns the listening socket: while a
refuse fault runs nothing on the port answers, the control endpoints included; connections
already open stay open.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from http import HTTPStatus
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from tests.doubles.fake_jetstream.context import Context, now_us
from tests.doubles.fake_jetstream.control import Controlled
from tests.doubles.fake_jetstream.frontdoor import JetstreamConnection, connection_class
from tests.doubles.fake_jetstream.query import SUBSCRIBE_PATH, QueryError, parse
from tests.doubles.fake_jetstream.records import ConnectionRecord, Records
from tests.doubles.fake_jetstream.session import Session

RETRY = 0.05  # seconds between attempts to listen again on the port after a refuse


class Listener:
    """Serves one port for one instance (on the instance's loop)."""

    def __init__(self, instance: Controlled, ctx: Context, records: Records, host: str,
                 port: int, *, comma_lists: bool, deflate: bool) -> None:
        self._ctx = ctx
        self._records = records
        self._host = host
        self._comma_lists = comma_lists
        self._deflate = deflate
        self._connection = connection_class(instance)
        self._servers: list[Server] = []
        self._current: Server | None = None
        self._reopen: asyncio.TimerHandle | None = None
        self._sock = self._bind(port)
        self.port: int = self._sock.getsockname()[1]
        self.refusing = False

    def _bind(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, port))
        sock.listen(128)
        sock.setblocking(False)
        return sock

    async def open(self) -> None:
        """Serve on the bound socket (called on the loop)."""
        self._current = await serve(
            self._handle, sock=self._sock, process_request=self._process_request,
            create_connection=self._connection, compression="deflate" if self._deflate else None,
            ping_interval=None, close_timeout=1, server_header=None)
        self._servers.append(self._current)

    async def close(self) -> None:
        """Stop listening and close every connection with 1001 (going away)."""
        if self._reopen is not None:
            self._reopen.cancel()
        for server in self._servers:
            server.close(close_connections=True)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)

    def refuse(self, seconds: float, ended: Callable[[], None]) -> None:
        """The `refuse` fault: close the listening socket for `seconds`, then listen again on
        the same port and call `ended` (on the loop)."""
        if self._current is not None:
            self._current.server.close()  # stops listening; open connections stay
            self._current = None
        self.refusing = True
        loop = asyncio.get_running_loop()
        self._reopen = loop.call_later(seconds, lambda: loop.create_task(self._again(ended)))

    async def _again(self, ended: Callable[[], None]) -> None:
        while not self._ctx.stopping:
            try:
                self._sock = self._bind(self.port)
            except OSError as error:  # the port is briefly held: try again shortly
                self._ctx.log(f"cannot listen again yet: {error}")
                await asyncio.sleep(RETRY)
                continue
            await self.open()
            self.refusing = False
            self._ctx.log("listening again")
            ended()
            return

    def _process_request(self, connection: ServerConnection,
                         request: Request) -> Response | None:
        """404 off `/subscribe`, 400 for a query Jetstream refuses; else the upgrade."""
        if urlsplit(request.path).path != SUBSCRIBE_PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, "404 page not found\n")
        try:
            subscription = parse(request.path, request.headers, comma_lists=self._comma_lists)
        except QueryError as error:
            return connection.respond(HTTPStatus.BAD_REQUEST, f"{error}\n")
        assert isinstance(connection, JetstreamConnection)
        connection.subscription = subscription
        return None

    async def _handle(self, connection: ServerConnection) -> None:
        """One accepted `/subscribe` connection: where it starts, its record, its stream."""
        assert isinstance(connection, JetstreamConnection)
        sub = connection.subscription
        assert sub is not None and connection.request is not None
        start = self._ctx.timeline.resolve(sub.cursor, now_us())
        peer = connection.remote_address
        record = self._records.add(ConnectionRecord(
            id=0, peer=f"{peer[0]}:{peer[1]}", path=connection.request.path,
            start=time.time(), cursor=sub.cursor, compress=sub.compress,
            collections=list(sub.collections), dids=sorted(sub.dids),
            max_message_size=sub.max_message_size, start_index=start.index,
            start_time_us=self._ctx.timeline.stamp(start.index), clamped=start.clamped,
            live=start.live))
        self._ctx.log(f"conn {record.id}: {record.path} from {record.peer} starts at "
                      f"{start.index}{' (clamped)' if start.clamped else ''}"
                      f"{' (live)' if start.live else ''}")
        try:
            await Session(self._ctx, connection, sub, record).run()
        except Exception as error:  # a bug here must show in the record, not vanish
            record.ended = f"error: {error!r}"
            raise
        finally:
            record.end = time.time()
            self._ctx.log(f"conn {record.id}: ended ({record.ended}), "
                          f"{record.whole_count} events sent whole")
