"""`collector adopt` and the promotion's data path, in process: real chunk files, a replica
tree laid out as `collector replicate` leaves it, real links, FIFOs and hard links.

The promotion test builds a fleet in tmp_path: the main srv1 processes and publishes, its
replicas land on srv2, srv1 is destroyed, srv2 becomes the main (servers srv2,srv3), adopts
and processes; every hour published before is byte-identical and the hour srv1 died in is
merged from everything the survivors hold.
"""

from __future__ import annotations

import hashlib
import logging
import lzma
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import orjson
import pytest

import collector.transfer.adopt
from collector.errors import CollectorError, DiskFullError, LockedError, SettingsError
from collector.layout import CHUNK_NAME, HourKey, chunk_path
from collector.process.ledger import LEDGER_NAME
from collector.process.run import process, process_lock
from collector.settings import Settings, load_settings
from collector.sources.x import X_SOURCE
from collector.transfer.adopt import AdoptResult, adopt
from tests.doubles.samples import MessageFactory
from tests.integration.helpers import REPO_ROOT, snapshot, vault
from tests.integration.test_process import (
    CET,
    HOUR,
    HOUR_START,
    assert_matches,
    fill_hour,
    hostile,
    read_outputs,
    stream_line,
)

pytestmark = pytest.mark.integration

DAY = HOUR.day
HostMaker = Callable[..., Settings]


@pytest.fixture
def make_host(tmp_path: Path, write_settings: Callable[..., Path]) -> HostMaker:
    """Settings of one host with its own folders under tmp_path/<name>."""

    def make(name: str, server_id: str, servers: str, role: str = "main",
             **overrides: str | None) -> Settings:
        root = tmp_path / name
        values: dict[str, str | None] = {
            "role": role, "server_id": server_id, "servers": servers,
            "data_storage_dst": str(root / "data"), "replica_dst": str(root / "replica"),
            "osf_enabled": "False", "raw_retention_days": "3650"}
        if role == "main":
            values.update(data_vault_dst=str(root / "vault"),
                          incoming_dst=str(root / "incoming"), main_host=None, main_user=None)
        values.update(overrides)
        return load_settings(write_settings(**values))

    return make


def replica(settings: Settings) -> Path:
    assert settings.replica_dst is not None
    return settings.replica_dst


def incoming(settings: Settings, server_id: str) -> Path:
    assert settings.incoming_dst is not None
    return settings.incoming_dst / server_id


def role_folders(settings: Settings) -> None:
    """What the role creates: the replica tree's folders, and an incoming folder for every
    `replica_dst/chunks/<id>` that is not this host's own."""
    for part in ("chunks", "vault", "state"):
        (replica(settings) / part).mkdir(parents=True, exist_ok=True)
    for folder in (replica(settings) / "chunks").iterdir():
        if folder.name != settings.server_id and folder.is_dir() and not folder.is_symlink():
            incoming(settings, folder.name).mkdir(parents=True, exist_ok=True)
    settings.data_storage_dst.mkdir(parents=True, exist_ok=True)


def cet_chunk(root: Path, server_id: str, minute: int, data: bytes) -> Path:
    """A chunk of hour 2026-02-03T10 (CET) of `server_id` below `root`."""
    path = chunk_path(root, server_id, HOUR_START + timedelta(minutes=minute), CET)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def lines(first: int, count: int = 3) -> bytes:
    factory = MessageFactory(base_time=HOUR_START)
    return b"".join(stream_line(factory.message(first + i), HOUR_START) for i in range(count))


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() or p.is_symlink())


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "collector.adopt" and r.levelno == logging.WARNING]


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="collector.adopt")


def infos(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "collector.adopt" and r.levelno == logging.INFO]


def ledger_bytes(hours: dict[str, object]) -> bytes:
    return orjson.dumps({"version": 1, "hours": hours}, option=orjson.OPT_SORT_KEYS)


def vault_files(root: Path, hour: HourKey, marker: bytes = b"") -> None:
    """The three outputs of `hour` and the day's report, as small stand-ins."""
    for path in X_SOURCE.output_paths(root, hour):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(lzma.compress(path.name.encode() + marker))
    (root / hour.day / f"{hour.day}_report.txt").write_text("hour\ttotal\n10\t3\n")


# ---- adopt: what moves where ------------------------------------------------------------------

def test_adopt_moves_chunks_vault_and_ledger_and_a_second_run_finds_nothing(
        make_host: HostMaker, caplog: pytest.LogCaptureFixture) -> None:
    host = make_host("b", "srv2", "srv2,srv3")
    tree = replica(host)
    old_main = [cet_chunk(tree / "chunks" / "srv1", "srv1", m, lines(m)) for m in (0, 1, 59)]
    departed = cet_chunk(tree / "chunks" / "srv4", "srv4", 7, lines(100))
    own = cet_chunk(tree / "chunks" / "srv2", "srv2", 3, lines(200))
    os.utime(old_main[0], ns=(1_000_000_000, 1_700_000_000_123_456_789))
    vault_files(tree / "vault", HOUR)
    day_files = sorted((tree / "vault" / DAY).iterdir())
    for number, path in enumerate(day_files):
        os.utime(path, ns=(1, 1_600_000_000_000_000_000 + number))
    # The ledger names 10 (outputs replicated) and 11 (outputs not in the replica: dropped),
    # and one malformed entry.
    ledger = {str(HOUR): {"chunks": {"srv1/" + old_main[0].name: old_main[0].stat().st_size},
                          "processed_at": "2026-02-03T10:15:00+00:00"},
              "2026-02-03T11": {"chunks": {}}, "2026-02-03T09": {"chunks": {"a": "x"}},
              "not an hour": {"pruned": True}}
    (tree / "state").mkdir(parents=True)
    (tree / "state" / LEDGER_NAME).write_bytes(ledger_bytes(ledger))
    role_folders(host)
    want = {path.name: path.read_bytes() for path in [*old_main, departed, own, *day_files]}
    mtimes = {path.name: path.stat().st_mtime_ns for path in [*old_main, *day_files]}

    result = adopt(host)

    assert dict(result.chunks) == {"srv1": 3, "srv2": 1, "srv4": 1}
    assert (result.vault_files, result.ledger, result.ledger_hours) == (4, "taken", 1)
    assert (result.conflicts, result.left, result.identical_chunks) == (0, 0, 0)
    moved = {**{p.name: p for p in (incoming(host, "srv1") / DAY).rglob("*.jsonl")},
             **{p.name: p for p in (incoming(host, "srv4") / DAY).rglob("*.jsonl")},
             **{p.name: p for p in (host.data_storage_dst / DAY).rglob("*.jsonl")},
             **{p.name: p for p in (vault(host) / DAY).iterdir()}}
    assert {name: path.read_bytes() for name, path in moved.items()} == want
    assert {name: moved[name].stat().st_mtime_ns for name in mtimes} == mtimes
    assert orjson.loads((host.state_dir / LEDGER_NAME).read_bytes()) == {
        "version": 1, "hours": {str(HOUR): ledger[str(HOUR)]}}
    # The replica tree keeps its folders, nothing else.
    assert sorted(str(p.relative_to(tree)) for p in tree.rglob("*")) == [
        "chunks", "state", "vault"]
    assert infos(caplog)[-1] == (
        f"adopted from {tree}: 5 chunks (srv1 3, srv2 1, srv4 1), 4 vault files, the ledger "
        f"(1 hour); 0 identical copies removed, 0 conflicts (both kept), 0 entries left "
        f"in place")
    assert any("names 3 hours whose outputs are not in" in w for w in warnings(caplog))
    caplog.clear()
    again = adopt(host)
    assert not again.found_anything
    assert infos(caplog) == [f"nothing to adopt: {tree} holds no replica"]
    # What was adopted is merged like any chunk: the departed srv4 as a departed server.
    result_of_process = process(host, hour=HOUR, now=HOUR_START + timedelta(hours=3))
    assert result_of_process.hours[0].line.per_server == {
        "srv2": 3, "srv3": 0, "srv1": 7, "srv4": 3}


def test_identical_copies_are_removed_and_different_ones_kept_on_both_sides(
        make_host: HostMaker, caplog: pytest.LogCaptureFixture) -> None:
    host = make_host("b", "srv2", "srv2,srv3")
    tree = replica(host)
    role_folders(host)
    same = cet_chunk(tree / "chunks" / "srv1", "srv1", 0, lines(0))
    other = cet_chunk(tree / "chunks" / "srv1", "srv1", 1, lines(10))
    incoming(host, "srv1").mkdir(parents=True, exist_ok=True)
    cet_chunk(incoming(host, "srv1"), "srv1", 0, lines(0))
    local_other = cet_chunk(incoming(host, "srv1"), "srv1", 1, lines(20))
    vault_files(tree / "vault", HOUR)
    vault_files(vault(host), HOUR)
    report = vault(host) / DAY / f"{DAY}_report.txt"
    report.write_text("hour\ttotal\n10\t4\n")  # this main's own, different
    (host.state_dir).mkdir(parents=True, exist_ok=True)
    (host.state_dir / LEDGER_NAME).write_bytes(ledger_bytes({}))
    (tree / "state" / LEDGER_NAME).write_bytes(ledger_bytes({str(HOUR): {"pruned": True}}))

    result = adopt(host)

    assert (result.identical_chunks, result.identical_vault_files) == (1, 3)
    assert (result.conflicts, result.ledger, sum(result.chunks.values())) == (2, "kept", 0)
    assert not same.exists() and other.exists()
    assert local_other.read_bytes() == lines(20)
    assert report.read_text() == "hour\ttotal\n10\t4\n"
    assert files_under(tree) == [f"chunks/srv1/{DAY}/10/{other.name}", "state/" + LEDGER_NAME,
                                 f"vault/{DAY}/{DAY}_report.txt"]
    assert orjson.loads((host.state_dir / LEDGER_NAME).read_bytes())["hours"] == {}
    conflicts = [w for w in warnings(caplog) if w.startswith("conflict:")]
    assert conflicts == [
        f"conflict: chunks/srv1/{DAY}/10/{other.name} differs from "
        f"{incoming(host, 'srv1')}/{DAY}/10/{other.name}; both kept (the local one is used)",
        f"conflict: vault/{DAY}/{DAY}_report.txt differs from {vault(host)}/{DAY}/"
        f"{DAY}_report.txt; both kept (the local one is used)"]
    # Idempotent: the same conflicts, nothing else.
    again = adopt(host)
    assert (again.conflicts, again.identical_chunks, sum(again.chunks.values())) == (2, 0, 0)


def test_a_missing_incoming_folder_stops_before_anything_moves(
        make_host: HostMaker) -> None:
    host = make_host("b", "srv2", "srv2,srv3")
    tree = replica(host)
    role_folders(host)
    cet_chunk(tree / "chunks" / "srv1", "srv1", 0, lines(0))
    incoming(host, "srv1").mkdir(parents=True)
    cet_chunk(tree / "chunks" / "srv5", "srv5", 0, lines(0))  # the role did not run for it
    vault_files(tree / "vault", HOUR)
    (tree / "chunks" / "srv6" / DAY / "10").mkdir(parents=True)  # emptied: no folder needed
    before = snapshot(tree)
    with pytest.raises(CollectorError, match=(
            rf"^{incoming(host, 'srv5')} does not exist \(the role creates incoming_dst/<id> "
            rf"for every {tree}/chunks/<id> before collector adopt runs\); nothing was "
            rf"adopted$")):
        adopt(host)
    assert snapshot(tree) == before
    assert not list(incoming(host, "srv1").iterdir())
    incoming(host, "srv5").mkdir()
    assert dict(adopt(host).chunks) == {"srv1": 1, "srv5": 1}
    assert not (tree / "chunks" / "srv6").exists()  # the emptied folder is tidied away


def test_only_a_main_adopts_and_nothing_to_adopt_is_one_line(
        make_host: HostMaker, caplog: pytest.LogCaptureFixture) -> None:
    secondary = make_host("s", "srv3", "srv2,srv3", role="secondary")
    with pytest.raises(SettingsError, match=r"collector adopt runs on the main .* this host "
                                            r"is a secondary"):
        adopt(secondary)
    unset = make_host("u", "srv2", "srv2,srv3", replica_dst=None)
    assert not adopt(unset).found_anything
    missing = make_host("m", "srv2", "srv2,srv3")
    adopt(missing)
    empty = make_host("e", "srv2", "srv2,srv3")
    role_folders(empty)
    adopt(empty)
    assert infos(caplog) == [
        "nothing to adopt: replica_dst is not set",
        f"nothing to adopt: {replica(missing)} does not exist",
        f"nothing to adopt: {replica(empty)} holds no replica"]


def test_adopt_waits_for_no_process_run(make_host: HostMaker) -> None:
    host = make_host("b", "srv2", "srv2,srv3")
    role_folders(host)
    with process_lock(host.state_dir), pytest.raises(LockedError):
        adopt(host)


# ---- adopt: a hostile replica tree ------------------------------------------------------------

def test_a_hostile_replica_tree_moves_nothing_but_chunks_and_touches_nothing_outside(
        make_host: HostMaker, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    host = make_host("b", "srv2", "srv2,srv3")
    tree = replica(host)
    outside = tmp_path / "outside"
    (outside / DAY / "10").mkdir(parents=True)
    secret = outside / "secret.txt"
    secret.write_text("not yours\n")
    planted = cet_chunk(outside, "srv1", 5, lines(50))  # a chunk-named file out there
    (outside / LEDGER_NAME).write_bytes(ledger_bytes({str(HOUR): {"pruned": True}}))
    chunks = tree / "chunks"
    good = cet_chunk(chunks / "srv1", "srv1", 0, lines(0))
    hour_dir = good.parent
    os.mkfifo(hour_dir / "srv1_2026-02-03_10-01.jsonl")
    (hour_dir / "srv1_2026-02-03_10-02.jsonl").symlink_to(planted)
    os.link(secret, hour_dir / "srv1_2026-02-03_10-03.jsonl")
    (hour_dir / "notes.txt").write_text("misnamed\n")
    (hour_dir / "srv9_2026-02-03_10-04.jsonl").write_bytes(lines(4))  # another server's
    (chunks / "srv1" / "2026-02-04").symlink_to(outside / DAY)  # a day folder as a link
    (chunks / "srv6").symlink_to(outside)  # a server folder as a link
    (chunks / "bad name!").mkdir()
    (chunks / "srv7").write_text("a file, not a folder\n")
    # srv4's day folder in this main's incoming is a link out (planted by a key that can
    # write there): its chunk must not land outside.
    srv4_chunk = cet_chunk(chunks / "srv4", "srv4", 9, lines(90))
    vault_day = tree / "vault" / DAY
    vault_day.mkdir(parents=True)
    (vault_day / f"{DAY}_10_IDs.txt.xz").write_bytes(lzma.compress(b"1\n"))
    (vault_day / f"{DAY}_11_IDs.txt.xz").symlink_to(secret)
    (vault_day / "passwd").write_text("misnamed\n")
    (vault_day / f"{DAY}_12_IDs.txt.xz").mkdir()
    (tree / "vault" / "2026-02-05").symlink_to(outside / DAY)
    (tree / "state").mkdir()
    (tree / "state" / LEDGER_NAME).symlink_to(outside / LEDGER_NAME)
    role_folders(host)
    incoming(host, "srv4").mkdir(parents=True, exist_ok=True)
    (incoming(host, "srv4") / DAY).symlink_to(outside / DAY)
    outside_before = snapshot(outside)

    result = adopt(host)

    assert snapshot(outside) == outside_before
    assert dict(result.chunks) == {"srv1": 1}
    assert (incoming(host, "srv1") / DAY / "10" / good.name).read_bytes() == lines(0)
    assert (result.vault_files, result.ledger) == (1, "none")
    assert srv4_chunk.exists()  # left: its destination folder is a link
    # No ledger to take: an empty one, so `process` knows the replica was adopted.
    assert orjson.loads((host.state_dir / LEDGER_NAME).read_bytes()) == {
        "version": 1, "hours": {}}
    assert files_under(incoming(host, "srv1")) == [f"{DAY}/10/{good.name}"]
    assert sorted(p.name for p in (vault(host) / DAY).iterdir()) == [f"{DAY}_10_IDs.txt.xz"]
    left = warnings(caplog)
    for expected in ("a FIFO", "a symbolic link", "a hard link (2 links)",
                     "not named like a chunk", "a chunk of srv9 in the folder of srv1",
                     "chunks/bad name!", "chunks/srv6", "chunks/srv7",
                     f"chunks/srv4/{DAY}/10", f"vault/{DAY}/passwd",
                     f"vault/{DAY}/{DAY}_11_IDs.txt.xz", f"vault/{DAY}/{DAY}_12_IDs.txt.xz",
                     "vault/2026-02-05", f"state/{LEDGER_NAME}"):
        assert any(expected in line for line in left), expected
    assert result.left == len(left)
    # Everything hostile is still where it was (left in place, never deleted).
    assert (hour_dir / "srv1_2026-02-03_10-02.jsonl").is_symlink()
    assert (hour_dir / "srv1_2026-02-03_10-03.jsonl").stat().st_nlink == 2


# ---- adopt: across filesystems ----------------------------------------------------------------

def test_across_filesystems_a_file_is_copied_durably_then_the_replica_removed(
        make_host: HostMaker, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rename between folders fails with EXDEV (as between two disks): the copy path."""
    host = make_host("b", "srv2", "srv2,srv3")
    tree = replica(host)
    chunk = cet_chunk(tree / "chunks" / "srv1", "srv1", 0, lines(0, 50))
    os.utime(chunk, ns=(5, 1_650_000_000_000_000_001))
    vault_files(tree / "vault", HOUR)
    role_folders(host)
    real = collector.transfer.adopt.rename_noreplace
    renames: list[str] = []

    def no_cross_device(source_fd: int, source: str, target_fd: int, target: str) -> None:
        renames.append(source)
        if source == target:  # from the replica folder straight to its destination
            raise OSError(18, os.strerror(18))  # EXDEV
        real(source_fd, source, target_fd, target)  # the temporary into place

    monkeypatch.setattr(collector.transfer.adopt, "rename_noreplace", no_cross_device)
    result = adopt(host)
    assert dict(result.chunks) == {"srv1": 1} and result.vault_files == 4
    target = incoming(host, "srv1") / DAY / "10" / chunk.name
    assert target.read_bytes() == lines(0, 50)
    assert target.stat().st_mtime_ns == 1_650_000_000_000_000_001
    assert not chunk.exists()
    assert all(".tmp-" not in p.name for p in target.parent.iterdir())
    assert any(".tmp-" in name for name in renames)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None,
                    reason="needs root to mount a tmpfs")
def test_a_replica_on_another_filesystem_is_adopted(make_host: HostMaker) -> None:
    host = make_host("b", "srv2", "srv2,srv3")
    tree = replica(host)
    tree.mkdir(parents=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(tree)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount tmpfs here")
    try:
        chunk = cet_chunk(tree / "chunks" / "srv1", "srv1", 0, lines(0, 20))
        vault_files(tree / "vault", HOUR)
        role_folders(host)
        result = adopt(host)
        assert dict(result.chunks) == {"srv1": 1} and result.vault_files == 4
        assert (incoming(host, "srv1") / DAY / "10" / chunk.name).read_bytes() \
            == lines(0, 20)
        assert files_under(tree) == []
    finally:
        subprocess.run(["umount", str(tree)], check=False)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None,
                    reason="needs root to mount a tmpfs")
def test_a_full_disk_stops_in_one_line_and_leaves_the_replica(
        make_host: HostMaker, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount tmpfs here")
    try:
        host = make_host("b", "srv2", "srv2,srv3", incoming_dst=str(small / "incoming"))
        tree = replica(host)
        chunk = cet_chunk(tree / "chunks" / "srv1", "srv1", 0, os.urandom(256 * 1024))
        role_folders(host)
        with pytest.raises(DiskFullError, match=f"^disk full while adopting chunks/srv1/{DAY}"
                                                f"/10/{chunk.name}; it is left in place$"):
            adopt(host)
        assert chunk.exists()
        assert files_under(small / "incoming") == []  # no temporary left behind
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_the_cli_refuses_on_a_secondary_in_one_line(make_host: HostMaker) -> None:
    secondary = make_host("s", "srv3", "srv2,srv3", role="secondary")
    done = subprocess.run([sys.executable, "-m", "collector", "--settings",
                           str(secondary.path), "adopt"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"collector adopt: error: {secondary.path}: collector adopt runs on the main "
        f"(role=main with data_vault_dst and incoming_dst); this host is a secondary"]


# ---- the promotion ------------------------------------------------------------------------------

def digests(settings: Settings, hours: list[HourKey]) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for hour in hours for path in X_SOURCE.output_paths(vault(settings), hour)}


def copy_tree(source: Path, target: Path, keep: Callable[[Path], bool] = lambda p: True) -> None:
    """Copy the day folders' files as rsync -a would (mtime kept); dot entries skipped."""
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if keep(path):
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / relative)


def test_promotion_publishes_every_hour_as_before_and_merges_the_hour_the_main_died_in(
        make_host: HostMaker, caplog: pytest.LogCaptureFixture) -> None:
    hours = [HourKey(DAY, f"{10 + h}") for h in range(4)]  # 10, 11, 12 published; 13 not
    a = make_host("a", "srv1", "srv1,srv2,srv3")
    for h in range(4):
        fill_hour(a, HOUR_START + timedelta(hours=h), tweets=60)
    # In 12, srv1 and srv2 receive some tweets in the same second: a tie that srv1 wins
    # while it is the first server, and srv2 once srv1 is departed (read last).
    tie = HOUR_START + timedelta(hours=2, minutes=40)
    factory = MessageFactory(base_time=tie)
    same = [stream_line(factory.message(i), tie) for i in range(20)]
    for server, root in (("srv1", a.data_storage_dst), ("srv2", incoming(a, "srv2"))):
        path = chunk_path(root, server, tie + timedelta(seconds=30), a.timezone,
                          mid_minute=True)
        path.write_bytes(b"".join(same))
    # srv1 processes 10-12 at 13:20 local time (12:20 UTC); 13 is not due yet.
    died = HOUR_START + timedelta(hours=3, minutes=40)
    result = process(a, now=HOUR_START + timedelta(hours=3, minutes=20))
    assert [r.hour for r in result.hours] == hours[:3]
    published = digests(a, hours[:3])
    report_before = read_outputs(vault(a), hours[0])["report"]

    # srv2's view when srv1 is gone: its own kept chunks, srv3's re-pushed ones, and the
    # replica of srv1's chunks (up to 13:30, its last replication), vault and ledger.
    b = make_host("b", "srv2", "srv2,srv3")
    copy_tree(incoming(a, "srv2"), b.data_storage_dst)
    copy_tree(incoming(a, "srv3"), incoming(b, "srv3"))
    replicated = HOUR_START + timedelta(hours=3, minutes=30)

    def replicated_before_death(path: Path) -> bool:
        """srv1's chunks up to 13:30, its last replication; those after never left it."""
        match = CHUNK_NAME.match(path.name)
        assert match is not None
        return (HourKey(match["day"], match["hour"]) < hours[3]
                or int(match["minute"]) < 30)

    copy_tree(a.data_storage_dst, replica(b) / "chunks" / "srv1", replicated_before_death)
    copy_tree(vault(a), replica(b) / "vault")
    (replica(b) / "state").mkdir(parents=True)
    shutil.copyfile(a.state_dir / LEDGER_NAME, replica(b) / "state" / LEDGER_NAME)
    role_folders(b)
    shutil.rmtree(a.data_storage_dst.parent)  # srv1's disk is gone for good
    assert died > replicated

    with pytest.raises(CollectorError, match="holds replicas this main has not adopted yet"):
        process(b, now=HOUR_START + timedelta(hours=4, minutes=20))
    assert not vault(b).exists()
    adopted = adopt(b)
    assert adopted.ledger == "taken" and adopted.conflicts == 0 and adopted.left == 0
    assert adopted.vault_files == 10  # 3 hours x 3 files and the day report
    caplog.clear()
    result = process(b, now=HOUR_START + timedelta(hours=4, minutes=20))
    assert [r.hour for r in result.hours] == [hours[3]]  # only what the copy lacked
    assert result.fewer_ids == []
    assert digests(b, hours[:3]) == published
    sources = [("srv2", b.data_storage_dst), ("srv3", incoming(b, "srv3")),
               ("srv1", incoming(b, "srv1"))]
    assert_matches(vault(b), hours[3], sources)
    thirteen = read_outputs(vault(b), hours[3])
    report = thirteen["report"]
    assert thirteen["report_header"][:5] == ["hour", "srv2", "srv3", "srv1", "total"]
    for hour in ("10", "11", "12"):  # the old main's lines, read by column name, unchanged
        assert {k: v for k, v in report[hour].items()} == report_before[hour]
    # Merging the published hours again under the new order changes no byte.
    for hour in hours[:3]:
        process(b, hour=hour, now=HOUR_START + timedelta(hours=4, minutes=20))
    assert digests(b, hours[:3]) == published
    # A late chunk of srv3 for 11 (srv1's chunks still there) only grows the hour.
    before = read_outputs(vault(b), hours[1])
    late = stream_line(hostile(9 * 10**18, "late from srv3"), HOUR_START + timedelta(hours=1))
    path = chunk_path(incoming(b, "srv3"), "srv3", HOUR_START + timedelta(hours=1, minutes=30),
                      b.timezone, mid_minute=True)
    path.write_bytes(late)
    result = process(b, now=HOUR_START + timedelta(hours=5))
    assert [r.hour for r in result.hours] == [hours[1]] and result.fewer_ids == []
    after = read_outputs(vault(b), hours[1])
    assert after["ids"] == sorted([*before["ids"], str(9 * 10**18)], key=int)
    assert [row for row in after["tweets"] if row[0] != str(9 * 10**18)] == before["tweets"]
    assert_matches(vault(b), hours[1], sources)


def test_adopt_result_summary_is_one_line() -> None:
    result = AdoptResult(Path("/srv/collector/replica"))
    result.chunks.update({"srv4": 2, "srv1": 10})
    result.identical_chunks = 1
    result.vault_files = 3
    result.ledger, result.ledger_hours = "kept", 0
    result.conflicts = 1
    result.left = 1
    assert result.summary() == (
        "adopted from /srv/collector/replica: 12 chunks (srv1 10, srv4 2), 3 vault files, not "
        "the ledger (this host has its own); 1 identical copy removed, 1 conflict (both "
        "kept), 1 entry left in place")
