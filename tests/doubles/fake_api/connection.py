"""One accepted TCP connection: reading HTTP requests from it, and writing to it or waiting
on it so that a client that went away (EOF/RST) or a stop is noticed at once.

Noticing a departed client promptly is what frees its slot at once, like the real API; every
blocking step here is bounded by POLL so stop() and faults take effect promptly.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from tests.doubles.fake_api.wire import head

POLL = 0.1  # longest blocking wait, so stop() and faults take effect promptly
MAX_REQUEST_BYTES = 64 * 1024


class ClientGone(Exception):
    """The client closed or reset the connection."""


class Stopping(Exception):
    """The server is shutting down."""


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


class Connection:
    """One client socket, its peer address and its unread bytes."""

    def __init__(self, sock: socket.socket, peer: str, stopping: threading.Event) -> None:
        self.sock = sock
        self.peer = peer
        self.buffer = b""
        self._stopping = stopping

    def read_request(self) -> Request | None:
        """The next request, or None when the client closed or sent something unusable."""
        while b"\r\n\r\n" not in self.buffer:
            if len(self.buffer) > MAX_REQUEST_BYTES:
                return None
            data = self._recv()
            if not data:
                return None
            self.buffer += data
        request_head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = request_head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            return None
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        try:
            length = int(headers.get("content-length", "0") or 0)
        except ValueError:
            return None
        while len(self.buffer) < length:
            data = self._recv()
            if not data:
                return None
            self.buffer += data
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Request(parts[0].upper(), parts[1], headers, body)

    def send(self, data: bytes) -> None:
        if self._stopping.is_set():
            raise Stopping
        if _peer_closed(self.sock):
            raise ClientGone
        try:
            self.sock.sendall(data)
        except OSError as error:
            raise ClientGone from error

    def respond(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        """A whole JSON response with a content-length."""
        payload = orjson.dumps(body)
        response_head = head(status, {"content-type": "application/json",
                                      "content-length": str(len(payload)), **(headers or {})})
        self.send(response_head + payload)

    def wait(self, until: float, wake: Callable[[], int] | None = None) -> None:
        """Sleep until `until`, but notice at once a client that went away or a stop.

        With `wake`, return early when its value changes (a fault was injected), so an idle
        stream (heartbeats only) picks the fault up within POLL seconds.
        """
        seen = wake() if wake is not None else 0
        while (left := until - time.monotonic()) > 0:
            if self._stopping.is_set():
                raise Stopping
            if wake is not None and wake() != seen:
                return
            ready, _, _ = select.select([self.sock], [], [], min(left, POLL))
            if ready:
                if _peer_closed(self.sock):
                    raise ClientGone
                time.sleep(min(left, POLL))  # the client sent bytes mid-stream: ignore them

    def hold(self, until: float) -> None:
        """Wait until `until` or until the client goes away, whichever comes first."""
        with contextlib.suppress(ClientGone):
            self.wait(until)

    def reset(self) -> None:
        """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        finally:
            self.sock.close()

    def _recv(self) -> bytes:
        while True:
            if self._stopping.is_set():
                raise Stopping
            ready, _, _ = select.select([self.sock], [], [], POLL)
            if ready:
                return self.sock.recv(65536)


def _peer_closed(sock: socket.socket) -> bool:
    """True when the client has sent EOF or RST (it never sends anything mid-stream)."""
    ready, _, _ = select.select([sock], [], [], 0)
    if not ready:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
