"""The listening socket: the accept loop with a thread per connection, the closed port of a
`refuse` fault and its reopening on the same port, and cutting every connection on stop.

Kept apart because its life (and its one fault) concerns TCP, not HTTP: while a refuse fault
runs, nothing on the port answers, the control endpoints included.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Callable

from tests.doubles.fake_api.connection import POLL, Connection
from tests.doubles.fake_api.log import Log


class Listener:
    """Accepts connections on one port and hands each to `serve` in its own thread."""

    def __init__(self, host: str, port: int, *, lock: threading.RLock,
                 stopping: threading.Event, log: Log, serve: Callable[[Connection], None],
                 reopened: Callable[[], None]) -> None:
        self.host = host
        self._lock = lock
        self._stopping = stopping
        self._log = log
        self._serve = serve
        self._reopened = reopened
        self._clients: set[Connection] = set()
        self._threads: list[threading.Thread] = []
        self._refuse_until = 0.0
        self._socket: socket.socket | None = self._listen(port)
        self.port: int = self._socket.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name="fake-api-accept",
                                          daemon=True)

    def start(self) -> None:
        self._acceptor.start()

    def stop(self) -> None:
        """Once `stopping` is set: close the port, cut every connection, join the threads."""
        with self._lock:
            listener, self._socket = self._socket, None
            clients = list(self._clients)
        if listener is not None:
            _close_listener(listener)
        for client in clients:
            with contextlib.suppress(OSError):
                client.sock.shutdown(socket.SHUT_RDWR)
        if self._acceptor.is_alive():
            self._acceptor.join(5)
        for thread in list(self._threads):
            thread.join(5)

    def refuse(self, seconds: float) -> None:
        """Close the port for `seconds` (called with the lock held, by the fault queue)."""
        self._refuse_until = time.monotonic() + seconds
        listener, self._socket = self._socket, None
        if listener is not None:
            _close_listener(listener)
        self._log(f"fault: refusing connections for {seconds:g}s")

    def _listen(self, port: int) -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, port))
        listener.listen(128)
        return listener

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            listener = self._socket
            if listener is None:
                self._refusing()
                continue
            try:
                ready, _, _ = select.select([listener], [], [], POLL)
                if not ready:
                    continue
                sock, address = listener.accept()
            except (OSError, ValueError):
                continue  # closed by a refuse fault or stop(): the loop re-checks
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client = Connection(sock, f"{address[0]}:{address[1]}", self._stopping)
            thread = threading.Thread(target=self._run, args=(client,), daemon=True,
                                      name=f"fake-api-{client.peer}")
            with self._lock:
                self._clients.add(client)
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(thread)
            thread.start()

    def _run(self, client: Connection) -> None:
        try:
            self._serve(client)
        finally:
            with self._lock:
                self._clients.discard(client)
            with contextlib.suppress(OSError):
                client.sock.close()

    def _refusing(self) -> None:
        """While a refuse fault runs: wait, then listen again on the same port."""
        if time.monotonic() < self._refuse_until:
            self._stopping.wait(min(POLL, self._refuse_until - time.monotonic()))
            return
        try:
            listener = self._listen(self.port)
        except OSError as error:  # the port is briefly held elsewhere: try again shortly
            self._log(f"cannot listen again yet: {error}")
            self._stopping.wait(POLL)
            return
        with self._lock:
            if self._stopping.is_set():
                listener.close()
                return
            self._socket = listener
            self._reopened()
        self._log("listening again")


def _close_listener(listener: socket.socket) -> None:
    # shutdown() wakes a select() blocked on it and refuses new connections at once.
    with contextlib.suppress(OSError):
        listener.shutdown(socket.SHUT_RDWR)
    listener.close()
