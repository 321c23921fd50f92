"""A fake X API v2 sampled stream (`GET /2/tweets/sample/stream`) on loopback.

It plays what research/stream.md sections 1 and 6 say the real endpoint does on the wire, so
tests, the benchmark and the lab can run the real twarc/requests/urllib3 stack against it:

* HTTP/1.1, `Transfer-Encoding: chunked`, `content-type: application/json` and
  `x-rate-limit-limit/-remaining/-reset` on 200 and 429; any Host header; keep-alive.
* Bearer auth against the configured tokens (401 problem body otherwise).
* One global clock: message i (from `MessageFactory`, built with the request's `tweet.fields`,
  `user.fields`, `expansions`) is due at `t0 + i / rate`. A connection opened at t starts
  with the first message due at or after t (minus `backfill_minutes` minutes) and sends each
  message when due, so redundant connections see the same sequence. Messages that are late
  (backfill, a stall, a very high rate such as 1e9 = "as fast as the socket takes") are
  coalesced, up to 64 KiB per HTTP chunk. `\\r\\n` heartbeats whenever nothing was written for
  `heartbeat_interval` seconds.
* Per token: `slots` concurrent streams (more get the real 429 TooManyConnections body, with
  remaining > 0) and `attempt_limit` stream requests per `window_seconds` (more get 429 with
  remaining = 0). A slot is freed as soon as the client goes away: the fake watches the socket
  for EOF/RST while it waits, and a failed write ends the stream too.
* A record per stream request: token, times, status, and the indices of the messages whose
  line went out whole (`sent_whole(token)`, `connection_log()`, `GET /_control/log`).
  "Whole" means the write of that line returned; before any deliberate reset the fake pauses
  `CUT_PAUSE` so a healthy client has read it (an RST can discard unread data on Linux). A
  client that closes by itself while lines are in flight may not have read the last write.
  The record of an open connection is updated just after each write returns, so it may lag
  what the client already holds: compare after the connection has ended (`end` is set).

Faults are queued (`inject(Fault(...))` or `POST /_control/faults` with one JSON object or a
list) and applied strictly in order: only the head of the queue is live. JSON keys are the
`Fault` fields; unknown keys are an error. "After N" counts whole messages sent on the
connection that picked the fault up (the open stream, else the next one).

| kind | keys | what happens |
| --- | --- | --- |
| `drop_mid_line` | `after` | pause, half of the next line as one chunk, TCP RST |
| `rst` | `after` | pause, TCP RST between two messages |
| `clean_end` | `after` | zero-length chunk: the response ends properly (socket kept) |
| `status` | `status`, `count`, | the next `count` stream requests get `status` (401, 403, |
| | `rate_limit_headers`, | 429, 500, 503) and a realistic body; a 429 has rate-limit |
| | `remaining` | headers unless `rate_limit_headers` is false (`remaining` |
| | | overrides the budget's value; 0 gives the rate-limit body) |
| `operational_disconnect` | `after`, `variant`, | in-stream error object, then the response |
| | `close` | ends unless `close` is false (variants below) |
| `malformed_line` | `after` | `MALFORMED_LINE` (truncated JSON + CRLF), then carry on |
| `non_json_line` | `after` | `HTML_LINE` (a 502 page + CRLF), then carry on |
| `partial_then_end` | `after` | half of the next line, then a clean end of response |
| `silent_stall` | `after`, `seconds` | nothing at all for `seconds`, then the late messages |
| `heartbeat_stall` | `after`, `seconds` | heartbeats only; messages due meanwhile are skipped |
| `refuse` | `seconds` | listening socket closed (refused), then same port again |
| `no_headers` | `seconds` | next stream request accepted, never answered, then closed |

`variant` is `OperationalDisconnect` (the form users received, api.twitter.com type) or
`UpstreamOperationalDisconnect` (the documented form, api.x.com type).
Every kind also takes `token`: only a connection/request of that token applies the fault.
`status` faults are answered before authentication and do not count against the budget.

While a `refuse` fault runs the control endpoints are unreachable too (one port).

Control endpoints (no auth, loopback only): `GET /_control/log` ({"connections": [...],
"pending_faults": [...]}), `GET /_control/faults`, `POST /_control/faults`,
`DELETE /_control/faults` (drop pending faults). Log records give whole messages as inclusive
runs `[[first, last], ...]`; `expand_runs` turns them into indices.

Command line (runs until SIGTERM, then exits 0):
    python -m tests.doubles.fake_api --port 0 --tokens tokA,tokB --rate 50 --heartbeat 20 \\
        [--slots 1] [--window 900] [--port-file PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from email.utils import formatdate
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from tests.doubles.portfile import write_port_file
from tests.doubles.samples import (
    DEFAULT_TWEET_FIELDS,
    DEFAULT_USER_FIELDS,
    MISSING_AUTHOR_EVERY,
    PARTIAL_ERROR_EVERY,
    MessageFactory,
    snowflake,
)

STREAM_PATH = "/2/tweets/sample/stream"
HEARTBEAT = b"\r\n"
MAX_CHUNK_BYTES = 64 * 1024
CUT_PAUSE = 0.3  # seconds between the last whole line and a deliberate reset
POLL = 0.1  # longest blocking wait, so stop() and faults take effect promptly
MAX_REQUEST_BYTES = 64 * 1024
CACHE_SLOTS = 1 << 16

MALFORMED_LINE = b'{"data": {"author_id": "1021159080151404544"\r\n'
HTML_LINE = b"<html><body>502 Bad Gateway</body></html>\r\n"

STREAM_KINDS = frozenset({
    "drop_mid_line", "rst", "clean_end", "operational_disconnect", "malformed_line",
    "non_json_line", "partial_then_end", "silent_stall", "heartbeat_stall",
})
REQUEST_KINDS = frozenset({"status", "no_headers"})
FAULT_KINDS = STREAM_KINDS | REQUEST_KINDS | {"refuse"}
FAULT_STATUSES = frozenset({401, 403, 429, 500, 503})
DISCONNECT_VARIANTS = frozenset({"OperationalDisconnect", "UpstreamOperationalDisconnect"})

TOO_MANY_CONNECTIONS = {
    "title": "ConnectionException",
    "detail": "This stream is currently at the maximum allowed connection limit.",
    "connection_issue": "TooManyConnections",
    "type": "https://api.twitter.com/2/problems/streaming-connection",
}
RATE_LIMITED = {
    "title": "Too Many Requests", "detail": "Too Many Requests", "type": "about:blank",
    "status": 429,
}
PROBLEM_BODIES: dict[int, dict[str, Any]] = {
    401: {"title": "Unauthorized", "type": "about:blank", "status": 401,
          "detail": "Unauthorized"},
    403: {
        "client_id": "28470531",
        "detail": "When authenticating requests to the Twitter API v2 endpoints, you must use "
                  "keys and tokens from a Twitter developer App that is attached to a Project. "
                  "You can create a project via the developer portal.",
        "registration_url": "https://developer.twitter.com/en/docs/projects/overview",
        "title": "Client Forbidden",
        "required_enrollment": "Appropriate Level of API Access",
        "reason": "client-not-enrolled",
        "type": "https://api.twitter.com/2/problems/client-forbidden",
    },
    404: {"title": "Not Found Error", "type": "https://api.twitter.com/2/problems/resource-not-found",
          "detail": "The requested resource was not found."},
    429: TOO_MANY_CONNECTIONS,
    500: {"title": "Internal Server Error", "detail": "Internal Server Error",
          "type": "about:blank", "status": 500},
    503: {"title": "Service Unavailable", "detail": "Service Unavailable",
          "type": "about:blank", "status": 503},
}
DISCONNECT_BODIES = {
    "OperationalDisconnect": {"errors": [{
        "title": "operational-disconnect", "disconnect_type": "OperationalDisconnect",
        "detail": "This stream has been disconnected for operational reasons.",
        "type": "https://api.twitter.com/2/problems/operational-disconnect",
    }]},
    "UpstreamOperationalDisconnect": {"errors": [{
        "title": "operational-disconnect", "disconnect_type": "UpstreamOperationalDisconnect",
        "detail": "This stream has been disconnected upstream for operational reasons.",
        "type": "https://api.x.com/2/problems/operational-disconnect",
    }]},
}
REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized",
           403: "Forbidden", 404: "Not Found", 429: "Too Many Requests",
           500: "Internal Server Error", 503: "Service Unavailable"}


class FaultError(ValueError):
    """A fault description that cannot be applied."""


@dataclass(frozen=True)
class Fault:
    """One injected fault; see the module docstring for what each kind does."""

    kind: str
    after: int = 0
    count: int = 1
    seconds: float = 0.0
    status: int = 0
    rate_limit_headers: bool = True
    remaining: int | None = None
    variant: str = "OperationalDisconnect"
    close: bool = True
    token: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise FaultError(f"unknown fault kind {self.kind!r}")
        if self.after < 0 or self.count < 1 or self.seconds < 0:
            raise FaultError("after >= 0, count >= 1 and seconds >= 0 are required")
        if self.kind == "status" and self.status not in FAULT_STATUSES:
            raise FaultError(f"status must be one of {sorted(FAULT_STATUSES)}")
        if self.kind == "operational_disconnect" and self.variant not in DISCONNECT_VARIANTS:
            raise FaultError(f"variant must be one of {sorted(DISCONNECT_VARIANTS)}")

    @classmethod
    def from_json(cls, obj: Any) -> Fault:
        """A fault from its JSON object; unknown keys and wrong types are errors."""
        if not isinstance(obj, dict) or "kind" not in obj:
            raise FaultError("a fault is a JSON object with a 'kind'")
        unknown = sorted(set(obj) - {f.name for f in fields(cls)})
        if unknown:
            raise FaultError(f"unknown fault keys {unknown}")
        numbers: dict[str, tuple[type, ...]] = {
            "after": (int,), "count": (int,), "seconds": (int, float), "status": (int,),
        }
        for key, kinds in numbers.items():
            value = obj.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise FaultError(f"{key} must be a number")
        return cls(**obj)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def expand_runs(runs: Iterable[Iterable[int]]) -> list[int]:
    """Message indices from inclusive `[first, last]` runs (the log's compact form)."""
    indices: list[int] = []
    for first, last in (tuple(run) for run in runs):
        indices.extend(range(first, last + 1))
    return indices


@dataclass
class _Record:
    """What one stream request got; `whole_runs` are inclusive index runs in send order."""

    id: int
    token: str | None
    peer: str
    query: str
    start: float
    end: float | None = None
    status: int | None = None
    backfill_minutes: int = 0
    first_index: int | None = None
    whole_runs: list[list[int]] = field(default_factory=list)
    whole_count: int = 0
    partial: list[int] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def add_whole(self, first: int, count: int) -> None:
        if self.whole_runs and self.whole_runs[-1][1] == first - 1:
            self.whole_runs[-1][1] = first + count - 1
        else:
            self.whole_runs.append([first, first + count - 1])
        self.whole_count += count

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["whole_runs"] = [list(run) for run in self.whole_runs]
        return record


@dataclass
class _Pending:
    """A queued fault: its remaining count and the stream that picked it up, if any."""

    fault: Fault
    left: int
    claimed_by: int | None = None
    active: bool = False


@dataclass
class _Budget:
    """Stream requests of one token in the current fixed window."""

    window_start: float = 0.0
    attempts: int = 0


class _Outcome(Enum):
    CONTINUE = "continue"
    ENDED = "ended"  # response ended with the zero chunk; the socket may serve more requests
    RESET = "reset"  # socket already reset and closed


class _ClientGone(Exception):
    """The client closed or reset the connection."""


class _Stopping(Exception):
    """The server is shutting down."""


@dataclass
class _Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


def _created_at(base_ms: int, position: int) -> str:
    """`created_at` as MessageFactory writes it for a sequence position."""
    millis = base_ms + position * 10
    return (datetime.fromtimestamp(millis / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
            + f"{millis % 1000:03d}Z")


class _Lines:
    """Wire lines of one factory: cached in a ring shared by all connections, and built from
    per-sample templates, because `MessageFactory.line` alone (~45,000 lines/s) leaves too
    little headroom to feed a client at 20,000 messages/s on a busy machine.

    A template is message i serialised with marks in place of the parts that vary with i
    (tweet id, `created_at`); it is used only after it reproduced `factory.line(i)` exactly.
    """

    ID_MARK = "\x00id\x00"
    CREATED_MARK = "\x00created_at\x00"

    def __init__(self, factory: MessageFactory, slots: int = CACHE_SLOTS) -> None:
        self.factory = factory
        self.slots: list[tuple[int, bytes] | None] = [None] * slots
        self.templates: dict[tuple[int, bool, bool], bytes | None] = {}
        self.id_wire = orjson.dumps(self.ID_MARK)[1:-1]
        self.created_wire = orjson.dumps(self.CREATED_MARK)[1:-1]

    def line(self, index: int) -> bytes:
        slot = index % len(self.slots)
        cached = self.slots[slot]
        if cached is not None and cached[0] == index:
            return cached[1]
        line = self._build(index)
        self.slots[slot] = (index, line)  # one list store: safe under the GIL
        return line

    def _build(self, index: int) -> bytes:
        factory = self.factory
        position = factory._source_index(index)
        key = (position % len(factory.pool), position % MISSING_AUTHOR_EVERY == 0,
               position % PARTIAL_ERROR_EVERY == 0)
        tweet_id = str(snowflake(position, factory.base_ms)).encode()
        created = _created_at(factory.base_ms, position).encode()
        if key in self.templates:
            template = self.templates[key]
            if template is not None:
                return template.replace(self.id_wire, tweet_id).replace(
                    self.created_wire, created)
            return factory.line(index)
        line = factory.line(index)
        template = self._template(index, tweet_id.decode(), created.decode())
        if template.replace(self.id_wire, tweet_id).replace(self.created_wire, created) != line:
            self.templates[key] = None  # this sample does not fit a template: build each time
        else:
            self.templates[key] = template
        return line

    def _template(self, index: int, tweet_id: str, created: str) -> bytes:
        message = self.factory.message(index)
        data = message["data"]
        for name in ("id", "conversation_id"):
            if data.get(name) == tweet_id:
                data[name] = self.ID_MARK
        if data.get("edit_history_tweet_ids") == [tweet_id]:
            data["edit_history_tweet_ids"] = [self.ID_MARK]
        if data.get("created_at") == created:
            data["created_at"] = self.CREATED_MARK
        return orjson.dumps(message) + b"\r\n"

    def batch(self, first: int, limit: int) -> tuple[bytes, int]:
        """Up to `limit` lines from `first`, at most about MAX_CHUNK_BYTES; (bytes, count)."""
        parts: list[bytes] = []
        size = 0
        while len(parts) < limit and (not parts or size < MAX_CHUNK_BYTES):
            line = self.line(first + len(parts))
            parts.append(line)
            size += len(line)
        return b"".join(parts), len(parts)


class _Client:
    """One accepted TCP connection and its unread bytes."""

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock = sock
        self.peer = peer
        self.buffer = b""


def _chunk(payload: bytes) -> bytes:
    return b"%X\r\n%s\r\n" % (len(payload), payload)


def _csv(values: list[str] | None) -> tuple[str, ...]:
    if not values:
        return ()
    return tuple(item for item in values[-1].split(",") if item)


class FakeStreamAPI:
    """The fake sampled-stream server; a context manager (`with FakeStreamAPI(...) as api`)."""

    def __init__(
        self,
        tokens: Iterable[str],
        *,
        rate: float = 50.0,
        heartbeat_interval: float = 20.0,
        slots: int = 1,
        attempt_limit: int = 50,
        window_seconds: float = 900.0,
        host: str = "127.0.0.1",
        port: int = 0,
        quiet: bool = False,
    ) -> None:
        self.tokens = tuple(tokens)
        if not self.tokens or rate <= 0 or heartbeat_interval <= 0 or slots < 1:
            raise ValueError("need tokens, rate > 0, heartbeat_interval > 0, slots >= 1")
        self.rate = float(rate)
        self.heartbeat_interval = float(heartbeat_interval)
        self.slots = slots
        self.attempt_limit = attempt_limit
        self.window_seconds = window_seconds
        self.host = host
        self.quiet = quiet
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._records: list[_Record] = []
        self._faults: deque[_Pending] = deque()
        self._open: dict[str, int] = {}
        self._budgets: dict[str, _Budget] = {}
        self._clients: set[_Client] = set()
        self._threads: list[threading.Thread] = []
        self._lines: dict[tuple[tuple[str, ...], ...], _Lines] = {}
        self._refuse_until = 0.0
        self._injected = 0  # bumped by inject(): waiting streams wake up to claim a fault
        self._listener: socket.socket | None = self._listen(port)
        self.port: int = self._listener.getsockname()[1]
        self.t0 = time.monotonic()
        self._acceptor = threading.Thread(target=self._accept_loop, name="fake-api-accept",
                                          daemon=True)

    # ---- public API -------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def factory(self) -> MessageFactory:
        """The factory for the seed's default fields (what the collector asks for)."""
        return self.lines_for(DEFAULT_TWEET_FIELDS, DEFAULT_USER_FIELDS, ("author_id",)).factory

    def lines_for(self, tweet_fields: Iterable[str], user_fields: Iterable[str],
                  expansions: Iterable[str]) -> _Lines:
        key = (tuple(tweet_fields), tuple(user_fields), tuple(expansions))
        with self._lock:
            lines = self._lines.get(key)
            if lines is None:
                lines = self._lines[key] = _Lines(MessageFactory(*key))
            return lines

    def start(self) -> FakeStreamAPI:
        self.t0 = time.monotonic()
        self._acceptor.start()
        self._log(f"listening on {self.url} rate={self.rate:g}/s "
                  f"heartbeat={self.heartbeat_interval:g}s slots={self.slots}")
        return self

    def __enter__(self) -> FakeStreamAPI:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop accepting, cut every open connection and wait for the threads."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        with self._lock:
            listener, self._listener = self._listener, None
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

    def inject(self, *faults: Fault) -> None:
        """Queue faults; each is applied once (or for its count/duration), in order."""
        with self._lock:
            self._injected += 1
            for fault in faults:
                self._faults.append(_Pending(fault, fault.count))
                self._log(f"fault queued: {_describe(fault)}")
            self._activate_head()

    def clear_faults(self) -> None:
        with self._lock:
            self._faults = deque(p for p in self._faults if p.active)

    def pending_faults(self) -> list[dict[str, Any]]:
        with self._lock:
            return [p.fault.to_json() for p in self._faults]

    def connection_log(self) -> list[dict[str, Any]]:
        """Every stream request so far, oldest first, as JSON-ready dicts."""
        with self._lock:
            return [record.to_json() for record in self._records]

    def sent_whole(self, token: str) -> list[int]:
        """Indices of the messages sent whole to `token`, all its connections in order."""
        with self._lock:
            runs = [run for r in self._records if r.token == token for run in r.whole_runs]
        return expand_runs(runs)

    def index_at(self, when: float) -> int:
        """First message index due at or after monotonic time `when`."""
        return max(0, math.ceil((when - self.t0) * self.rate))

    # ---- listening ----------------------------------------------------------------------

    def _listen(self, port: int) -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, port))
        listener.listen(128)
        return listener

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            listener = self._listener
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
            client = _Client(sock, f"{address[0]}:{address[1]}")
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True,
                                      name=f"fake-api-{client.peer}")
            with self._lock:
                self._clients.add(client)
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(thread)
            thread.start()

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
            self._listener = listener
            self._pop_head()
        self._log("listening again")

    # ---- faults (all called with self._lock held) ------------------------------------

    def _activate_head(self) -> None:
        """Start a refuse fault that has reached the head of the queue."""
        if not self._faults:
            return
        head = self._faults[0]
        if head.fault.kind != "refuse" or head.active:
            return
        head.active = True
        self._refuse_until = time.monotonic() + head.fault.seconds
        listener, self._listener = self._listener, None
        if listener is not None:
            _close_listener(listener)
        self._log(f"fault: refusing connections for {head.fault.seconds:g}s")

    def _pop_head(self) -> None:
        self._faults.popleft()
        self._activate_head()

    def _head(self, kinds: frozenset[str], token: str | None) -> _Pending | None:
        if not self._faults:
            return None
        head = self._faults[0]
        if head.fault.kind not in kinds:
            return None
        if head.fault.token is not None and head.fault.token != token:
            return None
        return head

    def _claim(self, record: _Record) -> _Pending | None:
        with self._lock:
            head = self._head(STREAM_KINDS, record.token)
            if head is None or head.claimed_by not in (None, record.id):
                return None
            head.claimed_by = record.id
            return head

    def _unclaim(self, pending: _Pending) -> None:
        with self._lock:
            if self._faults and self._faults[0] is pending:
                pending.claimed_by = None

    def _take(self, pending: _Pending) -> None:
        with self._lock:
            if self._faults and self._faults[0] is pending:
                self._pop_head()

    # ---- one TCP connection -----------------------------------------------------------

    def _serve(self, client: _Client) -> None:
        reusable = True
        try:
            while reusable and not self._stopping.is_set():
                request = self._read_request(client)
                if request is None:
                    break
                reusable = self._handle(client, request)
                if request.headers.get("connection", "").lower() == "close":
                    break
        except (_ClientGone, _Stopping, OSError):
            pass
        finally:
            with self._lock:
                self._clients.discard(client)
            with contextlib.suppress(OSError):
                client.sock.close()

    def _read_request(self, client: _Client) -> _Request | None:
        while b"\r\n\r\n" not in client.buffer:
            if len(client.buffer) > MAX_REQUEST_BYTES:
                return None
            data = self._recv(client)
            if not data:
                return None
            client.buffer += data
        head, client.buffer = client.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
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
        while len(client.buffer) < length:
            data = self._recv(client)
            if not data:
                return None
            client.buffer += data
        body, client.buffer = client.buffer[:length], client.buffer[length:]
        return _Request(parts[0].upper(), parts[1], headers, body)

    def _recv(self, client: _Client) -> bytes:
        while True:
            if self._stopping.is_set():
                raise _Stopping
            ready, _, _ = select.select([client.sock], [], [], POLL)
            if ready:
                return client.sock.recv(65536)

    def _handle(self, client: _Client, request: _Request) -> bool:
        """Answer one request; False when the socket must not serve another."""
        url = urlsplit(request.target)
        if url.path.startswith("/_control/"):
            return self._control(client, request, url.path)
        if url.path != STREAM_PATH or request.method != "GET":
            self._respond(client, 404, PROBLEM_BODIES[404])
            return True
        return self._stream_request(client, request, url.query)

    def _control(self, client: _Client, request: _Request, path: str) -> bool:
        if path == "/_control/log" and request.method == "GET":
            body = {"connections": self.connection_log(), "pending_faults": self.pending_faults()}
            self._respond(client, 200, body)
        elif path == "/_control/faults" and request.method == "GET":
            self._respond(client, 200, self.pending_faults())
        elif path == "/_control/faults" and request.method == "DELETE":
            self.clear_faults()
            self._respond(client, 200, [])
        elif path == "/_control/faults" and request.method == "POST":
            try:
                payload = orjson.loads(request.body)
                items = payload if isinstance(payload, list) else [payload]
                faults = [Fault.from_json(item) for item in items]
            except (orjson.JSONDecodeError, FaultError, TypeError) as error:
                self._respond(client, 400, {"error": str(error)})
                return True
            self.inject(*faults)
            self._respond(client, 201, {"queued": len(faults)})
        else:
            self._respond(client, 404, PROBLEM_BODIES[404])
        return True

    def _stream_request(self, client: _Client, request: _Request, query: str) -> bool:
        auth = request.headers.get("authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
        known = token in self.tokens
        record = _Record(id=0, token=token if known else None, peer=client.peer,
                         query=query, start=time.time())
        with self._lock:
            record.id = len(self._records) + 1
            self._records.append(record)
            request_fault = self._head(REQUEST_KINDS, record.token)
            if request_fault is not None:
                request_fault.left -= 1
                if request_fault.left <= 0:
                    self._pop_head()
        try:
            if request_fault is not None:
                return self._request_fault(client, record, request_fault.fault)
            return self._admit(client, record, query)
        finally:
            record.end = record.end or time.time()
            self._log(f"conn {record.id} {self._label(record.token)} from {client.peer}: "
                      f"status={record.status} whole={record.whole_count} "
                      f"events={record.events}")

    def _request_fault(self, client: _Client, record: _Record, fault: Fault) -> bool:
        record.events.append(_describe(fault))
        if fault.kind == "no_headers":
            self._hold(client, time.monotonic() + fault.seconds)
            return False
        headers: dict[str, str] = {}
        body = PROBLEM_BODIES[fault.status]
        if fault.status == 429 and fault.rate_limit_headers:
            headers = self._rate_headers(record.token, fault.remaining)
            if fault.remaining == 0:
                body = RATE_LIMITED
        record.status = fault.status
        self._respond(client, fault.status, body, headers)
        return True

    def _admit(self, client: _Client, record: _Record, query: str) -> bool:
        token = record.token
        if token is None:
            record.status = 401
            self._respond(client, 401, PROBLEM_BODIES[401])
            return True
        params = parse_qs(query)
        backfill = _backfill(params.get("backfill_minutes"))
        with self._lock:
            budget = self._budget(token)
            budget.attempts += 1
            over_budget = budget.attempts > self.attempt_limit
            busy = self._open.get(token, 0) >= self.slots
            # A refused request never holds a slot, not even while its answer is written: the
            # client may retry the moment it has read it.
            admitted = not over_budget and not busy and backfill is not None
            if admitted:
                self._open[token] = self._open.get(token, 0) + 1
        headers = self._rate_headers(token)
        if over_budget:
            record.status = 429
            self._respond(client, 429, RATE_LIMITED, headers)
            return True
        if busy:
            record.status = 429
            self._respond(client, 429, TOO_MANY_CONNECTIONS, headers)
            return True
        if backfill is None:
            record.status = 400
            self._respond(client, 400, _invalid_backfill(params["backfill_minutes"][-1]))
            return True
        try:
            record.backfill_minutes = backfill
            lines = self.lines_for(_csv(params.get("tweet.fields")),
                                   _csv(params.get("user.fields")),
                                   _csv(params.get("expansions")))
            return self._stream(client, record, lines, headers)
        finally:
            with self._lock:
                self._open[token] -= 1

    def _budget(self, token: str) -> _Budget:
        now = time.time()
        budget = self._budgets.setdefault(token, _Budget(now, 0))
        if now >= budget.window_start + self.window_seconds:
            budget.window_start, budget.attempts = now, 0
        return budget

    def _rate_headers(self, token: str | None, remaining: int | None = None) -> dict[str, str]:
        with self._lock:
            budget = self._budget(token or "")
            if remaining is None:
                remaining = max(0, self.attempt_limit - budget.attempts)
            reset = budget.window_start + self.window_seconds
        return {"x-rate-limit-limit": str(self.attempt_limit),
                "x-rate-limit-remaining": str(remaining),
                "x-rate-limit-reset": str(math.ceil(reset))}

    # ---- the stream -------------------------------------------------------------------

    def _stream(self, client: _Client, record: _Record, lines: _Lines,
                headers: dict[str, str]) -> bool:
        opened = time.monotonic()
        index = max(0, self.index_at(opened) - int(record.backfill_minutes * 60 * self.rate))
        record.first_index = index
        record.status = 200
        self._send(client, _head(200, {
            "content-type": "application/json", "transfer-encoding": "chunked",
            "cache-control": "no-cache, no-store, max-age=0", **headers,
        }))
        last_write = time.monotonic()
        pending: _Pending | None = None
        base = 0
        try:
            while True:
                if pending is None:
                    pending = self._claim(record)
                    base = record.whole_count
                if pending is not None and record.whole_count - base >= pending.fault.after:
                    self._take(pending)
                    fault, pending = pending.fault, None
                    record.events.append(_describe(fault))
                    outcome, index = self._fire(client, record, lines, fault, index)
                    if outcome is not _Outcome.CONTINUE:
                        return outcome is _Outcome.ENDED
                    last_write = time.monotonic()
                    continue
                now = time.monotonic()
                due = math.floor((now - self.t0) * self.rate) + 1  # indices below are due
                if index < due:
                    limit = due - index
                    if pending is not None:
                        limit = min(limit, base + pending.fault.after - record.whole_count)
                    payload, count = lines.batch(index, limit)
                    self._send(client, _chunk(payload))
                    record.add_whole(index, count)
                    index += count
                    last_write = time.monotonic()
                    continue
                heartbeat_at = last_write + self.heartbeat_interval
                if now >= heartbeat_at:
                    self._send(client, _chunk(HEARTBEAT))
                    last_write = now
                    continue
                self._wait(client, min(self.t0 + index / self.rate, heartbeat_at),
                           wake_on_inject=pending is None)
        finally:
            if pending is not None:
                self._unclaim(pending)

    def _fire(self, client: _Client, record: _Record, lines: _Lines, fault: Fault,
              index: int) -> tuple[_Outcome, int]:
        self._log(f"conn {record.id}: fault {_describe(fault)} at message {index}")
        kind = fault.kind
        if kind in ("drop_mid_line", "rst"):
            self._wait(client, time.monotonic() + CUT_PAUSE)
            if kind == "drop_mid_line":
                line = lines.line(index)
                self._send(client, _chunk(line[: len(line) // 2]))
                record.partial.append(index)
            _reset(client.sock)
            return _Outcome.RESET, index
        if kind == "clean_end":
            self._send(client, b"0\r\n\r\n")
            return _Outcome.ENDED, index
        if kind == "partial_then_end":
            line = lines.line(index)
            self._send(client, _chunk(line[: len(line) // 2]) + b"0\r\n\r\n")
            record.partial.append(index)
            return _Outcome.ENDED, index
        if kind == "operational_disconnect":
            payload = orjson.dumps(DISCONNECT_BODIES[fault.variant]) + b"\r\n"
            self._send(client, _chunk(payload) + (b"0\r\n\r\n" if fault.close else b""))
            return (_Outcome.ENDED if fault.close else _Outcome.CONTINUE), index
        if kind in ("malformed_line", "non_json_line"):
            self._send(client, _chunk(MALFORMED_LINE if kind == "malformed_line" else HTML_LINE))
            return _Outcome.CONTINUE, index
        if kind == "silent_stall":
            self._wait(client, time.monotonic() + fault.seconds)
            return _Outcome.CONTINUE, index
        # heartbeat_stall: heartbeats only, then skip what fell due meanwhile
        until = time.monotonic() + fault.seconds
        while (now := time.monotonic()) < until:
            self._wait(client, min(until, now + self.heartbeat_interval))
            if time.monotonic() < until:
                self._send(client, _chunk(HEARTBEAT))
        resume = max(index, self.index_at(until))
        if resume > index:
            record.events.append(f"skipped {index}-{resume - 1}")
        return _Outcome.CONTINUE, resume

    # ---- socket helpers ---------------------------------------------------------------

    def _send(self, client: _Client, data: bytes) -> None:
        if self._stopping.is_set():
            raise _Stopping
        if _peer_closed(client.sock):
            raise _ClientGone
        try:
            client.sock.sendall(data)
        except OSError as error:
            raise _ClientGone from error

    def _wait(self, client: _Client, until: float, wake_on_inject: bool = False) -> None:
        """Sleep until `until`, but notice at once a client that went away or a stop.

        With `wake_on_inject`, return early when a fault is injected, so an idle stream
        (heartbeats only) picks it up within POLL seconds.
        """
        injected = self._injected
        while (left := until - time.monotonic()) > 0:
            if self._stopping.is_set():
                raise _Stopping
            if wake_on_inject and self._injected != injected:
                return
            ready, _, _ = select.select([client.sock], [], [], min(left, POLL))
            if ready:
                if _peer_closed(client.sock):
                    raise _ClientGone
                time.sleep(min(left, POLL))  # the client sent bytes mid-stream: ignore them

    def _hold(self, client: _Client, until: float) -> None:
        with contextlib.suppress(_ClientGone):
            self._wait(client, until)

    def _respond(self, client: _Client, status: int, body: Any,
                 headers: dict[str, str] | None = None) -> None:
        payload = orjson.dumps(body)
        head = _head(status, {"content-type": "application/json",
                              "content-length": str(len(payload)), **(headers or {})})
        self._send(client, head + payload)

    def _label(self, token: str | None) -> str:
        """A token's position in the configured list: logs never carry the token itself."""
        return "unauthenticated" if token is None else f"token#{self.tokens.index(token) + 1}"

    def _log(self, message: str) -> None:
        if not self.quiet:
            stamp = datetime.now(UTC).strftime("%H:%M:%S.%f")[:-3]
            sys.stderr.write(f"{stamp} fake_api: {message}\n")  # one write: no interleaving
            sys.stderr.flush()


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}",
             f"date: {formatdate(usegmt=True)}", "server: fake-x-api"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


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


def _reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()


def _close_listener(listener: socket.socket) -> None:
    # shutdown() wakes a select() blocked on it and refuses new connections at once.
    with contextlib.suppress(OSError):
        listener.shutdown(socket.SHUT_RDWR)
    listener.close()


def _backfill(values: list[str] | None) -> int | None:
    """The requested backfill in minutes, 0 when absent, None when invalid (not 0-5)."""
    if not values:
        return 0
    try:
        minutes = int(values[-1])
    except ValueError:
        return None
    return minutes if 0 <= minutes <= 5 else None


def _invalid_backfill(value: str) -> dict[str, Any]:
    return {
        "errors": [{
            "parameters": {"backfill_minutes": [value]},
            "message": f"The `backfill_minutes` query parameter value [{value}] is not "
                       "between 0 and 5",
        }],
        "title": "Invalid Request",
        "detail": "One or more parameters to your request was invalid.",
        "type": "https://api.twitter.com/2/problems/invalid-request",
    }


def _describe(fault: Fault) -> str:
    defaults = Fault(kind=fault.kind, status=fault.status)
    extra = [f"{k}={v}" for k, v in fault.to_json().items()
             if k not in ("kind", "token") and v != getattr(defaults, k)]
    if fault.kind == "status":
        extra.insert(0, f"status={fault.status}")
    return " ".join([fault.kind, *extra])


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    # prog: the name usage lines and errors showed when this was the module fake_api.py
    parser = argparse.ArgumentParser(prog="fake_api.py",
                                     description="Fake X API v2 sampled stream.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tokens", required=True, help="comma-separated bearer tokens")
    parser.add_argument("--rate", type=float, default=50.0, help="messages per second")
    parser.add_argument("--heartbeat", type=float, default=20.0, help="seconds")
    parser.add_argument("--slots", type=int, default=1, help="connections per token")
    parser.add_argument("--attempt-limit", type=int, default=50)
    parser.add_argument("--window", type=float, default=900.0, help="budget window, seconds")
    parser.add_argument("--port-file", type=Path)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    api = FakeStreamAPI(
        [token for token in args.tokens.split(",") if token], rate=args.rate,
        heartbeat_interval=args.heartbeat, slots=args.slots,
        attempt_limit=args.attempt_limit, window_seconds=args.window, host=args.host,
        port=args.port,
    )
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    api.start()
    if args.port_file is not None:
        write_port_file(args.port_file, api.port)
    print(api.port, flush=True)
    while not done.wait(1):
        pass
    api.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
