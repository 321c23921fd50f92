"""Which hours are due (pure, given the scan and the ledger).

Due: an hour whose end lies `process_grace_minutes` in the past and that has chunks the
ledger has not seen merged, or whose outputs went missing. Each hour depends on its own
chunks and on the previous hour's last `LOOKBACK_MINUTES` of chunks.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from collector.layout import CHUNK_NAME, HourKey, hour_bounds, hour_of
from collector.process.ledger import ProcessLedger
from collector.process.scan import ChunkFile
from collector.settings import Settings
from collector.sources import source_for

# ---- planning (pure given the scan) ----------------------------------------------------------

# How far back into the previous hour a repeated receipt is looked for: backfill reaches 5
# minutes back, plus delivery delay and clock differences between servers.
LOOKBACK_MINUTES = 10


def previous_hour(hour: HourKey, settings: Settings) -> HourKey:
    start, _ = hour_bounds(hour, settings.timezone)
    return hour_of(start - timedelta(minutes=1), settings.timezone)


def lookback_chunks(hour: HourKey, scan: dict[HourKey, list[ChunkFile]],
                    settings: Settings) -> list[ChunkFile]:
    """The previous hour's chunks of its last `LOOKBACK_MINUTES` (every server)."""
    return [chunk for chunk in scan.get(previous_hour(hour, settings), [])
            if chunk_minute(chunk.path) >= 60 - LOOKBACK_MINUTES]


def hour_inputs(hour: HourKey, scan: dict[HourKey, list[ChunkFile]],
                settings: Settings) -> list[ChunkFile]:
    """Every chunk an hour's outputs depend on: its own and the previous hour's tail."""
    return scan.get(hour, []) + lookback_chunks(hour, scan, settings)


def hour_exists(hour: HourKey, settings: Settings) -> bool:
    """False for the hour clocks skip in spring, or a `b` hour on a day without fall-back."""
    start, _ = hour_bounds(hour, settings.timezone)
    return hour_of(start, settings.timezone) == hour


def is_due(hour: HourKey, settings: Settings, now: datetime) -> bool:
    _, end = hour_bounds(hour, settings.timezone)
    return now >= end + timedelta(minutes=settings.process_grace_minutes)


def due_hours(scan: dict[HourKey, list[ChunkFile]], ledger: ProcessLedger, settings: Settings,
              now: datetime, vault: Path) -> list[HourKey]:
    """Hours that are due and have chunks not yet merged (or whose outputs went missing)."""
    source = source_for(settings)
    due = []
    for hour in sorted(scan):
        if not is_due(hour, settings, now) or ledger.is_pruned(hour):
            continue
        outputs_there = all(path.exists() for path in source.output_paths(vault, hour))
        if not outputs_there or not ledger.is_current(hour, hour_inputs(hour, scan, settings)):
            due.append(hour)
    return due


def chunk_minute(path: Path) -> int:
    match = CHUNK_NAME.match(path.name)
    return int(match["minute"]) if match else 0
