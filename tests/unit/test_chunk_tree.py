"""The rule of what a chunk folder may hold, and the no-follow primitives that apply it.

`classify_entry` and `file_problem` are pure (an lstat or fstat result in, a decision out),
so the rule is tested as a table; the primitives are tested on real entries: FIFOs,
sockets, symlinks, hard links, sparse files.
"""

from __future__ import annotations

import os
import socket
import stat
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from collector.layout import MIB, is_day_name, is_hour_name, iter_closed_chunks
from collector.process.quarantine import (
    QuarantinedEntry,
    entry_hour,
    quarantine_alert,
    quarantine_name,
)
from collector.report import day as daily_report
from collector.sources.x import X_SOURCE
from collector.tree import (
    Decision,
    Entry,
    EntryChanged,
    UnsafeEntry,
    Verdict,
    chunk_name_problem,
    classify_entry,
    file_problem,
    move_entry,
    open_chunk,
    read_at_most,
    remove_entry,
    scan_tree,
    shown,
)

REPORT_EXTRA = X_SOURCE.report_columns  # the day report's columns after diff %

REG, DIR, LNK = stat.S_IFREG | 0o640, stat.S_IFDIR | 0o750, stat.S_IFLNK | 0o777
FIFO, SOCK, CHR = stat.S_IFIFO | 0o640, stat.S_IFSOCK | 0o755, stat.S_IFCHR | 0o666
LIMIT = 512 * MIB
NAME = "srv2_2026-12-02_05-59.jsonl"
HOUR_FOLDER = ("2026-12-02", "05")


def decide(level: str, name: str, mode: int, nlink: int = 1, size: int = 10,
           own: bool = False) -> Decision:
    folder = {"day": (), "hour": ("2026-12-02",), "file": HOUR_FOLDER}[level]
    return classify_entry(level, name, mode, nlink, size,  # type: ignore[arg-type]
                          server_id="srv2", folder=folder, max_bytes=LIMIT, own=own)


@pytest.mark.parametrize(("level", "name", "mode", "nlink", "size", "own", "want"), [
    # the tree as send leaves it
    ("day", "2026-12-02", DIR, 2, 0, False, Decision(Verdict.DESCEND)),
    ("hour", "05", DIR, 2, 0, False, Decision(Verdict.DESCEND)),
    ("hour", "02b", DIR, 2, 0, False, Decision(Verdict.DESCEND)),
    ("file", NAME, REG, 1, 3_000_000, False, Decision(Verdict.CHUNK)),
    ("file", "srv2_2026-12-02_05-59-07.jsonl", REG, 1, 10, False, Decision(Verdict.CHUNK)),
    # hidden: rsync's transfers in progress, the state folder; skipped, whatever they are
    ("file", f".{NAME}.AbC123", REG, 1, 10, False, Decision(Verdict.SKIP)),
    ("file", f".{NAME}.AbC123", FIFO, 1, 0, False, Decision(Verdict.SKIP)),
    ("day", ".collector", DIR, 2, 0, True, Decision(Verdict.SKIP)),
    # links anywhere, at every level
    ("day", "2026-12-02", LNK, 1, 20, False,
     Decision(Verdict.REJECT, "a symbolic link where a day folder belongs")),
    ("hour", "05", LNK, 1, 20, False,
     Decision(Verdict.REJECT, "a symbolic link where an hour folder belongs")),
    ("file", NAME, LNK, 1, 9, False, Decision(Verdict.REJECT, "a symbolic link")),
    ("day", "esc", LNK, 1, 20, False,
     Decision(Verdict.REJECT, "a symbolic link not named like a day folder")),
    # special files and hard links
    ("file", NAME, FIFO, 1, 0, False, Decision(Verdict.REJECT, "a FIFO")),
    ("file", NAME, SOCK, 1, 0, False, Decision(Verdict.REJECT, "a socket")),
    ("file", NAME, CHR, 1, 0, False, Decision(Verdict.REJECT, "a character device")),
    ("file", NAME, REG, 2, 10, False, Decision(Verdict.REJECT, "a hard link (2 links)")),
    ("file", NAME, DIR, 2, 0, False, Decision(Verdict.REJECT, "a folder")),
    # too big
    ("file", NAME, REG, 1, LIMIT, False, Decision(Verdict.CHUNK)),
    ("file", NAME, REG, 1, LIMIT + 1, False, Decision(
        Verdict.REJECT, f"{LIMIT + 1} bytes, more than the limit of 512 MiB (max_chunk_mb)")),
    # names that are no chunk of this server and hour
    ("file", "notes.txt", REG, 1, 10, False, Decision(Verdict.REJECT, "not named like a chunk")),
    ("file", f"{NAME}.part", REG, 1, 10, False,
     Decision(Verdict.REJECT, "not named like a chunk")),
    ("file", "srv3_2026-12-02_05-59.jsonl", REG, 1, 10, False,
     Decision(Verdict.REJECT, "a chunk of srv3 in the folder of srv2")),
    ("file", "srv2_2026-12-02_06-00.jsonl", REG, 1, 10, False,
     Decision(Verdict.REJECT, "a chunk of 2026-12-02T06 in the folder of 2026-12-02T05")),
    ("file", "srv2_2026-12-02_05-75.jsonl", REG, 1, 10, False,
     Decision(Verdict.REJECT, "not named like a chunk")),
    ("file", NAME + "\n", REG, 1, 10, False, Decision(Verdict.REJECT, "not named like a chunk")),
    ("day", "2026-13-40", DIR, 2, 0, False,
     Decision(Verdict.REJECT, "a folder not named like a day folder")),
    ("hour", "24", DIR, 2, 0, False,
     Decision(Verdict.REJECT, "a folder not named like an hour folder")),
    ("day", "README", REG, 1, 6, False,
     Decision(Verdict.REJECT, "a regular file not named like a day folder")),
    # the main's own data_storage_dst: its stream's open chunk, the operator's files
    ("file", "srv2_2026-12-02_05-59.jsonl.part", REG, 1, 10, True, Decision(Verdict.SKIP)),
    ("day", "NOTES", REG, 1, 6, True, Decision(Verdict.SKIP)),
    ("day", "2026-12-02", LNK, 1, 6, True,
     Decision(Verdict.REJECT, "a symbolic link where a day folder belongs")),
    ("file", NAME, FIFO, 1, 0, True, Decision(Verdict.REJECT, "a FIFO")),
])
def test_classify_entry(level: str, name: str, mode: int, nlink: int, size: int, own: bool,
                        want: Decision) -> None:
    assert decide(level, name, mode, nlink, size, own) == want


def test_file_problem_is_the_same_test_at_open() -> None:
    assert file_problem(REG, 1, 5, 5) == Decision(Verdict.CHUNK)
    assert file_problem(FIFO, 1, 0, 5).reason == "a FIFO"
    assert file_problem(REG, 3, 5, 5).reason == "a hard link (3 links)"
    assert file_problem(REG, 1, 6, 5).verdict is Verdict.REJECT


def test_names() -> None:
    assert is_day_name("2026-02-28") and not is_day_name("2026-02-30")
    assert not is_day_name("2026-2-28") and not is_day_name("x2026-02-28")
    assert is_hour_name("00") and is_hour_name("23") and is_hour_name("02b")
    assert not is_hour_name("24") and not is_hour_name("5") and not is_hour_name("05c")
    arabic_day, arabic_hour = "\u0662\u0660\u0662\u0666-\u0660\u0662-\u0660\u0663", "\u0660\u0665"
    assert not is_day_name(arabic_day) and not is_hour_name(arabic_hour)  # Arabic-Indic digits
    assert chunk_name_problem("srv2_2026-12-02_05-\u0665\u0669.jsonl", "srv2", *HOUR_FOLDER) == (
        "not named like a chunk")
    assert chunk_name_problem(NAME, "srv2", *HOUR_FOLDER) == ""
    assert chunk_name_problem("srv2_x_2026-12-02_05-59.jsonl", "srv2", *HOUR_FOLDER) == (
        "a chunk of srv2_x in the folder of srv2")


def test_quarantine_names_and_hours() -> None:
    assert quarantine_name(NAME, "20261202T061502Z") == f"{NAME}.20261202T061502Z"
    assert quarantine_name("05", "20261202T061502Z", 2) == "05.20261202T061502Z-2"
    assert entry_hour(("2026-12-02", "05", NAME)) == entry_hour(("2026-12-02", "05"))
    assert str(entry_hour(("2026-12-02", "05"))) == "2026-12-02T05"
    assert entry_hour(("2026-12-02",)) is None and entry_hour(("esc",)) is None
    assert entry_hour(("2026-12-02", "junk")) is None


def test_shown_escapes_what_could_forge_a_log_line() -> None:
    assert shown("a\nWARNING fake") == "a\\nWARNING fake"
    assert shown("tab\there\x1b[31m") == "tab\\there\\x1b[31m"
    assert shown(os.fsdecode(b"bad\xff")) == "bad\\udcff"
    assert shown("Zoë 😊") == "Zoë 😊"


def test_quarantine_alert_names_the_first_and_counts_the_rest() -> None:
    entries = [QuarantinedEntry("srv2", f"2026-12-02/05/{i}\n", "a FIFO",
                                Path(f"/q/{i}"), None) for i in range(25)]
    entries.append(QuarantinedEntry("srv3", "esc", "a symbolic link", None, None))
    subject, body = quarantine_alert(entries)
    assert subject == ("26 entries in the chunk folders quarantined, not read: srv2 "
                       "2026-12-02/05/0\\n (a FIFO) and 25 more")
    assert "\n- srv2 2026-12-02/05/19\\n: a FIFO; moved to /q/19\n" in body
    assert "- ... and 6 more (one log line each)" in body
    assert "2026-12-02/05/20" not in body
    one, _ = quarantine_alert(entries[-1:])
    assert one == ("1 entry in the chunk folders quarantined, not read: srv3 esc "
                   "(a symbolic link)")
    assert "could not be moved" in quarantine_alert(entries[-1:])[1]


def test_with_cells_updates_an_existing_line_only() -> None:
    servers = ("s1", "s2")
    report = daily_report.with_hour(daily_report.DayReport((), {}), daily_report.HourLine(
        "05", {"s1": 3, "s2": 2}, 3, 1, {"duplicates": 1, "quarantined": 0}), servers, REPORT_EXTRA)
    assert daily_report.with_cells(report, "06", {"quarantined": 2}, servers, REPORT_EXTRA) is None
    updated = daily_report.with_cells(report, "05", {"quarantined": 2}, servers, REPORT_EXTRA)
    assert updated is not None
    assert updated.rows["05"]["quarantined"] == "2"
    assert updated.rows["05"]["duplicates"] == "1" and updated.rows["05"]["s1"] == "3"
    assert report.rows["05"]["quarantined"] == "0"  # pure
    assert daily_report.report_columns(servers, REPORT_EXTRA)[-1] == "quarantined"


# ---- the primitives on real entries ----------------------------------------------------------

@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Path]:
    """srv2's folder with one good chunk and, beside it, an outside folder."""
    root = tmp_path / "srv2"
    hour = root / "2026-12-02" / "05"
    hour.mkdir(parents=True)
    (hour / "srv2_2026-12-02_05-00.jsonl").write_bytes(b'{"data": {"id": "1"}}\n')
    (tmp_path / "outside" / "05").mkdir(parents=True)
    (tmp_path / "outside" / "05" / NAME).write_bytes(b"secret\n")
    yield root


def entry_of(root: Path, *parts: str) -> Entry:
    info = root.joinpath(*parts).lstat()
    return Entry(parts, info.st_dev, info.st_ino)


def test_scan_tree_reads_only_folders_and_rejects_what_is_no_chunk(tree: Path) -> None:
    hour = tree / "2026-12-02" / "05"
    os.mkfifo(hour / NAME)
    (tree / "2026-12-03").symlink_to(tree.parent / "outside")
    (tree / "2026-12-02" / "06").symlink_to("06")
    scan = scan_tree(tree, "srv2", LIMIT)
    assert [found.entry.relative for found in scan.chunks] == [
        "2026-12-02/05/srv2_2026-12-02_05-00.jsonl"]
    assert [(r.entry.relative, r.reason) for r in scan.rejected] == [
        (f"2026-12-02/05/{NAME}", "a FIFO"),
        ("2026-12-02/06", "a symbolic link where an hour folder belongs"),
        ("2026-12-03", "a symbolic link where a day folder belongs"),
    ]


def test_scan_tree_root_missing_is_empty_but_a_dangling_root_link_is_an_error(
        tmp_path: Path) -> None:
    assert scan_tree(tmp_path / "never-pushed", "srv2", LIMIT).chunks == []
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError):
        scan_tree(tmp_path / "dangling", "srv2", LIMIT)


def test_an_unreadable_folder_is_rejected_and_the_rest_still_scanned(
        tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tree / "2026-12-02" / "06").mkdir()
    real_open = os.open

    def refuse_06(path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None
                  ) -> int:
        if path == "06" and dir_fd is not None:  # as if mode 000 for a non-root reader
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", refuse_06)
    scan = scan_tree(tree, "srv2", LIMIT)
    assert [(r.entry.relative, r.reason) for r in scan.rejected] == [
        ("2026-12-02/06", "an unreadable folder (Permission denied)")]
    assert len(scan.chunks) == 1


@pytest.mark.timeout(30)
def test_open_chunk_refuses_every_special_entry_without_blocking(
        tree: Path, tmp_path: Path) -> None:
    hour = tree / "2026-12-02" / "05"
    fd, size = open_chunk(tree, ("2026-12-02", "05", "srv2_2026-12-02_05-00.jsonl"), LIMIT)
    os.close(fd)
    assert size == 22
    os.mkfifo(hour / "fifo")
    (hour / "zero").symlink_to("/dev/zero")
    os.link(tmp_path / "outside" / "05" / NAME, hour / "linked")
    (hour / "big").write_bytes(b"x")
    os.truncate(hour / "big", LIMIT + 1)
    here = os.getcwd()
    os.chdir(hour)
    try:
        with socket.socket(socket.AF_UNIX) as server:
            server.bind("sock")
    finally:
        os.chdir(here)
    started = time.monotonic()
    for name, reason in (("fifo", "a FIFO"), ("zero", "a symbolic link"), ("sock", "a socket"),
                         ("linked", "a hard link (2 links)"),
                         ("big", f"{LIMIT + 1} bytes, more than the limit of 512 MiB "
                                 "(max_chunk_mb)")):
        with pytest.raises(UnsafeEntry) as refused:
            open_chunk(tree, ("2026-12-02", "05", name), LIMIT)
        assert refused.value.reason == reason
        assert refused.value.inode == (hour / name).lstat().st_ino  # what to quarantine
    assert time.monotonic() - started < 5


def test_no_primitive_goes_through_a_folder_link(tree: Path, tmp_path: Path) -> None:
    """A day folder replaced by a link to elsewhere after the scan: opening, moving or
    removing a chunk below it fails instead of reaching the other side."""
    (tree / "2026-12-04").symlink_to(tmp_path / "outside")
    parts = ("2026-12-04", "05", NAME)
    with pytest.raises(EntryChanged):
        open_chunk(tree, parts, LIMIT)
    with pytest.raises(EntryChanged):
        remove_entry(tree, parts)
    outside = tmp_path / "outside" / "05" / NAME
    info = outside.lstat()
    with pytest.raises(EntryChanged):
        move_entry(tree, Entry(parts, info.st_dev, info.st_ino), tmp_path / "moved")
    assert outside.read_bytes() == b"secret\n"


def test_move_entry_moves_the_link_itself_and_only_the_inode_that_was_seen(
        tree: Path, tmp_path: Path) -> None:
    hour = tree / "2026-12-02" / "05"
    (hour / NAME).symlink_to(tmp_path / "outside" / "05" / NAME)
    seen = entry_of(tree, "2026-12-02", "05", NAME)
    move_entry(tree, seen, tmp_path / "q")
    assert os.readlink(tmp_path / "q") == str(tmp_path / "outside" / "05" / NAME)
    assert (tmp_path / "outside" / "05" / NAME).read_bytes() == b"secret\n"
    # The same name now holds another file (the link, still alive in `q`, keeps its inode
    # from being reused): not the inode seen, so it is not moved.
    (hour / NAME).write_bytes(b"{}\n")
    with pytest.raises(EntryChanged):
        move_entry(tree, seen, tmp_path / "q2")
    assert (hour / NAME).read_bytes() == b"{}\n" and not (tmp_path / "q2").exists()


def test_read_at_most_reads_no_more_than_asked(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert read_at_most(fd, 4) == b"0123"
        assert read_at_most(fd, 100) == b"0123456789"
    finally:
        os.close(fd)


def test_iter_closed_chunks_does_not_follow_links(tree: Path, tmp_path: Path) -> None:
    (tree / "2026-12-05").symlink_to(tmp_path / "outside")  # 05/NAME behind it
    (tree / "2026-12-02" / "05" / "srv2_2026-12-02_05-01.jsonl").symlink_to("/dev/zero")
    assert [c.path.name for c in iter_closed_chunks(tree)] == ["srv2_2026-12-02_05-00.jsonl"]


def test_quarantine_stamp_is_utc() -> None:
    from collector.process.quarantine import Quarantine

    assert Quarantine(datetime(2026, 12, 2, 6, 15, 2, tzinfo=UTC)).stamp == "20261202T061502Z"
