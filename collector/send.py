"""`collector send`: push a secondary's closed chunks to the main with rsync over SSH.

Guarantees, and how they are kept:

* The main never sees a half chunk: rsync writes each file as `.<name>.XXXXXX` in the target
  folder and renames it when complete. That temporary name starts with a dot and does not end
  in `.jsonl`, so it never matches `layout.CHUNK_NAME` and the main's processing skips it; a
  killed transfer leaves at most such a dot file, never a short file under a chunk name.
* A local chunk is deleted only once the main holds it whole on stable storage. Every rsync
  session ends in the main's forced command (`collector receive`, see `collector.receive`),
  which syncs the incoming filesystem after rsync and exits non-zero if that fails; the rsync
  client then fails the session (verified with rsync 3.2.7 and 3.5.0). So no pass deletes
  anything itself (the receiver's `-no-del` would refuse `--remove-source-files` anyway):
  pass 1 pushes the new chunks, pass 2 compares every chunk with the main's copy by checksum,
  and only when both sessions have succeeded are the chunks the main holds byte-identical
  deleted here, by this process, and only if their size and mtime did not change meanwhile.
  Any failure before that point deletes nothing.
* Nothing on the main is ever overwritten. New chunks go with `--ignore-existing`; a chunk
  whose name already exists there is only compared (dry run): identical (a previous run was
  cut off before it could confirm) -> deleted here and counted as `already_on_main`;
  different -> kept here, reported as a conflict and alerted, for a human to decide (two hosts
  with the same server_id, a restored backup...). Both versions survive. A chunk pass 1 sent
  but pass 2 does not find on the main (removed there meanwhile) is kept and sent again.
* Open chunks (`.part`), stray files and the hidden `.collector/` state folder are never
  listed, because only the names `iter_closed_chunks` yields are handed to rsync.
* An unreachable main, a refused key, a changed host key, an rsync error, a receiver that
  could not sync, or a timeout end the run with one `RemoteError` line; every chunk stays
  here for the next run (whatever reached the main is confirmed and deleted by a later run).
  `send_state.json` counts consecutive failures (read by `collector status`) and the team is
  alerted on the third, then once a day while it lasts.

On the main, each secondary's key may only run `collector receive <incoming_dst>/<server_id>`,
which runs `rrsync -wo -munge -no-del` on that folder (`authorized_keys_line` renders the
line; the Ansible role must produce the same text), so remote paths here are relative to that
folder and the day/hour tree is recreated under it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from collector.errors import CredentialsError, LockedError, RemoteError, SettingsError
from collector.layout import hour_label, iter_closed_chunks
from collector.notify import SEND_CONFLICT, SEND_FAILING, Notifier, make_notifier
from collector.outputs import write_bytes_atomic
from collector.settings import Settings

log = logging.getLogger("collector.send")

STATE_FILE = "send_state.json"
LOCK_FILE = "send.lock"
# Where the role installs the `collector` entry point on every host (`_collector_bin`).
DEFAULT_COLLECTOR_BIN = Path("/opt/collector/venv/bin/collector")

# Whole run (all rsync passes) must end within this; cron starts the next run an hour later.
DEFAULT_RUN_TIMEOUT = 1800.0
# rsync gives up when no data moves for this long (a stalled link, a hung main).
DEFAULT_IO_TIMEOUT = 120
DEFAULT_CONNECT_TIMEOUT = 20
# Alert on the third failed run in a row, then every 24th (once a day with an hourly cron).
ALERT_AFTER_FAILURES = 3
REALERT_EVERY = 24
# Hour folders this close to now are never pruned: the stream may be about to write there.
PRUNE_MARGIN_SECONDS = 300.0

# Characters that would break the `command="..."` option or the `-e` string rsync parses.
_UNSAFE_IN_PATH = re.compile(r"[\s\"'\\]")


# ---- the main's side: the one rendering of the restricted key line ----------------------------


def authorized_keys_line(incoming_dst: Path, server_id: str, public_key: str,
                         from_hosts: Sequence[str] = (),
                         collector_bin: Path = DEFAULT_COLLECTOR_BIN) -> str:
    """The main's authorized_keys line that confines a secondary's key to its incoming folder.

    `restrict,command="<collector_bin> receive <incoming_dst>/<server_id>" <type> <key>
    <server_id>`: `restrict` drops forwarding, PTY and ~/.ssh/rc; the forced command runs
    `rrsync -wo -munge -no-del` below that folder and syncs it to disk (`collector.receive`).
    The key's own comment is replaced by the server_id, so the file says whose key it is.
    `from_hosts` optionally pins the addresses the key may come from.
    """
    target = f"{incoming_dst}/{server_id}"
    if _UNSAFE_IN_PATH.search(target) or "/" in server_id or server_id in ("", ".", ".."):
        raise ValueError(f"unsafe incoming folder for an authorized_keys line: {target!r}")
    if not collector_bin.is_absolute() or _UNSAFE_IN_PATH.search(str(collector_bin)):
        raise ValueError(f"collector_bin must be an absolute path without spaces or quotes: "
                         f"{str(collector_bin)!r}")
    key_fields = public_key.split()
    if len(key_fields) < 2 or not key_fields[0].startswith(("ssh-", "ecdsa-", "sk-")):
        raise ValueError("public_key must look like 'ssh-ed25519 AAAA... [comment]'")
    options = "restrict"
    if from_hosts:
        options += f',from="{",".join(from_hosts)}"'
    options += f',command="{collector_bin} receive {target}"'
    return f"{options} {key_fields[0]} {key_fields[1]} {server_id}"


# ---- the secondary's side: how rsync and ssh are called --------------------------------------


@dataclass(frozen=True)
class PushTarget:
    """Where and how to reach the main; builds the ssh command rsync runs."""

    user: str
    host: str
    port: int
    identity_file: Path | None
    known_hosts_file: Path | None
    connect_timeout: int = DEFAULT_CONNECT_TIMEOUT

    @property
    def destination(self) -> str:
        """rsync's remote spec: the empty path is rrsync's folder, incoming_dst/server_id."""
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
            # Pinned: only this file decides which host key the main may present.
            command += ["-o", f"UserKnownHostsFile={self.known_hosts_file}",
                        "-o", "GlobalKnownHostsFile=/dev/null"]
        return command


def push_target(settings: Settings, connect_timeout: int = DEFAULT_CONNECT_TIMEOUT) -> PushTarget:
    """The main's address from the settings; refuses paths ssh or rsync would split."""
    for key in ("ssh_identity_file", "ssh_known_hosts_file"):
        value = getattr(settings, key)
        if value is not None and _UNSAFE_IN_PATH.search(str(value)):
            raise SettingsError(f"{settings.source}: {key} must not contain spaces or quotes")
    return PushTarget(settings.main_user, settings.main_host, settings.main_port,
                      settings.ssh_identity_file, settings.ssh_known_hosts_file,
                      connect_timeout)


def rsync_command(target: PushTarget, source_root: Path, options: Sequence[str],
                  io_timeout: int) -> list[str]:
    """One rsync over ssh reading NUL-separated relative paths from stdin.

    `--files-from` implies `--relative`, so `day/HH/name` lands as `day/HH/name` under the
    remote folder. Only options that `rrsync -wo -munge -no-del` accepts are used here (no
    `--remove-source-files`, no `--delete*`; tested for real with rsync 3.2.7 and 3.5.0).
    """
    return ["rsync", "--files-from=-", "--from0", "--times", f"--timeout={io_timeout}",
            *options, "-e", shlex.join(target.ssh_command()),
            f"{source_root}/", target.destination]


# Pass 1: new chunks only; never touches a name the main already has, deletes nothing. The
# names it lists are the chunks it transferred.
PUSH_NEW = ("--ignore-existing", "--out-format=%n")
# Pass 2: every name against the main's copy by checksum, writing nothing. Itemizing twice
# lists unchanged files too (`.f...`), so "identical" is a positive answer, never an absence;
# `--existing` leaves out names the main does not hold instead of reporting them as different.
VERIFY = ("--checksum", "--dry-run", "--existing", "--itemize-changes", "--itemize-changes",
          "--out-format=%i %n")
# One line of VERIFY's output: the 11-character item string (`YXcstpoguax`), a space, the name.
_ITEM_LINE = re.compile(r"^(?P<update>[<>ch.*])(?P<kind>[fdLDS]).{9} (?P<name>.+)$")


def parse_verify_output(stdout: str, names: Iterable[str]) -> tuple[set[str], set[str]]:
    """(identical, different) among `names` from VERIFY's itemized output.

    `.f` = regular file not to be updated: same checksum on the main. Any other item for a
    listed name (`<f...` = would be sent) means the main's entry differs. Names not listed are
    not on the main.
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


# ---- failures -----------------------------------------------------------------------------

# (pattern in ssh/rsync stderr, explanation), most specific first.
_FAILURE_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), text) for pattern, text in (
        (r"REMOTE HOST IDENTIFICATION HAS CHANGED|Host key for .* has changed",
         "the main's host key does not match the pinned known_hosts (main reinstalled, "
         "or someone else answers at that address); not connecting"),
        (r"host key is known for",
         "the main's host key is not in known_hosts; pin it first (not connecting blindly)"),
        (r"Host key verification failed",
         "the main's host key could not be verified against known_hosts; not connecting"),
        (r"Permission denied \(publickey",
         "the main refused this host's SSH key (is it in the main's authorized_keys?)"),
        (r"Connection refused",
         "connection refused (is sshd running on the main, and is main_port right?)"),
        (r"timed out|Connection timed out",
         "connection timed out (main down or unreachable from here)"),
        (r"Could not resolve hostname", "cannot resolve main_host"),
        (r"No route to host|Network is unreachable", "no network route to the main"),
        (r"No space left on device|disk quota", "the main's disk is full"),
        (r"Another instance of rrsync", "another push into the same incoming folder is "
                                        "running on the main (two hosts with one server_id?)"),
    ))
_RRSYNC_ERROR = re.compile(r"rrsync error: (.*)")
# The main's forced command (collector.receive) explains its own failures in one line.
_RECEIVER_ERROR = re.compile(r"collector receive: error: (.*)")
_RSYNC_TIMEOUT_CODE = 30


def describe_failure(returncode: int, stderr: str, io_timeout: int) -> str:
    """One short, human explanation of a failed rsync/ssh run (never contains secrets)."""
    for pattern, text in _FAILURE_PATTERNS:
        if pattern.search(stderr):
            return text
    receiver = _RECEIVER_ERROR.search(stderr)
    if receiver:
        return f"the main's receiver failed: {receiver.group(1).strip()[:200]}"
    rrsync = _RRSYNC_ERROR.search(stderr)
    if rrsync:
        return f"the main's rrsync refused the push: {rrsync.group(1).strip()[:160]}"
    if returncode == _RSYNC_TIMEOUT_CODE:
        return f"no data moved for {io_timeout} s (stalled link or hung main)"
    lines = [line.strip() for line in stderr.splitlines()
             if line.strip() and not line.startswith("Could not chdir to home directory")]
    detail = next((line for line in lines if line.startswith("rsync: ")),
                  lines[-1] if lines else "no message")
    return f"rsync failed with exit code {returncode}: {detail[:200]}"


class SendConflictError(RemoteError):
    """Some chunk names exist on the main with other content; those chunks were kept here."""

    def __init__(self, message: str, result: SendResult) -> None:
        super().__init__(message)
        self.result = result


# ---- the state file read by `collector status` ---------------------------------------------


@dataclass
class SendState:
    """What the last runs did; times are ISO 8601 UTC strings, "" for never."""

    consecutive_failures: int = 0
    first_failure_at: str = ""
    last_attempt_at: str = ""
    last_error: str = ""
    last_success_at: str = ""
    last_success_files: int = 0
    last_success_bytes: int = 0
    conflicts: list[str] = field(default_factory=list)


def load_send_state(path: Path) -> SendState:
    """The recorded state; a missing or unreadable file reads as "never ran"."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return SendState()
    except (OSError, ValueError) as error:
        log.warning("ignoring unreadable %s (%s)", path, type(error).__name__)
        return SendState()
    if not isinstance(raw, dict):
        return SendState()
    known = SendState.__dataclass_fields__
    return SendState(**{key: value for key, value in raw.items() if key in known})


def save_send_state(path: Path, state: SendState) -> None:
    """Write atomically: a reader sees the old or the new state."""
    write_bytes_atomic(path, json.dumps(asdict(state), indent=1, sort_keys=True).encode())


# ---- one run ------------------------------------------------------------------------------


@dataclass
class SendResult:
    """What one run did; paths are relative to data_storage_dst (`day/HH/name`)."""

    # Transferred by this run, confirmed identical and durable on the main, deleted here.
    sent: list[str] = field(default_factory=list)
    bytes_sent: int = 0
    # Were on the main before this run (an earlier run could not confirm them); deleted here.
    already_on_main: list[str] = field(default_factory=list)
    # On the main with other content: kept on both sides.
    conflicts: list[str] = field(default_factory=list)
    # Not found on the main when compared, or changed here meanwhile: kept for the next run.
    unconfirmed: list[str] = field(default_factory=list)
    # Transferred by pass 1 of this run (deleted here only once confirmed).
    pushed: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    pruned_dirs: int = 0
    rsync_runs: int = 0

    def summary(self) -> str:
        text = (f"{len(self.sent)} chunks sent ({self.bytes_sent} bytes), "
                f"{len(self.already_on_main)} already on the main")
        if self.conflicts:
            text += f", {len(self.conflicts)} in conflict (kept here)"
        if self.unconfirmed:
            text += f", {len(self.unconfirmed)} not confirmed by the main (kept here)"
        return text


@contextlib.contextmanager
def send_lock(state_dir: Path) -> Iterator[None]:
    """One send at a time per host (a slow push must not overlap the next cron run)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / LOCK_FILE).open("a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(f"another collector send is running "
                              f"(lock {state_dir / LOCK_FILE})") from None
        yield


class _RsyncFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Runner:
    """Runs rsync passes under one deadline; kills the whole process group on overrun."""

    def __init__(self, target: PushTarget, root: Path, io_timeout: int, deadline: float,
                 run_timeout: float, bwlimit_kbps: int | None) -> None:
        self.target = target
        self.root = root
        self.io_timeout = io_timeout
        self.deadline = deadline
        self.run_timeout = run_timeout
        self.bwlimit = (f"--bwlimit={bwlimit_kbps}",) if bwlimit_kbps else ()
        self.runs = 0

    def run(self, relative: Sequence[str], options: Sequence[str]) -> str:
        """Run one pass over `relative`; return stdout, raise _RsyncFailed on any failure."""
        command = rsync_command(self.target, self.root, (*options, *self.bwlimit),
                                self.io_timeout)
        listing = b"".join(name.encode() + b"\0" for name in relative)
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise _RsyncFailed(f"the push did not finish within {self.run_timeout:g} s")
        self.runs += 1
        log.debug("running %s", shlex.join(command))
        env = {**os.environ, "LC_ALL": "C"}  # stable, English messages to classify
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, env=env, start_new_session=True)
        try:
            out, err = process.communicate(listing, timeout=remaining)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            raise _RsyncFailed(
                f"the push did not finish within {self.run_timeout:g} s") from None
        except BaseException:
            _kill_group(process)
            raise
        stderr = err.decode(errors="replace")
        if process.returncode != 0:
            log.debug("rsync stderr: %s", stderr.strip().replace("\n", " | "))
            raise _RsyncFailed(describe_failure(process.returncode, stderr, self.io_timeout))
        return out.decode(errors="replace")


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """Stop rsync and its ssh child; the receiver then drops its temporary file."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def send(settings: Settings, notifier: Notifier | None = None, *,
         run_timeout: float = DEFAULT_RUN_TIMEOUT, io_timeout: int = DEFAULT_IO_TIMEOUT,
         connect_timeout: int = DEFAULT_CONNECT_TIMEOUT,
         bwlimit_kbps: int | None = None) -> SendResult:
    """Push every closed chunk of this host to the main; see the module docstring.

    Raises `RemoteError` (after recording the failure, and alerting when it repeats) when the
    main could not be reached or the push failed, `SendConflictError` when some names exist on
    the main with other content, `SettingsError` on a main (its chunks are processed where
    they are, so there is nothing to send), `LockedError` when another send is running.
    """
    if settings.is_main:
        raise SettingsError(f"{settings.source}: role=main: send runs on secondaries only "
                            "(the main processes its own chunks in place)")
    identity = settings.ssh_identity_file
    if identity is not None and not os.access(identity, os.R_OK):
        raise CredentialsError(f"ssh_identity_file {identity} does not exist "
                               "or is not readable by this user")
    target = push_target(settings, connect_timeout)
    notifier = notifier or make_notifier(settings)
    root = settings.data_storage_dst
    state_path = settings.state_dir / STATE_FILE
    result = SendResult()
    with send_lock(settings.state_dir):
        chunks = _own_chunks(settings, result)
        if not chunks:
            log.info("no closed chunks to send")
            result.pruned_dirs = prune_empty_dirs(root, settings, time.time())
            return result
        state = load_send_state(state_path)
        state.last_attempt_at = _utc_now()
        runner = _Runner(target, root, io_timeout, time.monotonic() + run_timeout, run_timeout,
                         bwlimit_kbps)
        try:
            _push(runner, root, chunks, result)
        except _RsyncFailed as failure:
            result.rsync_runs = runner.runs
            _record_failure(settings, notifier, state, state_path, target, chunks, result,
                            failure.reason)  # raises RemoteError
        result.rsync_runs = runner.runs
        if state.consecutive_failures:
            log.info("push to the main %s works again after %d failed runs (failing since %s)",
                     target.label, state.consecutive_failures, state.first_failure_at)
        state.consecutive_failures = 0
        state.first_failure_at = ""
        state.last_error = ""
        state.last_success_at = state.last_attempt_at
        state.last_success_files = len(result.sent) + len(result.already_on_main)
        state.last_success_bytes = result.bytes_sent
        state.conflicts = list(result.conflicts)
        save_send_state(state_path, state)
        result.pruned_dirs = prune_empty_dirs(root, settings, time.time())
    log.info("send to %s done: %s", target.label, result.summary())
    if result.conflicts:
        _report_conflicts(notifier, target, result)
    return result


@dataclass(frozen=True)
class _LocalChunk:
    """What a chunk looked like before the push; deleted only if it still looks the same."""

    size: int
    mtime_ns: int
    inode: int


def _own_chunks(settings: Settings, result: SendResult) -> dict[str, _LocalChunk]:
    """Closed chunks of this server, `day/HH/name` -> how they were; others are left alone."""
    chunks: dict[str, _LocalChunk] = {}
    for chunk in iter_closed_chunks(settings.data_storage_dst):
        relative = chunk.path.relative_to(settings.data_storage_dst).as_posix()
        if chunk.server_id != settings.server_id:
            result.foreign.append(relative)
            continue
        with contextlib.suppress(FileNotFoundError):
            status = chunk.path.lstat()
            chunks[relative] = _LocalChunk(status.st_size, status.st_mtime_ns, status.st_ino)
    if result.foreign:
        log.warning("not sending %d chunks named for another server (e.g. %s); "
                    "the main would file them under %s", len(result.foreign), result.foreign[0],
                    settings.server_id)
    return chunks


def _push(runner: _Runner, root: Path, chunks: dict[str, _LocalChunk],
          result: SendResult) -> None:
    """Push, verify, then delete what the main confirmed; fills `result`.

    Each session succeeds only after the main synced its filesystem, so by the time pass 2
    has succeeded every chunk it reports identical is on the main's disk.
    """
    names = sorted(chunks)
    listed = set(names)
    pushed = runner.run(names, PUSH_NEW)
    result.pushed = sorted({line.strip() for line in pushed.splitlines()} & listed)
    identical, different = parse_verify_output(runner.run(names, VERIFY), names)
    result.conflicts = sorted(different)
    newly_sent = set(result.pushed)
    for name in names:
        if name in different:
            continue
        if name not in identical or not _delete_if_unchanged(root / name, chunks[name]):
            result.unconfirmed.append(name)
        elif name in newly_sent:
            result.sent.append(name)
        else:
            result.already_on_main.append(name)
    result.bytes_sent = sum(chunks[name].size for name in result.sent)
    if result.unconfirmed:
        log.warning("%d chunks were not confirmed by the main and are kept for the next run "
                    "(e.g. %s)", len(result.unconfirmed), result.unconfirmed[0])


def _delete_if_unchanged(path: Path, before: _LocalChunk) -> bool:
    """Delete `path` if it is still the file that was compared; False if it was kept."""
    try:
        status = path.lstat()
    except FileNotFoundError:
        return False
    if (status.st_size, status.st_mtime_ns, status.st_ino) != (
            before.size, before.mtime_ns, before.inode):
        log.warning("%s changed while it was being sent; kept for the next run", path)
        return False
    path.unlink()
    return True


def _record_failure(settings: Settings, notifier: Notifier, state: SendState, state_path: Path,
                    target: PushTarget, chunks: dict[str, _LocalChunk], result: SendResult,
                    reason: str) -> None:
    state.consecutive_failures += 1
    if not state.first_failure_at:
        state.first_failure_at = state.last_attempt_at
    # Nothing is deleted before both passes succeeded: every chunk is still here.
    message = f"cannot push to the main {target.label}: {reason}; {len(chunks)} chunks kept here"
    if result.pushed:
        message += (f" ({len(result.pushed)} reached the main and are deleted here once a "
                    "later run confirms them)")
    state.last_error = message
    save_send_state(state_path, state)
    failures = state.consecutive_failures
    if failures >= ALERT_AFTER_FAILURES and (failures - ALERT_AFTER_FAILURES) % REALERT_EVERY == 0:
        notifier.alert(SEND_FAILING,
                       f"push from {settings.server_id} to the main failing "
                       f"{failures} runs in a row: {reason}",
                       f"Failing since {state.first_failure_at}. {len(chunks)} chunks wait on "
                       f"{settings.server_id} and are sent when the main is reachable again.")
    raise RemoteError(message)


def _report_conflicts(notifier: Notifier, target: PushTarget, result: SendResult) -> None:
    first = result.conflicts[0]
    for name in result.conflicts:
        log.error("conflict: the main %s holds %s with other content; kept here", target.label,
                  name)
    notifier.alert(SEND_CONFLICT,
                   f"{len(result.conflicts)} chunks differ from the main's copy of the same name",
                   "Both versions are kept (local copy not deleted, main's copy not "
                   f"overwritten), e.g. {first}. Two hosts with one server_id?")
    raise SendConflictError(
        f"{len(result.conflicts)} chunks exist on the main {target.label} with other content "
        f"and were kept here (e.g. {first}); the others were sent", result)


def prune_empty_dirs(root: Path, settings: Settings, now: float) -> int:
    """Remove empty day/hour folders, except those the stream may be writing into.

    The stream files a chunk under the hour of receipt, so only the current hour (and, near a
    boundary, the neighbouring one) can gain a file; those folders and their days stay.
    """
    if not root.is_dir():
        return 0
    protected = {hour_label(datetime.fromtimestamp(now + offset, UTC), settings.timezone)
                 for offset in (-PRUNE_MARGIN_SECONDS, 0.0, PRUNE_MARGIN_SECONDS)}
    protected_days = {day for day, _ in protected}
    removed = 0
    for day_dir in sorted(root.iterdir()):
        if day_dir.name.startswith(".") or not day_dir.is_dir():
            continue
        for hour_dir in sorted(day_dir.iterdir()):
            if hour_dir.is_dir() and (day_dir.name, hour_dir.name) not in protected:
                removed += _rmdir_if_empty(hour_dir)
        if day_dir.name not in protected_days:
            removed += _rmdir_if_empty(day_dir)
    return removed


def _rmdir_if_empty(path: Path) -> int:
    try:
        path.rmdir()
    except OSError:  # not empty (or already gone): nothing to prune
        return 0
    return 1
