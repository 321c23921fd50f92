"""Retention of the second copies: which kept chunks and replica chunks may go, and the
deletions themselves (never outside the tree, never a file that changed)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest

from collector.layout import HourKey
from collector.transfer.retention import (
    HeldChunk,
    delete_kept_chunks,
    held_replica_chunks,
    hour_expired,
    plan_kept_deletions,
    plan_replica_deletions,
    prune_replica_store,
)
from tests.unit.helpers import stamp

UTC_ZONE = ZoneInfo("UTC")
CET = ZoneInfo("CET")
NOW = datetime(2026, 12, 10, 12, 0, tzinfo=UTC)
DAYS = 7
MAX = 1 << 20


def write(path: Path, content: bytes = b"{}\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


# ---- planning ---------------------------------------------------------------------------------


def test_an_hour_expires_exactly_retention_days_after_it_ended() -> None:
    hour = HourKey("2026-12-03", "11")  # ends 12:00 UTC
    assert hour_expired(hour, UTC_ZONE, DAYS, NOW)
    assert not hour_expired(hour, UTC_ZONE, DAYS, NOW - timedelta(microseconds=1))
    assert not hour_expired(HourKey("2026-12-03", "12"), UTC_ZONE, DAYS, NOW)


def test_the_repeated_hour_of_a_fall_back_day_ends_an_hour_later() -> None:
    # CET: 02:00-02:59 CEST (00:00 UTC), then 02:00b-02:59b CET (01:00 UTC).
    first, repeated = HourKey("2026-10-25", "02"), HourKey("2026-10-25", "02b")
    at = datetime(2026, 11, 1, 1, 30, tzinfo=UTC)  # 7 days after 01:00 UTC, before 02:00 UTC
    assert hour_expired(first, CET, DAYS, at)
    assert not hour_expired(repeated, CET, DAYS, at)


def test_kept_chunks_go_only_when_confirmed_as_they_are_and_past_retention() -> None:
    old = "2026-12-02/10/srv2_2026-12-02_10-00.jsonl"
    recent = "2026-12-03/12/srv2_2026-12-03_12-00.jsonl"
    changed = "2026-12-02/10/srv2_2026-12-02_10-01.jsonl"
    gone = "2026-12-02/10/srv2_2026-12-02_10-02.jsonl"
    unconfirmed = "2026-12-02/10/srv2_2026-12-02_10-03.jsonl"
    odd = "2026-12-02/10/notes.txt"
    confirmed = {old: (10, 1), recent: (10, 2), changed: (10, 3), gone: (10, 4), odd: (1, 1)}
    present = {old: (10, 1), recent: (10, 2), changed: (11, 3), unconfirmed: (10, 5),
               odd: (1, 1)}
    assert plan_kept_deletions(confirmed, present, UTC_ZONE, DAYS, NOW) == [old]
    assert plan_kept_deletions({}, present, UTC_ZONE, DAYS, NOW) == []


def held(server: str, day: str, hour: str, minute: int, size: int = 3) -> HeldChunk:
    return HeldChunk(server, (day, hour, f"{server}_{day}_{hour}-{minute:02d}.jsonl"), size)


def test_replica_chunks_go_when_the_main_merged_or_pruned_their_hour() -> None:
    merged = held("srv1", "2026-12-02", "10", 0)
    other_size = held("srv1", "2026-12-02", "10", 1, size=4)
    not_merged = held("srv1", "2026-12-02", "10", 2)
    pruned = held("srv9", "2026-12-02", "11", 0)
    unknown_hour = held("srv1", "2026-12-02", "09", 0)
    recent = held("srv1", "2026-12-03", "12", 0)
    odd_entry = held("srv1", "2026-12-02", "08", 0)
    ledger = {
        "2026-12-02T10": {"chunks": {merged.ledger_key: 3, other_size.ledger_key: 3},
                          "processed_at": "x"},
        "2026-12-02T11": {"pruned": True},
        "2026-12-03T12": {"chunks": {recent.ledger_key: 3}, "processed_at": "x"},
        "2026-12-02T08": "garbage",
    }
    everything = [merged, other_size, not_merged, pruned, unknown_hour, recent, odd_entry]
    assert plan_replica_deletions(everything, ledger, UTC_ZONE, DAYS, NOW) == [merged, pruned]
    assert merged.ledger_key == "srv1/srv1_2026-12-02_10-00.jsonl"


# ---- the replica store ------------------------------------------------------------------------


def test_only_real_chunks_of_the_store_are_listed(tmp_path: Path) -> None:
    chunks = tmp_path / "replica" / "chunks"
    good = write(chunks / "srv1" / "2026-12-02" / "10" / "srv1_2026-12-02_10-00.jsonl")
    write(chunks / "srv1" / "2026-12-02" / "10" / "srv2_2026-12-02_10-00.jsonl")  # not srv1's
    write(chunks / "srv1" / "2026-12-02" / "10" / "notes.txt")
    write(chunks / "srv1" / "2026-12-02" / "10" / ".srv1_2026-12-02_10-01.jsonl.AbC123")
    os.symlink("/etc/passwd", chunks / "srv1" / "2026-12-02" / "10" /
               "srv1_2026-12-02_10-02.jsonl")
    write(chunks / ".hidden" / "2026-12-02" / "10" / ".hidden_2026-12-02_10-00.jsonl")
    outside = tmp_path / "outside"
    write(outside / "2026-12-02" / "10" / "srv3_2026-12-02_10-00.jsonl")
    os.symlink(outside, chunks / "srv3")  # a linked server folder is not walked
    found = held_replica_chunks(tmp_path / "replica", MAX)
    assert found == [HeldChunk("srv1", ("2026-12-02", "10", good.name), 3)]
    assert held_replica_chunks(tmp_path / "missing", MAX) == []


def test_prune_removes_planned_chunks_and_emptied_folders_never_the_vault(
        tmp_path: Path) -> None:
    replica = tmp_path / "replica"
    chunks = replica / "chunks"
    doomed = write(chunks / "srv1" / "2026-12-02" / "10" / "srv1_2026-12-02_10-00.jsonl")
    kept = write(chunks / "srv1" / "2026-12-02" / "11" / "srv1_2026-12-02_11-00.jsonl")
    vault = write(replica / "vault" / "2026-12-02" / "2026-12-02_10_IDs.txt.xz", b"ids")
    assert prune_replica_store(replica, UTC_ZONE, DAYS, MAX, NOW) == 0  # no ledger: nothing
    write(replica / "state" / "process_ledger.json", orjson.dumps({"version": 1, "hours": {
        "2026-12-02T10": {"chunks": {f"srv1/{doomed.name}": 3}, "processed_at": "x"},
        "2026-12-02T11": {"chunks": {}, "processed_at": "x"}}}))

    assert prune_replica_store(replica, UTC_ZONE, DAYS, MAX, NOW) == 1

    assert not doomed.exists() and not doomed.parent.exists()
    assert kept.exists() and vault.read_bytes() == b"ids"
    assert (chunks / "srv1").is_dir()


def test_an_unreadable_ledger_removes_nothing(tmp_path: Path) -> None:
    replica = tmp_path / "replica"
    chunk = write(replica / "chunks" / "srv1" / "2026-12-02" / "10" /
                  "srv1_2026-12-02_10-00.jsonl")
    write(replica / "state" / "process_ledger.json", b"{not json")
    assert prune_replica_store(replica, UTC_ZONE, DAYS, MAX, NOW) == 0
    assert chunk.exists()


# ---- deleting kept chunks ---------------------------------------------------------------------


def test_delete_kept_chunks_keeps_a_changed_file_and_never_follows_a_link(
        tmp_path: Path) -> None:
    root = tmp_path / "data"
    same = write(root / "2026-12-02" / "10" / "srv2_2026-12-02_10-00.jsonl")
    changed = write(root / "2026-12-02" / "10" / "srv2_2026-12-02_10-01.jsonl")
    confirmed = {"2026-12-02/10/" + same.name: stamp(same),
                 "2026-12-02/10/" + changed.name: stamp(changed)}
    changed.write_bytes(b"{}\n{}\n")
    outside = write(tmp_path / "outside" / "10" / "srv2_2026-12-02_11-00.jsonl")
    os.symlink(tmp_path / "outside", root / "2026-12-03")
    confirmed["2026-12-03/10/" + outside.name] = stamp(outside)

    deleted = delete_kept_chunks(root, sorted(confirmed), confirmed)

    assert deleted == ["2026-12-02/10/" + same.name]
    assert not same.exists() and changed.exists() and outside.exists()


@pytest.mark.parametrize("name", ["2026-12-02/10/gone.jsonl", "2026-12-02/10/x"])
def test_delete_kept_chunks_skips_what_is_gone(tmp_path: Path, name: str) -> None:
    assert delete_kept_chunks(tmp_path, [name], {name: (1, 1)}) == []
