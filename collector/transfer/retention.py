"""When a second copy may go: kept sent chunks on a secondary, and the replica store.

Two copies of every captured line live on two hosts until it is published (docs/replication.md).
Two kinds of copies are therefore only ever removed here, both from a secondary's hourly
`send`, and both by the same rule the main's own retention follows (`process.
prune_old_chunks`): the chunk's hour ended more than `raw_retention_days` ago AND the other
copy is known to be safe.

* **Kept chunks** (`data_storage_dst`): a chunk `send` pushed is kept here until its hour is
  past retention and the CURRENT main confirmed it byte-identical and durable (the send
  ledger, `collector.transfer.rsync.ConfirmedLedger`, keyed by the main's label). Until then this is
  one of its two copies; after a main swap the ledger of the old main counts for nothing.
* **The replica store** (`replica_dst/chunks/<server_id>/`): what the main replicated here
  (its own chunks, departed servers' chunks). A chunk of hour X is removed once X is past
  retention and the replicated ledger (`replica_dst/state/process_ledger.json`) says X was
  pruned on the main, or merged with exactly this chunk (same key and size): a chunk the
  main never merged stays, since after a promotion it is still needed. The vault copy
  (`replica_dst/vault/`) is never removed: it is the second copy of what was published.

Planning is pure (given listings, ledgers and a clock); the deletions walk the trees through
folder descriptors (`collector.tree.remove_entry`), so a link planted in a tree cannot make
retention remove anything outside it, and a file that changed since it was confirmed is kept.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from collector.layout import SERVER_ID, HourKey, hour_bounds, parse_chunk
from collector.transfer.rsync import Stamp, file_stamp
from collector.tree import EntryChanged, remove_entry, scan_tree

log = logging.getLogger("collector.retention")

# The replica tree under `replica_dst` (the role creates the three folders).
CHUNKS_DIR = "chunks"
VAULT_DIR = "vault"
STATE_DIR = "state"
REPLICA_LEDGER = "process_ledger.json"


# ---- planning (pure) -----------------------------------------------------------------------


def hour_expired(hour: HourKey, zone: ZoneInfo, retention_days: int, now: datetime) -> bool:
    """True when `hour` ended `retention_days` or more before `now` (process's rule too)."""
    _, end = hour_bounds(hour, zone)
    return end <= now - timedelta(days=retention_days)


def relative_hour(relative: str) -> HourKey | None:
    """The hour of a chunk path `day/HH/name` (from its name), None if it is no chunk."""
    chunk = parse_chunk(Path(relative))
    return None if chunk is None else chunk.hour


def plan_kept_deletions(confirmed: Mapping[str, Stamp], present: Mapping[str, Stamp],
                        zone: ZoneInfo, retention_days: int, now: datetime) -> list[str]:
    """Kept chunks (`day/HH/name`) a secondary may delete now, sorted.

    Only those present here as they were confirmed on the current main (same size and mtime)
    and whose hour is past retention; everything else stays, whatever its age.
    """
    doomed = []
    for name, stamp in confirmed.items():
        hour = relative_hour(name)
        if (hour is not None and present.get(name) == stamp
                and hour_expired(hour, zone, retention_days, now)):
            doomed.append(name)
    return sorted(doomed)


@dataclass(frozen=True)
class HeldChunk:
    """One chunk of the replica store: `chunks/<server_id>/<day>/<HH>/<name>`."""

    server_id: str
    parts: tuple[str, ...]  # (day, HH, name) below chunks/<server_id>
    size: int

    @property
    def hour(self) -> HourKey:
        return HourKey(self.parts[0], self.parts[1])

    @property
    def ledger_key(self) -> str:
        """How the main's process ledger names this chunk (`ProcessLedger.record`)."""
        return f"{self.server_id}/{self.parts[-1]}"


def plan_replica_deletions(held: Iterable[HeldChunk], ledger_hours: Mapping[str, Any],
                           zone: ZoneInfo, retention_days: int,
                           now: datetime) -> list[HeldChunk]:
    """Replica chunks whose hour is past retention and that the main no longer needs.

    `ledger_hours` is the replicated ledger's `hours`: an hour marked pruned lets all its
    chunks go; a processed hour lets go the chunks it was merged from (same key and size).
    A stale ledger (the main died) only keeps more, never less.
    """
    doomed = []
    for chunk in held:
        entry = ledger_hours.get(str(chunk.hour))
        if not isinstance(entry, dict) or not hour_expired(chunk.hour, zone, retention_days,
                                                           now):
            continue
        merged = entry.get("chunks")
        if entry.get("pruned") or (isinstance(merged, dict)
                                   and merged.get(chunk.ledger_key) == chunk.size):
            doomed.append(chunk)
    return doomed


# ---- reading the replica store ---------------------------------------------------------------


def replica_server_ids(replica_dst: Path) -> list[str]:
    """The server folders under `replica_dst/chunks` (real folders, well named), sorted."""
    try:
        with os.scandir(replica_dst / CHUNKS_DIR) as entries:
            names = [entry.name for entry in entries if entry.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(name for name in names if SERVER_ID.match(name))


def held_replica_chunks(replica_dst: Path, max_bytes: int) -> list[HeldChunk]:
    """Every chunk of the replica store, through the safe walk (`layout.scan_tree`).

    Whatever else the main's key left there (links, misnamed or oversized entries) is not a
    chunk: never listed, never opened, never removed here. An unreadable server folder is
    logged and skipped: it must not stop the secondary's own `send`.
    """
    held = []
    for server_id in replica_server_ids(replica_dst):
        root = replica_dst / CHUNKS_DIR / server_id
        try:
            tree = scan_tree(root, server_id, max_bytes)
        except OSError as error:
            log.warning("cannot read the replica chunks under %s: %s", root,
                        os.strerror(error.errno or 0))
            continue
        held += [HeldChunk(server_id, found.entry.parts, found.size) for found in tree.chunks]
    return held


def replica_ledger_path(replica_dst: Path) -> Path:
    return replica_dst / STATE_DIR / REPLICA_LEDGER


# ---- deleting --------------------------------------------------------------------------------


def delete_kept_chunks(root: Path, names: Iterable[str],
                       confirmed: Mapping[str, Stamp]) -> list[str]:
    """Delete kept chunks `day/HH/name` under `root` that still look as confirmed.

    Returns the names deleted. A chunk that changed since (size or mtime) is kept: what the
    main holds would not be this file any more.
    """
    deleted = []
    for name in names:
        parts = tuple(name.split("/"))
        if file_stamp(root.joinpath(*parts)) != confirmed.get(name):
            log.warning("%s changed since the main confirmed it; kept", name)
            continue
        try:
            remove_entry(root, parts)
        except (FileNotFoundError, EntryChanged):
            continue
        deleted.append(name)
    return deleted


def delete_replica_chunks(replica_dst: Path, doomed: Iterable[HeldChunk]) -> int:
    """Remove planned replica chunks (and their emptied hour and day folders); count files."""
    removed = 0
    folders: set[tuple[str, tuple[str, ...]]] = set()
    for chunk in doomed:
        root = replica_dst / CHUNKS_DIR / chunk.server_id
        try:
            remove_entry(root, chunk.parts)
        except (FileNotFoundError, EntryChanged):
            continue
        except OSError as error:
            log.warning("cannot remove replica chunk %s/%s: %s", chunk.server_id,
                        "/".join(chunk.parts), os.strerror(error.errno or 0))
            continue
        removed += 1
        folders.add((chunk.server_id, chunk.parts[:-1]))
    for server_id, parts in sorted(folders):
        root = replica_dst / CHUNKS_DIR / server_id
        with contextlib.suppress(OSError, EntryChanged):
            remove_entry(root, parts, folder=True)  # only when empty
            remove_entry(root, parts[:-1], folder=True)
    return removed


def prune_replica_store(replica_dst: Path, zone: ZoneInfo, retention_days: int,
                        max_bytes: int, now: datetime) -> int:
    """Apply replica retention under `replica_dst`; the number of chunks removed.

    Without a replicated ledger nothing is removed: nothing says the main merged anything.
    """
    from collector.process.ledger import ProcessLedger

    ledger_path = replica_ledger_path(replica_dst)
    if not ledger_path.is_file():
        return 0
    hours = ProcessLedger.load(ledger_path).hours
    held = held_replica_chunks(replica_dst, max_bytes)
    doomed = plan_replica_deletions(held, hours, zone, retention_days, now)
    removed = delete_replica_chunks(replica_dst, doomed)
    if removed:
        log.info("removed %d replica chunks of hours past retention that the main merged",
                 removed)
    return removed
