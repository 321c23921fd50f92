"""Reading a chunk tree someone else wrote, without trusting it.

A secondary's push lands in the main's `incoming_dst/<server_id>/`, which holds whatever its
key could write. The tree is walked through folder descriptors (`scan_tree`), every entry is
looked at with lstat and opened with `O_NOFOLLOW` (`open_chunk`), so no symlink is ever
followed below the root and no FIFO, socket or device is opened; what the walk decides about
an entry (`classify_entry`, a pure function) is the whole rule of what a chunk folder may
hold. Entries that break it are moved aside (`move_entry`), never deleted.
"""

from __future__ import annotations

import enum
import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from collector.layout import (
    CHUNK_NAME,
    MIB,
    PART_SUFFIX,
    Chunk,
    is_day_name,
    is_hour_name,
    parse_chunk,
)

Level = Literal["day", "hour", "file"]
_LEVELS: tuple[Level, ...] = ("day", "hour", "file")

# Folders are opened relative to their parent's descriptor and never through a link; O_NONBLOCK
# so that even an entry swapped for a FIFO between lstat and open cannot block the caller.
FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
CHUNK_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Verdict(enum.Enum):
    """What a scan does with one entry of a chunk tree."""

    DESCEND = "descend"  # a day or hour folder: look inside
    CHUNK = "chunk"  # a closed chunk to merge
    SKIP = "skip"  # left alone and never opened (hidden entries, the stream's open chunk)
    REJECT = "reject"  # not what a chunk folder holds: quarantine it


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str = ""  # why, for a rejected entry: "a FIFO", "a hard link (2 links)", ...


def entry_type(mode: int) -> str:
    """What an lstat mode is, in words for a log line."""
    for test, words in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
                        (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                        (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"),
                        (stat.S_ISREG, "a regular file")):
        if test(mode):
            return words
    return "an entry of unknown type"


def chunk_name_problem(name: str, server_id: str, day: str, hour: str) -> str:
    """Why a file name is not a chunk of `server_id` for folder `day/hour`; '' if it is."""
    match = CHUNK_NAME.fullmatch(name)  # `$` alone would let a trailing newline through
    if (not match or not name[len(match["server"]):].isascii()
            or int(match["minute"]) > 59 or int(match["second"] or 0) > 59):
        return "not named like a chunk"
    if match["server"] != server_id:
        return f"a chunk of {match['server']} in the folder of {server_id}"
    if (match["day"], match["hour"]) != (day, hour):
        return f"a chunk of {match['day']}T{match['hour']} in the folder of {day}T{hour}"
    return ""


def classify_entry(level: Level, name: str, mode: int, nlink: int, size: int, *,
                   server_id: str, folder: tuple[str, ...] = (), max_bytes: int,
                   own: bool = False) -> Decision:
    """What a scan does with one entry, from its lstat result alone (pure).

    `level` is where the entry sits: `day` (in the root), `hour` (in a day folder) or `file`
    (in an hour folder, `folder` = (day, hour)). Hidden entries are skipped at every level:
    rsync writes a transfer in progress as `.<name>.XXXXXX` in the hour folder, and the
    main's own root holds its `.collector` state and the `.quarantine` folder. `own` is the
    main's own `data_storage_dst`: its stream's open `.part` chunks are skipped, and so is
    anything at the top that is not named like a day (the operator's, not a chunk's); in a
    secondary's incoming folder everything belongs to the push, so it must be a chunk tree.
    """
    if name.startswith("."):
        return Decision(Verdict.SKIP)
    kind = entry_type(mode)
    if level != "file":
        named_right = is_day_name(name) if level == "day" else is_hour_name(name)
        a_folder = "a day folder" if level == "day" else "an hour folder"
        if not named_right:
            if own and level == "day":
                return Decision(Verdict.SKIP)
            return Decision(Verdict.REJECT, f"{kind} not named like {a_folder}")
        if stat.S_ISDIR(mode):
            return Decision(Verdict.DESCEND)
        return Decision(Verdict.REJECT, f"{kind} where {a_folder} belongs")
    if own and name.endswith(PART_SUFFIX) and CHUNK_NAME.fullmatch(name[: -len(PART_SUFFIX)]):
        return Decision(Verdict.SKIP)  # the stream is still writing it
    if not stat.S_ISREG(mode):
        return Decision(Verdict.REJECT, kind)
    problem = (chunk_name_problem(name, server_id, *folder) if len(folder) == 2
               else "not named like a chunk")
    if problem:
        return Decision(Verdict.REJECT, problem)
    return file_problem(mode, nlink, size, max_bytes)


def file_problem(mode: int, nlink: int, size: int, max_bytes: int) -> Decision:
    """CHUNK for a regular file with one link and at most `max_bytes`; else REJECT (pure).

    The same test runs on lstat at the scan and on fstat once the file is open: an entry
    swapped in between is caught either way.
    """
    if not stat.S_ISREG(mode):
        return Decision(Verdict.REJECT, entry_type(mode))
    if nlink > 1:
        return Decision(Verdict.REJECT, f"a hard link ({nlink} links)")
    if size > max_bytes:
        return Decision(Verdict.REJECT, f"{size} bytes, more than the limit of "
                                        f"{max_bytes // MIB} MiB (max_chunk_mb)")
    return Decision(Verdict.CHUNK)


@dataclass(frozen=True)
class Entry:
    """One entry of a chunk tree: its path below the root and the inode the scan saw."""

    parts: tuple[str, ...]
    device: int
    inode: int

    @property
    def relative(self) -> str:
        return "/".join(self.parts)


@dataclass(frozen=True)
class ScannedChunk:
    entry: Entry
    chunk: Chunk
    size: int


@dataclass(frozen=True)
class Rejected:
    entry: Entry
    reason: str


@dataclass
class TreeScan:
    """A chunk tree as the scan found it; nothing was opened but folders, nothing moved."""

    chunks: list[ScannedChunk] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # swapped while scanned: next run's


class EntryChanged(Exception):
    """The entry is not the one the scan saw any more (replaced, or gone)."""


class UnsafeEntry(Exception):
    """An entry met at open is not a regular single-link file within the size limit.

    `device` and `inode` are those of the entry found (0 if unknown): the one to quarantine,
    which may not be the one the scan saw.
    """

    def __init__(self, reason: str, device: int = 0, inode: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.device = device
        self.inode = inode


def scan_tree(root: Path, server_id: str, max_bytes: int, own: bool = False) -> TreeScan:
    """Every chunk and every entry that does not belong in a chunk tree under `root`.

    `root` itself is the operator's (a configured folder, possibly a link to another disk)
    and is followed; below it nothing is. A missing root is an empty tree; a root that
    exists but cannot be read raises OSError (skipping it would publish hours without that
    server). A folder below it that cannot be read is rejected, not an error: it must not
    stop the other hours.
    """
    result = TreeScan()
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        if os.path.islink(root):
            raise  # a dangling link is a broken configuration, not "no chunks yet"
        return result
    try:
        _scan_folder(root_fd, (), root, server_id, max_bytes, own, result)
    finally:
        os.close(root_fd)
    return result


def _scan_folder(fd: int, parts: tuple[str, ...], root: Path, server_id: str, max_bytes: int,
                 own: bool, result: TreeScan) -> None:
    level = _LEVELS[len(parts)]
    for name, info in _list_folder(fd):
        entry = Entry((*parts, name), info.st_dev, info.st_ino)
        decision = classify_entry(level, name, info.st_mode, info.st_nlink, info.st_size,
                                  server_id=server_id, folder=parts, max_bytes=max_bytes,
                                  own=own)
        if decision.verdict is Verdict.REJECT:
            result.rejected.append(Rejected(entry, decision.reason))
        elif decision.verdict is Verdict.CHUNK:
            chunk = parse_chunk(root.joinpath(*entry.parts))
            assert chunk is not None  # classify_entry checked the name
            result.chunks.append(ScannedChunk(entry, chunk, info.st_size))
        elif decision.verdict is Verdict.DESCEND:
            try:
                child = _open_folder(fd, name, entry)
            except EntryChanged:
                result.changed.append(entry.relative)
                continue
            except OSError as error:
                result.rejected.append(Rejected(entry, f"an unreadable folder "
                                                       f"({os.strerror(error.errno or 0)})"))
                continue
            try:
                _scan_folder(child, entry.parts, root, server_id, max_bytes, own, result)
            except OSError as error:  # listing failed (EIO, ...): the folder is unusable
                result.rejected.append(Rejected(entry, f"an unreadable folder "
                                                       f"({os.strerror(error.errno or 0)})"))
            finally:
                os.close(child)


def _list_folder(fd: int) -> list[tuple[str, os.stat_result]]:
    """Names and lstat results of a folder's entries, in name order (an entry that vanishes
    meanwhile is left out)."""
    found = []
    with os.scandir(fd) as entries:
        for item in entries:
            try:
                found.append((item.name, item.stat(follow_symlinks=False)))
            except FileNotFoundError:
                continue
    return sorted(found, key=lambda pair: pair[0])


def _open_folder(parent_fd: int, name: str, entry: Entry | None = None) -> int:
    """Open a sub-folder without following a link; EntryChanged if it is not `entry`'s."""
    try:
        fd = os.open(name, FOLDER_FLAGS, dir_fd=parent_fd)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
            raise EntryChanged(name) from None  # replaced by a link or file, or gone
        raise
    if entry is not None:
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) != (entry.device, entry.inode):
            os.close(fd)
            raise EntryChanged(name)
    return fd


def open_folder_beneath(root: Path, parts: tuple[str, ...]) -> int:
    """A descriptor of `root/<parts>`, reached without following any link below `root`.

    OSError as from open(2), or EntryChanged when a folder on the way is no folder now.
    """
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    for part in parts:
        try:
            child = _open_folder(fd, part)
        finally:
            os.close(fd)
        fd = child
    return fd


def open_chunk(root: Path, parts: tuple[str, ...], max_bytes: int) -> tuple[int, int]:
    """Open a scanned chunk to read: its descriptor and the size to read (fstat's at open).

    `O_NOFOLLOW` refuses a link, `O_NONBLOCK` makes a FIFO swapped in since the scan open at
    once instead of waiting for a writer, and fstat must then say regular file, one link,
    within `max_bytes`: otherwise UnsafeEntry. FileNotFoundError when it is gone,
    EntryChanged when a folder on the way was replaced, OSError when it cannot be opened.
    """
    folder = open_folder_beneath(root, parts[:-1])
    try:
        try:
            fd = os.open(parts[-1], CHUNK_OPEN_FLAGS, dir_fd=folder)
        except OSError as error:
            if error.errno not in (errno.ELOOP, errno.ENXIO):
                raise
            # ELOOP: a link (O_NOFOLLOW); ENXIO: a socket. Not opened: lstat says which.
            found = os.stat(parts[-1], dir_fd=folder, follow_symlinks=False)
            raise UnsafeEntry(entry_type(found.st_mode), found.st_dev, found.st_ino) from None
    finally:
        os.close(folder)
    info = os.fstat(fd)
    decision = file_problem(info.st_mode, info.st_nlink, info.st_size, max_bytes)
    if decision.verdict is not Verdict.CHUNK:
        os.close(fd)
        raise UnsafeEntry(decision.reason, info.st_dev, info.st_ino)
    return fd, info.st_size


def read_at_most(fd: int, size: int) -> bytes:
    """The first `size` bytes of an open file (fewer if it shrank): a file that grows while
    it is read cannot make the reader unbounded."""
    pieces = []
    offset = 0
    while offset < size:
        piece = os.pread(fd, size - offset, offset)  # one call but past 2 GiB
        if not piece:
            break
        pieces.append(piece)
        offset += len(piece)
    return b"".join(pieces)


def move_entry(root: Path, entry: Entry, destination: Path) -> None:
    """Rename the entry itself (a link moves as a link, never followed) to `destination`.

    The parent is reached without following links and the entry must still be the inode
    the scan saw (EntryChanged otherwise), so a swap can never move anything else. The
    destination must be on the same filesystem and must not exist (the caller picks a free
    name in a folder only it writes to).
    """
    parent = open_folder_beneath(root, entry.parts[:-1])
    try:
        try:
            info = os.stat(entry.parts[-1], dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            raise EntryChanged(entry.relative) from None
        if (info.st_dev, info.st_ino) != (entry.device, entry.inode):
            raise EntryChanged(entry.relative)
        os.rename(entry.parts[-1], destination, src_dir_fd=parent)
    finally:
        os.close(parent)


def remove_entry(root: Path, parts: tuple[str, ...], folder: bool = False) -> None:
    """Unlink a file (or remove an empty folder) below `root` without following any link on
    the way: retention can only ever remove what lies in the tree itself."""
    parent = open_folder_beneath(root, parts[:-1])
    try:
        if folder:
            os.rmdir(parts[-1], dir_fd=parent)
        else:
            os.unlink(parts[-1], dir_fd=parent)
    finally:
        os.close(parent)


def shown(text: str) -> str:
    """A name as it may appear in a log line or mail subject: whatever a pushed file name
    holds (newlines, control or undecodable bytes) is escaped, so it cannot forge a line."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
