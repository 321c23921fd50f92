"""The process ledger: what each merged hour was made from (`state_dir/process_ledger.json`).

Written after the outputs, so a crash in between only means the hour is merged again, with
byte-identical results; an unreadable ledger costs the same and nothing else.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from collector.clock import utc_now_text
from collector.fsutil import read_state, write_bytes_atomic
from collector.layout import HourKey
from collector.process.fewer_ids import FewerIds
from collector.process.scan import ChunkFile
from collector.settings import Settings

log = logging.getLogger("collector.process")

LEDGER_NAME = "process_ledger.json"


# ---- the ledger ------------------------------------------------------------------------------

@dataclass
class ProcessLedger:
    """What each processed hour was made from: {hour: {"chunks": {key: size}} or pruned};
    an hour whose outputs were kept by the fewer-ids guard also holds `fewer_ids`
    ({"published", "merged", "missing"} counts)."""

    path: Path
    hours: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> ProcessLedger:
        data = read_state(path, log, "its hours are merged again (the same bytes)")
        hours = data.get("hours") if isinstance(data, dict) else None
        if not isinstance(hours, dict):
            if data is not None:
                log.warning("ignoring malformed %s; its hours are merged again", path)
            return cls(path)
        return cls(path, hours)

    def save(self) -> None:
        write_bytes_atomic(self.path, orjson.dumps({"version": 1, "hours": self.hours},
                                                   option=orjson.OPT_SORT_KEYS))

    def is_current(self, hour: HourKey, chunks: list[ChunkFile]) -> bool:
        """True when every chunk present now was merged, with the same size."""
        entry = self.hours.get(str(hour))
        if entry is None:
            return False
        if entry.get("pruned"):
            return True
        merged = entry.get("chunks", {})
        return all(merged.get(chunk.key) == chunk.size for chunk in chunks)

    def is_pruned(self, hour: HourKey) -> bool:
        return bool(self.hours.get(str(hour), {}).get("pruned"))

    def record(self, hour: HourKey, chunks: list[ChunkFile],
               fewer_ids: FewerIds | None = None) -> None:
        """The hour was merged from `chunks`; with `fewer_ids`, its outputs were kept
        instead (`fewer_ids`: published, merged, missing counts), so the same chunks are
        not merged again (is_current) but any new or changed chunk is."""
        entry: dict[str, Any] = {
            "chunks": {chunk.key: chunk.size for chunk in chunks},
            "processed_at": utc_now_text(),
        }
        if fewer_ids is not None:
            entry["fewer_ids"] = fewer_ids.ledger_entry()
        self.hours[str(hour)] = entry


def unadopted_replica(settings: Settings) -> Path | None:
    """`replica_dst` when it holds something (chunks, vault files, a ledger) while this main
    has no ledger of its own yet: a host just promoted whose `collector adopt` has not run.

    Processing then would publish every hour from the survivors' chunks alone, without the
    old main's chunks and vault, and the vault copy adopted later would lose to those files
    (adopt keeps the local one). `collector adopt` always leaves a ledger behind once it
    found anything, so this only ever holds until it ran once.
    """
    if settings.replica_dst is None or os.path.lexists(settings.state_dir / LEDGER_NAME):
        return None
    for part in ("chunks", "vault", "state"):
        try:
            with os.scandir(settings.replica_dst / part) as entries:
                if any(not entry.name.startswith(".") for entry in entries):
                    return settings.replica_dst
        except OSError:
            continue  # missing or unreadable: adopt would find nothing there either
    return None
