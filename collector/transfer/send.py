"""`collector send`: push a secondary's closed chunks to the main with rsync over SSH, keep them.

Guarantees, and how they are kept (the rsync/ssh machinery is shared with `collector
replicate` and lives in `collector.transfer.rsync`):

* The main never sees a half chunk: rsync writes each file as `.<name>.XXXXXX` in the target
  folder and renames it when complete. That temporary name starts with a dot and does not end
  in `.jsonl`, so it never matches `layout.CHUNK_NAME` and the main's processing skips it; a
  killed transfer leaves at most such a dot file, never a short file under a chunk name.
* A chunk counts as on the main only once the main holds it whole on stable storage. Every
  rsync session ends in the main's forced command (`collector receive`, see
  `collector.transfer.receive`), which syncs the incoming filesystem after rsync and exits
  non-zero if that fails; the rsync client then fails the session (verified with rsync
  3.2.7 and 3.5.0).
  Pass 1 pushes the chunks not yet confirmed, pass 2 compares them with the main's copy by
  checksum, and only when both sessions succeeded are the chunks the main holds
  byte-identical recorded as confirmed (`state_dir/send_ledger.json`, `{"main":
  "<user@host:port>", "chunks": {"day/HH/name": [size, mtime_ns]}}`), and only if their size
  and mtime did not change meanwhile. Any failure before that point records nothing.
* Two copies until published (docs/replication.md): a confirmed chunk is NOT deleted. It stays
  here as the second copy until its hour ended more than `raw_retention_days` ago, and only
  then is removed, if it is confirmed on the current main (`collector.transfer.retention`). The
  ledger is keyed by the main's label: after a main swap or a promotion the old record
  counts for nothing, so every kept chunk is offered to the new main again (what it already
  holds is only compared, counted as `already_on_main`).
* Nothing on the main is ever overwritten. New chunks go with `--ignore-existing`; a chunk
  whose name already exists there is only compared (dry run): identical (a previous run was
  cut off before it could confirm) -> recorded, counted as `already_on_main`; different ->
  kept here unconfirmed, reported as a conflict and alerted, for a human to decide (two hosts
  with the same server_id, a restored backup...). Both versions survive. A chunk pass 1 sent
  but pass 2 does not find on the main (removed there meanwhile) is sent again next run.
* Open chunks (`.part`), stray files and the hidden `.collector/` state folder are never
  listed, because only the names `iter_closed_chunks` yields are handed to rsync.
* An unreachable main, a refused key, a changed host key, an rsync error, a receiver that
  could not sync, or a timeout end the run with one `RemoteError` line; nothing new is
  recorded (whatever reached the main is confirmed by a later run). `send_state.json`
  counts consecutive failures (read by `collector status`) and the team is alerted on the
  third, then once a day while it lasts. Retention still runs: it only ever removes chunks
  an earlier run confirmed.
* This host's replica store (`replica_dst`, what the main replicates here) is pruned by the
  same hourly run (`collector.transfer.retention.prune_replica_store`); the vault copy never is.

On the main, each secondary's key may only run `collector receive <incoming_dst>/<server_id>`,
which runs `rrsync -wo -munge -no-del` on that folder (`authorized_keys_line` renders the
line; the Ansible role must produce the same text), so remote paths here are relative to that
folder and the day/hour tree is recreated under it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from collector.alerts.notify import (
    SEND_CONFLICT,
    SEND_FAILING,
    Notifier,
    alert_failure,
    make_notifier,
)
from collector.clock import utc_now_text
from collector.errors import CredentialsError, RemoteError, SettingsError
from collector.fsutil import exclusive_lock, read_state, write_bytes_atomic
from collector.layout import hour_label, iter_closed_chunks
from collector.settings import Settings
from collector.transfer.retention import (
    delete_kept_chunks,
    plan_kept_deletions,
    prune_replica_store,
)
from collector.transfer.rsync import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_IO_TIMEOUT,
    DEFAULT_RUN_TIMEOUT,
    MAIN,
    PUSH_NEW,
    UNSAFE_IN_PATH,
    VERIFY,
    ConfirmedLedger,
    Pushed,
    PushTarget,
    RsyncFailed,
    Runner,
    Stamp,
    describe_failure,
    file_stamp,
    parse_verify_output,
    push_and_verify,
    rsync_command,
)

# Re-exported: tests and the role's tests import them from here.
__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_IO_TIMEOUT",
    "DEFAULT_RUN_TIMEOUT",
    "PUSH_NEW",
    "VERIFY",
    "PushTarget",
    "SendConflictError",
    "SendResult",
    "SendState",
    "authorized_keys_line",
    "describe_failure",
    "load_send_state",
    "parse_verify_output",
    "push_target",
    "restricted_key_line",
    "rsync_command",
    "send",
]

log = logging.getLogger("collector.send")

STATE_FILE = "send_state.json"
# What the current main confirmed (see the module docstring); `collector status` reads it too.
LEDGER_FILE = "send_ledger.json"
LOCK_FILE = "send.lock"
# Where the role installs the `collector` entry point on every host (`_collector_bin`).
DEFAULT_COLLECTOR_BIN = Path("/opt/collector/venv/bin/collector")

# Alert on the third failed run in a row, then every 24th (once a day with an hourly cron).
ALERT_AFTER_FAILURES = 3
# Hour folders this close to now are never pruned: the stream may be about to write there.
PRUNE_MARGIN_SECONDS = 300.0

_UNSAFE_IN_PATH = UNSAFE_IN_PATH


# ---- the main's side: the one rendering of the restricted key line ----------------------------


def authorized_keys_line(incoming_dst: Path, server_id: str, public_key: str,
                         from_hosts: Sequence[str] = (),
                         collector_bin: Path = DEFAULT_COLLECTOR_BIN) -> str:
    """The main's authorized_keys line that confines a secondary's key to its incoming folder.

    `restrict,command="<collector_bin> receive <incoming_dst>/<server_id>" <type> <key>
    <server_id>`: `restrict` drops forwarding, PTY and ~/.ssh/rc; the forced command runs
    `rrsync -wo -munge -no-del` below that folder and syncs it to disk
    (`collector.transfer.receive`).
    The key's own comment is replaced by the server_id, so the file says whose key it is.
    `from_hosts` optionally pins the addresses the key may come from.
    """
    if "/" in server_id or server_id in ("", ".", ".."):
        raise ValueError(f"unsafe incoming folder for an authorized_keys line: "
                         f"{f'{incoming_dst}/{server_id}'!r}")
    return restricted_key_line(Path(f"{incoming_dst}/{server_id}"), server_id, public_key,
                               from_hosts, collector_bin)


def restricted_key_line(folder: Path, owner: str, public_key: str,
                        from_hosts: Sequence[str] = (),
                        collector_bin: Path = DEFAULT_COLLECTOR_BIN) -> str:
    """`restrict[,from=...],command="<collector_bin> receive <folder>" <type> <key> <owner>`:
    the one rendering of a key confined to writing into `folder` (a secondary's incoming
    folder on the main, or `replica_dst` on a replica host for the main's key)."""
    target = str(folder)
    if _UNSAFE_IN_PATH.search(target) or not folder.is_absolute():
        raise ValueError(f"unsafe incoming folder for an authorized_keys line: {target!r}")
    if _UNSAFE_IN_PATH.search(owner) or not owner:
        raise ValueError(f"unsafe key owner for an authorized_keys line: {owner!r}")
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
    return f"{options} {key_fields[0]} {key_fields[1]} {owner}"


# ---- the secondary's side ------------------------------------------------------------------


def push_target(settings: Settings, connect_timeout: int = DEFAULT_CONNECT_TIMEOUT) -> PushTarget:
    """The main's address from the settings; refuses paths ssh or rsync would split."""
    check_ssh_paths(settings)
    return PushTarget(settings.main_user, settings.main_host, settings.main_port,
                      settings.ssh_identity_file, settings.ssh_known_hosts_file,
                      connect_timeout)


def main_label(settings: Settings) -> str:
    """The label the send ledger is keyed by (`PushTarget.label`), without any checks."""
    return f"{settings.main_user}@{settings.main_host}:{settings.main_port}"


def check_ssh_paths(settings: Settings) -> None:
    """SettingsError when the key or known_hosts path would break ssh's or rsync's parsing;
    CredentialsError when the key cannot be read by this user."""
    for key in ("ssh_identity_file", "ssh_known_hosts_file"):
        value = getattr(settings, key)
        if value is not None and UNSAFE_IN_PATH.search(str(value)):
            raise SettingsError(f"{settings.path}: {key} must not contain spaces or quotes")
    identity = settings.ssh_identity_file
    if identity is not None and not os.access(identity, os.R_OK):
        raise CredentialsError(f"ssh_identity_file {identity} does not exist "
                               "or is not readable by this user")


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
    raw = read_state(path, log, "the failure count starts again")
    if not isinstance(raw, dict):
        return SendState()
    known = SendState.__dataclass_fields__
    return SendState(**{key: value for key, value in raw.items() if key in known})


def save_send_state(path: Path, state: SendState) -> None:
    """Write atomically: a reader sees the old or the new state."""
    write_bytes_atomic(path, json.dumps(asdict(state), indent=1, sort_keys=True).encode())


def load_send_ledger(settings: Settings) -> ConfirmedLedger:
    """What the current main confirmed (empty when recorded for another main)."""
    return ConfirmedLedger.load(settings.state_dir / LEDGER_FILE, "main", main_label(settings))


# ---- one run ------------------------------------------------------------------------------


@dataclass
class SendResult:
    """What one run did; paths are relative to data_storage_dst (`day/HH/name`)."""

    # Transferred by this run, confirmed identical and durable on the main, kept here.
    sent: list[str] = field(default_factory=list)
    bytes_sent: int = 0
    # Were on the main before this run (an earlier run, or an earlier main's record).
    already_on_main: list[str] = field(default_factory=list)
    # On the main with other content: kept on both sides, unconfirmed.
    conflicts: list[str] = field(default_factory=list)
    # Not found on the main when compared, or changed here meanwhile: offered again next run.
    unconfirmed: list[str] = field(default_factory=list)
    # Transferred by pass 1 of this run (confirmed only by a pass 2 that succeeded).
    pushed: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    # Confirmed on the current main and still kept here after this run (the second copy).
    kept: int = 0
    # Removed by retention: confirmed on the current main, hour past raw_retention_days.
    deleted: list[str] = field(default_factory=list)
    # Chunks removed from this host's replica store by replica retention.
    replica_pruned: int = 0
    pruned_dirs: int = 0
    rsync_runs: int = 0

    def summary(self) -> str:
        text = (f"{len(self.sent)} chunks sent ({self.bytes_sent} bytes), "
                f"{len(self.already_on_main)} already on the main")
        if self.conflicts:
            text += f", {len(self.conflicts)} in conflict (kept here)"
        if self.unconfirmed:
            text += f", {len(self.unconfirmed)} not confirmed by the main (kept here)"
        text += f"; {self.kept} confirmed chunks kept here until retention"
        if self.deleted:
            text += f", {len(self.deleted)} removed by retention"
        if self.replica_pruned:
            text += f", {self.replica_pruned} replica chunks removed by retention"
        return text


@contextlib.contextmanager
def send_lock(state_dir: Path) -> Iterator[None]:
    """One send at a time per host (a slow push must not overlap the next cron run)."""
    path = state_dir / LOCK_FILE
    with exclusive_lock(path, f"another collector send is running (lock {path})"):
        yield


def send(settings: Settings, notifier: Notifier | None = None, *,
         run_timeout: float = DEFAULT_RUN_TIMEOUT, io_timeout: int = DEFAULT_IO_TIMEOUT,
         connect_timeout: int = DEFAULT_CONNECT_TIMEOUT,
         bwlimit_kbps: int | None = None, now: datetime | None = None) -> SendResult:
    """Push every closed chunk the current main has not confirmed, then apply retention.

    `now` is the clock retention and the empty-folder pruning use (tests pass a later one).
    Raises `RemoteError` (after recording the failure, and alerting when it repeats) when the
    main could not be reached or the push failed, `SendConflictError` when some names exist on
    the main with other content, `SettingsError` on a main (its chunks are processed where
    they are, so there is nothing to send), `LockedError` when another send is running.
    """
    if settings.is_main:
        raise SettingsError(f"{settings.path}: role=main: send runs on secondaries only "
                            "(the main processes its own chunks in place)")
    target = push_target(settings, connect_timeout)
    notifier = notifier or make_notifier(settings)
    moment = now or datetime.now(UTC)
    root = settings.data_storage_dst
    state_path = settings.state_dir / STATE_FILE
    result = SendResult()
    failure = ""
    with send_lock(settings.state_dir):
        chunks = _own_chunks(settings, result)
        ledger = ConfirmedLedger.load(settings.state_dir / LEDGER_FILE, "main", target.label)
        recorded = dict(ledger.chunks)
        ledger.keep_only({name: chunk.stamp for name, chunk in chunks.items()})
        waiting = {name: chunk for name, chunk in chunks.items()
                   if not ledger.confirms(name, chunk.stamp)}
        if not waiting:
            log.info("no closed chunks to send (%d kept here, confirmed on the main)",
                     len(ledger.chunks))
        else:
            failure = _push_and_record(settings, notifier, target, waiting, ledger, result,
                                       state_path, run_timeout, io_timeout, bwlimit_kbps)
        present = {name: chunk.stamp for name, chunk in chunks.items()}
        doomed = plan_kept_deletions(ledger.chunks, present, settings.timezone,
                                     settings.raw_retention_days, moment)
        result.deleted = delete_kept_chunks(root, doomed, ledger.chunks)
        for name in result.deleted:
            del ledger.chunks[name]
        if ledger.chunks != recorded:
            ledger.save()
        result.kept = len(ledger.chunks)
        result.replica_pruned = _prune_replicas(settings, moment)
        result.pruned_dirs = prune_empty_dirs(root, settings, moment.timestamp())
    if failure:
        raise RemoteError(failure)
    if waiting or result.deleted or result.replica_pruned:
        log.info("send to %s done: %s", target.label, result.summary())
    if result.conflicts:
        _report_conflicts(notifier, target, result)
    return result


def _push_and_record(settings: Settings, notifier: Notifier, target: PushTarget,
                     waiting: dict[str, _LocalChunk], ledger: ConfirmedLedger,
                     result: SendResult, state_path: Path, run_timeout: float,
                     io_timeout: int, bwlimit_kbps: int | None) -> str:
    """Both passes and the state file; the failure line ("" on success), alerted if it repeats.
    """
    state = load_send_state(state_path)
    state.last_attempt_at = utc_now_text()
    runner = Runner(target, io_timeout, time.monotonic() + run_timeout, run_timeout,
                    bwlimit_kbps, MAIN)
    try:
        _push(runner, settings.data_storage_dst, waiting, result, ledger)
    except RsyncFailed as failed:
        result.rsync_runs = runner.runs
        return _record_failure(settings, notifier, state, state_path, target, waiting, result,
                               failed.reason)
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
    return ""


@dataclass(frozen=True)
class _LocalChunk:
    """What a chunk looked like before the push; recorded only if it still looks the same."""

    size: int
    mtime_ns: int

    @property
    def stamp(self) -> Stamp:
        return self.size, self.mtime_ns


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
            chunks[relative] = _LocalChunk(status.st_size, status.st_mtime_ns)
    if result.foreign:
        log.warning("not sending %d chunks named for another server (e.g. %s); "
                    "the main would file them under %s", len(result.foreign), result.foreign[0],
                    settings.server_id)
    return chunks


def _push(runner: Runner, root: Path, waiting: dict[str, _LocalChunk], result: SendResult,
          ledger: ConfirmedLedger) -> None:
    """Push, verify, then record what the main confirmed; fills `result`.

    Each session succeeds only after the main synced its filesystem, so by the time pass 2
    has succeeded every chunk it reports identical is on the main's disk.
    """
    names = sorted(waiting)
    outcome = Pushed()
    try:
        push_and_verify(runner, root, names, into=outcome)
    finally:
        result.pushed = sorted(outcome.pushed)
    result.conflicts = sorted(outcome.different)
    for name in names:
        if name in outcome.different:
            continue
        if name not in outcome.identical or file_stamp(root / name) != waiting[name].stamp:
            result.unconfirmed.append(name)
        elif name in outcome.pushed:
            result.sent.append(name)
            ledger.chunks[name] = waiting[name].stamp
        else:
            result.already_on_main.append(name)
            ledger.chunks[name] = waiting[name].stamp
    result.bytes_sent = sum(waiting[name].size for name in result.sent)
    if result.unconfirmed:
        log.warning("%d chunks were not confirmed by the main and are offered again next run "
                    "(e.g. %s)", len(result.unconfirmed), result.unconfirmed[0])


def _record_failure(settings: Settings, notifier: Notifier, state: SendState, state_path: Path,
                    target: PushTarget, waiting: dict[str, _LocalChunk], result: SendResult,
                    reason: str) -> str:
    state.consecutive_failures += 1
    if not state.first_failure_at:
        state.first_failure_at = state.last_attempt_at
    # Nothing is recorded before both passes succeeded: every chunk waits for the next run.
    message = (f"cannot push to the main {target.label}: {reason}; {len(waiting)} chunks "
               "kept here")
    if result.pushed:
        message += (f" ({len(result.pushed)} reached the main and are confirmed by a later "
                    "run)")
    state.last_error = message
    save_send_state(state_path, state)
    failures = state.consecutive_failures
    alert_failure(notifier, SEND_FAILING,
                  f"push from {settings.server_id} to the main failing "
                  f"{failures} runs in a row: {reason}",
                  f"Failing since {state.first_failure_at}. {len(waiting)} chunks wait on "
                  f"{settings.server_id} and are sent when the main is reachable again.",
                  failures=failures, after=ALERT_AFTER_FAILURES)
    return message


def _prune_replicas(settings: Settings, now: datetime) -> int:
    """Replica retention on this host; a failure is logged, never fails the send."""
    if settings.replica_dst is None:
        return 0
    try:
        return prune_replica_store(settings.replica_dst, settings.timezone,
                                   settings.raw_retention_days, settings.max_chunk_bytes, now)
    except OSError as error:
        log.warning("replica retention under %s failed: %s", settings.replica_dst,
                    os.strerror(error.errno or 0))
        return 0


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
