"""Run the real `collector stream` process against the fake API and compare what it kept.

The oracle is the fake's own record of the messages it wrote whole to each connection: after
any fault, the closed chunks must hold exactly those messages (as a multiset: the stream
itself may repeat a message), nothing else, and no `.part` may be left after SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from tests.conftest import BEARER_TOKEN
from tests.doubles.fake_api import FakeStreamAPI, Fault

TOKEN = BEARER_TOKEN  # what write_settings gives the collector, so the fake must accept it
# Every process started here, so a test that fails half-way leaves none running.
STARTED: list[subprocess.Popen[bytes]] = []
BACKOFF_SCALE = "0.01"
RATE = 100.0  # messages a second from the `api` fixture (conftest.py)


def wait_for(condition: Callable[[], bool], timeout: float, what: str,
             context: Callable[[], str] | None = None) -> None:
    """Poll `condition`; on time-out fail with `context()` (logs) to say why."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    detail = f"\n{context()}" if context else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what}{detail}")


def explain(api: FakeStreamAPI, run: StreamRun) -> Callable[[], str]:
    """What the fake and the collector saw, for a failed wait."""

    def text() -> str:
        connections = "\n".join(
            f"  {c['id']} {c['status']} whole={c['whole_count']} events={c['events']}"
            for c in api.connection_log())
        return f"fake connections:\n{connections}\ncollector log:\n{run.log[-4000:]}"

    return text


def canonical(message: dict[str, Any]) -> bytes:
    return orjson.dumps(message, option=orjson.OPT_SORT_KEYS)


class StreamRun:
    """One `collector stream` subprocess with its settings, log and data folder."""

    def __init__(self, settings_path: Path, data_dir: Path, log_path: Path) -> None:
        self.settings_path = settings_path
        self.data_dir = data_dir
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> StreamRun:
        env = dict(os.environ, COLLECTOR_BACKOFF_SCALE=BACKOFF_SCALE)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "collector", "--settings", str(self.settings_path), "stream"],
            stdout=log, stderr=log, env=env,
        )
        STARTED.append(self.process)
        log.close()
        return self

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; a stream that does not stop dumps its threads into the log."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGUSR1)
            time.sleep(1.0)
            self.kill()
            raise AssertionError(f"collector stream did not stop:\n{self.log}") from None

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def chunk_lines(self) -> list[dict[str, Any]]:
        """Every line of every closed chunk, parsed."""
        lines = []
        for path in sorted(self.data_dir.rglob("*.jsonl")):
            for raw in path.read_bytes().splitlines():
                lines.append(orjson.loads(raw))
        return lines

    def part_files(self) -> list[Path]:
        return sorted(self.data_dir.rglob("*.part"))

    def status(self) -> tuple[int, dict[str, Any]]:
        result = subprocess.run(
            [sys.executable, "-m", "collector", "--settings", str(self.settings_path),
             "status", "--json"],
            capture_output=True, timeout=30, check=False,
        )
        return result.returncode, orjson.loads(result.stdout)


def kill_leftovers() -> None:
    """Kill what a failed test left running (a passing test has stopped its process)."""
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.wait(10)


def quiesce(api: FakeStreamAPI, settle: float = 1.0) -> None:
    """Stop the fake sending tweets (heartbeats only), so nothing is in flight at SIGTERM."""
    api.clear_faults()
    api.inject(Fault("heartbeat_stall", seconds=3600))
    time.sleep(settle)


def sent_messages(api: FakeStreamAPI, token: str = TOKEN) -> list[dict[str, Any]]:
    factory = api.factory
    return [factory.message(index) for index in api.sent_whole(token)]


def assert_exactly_once(api: FakeStreamAPI, run: StreamRun, token: str = TOKEN) -> int:
    """The chunks hold every message sent whole, each as often as it was sent, and no other.

    Operational-disconnect notices are messages as received too, but the fake's record counts
    only tweets, so notices are left out here and checked by their own tests.
    """
    kept = run.chunk_lines()
    for line in kept:
        assert "__twarc" in line, "every chunk line carries twarc's metadata"
        line.pop("__twarc")
    kept = [line for line in kept if "data" in line]
    expected = Counter(canonical(m) for m in sent_messages(api, token))
    actual = Counter(canonical(m) for m in kept)
    missing = expected - actual
    invented = actual - expected
    assert not missing, f"{sum(missing.values())} sent messages are not in the chunks"
    assert not invented, f"{sum(invented.values())} chunk lines were never sent whole"
    assert not run.part_files(), "a .part chunk was left behind"
    return sum(expected.values())
