"""`collector replicate`: the main's second copies, pushed to every host in `replicas`.

Two copies of everything until it is published (docs/replication.md). A secondary's chunks already
live on two hosts (kept there after `send`, and in the main's `incoming_dst`); what only the
main holds is copied here to every replica host, into the tree its `replica_dst` roots:

    chunks/<main_id>/<day>/<HH>/<name>   the main's own closed chunks (data_storage_dst)
    chunks/<id>/<day>/<HH>/<name>        chunks of every departed server (incoming_dst/<id>/,
                                         `process.departed_server_ids`): its own copy is gone
    vault/<day>/<file>                   the vault's regular files (no dot entries, no links)
    state/process_ledger.json            a snapshot of the main's process ledger, LAST

Through the same confined, write-only, fsynced push as `send` (`collector.transfer.rsync`): on the
replica host the main's key may only run `collector receive <replica_dst>` (rrsync -wo
-munge -no-del, then syncfs), so nothing here can delete, read or escape `replica_dst`, and
a session that succeeded is on the replica host's disk.

Per target, independently (one failing host never stops the others), in this order:

1. (once, before anything else is read) the ledger's bytes are snapshot;
2. chunks: pass 1 `--ignore-existing` over every chunk not yet confirmed for that target,
   plus the confirmed ones whose hour is not past retention (a replica host that lost its
   store gets them again: rsync only transfers what is missing there); pass 2 compares by
   checksum what was not confirmed or was just transferred. Confirmed chunks are recorded in
   `state_dir/replicate_<target_id>.json` (`{"target": "<id@host:port>", "chunks":
   {"<server_id>/<day>/<HH>/<name>": [size, mtime_ns]}}`); a record for another label reads
   as empty. Confirmed chunks past retention are not listed again (the replica host prunes
   them; pushing them back would only make it prune them again);
3. the vault, with rsync's quick check: new and changed files are sent, each lands
   atomically (temporary name, rename);
4. only if 2 and 3 succeeded: the snapshot, to `state/process_ledger.json`, WITHOUT
   `--times`, so its mtime there says when the last replication completed.

Why this order: `process` writes an hour's outputs before its ledger entry, the snapshot is
taken before the vault is listed, and the vault goes before the snapshot, so the replica's
ledger never claims an hour whose outputs the replica lacks (a stale ledger only causes a
deterministic reprocess after a promotion). Nothing on the main is ever deleted or changed,
except this command's own state files.

Failures: each target's outcome is recorded in `state_dir/replicate_state.json` (read by
`collector status`); the team is alerted (`replicate_failing`) on the third failed run in a
row for a target, then once a day while it lasts, and on new conflicts (a chunk name the
replica holds with other content: both kept, never overwritten). The run then ends with one
`RemoteError` line naming every failed target.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson

from collector.alerts.notify import REPLICATE_FAILING, Notifier, alert_failure, make_notifier
from collector.clock import utc_now_text
from collector.errors import RemoteError, SettingsError
from collector.fsutil import exclusive_lock, read_state, write_bytes_atomic
from collector.layout import HourKey, is_day_name
from collector.process.ledger import LEDGER_NAME
from collector.process.scan import departed_server_ids
from collector.settings import ReplicaTarget, Settings
from collector.transfer.retention import CHUNKS_DIR, STATE_DIR, VAULT_DIR, hour_expired
from collector.transfer.rsync import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_IO_TIMEOUT,
    DEFAULT_RUN_TIMEOUT,
    PUSH_CHANGED,
    REPLICA,
    ConfirmedLedger,
    Pushed,
    PushTarget,
    RsyncFailed,
    Runner,
    Stamp,
    file_stamp,
    listed_names,
    push_and_verify,
)
from collector.transfer.send import DEFAULT_COLLECTOR_BIN, check_ssh_paths, restricted_key_line
from collector.tree import scan_tree

log = logging.getLogger("collector.replicate")

STATE_FILE = "replicate_state.json"
LOCK_FILE = "replicate.lock"
# A folder in state_dir holding the ledger snapshot as `process_ledger.json` while it is pushed.
SNAPSHOT_PREFIX = "replicate-snapshot-"
ALERT_AFTER_FAILURES = 3


def replica_authorized_keys_line(replica_dst: Path, main_id: str, public_key: str,
                                 collector_bin: Path = DEFAULT_COLLECTOR_BIN) -> str:
    """A replica host's authorized_keys line for the main's key (the role renders the same):
    `restrict,command="<collector_bin> receive <replica_dst>" <type> <key> <main_id>`."""
    return restricted_key_line(replica_dst, main_id, public_key, (), collector_bin)


def target_ledger_path(state_dir: Path, server_id: str) -> Path:
    """Where the chunks confirmed on one replica host are recorded."""
    return state_dir / f"replicate_{server_id}.json"


# ---- what the main holds --------------------------------------------------------------------


@dataclass(frozen=True)
class LocalChunk:
    """One closed chunk on the main that goes to `chunks/<server_id>/<relative>`."""

    server_id: str
    root: Path  # data_storage_dst, or incoming_dst/<id> of a departed server
    relative: str  # day/HH/name below root
    stamp: Stamp
    hour: HourKey

    @property
    def key(self) -> str:
        """The name in the target ledger: `<server_id>/<day>/<HH>/<name>`."""
        return f"{self.server_id}/{self.relative}"


def chunk_sources(settings: Settings) -> list[tuple[str, Path, bool]]:
    """(server_id, root, own) of every tree only the main holds: its own, then departed."""
    found = [(settings.server_id, settings.data_storage_dst, True)]
    if settings.incoming_dst is not None:
        found += [(server_id, settings.incoming_dst / server_id, False)
                  for server_id in departed_server_ids(settings)]
    return found


def list_chunks(settings: Settings) -> dict[str, LocalChunk]:
    """Every closed chunk to replicate, by ledger key, through the safe walk.

    `layout.scan_tree` lists only regular, single-link, well-named files below real folders
    (never `.part` chunks, dot entries, links or oversized files); what it rejects stays for
    `process` to quarantine and is never pushed. A tree that cannot be read is skipped with a
    warning: the other trees and the vault still go.
    """
    chunks: dict[str, LocalChunk] = {}
    for server_id, root, own in chunk_sources(settings):
        try:
            tree = scan_tree(root, server_id, settings.max_chunk_bytes, own=own)
        except OSError as error:
            log.warning("cannot list the chunks of %s under %s: %s", server_id, root,
                        os.strerror(error.errno or 0))
            continue
        for found in tree.chunks:
            relative = found.entry.relative
            stamp = file_stamp(root / relative)
            if stamp is not None:
                chunk = LocalChunk(server_id, root, relative, stamp, found.chunk.hour)
                chunks[chunk.key] = chunk
    return chunks


def list_vault(vault: Path) -> dict[str, Stamp]:
    """The vault's regular files, `day/name` -> stamp: no dot entries (`.collector`,
    `.coverage`, temporaries), no links, only day folders."""
    files: dict[str, Stamp] = {}
    try:
        days = sorted(entry.name for entry in os.scandir(vault)
                      if entry.is_dir(follow_symlinks=False) and is_day_name(entry.name))
    except FileNotFoundError:
        return files
    for day in days:
        with os.scandir(vault / day) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                    continue
                status = entry.stat(follow_symlinks=False)
                files[f"{day}/{entry.name}"] = (status.st_size, status.st_mtime_ns)
    return dict(sorted(files.items()))


def read_snapshot(path: Path) -> bytes | None:
    """The ledger's bytes now, or None when there is none (nothing processed yet) or it is
    not valid JSON (a corrupt copy on the replica would help no one)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        log.warning("not replicating %s: it is not valid JSON", path)
        return None
    return data


def waiting_chunks(chunks: dict[str, LocalChunk], ledger: ConfirmedLedger) -> list[LocalChunk]:
    """The chunks `ledger`'s target has not confirmed as they are now, oldest name first."""
    return sorted((chunk for key, chunk in chunks.items()
                   if not ledger.confirms(key, chunk.stamp)),
                  key=lambda chunk: (chunk.hour, chunk.relative, chunk.server_id))


# ---- the state file read by `collector status` ---------------------------------------------


@dataclass
class TargetState:
    """How replication to one host went; times are ISO 8601 UTC, "" for never."""

    label: str = ""
    consecutive_failures: int = 0
    first_failure_at: str = ""
    last_attempt_at: str = ""
    last_error: str = ""
    last_success_at: str = ""
    chunks_waiting: int = 0
    last_files: int = 0
    last_bytes: int = 0
    conflicts: list[str] = field(default_factory=list)


def load_replicate_state(path: Path) -> dict[str, TargetState]:
    """Per target server_id; a missing or unreadable file reads as "never ran"."""
    raw = read_state(path, log, "the failure counts start again")
    targets = raw.get("targets") if isinstance(raw, dict) else None
    if not isinstance(targets, dict):
        return {}
    known = TargetState.__dataclass_fields__
    return {server_id: TargetState(**{k: v for k, v in values.items() if k in known})
            for server_id, values in targets.items() if isinstance(values, dict)}


def save_replicate_state(path: Path, states: dict[str, TargetState]) -> None:
    data = {"targets": {server_id: asdict(state) for server_id, state in sorted(states.items())}}
    write_bytes_atomic(path, json.dumps(data, indent=1, sort_keys=True).encode())


# ---- one run --------------------------------------------------------------------------------


@dataclass
class TargetResult:
    """What one run did for one replica host; chunk names are ledger keys."""

    server_id: str
    label: str
    sent: list[str] = field(default_factory=list)  # transferred and confirmed
    already_there: list[str] = field(default_factory=list)  # confirmed without a transfer
    resent: list[str] = field(default_factory=list)  # were confirmed, missing there: sent again
    conflicts: list[str] = field(default_factory=list)  # other content there: kept both
    unconfirmed: list[str] = field(default_factory=list)  # offered again next run
    vault_sent: list[str] = field(default_factory=list)
    ledger_sent: bool = False
    bytes_sent: int = 0  # file bytes transferred (chunks, vault files, the ledger)
    rsync_runs: int = 0
    names_listed: int = 0  # names handed to rsync over all sessions
    waiting: int = 0  # chunks not confirmed there after this run
    error: str = ""  # one line; "" when the target is up to date
    session_failed: bool = False  # an rsync session failed (counts as a failed run)

    def summary(self) -> str:
        text = (f"{len(self.sent)} chunks sent, {len(self.already_there)} already there, "
                f"{len(self.vault_sent)} vault files sent, "
                f"ledger {'sent' if self.ledger_sent else 'not sent'} "
                f"({self.bytes_sent} bytes, {self.rsync_runs} rsync sessions)")
        if self.resent:
            text += f", {len(self.resent)} confirmed earlier but missing there, sent again"
        if self.conflicts:
            text += f", {len(self.conflicts)} in conflict"
        return text


@dataclass
class ReplicateResult:
    targets: list[TargetResult] = field(default_factory=list)
    chunks: int = 0  # closed chunks the main holds that are replicated
    vault_files: int = 0
    ledger_bytes: int | None = None  # the snapshot's size; None: no ledger to replicate

    @property
    def failed(self) -> list[TargetResult]:
        return [target for target in self.targets if target.error]


@contextlib.contextmanager
def replicate_lock(state_dir: Path) -> Iterator[None]:
    """One replicate at a time (a slow push must not overlap the next cron run)."""
    path = state_dir / LOCK_FILE
    with exclusive_lock(path, f"another collector replicate is running (lock {path})"):
        yield


def replicate(settings: Settings, notifier: Notifier | None = None, *,
              run_timeout: float = DEFAULT_RUN_TIMEOUT, io_timeout: int = DEFAULT_IO_TIMEOUT,
              connect_timeout: int = DEFAULT_CONNECT_TIMEOUT, bwlimit_kbps: int | None = None,
              now: datetime | None = None) -> ReplicateResult:
    """Push the main's own chunks, departed servers' chunks, vault and ledger to every
    replica host; see the module docstring.

    `run_timeout` bounds each target's sessions; `now` is the clock deciding which confirmed
    chunks are past retention. Raises `SettingsError` off the main, `LockedError` when
    another replicate runs, and `RemoteError` (one line naming every failed target) after
    every target had its turn.
    """
    if not settings.is_main or settings.data_vault_dst is None:
        raise SettingsError(f"{settings.path}: role={settings.role}: replicate runs on the "
                            "main (it copies the main's data to the hosts in replicas)")
    if not settings.replicas:
        log.info("no replica hosts configured")
        return ReplicateResult()
    check_ssh_paths(settings)
    notifier = notifier or make_notifier(settings)
    moment = now or datetime.now(UTC)
    state_dir = settings.state_dir
    result = ReplicateResult()
    with replicate_lock(state_dir):
        snapshot = read_snapshot(state_dir / LEDGER_NAME)  # first: see the module docstring
        chunks = list_chunks(settings)
        vault_files = list_vault(settings.data_vault_dst)
        result.chunks, result.vault_files = len(chunks), len(vault_files)
        result.ledger_bytes = None if snapshot is None else len(snapshot)
        _remove_stale_snapshots(state_dir)
        snapshot_dir = None if snapshot is None else _write_snapshot(state_dir, snapshot)
        states = load_replicate_state(state_dir / STATE_FILE)
        forget_departed_targets(state_dir, states, settings)
        try:
            for target in settings.replicas:
                job = _TargetJob(settings, target, chunks, vault_files, snapshot_dir, moment,
                                 run_timeout, io_timeout, connect_timeout, bwlimit_kbps)
                outcome = job.run()
                result.targets.append(outcome)
                _record(settings, notifier, states, target, outcome)
                save_replicate_state(state_dir / STATE_FILE, states)
        finally:
            if snapshot_dir is not None:
                shutil.rmtree(snapshot_dir, ignore_errors=True)
    if result.failed:
        raise RemoteError("; ".join(target.error for target in result.failed))
    return result


def forget_departed_targets(state_dir: Path, states: dict[str, TargetState],
                            settings: Settings) -> None:
    """Drop what this main recorded about hosts no longer in `replicas` (removed from the
    inventory): a host that left the fleet leaves no trace in the state files."""
    current = {target.server_id for target in settings.replicas}
    for server_id in sorted(set(states) - current):
        log.info("forgetting replica host %s (no longer in replicas)", server_id)
        del states[server_id]
    for path in state_dir.glob("replicate_*.json"):
        server_id = path.name.removeprefix("replicate_").removesuffix(".json")
        if path.name != STATE_FILE and server_id not in current and path.is_file():
            path.unlink()


def _remove_stale_snapshots(state_dir: Path) -> None:
    """Snapshot folders a killed run left behind (the caller holds the lock)."""
    for entry in state_dir.iterdir():
        if entry.name.startswith(SNAPSHOT_PREFIX) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)


def _write_snapshot(state_dir: Path, snapshot: bytes) -> Path:
    """A private folder holding the snapshot as `process_ledger.json`, rsync's source."""
    folder = Path(tempfile.mkdtemp(prefix=SNAPSHOT_PREFIX, dir=state_dir))
    (folder / LEDGER_NAME).write_bytes(snapshot)
    return folder


class _TargetJob:
    """Steps 2-4 of the module docstring for one replica host."""

    def __init__(self, settings: Settings, target: ReplicaTarget,
                 chunks: dict[str, LocalChunk], vault_files: dict[str, Stamp],
                 snapshot_dir: Path | None, now: datetime, run_timeout: float,
                 io_timeout: int, connect_timeout: int, bwlimit_kbps: int | None) -> None:
        self.settings = settings
        self.target = target
        self.chunks = chunks
        self.vault_files = vault_files
        self.snapshot_dir = snapshot_dir
        self.now = now
        push = PushTarget(settings.username, target.host, target.port,
                          settings.ssh_identity_file, settings.ssh_known_hosts_file,
                          connect_timeout)
        self.runner = Runner(push, io_timeout, time.monotonic() + run_timeout, run_timeout,
                             bwlimit_kbps, REPLICA)
        self.ledger = ConfirmedLedger.load(
            target_ledger_path(settings.state_dir, target.server_id), "target", target.label)
        self.result = TargetResult(target.server_id, target.label)

    def run(self) -> TargetResult:
        result, ledger = self.result, self.ledger
        recorded = dict(ledger.chunks)
        ledger.keep_only({key: chunk.stamp for key, chunk in self.chunks.items()})
        try:
            self._chunks()
            self._vault()
            self._ledger()
        except RsyncFailed as failed:
            result.session_failed = True
            result.error = f"cannot replicate to {self.target.label}: {failed.reason}"
        finally:
            result.rsync_runs = self.runner.runs
            result.names_listed = self.runner.listed
            if ledger.chunks != recorded:
                ledger.save()
        result.waiting = len(waiting_chunks(self.chunks, ledger))
        if result.error:
            result.error += f"; {result.waiting} chunks wait for it"
        elif result.conflicts:
            result.error = (f"{len(result.conflicts)} chunks exist on {self.target.label} with "
                            f"other content and were kept on both sides (e.g. "
                            f"{result.conflicts[0]})")
        if result.resent:
            log.warning("%d chunks confirmed on %s earlier were missing there and were sent "
                        "again (its replica store was reset?)", len(result.resent),
                        self.target.label)
        return result

    def _chunks(self) -> None:
        """Pass 1 and pass 2 per source tree (the remote folder is `chunks/<id>/`)."""
        by_source: dict[tuple[str, Path], list[LocalChunk]] = {}
        for chunk in self.chunks.values():
            by_source.setdefault((chunk.server_id, chunk.root), []).append(chunk)
        settings = self.settings
        for (server_id, root), chunks in sorted(by_source.items()):
            unconfirmed = {chunk.relative for chunk in chunks
                           if not self.ledger.confirms(chunk.key, chunk.stamp)}
            names = sorted(chunk.relative for chunk in chunks
                           if chunk.relative in unconfirmed or not hour_expired(
                               chunk.hour, settings.timezone, settings.raw_retention_days,
                               self.now))
            if not names:
                continue
            outcome = Pushed()
            try:
                push_and_verify(self.runner, root, names, unconfirmed,
                                remote=f"{CHUNKS_DIR}/{server_id}/", vanished_ok=True,
                                into=outcome)
            finally:
                self._record_chunks({chunk.relative: chunk for chunk in chunks}, unconfirmed,
                                    outcome)

    def _record_chunks(self, chunks: dict[str, LocalChunk], unconfirmed: set[str],
                       outcome: Pushed) -> None:
        """What the passes confirmed goes into the ledger. A transfer that pass 2 did not
        compare (it failed) or did not find identical is no confirmation."""
        result, ledger = self.result, self.ledger
        for relative in sorted(unconfirmed | outcome.pushed):
            chunk = chunks[relative]
            if relative in outcome.pushed:
                result.bytes_sent += chunk.stamp[0]
                ledger.chunks.pop(chunk.key, None)  # it was missing there: not confirmed now
            if not outcome.verified:
                continue
            if relative in outcome.different:
                result.conflicts.append(chunk.key)
            elif (relative in outcome.identical
                  and file_stamp(chunk.root / relative) == chunk.stamp):
                ledger.chunks[chunk.key] = chunk.stamp
                if relative not in outcome.pushed:
                    result.already_there.append(chunk.key)
                else:
                    result.sent.append(chunk.key)
                    if relative not in unconfirmed:
                        result.resent.append(chunk.key)
            else:  # not found there when compared, or changed here meanwhile
                result.unconfirmed.append(chunk.key)

    def _vault(self) -> None:
        vault = self.settings.data_vault_dst
        assert vault is not None  # checked by replicate()
        if not self.vault_files:
            return
        names = list(self.vault_files)
        out = self.runner.run(vault, names, PUSH_CHANGED, remote=f"{VAULT_DIR}/")
        self.result.vault_sent = sorted(listed_names(out, names))
        self.result.bytes_sent += sum(self.vault_files[name][0]
                                      for name in self.result.vault_sent)

    def _ledger(self) -> None:
        if self.snapshot_dir is None:
            return
        self.runner.run(self.snapshot_dir, [LEDGER_NAME], PUSH_CHANGED,
                        remote=f"{STATE_DIR}/", times=False)
        self.result.ledger_sent = True
        self.result.bytes_sent += (self.snapshot_dir / LEDGER_NAME).stat().st_size


def _record(settings: Settings, notifier: Notifier, states: dict[str, TargetState],
            target: ReplicaTarget, outcome: TargetResult) -> None:
    """Update the target's state; log, and alert on the 3rd failure in a row, then daily."""
    state = states.setdefault(target.server_id, TargetState())
    if state.label != target.label:  # another host under that id: its history does not count
        state = states[target.server_id] = TargetState(label=target.label)
    state.last_attempt_at = utc_now_text()
    state.chunks_waiting = outcome.waiting
    new_conflicts = sorted(set(outcome.conflicts) - set(state.conflicts))
    state.conflicts = list(outcome.conflicts)
    if outcome.session_failed:
        state.consecutive_failures += 1
        if not state.first_failure_at:
            state.first_failure_at = state.last_attempt_at
        state.last_error = outcome.error
        log.error("%s", outcome.error)
        failures = state.consecutive_failures
        alert_failure(notifier, REPLICATE_FAILING,
                      f"replication from {settings.server_id} to {target.label} failing "
                      f"{failures} runs in a row: {outcome.error}",
                      f"Failing since {state.first_failure_at}. Until it works again the "
                      f"main's newest chunks and vault files exist on fewer hosts; "
                      f"{outcome.waiting} chunks wait for {target.server_id}.",
                      failures=failures, after=ALERT_AFTER_FAILURES)
        return
    if state.consecutive_failures:
        log.info("replication to %s works again after %d failed runs (failing since %s)",
                 target.label, state.consecutive_failures, state.first_failure_at)
    state.consecutive_failures = 0
    state.first_failure_at = ""
    state.last_error = outcome.error
    state.last_success_at = state.last_attempt_at
    state.last_files = len(outcome.sent) + len(outcome.vault_sent) + int(outcome.ledger_sent)
    state.last_bytes = outcome.bytes_sent
    log.info("replicated to %s: %s", target.label, outcome.summary())
    if new_conflicts:
        for key in new_conflicts:
            log.error("conflict: %s holds %s with other content; kept on both sides",
                      target.label, key)
        notifier.alert(REPLICATE_FAILING,
                       f"{len(new_conflicts)} chunks differ from {target.label}'s replica of "
                       "the same name",
                       f"Both versions are kept (the main's copy is not changed, the "
                       f"replica's not overwritten), e.g. {new_conflicts[0]}.")
