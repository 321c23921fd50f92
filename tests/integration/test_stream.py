"""The real `collector stream` process against the fake API, one fault at a time.

After each fault the fleet's promise is checked against the fake's own record: every message
sent whole is in the closed chunks exactly once, nothing is invented, no `.part` is left.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SettingsWriter
from tests.doubles.fake_api import FakeStreamAPI, Fault
from tests.integration.stream_harness import (
    RATE,
    TOKEN,
    StreamRun,
    assert_exactly_once,
    explain,
    quiesce,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_leftover_processes")]


def make_run(write_settings: SettingsWriter, api: FakeStreamAPI, tmp_path: Path,
             data_dir: Path | None = None, **overrides: str) -> StreamRun:
    data = data_dir or tmp_path / "data"
    settings = write_settings(api_base_url=api.url, data_storage_dst=str(data),
                              read_timeout_seconds="2", **overrides)
    return StreamRun(settings, data, tmp_path / "stream.log")


def sent(api: FakeStreamAPI) -> int:
    return len(api.sent_whole(TOKEN))


def connections(api: FakeStreamAPI) -> list[dict[str, object]]:
    return [c for c in api.connection_log() if c["token"] == TOKEN]


def streamed_after(api: FakeStreamAPI, count: int) -> bool:
    """True once the last 200 connection has sent at least `count` messages."""
    ok = [c for c in connections(api) if c["status"] == 200]
    return bool(ok) and int(ok[-1]["whole_count"]) >= count  # type: ignore[call-overload]


def capture_through(api: FakeStreamAPI, run: StreamRun, *faults: Fault,
                    connections_needed: int = 2) -> int:
    """Stream, inject the faults, wait for a healthy connection after them, stop, check."""
    run.start()
    wait_for(lambda: sent(api) >= 30, 60, "the first messages",
             explain(api, run))
    api.inject(*faults)
    wait_for(lambda: not api.pending_faults(), 60, "the faults to be played",
             explain(api, run))
    wait_for(lambda: len([c for c in connections(api) if c["status"] == 200])
             >= connections_needed and streamed_after(api, 20), 60,
             "a healthy connection after the faults", explain(api, run))
    quiesce(api)
    assert run.stop() == 0, run.log
    return assert_exactly_once(api, run)


def test_plain_capture_and_clean_stop(write_settings: SettingsWriter, api: FakeStreamAPI,
                                      tmp_path: Path) -> None:
    run = make_run(write_settings, api, tmp_path)
    run.start()
    wait_for(lambda: sent(api) >= 100, 60, "100 messages",
             explain(api, run))
    # The health record is rewritten every 2 s: the first one may predate the connection.
    seen: dict[str, Any] = {}

    def healthy() -> bool:
        code, status = run.status()
        seen.update(status)
        return (code == 0 and status["stream"]["connected"] is True
                and status["stream"]["open_chunk"].endswith(".jsonl.part"))

    wait_for(healthy, 10, "status to say connected, with an open chunk", explain(api, run))
    quiesce(api)
    assert run.stop() == 0
    assert assert_exactly_once(api, run) >= 100
    assert "ALERT stream_started" in run.log and "ALERT stream_stopped" in run.log
    code, status = run.status()
    assert code == 2 and status["problems"] == ["the stream is not running (stopped)"]


@pytest.mark.parametrize("kind", ["drop_mid_line", "rst", "partial_then_end"])
def test_connection_cut_in_the_middle(write_settings: SettingsWriter, api: FakeStreamAPI,
                                      tmp_path: Path, kind: str) -> None:
    run = make_run(write_settings, api, tmp_path)
    capture_through(api, run, Fault(kind, after=15))
    assert "stream disconnected" in run.log


def test_clean_end_of_response_does_not_loop_tightly(write_settings: SettingsWriter,
                                                     api: FakeStreamAPI,
                                                     tmp_path: Path) -> None:
    run = make_run(write_settings, api, tmp_path)
    capture_through(api, run, *[Fault("clean_end", after=2) for _ in range(6)],
                    connections_needed=7)
    # twarc alone reconnects at once, forever; the policy backs off and stays in budget.
    starts = sorted(float(c["start"]) for c in connections(api))  # type: ignore[arg-type]
    for i, start in enumerate(starts):
        assert len([s for s in starts[i:] if s < start + 9.0]) <= 50


@pytest.mark.parametrize(
    "fault",
    [
        Fault("status", status=401, count=2),
        Fault("status", status=403, count=1),
        Fault("status", status=429, count=2),
        Fault("status", status=429, count=2, rate_limit_headers=False),
        Fault("status", status=429, count=1, remaining=0),
        Fault("status", status=500, count=4),
        Fault("status", status=503, count=4),
    ],
    ids=["401", "403", "429", "429-no-headers", "429-remaining-0", "500-burst", "503-burst"],
)
def test_http_errors_are_survived(write_settings: SettingsWriter, api: FakeStreamAPI,
                                  tmp_path: Path, fault: Fault) -> None:
    run = make_run(write_settings, api, tmp_path)
    # The status fault applies to the next connection attempts: end the live one first.
    capture_through(api, run, Fault("rst", after=5), fault)
    assert f"http_{fault.status}" in run.log
    assert "Traceback" not in run.log


@pytest.mark.parametrize(
    ("variant", "close"),
    [("OperationalDisconnect", True), ("UpstreamOperationalDisconnect", True),
     ("UpstreamOperationalDisconnect", False)],
)
def test_operational_disconnect(write_settings: SettingsWriter, api: FakeStreamAPI,
                                tmp_path: Path, variant: str, close: bool) -> None:
    run = make_run(write_settings, api, tmp_path)
    needed = 2 if close else 1
    capture_through(api, run, Fault("operational_disconnect", after=10, variant=variant,
                                    close=close), connections_needed=needed)
    # The disconnect notice is a message as received: it is kept (process counts it).
    notices = [line for line in run.chunk_lines() if "data" not in line]
    assert len(notices) == 1 and notices[0]["errors"][0]["disconnect_type"] == variant


@pytest.mark.parametrize("kind", ["malformed_line", "non_json_line"])
def test_lines_that_are_not_messages_are_skipped_and_counted(
    write_settings: SettingsWriter, api: FakeStreamAPI, tmp_path: Path, kind: str
) -> None:
    run = make_run(write_settings, api, tmp_path)
    capture_through(api, run, Fault(kind, after=10), connections_needed=1)
    assert "skipped a line that is not a JSON message" in run.log
    assert "Traceback" not in run.log


@pytest.mark.parametrize("kind", ["silent_stall", "no_headers"])
def test_silence_triggers_read_timeout_and_reconnect(write_settings: SettingsWriter,
                                                     api: FakeStreamAPI, tmp_path: Path,
                                                     kind: str) -> None:
    run = make_run(write_settings, api, tmp_path)
    # Four times the 2 s read timeout: a loaded machine may fire the timeout late, and
    # messages the fake writes after the stall to a socket being closed would count as sent.
    faults = [Fault(kind, after=10, seconds=8)]
    if kind == "no_headers":
        faults.insert(0, Fault("rst", after=5))
    capture_through(api, run, *faults)
    assert "Read timed out" in run.log or "ReadTimeout" in run.log


def test_connection_refused_for_a_while(write_settings: SettingsWriter, api: FakeStreamAPI,
                                        tmp_path: Path) -> None:
    run = make_run(write_settings, api, tmp_path)
    capture_through(api, run, Fault("rst", after=5), Fault("refuse", seconds=3))
    assert "Connection refused" in run.log or "ConnectionError" in run.log


def test_heartbeat_only_stall_is_degraded_and_alerted(write_settings: SettingsWriter,
                                                      api: FakeStreamAPI,
                                                      tmp_path: Path) -> None:
    run = make_run(write_settings, api, tmp_path, stall_seconds="2")
    run.start()
    wait_for(lambda: sent(api) >= 20, 60, "the first messages",
             explain(api, run))
    # One stall per connection: the collector reconnects on a stall, and stalls again.
    api.inject(*[Fault("heartbeat_stall", seconds=30) for _ in range(3)])
    wait_for(lambda: "ALERT stream_stalled" in run.log, 60, "the stall alert",
             explain(api, run))
    seen: dict[str, object] = {}

    def degraded() -> bool:
        code, status = run.status()
        seen.update(status)
        return code == 1

    wait_for(degraded, 30, "status to say degraded", explain(api, run))
    problems = seen["problems"]
    assert isinstance(problems, list) and len(problems) == 1
    assert problems[0].startswith("no tweets for ") and problems[0].endswith(" s (stall)")
    api.clear_faults()  # the collector reconnects after the alert; tweets flow again
    wait_for(lambda: run.status()[0] == 0, 60, "the stream to be healthy again",
             explain(api, run))
    quiesce(api, settle=1.0)
    assert run.stop() == 0
    assert_exactly_once(api, run)


def test_sigkill_then_restart_recovers_the_open_chunk(write_settings: SettingsWriter,
                                                      api: FakeStreamAPI,
                                                      tmp_path: Path) -> None:
    run = make_run(write_settings, api, tmp_path)
    run.start()
    wait_for(lambda: sent(api) >= 200, 60, "200 messages",
             explain(api, run))
    time.sleep(2.5)  # past one fsync interval
    run.kill()
    parts = run.part_files()
    assert len(parts) >= 1
    kept_before = len(parts[0].read_bytes().splitlines())
    assert kept_before > 0
    run.start()
    wait_for(lambda: not any(p in run.part_files() for p in parts), 60, "recovery",
             explain(api, run))
    assert "ALERT stream_crashed" in run.log
    wait_for(lambda: streamed_after(api, 30), 60, "the restarted stream",
             explain(api, run))
    quiesce(api)
    assert run.stop() == 0
    # A kill loses at most what was not yet written; nothing is invented or doubled.
    lines = run.chunk_lines()
    for line in lines:
        line.pop("__twarc")
    sent_ids = [m["data"]["id"] for m in (api.factory.message(i) for i in api.sent_whole(TOKEN))]
    kept_ids = [line["data"]["id"] for line in lines if "data" in line]
    assert set(kept_ids) <= set(sent_ids)
    assert len(kept_ids) >= len(sent_ids) - RATE * 3  # at most ~3 s of messages lost
    assert not run.part_files()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"),
                    reason="mounting a small tmpfs needs root")
def test_full_disk_alerts_holds_messages_and_resumes(write_settings: SettingsWriter,
                                                     api: FakeStreamAPI,
                                                     tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True)
    try:
        filler = disk / "filler"
        with filler.open("wb") as handle:  # leave about 100 kB free
            handle.write(b"\0" * (1024 * 1024 - 100 * 1024))
        run = make_run(write_settings, api, tmp_path, data_dir=disk / "data")
        run.start()
        wait_for(lambda: "ALERT disk_full" in run.log, 60, "the disk-full alert",
             explain(api, run))
        assert "is full" in run.log
        wait_for(lambda: run.status()[1]["stream"]["disk_full"] is True, 60, "status",
             explain(api, run))
        assert run.status()[0] == 1
        filler.unlink()  # space returns
        wait_for(lambda: "has room again" in run.log, 60, "the recovery",
             explain(api, run))
        quiesce(api)
        assert run.stop() == 0
        assert_exactly_once(api, run)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_missing_token_is_one_clear_line(write_settings: SettingsWriter, api: FakeStreamAPI,
                                         tmp_path: Path) -> None:
    run = make_run(write_settings, api, tmp_path)
    (tmp_path / "keys" / "twitter_api.txt").unlink()
    run.start()
    assert run.process is not None
    assert run.process.wait(20) == 2
    assert run.log.strip().splitlines() == [
        f"collector stream: error: credentials file {tmp_path}/keys/twitter_api.txt "
        "does not exist"
    ]
