"""The filesystem rules every stage follows: atomic writes, one lock helper, tolerant state.

* `write_atomic` / `write_bytes_atomic`: a temporary beside the target, fsync, rename, fsync
  of the folder, so a crash or power cut leaves the old file or the new one, never a torn
  one; a full disk is one `DiskFullError` line, and the temporary is removed.
* `exclusive_lock`: `flock` on a file in the state folder, so two runs of a stage (a slow
  cron run and the next one, or a second `collector stream`) never overlap; the kernel
  releases it when the holder dies, so a crash never blocks the next run.
* `read_state`: the small JSON files that remember what a stage did (ledgers, failure
  counts). Losing one costs repeated work, never a wrong output, so a missing file reads as
  "never ran" and a corrupt one is logged once and read the same way.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from collector.errors import CollectorError, DiskFullError, LockedError

TEMP_MARK = ".tmp-"
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def temp_path(final: Path) -> Path:
    return final.with_name(f".{final.name}{TEMP_MARK}{os.getpid()}")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temps(folder: Path) -> int:
    """Delete temporaries left by a killed run (the caller holds the lock)."""
    removed = 0
    if folder.is_dir():
        for path in folder.iterdir():
            if path.name.startswith(".") and TEMP_MARK in path.name:
                path.unlink(missing_ok=True)
                removed += 1
    return removed


def disk_full_error(error: OSError, final: Path) -> DiskFullError:
    return DiskFullError(f"disk full while writing {final}; inputs left untouched "
                         f"({os.strerror(error.errno or errno.ENOSPC)})")


def write_atomic(final: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Create `final` through `write(handle)` on a temporary, then rename it into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_path(final)
    try:
        with open(temp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, final)
        fsync_dir(final.parent)
    except OSError as error:
        with contextlib.suppress(OSError):
            temp.unlink()
        if error.errno in DISK_FULL_ERRNOS:
            raise disk_full_error(error, final) from None
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def write_bytes_atomic(final: Path, data: bytes) -> None:
    def write(handle: IO[bytes]) -> None:
        handle.write(data)

    write_atomic(final, write)


@contextlib.contextmanager
def exclusive_lock(path: Path, busy: str | None, *, make_folder: bool = True) -> Iterator[None]:
    """Hold `flock` on `path` for the block.

    With `busy`, a lock another process holds fails at once with `LockedError(busy)`, having
    touched nothing; with None, the block waits its turn (short critical sections such as
    the alert ledger). Opened read-only, which is enough for flock and works on a lock file
    another account created.
    """
    if make_folder:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise CollectorError(f"cannot open the lock {path}: {error.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if busy is not None else 0))
        except BlockingIOError:
            raise LockedError(busy or f"{path} is locked") from None
        yield
    finally:
        os.close(fd)


def read_state(path: Path, logger: logging.Logger, consequence: str) -> Any:
    """The JSON value of a state file, or None when it is missing or unreadable.

    An unreadable or corrupt file is logged as one warning on the caller's logger, saying
    what ignoring it costs (`consequence`); the caller checks the value's shape.
    """
    try:
        return orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        logger.warning("ignoring unreadable %s (%s); %s", path, type(error).__name__,
                       consequence)
        return None
