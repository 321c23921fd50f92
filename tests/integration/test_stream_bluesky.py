"""The real `collector stream` with source=bluesky against a small in-test Jetstream.

The server here is deliberately minimal (the full double is tests/doubles/fake_jetstream): it
speaks the v1 `/subscribe` protocol over real WebSockets, makes events from the real samples
(varied did, rkey, time_us from its own clock with a little backward jitter, as in the real
stream), replays from a `cursor` (an older one clamped silently to the oldest it keeps, none:
the live tail), sends zstd-with-dictionary binary frames when asked `compress=true` (every
other frame without its content size) and text frames otherwise, and plays a few faults on
the live connection. Its record of what it generated is the oracle: every event generated
while the collector ran or was briefly stopped must be in the chunks (repeats allowed).
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
import zstandard
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from collector.sources.bluesky.frames import load_dictionary
from tests.conftest import SettingsWriter
from tests.integration.stream_harness import STARTED, StreamRun, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_leftover_processes")]

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "jetstream-samples"
RATE = 100.0  # events a second
SECOND_US = 1_000_000
REWIND_US = 10 * SECOND_US
MARK = b',"__collector":'



def templates() -> list[dict[str, Any]]:
    lines = (SAMPLES / "production_v1_window.jsonl").read_bytes().splitlines()
    return [orjson.loads(line) for line in lines if line]


@dataclass
class Connection:
    """One client connection as the server saw it."""

    number: int
    cursor: int | None
    compress: bool
    collections: list[str]
    sent: list[bytes] = field(default_factory=list)  # raw events sent whole
    inject: list[str | bytes] = field(default_factory=list)  # frames to send next
    close_after: int | None = None  # events to send before closing with close_code
    close_code: int = 1000
    silent_until: float = 0.0
    closed: bool = False


class MiniJetstream:
    """A v1 `/subscribe` server on loopback (see the module docstring)."""

    def __init__(self, rate: float = RATE) -> None:
        self.rate = rate
        self.templates = templates()
        self.history: list[tuple[int, bytes]] = []  # (time_us, raw event) in send order
        self.oldest = 0  # index of the oldest event kept (the replay window's start)
        self.offset_us = 0
        self.paused = False
        self.refusals: list[int] = []  # HTTP statuses for the next handshakes
        self.refused = 0
        self.connections: list[Connection] = []
        self.lock = threading.Lock()
        self.random = random.Random(7)
        dictionary = zstandard.ZstdCompressionDict(load_dictionary())
        self.compressors = (zstandard.ZstdCompressor(dict_data=dictionary),
                            zstandard.ZstdCompressor(dict_data=dictionary,
                                                     write_content_size=False))
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.port = 0
        self.thread = threading.Thread(target=self._serve, name="mini-jetstream", daemon=True)

    # ---- test side ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/subscribe"

    def live(self) -> Connection:
        with self.lock:
            open_ones = [c for c in self.connections if not c.closed]
            assert open_ones, "no open connection"
            return open_ones[-1]

    def opened(self) -> int:
        with self.lock:
            return len(self.connections)

    def sent(self) -> int:
        with self.lock:
            return sum(len(c.sent) for c in self.connections)

    def close_live(self, code: int, after: int = 0) -> None:
        with self.lock:
            connection = [c for c in self.connections if not c.closed][-1]
            connection.close_code, connection.close_after = code, after

    def inject(self, *frames: str | bytes) -> None:
        with self.lock:
            [c for c in self.connections if not c.closed][-1].inject.extend(frames)

    def silence_live(self, seconds: float) -> None:
        with self.lock:
            [c for c in self.connections if not c.closed][-1].silent_until = (
                time.monotonic() + seconds)

    def refuse(self, *statuses: int) -> None:
        """Answer the next handshakes with these HTTP statuses instead of a WebSocket."""
        with self.lock:
            self.refusals.extend(statuses)

    def advance(self, seconds: int) -> None:
        """The instance moves on and forgets all it has: an older cursor will be clamped."""
        with self.lock:
            self.offset_us += seconds * SECOND_US
            self.oldest = len(self.history)

    def pause(self) -> None:
        with self.lock:
            self.paused = True

    def generated_since(self, index: int) -> list[bytes]:
        with self.lock:
            return [raw for _, raw in self.history[index:]]

    def first_index_sent(self, connection: Connection) -> int:
        with self.lock:
            return next(i for i, (_, raw) in enumerate(self.history) if raw == connection.sent[0])

    # ---- server side --------------------------------------------------------------------------

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self.stopping = asyncio.Event()
        async with serve(self._handle, "127.0.0.1", 0, max_size=None,
                         process_request=self._refuse) as server:
            self.port = _port(server)
            self.started.set()
            generator = asyncio.create_task(self._generate())
            await self.stopping.wait()
            generator.cancel()

    async def _generate(self) -> None:
        begun = time.monotonic()
        made = 0
        while True:
            due = int((time.monotonic() - begun) * self.rate)
            with self.lock:
                if self.paused:
                    made = due
                while made < due:
                    time_us = (int(time.time() * SECOND_US) + self.offset_us
                               - self.random.randrange(3000))
                    self.history.append((time_us, self._event(made, time_us)))
                    made += 1
            await asyncio.sleep(0.01)

    def _event(self, n: int, time_us: int) -> bytes:
        event = dict(self.templates[n % len(self.templates)])
        event["did"] = f"did:plc:mini{n:020d}"
        event["time_us"] = time_us
        if "commit" in event:
            event["commit"] = {**event["commit"], "rkey": f"3mini{n:09d}"}
        return orjson.dumps(event)

    def _refuse(self, websocket: ServerConnection, _request: Request) -> Response | None:
        with self.lock:
            if not self.refusals:
                return None
            self.refused += 1
            status = self.refusals.pop(0)
        return websocket.respond(status, "refused by the test\n")

    def _start_index(self, cursor: int | None) -> int:
        if cursor is None:
            return len(self.history)  # the live tail
        for index in range(self.oldest, len(self.history)):
            if self.history[index][0] >= cursor:
                return index
        return len(self.history)

    async def _handle(self, websocket: ServerConnection) -> None:
        assert websocket.request is not None
        query = parse_qs(urlsplit(websocket.request.path).query)
        cursor = int(query["cursor"][0]) if "cursor" in query else None
        with self.lock:
            connection = Connection(len(self.connections) + 1, cursor,
                                    query.get("compress") == ["true"],
                                    query.get("wantedCollections", []))
            self.connections.append(connection)
            position = self._start_index(cursor)
        try:
            await self._send_loop(websocket, connection, position)
        except ConnectionClosed:
            pass
        finally:
            connection.closed = True

    async def _send_loop(self, websocket: ServerConnection, connection: Connection,
                         position: int) -> None:
        while True:
            with self.lock:
                frames, connection.inject = connection.inject, []
                batch = self.history[position:position + 50]
                silent = time.monotonic() < connection.silent_until
            for frame in frames:
                await websocket.send(frame)
            if connection.close_after == 0:
                await websocket.close(connection.close_code, "test fault")
                return
            if silent or not batch:
                if websocket.state is not State.OPEN:  # a silent server notices no close
                    return
                await asyncio.sleep(0.01)
                continue
            for _, raw in batch:
                await websocket.send(self._frame(raw, connection.compress, position))
                position += 1
                with self.lock:
                    connection.sent.append(raw)
                    if connection.close_after is not None:
                        connection.close_after -= 1
                        if connection.close_after == 0:
                            break

    def _frame(self, raw: bytes, compress: bool, position: int) -> str | bytes:
        if compress:
            return self.compressors[position % 2].compress(raw)
        return raw.decode()

    def __enter__(self) -> MiniJetstream:
        self.thread.start()
        assert self.started.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(10)


def _port(server: Server) -> int:
    return int(server.sockets[0].getsockname()[1])


class BlueskyRun(StreamRun):
    """`collector stream` (source=bluesky) as a subprocess, with the health record at hand."""

    def start(self) -> BlueskyRun:
        env = dict(os.environ, COLLECTOR_BACKOFF_SCALE="0.01")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "collector", "--settings", str(self.settings_path),
                 "stream"], stdout=log, stderr=log, env=env)
        STARTED.append(self.process)
        return self

    def health(self) -> dict[str, Any]:
        raw = (self.data_dir / ".collector" / "stream_status.json").read_bytes()
        return dict(orjson.loads(raw.strip()))

    def events(self) -> list[bytes]:
        """Every chunk line as the raw event it was made of (the `__collector` part cut)."""
        kept = []
        for path in sorted(self.data_dir.rglob("*.jsonl")):
            for line in path.read_bytes().splitlines():
                kept.append(line[: line.rindex(MARK)] + b"}")
        return kept


@pytest.fixture
def jetstream() -> Iterator[MiniJetstream]:
    with MiniJetstream() as server:
        yield server


def make_run(write_settings: SettingsWriter, server: MiniJetstream, tmp_path: Path,
             **overrides: str) -> BlueskyRun:
    data = tmp_path / "data"
    settings = write_settings(source="bluesky", jetstream_url=server.url,
                              data_storage_dst=str(data), read_timeout_seconds="5",
                              **overrides)
    return BlueskyRun(settings, data, tmp_path / "stream.log")


def context(server: MiniJetstream, run: BlueskyRun) -> Any:
    def text() -> str:
        rows = "\n".join(f"  #{c.number} cursor={c.cursor} compress={c.compress} "
                         f"sent={len(c.sent)} closed={c.closed}" for c in server.connections)
        return f"connections:\n{rows}\ncollector log:\n{run.log[-4000:]}"

    return text


def stop_quietly(server: MiniJetstream, run: BlueskyRun) -> None:
    """No new events, time for the last ones to arrive, then SIGTERM: a clean stop."""
    server.pause()
    time.sleep(1.0)
    assert run.stop() == 0, run.log
    assert not run.part_files(), "a .part chunk was left behind"
    assert "Traceback" not in run.log


def assert_no_gap(server: MiniJetstream, run: BlueskyRun, since: int) -> int:
    """Every event generated from history index `since` is in the chunks, nothing else is."""
    expected = set(server.generated_since(since))
    kept = run.events()
    missing = expected - set(kept)
    assert not missing, f"{len(missing)} of {len(expected)} events are not in the chunks"
    assert set(kept) <= set(server.generated_since(0)), "a chunk line was never sent"
    return len(expected)


def cursor_after(events: list[bytes]) -> int:
    return max(int(orjson.loads(raw)["time_us"]) for raw in events) - REWIND_US


@pytest.mark.parametrize("compress", ["True", "False"])
def test_events_land_in_chunks_with_collector_and_sigterm_stops(
        write_settings: SettingsWriter, jetstream: MiniJetstream, tmp_path: Path,
        compress: str) -> None:
    run = make_run(write_settings, jetstream, tmp_path, jetstream_compress=compress,
                   jetstream_collections="app.bsky.feed.post,app.bsky.feed.*")
    run.start()
    wait_for(lambda: jetstream.sent() >= 150, 30, "150 events", context(jetstream, run))
    first = jetstream.connections[0]
    assert first.cursor is None  # no chunks yet: the live tail
    assert first.compress is (compress == "True")
    assert first.collections == ["app.bsky.feed.post", "app.bsky.feed.*"]
    # The health record is rewritten every 2 s: the first one may predate the connection.
    wait_for(lambda: run.status()[1]["stream"]["connected"] is True, 10,
             "status to say connected", context(jetstream, run))
    assert run.status()[1]["stream"]["replay_gaps"] == 0
    stop_quietly(jetstream, run)
    kept = assert_no_gap(jetstream, run, jetstream.first_index_sent(first))
    assert kept >= 150
    lines = [orjson.loads(line) for path in sorted(run.data_dir.rglob("*.jsonl"))
             for line in path.read_bytes().splitlines()]
    assert all(list(line)[-1] == "__collector" for line in lines)
    assert {line["__collector"]["url"] for line in lines} == {jetstream.url}
    assert all(line["__collector"]["retrieved_at"].endswith("+00:00") for line in lines)
    health = run.health()
    commits = sum(1 for line in lines if line["kind"] == "commit")
    assert (health["messages"], health["tweets"]) == (len(lines), commits)
    assert health["connections"] == 1 and health["malformed_lines"] == 0
    assert "ALERT stream_stopped" in run.log


@pytest.mark.parametrize("fault", ["close_1011", "frame_beyond_16_mib"])
def test_a_broken_connection_resumes_from_the_rewound_cursor(
        write_settings: SettingsWriter, jetstream: MiniJetstream, tmp_path: Path,
        fault: str) -> None:
    run = make_run(write_settings, jetstream, tmp_path)
    run.start()
    wait_for(lambda: jetstream.sent() >= 50, 30, "50 events", context(jetstream, run))
    if fault == "close_1011":
        jetstream.close_live(1011, after=20)
    else:  # websockets' max_size: the client closes with 1009
        jetstream.inject("x" * (16 * 1024 * 1024 + 1))
    wait_for(lambda: jetstream.opened() >= 2 and len(jetstream.connections[1].sent) >= 50, 30,
             "a second connection", context(jetstream, run))
    first, second = jetstream.connections[:2]
    # Resumed from the largest time_us of the first connection, less 10 s (after a 1009,
    # less what the server sent behind the big frame, which the client no longer read).
    assert second.cursor is not None
    if fault == "close_1011":
        assert second.cursor == cursor_after(first.sent)
    else:
        assert 0 <= cursor_after(first.sent) - second.cursor < SECOND_US
    stop_quietly(jetstream, run)
    assert_no_gap(jetstream, run, jetstream.first_index_sent(first))
    expected = "1011 (test fault)" if fault == "close_1011" else "1009"
    assert "stream disconnected after" in run.log and expected in run.log


@pytest.mark.parametrize("end", ["sigterm", "sigkill"])
def test_a_restart_resumes_from_its_chunks_without_a_gap(write_settings: SettingsWriter,
                                                         jetstream: MiniJetstream,
                                                         tmp_path: Path, end: str) -> None:
    run = make_run(write_settings, jetstream, tmp_path)
    run.start()
    wait_for(lambda: jetstream.sent() >= 100, 30, "100 events", context(jetstream, run))
    if end == "sigterm":
        assert run.stop() == 0
        on_disk = run.events()
    else:  # a crash: the open chunk is recovered at the next start, its torn line dropped
        time.sleep(0.6)  # one write of the open chunk at least
        run.kill()
        assert run.part_files()
        on_disk = [line[: line.rindex(MARK)] + b"}" for path in run.part_files()
                   for line in path.read_bytes().split(b"\n")[:-1]]
    time.sleep(1.5)  # events the instance keeps while this host is down
    run.start()
    wait_for(lambda: jetstream.opened() >= 2 and len(jetstream.connections[1].sent) >= 250, 30,
             "the restarted stream to catch up", context(jetstream, run))
    assert jetstream.connections[1].cursor == cursor_after(on_disk)
    assert "resuming from" in run.log
    assert ("ALERT stream_crashed" in run.log) is (end == "sigkill")
    stop_quietly(jetstream, run)
    assert_no_gap(jetstream, run, jetstream.first_index_sent(jetstream.connections[0]))


def test_bad_frames_are_counted_and_skipped_on_the_same_connection(
        write_settings: SettingsWriter, jetstream: MiniJetstream, tmp_path: Path) -> None:
    run = make_run(write_settings, jetstream, tmp_path)
    run.start()
    wait_for(lambda: jetstream.sent() >= 30, 30, "30 events", context(jetstream, run))
    good = jetstream.compressors[0].compress(b'{"time_us":1783175888085434,"kind":"commit"}')
    jetstream.inject(
        "not json at all", "not json either", '["an", "array"]', '{"kind":"commit"}',
        b"\x28\xb5\x2f\xfd corrupt zstd", good[:-4],
        "{" + '"x":"' + "a" * (1024 * 1024 + 10) + '","time_us":1783175888085434}',
    )
    sent = jetstream.sent()
    wait_for(lambda: jetstream.sent() >= sent + 50, 30, "events after the bad frames",
             context(jetstream, run))
    stop_quietly(jetstream, run)
    assert jetstream.opened() == 1, "a bad frame cost the connection"
    health = run.health()
    assert health["skipped_frames"] == {"not_json": 2, "not_object": 1, "no_time_us": 1,
                                        "corrupt_zstd": 2, "oversized": 1}
    assert health["malformed_lines"] == 7 and health["connections"] == 1
    # One line per kind a minute: the second not_json and corrupt_zstd frames stay quiet.
    skipped = [line for line in run.log.splitlines() if "skipped a frame" in line]
    assert len(skipped) == 5, skipped
    assert_no_gap(jetstream, run, jetstream.first_index_sent(jetstream.connections[0]))


def test_silence_is_a_stall_alerted_and_replaced(write_settings: SettingsWriter,
                                                 jetstream: MiniJetstream,
                                                 tmp_path: Path) -> None:
    run = make_run(write_settings, jetstream, tmp_path, stall_seconds="2")
    run.start()
    wait_for(lambda: jetstream.sent() >= 50, 30, "50 events", context(jetstream, run))
    jetstream.silence_live(60)
    wait_for(lambda: "ALERT stream_stalled" in run.log, 30, "the stall alert",
             context(jetstream, run))
    wait_for(lambda: jetstream.opened() >= 2 and len(jetstream.connections[1].sent) >= 50, 30,
             "a new connection after the stall", context(jetstream, run))
    first, second = jetstream.connections[:2]
    assert second.cursor == cursor_after(first.sent)
    assert "stalled: no event for" in run.log
    stop_quietly(jetstream, run)
    assert_no_gap(jetstream, run, jetstream.first_index_sent(first))
    assert run.health()["failures"].get("stall", 0) >= 1


def test_a_clamped_replay_is_warned_and_alerted(write_settings: SettingsWriter,
                                               jetstream: MiniJetstream,
                                               tmp_path: Path) -> None:
    run = make_run(write_settings, jetstream, tmp_path)
    run.start()
    wait_for(lambda: jetstream.sent() >= 50, 30, "50 events", context(jetstream, run))
    assert run.stop() == 0
    jetstream.advance(600)  # ten minutes on, and the instance kept none of them
    run.start()
    wait_for(lambda: jetstream.opened() >= 2 and len(jetstream.connections[1].sent) >= 20, 30,
             "the restarted stream", context(jetstream, run))
    wait_for(lambda: "ALERT stream_replay_clamped" in run.log, 10, "the clamp alert",
             context(jetstream, run))
    assert "may be missing on this host" in run.log
    stop_quietly(jetstream, run)
    health = run.health()
    assert health["replay_gaps"] == 1 and 590 < health["replay_gap_seconds"] < 620


def test_refused_handshakes_back_off_and_alert_once(write_settings: SettingsWriter,
                                                   jetstream: MiniJetstream,
                                                   tmp_path: Path) -> None:
    jetstream.refuse(503, 503, 503, 503, 503, 503, 429)
    run = make_run(write_settings, jetstream, tmp_path)
    run.start()
    wait_for(lambda: jetstream.sent() >= 50, 60, "events after the refusals",
             context(jetstream, run))
    assert jetstream.refused == 7
    stop_quietly(jetstream, run)
    assert "stream connection failed (http_503): HTTP 503" in run.log
    assert "stream connection failed (http_429)" in run.log
    assert run.log.count("ALERT stream_failing") == 1  # the fifth 503, once per streak
    health = run.health()
    assert health["failures"]["http_503"] == 6 and health["failures"]["http_429"] == 1
    assert health["connection_attempts"] == 8 and health["connections"] == 1
