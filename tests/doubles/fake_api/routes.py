"""Which part answers each request on a connection — the control API, the stream endpoint
or a 404 — and the keep-alive loop that serves one connection's requests in turn.
"""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

from tests.doubles.fake_api.connection import ClientGone, Connection, Request, Stopping
from tests.doubles.fake_api.control import ControlAPI
from tests.doubles.fake_api.endpoint import StreamEndpoint
from tests.doubles.fake_api.wire import PROBLEM_BODIES, STREAM_PATH


class Router:
    """Serves one connection until it closes, a response forbids reuse, or a stop."""

    def __init__(self, stopping: threading.Event, control: ControlAPI,
                 endpoint: StreamEndpoint) -> None:
        self._stopping = stopping
        self._control = control
        self._endpoint = endpoint

    def serve(self, conn: Connection) -> None:
        reusable = True
        try:
            while reusable and not self._stopping.is_set():
                request = conn.read_request()
                if request is None:
                    break
                reusable = self._handle(conn, request)
                if request.headers.get("connection", "").lower() == "close":
                    break
        except (ClientGone, Stopping, OSError):
            pass

    def _handle(self, conn: Connection, request: Request) -> bool:
        """Answer one request; False when the socket must not serve another."""
        url = urlsplit(request.target)
        if url.path.startswith("/_control/"):
            return self._control.handle(conn, request, url.path)
        if url.path != STREAM_PATH or request.method != "GET":
            conn.respond(404, PROBLEM_BODIES[404])
            return True
        return self._endpoint.handle(conn, request, url.query)
