"""A fake Bluesky Jetstream speaking the real v1 `/subscribe` protocol over real WebSockets
on loopback, so the collector's Bluesky source runs its real `websockets`/`zstandard` stack
against it (tests in-process, the lab as one process per instance).

**The universe.** Event i of the network is due at `epoch + i / rate` (unix seconds) and is
built from a real sample event of its kind (`tests/data/jetstream-samples/`, verbatim
production events): new author DID (a pool of
4,000), record key (a TID, unique per record), CID, `createdAt`, and for posts a varied text
(non-ASCII, emoji, newlines, quotes, commas...). The mix is the real one (blocks of 200: 136
likes, 22 posts, 20 reposts, 8 follows, 2 blocks, 4 updates, 6 deletes, 1 identity, 1
account); a delete removes a post (4 in 6) or follow created earlier in the universe, each
at most once (`mix`). Every instance with the same seed, epoch and rate serves the same
events; each stamps its own `time_us`: due time + its offset + a per-event jitter (so it
goes backwards now and then, as in the real window), and sends an event once it is due and
its own `time_us` has passed.

**The protocol** (`GET /subscribe`, WebSocket): `wantedCollections` (repeated; NSIDs or
`prefix.*`; identity and account events always pass), `wantedDids`, `cursor` (unix
microseconds), `compress=true` or `Socket-Encoding: zstd` (each event one binary frame, zstd
with the v1 dictionary, id 1612007021), `maxMessageSizeBytes` (larger events silently
skipped). Otherwise one text frame of compact JSON per event, in the v1 shape and key order,
escaped as Go escapes. No heartbeats and no server pings. Bad parameters: HTTP 400 with a
one-line reason (a comma list is one bad NSID, as on the real service, unless
`comma_lists=True`); any other path: 404. Client messages (`options_update`) and
`requireHello` are ignored; permessage-deflate only with `deflate=True`.

**Cursor replay.** An instance retains `lookback_seconds` (36 h by default) of events, never
before the epoch. A connection with a cursor starts at the first event (in stream order)
whose `time_us` is at least the cursor; an older cursor than the oldest retained event is
silently clamped to it (record `clamped`); a future cursor or none is the live tail (the
event due now; record `live`). Past events go as fast as the socket takes, then each when
due. Delivery is at-least-once: a resumed cursor repeats what has the same time.

**Faults**, per instance, queued (`inject(Fault(...))` or `POST /_control/faults` with one
JSON object or a list; keys are the `Fault` fields, unknown keys are an error) and applied
strictly in order, only the queue's head live. A connection fault is picked up by an open
connection (else the next one) and fires after `after` more events sent whole on it.

| kind | keys | what happens |
| --- | --- | --- |
| `close` | `after`, `code`, `reason` | a proper WebSocket close with that code (1011, 4000...) |
| `drop_mid_frame` | `after` | pause, half of the next frame's bytes, TCP RST, no close frame |
| `silence` | `after`, `seconds` | nothing for `seconds` (open), then the late events as a burst |
| `repeat` | `after`, `count` | the previous `count` events of the connection sent again |
| `corrupt_frame` | `after` | one binary frame that is not zstd (text connections get it too) |
| `malformed` | `after` | one frame of half an event's JSON (compressed with compress) |
| `oversized` | `after`, `bytes` | one extra frame > `bytes`: the next event with a `padding` key |
| `miss` | `after`, `count` | the instance never had the next events up to the `count`-th |
| | | wanted one: absent from every connection and replay from now on |
| `clamp` | `seconds` | at once: the instance's lookback becomes `seconds` |
| `refuse` | `seconds` | listening socket closed for `seconds`, then the same port again |

`miss` makes a gap only on that instance: the universe indices from the connection's next
event through its `count`-th wanted one (a stretch of the relay feed the instance lost, so
it holds the unwanted events in between neither); the log's `missing` lists them. While a
`refuse` runs the control endpoints are unreachable too (one port); open connections stay.

**Records and control** (plain HTTP on the same port): `GET /_control/log` (the instance's
name, port, seed, epoch, rate, offset, lookback, `missing` runs, `connections`,
`pending_faults`), `GET`/`POST`/`DELETE /_control/faults`. A connection record has the
request's path and `cursor`, `start_index`/`start_time_us`, `clamped`, `live`, `compress`,
`collections`, `dids`, start and end times, `ended` (how), and what was sent whole as
inclusive runs `[[first, last], ...]` over the connection's filtered view (a run steps over
events its subscription did not want; `connection_indices` expands it). "Whole" = the frame
was handed to the socket; before a cut the fake pauses so a reading client has it.
`oracle.created_uris_sent(logs, collections)` turns logs into the AT-URIs created, which a
collector must hold exactly once.

Command line (runs until SIGTERM/SIGINT, then exits 0; prints the port):
    python -m tests.doubles.fake_jetstream --port 0 --name east --epoch <unix seconds> \\
        --seed 1 --rate 50 --lookback 129600 [--offset-us N] [--jitter-us N] \\
        [--comma-lists] [--port-file PATH] [--quiet]

Modules, one concern each: `samples` (the real events and dictionary), `ids` (DIDs, TIDs,
CIDs), `texts` (post texts), `mix` (which kind each index is, delete targets), `builder`
(event i), `universe` (timing, events, AT-URIs), `wire` (JSON, zstd, broken frames),
`timeline` (one instance's time_us, retention, gaps, cursor start), `query` (the
subscription), `faults`, `records`, `context` (shared per instance, the mid-frame cut),
`session` (one connection's stream), `frontdoor` (control requests on the WebSocket port),
`control`, `listener` (port, refuse), `server` (FakeJetstream), `fleet`, `oracle`, `log`,
`cli`.
"""

from tests.doubles.fake_jetstream.cli import main
from tests.doubles.fake_jetstream.faults import (
    CONNECTION_KINDS,
    FAULT_KINDS,
    INSTANCE_KINDS,
    Fault,
    FaultError,
)
from tests.doubles.fake_jetstream.fleet import FakeJetstreamFleet
from tests.doubles.fake_jetstream.oracle import (
    connection_indices,
    created_uris_sent,
    deleted_uris_sent,
    sent_indices,
    universe_of,
)
from tests.doubles.fake_jetstream.records import expand_runs
from tests.doubles.fake_jetstream.samples import DICTIONARY_ID, dictionary
from tests.doubles.fake_jetstream.server import DEFAULT_LOOKBACK, FakeJetstream
from tests.doubles.fake_jetstream.universe import Universe, at_uri, wants_collection
from tests.doubles.fake_jetstream.wire import CORRUPT_ZSTD, decompressor

__all__ = [
    "CONNECTION_KINDS",
    "CORRUPT_ZSTD",
    "DEFAULT_LOOKBACK",
    "DICTIONARY_ID",
    "FAULT_KINDS",
    "INSTANCE_KINDS",
    "FakeJetstream",
    "FakeJetstreamFleet",
    "Fault",
    "FaultError",
    "Universe",
    "at_uri",
    "connection_indices",
    "created_uris_sent",
    "decompressor",
    "deleted_uris_sent",
    "dictionary",
    "expand_runs",
    "main",
    "sent_indices",
    "universe_of",
    "wants_collection",
]
