"""`collector adopt`: a host that became the main takes over the copies it holds of the old
main's data (issue 11), so that promoting a survivor needs nothing from the dead host.

What the old main pushed here (`collector replicate`) sits in `replica_dst`:

```
replica_dst/chunks/<server_id>/<YYYY-mm-dd>/<HH>/<chunk>   the main's own and departed chunks
replica_dst/vault/<YYYY-mm-dd>/<file>                      the main's published outputs
replica_dst/state/process_ledger.json                      its process ledger, pushed last
```

Adopting moves each piece to where this main's own commands look for it:

- chunks of this host's own id go to `data_storage_dst`, every other id's to
  `incoming_dst/<id>/` (the role creates that folder before running adopt; a missing one
  stops the run before anything moves), where `collector process` merges them like a
  secondary's (a departed server's folder: see `collector.process.scan.departed_server_ids`);
- vault files go to `data_vault_dst/<day>/` when absent there;
- the ledger becomes `state_dir/process_ledger.json` when this host has none (keeping only
  the hours whose three outputs are in the vault now, so it can never make `process` skip an
  hour that was not published here), which lets `process` merge only what the copy lacks.

A file whose target exists already is compared: identical, the replica copy is removed;
different, both are kept (logged and counted; the local one is what this main uses).
Adopted and identical replica files are removed, so a second run finds nothing to do.

Trust: the replica tree was written by whoever held the old main's key. It is read the way
`collector process` reads a secondary's push (collector.layout): through folder descriptors,
no link followed below `replica_dst`, only regular single-link files named like a chunk (or
like a vault file of that day) are taken, anything else stays where it is and is logged.
Destinations are reached the same way (a link planted in an incoming folder by a
secondary's key cannot redirect a move), and nothing outside `replica_dst`,
`data_storage_dst`, `incoming_dst` and `data_vault_dst` (and the state folder's ledger) is
touched.

Moves are renames that never replace an existing file (`renameat2(RENAME_NOREPLACE)`), so
a crash at any instant leaves each file under one of its two names; across filesystems a
file is copied to a hidden temporary, fsynced, renamed into place, the folder fsynced, and
only then is the replica copy removed. The run holds the process lock: `collector process`
never sees a half-adopted hour.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import stat
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import orjson

from collector.errors import CollectorError, DiskFullError, SettingsError
from collector.fsutil import DISK_FULL_ERRNOS, TEMP_MARK, write_bytes_atomic
from collector.layout import SERVER_ID, HourKey, is_day_name
from collector.process.ledger import LEDGER_NAME
from collector.process.run import process_lock
from collector.settings import Settings
from collector.sources import source_for
from collector.transfer.retention import CHUNKS_DIR, STATE_DIR, VAULT_DIR
from collector.tree import (
    CHUNK_OPEN_FLAGS,
    FOLDER_FLAGS,
    Entry,
    EntryChanged,
    TreeScan,
    Verdict,
    entry_type,
    file_problem,
    open_folder_beneath,
    scan_tree,
    shown,
)

log = logging.getLogger("collector.adopt")


# Vault files have no size limit of their own (a day's tweets can be GBs); the replica
# ledger is small (hours within retention list their chunks, older ones one flag).
NO_LIMIT = 1 << 62
MAX_LEDGER_BYTES = 512 * 1024 * 1024
COPY_BLOCK = 4 * 1024 * 1024



def is_vault_name(day: str, name: str) -> bool:
    """A file `process`, `report` or `upload` writes in a vault day folder: named after its
    day, plain ASCII (pure). Anything else in a replica's vault is not adopted."""
    return re.fullmatch(re.escape(day) + r"_[A-Za-z0-9][A-Za-z0-9._-]*", name,
                        flags=re.ASCII) is not None


# ---- results ---------------------------------------------------------------------------------

class Outcome(Enum):
    MOVED = "moved"  # now at its destination, the replica copy gone
    IDENTICAL = "identical"  # the destination held the same bytes: the replica copy removed
    CONFLICT = "conflict"  # the destination holds something else: both kept
    LEFT = "left"  # not adoptable (changed, unsafe, unreadable): left where it is


@dataclass
class AdoptResult:
    """What one run did; `summary()` is its one info line."""

    replica: Path | None = None
    chunks: Counter[str] = field(default_factory=Counter)  # adopted chunks per server id
    identical_chunks: int = 0
    vault_files: int = 0
    identical_vault_files: int = 0
    ledger: str = "none"  # "taken", "kept" (this host has one), "unreadable", "none"
    ledger_hours: int = 0
    conflicts: int = 0
    left: int = 0

    @property
    def found_anything(self) -> bool:
        return bool(sum(self.chunks.values()) or self.identical_chunks or self.vault_files
                    or self.identical_vault_files or self.ledger != "none" or self.conflicts
                    or self.left)

    def summary(self) -> str:
        """`adopted from R: 12 chunks (srv1 10, srv4 2), 3 vault files, the ledger (40 hours);
        1 identical copy removed, 0 conflicts, 0 entries left in place` (pure)."""
        per_id = ", ".join(f"{server} {n}" for server, n in sorted(self.chunks.items()))
        chunks = f"{sum(self.chunks.values())} chunks" + (f" ({per_id})" if per_id else "")
        hours = f"{self.ledger_hours} hour{'' if self.ledger_hours == 1 else 's'}"
        ledger = {"taken": f"the ledger ({hours})",
                  "kept": "not the ledger (this host has its own)",
                  "unreadable": "not the ledger (unreadable)",
                  "none": "no ledger"}[self.ledger]
        identical = self.identical_chunks + self.identical_vault_files
        return (f"adopted from {self.replica}: {chunks}, {self.vault_files} vault files, "
                f"{ledger}; {identical} identical cop{'y' if identical == 1 else 'ies'} "
                f"removed, {self.conflicts} conflict{'' if self.conflicts == 1 else 's'} "
                f"(both kept), {self.left} entr{'y' if self.left == 1 else 'ies'} left in place")


class UnsafeDestination(Exception):
    """A folder on the way to a destination is not a folder (a link, a file)."""


# ---- the command -----------------------------------------------------------------------------

def adopt(settings: Settings) -> AdoptResult:
    """Take over `replica_dst` (see the module docstring); idempotent.

    SettingsError on a secondary (only a main merges and publishes); a no-op with one info
    line when `replica_dst` is unset, missing or holds nothing.
    """
    if not settings.is_main or settings.data_vault_dst is None or settings.incoming_dst is None:
        raise SettingsError(f"{settings.path}: collector adopt runs on the main (role=main "
                            f"with data_vault_dst and incoming_dst); this host is a "
                            f"{settings.role}")
    result = AdoptResult(settings.replica_dst)
    if settings.replica_dst is None:
        log.info("nothing to adopt: replica_dst is not set")
        return result
    with process_lock(settings.state_dir):
        try:
            root_fd = os.open(settings.replica_dst, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            log.info("nothing to adopt: %s does not exist", settings.replica_dst)
            return result
        except OSError as error:
            raise CollectorError(f"cannot read {settings.replica_dst}: "
                                 f"{os.strerror(error.errno or 0)}") from None
        try:
            adopt_chunks(settings, root_fd, result)
            adopt_vault(settings, root_fd, result)
            adopt_ledger(settings, root_fd, result)
            local = settings.state_dir / LEDGER_NAME
            if result.found_anything and not os.path.lexists(local):
                # No ledger to take: an empty one says this main adopted what it holds, which
                # is what `collector process` waits for
                # (collector.process.ledger.unadopted_replica).
                write_bytes_atomic(local, orjson.dumps({"version": 1, "hours": {}}))
        finally:
            os.close(root_fd)
    if result.found_anything:
        log.info("%s", result.summary())
    else:
        log.info("nothing to adopt: %s holds no replica", settings.replica_dst)
    return result


def _subfolder(parent_fd: int, name: str, where: str) -> int | None:
    """A descriptor of a folder of the replica tree, never through a link; None (logged if it
    is something else) when it is not a folder."""
    try:
        return os.open(name, FOLDER_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            try:
                kind = entry_type(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode)
            except FileNotFoundError:
                return None
            log.warning("left %s in place: %s where a folder belongs", where, kind)
            return None
        raise CollectorError(f"cannot read {where}: {os.strerror(error.errno or 0)}") from None


def _fd_path(fd: int) -> Path:
    """A path that opens exactly the folder `fd` is (this process's descriptor), so the
    layout helpers, which take a root path, cannot be sent elsewhere by a swapped link."""
    return Path(f"/proc/self/fd/{fd}")


def _entries(fd: int) -> list[tuple[str, os.stat_result]]:
    """Names and lstat results of a folder's entries, in name order."""
    found = []
    with os.scandir(fd) as entries:
        for item in entries:
            with contextlib.suppress(FileNotFoundError):
                found.append((item.name, item.stat(follow_symlinks=False)))
    return sorted(found, key=lambda pair: pair[0])


# ---- chunks ----------------------------------------------------------------------------------

def chunk_destination(settings: Settings, server_id: str) -> Path:
    """Where a replicated chunk of `server_id` belongs on this main (pure)."""
    if server_id == settings.server_id:
        return settings.data_storage_dst
    assert settings.incoming_dst is not None
    return settings.incoming_dst / server_id


def adopt_chunks(settings: Settings, root_fd: int, result: AdoptResult) -> None:
    """Move `chunks/<id>/...` to this main's chunk folders (module docstring).

    Every replica folder is scanned, and the destination root of each that holds chunks
    checked, before anything moves: a missing incoming folder is an error naming it (the role
    creates one for every replica folder holding a file), not a reason to create folders in
    `incoming_dst` that no one configured.
    """
    chunks_fd = _subfolder(root_fd, CHUNKS_DIR, f"{settings.replica_dst}/{CHUNKS_DIR}")
    if chunks_fd is None:
        return
    try:
        ids: list[tuple[str, int]] = []
        try:
            for name, info in _entries(chunks_fd):
                where = f"{CHUNKS_DIR}/{shown(name)}"
                if name.startswith("."):
                    continue  # an rsync temporary: never a replica
                if not SERVER_ID.match(name) or not stat.S_ISDIR(info.st_mode):
                    log.warning("left %s in place: %s, not a server's chunk folder", where,
                                entry_type(info.st_mode))
                    result.left += 1
                    continue
                fd = _subfolder(chunks_fd, name, where)
                if fd is None:
                    result.left += 1
                    continue
                ids.append((name, fd))
            trees = {server_id: scan_tree(_fd_path(fd), server_id, settings.max_chunk_bytes)
                     for server_id, fd in ids}
            for server_id, _ in ids:
                destination = chunk_destination(settings, server_id)
                if not trees[server_id].chunks or destination.is_dir():
                    continue
                if server_id == settings.server_id:
                    raise CollectorError(f"data_storage_dst {destination} does not exist; "
                                         f"nothing was adopted")
                raise CollectorError(
                    f"{destination} does not exist (the role creates incoming_dst/<id> for "
                    f"every {settings.replica_dst}/{CHUNKS_DIR}/<id> before collector adopt "
                    f"runs); nothing was adopted")
            for server_id, fd in ids:
                _adopt_server_chunks(settings, server_id, fd, trees[server_id], result)
                _remove_empty_folders(fd)
                with contextlib.suppress(OSError):
                    os.rmdir(server_id, dir_fd=chunks_fd)  # only when empty
        finally:
            for _, fd in ids:
                os.close(fd)
    finally:
        os.close(chunks_fd)


def _adopt_server_chunks(settings: Settings, server_id: str, fd: int, tree: TreeScan,
                         result: AdoptResult) -> None:
    """One server's replica chunks (as `tree` found them), hour folder by hour folder."""
    source_root = _fd_path(fd)
    label = f"{CHUNKS_DIR}/{server_id}"
    for rejected in tree.rejected:
        log.warning("left %s/%s in place: %s", label, shown(rejected.entry.relative),
                    shown(rejected.reason))
        result.left += 1
    for relative in tree.changed:
        log.warning("left %s/%s in place: it changed while it was scanned", label,
                    shown(relative))
        result.left += 1
    groups: dict[tuple[str, ...], list[Entry]] = {}
    for found in tree.chunks:
        groups.setdefault(found.entry.parts[:-1], []).append(found.entry)
    destination = chunk_destination(settings, server_id)
    for folder, entries in groups.items():
        outcomes = _adopt_group(source_root, folder, entries, destination,
                                settings.max_chunk_bytes, label)
        for outcome in outcomes:
            if outcome is Outcome.MOVED:
                result.chunks[server_id] += 1
            elif outcome is Outcome.IDENTICAL:
                result.identical_chunks += 1
            elif outcome is Outcome.CONFLICT:
                result.conflicts += 1
            else:
                result.left += 1


def _remove_empty_folders(fd: int) -> None:
    """Remove the day and hour folders the adoption emptied (never through a link)."""
    for day, info in _entries(fd):
        if not stat.S_ISDIR(info.st_mode) or day.startswith("."):
            continue
        with contextlib.suppress(OSError):
            day_fd = os.open(day, FOLDER_FLAGS, dir_fd=fd)
            try:
                for hour, hour_info in _entries(day_fd):
                    if stat.S_ISDIR(hour_info.st_mode):
                        with contextlib.suppress(OSError):
                            os.rmdir(hour, dir_fd=day_fd)
            finally:
                os.close(day_fd)
            os.rmdir(day, dir_fd=fd)


# ---- moving one folder's files ---------------------------------------------------------------

def _adopt_group(source_root: Path, folder: tuple[str, ...], entries: list[Entry],
                 destination_root: Path, max_bytes: int, label: str) -> list[Outcome]:
    """Adopt the files of one replica folder into the same folder below `destination_root`;
    both folders are fsynced once at the end (a rename is atomic; the fsync makes it
    durable before the run reports it done)."""
    where = "/".join(folder)
    try:
        source_fd = open_folder_beneath(source_root, folder)
    except (OSError, EntryChanged) as error:
        log.warning("left %s/%s in place: its folder cannot be opened (%s)", label,
                    shown(where), _why(error))
        return [Outcome.LEFT] * len(entries)
    try:
        try:
            target_fd = ensure_folder(destination_root, folder)
        except (OSError, UnsafeDestination) as error:
            if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
                raise DiskFullError(f"disk full while creating {destination_root}/{where}"
                                    ) from None
            log.warning("left %s/%s in place: %s/%s cannot be used (%s)", label, shown(where),
                        shown(str(destination_root)), shown(where), _why(error))
            return [Outcome.LEFT] * len(entries)
        try:
            outcomes = []
            for entry in entries:
                replica = f"{label}/{entry.relative}"
                try:
                    outcome = adopt_file(source_fd, entry, target_fd, max_bytes)
                except OSError as error:
                    if error.errno in DISK_FULL_ERRNOS:
                        raise DiskFullError(f"disk full while adopting {shown(replica)}; it "
                                            f"is left in place") from None
                    log.warning("left %s in place: %s", shown(replica), _why(error))
                    outcomes.append(Outcome.LEFT)
                    continue
                _log_outcome(outcome, replica, f"{destination_root}/{entry.relative}")
                outcomes.append(outcome)
            os.fsync(target_fd)
            os.fsync(source_fd)
            return outcomes
        finally:
            os.close(target_fd)
    finally:
        os.close(source_fd)


def _why(error: BaseException) -> str:
    if isinstance(error, OSError) and error.errno:
        return os.strerror(error.errno)
    if isinstance(error, EntryChanged):
        return "it changed meanwhile"
    return str(error) or type(error).__name__


def _log_outcome(outcome: Outcome, replica: str, target: str) -> None:
    if outcome is Outcome.CONFLICT:
        log.warning("conflict: %s differs from %s; both kept (the local one is used)",
                    shown(replica), shown(target))
    elif outcome is Outcome.LEFT:
        log.warning("left %s in place: it is no longer the regular file it was, or cannot "
                    "be read", shown(replica))


def ensure_folder(root: Path, parts: tuple[str, ...]) -> int:
    """A descriptor of `root/<parts>`, creating missing levels, never following a link below
    `root` (the operator's folder); UnsafeDestination when a level is not a folder. A new
    folder's parent is fsynced, so the folder survives a power cut with what moves into it."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts:
            created = False
            try:
                os.mkdir(part, 0o777, dir_fd=fd)  # the umask decides, as for the stream's
                created = True
            except FileExistsError:
                pass
            try:
                child = os.open(part, FOLDER_FLAGS, dir_fd=fd)
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafeDestination(f"{part} is not a folder") from None
                raise
            if created:
                os.fsync(fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def adopt_file(source_fd: int, entry: Entry, target_fd: int, max_bytes: int) -> Outcome:
    """Move the replica file `entry` (in folder `source_fd`) to the same name in `target_fd`
    without ever replacing a file there; compare when one exists (module docstring).
    OSError for what the caller reports (a full disk stops the run, anything else leaves the
    file in place)."""
    name = entry.parts[-1]
    try:
        info = os.stat(name, dir_fd=source_fd, follow_symlinks=False)
    except FileNotFoundError:
        return Outcome.LEFT
    if ((info.st_dev, info.st_ino) != (entry.device, entry.inode)
            or file_problem(info.st_mode, info.st_nlink, info.st_size, max_bytes).verdict
            is not Verdict.CHUNK):
        return Outcome.LEFT
    if not _exists(target_fd, name):
        try:
            rename_noreplace(source_fd, name, target_fd, name)
            return Outcome.MOVED
        except FileExistsError:
            pass  # appeared meanwhile: compare below
        except FileNotFoundError:
            return Outcome.LEFT  # gone meanwhile
        except OSError as error:
            if error.errno != errno.EXDEV:
                raise
            return _copy_then_remove(source_fd, entry, target_fd, max_bytes)
    same = _same_content(source_fd, entry, target_fd, max_bytes)
    if same is None:
        return Outcome.LEFT
    if same:
        _remove_replica(source_fd, entry)
        return Outcome.IDENTICAL
    return Outcome.CONFLICT


def _exists(fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


_RENAME_NOREPLACE = 1
_libc: Any = None


def rename_noreplace(source_fd: int, source: str, target_fd: int, target: str) -> None:
    """Rename without replacing: FileExistsError if `target` exists (renameat2 with
    RENAME_NOREPLACE). Where the kernel or filesystem lacks it, the check and the rename are
    two steps, which is enough here: the process lock keeps every collector command out,
    and no push writes a replica's name into a destination folder."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            _libc = False
    renameat2 = getattr(_libc, "renameat2", None) if _libc else None
    if renameat2 is not None:
        if renameat2(source_fd, os.fsencode(source), target_fd, os.fsencode(target),
                     _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(code, os.strerror(code), target)
    if _exists(target_fd, target):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), target)
    os.rename(source, target, src_dir_fd=source_fd, dst_dir_fd=target_fd)


def _open_replica(source_fd: int, entry: Entry, max_bytes: int) -> tuple[int, os.stat_result]:
    """The replica file opened to read, checked to be the inode the walk saw and a regular
    single-link file (EntryChanged otherwise)."""
    try:
        fd = os.open(entry.parts[-1], CHUNK_OPEN_FLAGS, dir_fd=source_fd)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENXIO, errno.ENOENT):
            raise EntryChanged(entry.relative) from None
        raise
    info = os.fstat(fd)
    if ((info.st_dev, info.st_ino) != (entry.device, entry.inode)
            or file_problem(info.st_mode, info.st_nlink, info.st_size, max_bytes).verdict
            is not Verdict.CHUNK):
        os.close(fd)
        raise EntryChanged(entry.relative)
    return fd, info


def _blocks(fd: int, size: int) -> Iterator[bytes]:
    """The first `size` bytes of an open file, in blocks (fewer if it shrank)."""
    offset = 0
    while offset < size:
        block = os.pread(fd, min(COPY_BLOCK, size - offset), offset)
        if not block:
            return
        yield block
        offset += len(block)


def _same_content(source_fd: int, entry: Entry, target_fd: int, max_bytes: int) -> bool | None:
    """Whether the destination is a regular file with the replica's bytes; None when the
    replica cannot be read as the file the walk saw."""
    try:
        replica, replica_info = _open_replica(source_fd, entry, max_bytes)
    except (OSError, EntryChanged):
        return None
    try:
        try:
            local = os.open(entry.parts[-1], CHUNK_OPEN_FLAGS, dir_fd=target_fd)
        except OSError:
            return False  # a link, a socket, unreadable: not the same file
        try:
            local_info = os.fstat(local)
            if not stat.S_ISREG(local_info.st_mode) or local_info.st_size != replica_info.st_size:
                return False
            offset, size = 0, replica_info.st_size
            while offset < size:
                length = min(COPY_BLOCK, size - offset)
                block = os.pread(replica, length, offset)
                if not block or block != os.pread(local, length, offset):
                    return False  # different, or one of them shrank meanwhile
                offset += len(block)
            return True
        finally:
            os.close(local)
    finally:
        os.close(replica)


def _remove_replica(source_fd: int, entry: Entry) -> None:
    """Unlink the replica name if it is still the inode the walk saw."""
    name = entry.parts[-1]
    with contextlib.suppress(FileNotFoundError):
        info = os.stat(name, dir_fd=source_fd, follow_symlinks=False)
        if (info.st_dev, info.st_ino) == (entry.device, entry.inode):
            os.unlink(name, dir_fd=source_fd)


def _remove_stale_temps(folder_fd: int, name: str) -> None:
    """Remove the temporaries of `name` a killed run left (`.<name>.tmp-<pid>`): this run
    holds the process lock, so no live writer owns one, and no push names a file so."""
    stale = re.compile(re.escape(f".{name}{TEMP_MARK}") + r"\d+")
    for entry, info in _entries(folder_fd):
        if stale.fullmatch(entry) and stat.S_ISREG(info.st_mode):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry, dir_fd=folder_fd)


def _copy_then_remove(source_fd: int, entry: Entry, target_fd: int, max_bytes: int) -> Outcome:
    """Across filesystems: copy to a hidden temporary (`TEMP_MARK`, so `process` removes one
    a killed run left), fsync it, keep the mtime, rename it into place without replacing,
    fsync the folder, and only then remove the replica copy."""
    name = entry.parts[-1]
    try:
        replica, info = _open_replica(source_fd, entry, max_bytes)
    except (OSError, EntryChanged):
        return Outcome.LEFT
    temp = f".{name}{TEMP_MARK}{os.getpid()}"
    try:
        _remove_stale_temps(target_fd, name)
        out = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      stat.S_IMODE(info.st_mode) & 0o666, dir_fd=target_fd)
        try:
            written = 0
            for block in _blocks(replica, info.st_size):
                view = memoryview(block)
                while view:
                    done = os.write(out, view)
                    view = view[done:]
                    written += done
            if written != info.st_size:
                raise EntryChanged(entry.relative)  # it shrank while copied
            os.fsync(out)
            os.utime(out, ns=(info.st_atime_ns, info.st_mtime_ns))
        finally:
            os.close(out)
        try:
            rename_noreplace(target_fd, temp, target_fd, name)
        except FileExistsError:
            os.unlink(temp, dir_fd=target_fd)
            same = _same_content(source_fd, entry, target_fd, max_bytes)
            if same:
                _remove_replica(source_fd, entry)
                return Outcome.IDENTICAL
            return Outcome.LEFT if same is None else Outcome.CONFLICT
        os.fsync(target_fd)
    except EntryChanged:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=target_fd)
        return Outcome.LEFT
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=target_fd)
        raise  # the caller tells a full disk (the run stops) from the rest (left, logged)
    finally:
        os.close(replica)
    _remove_replica(source_fd, entry)
    return Outcome.MOVED


# ---- the vault -------------------------------------------------------------------------------

def adopt_vault(settings: Settings, root_fd: int, result: AdoptResult) -> None:
    """Move `vault/<day>/<file>` into `data_vault_dst/<day>/` where absent (module docstring).

    A day's file that differs from the local one stays in the replica tree, and the local
    one is used: this main may have published it already.
    """
    assert settings.data_vault_dst is not None
    vault_fd = _subfolder(root_fd, VAULT_DIR, f"{settings.replica_dst}/{VAULT_DIR}")
    if vault_fd is None:
        return
    try:
        vault_root = _fd_path(vault_fd)
        for day, info in _entries(vault_fd):
            where = f"{VAULT_DIR}/{shown(day)}"
            if day.startswith("."):
                continue
            if not is_day_name(day) or not stat.S_ISDIR(info.st_mode):
                log.warning("left %s in place: %s, not a vault day folder", where,
                            entry_type(info.st_mode))
                result.left += 1
                continue
            entries = _vault_day_entries(vault_fd, day, result)
            if not entries:
                continue
            settings.data_vault_dst.mkdir(parents=True, exist_ok=True)
            outcomes = _adopt_group(vault_root, (day,), entries, settings.data_vault_dst,
                                    NO_LIMIT, VAULT_DIR)
            for outcome in outcomes:
                if outcome is Outcome.MOVED:
                    result.vault_files += 1
                elif outcome is Outcome.IDENTICAL:
                    result.identical_vault_files += 1
                elif outcome is Outcome.CONFLICT:
                    result.conflicts += 1
                else:
                    result.left += 1
            with contextlib.suppress(OSError):
                os.rmdir(day, dir_fd=vault_fd)  # only when empty
    finally:
        os.close(vault_fd)


def _vault_day_entries(vault_fd: int, day: str, result: AdoptResult) -> list[Entry]:
    """The adoptable files of one replica day folder; everything else is logged, counted."""
    day_fd = _subfolder(vault_fd, day, f"{VAULT_DIR}/{day}")
    if day_fd is None:
        result.left += 1
        return []
    try:
        found = []
        for name, info in _entries(day_fd):
            if name.startswith("."):
                continue  # an rsync temporary
            reason = ("not named like a vault file of its day" if not is_vault_name(day, name)
                      else file_problem(info.st_mode, info.st_nlink, info.st_size,
                                        NO_LIMIT).reason)
            if reason:
                log.warning("left %s/%s/%s in place: %s", VAULT_DIR, day, shown(name), reason)
                result.left += 1
                continue
            found.append(Entry((day, name), info.st_dev, info.st_ino))
        return found
    finally:
        os.close(day_fd)


# ---- the ledger ------------------------------------------------------------------------------

def clean_ledger_hours(hours: Any, published: Any) -> dict[str, dict[str, Any]]:
    """The entries of a replica ledger this main can trust (pure but for `published`, a
    callable telling whether an hour's three outputs are in the vault now).

    Only well-formed entries of real hour keys are kept (`{"pruned": true}`, or `chunks`
    mapping names to sizes, with the other fields as written), and only for hours whose
    outputs are here: an entry for an hour without them would make `process` skip it (or,
    marked pruned, remove its chunks later) though it was never published by this main.
    """
    if not isinstance(hours, dict):
        return {}
    kept: dict[str, dict[str, Any]] = {}
    for key, entry in hours.items():
        try:
            hour = HourKey.parse(key) if isinstance(key, str) else None
        except ValueError:
            hour = None
        if hour is None or not isinstance(entry, dict):
            continue
        if entry.get("pruned") is True:
            well_formed = True
        else:
            chunks = entry.get("chunks")
            well_formed = isinstance(chunks, dict) and all(
                isinstance(k, str) and type(v) is int for k, v in chunks.items())
        if well_formed and published(hour):
            kept[key] = entry
    return kept


def adopt_ledger(settings: Settings, root_fd: int, result: AdoptResult) -> None:
    """`state/process_ledger.json` becomes this main's ledger if it has none (module
    docstring); it is read after the vault was adopted, so it is checked against the outputs
    this main really holds. Taken, it is removed from the replica tree."""
    assert settings.data_vault_dst is not None
    vault = settings.data_vault_dst
    state_fd = _subfolder(root_fd, STATE_DIR, f"{settings.replica_dst}/{STATE_DIR}")
    if state_fd is None:
        return
    try:
        try:
            fd = os.open(LEDGER_NAME, CHUNK_OPEN_FLAGS, dir_fd=state_fd)
        except FileNotFoundError:
            return
        except OSError as error:
            log.warning("left %s/%s in place: %s", STATE_DIR, LEDGER_NAME,
                        "not a regular file" if error.errno in (errno.ELOOP, errno.ENXIO)
                        else os.strerror(error.errno or 0))
            result.left += 1
            return
        try:
            info = os.fstat(fd)
            problem = file_problem(info.st_mode, info.st_nlink, info.st_size,
                                   MAX_LEDGER_BYTES).reason
            if problem:
                log.warning("left %s/%s in place: %s", STATE_DIR, LEDGER_NAME, problem)
                result.left += 1
                return
            local = settings.state_dir / LEDGER_NAME
            if os.path.lexists(local):
                result.ledger = "kept"
                log.info("kept this host's own ledger %s; the replica's is left in %s/%s",
                         local, settings.replica_dst, STATE_DIR)
                return
            data = b"".join(_blocks(fd, info.st_size))
        finally:
            os.close(fd)
        try:
            hours = orjson.loads(data)["hours"]
        except (ValueError, KeyError, TypeError):
            result.ledger = "unreadable"
            log.warning("left %s/%s in place: not a ledger; every hour with chunks is "
                        "merged again (byte-identical outputs)", STATE_DIR, LEDGER_NAME)
            return
        kept = clean_ledger_hours(hours, lambda hour: all(
            path.is_file() for path in source_for(settings).output_paths(vault, hour)))
        dropped = len(hours) - len(kept) if isinstance(hours, dict) else 0
        if dropped:
            log.warning("the replica ledger names %d hours whose outputs are not in %s (or "
                        "malformed); they are left out, so process merges them again",
                        dropped, vault)
        write_bytes_atomic(local, orjson.dumps({"version": 1, "hours": kept},
                                               option=orjson.OPT_SORT_KEYS))
        result.ledger = "taken"
        result.ledger_hours = len(kept)
        with contextlib.suppress(FileNotFoundError):
            current = os.stat(LEDGER_NAME, dir_fd=state_fd, follow_symlinks=False)
            if (current.st_dev, current.st_ino) == (info.st_dev, info.st_ino):
                os.unlink(LEDGER_NAME, dir_fd=state_fd)
                os.fsync(state_fd)
    finally:
        os.close(state_fd)
