"""The fake Jetstream against the real `websockets` client over loopback: the v1 wire (text
and zstd frames), filters, several instances of one universe, cursor replay and clamping,
every fault, the control API and the command line.

These pin down what the collector's Bluesky tests and the lab's fault suite rely on; they use
high rates and short waits so the whole file stays fast.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import zstandard
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.doubles.fake_jetstream import (
    DICTIONARY_ID,
    FakeJetstream,
    FakeJetstreamFleet,
    Fault,
    at_uri,
    created_uris_sent,
    decompressor,
    expand_runs,
)
from tests.integration.helpers import REPO_ROOT

pytestmark = pytest.mark.integration

MakeJs = Callable[..., FakeJetstream]
POSTS = "wantedCollections=app.bsky.feed.post"


@pytest.fixture
def make_js() -> Iterator[MakeJs]:
    """Start instances (history of 20 s at 500 events/s by default); all stopped after."""
    started: list[FakeJetstream] = []

    def make(**options: Any) -> FakeJetstream:
        options.setdefault("epoch", time.time() - 20)
        options.setdefault("rate", 500.0)
        options.setdefault("quiet", True)
        instance = FakeJetstream(**options).start()
        started.append(instance)
        return instance

    yield make
    for instance in started:
        instance.stop()


def open_ws(js: FakeJetstream, query: str = "", **options: Any) -> ClientConnection:
    """A client as the collector would open one (unbounded queue: closing is never stuck
    behind unread frames)."""
    ws: ClientConnection = connect(f"{js.url}?{query}", max_queue=None, close_timeout=1,
                                   open_timeout=5, **options)
    return ws


def since_epoch(js: FakeJetstream) -> str:
    return f"cursor={js.universe.epoch_us}"


def receive(ws: ClientConnection, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """`count` events, decompressed when binary."""
    unzstd = decompressor()
    events = []
    for _ in range(count):
        frame = ws.recv(timeout=timeout)
        data = unzstd.decompress(frame) if isinstance(frame, bytes) else frame
        events.append(json.loads(data))
    return events


def record(js: FakeJetstream, number: int = -1, wait: float = 3.0) -> dict[str, Any]:
    """Connection record `number` (default the last), once it has ended."""
    deadline = time.monotonic() + wait
    while True:
        rec: dict[str, Any] = js.connection_log()[number]
        if rec["end"] is not None or time.monotonic() > deadline:
            return rec
        time.sleep(0.02)


def key(event: dict[str, Any]) -> tuple[str, ...]:
    """What identifies an event across instances (everything but time_us)."""
    return (json.dumps({k: v for k, v in event.items() if k != "time_us"}, sort_keys=True),)


# ---- the wire -------------------------------------------------------------------------------

def test_text_frames_are_the_v1_events_the_log_names(make_js: MakeJs) -> None:
    js = make_js()
    with open_ws(js, since_epoch(js)) as ws:
        frames = [ws.recv(timeout=5) for _ in range(300)]
    indices = js.sent_whole()[:300]
    assert all(isinstance(frame, str) for frame in frames)
    assert [f.encode() for f in frames if isinstance(f, str)] == [
        js.universe.wire(i, js.timeline.stamp(i)) for i in indices]
    kinds = {json.loads(frame)["kind"] for frame in frames}
    assert kinds == {"commit", "identity", "account"}
    for event in map(json.loads, frames):
        assert list(event)[:3] == ["did", "time_us", "kind"]
        commit = event.get("commit")
        if commit and commit["operation"] == "delete":
            assert "record" not in commit and "cid" not in commit
        elif commit:
            assert commit["record"]["$type"] == commit["collection"] and "cid" in commit


def test_compressed_frames_decompress_with_the_dictionary(make_js: MakeJs) -> None:
    js = make_js()
    with open_ws(js, f"{since_epoch(js)}&compress=true") as ws:
        frames = [ws.recv(timeout=5) for _ in range(200)]
    indices = js.sent_whole()[:200]
    unzstd = decompressor()
    for frame, index in zip(frames, indices, strict=True):
        assert isinstance(frame, bytes)
        assert zstandard.get_frame_parameters(frame).dict_id == DICTIONARY_ID
        assert unzstd.decompress(frame) == js.universe.wire(index, js.timeline.stamp(index))
    assert sum(map(len, frames)) < 0.7 * sum(
        len(js.universe.wire(i, 0)) for i in indices)  # the dictionary does its work


def test_wanted_collections_prefixes_and_identity_account_pass(make_js: MakeJs) -> None:
    js = make_js()
    with open_ws(js, f"{since_epoch(js)}&{POSTS}") as ws:
        events = receive(ws, 300)
    assert len(record(js)["whole_runs"]) == 1  # a run steps over the unwanted events
    commits = {e["commit"]["collection"] for e in events if e["kind"] == "commit"}
    assert commits == {"app.bsky.feed.post"}
    assert {e["kind"] for e in events} == {"commit", "identity", "account"}
    with open_ws(js, f"{since_epoch(js)}&wantedCollections=app.bsky.graph.*"
                     "&wantedCollections=app.bsky.feed.repost") as ws:
        events = receive(ws, 300)
    assert {e["commit"]["collection"] for e in events if e["kind"] == "commit"} == {
        "app.bsky.graph.follow", "app.bsky.graph.block", "app.bsky.feed.repost"}


def test_wanted_dids_and_max_message_size(make_js: MakeJs) -> None:
    js = make_js()
    dids = {js.universe.event(i)["did"] for i in range(10)}
    with open_ws(js, f"{since_epoch(js)}&" + "&".join(f"wantedDids={d}" for d in dids)) as ws:
        events = receive(ws, 12)
    assert {e["did"] for e in events} <= dids
    with open_ws(js, f"{since_epoch(js)}&maxMessageSizeBytes=400") as ws:
        frames = [ws.recv(timeout=5) for _ in range(200)]
    assert max(len(f.encode()) for f in frames if isinstance(f, str)) <= 400
    assert record(js)["skipped_too_big"] > 0


def test_permessage_deflate_only_when_asked_for(make_js: MakeJs) -> None:
    plain, deflating = make_js(), make_js(deflate=True)
    for js, negotiated in ((plain, False), (deflating, True)):
        with open_ws(js, since_epoch(js), compression="deflate") as ws:
            receive(ws, 5)
            extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "") \
                if ws.response is not None else ""
            assert ("permessage-deflate" in extensions) == negotiated


def test_stop_closes_open_connections_going_away(make_js: MakeJs) -> None:
    js = make_js()
    with open_ws(js) as ws:
        receive(ws, 2)
        js.stop()
        with pytest.raises(ConnectionClosedOK) as closed:
            while True:
                ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert js.connection_log()[0]["ended"] == "server stopped"


def test_bad_requests_get_400_and_other_paths_404(make_js: MakeJs) -> None:
    js = make_js()
    for query in ("cursor=yesterday", "wantedCollections=app.bsky.feed.post,app.bsky.feed.like",
                  "wantedDids=bob"):
        with pytest.raises(InvalidStatus) as refused:
            open_ws(js, query)
        assert refused.value.response.status_code == 400
    with pytest.raises(InvalidStatus) as missing:
        connect(f"ws://127.0.0.1:{js.port}/xrpc/network.bsky.jetstream.subscribeEvents")
    assert missing.value.response.status_code == 404
    lenient = make_js(comma_lists=True)
    with open_ws(lenient, f"{since_epoch(lenient)}&wantedCollections="
                          "app.bsky.feed.post,app.bsky.feed.like") as ws:
        events = receive(ws, 100)
    assert {e["commit"]["collection"] for e in events if e["kind"] == "commit"} == {
        "app.bsky.feed.post", "app.bsky.feed.like"}


# ---- instances, cursors ---------------------------------------------------------------------

def test_two_instances_serve_the_same_records_with_their_own_time_us() -> None:
    with FakeJetstreamFleet(("east", "west"), epoch=time.time() - 20, rate=500,
                            quiet=True) as fleet:
        cursor = f"cursor={fleet['east'].universe.epoch_us}"
        streams = {}
        for instance in fleet:
            with open_ws(instance, cursor) as ws:
                streams[instance.name] = receive(ws, 400)
        east, west = streams["east"], streams["west"]
        assert [key(e) for e in east] == [key(e) for e in west]
        assert sum(a["time_us"] != b["time_us"] for a, b in zip(east, west, strict=True)) > 350
        for events in (east, west):
            stamps = [e["time_us"] for e in events]
            assert any(b < a for a, b in itertools.pairwise(stamps))  # not monotonic
        received = {at_uri(e) for e in east if e["kind"] == "commit"
                    and e["commit"]["operation"] == "create"}
        assert received <= set(fleet.created_uris())  # sent whole: read, or still in flight


def test_cursor_replay_resumes_without_a_gap(make_js: MakeJs) -> None:
    js = make_js()
    with open_ws(js, f"{since_epoch(js)}&{POSTS}") as ws:
        first = receive(ws, 150)
    resume = max(e["time_us"] for e in first)  # the cursor a collector keeps
    with open_ws(js, f"cursor={resume}&{POSTS}") as ws:
        second = receive(ws, 150)
    log = js.connection_log()
    assert log[1]["cursor"] == resume and not log[1]["clamped"] and not log[1]["live"]
    assert log[1]["start_index"] == js.timeline.first_at_or_after(resume)
    sent = [js.sent_whole(1), js.sent_whole(2)]
    assert sent[1][0] <= sent[0][149]  # an overlap (at-least-once), never a gap
    wanted = [i for i in range(sent[0][0], sent[1][149] + 1)
              if js.universe.meta(i).collection in ("app.bsky.feed.post", None)]
    assert sorted(set(sent[0][:150]) | set(sent[1][:150])) == wanted
    assert [key(e) for e in second] == [key(js.universe.stamped(i, 0)) for i in sent[1][:150]]


def test_an_old_cursor_is_clamped_silently_a_future_one_is_live(make_js: MakeJs) -> None:
    js = make_js(lookback_seconds=5)
    with open_ws(js, since_epoch(js)) as ws:
        event = receive(ws, 1)[0]
    rec = record(js)
    assert rec["clamped"] and not rec["live"]
    assert event["time_us"] >= (time.time() - 6) * 1e6  # from the last 5 s, not the epoch
    with open_ws(js, f"cursor={int((time.time() + 60) * 1e6)}") as ws:
        receive(ws, 1)
    assert record(js)["live"] and not record(js)["clamped"]
    whole = make_js(lookback_seconds=3600)
    with open_ws(whole, f"cursor={whole.universe.epoch_us - 10**9}") as ws:
        receive(ws, 1)
    assert record(whole)["start_index"] == 0 and not record(whole)["clamped"]


def test_clamp_fault_shortens_the_lookback(make_js: MakeJs) -> None:
    js = make_js()
    js.inject(Fault("clamp", seconds=2))
    with open_ws(js, since_epoch(js)) as ws:
        receive(ws, 1)
    rec = record(js)
    assert rec["clamped"] and rec["start_index"] > 500 * 17
    assert js.log()["lookback_seconds"] == 2 and js.pending_faults() == []


# ---- faults ---------------------------------------------------------------------------------

@pytest.mark.parametrize("code", [1011, 1008, 4000])
def test_close_fault_is_a_proper_close_with_its_code(make_js: MakeJs, code: int) -> None:
    js = make_js()
    js.inject(Fault("close", after=25, code=code, reason="fault"))
    events: list[dict[str, Any]] = []
    with (open_ws(js, f"{since_epoch(js)}&{POSTS}") as ws,
          pytest.raises(ConnectionClosedError) as closed):
        while True:
            events.extend(receive(ws, 1))
    assert closed.value.rcvd is not None and closed.value.rcvd.code == code
    assert closed.value.rcvd.reason == "fault" and len(events) == 25
    rec = record(js)
    assert rec["ended"] == f"closed {code} fault" and rec["whole_count"] == 25
    creates = sorted(at_uri(e) for e in events
                     if e["kind"] == "commit" and e["commit"]["operation"] == "create")
    assert created_uris_sent([js.log()]) == creates  # the oracle names exactly what was read


@pytest.mark.parametrize("compress", [False, True])
def test_drop_mid_frame_is_a_reset_without_close_frame(make_js: MakeJs, compress: bool) -> None:
    js = make_js()
    js.inject(Fault("drop_mid_frame", after=40))
    events: list[dict[str, Any]] = []
    query = f"{since_epoch(js)}&compress={'true' if compress else 'false'}"
    with open_ws(js, query) as ws, pytest.raises(ConnectionClosedError) as dropped:
        while True:
            events.extend(receive(ws, 1))
    assert dropped.value.rcvd is None  # no close frame: the connection just broke
    rec = record(js)
    assert rec["ended"] == "dropped mid-frame" and len(rec["partial"]) == 1
    assert len(events) == rec["whole_count"] == 40


def test_silence_then_the_late_events_as_a_burst(make_js: MakeJs) -> None:
    js = make_js()
    js.inject(Fault("silence", after=5, seconds=1.0))
    with open_ws(js) as ws:  # the live tail
        receive(ws, 5)
        started = time.monotonic()
        receive(ws, 1, timeout=3)
        assert time.monotonic() - started > 0.9  # the connection stayed open and silent
        resumed_us = time.time() * 1e6
        burst = receive(ws, 200)  # about 500 events fell due meanwhile: they come at once
        assert all(event["time_us"] < resumed_us for event in burst)
    sent = expand_runs(record(js)["whole_runs"])  # no filter: the runs are the indices
    assert sent == list(range(sent[0], sent[-1] + 1))  # nothing skipped


def test_repeat_sends_the_previous_events_again(make_js: MakeJs) -> None:
    js = make_js()
    js.inject(Fault("repeat", after=10, count=4))
    with open_ws(js, f"{since_epoch(js)}&{POSTS}") as ws:
        events = receive(ws, 20)
    keys = [key(e) for e in events]
    assert keys[10:14] == keys[6:10] and keys[14] not in keys[:14]
    assert events[10:14] == events[6:10]  # the same time_us too: true repeats
    sent = js.sent_whole()
    assert sent[10:14] == sent[6:10] and record(js)["whole_runs"][1][0] == sent[10]  # back


def test_corrupt_frame_fails_zstd_then_the_stream_carries_on(make_js: MakeJs) -> None:
    js = make_js()
    js.inject(Fault("corrupt_frame", after=3))
    unzstd = decompressor()
    with open_ws(js, f"{since_epoch(js)}&compress=true") as ws:
        frames = [ws.recv(timeout=5) for _ in range(6)]
    binary = [frame for frame in frames if isinstance(frame, bytes)]
    assert len(binary) == 6
    with pytest.raises(zstandard.ZstdError):
        unzstd.decompress(binary[3])
    for frame in binary[:3] + binary[4:]:
        assert json.loads(unzstd.decompress(frame))


@pytest.mark.parametrize("compress", [False, True])
def test_malformed_frame_is_not_json_then_the_stream_carries_on(make_js: MakeJs,
                                                               compress: bool) -> None:
    js = make_js()
    js.inject(Fault("malformed", after=2))
    query = f"{since_epoch(js)}&compress={'true' if compress else 'false'}"
    unzstd = decompressor()
    with open_ws(js, query) as ws:
        frames = [ws.recv(timeout=5) for _ in range(5)]
    datas = [unzstd.decompress(f) if isinstance(f, bytes) else f.encode() for f in frames]
    assert all(isinstance(frame, bytes) == compress for frame in frames)
    with pytest.raises(json.JSONDecodeError):
        json.loads(datas[2])
    assert [json.loads(d) for d in datas[3:]] and datas[3].startswith(datas[2])


def test_oversized_frame_then_the_stream_carries_on(make_js: MakeJs) -> None:
    js = make_js()
    js.inject(Fault("oversized", after=2, bytes=50_000), Fault("oversized", after=1, bytes=5000))
    with open_ws(js, f"{since_epoch(js)}&compress=true") as ws:
        frames = [ws.recv(timeout=5) for _ in range(8)]
    binary = [frame for frame in frames if isinstance(frame, bytes)]
    sizes = [len(frame) for frame in binary]
    assert sizes[2] > 50_000 and sizes[4] > 5000 and max(sizes[:2] + sizes[5:]) < 5000
    padded = json.loads(decompressor().decompress(binary[2]))
    assert "padding" in padded and key({**padded, "padding": None}) != key(padded)
    js.inject(Fault("oversized", after=0, bytes=2000))
    with (open_ws(js, f"{since_epoch(js)}", max_size=1000) as ws,  # a client's own limit
          pytest.raises(ConnectionClosedError) as too_big):
        while True:
            ws.recv(timeout=5)
    assert too_big.value.sent is not None and too_big.value.sent.code == 1009


def test_miss_leaves_a_gap_only_on_that_instance_and_its_replays() -> None:
    with FakeJetstreamFleet(("east", "west"), epoch=time.time() - 20, rate=500,
                            quiet=True) as fleet:
        east, west = fleet["east"], fleet["west"]
        cursor = f"cursor={east.universe.epoch_us}&{POSTS}"
        east.inject(Fault("miss", after=10, count=5))
        streams: dict[str, list[list[tuple[str, ...]]]] = {}
        for instance in (east, west, east):
            with open_ws(instance, cursor) as ws:
                streams.setdefault(instance.name, []).append([key(e) for e in receive(ws, 40)])
        (east_first, east_again), (west_only,) = streams["east"], streams["west"]
        assert east_first[:10] == west_only[:10] and east_first[10:35] == west_only[15:40]
        assert east_again == east_first  # the instance never had them: replays lack them too
        [[first, last]] = east.log()["missing"]
        assert west.log()["missing"] == []
        gap = [i for i in range(first, last + 1)
               if east.universe.meta(i).collection in ("app.bsky.feed.post", None)]
        assert len(gap) == 5


def test_refuse_closes_the_port_then_listens_again(make_js: MakeJs) -> None:
    js = make_js()
    with open_ws(js) as ws:
        receive(ws, 2)
        js.inject(Fault("refuse", seconds=0.6))
        time.sleep(0.1)
        with pytest.raises(ConnectionRefusedError):
            open_ws(js)
        receive(ws, 5)  # an open connection stays open
        time.sleep(0.7)
        with open_ws(js) as again:
            receive(again, 2)
    assert js.pending_faults() == [] and not js.log()["refusing"]


def test_faults_apply_in_order_one_connection_each(make_js: MakeJs) -> None:
    js = make_js()
    js.inject(Fault("close", after=3, code=4001), Fault("close", after=1, code=4002))
    codes = []
    for _ in range(2):
        with open_ws(js, since_epoch(js)) as ws, pytest.raises(ConnectionClosedError) as closed:
            while True:
                ws.recv(timeout=5)
        assert closed.value.rcvd is not None
        codes.append(closed.value.rcvd.code)
    assert codes == [4001, 4002]
    assert [r["whole_count"] for r in js.connection_log()] == [3, 1]


# ---- control API, command line --------------------------------------------------------------

def test_control_api_over_http(make_js: MakeJs) -> None:
    js = make_js()
    faults = f"{js.http_url}/_control/faults"
    assert requests.post(faults, json={"kind": "silence", "after": 5, "seconds": 1},
                         timeout=5).status_code == 201
    answer = requests.post(faults, json=[{"kind": "repeat", "count": 2}, {"kind": "close"}],
                           timeout=5)
    assert answer.status_code == 201 and answer.json() == {"queued": 2}
    assert [f["kind"] for f in requests.get(faults, timeout=5).json()] == [
        "silence", "repeat", "close"]
    for bad in ({"kind": "explode"}, {"kind": "close", "code": 1005}, {"kind": "close", "x": 1},
                {"kind": "miss", "count": "2"}):
        refused = requests.post(faults, json=bad, timeout=5)
        assert refused.status_code == 400 and "error" in refused.json()
    assert requests.delete(faults, timeout=5).json() == []
    with open_ws(js, since_epoch(js)) as ws:
        receive(ws, 3)
    log = requests.get(f"{js.http_url}/_control/log", timeout=5).json()
    assert log["name"] == "jetstream" and log["pending_faults"] == []
    assert log["connections"][0]["path"].startswith("/subscribe?cursor=")
    assert {"seed", "epoch", "rate", "offset_us", "lookback_seconds", "missing"} <= set(log)
    assert requests.get(f"{js.http_url}/_control/nothing", timeout=5).status_code == 404
    assert requests.get(f"{js.http_url}/elsewhere", timeout=5).status_code == 404


def test_cli_writes_the_port_file_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    epoch = time.time() - 5
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.doubles.fake_jetstream", "--port", "0", "--name", "east",
         "--epoch", repr(epoch), "--seed", "3", "--rate", "200", "--lookback", "60",
         "--offset-us", "1234", "--port-file", str(port_file)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        assert int(port_file.read_text()) == port
        with connect(f"ws://127.0.0.1:{port}/subscribe?cursor={int(epoch * 1e6)}",
                     max_queue=None, close_timeout=1) as ws:
            first = json.loads(ws.recv(timeout=5))
        log = requests.get(f"http://127.0.0.1:{port}/_control/log", timeout=5).json()
        assert (log["name"], log["seed"], log["epoch"], log["offset_us"]) == (
            "east", 3, epoch, 1234)
        assert first["time_us"] >= int(epoch * 1e6) + 1234
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
