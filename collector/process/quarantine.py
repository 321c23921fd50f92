"""The quarantine: what is no chunk is moved aside, never read and never deleted.

An entry of a chunk folder that breaks `collector.tree`'s rule is renamed into
`<root>/.quarantine/<server_id>/<path>.<time>`, logged one line, counted in the report's
`quarantined` column of the hour whose folder held it, and alerted.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from collector.errors import CollectorError
from collector.layout import HourKey, is_day_name, is_hour_name
from collector.process.scan import ServerFolder
from collector.report.day import update_report_cells
from collector.settings import Settings
from collector.sources import source_for
from collector.tree import (
    EntryChanged,
    Rejected,
    move_entry,
    shown,
)

log = logging.getLogger("collector.process")


def quarantine_name(name: str, stamp: str, attempt: int = 0) -> str:
    """`<name>.<stamp>[-<attempt>]`: the time keeps a second entry of the same name apart,
    and no quarantined entry can take the name of a day or hour folder there (pure)."""
    return f"{name}.{stamp}" + (f"-{attempt}" if attempt else "")


def entry_hour(parts: tuple[str, ...]) -> HourKey | None:
    """The hour whose folder held an entry (or that the entry is the folder of); None above
    the hour level (pure)."""
    if len(parts) >= 2 and is_day_name(parts[0]) and is_hour_name(parts[1]):
        return HourKey(parts[0], parts[1])
    return None


@dataclass(frozen=True)
class QuarantinedEntry:
    """One entry taken out of a chunk tree (or found there and impossible to move)."""

    server_id: str
    entry: str  # path below the server's chunk folder
    reason: str
    moved_to: Path | None  # None: it could not be moved; it stays and is never read
    hour: HourKey | None  # the hour whose folder held it


class Quarantine:
    """Moves rejected entries out of the chunk trees, logging one line for each.

    Never deletes: an entry is renamed (a link as a link) into the folder's quarantine
    folder under a name no one else uses. An entry that changed since it was looked at is
    left for the next run's scan to decide; one that cannot be moved (another filesystem,
    permissions) stays, is reported, and is never read.
    """

    def __init__(self, now: datetime) -> None:
        self.stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.entries: list[QuarantinedEntry] = []

    def take(self, folder: ServerFolder, rejected: Rejected) -> None:
        entry, where = rejected.entry, shown(rejected.entry.relative)
        reason = shown(rejected.reason)  # may quote a pushed name ("a chunk of <server>")
        moved_to: Path | None = None
        try:
            moved_to = self._free_destination(folder, entry.parts)
            move_entry(folder.root, entry, moved_to)
        except EntryChanged:
            log.warning("%s entry %s changed while it was checked; the next run looks at it "
                        "again", folder.server_id, where)
            return
        except OSError as error:
            log.warning("cannot quarantine %s entry %s (%s): %s; it stays and is not read",
                        folder.server_id, where, reason, os.strerror(error.errno or 0))
            moved_to = None
        else:
            log.warning("quarantined %s entry %s (%s): moved to %s", folder.server_id, where,
                        reason, shown(str(moved_to)))
        self.entries.append(QuarantinedEntry(folder.server_id, entry.relative, reason,
                                             moved_to, entry_hour(entry.parts)))

    def _free_destination(self, server: ServerFolder, parts: tuple[str, ...]) -> Path:
        # Each level 0700 (mkdir's `parents` would leave the upper ones at the umask's
        # mode): what is kept there is hostile, and only this account needs to go in.
        base = server.quarantine.parent  # `.quarantine`, beside the servers' folders
        folder = base.parent
        for part in (base.name, server.quarantine.name, *parts[:-1]):
            folder = folder / part
            folder.mkdir(mode=0o700, exist_ok=True)
        attempt = 0
        while os.path.lexists(folder / quarantine_name(parts[-1], self.stamp, attempt)):
            attempt += 1  # only this process (under the lock) writes here
        return folder / quarantine_name(parts[-1], self.stamp, attempt)


def quarantined_in_hour(folders: list[ServerFolder], hour: HourKey) -> int:
    """How many entries the quarantine folders hold from this hour's folders (any server):
    the report's `quarantined` count, so it survives the hour being processed again."""
    count = 0
    for folder in folders:
        day = folder.quarantine / hour.day
        for name, is_folder in _names(day):
            if name.startswith(f"{hour.hour}."):
                count += 1  # the hour folder itself (a link, an unreadable folder)
            elif name == hour.hour and is_folder:
                count += len(_names(day / name))
    return count


def quarantined_total(folders: list[ServerFolder]) -> int:
    """Every entry the quarantine folders hold (what `collector status` shows): the names
    with a time suffix, found without following links or entering a quarantined folder."""
    count = 0
    todo = [server.quarantine for server in folders]
    while todo:
        folder = todo.pop()
        for name, is_folder in _names(folder):
            if _STAMPED.search(name):
                count += 1
            elif is_folder:
                todo.append(folder / name)
    return count


_STAMPED = re.compile(r"\.\d{8}T\d{6}Z(?:-\d+)?$")


def _names(folder: Path) -> list[tuple[str, bool]]:
    """Entry names of a folder and whether each is a real folder (links not followed)."""
    try:
        with os.scandir(folder) as entries:
            return [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
    except (FileNotFoundError, NotADirectoryError):
        return []


def quarantine_alert(entries: list[QuarantinedEntry], limit: int = 20) -> tuple[str, str]:
    """Subject and body of the `entries_quarantined` alert (pure)."""
    first = entries[0]
    count = f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"
    subject = (f"{count} in the chunk folders quarantined, not read: {first.server_id} "
               f"{shown(first.entry)} ({first.reason})")
    if len(entries) > 1:
        subject += f" and {len(entries) - 1} more"
    lines = [f"- {e.server_id} {shown(e.entry)}: {e.reason}; "
             + (f"moved to {shown(str(e.moved_to))}" if e.moved_to is not None
                else "could not be moved: it stays, and is never read")
             for e in entries[:limit]]
    if len(entries) > limit:
        lines.append(f"- ... and {len(entries) - limit} more (one log line each)")
    body = "\n".join([
        "These entries in the chunk folders are not chunk files (a symlink, FIFO, socket,",
        "device, hard link, a file larger than max_chunk_mb, a misnamed file or an unreadable",
        "folder). Nothing was read from them; every other hour was processed as usual.",
        "", *lines, "",
        "Quarantine: incoming_dst/.quarantine/<server_id>/ (the main's own chunks:",
        "data_storage_dst/.quarantine/<server_id>/). Nothing there is ever deleted by the",
        "collector. A real chunk moved there by mistake goes back to its hour folder under",
        "its name without the time suffix; the next run merges it as a late chunk.",
    ])
    return subject, body


def recount_quarantined(entries: list[QuarantinedEntry], processed: set[HourKey],
                        folders: list[ServerFolder], settings: Settings, vault: Path) -> None:
    """Bring the `quarantined` cell of hours already in a report up to date when this run
    moved entries from their folders but did not process them (they had nothing new)."""
    for hour in sorted({e.hour for e in entries if e.hour and e.moved_to} - processed):
        counts = {"quarantined": quarantined_in_hour(folders, hour)}
        try:
            update_report_cells(vault / hour.day, hour.day, hour.hour, counts,
                                settings.servers, source_for(settings).report_columns)
        except (OSError, CollectorError) as error:  # the count is also in log and alert
            log.warning("cannot update the quarantined count of %s in its report: %s", hour,
                        error.strerror if isinstance(error, OSError) else error)
