"""Raw chunks removed `raw_retention_days` after their hour, a whole hour at a time."""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime, timedelta

from collector.layout import HourKey, hour_bounds
from collector.process.ledger import ProcessLedger
from collector.process.scan import ChunkFile
from collector.settings import Settings
from collector.tree import (
    EntryChanged,
    remove_entry,
)

log = logging.getLogger("collector.process")


# ---- retention -------------------------------------------------------------------------------

def prune_old_chunks(scan: dict[HourKey, list[ChunkFile]], ledger: ProcessLedger,
                     settings: Settings, now: datetime) -> int:
    """Remove the chunks of processed hours older than `raw_retention_days`; count hours."""
    keep_after = now - timedelta(days=settings.raw_retention_days)
    pruned = 0
    for hour, chunks in sorted(scan.items()):
        _, end = hour_bounds(hour, settings.timezone)
        if end > keep_after or str(hour) not in ledger.hours:
            continue
        if not ledger.is_pruned(hour) and not ledger.is_current(hour, chunks):
            continue  # late chunks not merged yet (e.g. this run failed first): keep them
        if ledger.is_pruned(hour):
            log.warning("removing %d chunks that arrived for %s after its raw chunks were "
                        "removed; they cannot be merged completely any more", len(chunks), hour)
        # Removed through folder descriptors: a folder swapped for a link meanwhile cannot
        # make retention remove anything outside the chunk tree.
        for chunk in chunks:
            with contextlib.suppress(FileNotFoundError, EntryChanged):
                remove_entry(chunk.folder.root, chunk.entry.parts)
        for folder, parts in {(chunk.folder, chunk.entry.parts[:-1]) for chunk in chunks}:
            with contextlib.suppress(OSError, EntryChanged):
                remove_entry(folder.root, parts, folder=True)  # only when empty
                remove_entry(folder.root, parts[:-1], folder=True)
        ledger.hours[str(hour)] = {"pruned": True}
        pruned += 1
    return pruned
