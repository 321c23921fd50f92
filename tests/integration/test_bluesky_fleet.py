"""A two-server Bluesky fleet end to end, with real processes and real sockets.

Two fake Jetstream instances of one universe (`east`, `west`), two real `collector stream`
processes (srv1 on east with zstd frames, the main; srv2 on west with text frames, a
secondary), faults on both instances and on the streams themselves while they run:

* east: a close with 1011, a cut in the middle of a frame, 100 events repeated, a frame that
  is no zstd and one of half an event; srv1 killed with SIGKILL and started again;
* west: a gap of 50 wanted events only this instance lacks, a silence longer than
  `stall_seconds` (a stall: alert, reconnect from the cursor); srv2 stopped with SIGTERM
  and started again.

Then both streams stop cleanly, srv2's closed chunks are placed where `collector send`
delivers them on the main (`incoming_dst/srv2/<day>/<hour>/`), and `collector process
--hour H --force` merges every hour the run touched. The oracle is the universe: every post
due in the window (and every one an instance sent whole) is in the IDs files exactly once,
the posts rows are the universe's posts, the deletes its deletes, and the report's
`duplicates` are the repeats the chunks hold, counted independently here.
"""

from __future__ import annotations

import csv
import io
import lzma
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from collector.layout import CHUNK_NAME, HourKey, hour_bounds, hour_of
from collector.stream.health import STATUS_FILE, read_health
from tests.conftest import SettingsWriter
from tests.doubles.fake_jetstream import (
    FakeJetstream,
    FakeJetstreamFleet,
    Fault,
    connection_indices,
    created_uris_sent,
    deleted_uris_sent,
)
from tests.doubles.fake_jetstream.universe import Universe
from tests.integration.helpers import REPO_ROOT
from tests.integration.stream_harness import StreamRun, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_leftover_processes")]

POSTS = "app.bsky.feed.post"
RATE = 200.0  # events a second in the universe: about 22 posts a second
STALL_SECONDS = 5
SECOND_US = 1_000_000
REWIND_US = 10 * SECOND_US  # collector.sources.bluesky.cursor.REWIND_US, restated
MARGIN_US = 2 * SECOND_US  # the window leaves this much out at both ends
TAIL_MINUTES = 10  # collector.process.plan.LOOKBACK_MINUTES, restated: the previous hour's tail
ZONE = "UTC"
UTC_ZONE = ZoneInfo(ZONE)


@dataclass
class Server:
    """One host of the fleet: its settings, its stream and the instance it reads."""

    server_id: str
    settings: Path
    data: Path
    instance: FakeJetstream
    run: StreamRun

    def health(self) -> dict[str, Any]:
        record = read_health(self.data / ".collector" / STATUS_FILE)
        return record or {}

    def status(self) -> dict[str, Any]:
        code, status = self.run.status()
        assert code in (0, 1, 2), status  # ok, degraded or down: a verdict, not a crash
        return status

    def chunks(self) -> list[Path]:
        return sorted(self.data.glob("*/*/*.jsonl"))

    def resume_cursor(self) -> int:
        """Where a restart must resume: the largest time_us of the whole lines on disk
        (closed chunks and a `.part` a crash left), less the 10 s rewind."""
        largest = 0
        for path in sorted(self.data.glob("*/*/*.jsonl*")):
            for line in path.read_bytes().split(b"\n")[:-1]:  # a torn last line is dropped
                largest = max(largest, orjson.loads(line)["time_us"])
        return largest - REWIND_US


def make_server(write_settings: SettingsWriter, tmp_path: Path, server_id: str,
                instance: FakeJetstream, compress: bool, **more: str | None) -> Server:
    data = tmp_path / server_id
    written = write_settings(
        source="bluesky", API_key_dst=None, server_id=server_id, data_storage_dst=str(data),
        jetstream_url=instance.url, jetstream_compress=str(compress), timezone=ZONE,
        stall_seconds=str(STALL_SECONDS), read_timeout_seconds="5", **more)
    settings = written.rename(tmp_path / f"{server_id}_settings.txt")
    run = StreamRun(settings, data, tmp_path / f"{server_id}_stream.log")
    return Server(server_id, settings, data, instance, run)


def connections(server: Server) -> list[dict[str, Any]]:
    return server.instance.connection_log()


def new_connection(server: Server, after: int, events: int) -> Callable[[], bool]:
    """A connection numbered above `after` has sent at least `events` events whole."""
    return lambda: any(c["id"] > after and c["whole_count"] >= events
                       for c in connections(server))


def explain(*servers: Server) -> Callable[[], str]:
    """What the instances and the collectors saw, for a failed wait or assertion."""

    def text() -> str:
        parts = []
        for server in servers:
            rows = "\n".join(
                f"  #{c['id']} cursor={c['cursor']} start={c['start_index']} "
                f"whole={c['whole_count']} ended={c['ended']} events={c['events']}"
                for c in connections(server))
            parts.append(f"{server.instance.name} -> {server.server_id}:\n{rows}\n"
                         f"pending faults: {server.instance.pending_faults()}\n"
                         f"{server.server_id} log:\n{server.run.log[-3000:]}")
        return "\n".join(parts)

    return text


def stop_all(*servers: Server) -> None:
    """One SIGTERM to every stream at once (they stop within the same moment), then wait.

    Only one: a second SIGTERM that reaches a stream after its clean stop, while Python
    finalises and has put the default handlers back, would kill it (exit -15).
    """
    processes = [server.run.process for server in servers]
    for process in processes:
        assert process is not None
        process.send_signal(signal.SIGTERM)
    for server, process in zip(servers, processes, strict=True):
        assert process is not None
        try:
            code = process.wait(30)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGUSR1)  # every thread's stack into the log
            time.sleep(1.0)
            server.run.kill()
            raise AssertionError(f"{server.server_id} did not stop:\n{server.run.log}") from None
        assert code == 0, server.run.log[-3000:]


def deliver_to_main(secondary: Server, incoming: Path) -> None:
    """What `collector send` leaves on the main: the secondary's closed chunks, same tree."""
    for chunk in secondary.chunks():
        relative = chunk.relative_to(secondary.data)
        target = incoming / secondary.server_id / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(chunk, target)


def hours_between(start: float, end: float) -> list[HourKey]:
    """Every UTC hour from the one of `start` to the one of `end`."""
    moment = datetime.fromtimestamp(start, UTC).replace(minute=0, second=0, microsecond=0)
    last = datetime.fromtimestamp(end, UTC)
    hours = []
    while moment <= last:
        hours.append(HourKey(moment.strftime("%Y-%m-%d"), moment.strftime("%H")))
        moment += timedelta(hours=1)
    return hours


def process_hour(main: Server, hour: HourKey) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "collector", "--settings", str(main.settings), "process",
         "--hour", str(hour), "--force"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr


@dataclass
class HourOutputs:
    ids: list[str]
    posts: list[dict[str, str]]
    deletes: list[str]
    report: dict[str, str]


def read_outputs(vault: Path, hour: HourKey) -> HourOutputs:
    folder, prefix = vault / hour.day, hour.file_prefix

    def text(suffix: str) -> str:
        return lzma.decompress((folder / f"{prefix}_{suffix}").read_bytes()).decode()

    posts = list(csv.DictReader(io.StringIO(text("posts.csv.xz"), newline="")))
    report = (folder / f"{hour.day}_report.txt").read_text().splitlines()
    header = report[0].split("\t")
    lines = {cells[0]: dict(zip(header, cells, strict=True))
             for cells in (line.split("\t") for line in report[1:])}
    return HourOutputs(text("IDs.txt.xz").splitlines(), posts,
                       text("deletes.txt.xz").splitlines(), lines[hour.hour])


def chunk_records(path: Path) -> Iterator[tuple[str, str]]:
    """(operation, AT-URI) of every create and delete line of one chunk."""
    for line in path.read_bytes().splitlines():
        event = orjson.loads(line)
        commit = event.get("commit")
        if event.get("kind") == "commit" and commit["operation"] in ("create", "delete"):
            uri = f"at://{event['did']}/{commit['collection']}/{commit['rkey']}"
            yield commit["operation"], uri


def hour_chunks(roots: list[Path], hour: HourKey) -> list[Path]:
    return [path for root in roots for path in sorted((root / hour.day / hour.hour)
                                                      .glob("*.jsonl"))]


def expected_duplicates(roots: list[Path], hour: HourKey, previous: HourKey) -> int:
    """The report's `duplicates`, counted from the chunks: every create or delete line after
    the first of its AT-URI in the hour, plus the hour's creates the previous hour's last
    minutes already received (they belong to that hour)."""
    lines: Counter[tuple[str, str]] = Counter()
    for path in hour_chunks(roots, hour):
        lines.update(chunk_records(path))
    earlier = set()
    for path in hour_chunks(roots, previous):
        match = CHUNK_NAME.match(path.name)
        assert match is not None
        if int(match["minute"]) >= 60 - TAIL_MINUTES:
            earlier |= {uri for op, uri in chunk_records(path) if op == "create"}
    repeats = sum(lines.values()) - len(lines)
    created = {uri for op, uri in lines if op == "create"}
    return repeats + len(created & earlier)


def index_of_posts(universe: Universe, first: int, last: int) -> dict[str, int]:
    """AT-URI -> universe index of every post created by events first..last-1."""
    found = {}
    for index in range(first, last):
        meta = universe.meta(index)
        if meta.operation == "create" and meta.collection == POSTS:
            found[f"at://{meta.did}/{meta.collection}/{meta.rkey}"] = index
    return found


def test_two_servers_two_instances_faults_and_restarts_lose_and_repeat_nothing(
        write_settings: SettingsWriter, tmp_path: Path) -> None:
    vault, incoming = tmp_path / "vault", tmp_path / "incoming"
    began = time.time()
    with FakeJetstreamFleet(("east", "west"), rate=RATE, seed=11, quiet=True) as fleet:
        east, west = fleet["east"], fleet["west"]
        srv1 = make_server(write_settings, tmp_path, "srv1", east, compress=True,
                           role="main", data_vault_dst=str(vault), incoming_dst=str(incoming),
                           osf_enabled="False", main_host=None, main_user=None)
        srv2 = make_server(write_settings, tmp_path, "srv2", west, compress=False)
        context = explain(srv1, srv2)
        srv1.run.start()
        srv2.run.start()
        wait_for(lambda: new_connection(srv1, 0, 20)() and new_connection(srv2, 0, 20)(), 60,
                 "both streams to connect", context)
        window_from_us = time.time_ns() // 1000 + MARGIN_US
        [first_east] = connections(srv1)
        [first_west] = connections(srv2)
        assert first_east["compress"] and not first_west["compress"]
        assert first_east["collections"] == first_west["collections"] == [POSTS]

        # Every fault at once: each instance applies its own in order, one after the other.
        east.inject(Fault("close", after=30, code=1011, reason="test fault"),
                    Fault("drop_mid_frame", after=60),
                    Fault("repeat", after=120, count=100),
                    Fault("corrupt_frame", after=20),
                    Fault("malformed", after=20))
        west.inject(Fault("miss", after=90, count=50),
                    Fault("silence", after=30, seconds=STALL_SECONDS + 4))

        # srv1: every east fault played, the bad frames counted and the connection kept.
        wait_for(lambda: not east.pending_faults(), 60, "east's faults", context)
        wait_for(lambda: {"corrupt_zstd", "not_json"} <= set(srv1.health().get(
            "skipped_frames", {})), 30, "srv1 to count the bad frames", context)
        health = srv1.health()
        assert health["skipped_frames"] == {"corrupt_zstd": 1, "not_json": 1}, health
        assert health["connections"] == 3 and health["failures"].get("close_1011") == 1, health
        east_before_kill = len(connections(srv1))
        # A crash: the open chunk stays `.part`, recovered at the next start.
        srv1.run.kill()
        srv1_cursor = srv1.resume_cursor()
        srv1.run.start()

        # srv2: the silence is a stall, alerted and answered with a new connection.
        wait_for(lambda: "ALERT stream_stalled" in srv2.run.log, 60, "srv2's stall alert",
                 context)
        wait_for(new_connection(srv2, 1, 50), 60, "srv2 to reconnect after the stall",
                 context)
        status = srv2.status()["stream"]
        assert status["running"] and status["connections"] >= 2, status
        assert srv2.health()["failures"].get("stall", 0) >= 1, srv2.health()
        west_before_restart = len(connections(srv2))
        assert srv2.run.stop() == 0, srv2.run.log[-3000:]
        srv2_cursor = srv2.resume_cursor()
        srv2.run.start()

        wait_for(new_connection(srv1, east_before_kill, 100), 60, "srv1 to resume", context)
        wait_for(new_connection(srv2, west_before_restart, 100), 60, "srv2 to resume",
                 context)
        # Each restart resumed from its own chunks, rewound.
        assert connections(srv1)[east_before_kill]["cursor"] == srv1_cursor
        assert connections(srv2)[west_before_restart]["cursor"] == srv2_cursor
        time.sleep(1.0)  # a little live tail after both resumed

        # A quiet end: both instances fall silent, what is in flight arrives, then SIGTERM.
        window_to_us = time.time_ns() // 1000 - MARGIN_US
        for instance in (east, west):
            instance.inject(Fault("silence", seconds=600))
        wait_for(lambda: not east.pending_faults() and not west.pending_faults(), 10,
                 "the final silence", context)
        time.sleep(1.0)
        stop_all(srv1, srv2)
        ended = time.time()
        logs = fleet.logs()
        east_log, west_log = logs
        universe = east.universe
        stamps = (east.timeline.stamp, west.timeline.stamp)

    # ---- the streams --------------------------------------------------------------------------
    for server in (srv1, srv2):
        assert not server.run.part_files(), f"{server.server_id} left a .part chunk"
        assert "Traceback" not in server.run.log, server.run.log
    assert "ALERT stream_crashed" in srv1.run.log  # the SIGKILL, told at the next start
    assert "resuming from" in srv1.run.log and "resuming from" in srv2.run.log
    assert "stalled: no event for" in srv2.run.log
    assert "skipped a frame that is no Jetstream event (corrupt_zstd" in srv1.run.log
    assert "skipped a frame that is no Jetstream event (not_json" in srv1.run.log
    # Every reconnection and restart resumed from a cursor (only the first ones were live).
    for log in logs:
        assert [c["live"] for c in log["connections"]][1:] == [False] * (
            len(log["connections"]) - 1)
        assert not any(c["clamped"] for c in log["connections"])
    [[miss_first, miss_last]] = west_log["missing"]
    assert east_log["missing"] == []

    # ---- the main merges every hour the run touched ------------------------------------------
    deliver_to_main(srv2, incoming)
    roots = [srv1.data, incoming / "srv2"]
    hours = hours_between(began, ended)
    touched = sorted({HourKey(p.parent.parent.name, p.parent.name)
                      for root in roots for p in root.glob("*/*/*.jsonl")})
    assert touched and set(touched) <= set(hours), (touched, hours)
    outputs = {}
    for hour in touched:
        stderr = process_hour(srv1, hour)
        assert "quarantine" not in stderr, stderr
        outputs[hour] = read_outputs(vault, hour)

    # ---- duplicated 0 -------------------------------------------------------------------------
    all_ids: Counter[str] = Counter()
    for hour, out in outputs.items():
        assert out.ids == sorted(set(out.ids)), f"{hour}: an AT-URI twice in the IDs file"
        uris = Counter(row["uri"] for row in out.posts)
        assert max(uris.values(), default=1) == 1, f"{hour}: a post twice in posts.csv"
        assert set(uris) <= set(out.ids)
        assert not set(uris) & set(out.deletes), "a post deleted in its hour has a row"
        assert int(out.report["total"]) == len(out.ids)
        all_ids.update(out.ids)
    assert max(all_ids.values()) == 1, "an AT-URI is in two hours' IDs files"

    # ---- lost 0 -------------------------------------------------------------------------------
    window_from = universe.index_at_us(window_from_us)
    window_to = universe.index_at_us(window_to_us)
    assert window_to - window_from > 5 * RATE, "the window is too short to mean anything"
    due = universe.created_uris(range(window_from, window_to), [POSTS])
    missing_due = sorted(set(due) - set(all_ids))
    assert not missing_due, f"{len(missing_due)} of {len(due)} posts due in the window lost"
    sent = created_uris_sent(logs, [POSTS])
    missing_sent = sorted(set(sent) - set(all_ids))
    assert not missing_sent, f"{len(missing_sent)} of {len(sent)} posts sent whole lost"
    assert set(all_ids) <= set(sent), "an AT-URI in the IDs files was never sent"
    # west's gap: only east had those events, and srv1's copies fill it.
    gap = universe.created_uris(range(miss_first, miss_last + 1), [POSTS])
    assert len(gap) >= 25 and set(gap) <= set(all_ids)
    assert sum(int(out.report["diff"]) for out in outputs.values()) >= len(gap)
    assert window_from < miss_first and miss_last < window_to
    srv2_created = {uri for path in srv2.chunks() for op, uri in chunk_records(path)
                    if op == "create"}
    assert not set(gap) & srv2_created, "srv2 holds events its instance never had"

    # ---- repeats counted ----------------------------------------------------------------------
    for hour, out in outputs.items():
        previous = hour_of(hour_bounds(hour, UTC_ZONE)[0] - timedelta(minutes=1), UTC_ZONE)
        assert int(out.report["duplicates"]) == expected_duplicates(roots, hour, previous), (
            hour, out.report)
    assert sum(int(out.report["duplicates"]) for out in outputs.values()) > 0
    [repeated_on] = [c for c in east_log["connections"]
                     if any(e.startswith("repeat") for e in c["events"])]
    sent_there = Counter(connection_indices(repeated_on, universe))
    repeated = universe.created_uris([i for i, n in sent_there.items() if n > 1], [POSTS])
    assert len(repeated) >= 10
    srv1_copies = Counter(uri for path in srv1.chunks() for op, uri in chunk_records(path)
                          if op == "create")
    assert all(srv1_copies[uri] >= 2 for uri in repeated), "a repeat never reached a chunk"

    # ---- the posts are the universe's posts, the deletes its deletes --------------------------
    posts_index = index_of_posts(universe, window_from, window_to)
    rows = {row["uri"]: row for out in outputs.values() for row in out.posts}
    all_deletes = {uri for out in outputs.values() for uri in out.deletes}
    expected_rows = set(posts_index) - all_deletes
    assert expected_rows <= set(rows), "a post of the window has no row"
    for uri in sorted(expected_rows):
        index, row = posts_index[uri], rows[uri]
        event = universe.event(index)
        record = event["commit"]["record"]
        assert (row["did"], row["rkey"], row["cid"]) == (
            event["did"], event["commit"]["rkey"], event["commit"]["cid"])
        assert row["text"] == record["text"], uri
        assert row["created_at"] == record["createdAt"]
        assert row["langs"] == ",".join(record.get("langs", []))
        assert int(row["time_us"]) in {stamp(index) for stamp in stamps}
        assert row["retrieved_at"].endswith("+00:00")
    deleted = universe.deleted_uris(range(window_from, window_to), [POSTS])
    assert len(deleted) > 10 and set(deleted) <= all_deletes
    assert all_deletes <= set(deleted_uris_sent(logs, [POSTS]))
