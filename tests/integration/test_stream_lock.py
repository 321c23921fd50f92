"""One `collector stream` per host, proven with two real processes on one data folder.

A second stream used to run crash recovery first, renaming the live stream's `.part` files to
closed chunks while the first kept appending to them. Now it must refuse with one line and
touch nothing: no rename, no alert, no health record.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from collector.errors import LockedError
from collector.stream.run import stream_lock
from tests.conftest import SettingsWriter
from tests.doubles.fake_api import FakeStreamAPI
from tests.integration.stream_harness import (
    TOKEN,
    StreamRun,
    assert_exactly_once,
    explain,
    quiesce,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_leftover_processes")]


def away_from_a_minute_boundary(margin: float = 15.0) -> None:
    """Sleep until the next minute boundary is at least `margin` s away.

    The first stream closes its chunk at every boundary by itself; keeping the second
    stream's whole life inside one minute makes "the .part files did not change" a proof.
    """
    left = 60.0 - time.time() % 60.0
    if left < margin:
        time.sleep(left + 0.5)


def test_second_stream_refuses_with_one_line_and_renames_nothing(
        write_settings: SettingsWriter, api: FakeStreamAPI, tmp_path: Path) -> None:
    data = tmp_path / "data"
    settings = write_settings(api_base_url=api.url, data_storage_dst=str(data),
                              read_timeout_seconds="2")
    first = StreamRun(settings, data, tmp_path / "first.log").start()
    wait_for(lambda: len(api.sent_whole(TOKEN)) >= 50 and bool(first.part_files()), 60,
             "the first stream to write an open chunk", explain(api, first))
    away_from_a_minute_boundary()
    parts_before = {path: path.stat().st_ino for path in first.part_files()}
    assert parts_before
    health = data / ".collector" / "stream_status.json"

    second = StreamRun(settings, data, tmp_path / "second.log").start()
    assert second.process is not None
    assert second.process.wait(30) == 1
    assert second.log.strip().splitlines() == [
        f"collector stream: error: another collector stream is running on this host "
        f"(lock {data / '.collector' / 'stream.lock'}); not starting a second one"]

    # The live stream's open chunks are still open, the same files; it still owns the health.
    assert {path: path.stat().st_ino for path in first.part_files()} == parts_before
    assert first.process is not None and first.process.poll() is None
    assert orjson.loads(health.read_bytes())["pid"] == first.process.pid
    assert "ALERT" not in second.log

    quiesce(api)
    assert first.stop() == 0
    assert "ALERT stream_crashed" not in first.log
    assert assert_exactly_once(api, first) >= 50

    # The lock dies with its holder: the next stream starts normally.
    third = StreamRun(settings, data, tmp_path / "third.log").start()
    wait_for(lambda: "ALERT stream_started" in third.log, 30, "the next stream to start",
             explain(api, third))
    assert third.stop() == 0


def test_lock_is_exclusive_while_held_and_free_after(tmp_path: Path) -> None:
    """flock is per open file: a second taker fails at once, even in the same process."""
    held = stream_lock(tmp_path)
    with held, pytest.raises(LockedError, match="another collector stream is running"), \
            stream_lock(tmp_path):
        pass  # pragma: no cover - never reached
    with stream_lock(tmp_path):  # released on exit
        pass
