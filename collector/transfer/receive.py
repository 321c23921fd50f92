"""`collector receive DIR`: the main's forced command for a secondary's push key.

sshd runs it (as the unprivileged receiving account) instead of whatever the client asked
for; the client's request is in `SSH_ORIGINAL_COMMAND`, which rrsync reads from the
environment. It exists for two reasons rrsync alone does not cover:

* **Harmless pushes.** rrsync runs with `-wo` (writes only, nothing can be read back),
  `-munge` (every pushed symlink gets the prefix `/rsyncd-munged/`, so `esc -> /srv/...`
  points nowhere and `esc/evil.txt` cannot land outside DIR) and `-no-del` (refuses
  `--delete*` and `--remove*`, so a key cannot erase chunks the main has not merged yet).
  Munging is only harmless while `/rsyncd-munged` does not exist, so this refuses to run
  if it does.
* **Durable pushes.** rsync's receiver never fsyncs. After rrsync exits 0 this calls
  syncfs(2) on DIR's filesystem (files, their folders and the renames rsync made), and only
  then exits 0. The rsync client reports a non-zero exit of this command as a failed run
  even after a complete transfer (verified with rsync 3.2.7 and 3.5.0), so a secondary that
  deletes its chunks only after a successful session deletes only what is on disk here.

Exit codes: rrsync's own (non-zero) code unchanged; 1 with one line on stderr when the data
could not be made durable or the command is misconfigured. Nothing but rsync may write to
stdout: it is the rsync protocol stream.

Stdlib only, and no import from the rest of the package, so the file also runs on its own
(`python3 receive.py DIR`) wherever rrsync's own interpreter does; it never reads the
collector's settings file.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

RRSYNC = Path("/usr/bin/rrsync")
# Both flags exist in rsync 3.2.7 (Debian 12) and 3.4/3.5; see the module docstring.
RRSYNC_FLAGS = ("-wo", "-munge", "-no-del")
# rsync's --munge-links prefix: a munged link resolves only if this path exists.
MUNGE_PREFIX = Path("/rsyncd-munged")
ERROR_PREFIX = "collector receive: error:"
EXIT_FAILED = 1


class ReceiveError(Exception):
    """Why the push cannot be trusted; printed as one line, exit code 1."""


def rrsync_command(directory: Path, rrsync: Path = RRSYNC) -> list[str]:
    """The confined rsync server for `directory` (rrsync reads SSH_ORIGINAL_COMMAND itself)."""
    return [str(rrsync), *RRSYNC_FLAGS, str(directory)]


def _libc_syncfs() -> Callable[[int], int] | None:
    """glibc's syncfs(2), or None where the C library lacks it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the running program's symbols: libc's
    except OSError:
        return None
    function = getattr(libc, "syncfs", None)
    if function is None:
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


def sync_filesystem(directory: Path) -> None:
    """Flush everything written on `directory`'s filesystem to stable storage.

    syncfs reports write-back errors (Linux >= 5.8), so a failure here means some pushed data
    may not be on disk: the caller must not report success. Without syncfs in libc, os.sync()
    flushes every filesystem (slower, and it cannot report errors).
    """
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        raise ReceiveError(f"cannot open {directory} to sync it: {error.strerror}") from None
    try:
        syncfs = _libc_syncfs()
        if syncfs is None:
            os.sync()
            return
        if syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise ReceiveError(f"cannot make the push durable: syncfs({directory}) failed: "
                               f"{os.strerror(code)}")
    finally:
        os.close(fd)


def receive(directory: Path, rrsync: Path = RRSYNC) -> int:
    """Run the confined rsync server into `directory`, then sync; return the exit code.

    A failed rrsync (refused option, broken connection, full disk) returns its code without
    syncing: the client sees a failed session and deletes nothing, so durability of a partial
    push does not matter; the next successful session syncs it with everything else.
    """
    if not directory.is_absolute():
        raise ReceiveError(f"the incoming folder must be an absolute path, not {directory}")
    if os.path.lexists(MUNGE_PREFIX):
        raise ReceiveError(f"{MUNGE_PREFIX} exists on this host, so munged symlinks would "
                           "resolve; remove it (pushes are refused until then)")
    # stdin/stdout are the ssh channel: rsync inherits them and speaks the protocol on them.
    completed = subprocess.run(rrsync_command(directory, rrsync), check=False)
    if completed.returncode != 0:
        return completed.returncode
    sync_filesystem(directory)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python3 -m collector.transfer.receive DIR` (or this file as a script); one line on
    failure."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0].startswith("-"):
        print(f"{ERROR_PREFIX} usage: receive DIR (the forced command of a push key)",
              file=sys.stderr)
        return EXIT_FAILED
    return run_reporting(Path(args[0]))


def run_reporting(directory: Path, rrsync: Path = RRSYNC) -> int:
    """`receive`, with its failures as one line on stderr (reaching the client's log)."""
    try:
        return receive(directory, rrsync)
    except ReceiveError as error:
        print(f"{ERROR_PREFIX} {error}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as error:  # rrsync missing or not executable
        print(f"{ERROR_PREFIX} cannot run {rrsync}: {error.strerror}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
