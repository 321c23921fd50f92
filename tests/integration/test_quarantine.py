"""What a secondary's key can push cannot stop, blind or steer `collector process`.

Every entry here is real (FIFOs, sockets, symlinks, hard links, sparse files) and planted in
a secondary's incoming folder as rsync would leave it. Each case runs two identical sites,
one with the hostile entry and one without, and checks that every hour comes out byte for
byte the same (the report but for its `quarantined` cell), that the entry was moved to the
quarantine and not read, that nothing outside the folder changed, and that it was logged in
one line and alerted once.
"""

from __future__ import annotations

import dataclasses
import logging
import lzma
import os
import re
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

import collector.process.read
import collector.process.run
from collector import cli
from collector.alerts.smtp import CAFILE_ENV
from collector.layout import HourKey
from collector.process.run import process
from collector.process.scan import Scan, ServerFolder, scan_folders
from collector.settings import Settings, load_settings
from tests.conftest import SettingsWriter
from tests.integration.helpers import (
    REPO_ROOT,
    smtp_double,
    snapshot,
    vault,
    write_mail_credentials,
)
from tests.integration.test_process import (
    HOUR,
    HOUR_START,
    LATER,
    SERVERS,
    assert_matches,
    fill_hour,
    folders,
    stream_line,
)
from tests.integration.test_process import hostile as tweet_message

pytestmark = pytest.mark.integration

NEXT = HourKey("2026-02-03", "11")
STAMP = "20260203T120000Z"  # LATER, the `now` of every in-process run here
HOSTILE_NAME = "srv2_2026-02-03_10-58.jsonl"  # a minute no server wrote
MAX_BYTES = 512 * 1024 * 1024  # the default of max_chunk_mb


# ---- the sites -------------------------------------------------------------------------------

SiteMaker = Callable[..., Settings]


@pytest.fixture
def make_site(tmp_path: Path, write_settings: SettingsWriter) -> SiteMaker:
    """A main (srv1) with srv2 and srv3 pushing, in its own folder under tmp_path."""

    def make(name: str, **overrides: str) -> Settings:
        root = tmp_path / name
        return load_settings(write_settings(
            role="main", server_id="srv1", servers=",".join(SERVERS),
            data_storage_dst=str(root / "data"), data_vault_dst=str(root / "vault"),
            incoming_dst=str(root / "incoming"), osf_enabled="False", main_host=None,
            main_user=None, raw_retention_days="3650", **overrides))

    return make


def fill(settings: Settings) -> None:
    """Two hours, 10 and 11, of three servers (see test_process.fill_hour)."""
    fill_hour(settings, HOUR_START, tweets=60)
    fill_hour(settings, HOUR_START + timedelta(hours=1), tweets=60)


def srv2(settings: Settings) -> Path:
    assert settings.incoming_dst is not None
    return settings.incoming_dst / "srv2"


def published(settings: Settings) -> dict[str, bytes]:
    """Every file of the vault; the day reports without their `quarantined` column."""
    files = {}
    for path in sorted(vault(settings).rglob("*")):
        if not path.is_file() or path.parent.name == ".collector":
            continue
        data = path.read_bytes()
        if path.name.endswith("_report.txt"):
            rows = [line.split("\t") for line in data.decode().splitlines()]
            drop = rows[0].index("quarantined")
            data = "\n".join("\t".join(r[:drop] + r[drop + 1:]) for r in rows).encode()
        files[str(path.relative_to(vault(settings)))] = data
    return files


def report_cells(settings: Settings, column: str) -> dict[str, str]:
    """Hour label -> the cell of `column` in the 2026-02-03 report."""
    rows = [line.split("\t") for line in
            (vault(settings) / "2026-02-03" / "2026-02-03_report.txt").read_text().splitlines()]
    at = rows[0].index(column)
    return {row[0]: row[at] for row in rows[1:]}


def tweet_lines(first_id: int, count: int = 3) -> bytes:
    """Valid stream lines of tweets no server captured: published only if wrongly read."""
    return b"".join(stream_line(tweet_message(first_id + i, "planted"), HOUR_START)
                    for i in range(count))


def process_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "collector.process" and r.levelno == logging.WARNING]


def alerts(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.getMessage().startswith("ALERT entries_quarantined")]


# ---- the hostile entries ---------------------------------------------------------------------

def _fifo(root: Path, outside: Path) -> None:
    os.mkfifo(root / "2026-02-03" / "10" / HOSTILE_NAME)


def _devzero(root: Path, outside: Path) -> None:
    (root / "2026-02-03" / "10" / HOSTILE_NAME).symlink_to("/dev/zero")


def _day_dangling(root: Path, outside: Path) -> None:
    (root / "2026-02-04").symlink_to(outside / "missing")


def _day_looping(root: Path, outside: Path) -> None:
    (root / "2026-02-04").symlink_to("2026-02-04")


def _hour_dangling(root: Path, outside: Path) -> None:
    (root / "2026-02-03" / "12").symlink_to(outside / "missing")


def _hour_looping(root: Path, outside: Path) -> None:
    (root / "2026-02-03" / "12").symlink_to("12")


def _escape(root: Path, outside: Path) -> None:
    (root / "esc").symlink_to(outside / "vault")


def _day_outside(root: Path, outside: Path) -> None:
    """A day folder that is a link to a chunk tree elsewhere: its chunk must not be read."""
    (root / "2026-02-05").symlink_to(outside / "tree" / "2026-02-05")


def _hard_link(root: Path, outside: Path) -> None:
    os.link(outside / "secret.jsonl", root / "2026-02-03" / "10" / HOSTILE_NAME)


def _oversize(root: Path, outside: Path) -> None:
    path = root / "2026-02-03" / "10" / HOSTILE_NAME
    path.write_bytes(tweet_lines(8 * 10**18))
    os.truncate(path, MAX_BYTES + 1)  # sparse: no disk used


def _socket(root: Path, outside: Path) -> None:
    here = os.getcwd()
    os.chdir(root / "2026-02-03" / "10")  # a relative name: AF_UNIX paths are short
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
            server.bind(HOSTILE_NAME)
    finally:
        os.chdir(here)


def _misnamed(root: Path, outside: Path) -> None:
    (root / "2026-02-03" / "10" / "notes.txt").write_bytes(tweet_lines(8 * 10**18))


def _other_server(root: Path, outside: Path) -> None:
    path = root / "2026-02-03" / "10" / "srv3_2026-02-03_10-58.jsonl"
    path.write_bytes(tweet_lines(8 * 10**18))


def _wrong_hour(root: Path, outside: Path) -> None:
    (root / "2026-02-03" / "11" / HOSTILE_NAME).write_bytes(tweet_lines(8 * 10**18))


def _stray_file(root: Path, outside: Path) -> None:
    (root / "README").write_text("hello\n")


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    plant: Callable[[Path, Path], None]
    relative: str  # below srv2's folder
    reason: str
    hour: HourKey | None  # the hour whose folder held it
    report_hour: str | None  # the report line that counts it (None: the hour has no line)


F = f"2026-02-03/10/{HOSTILE_NAME}"
CASES = [
    Case("fifo", _fifo, F, "a FIFO", HOUR, "10"),
    Case("symlink-devzero", _devzero, F, "a symbolic link", HOUR, "10"),
    Case("day-dangling", _day_dangling, "2026-02-04",
         "a symbolic link where a day folder belongs", None, None),
    Case("day-looping", _day_looping, "2026-02-04",
         "a symbolic link where a day folder belongs", None, None),
    Case("hour-dangling", _hour_dangling, "2026-02-03/12",
         "a symbolic link where an hour folder belongs", HourKey("2026-02-03", "12"), None),
    Case("hour-looping", _hour_looping, "2026-02-03/12",
         "a symbolic link where an hour folder belongs", HourKey("2026-02-03", "12"), None),
    Case("symlink-escape", _escape, "esc", "a symbolic link not named like a day folder",
         None, None),
    Case("day-link-outside", _day_outside, "2026-02-05",
         "a symbolic link where a day folder belongs", None, None),
    Case("hard-link", _hard_link, F, "a hard link (2 links)", HOUR, "10"),
    Case("oversize", _oversize, F,
         f"{MAX_BYTES + 1} bytes, more than the limit of 512 MiB (max_chunk_mb)", HOUR, "10"),
    Case("socket", _socket, F, "a socket", HOUR, "10"),
    Case("misnamed", _misnamed, "2026-02-03/10/notes.txt", "not named like a chunk", HOUR,
         "10"),
    Case("other-server", _other_server, "2026-02-03/10/srv3_2026-02-03_10-58.jsonl",
         "a chunk of srv3 in the folder of srv2", HOUR, "10"),
    Case("wrong-hour-folder", _wrong_hour, f"2026-02-03/11/{HOSTILE_NAME}",
         "a chunk of 2026-02-03T10 in the folder of 2026-02-03T11", NEXT, "11"),
    Case("stray-top-file", _stray_file, "README",
         "a regular file not named like a day folder", None, None),
]


def make_outside(tmp_path: Path) -> Path:
    """What lies outside srv2's folder: a vault-like folder, a chunk tree, a file of tweets."""
    outside = tmp_path / "outside"
    (outside / "vault" / "2026-02-03").mkdir(parents=True)
    (outside / "vault" / "2026-02-03" / "2026-02-03_10_IDs.txt").write_text("1\n2\n")
    day = outside / "tree" / "2026-02-05" / "10"
    day.mkdir(parents=True)
    (day / "srv2_2026-02-05_10-00.jsonl").write_bytes(tweet_lines(9 * 10**18))
    (outside / "secret.jsonl").write_bytes(tweet_lines(7 * 10**18))
    return outside


# ---- tests -----------------------------------------------------------------------------------

@pytest.mark.timeout(120)  # a regression that blocks on the FIFO fails here, it cannot hang
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_entry_is_quarantined_and_every_hour_published_as_without_it(
        case: Case, make_site: SiteMaker, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    clean, hostile = make_site("clean"), make_site("hostile")
    fill(clean)
    fill(hostile)
    outside = make_outside(tmp_path)
    case.plant(srv2(hostile), outside)
    planted = srv2(hostile) / case.relative
    planted_mode = stat.S_IFMT(planted.lstat().st_mode)
    before_outside = snapshot(outside)
    baseline = process(clean, now=LATER)
    caplog.clear()

    started = time.monotonic()
    result = process(hostile, now=LATER)
    assert time.monotonic() - started < 20  # a blocked or unbounded read never returns

    # Moved as it is (a link stays a link), never deleted, and out of srv2's reach.
    moved_to = srv2(hostile).parent / ".quarantine" / "srv2" / f"{case.relative}.{STAMP}"
    assert [(e.server_id, e.entry, e.reason, e.moved_to, e.hour) for e in result.quarantined] \
        == [("srv2", case.relative, case.reason, moved_to, case.hour)]
    assert not os.path.lexists(planted)
    assert stat.S_IFMT(moved_to.lstat().st_mode) == planted_mode
    # Every hour as without the entry, byte for byte (and as computed independently, which
    # is safe only now that no FIFO or link is left to read).
    assert [r.hour for r in result.hours] == [r.hour for r in baseline.hours] == [HOUR, NEXT]
    assert published(hostile) == published(clean)
    for hour in (HOUR, NEXT):
        assert_matches(vault(hostile), hour, folders(hostile))
    # Counted in the report line of its hour (0 everywhere else).
    want = {"10": "0", "11": "0"}
    if case.report_hour is not None:
        want[case.report_hour] = "1"
    assert report_cells(hostile, "quarantined") == want
    assert report_cells(clean, "quarantined") == {"10": "0", "11": "0"}
    # One log line naming server and entry, one alert.
    assert process_warnings(caplog) == [
        f"quarantined srv2 entry {case.relative} ({case.reason}): moved to {moved_to}"]
    assert alerts(caplog) == [
        f"ALERT entries_quarantined on srv1: 1 entry in the chunk folders quarantined, not "
        f"read: srv2 {case.relative} ({case.reason})"]
    assert "Traceback" not in caplog.text
    # Nothing outside the folder was read through it or changed.
    assert snapshot(outside) == before_outside
    # Done once: the next run finds nothing to move, nothing to process, nothing to alert.
    caplog.clear()
    again = process(hostile, now=LATER + timedelta(minutes=5))
    assert again.quarantined == [] and again.hours == [] and alerts(caplog) == []


@pytest.mark.timeout(120)
def test_a_fifo_does_not_block_the_cli_run_nor_hold_the_lock(make_site: SiteMaker) -> None:
    """The issue's attack end to end: `collector process` as cron runs it, in a subprocess
    with a deadline; then the next run gets the lock at once."""
    settings = make_site("cli")
    fill(settings)
    os.mkfifo(srv2(settings) / "2026-02-03" / "10" / HOSTILE_NAME)
    command = [sys.executable, "-m", "collector", "--settings", str(settings.path), "process"]
    started = time.monotonic()
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 30
    assert "Traceback" not in done.stderr
    assert (vault(settings) / "2026-02-03" / "2026-02-03_10_IDs.txt.xz").exists()
    again = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert "another collector process is running" not in again.stderr


def _without_time(line: str) -> str:
    return line.split(" ", 2)[2]  # `2026-12-02 14:29:07,123 LEVEL name: message`


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("cli_logging")
def test_cli_logs_one_line_per_quarantined_entry_and_fails_in_one_line(
        make_site: SiteMaker, capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_site("inprocess")
    fill(settings)
    twelve = srv2(settings) / "2026-02-03" / "12"
    twelve.mkdir()
    os.mkfifo(twelve / "srv2_2026-02-03_12-00.jsonl")
    # Hour 12's only chunk is a FIFO: asked for by name, it has no chunks, in one line.
    assert cli.main(["--settings", str(settings.path), "process", "--hour",
                     "2026-02-03T12"]) == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines[-1] == "collector process: error: no closed chunks for hour 2026-02-03T12"
    quarantined = [_without_time(line) for line in lines if " collector.process: " in line]
    assert len(quarantined) == 1
    assert re.fullmatch(
        r"WARNING collector\.process: quarantined srv2 entry "
        r"2026-02-03/12/srv2_2026-02-03_12-00\.jsonl \(a FIFO\): moved to "
        + re.escape(f"{settings.incoming_dst}/.quarantine/srv2/2026-02-03/12/"
                    "srv2_2026-02-03_12-00.jsonl.") + r"\d{8}T\d{6}Z", quarantined[0])
    assert [_without_time(line) for line in lines if "ALERT entries_quarantined" in line] == [
        "WARNING collector.alert: ALERT entries_quarantined on srv1: 1 entry in the chunk "
        "folders quarantined, not read: srv2 2026-02-03/12/srv2_2026-02-03_12-00.jsonl "
        "(a FIFO)"]
    assert "Traceback" not in err
    # The ordinary run publishes both hours and says so in its last line.
    assert cli.main(["--settings", str(settings.path), "process"]) == 0
    err = capsys.readouterr().err
    assert _without_time(err.strip().splitlines()[-1]).startswith(
        "INFO collector.process: done: 2 hours processed, 0 hours of raw chunks removed")
    assert "quarantined" not in err and "Traceback" not in err


@pytest.mark.timeout(120)
def test_own_open_chunks_and_rsync_temporaries_are_left_alone_and_own_rejects_kept_apart(
        make_site: SiteMaker, caplog: pytest.LogCaptureFixture) -> None:
    """Hidden entries are rsync's transfers in progress (and may be a FIFO: never opened);
    the main's own `.part` is its stream's open chunk; an operator's file beside the day
    folders of `data_storage_dst` is theirs. A FIFO among the main's own chunks goes to
    `data_storage_dst/.quarantine/srv1/`."""
    settings = make_site("own")
    fill(settings)
    own_hour = settings.data_storage_dst / "2026-02-03" / "10"
    part = own_hour / "srv1_2026-02-03_10-58.jsonl.part"
    part.write_bytes(tweet_lines(6 * 10**18))
    operator_file = settings.data_storage_dst / "NOTES"
    operator_file.write_text("mine\n")
    temp = srv2(settings) / "2026-02-03" / "10" / f".{HOSTILE_NAME}.AbC123"
    temp.write_bytes(tweet_lines(6 * 10**18))
    hidden_fifo = srv2(settings) / "2026-02-03" / "10" / ".srv2_2026-02-03_10-57.jsonl.XyZ789"
    os.mkfifo(hidden_fifo)
    os.mkfifo(own_hour / "srv1_2026-02-03_10-57.jsonl")
    result = process(settings, now=LATER)
    assert [r.hour for r in result.hours] == [HOUR, NEXT]
    moved_to = (settings.data_storage_dst / ".quarantine" / "srv1" / "2026-02-03" / "10"
                / f"srv1_2026-02-03_10-57.jsonl.{STAMP}")
    assert [(e.server_id, e.entry, e.moved_to) for e in result.quarantined] == [
        ("srv1", "2026-02-03/10/srv1_2026-02-03_10-57.jsonl", moved_to)]
    assert stat.S_ISFIFO(moved_to.lstat().st_mode)
    assert part.exists() and operator_file.exists() and temp.exists()
    assert stat.S_ISFIFO(hidden_fifo.lstat().st_mode)
    for hour in (HOUR, NEXT):  # neither the .part nor the temporary was merged
        assert_matches(vault(settings), hour, folders(settings))
    assert report_cells(settings, "quarantined") == {"10": "1", "11": "0"}


@pytest.mark.timeout(120)
def test_a_chunk_swapped_for_a_fifo_after_the_scan_is_not_opened(
        make_site: SiteMaker, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The scan saw a regular file; by the time it is opened it is a FIFO. The open does not
    wait for a writer, fstat refuses it and the FIFO is quarantined; the hour is published
    without it and not recorded as merged from it."""
    settings = make_site("swap")
    fill(settings)
    victim = srv2(settings) / "2026-02-03" / "10" / "srv2_2026-02-03_10-00.jsonl"

    def scan_then_swap(folders: list[ServerFolder], max_bytes: int) -> Scan:
        scan = scan_folders(folders, max_bytes)
        victim.unlink()
        os.mkfifo(victim)
        return scan

    monkeypatch.setattr(collector.process.run, "scan_folders", scan_then_swap)
    started = time.monotonic()
    result = process(settings, now=LATER)
    assert time.monotonic() - started < 20
    assert [r.hour for r in result.hours] == [HOUR, NEXT]
    moved_to = (srv2(settings).parent / ".quarantine" / "srv2" / "2026-02-03" / "10"
                / f"{victim.name}.{STAMP}")
    assert [(e.entry, e.reason, e.moved_to) for e in result.quarantined] == [
        ("2026-02-03/10/srv2_2026-02-03_10-00.jsonl", "a FIFO", moved_to)]
    assert stat.S_ISFIFO(moved_to.lstat().st_mode)
    assert report_cells(settings, "quarantined") == {"10": "1", "11": "0"}
    assert_matches(vault(settings), HOUR, folders(settings))  # without minute 00 of srv2
    monkeypatch.undo()
    again = process(settings, now=LATER + timedelta(minutes=5))
    assert again.quarantined == [] and again.hours == []


def test_an_entry_replaced_before_its_move_is_left_for_the_next_scan(
        make_site: SiteMaker, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Between the scan and the move, the FIFO the scan saw became a real chunk: a move
    checks the inode first, so what the secondary put there now is judged by the next scan,
    never moved on the strength of an older look."""
    settings = make_site("replaced")
    fill(settings)
    planted = srv2(settings) / "2026-02-03" / "10" / HOSTILE_NAME
    os.mkfifo(planted)
    aside = planted.with_name(".aside")  # keeps the FIFO's inode from being reused

    def scan_then_replace(folders: list[ServerFolder], max_bytes: int) -> Scan:
        scan = scan_folders(folders, max_bytes)
        planted.rename(aside)
        planted.write_bytes(tweet_lines(4 * 10**18))
        return scan

    monkeypatch.setattr(collector.process.run, "scan_folders", scan_then_replace)
    result = process(settings, now=LATER)
    assert result.quarantined == []
    assert f"srv2 entry 2026-02-03/10/{HOSTILE_NAME} changed while it was checked; the next " \
           "run looks at it again" in process_warnings(caplog)
    assert planted.is_file() and not planted.is_symlink()
    monkeypatch.undo()
    aside.unlink()
    again = process(settings, now=LATER + timedelta(minutes=5))
    # Now merged as a late chunk (minute 58 is also in hour 11's look back).
    assert [r.hour for r in again.hours] == [HOUR, NEXT]
    for hour in (HOUR, NEXT):
        assert_matches(vault(settings), hour, folders(settings))


@pytest.mark.timeout(120)
def test_a_chunk_growing_while_read_is_read_only_up_to_its_size_at_open(
        make_site: SiteMaker, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_site("grow")
    fill(settings)
    grower = srv2(settings) / "2026-02-03" / "10" / "srv2_2026-02-03_10-00.jsonl"
    late_line = tweet_lines(5 * 10**18, count=1)
    real_open = collector.process.read.open_chunk

    def open_then_grow(root: Path, parts: tuple[str, ...], max_bytes: int) -> tuple[int, int]:
        opened = real_open(root, parts, max_bytes)
        if parts[-1] == grower.name and late_line not in grower.read_bytes():
            with grower.open("ab") as handle:
                handle.write(late_line)
        return opened

    monkeypatch.setattr(collector.process.read, "open_chunk", open_then_grow)
    process(settings, now=LATER)
    ids_file = vault(settings) / "2026-02-03" / "2026-02-03_10_IDs.txt.xz"
    assert str(5 * 10**18) not in lzma.decompress(ids_file.read_bytes()).decode()
    monkeypatch.undo()
    # The next run sees the new size: the hour is merged again, now with the line.
    result = process(settings, now=LATER + timedelta(minutes=5))
    assert [r.hour for r in result.hours] == [HOUR]
    assert str(5 * 10**18) in lzma.decompress(ids_file.read_bytes()).decode()
    assert_matches(vault(settings), HOUR, folders(settings))


@pytest.mark.timeout(120)
def test_a_quarantine_that_cannot_be_written_leaves_the_entry_unread_and_the_run_whole(
        make_site: SiteMaker, caplog: pytest.LogCaptureFixture) -> None:
    clean, broken = make_site("clean"), make_site("broken")
    fill(clean)
    fill(broken)
    os.mkfifo(srv2(broken) / "2026-02-03" / "10" / HOSTILE_NAME)
    (srv2(broken).parent / ".quarantine").write_text("not a folder\n")
    process(clean, now=LATER)
    caplog.clear()
    result = process(broken, now=LATER)
    assert [r.hour for r in result.hours] == [HOUR, NEXT]
    assert published(broken) == published(clean)
    assert [(e.entry, e.moved_to) for e in result.quarantined] == [(F, None)]
    assert process_warnings(caplog) == [
        f"cannot quarantine srv2 entry {F} (a FIFO): File exists; it stays and is not read"]
    assert len(alerts(caplog)) == 1
    assert stat.S_ISFIFO((srv2(broken) / F).lstat().st_mode)
    assert report_cells(broken, "quarantined") == {"10": "0", "11": "0"}  # nothing held
    # Every run says so again until someone looks; none of them reads it.
    caplog.clear()
    assert [e.entry for e in process(broken, now=LATER).quarantined] == [F]
    assert len(alerts(caplog)) == 1


def test_a_smaller_max_chunk_mb_quarantines_a_big_chunk(make_site: SiteMaker) -> None:
    settings = make_site("small", max_chunk_mb="1")
    fill(settings)
    big = srv2(settings) / "2026-02-03" / "11" / "srv2_2026-02-03_11-58.jsonl"
    big.write_bytes(tweet_lines(8 * 10**18) + b"\n" * (1024 * 1024))
    size = big.stat().st_size
    result = process(settings, now=LATER)
    assert [(e.entry, e.reason) for e in result.quarantined] == [
        ("2026-02-03/11/srv2_2026-02-03_11-58.jsonl",
         f"{size} bytes, more than the limit of 1 MiB (max_chunk_mb)")]
    for hour in (HOUR, NEXT):
        assert_matches(vault(settings), hour, folders(settings))
    assert report_cells(settings, "quarantined") == {"10": "0", "11": "1"}


@pytest.mark.timeout(120)
def test_quarantine_is_mailed_at_most_once_an_hour(
        tmp_path: Path, make_site: SiteMaker, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, tls_files: tuple[Path, Path]) -> None:
    monkeypatch.setenv(CAFILE_ENV, str(tls_files[0]))
    with smtp_double(tls_files) as smtp:
        write_mail_credentials(tmp_path / "mailkeys", smtp.port)
        settings = make_site("mail", notifications="True",
                             email_credentials_dst=str(tmp_path / "mailkeys"))
        fill(settings)
        os.mkfifo(srv2(settings) / "2026-02-03" / "10" / HOSTILE_NAME)
        caplog.set_level(logging.INFO)
        process(settings, now=LATER)
        [mail] = smtp.wait_for(1)
        assert mail["Subject"] == (
            f"[collector srv1] entries_quarantined: 1 entry in the chunk folders quarantined, "
            f"not read: srv2 2026-02-03/10/{HOSTILE_NAME} (a FIFO)")
        body = mail.get_body().get_content()  # type: ignore[union-attr]
        assert f".quarantine/srv2/2026-02-03/10/{HOSTILE_NAME}.{STAMP}" in body
        assert "every other hour was processed" in body
        # Another one ten minutes later: logged and alerted in the log, but not mailed again.
        (srv2(settings) / "2026-02-03" / "11" / "srv2_2026-02-03_11-58.jsonl").symlink_to(
            "/dev/zero")
        caplog.clear()
        process(settings, now=LATER + timedelta(minutes=10))
        assert len(alerts(caplog)) == 1
        assert len(smtp.wait_for(2, timeout=2)) == 1
        assert "alert entries_quarantined not emailed again" in caplog.text


def test_status_shows_what_waits_for_quarantine_and_what_it_holds(make_site: SiteMaker) -> None:
    from collector.status import host_status

    settings = make_site("status")
    fill(settings)
    os.mkfifo(srv2(settings) / "2026-02-03" / "10" / HOSTILE_NAME)
    (srv2(settings) / "esc").symlink_to("/srv")
    assert host_status(settings).processing["entries_to_quarantine"] == 2  # scan moves nothing
    assert os.path.lexists(srv2(settings) / "esc")
    process(settings, now=LATER)
    (srv2(settings) / "2026-02-03" / "11" / "notes.txt").write_text("x\n")
    shown = host_status(settings).processing
    assert (shown["entries_to_quarantine"], shown["quarantined_entries"]) == (1, 2)
