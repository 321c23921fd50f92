"""A fake X API v2 sampled stream (`GET /2/tweets/sample/stream`) on loopback.

It plays what the real endpoint does on the wire (X's API v2 documentation and captured
responses), so tests, the benchmark and the lab can run the real twarc/requests/urllib3
stack against it:

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

Modules, one concern each: `server` (FakeStreamAPI, which wires the others), `listener`
(port, accept loop, refuse), `routes` (which handler answers), `connection` (socket I/O),
`endpoint` (a stream request's answer), `stream` (the stream body and its timing), `lines`
(wire lines), `faults` (Fault and the fault queue), `budget` (attempts and slots), `records`
(what was sent), `control` (the control API), `wire` (bytes and bodies), `log`, `cli`.
"""

from tests.doubles.fake_api.cli import main
from tests.doubles.fake_api.connection import MAX_REQUEST_BYTES, POLL
from tests.doubles.fake_api.faults import (
    DISCONNECT_VARIANTS,
    FAULT_KINDS,
    FAULT_STATUSES,
    REQUEST_KINDS,
    STREAM_KINDS,
    Fault,
    FaultError,
)
from tests.doubles.fake_api.lines import CACHE_SLOTS
from tests.doubles.fake_api.records import expand_runs
from tests.doubles.fake_api.server import FakeStreamAPI
from tests.doubles.fake_api.stream import CUT_PAUSE
from tests.doubles.fake_api.wire import (
    DISCONNECT_BODIES,
    HEARTBEAT,
    HTML_LINE,
    MALFORMED_LINE,
    MAX_CHUNK_BYTES,
    PROBLEM_BODIES,
    RATE_LIMITED,
    REASONS,
    STREAM_PATH,
    TOO_MANY_CONNECTIONS,
)

__all__ = [
    "CACHE_SLOTS",
    "CUT_PAUSE",
    "DISCONNECT_BODIES",
    "DISCONNECT_VARIANTS",
    "FAULT_KINDS",
    "FAULT_STATUSES",
    "HEARTBEAT",
    "HTML_LINE",
    "MALFORMED_LINE",
    "MAX_CHUNK_BYTES",
    "MAX_REQUEST_BYTES",
    "POLL",
    "PROBLEM_BODIES",
    "RATE_LIMITED",
    "REASONS",
    "REQUEST_KINDS",
    "STREAM_KINDS",
    "STREAM_PATH",
    "TOO_MANY_CONNECTIONS",
    "FakeStreamAPI",
    "Fault",
    "FaultError",
    "expand_runs",
    "main",
]
