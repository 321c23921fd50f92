"""Where every server's chunks are on the main, and what the scan found there.

This host's own chunks and every secondary's incoming folder, in `servers` order, then the
incoming folders of departed servers, sorted: the merge's reading order, which decides ties.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from collector.errors import CollectorError
from collector.layout import SERVER_ID, HourKey
from collector.settings import Settings
from collector.sources import source_for
from collector.tree import (
    Entry,
    Rejected,
    scan_tree,
    shown,
)

log = logging.getLogger("collector.process")
# Beside the chunk folders (same filesystem, so a move is a rename) but outside every
# secondary's own folder, which is all its key can write to.
QUARANTINE_DIR = ".quarantine"


# ---- where the chunks are --------------------------------------------------------------------

@dataclass(frozen=True)
class ServerFolder:
    """Where one server's chunks are found on the main, and where its rejects go."""

    index: int
    server_id: str
    root: Path
    quarantine: Path
    own: bool = False  # the main's own data_storage_dst (its stream's `.part` files live there)


@dataclass(frozen=True)
class ChunkFile:
    folder: ServerFolder
    path: Path
    size: int  # as the scan saw it (lstat); the ledger records it
    entry: Entry  # path below the folder's root and inode, to open it without links

    @property
    def key(self) -> str:
        return f"{self.folder.server_id}/{self.path.name}"


def server_folders(settings: Settings) -> list[ServerFolder]:
    """This host's own chunks and every other server's incoming folder, in `servers` order,
    then the folders of departed servers (`departed_server_ids`, sorted).

    The order is the merge's reading order, which decides ties (collector.sources): servers
    first keeps every hour of a fleet that lost no host exactly as before; a departed
    server comes last because it is no longer in `servers`, and its chunks are still read
    exactly like a secondary's folder (they may have been written by anyone holding its
    key, or by the dead main's key as replicas).
    """
    found = []
    for index, server_id in enumerate(settings.servers):
        if server_id == settings.server_id:
            root = settings.data_storage_dst
            quarantine = settings.data_storage_dst / QUARANTINE_DIR / server_id
        else:
            assert settings.incoming_dst is not None  # required on the main
            root = settings.incoming_dst / server_id
            quarantine = settings.incoming_dst / QUARANTINE_DIR / server_id
        found.append(ServerFolder(index, server_id, root, quarantine,
                            own=server_id == settings.server_id))
    for server_id in departed_server_ids(settings):
        assert settings.incoming_dst is not None  # departed_server_ids found it there
        found.append(ServerFolder(len(found), server_id, settings.incoming_dst / server_id,
                            settings.incoming_dst / QUARANTINE_DIR / server_id))
    limit = source_for(settings).max_servers
    if len(found) > limit:
        raise CollectorError(f"{len(found)} servers to merge (servers and departed folders in "
                             f"{settings.incoming_dst}); at most {limit} are supported")
    return found


def folder_ids(folders: list[ServerFolder]) -> tuple[str, ...]:
    """The server ids by merge index: the names of the index's server bits."""
    return tuple(folder.server_id for folder in folders)


def departed_server_ids(settings: Settings) -> list[str]:
    """Servers no longer in `servers` whose incoming folder on this main still exists, sorted.

    A host removed from the fleet (destroyed, or retired) leaves chunks here until retention
    removes them: they are still merged (an hour is never published with fewer ids than
    before) and replicated like the main's own (`collector.transfer.replicate`), since the host that
    held the other copy is gone. Dot folders (`.quarantine`) are never a server's.
    """
    if settings.incoming_dst is None:
        return []
    try:
        names = [entry.name for entry in os.scandir(settings.incoming_dst)
                 if entry.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []
    return sorted(name for name in names
                  if SERVER_ID.match(name) and name not in settings.servers)


@dataclass
class Scan:
    """What the chunk folders hold: chunks by hour, and the entries to quarantine."""

    hours: dict[HourKey, list[ChunkFile]] = field(default_factory=dict)
    rejected: list[tuple[ServerFolder, Rejected]] = field(default_factory=list)


def scan_folders(folders: list[ServerFolder], max_bytes: int) -> Scan:
    """Every closed chunk by hour (per hour in server order, then name order) and every
    entry that is not one; reads nothing but folder listings and moves nothing.

    A server that never pushed has no folder: nothing to merge. A folder's root that exists
    but cannot be read is an error, not an empty folder (skipping it would publish hours
    without that server); anything below the root that is wrong is a reject instead, so it
    cannot stop the other hours (collector.tree.scan_tree).
    """
    scan = Scan()
    for folder in folders:
        try:
            tree = scan_tree(folder.root, folder.server_id, max_bytes, own=folder.own)
        except OSError as error:
            raise CollectorError(f"cannot read the chunks of {folder.server_id} under "
                                 f"{folder.root}: {os.strerror(error.errno or 0)}") from None
        for found in tree.chunks:
            scan.hours.setdefault(found.chunk.hour, []).append(
                ChunkFile(folder, found.chunk.path, found.size, found.entry))
        scan.rejected += [(folder, rejected) for rejected in tree.rejected]
        for relative in tree.changed:
            log.warning("%s entry %s changed while it was scanned; the next run looks at it "
                        "again", folder.server_id, shown(relative))
    for chunks in scan.hours.values():
        chunks.sort(key=lambda c: (c.folder.index, c.path.name))
    return scan


# ---- quarantine ------------------------------------------------------------------------------

