"""Where chunks live and what they are called: the one place that maps time to file names.

Chunks are named after the wall-clock minute of receipt in the configured time zone:
`<root>/YYYY-mm-dd/HH/<server_id>_YYYY-mm-dd_HH-MM.jsonl`. Two cases need more than that:

* Clocks going back repeat an hour (02:00-02:59 happens twice on the last Sunday of October
  in CET). The second pass is labelled `HHb` (e.g. `02b`), so the two hours never share a
  file and both sort between `02` and `03`. The hour skipped in spring simply has no chunks.
* A chunk opened in the middle of a minute (the stream started or restarted) carries the
  second it was opened, `..._HH-MM-SS.jsonl`, so it can never overwrite a chunk of the same
  minute that an earlier run closed and perhaps already sent to the main.

Reading a tree someone else wrote is `collector.tree`'s job.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

PART_SUFFIX = ".part"
CHUNK_SUFFIX = ".jsonl"

_DAY = r"\d{4}-\d{2}-\d{2}"
_HOUR = r"\d{2}b?"
CHUNK_NAME = re.compile(
    rf"^(?P<server>.+)_(?P<day>{_DAY})_(?P<hour>{_HOUR})-(?P<minute>\d{{2}})"
    rf"(?:-(?P<second>\d{{2}}))?\.jsonl$"
)
HOUR_KEY = re.compile(rf"^(?P<day>{_DAY})T(?P<hour>{_HOUR})$")
# A server id as the role writes it (an inventory name): the only names of server folders in
# incoming_dst and a replica tree; anything else there is no server's folder.
SERVER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True, order=True)
class HourKey:
    """One processing unit: a wall-clock hour of a day, `02b` for a repeated hour."""

    day: str
    hour: str

    def __str__(self) -> str:
        return f"{self.day}T{self.hour}"

    @property
    def file_prefix(self) -> str:
        """Prefix of the hour's output files: `YYYY-mm-dd_HH`."""
        return f"{self.day}_{self.hour}"

    @classmethod
    def parse(cls, text: str) -> HourKey:
        """Parse `YYYY-mm-ddTHH` (or `...THHb`); raise ValueError otherwise."""
        match = HOUR_KEY.match(text)
        if not match:
            raise ValueError(f"{text!r} is not an hour like 2026-11-27T14")
        key = cls(match["day"], match["hour"])
        datetime.strptime(key.day, "%Y-%m-%d")  # rejects 2026-13-40
        if not 0 <= int(key.hour[:2]) <= 23:
            raise ValueError(f"{text!r} has no hour {key.hour[:2]}")
        return key


def hour_label(moment: datetime, zone: ZoneInfo) -> tuple[str, str]:
    """Day and hour label of an aware instant in `zone`: `('2026-10-25', '02b')` on a fold."""
    local = moment.astimezone(zone)
    label = f"{local.hour:02d}"
    if local.fold == 1 and _is_repeated(local, zone):
        label += "b"
    return local.strftime("%Y-%m-%d"), label


def _is_repeated(local: datetime, zone: ZoneInfo) -> bool:
    first = local.replace(fold=0)
    second = local.replace(fold=1)
    return first.utcoffset() != second.utcoffset()


def hour_of(moment: datetime, zone: ZoneInfo) -> HourKey:
    day, hour = hour_label(moment, zone)
    return HourKey(day, hour)


def hour_bounds(key: HourKey, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """UTC start and end of a labelled hour (end exclusive)."""
    naive = datetime.strptime(f"{key.day} {key.hour[:2]}", "%Y-%m-%d %H")
    fold = 1 if key.hour.endswith("b") else 0
    start = naive.replace(tzinfo=zone, fold=fold).astimezone(UTC)
    return start, start + timedelta(hours=1)


def chunk_filename(server_id: str, moment: datetime, zone: ZoneInfo, mid_minute: bool) -> str:
    """Name of the chunk that receives messages at `moment` (see module docstring)."""
    local = moment.astimezone(zone)
    day, hour = hour_label(moment, zone)
    name = f"{server_id}_{day}_{hour}-{local.minute:02d}"
    if mid_minute:
        name += f"-{local.second:02d}"
    return name + CHUNK_SUFFIX


def chunk_path(root: Path, server_id: str, moment: datetime, zone: ZoneInfo,
               mid_minute: bool = False) -> Path:
    """Full path of a (closed) chunk: `root/day/hour/name`."""
    day, hour = hour_label(moment, zone)
    return root / day / hour / chunk_filename(server_id, moment, zone, mid_minute)


def minute_start(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


@dataclass(frozen=True)
class Chunk:
    """A closed chunk found on disk."""

    path: Path
    server_id: str
    hour: HourKey


def parse_chunk(path: Path) -> Chunk | None:
    """Recognise a closed chunk by its name; None for anything else (`.part`, stray files)."""
    match = CHUNK_NAME.match(path.name)
    if not match:
        return None
    return Chunk(path, match["server"], HourKey(match["day"], match["hour"]))


def iter_closed_chunks(root: Path) -> Iterator[Chunk]:
    """Every closed chunk under `root/day/hour/`, in name order; skips hidden folders.

    Only real folders and regular files count (lstat): a symlink is never followed, so a
    link planted in the tree cannot make a caller read or send something outside it.
    """
    if not root.is_dir():
        return
    for day_dir in _real_folders(root):
        if day_dir.name.startswith("."):
            continue
        for hour_dir in _real_folders(day_dir):
            with os.scandir(hour_dir) as entries:
                files = sorted(e.name for e in entries if e.is_file(follow_symlinks=False))
            for name in files:
                chunk = parse_chunk(hour_dir / name)
                if chunk is not None:
                    yield chunk


def _real_folders(folder: Path) -> list[Path]:
    """The sub-folders of `folder` that are folders themselves, not links to one."""
    with os.scandir(folder) as entries:
        return sorted(folder / e.name for e in entries if e.is_dir(follow_symlinks=False))


def iter_part_files(root: Path) -> Iterator[Path]:
    """Chunks still open (or left open by a crash)."""
    if not root.is_dir():
        return
    for day_dir in sorted(root.iterdir()):
        if day_dir.name.startswith(".") or not day_dir.is_dir():
            continue
        yield from sorted(day_dir.glob(f"*/*{CHUNK_SUFFIX}{PART_SUFFIX}"))


# ---- reading a chunk tree without trusting it ------------------------------------------------

# A real minute chunk of the X 1% stream is ~3 MB, a Bluesky minute could be ~100 MB: anything
# bigger than this is not a chunk (the default of the `max_chunk_mb` setting).
DEFAULT_MAX_CHUNK_MB = 512
MIB = 1024 * 1024


def is_day_name(name: str) -> bool:
    """`YYYY-mm-dd` of a real date (a folder `2026-13-40` would break hour arithmetic), in
    ASCII digits (`\\d` alone also takes other scripts' digits)."""
    if not name.isascii() or not re.fullmatch(_DAY, name):
        return False
    try:
        datetime.strptime(name, "%Y-%m-%d")
    except ValueError:
        return False
    return True


def is_hour_name(name: str) -> bool:
    """`00`..`23`, or one of them with `b` (the repeated hour of a fall-back day)."""
    return name.isascii() and re.fullmatch(_HOUR, name) is not None and int(name[:2]) <= 23
