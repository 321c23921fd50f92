"""Which vault files are published, and their path on OSF (`YYYY/MM/DD/<name>`)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from collector.errors import CollectorError
from collector.layout import HourKey

_DAY = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")


# ---- what to upload (pure except for reading the directory) -------------------------------


@dataclass(frozen=True)
class LocalFile:
    """An output file that belongs on OSF, and where: `remote` is `YYYY/MM/DD/name`."""

    path: Path
    remote: str
    size: int
    mtime_ns: int


# The hourly outputs published by default: the ids (X). A source may add its own (Bluesky:
# the deletes), never content files (tweets, users, posts).
IDS_ONLY = ("IDs.txt.xz",)


def is_publishable(day: str, name: str, published: tuple[str, ...] = IDS_ONLY) -> bool:
    """True for an hour's output whose suffix is in `published`, or the day's report; never
    tweets, users, posts or hidden files."""
    escaped = re.escape(day)
    suffixes = "|".join(re.escape(suffix) for suffix in published)
    return bool(re.fullmatch(rf"{escaped}_\d{{2}}b?_(?:{suffixes})", name)
                or name == f"{day}_report.txt")


def remote_path(day: str, name: str) -> str:
    """`2026-01-02`, `x` -> `2026/01/02/x`: the folder layout on OSF."""
    match = _DAY.match(day)
    if match is None:
        raise ValueError(f"{day!r} is not a day like 2026-01-02")
    return f"{match[1]}/{match[2]}/{match[3]}/{name}"


def _local_file(path: Path, day: str) -> LocalFile:
    info = path.stat()
    return LocalFile(path, remote_path(day, path.name), info.st_size, info.st_mtime_ns)


def select_files(vault: Path, hour: HourKey | None = None,
                 published: tuple[str, ...] = IDS_ONLY) -> list[LocalFile]:
    """Every publishable file under `vault`, or just one hour's published outputs (its IDs
    file first, which must exist) and its day's report."""
    if hour is not None:
        day_dir = vault / hour.day
        ids = day_dir / f"{hour.file_prefix}_{published[0]}"
        if not ids.is_file():
            raise CollectorError(f"nothing to upload for {hour}: {ids} does not exist")
        selected = [_local_file(ids, hour.day)]
        for suffix in published[1:]:
            other = day_dir / f"{hour.file_prefix}_{suffix}"
            if other.is_file():
                selected.append(_local_file(other, hour.day))
        report = day_dir / f"{hour.day}_report.txt"
        if report.is_file():
            selected.append(_local_file(report, hour.day))
        return selected
    if not vault.is_dir():
        return []
    selected = []
    for day_dir in sorted(vault.iterdir()):
        if not (_DAY.match(day_dir.name) and day_dir.is_dir()):
            continue
        for path in sorted(day_dir.iterdir()):
            if is_publishable(day_dir.name, path.name, published) and path.is_file():
                selected.append(_local_file(path, day_dir.name))
    return selected


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
