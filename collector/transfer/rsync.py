"""The confined, durable rsync-over-ssh push that `send` and `replicate` share.

Both commands write into a folder on another host whose key is confined there by the forced
command `collector receive <folder>` (`rrsync -wo -munge -no-del`, then syncfs; see
`collector.transfer.receive`). What that gives, and what this module relies on:

* Write-only, nothing deleted: only options `rrsync -wo -munge -no-del` accepts are used (no
  `--delete*`, no `--remove-source-files`; tested for real with rsync 3.2.7 and 3.5.0), and
  remote paths are relative to the confined folder.
* Durable before recorded: every session ends in the receiver's syncfs and the rsync client
  fails the session when the forced command exits non-zero, so a session that succeeded has
  everything it transferred on the other host's stable storage.
* Never a half file under a final name: rsync writes `.<name>.XXXXXX` and renames it.
* Nothing overwritten that should not be: chunks go with `--ignore-existing` (pass 1) and are
  then compared by checksum in a dry run (pass 2, `VERIFY`), so "identical" is a positive
  answer from the other side, never an absence.

Here live the pieces: `PushTarget` (the ssh command), `rsync_command`, the two chunk passes,
`parse_verify_output`, `describe_failure` (one human line per failure, worded for the peer:
the main for `send`, a replica host for `replicate`), the `Runner` that runs sessions under
one deadline, and `ConfirmedLedger`, the record of what the other side confirmed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from collector.fsutil import read_state, write_bytes_atomic

log = logging.getLogger("collector.push")

# Whole run (all rsync passes to one host) must end within this; cron runs hourly.
DEFAULT_RUN_TIMEOUT = 1800.0
# rsync gives up when no data moves for this long (a stalled link, a hung receiver).
DEFAULT_IO_TIMEOUT = 120
DEFAULT_CONNECT_TIMEOUT = 20

# Characters that would break the `command="..."` option or the `-e` string rsync parses.
UNSAFE_IN_PATH = re.compile(r"[\s\"'\\]")

# rsync's "some files vanished before they could be transferred": a chunk removed by the
# main's retention between the listing and the session. Harmless where the outcome of every
# file is checked afterwards (pass 2), never accepted where a session's success is the proof.
RSYNC_VANISHED = 24
_RSYNC_TIMEOUT_CODE = 30

# (size, mtime_ns) of a local file: what a confirmation is about.
Stamp = tuple[int, int]


@dataclass(frozen=True)
class PushTarget:
    """Where and how to reach the receiving host; builds the ssh command rsync runs."""

    user: str
    host: str
    port: int
    identity_file: Path | None
    known_hosts_file: Path | None
    connect_timeout: int = DEFAULT_CONNECT_TIMEOUT

    @property
    def destination(self) -> str:
        """rsync's remote spec: the empty path is the folder the forced command confines to."""
        return f"{self.user}@{self.host}:"

    @property
    def label(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    def ssh_command(self) -> list[str]:
        """ssh that never prompts and never trusts an unknown or changed host key."""
        command = ["ssh", "-p", str(self.port),
                   "-o", "BatchMode=yes",
                   "-o", "StrictHostKeyChecking=yes",
                   "-o", f"ConnectTimeout={self.connect_timeout}",
                   "-o", "ServerAliveInterval=15",
                   "-o", "ServerAliveCountMax=4"]
        if self.identity_file is not None:
            command += ["-i", str(self.identity_file), "-o", "IdentitiesOnly=yes"]
        if self.known_hosts_file is not None:
            # Pinned: only this file decides which host key the other side may present.
            command += ["-o", f"UserKnownHostsFile={self.known_hosts_file}",
                        "-o", "GlobalKnownHostsFile=/dev/null"]
        return command


def rsync_command(target: PushTarget, source_root: Path, options: Sequence[str],
                  io_timeout: int, remote: str = "", times: bool = True) -> list[str]:
    """One rsync over ssh reading NUL-separated relative paths from stdin.

    `--files-from` implies `--relative`, so `day/HH/name` lands as `day/HH/name` under
    `remote` (a folder relative to the confined one; "" is that folder itself). `times`
    keeps the source's mtime (chunks and vault files: rsync's quick check and the age
    `status` shows rely on it); the replicated ledger goes without, so its mtime on the
    receiving host says when the last replication completed.

    `--compress` lets both ends pick their best common codec (zstd on rsync 3.2+): on chunks
    it cuts the bytes on the wire about 7x for well under a CPU second per server-hour
    (`make bench`, bench.bench_replication); rrsync accepts it (`-z`).
    """
    if remote.startswith("/") or ".." in remote.split("/"):
        raise ValueError(f"remote folder must be relative and inside: {remote!r}")
    return ["rsync", "--files-from=-", "--from0", "--compress",
            *(("--times",) if times else ()), f"--timeout={io_timeout}", *options,
            "-e", shlex.join(target.ssh_command()),
            f"{source_root}/", target.destination + remote]


# Pass 1: new files only; never touches a name the other side already has, deletes nothing.
# The names it lists are the files it transferred.
PUSH_NEW = ("--ignore-existing", "--out-format=%n")
# Pass 2: every name against the other side's copy by checksum, writing nothing. Itemizing
# twice lists unchanged files too (`.f...`), so "identical" is a positive answer, never an
# absence; `--existing` leaves out names the other side does not hold instead of reporting
# them as different.
VERIFY = ("--checksum", "--dry-run", "--existing", "--itemize-changes", "--itemize-changes",
          "--out-format=%i %n")
# Vault files: rsync's quick check (size and mtime), so a changed file (a day report that
# gained a line) is sent again; each lands atomically (temp name, then rename).
PUSH_CHANGED = ("--out-format=%n",)
# One line of VERIFY's output: the 11-character item string (`YXcstpoguax`), a space, the name.
_ITEM_LINE = re.compile(r"^(?P<update>[<>ch.*])(?P<kind>[fdLDS]).{9} (?P<name>.+)$")


def parse_verify_output(stdout: str, names: Iterable[str]) -> tuple[set[str], set[str]]:
    """(identical, different) among `names` from VERIFY's itemized output.

    `.f` = regular file not to be updated: same checksum on the other side. Any other item for
    a listed name (`<f...` = would be sent) means the other side's entry differs. Names not
    listed are not there.
    """
    wanted = set(names)
    identical: set[str] = set()
    different: set[str] = set()
    for line in stdout.splitlines():
        match = _ITEM_LINE.match(line)
        if match is None or match["name"] not in wanted:
            continue
        if match["update"] == "." and match["kind"] == "f":
            identical.add(match["name"])
        else:
            different.add(match["name"])
    return identical - different, different


def listed_names(stdout: str, names: Iterable[str]) -> set[str]:
    """The names among `names` that an `--out-format=%n` session printed (transferred)."""
    return {line.strip() for line in stdout.splitlines()} & set(names)


# ---- failures -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """How failure lines name the receiving side and the settings that point at it."""

    name: str  # "the main"
    short: str  # "main", in "(main down or unreachable from here)"
    port_hint: str  # what to check after "connection refused"
    host_hint: str  # what could not be resolved
    folder: str  # what two concurrent pushes share
    busy_hint: str  # the likely reason two pushes run into one folder


MAIN = Peer("the main", "main", "main_port", "main_host", "incoming folder",
            "(two hosts with one server_id?)")
REPLICA = Peer("the replica host", "replica host", "its port in replicas",
               "the host in replicas", "replica folder",
               "(two mains replicating to it?)")


def _patterns(peer: Peer) -> tuple[tuple[re.Pattern[str], str], ...]:
    """(pattern in ssh/rsync stderr, explanation), most specific first."""
    return tuple((re.compile(pattern, re.IGNORECASE), text) for pattern, text in (
        (r"REMOTE HOST IDENTIFICATION HAS CHANGED|Host key for .* has changed",
         f"{peer.name}'s host key does not match the pinned known_hosts ({peer.short} "
         "reinstalled, or someone else answers at that address); not connecting"),
        (r"host key is known for",
         f"{peer.name}'s host key is not in known_hosts; pin it first (not connecting "
         "blindly)"),
        (r"Host key verification failed",
         f"{peer.name}'s host key could not be verified against known_hosts; not connecting"),
        (r"Permission denied \(publickey",
         f"{peer.name} refused this host's SSH key (is it in {peer.name}'s "
         "authorized_keys?)"),
        (r"Connection refused",
         f"connection refused (is sshd running on {peer.name}, and is {peer.port_hint} "
         "right?)"),
        (r"timed out|Connection timed out",
         f"connection timed out ({peer.short} down or unreachable from here)"),
        (r"Could not resolve hostname", f"cannot resolve {peer.host_hint}"),
        (r"No route to host|Network is unreachable", f"no network route to {peer.name}"),
        (r"No space left on device|disk quota", f"{peer.name}'s disk is full"),
        (r"Another instance of rrsync", f"another push into the same {peer.folder} is "
                                        f"running on {peer.name} {peer.busy_hint}"),
    ))


_RRSYNC_ERROR = re.compile(r"rrsync error: (.*)")
# The receiver's forced command (collector.transfer.receive) explains its own failures in one line.
_RECEIVER_ERROR = re.compile(r"collector receive: error: (.*)")


def describe_failure(returncode: int, stderr: str, io_timeout: int,
                     peer: Peer = MAIN) -> str:
    """One short, human explanation of a failed rsync/ssh run (never contains secrets)."""
    for pattern, text in _patterns(peer):
        if pattern.search(stderr):
            return text
    receiver = _RECEIVER_ERROR.search(stderr)
    if receiver:
        return f"{peer.name}'s receiver failed: {receiver.group(1).strip()[:200]}"
    rrsync = _RRSYNC_ERROR.search(stderr)
    if rrsync:
        return f"{peer.name}'s rrsync refused the push: {rrsync.group(1).strip()[:160]}"
    if returncode == _RSYNC_TIMEOUT_CODE:
        return f"no data moved for {io_timeout} s (stalled link or hung {peer.short})"
    lines = [line.strip() for line in stderr.splitlines()
             if line.strip() and not line.startswith("Could not chdir to home directory")]
    detail = next((line for line in lines if line.startswith("rsync: ")),
                  lines[-1] if lines else "no message")
    return f"rsync failed with exit code {returncode}: {detail[:200]}"


class RsyncFailed(Exception):
    """One session failed; `reason` is the one-line explanation (describe_failure)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ---- running sessions ---------------------------------------------------------------------


class Runner:
    """Runs rsync sessions to one host under one deadline; kills the process group on overrun.

    `runs` counts sessions (each is one ssh connection), `listed` the names handed to them:
    the cost of a run, as the tests and the measurements report it.
    """

    def __init__(self, target: PushTarget, io_timeout: int, deadline: float,
                 run_timeout: float, bwlimit_kbps: int | None, peer: Peer = MAIN) -> None:
        self.target = target
        self.io_timeout = io_timeout
        self.deadline = deadline
        self.run_timeout = run_timeout
        self.bwlimit = (f"--bwlimit={bwlimit_kbps}",) if bwlimit_kbps else ()
        self.peer = peer
        self.runs = 0
        self.listed = 0

    def run(self, root: Path, relative: Sequence[str], options: Sequence[str], *,
            remote: str = "", times: bool = True, ok_codes: Sequence[int] = (0,)) -> str:
        """One session over `relative` (paths below `root`); stdout, or RsyncFailed."""
        command = rsync_command(self.target, root, (*options, *self.bwlimit),
                                self.io_timeout, remote, times)
        listing = b"".join(name.encode() + b"\0" for name in relative)
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise RsyncFailed(f"the push did not finish within {self.run_timeout:g} s")
        self.runs += 1
        self.listed += len(relative)
        log.debug("running %s", shlex.join(command))
        env = {**os.environ, "LC_ALL": "C"}  # stable, English messages to classify
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, env=env, start_new_session=True)
        try:
            out, err = process.communicate(listing, timeout=remaining)
        except subprocess.TimeoutExpired:
            kill_group(process)
            raise RsyncFailed(
                f"the push did not finish within {self.run_timeout:g} s") from None
        except BaseException:
            kill_group(process)
            raise
        stderr = err.decode(errors="replace")
        if process.returncode not in ok_codes:
            log.debug("rsync stderr: %s", stderr.strip().replace("\n", " | "))
            raise RsyncFailed(describe_failure(process.returncode, stderr, self.io_timeout,
                                               self.peer))
        return out.decode(errors="replace")


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """Stop rsync and its ssh child; the receiver then drops its temporary file."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


@dataclass
class Pushed:
    """What the two chunk passes found: names below the pushed root."""

    pushed: set[str] = field(default_factory=set)  # transferred by pass 1
    identical: set[str] = field(default_factory=set)  # same bytes there, durable
    different: set[str] = field(default_factory=set)  # other content there: a conflict
    verified: bool = False  # pass 2 succeeded (or had nothing to compare)


def push_and_verify(runner: Runner, root: Path, names: Sequence[str],
                    verify: Iterable[str] | None = None, *, remote: str = "",
                    vanished_ok: bool = False, into: Pushed | None = None) -> Pushed:
    """Pass 1 (`PUSH_NEW`) over `names`, then pass 2 (`VERIFY`) over `verify` plus what pass
    1 transferred (`verify` None: every name). Raises RsyncFailed.

    Each session succeeds only after the receiver synced its filesystem, so by the time pass
    2 has succeeded every name it reports identical is on the other host's disk. Pass 2 is
    skipped when there is nothing to compare. `vanished_ok` accepts rsync's exit 24 (a file
    removed locally meanwhile): the per-name outcome of pass 2 decides anyway. `into` is
    filled as the passes go, so a caller still knows what pass 1 sent when pass 2 fails.
    """
    ok = (0, RSYNC_VANISHED) if vanished_ok else (0,)
    result = Pushed() if into is None else into
    if names:
        result.pushed = listed_names(runner.run(root, names, PUSH_NEW, remote=remote,
                                                ok_codes=ok), names)
    to_verify = sorted(set(names if verify is None else verify) | result.pushed)
    if to_verify:
        result.identical, result.different = parse_verify_output(
            runner.run(root, to_verify, VERIFY, remote=remote, ok_codes=ok), to_verify)
    result.verified = True
    return result


# ---- what the other side confirmed --------------------------------------------------------


@dataclass
class ConfirmedLedger:
    """Files the receiving side confirmed byte-identical and durable: {name: [size, mtime_ns]}.

    Kept per receiving side and keyed by its label (`user@host:port` of the main for `send`,
    `id@host:port` of a replica host for `replicate`): a ledger recorded for another label
    reads as empty, so after a main swap every kept chunk is offered to the new main. A
    missing or unreadable file also reads as empty: the cost is one more comparison of every
    file, never a file taken as confirmed that is not.
    """

    path: Path
    key: str  # "main" or "target": what the label names
    label: str
    chunks: dict[str, Stamp] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path, key: str, label: str) -> ConfirmedLedger:
        ledger = cls(path, key, label)
        raw = read_state(path, log, "every file is compared again")
        if raw is None:
            return ledger
        if not isinstance(raw, dict) or not isinstance(raw.get("chunks"), dict):
            log.warning("ignoring malformed %s; every file is compared again", path)
            return ledger
        if raw.get(key) != label:
            log.info("%s was recorded for %s, not %s: nothing counts as confirmed there",
                     path.name, raw.get(key), label)
            return ledger
        for name, stamp in raw["chunks"].items():
            if (isinstance(stamp, list) and len(stamp) == 2
                    and all(isinstance(value, int) for value in stamp)):
                ledger.chunks[name] = (stamp[0], stamp[1])
        return ledger

    def confirms(self, name: str, stamp: Stamp) -> bool:
        """True when `name` was confirmed as it is now (same size and mtime)."""
        return self.chunks.get(name) == stamp

    def keep_only(self, present: Mapping[str, Stamp]) -> None:
        """Forget files that are gone or changed here (retention removed them, ...)."""
        self.chunks = {name: stamp for name, stamp in self.chunks.items()
                       if present.get(name) == stamp}

    def save(self) -> None:
        """Atomically: a crash leaves the old or the new record, both true."""
        data = {self.key: self.label,
                "chunks": {name: list(stamp) for name, stamp in sorted(self.chunks.items())}}
        write_bytes_atomic(self.path, json.dumps(data, separators=(",", ":")).encode())


def file_stamp(path: Path) -> Stamp | None:
    """(size, mtime_ns) from lstat, or None when the file is gone."""
    try:
        status = path.lstat()
    except FileNotFoundError:
        return None
    return status.st_size, status.st_mtime_ns
