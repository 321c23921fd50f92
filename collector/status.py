"""Health of one host, from the files its commands leave behind (no network needed).

The verdict is the worst of the parts: `down` (2) when the stream is not running at all,
`degraded` (1) when it runs but does not capture (disconnected, stalled, disk full) or data
waits too long, `healthy` (0) otherwise. cron, Ansible and monitoring read the exit code.

Two copies until published (issue 11) adds three parts:

* `kept_chunks` (secondary): chunks the current main confirmed and this host keeps until
  retention; `chunks_waiting` counts only the chunks the current main has NOT confirmed
  (`collector.transfer.send`'s ledger), since the kept ones need nothing.
* `replication` (main with `replicas`): per replica host, what waits to be replicated and
  how the last runs went. Degraded when a host is more than `REPLICATION_BEHIND_DEGRADED`
  (2 h) behind (`replication_lag`), or after `SEND_FAILURES_DEGRADED` failed runs in a row.
* `replica` (any host with `replica_dst`): what the main replicated here. On a secondary it
  is degraded when the newest thing received (the replicated ledger's mtime, which is when
  the last replication completed, or the newest replica chunk's mtime) is more than
  `REPLICA_AGE_DEGRADED` (2 h) old. A host that never received anything is measured from
  when its replica store was set up (the mtime of `replica_dst/state`, which the role
  creates and which only changes when the first ledger lands there): a freshly installed
  secondary says "nothing received yet" and is healthy for its first 2 h, the time the
  main's hourly replication needs to reach it; after that it is degraded like any stale
  replica. On the main the part is shown but not judged: a replica tree left there is
  `collector adopt`'s to take over.
"""

from __future__ import annotations

import enum
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from collector.layout import HourKey, hour_bounds, iter_closed_chunks
from collector.process import ledger as process_ledger
from collector.process import plan as process_plan
from collector.process import quarantine as process_quarantine
from collector.process import scan as process_scan
from collector.publish import ledger as upload_ledger_file
from collector.settings import Settings
from collector.sources import source_for
from collector.stream.health import STATUS_FILE, read_health
from collector.transfer import replicate, retention, send
from collector.transfer.rsync import ConfirmedLedger, file_stamp

# The stream rewrites its health record every 2 s; older than this means it is not running.
HEALTH_STALE_AFTER = 30.0
# Disconnected for longer than this is worth a look (reconnects normally take seconds).
DISCONNECTED_DEGRADED_AFTER = 60.0
# Hourly cron jobs: this many due hours left unprocessed means processing is not running.
HOURS_WAITING_DEGRADED = 2
# A secondary's chunks normally leave within the hour; older ones mean sending is stuck.
CHUNK_AGE_DEGRADED = 2 * 3600.0
SEND_FAILURES_DEGRADED = 3
# A replica host that misses the main's data for longer than this (two hourly runs) is behind.
REPLICATION_BEHIND_DEGRADED = 2 * 3600.0
# What a replica host received last: older than this means the main's copies do not arrive.
REPLICA_AGE_DEGRADED = 2 * 3600.0


class Verdict(enum.IntEnum):
    HEALTHY = 0
    DEGRADED = 1
    DOWN = 2


@dataclass
class HostStatus:
    """Everything `collector status` shows; `problems` explains a verdict other than healthy."""

    server_id: str
    role: str
    verdict: Verdict = Verdict.HEALTHY
    problems: list[str] = field(default_factory=list)
    stream: dict[str, Any] = field(default_factory=dict)
    chunks_waiting: int = 0
    oldest_chunk_waiting: str = ""
    kept_chunks: int = 0
    sending: dict[str, Any] = field(default_factory=dict)
    replication: dict[str, Any] = field(default_factory=dict)
    replica: dict[str, Any] = field(default_factory=dict)
    processing: dict[str, Any] = field(default_factory=dict)
    uploading: dict[str, Any] = field(default_factory=dict)

    def worsen(self, verdict: Verdict, problem: str) -> None:
        self.verdict = max(self.verdict, verdict)
        self.problems.append(problem)

    def as_dict(self) -> dict[str, Any]:
        return {
            "server_id": self.server_id,
            "role": self.role,
            "verdict": self.verdict.name.lower(),
            "exit_code": int(self.verdict),
            "problems": self.problems,
            "stream": self.stream,
            "chunks_waiting": self.chunks_waiting,
            "oldest_chunk_waiting": self.oldest_chunk_waiting,
            "kept_chunks": self.kept_chunks,
            "sending": self.sending,
            "processing": self.processing,
            "uploading": self.uploading,
            "replication": self.replication,
            "replica": self.replica,
        }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def stream_part(status: HostStatus, settings: Settings, now: float) -> None:
    """Judge the stream from its health record."""
    record = read_health(settings.state_dir / STATUS_FILE)
    if record is None:
        status.stream = {"running": False}
        status.worsen(Verdict.DOWN, "the stream has never run on this host")
        return
    age = now - float(record.get("updated_at", 0))
    running = (not record.get("stopped", False) and age < HEALTH_STALE_AFTER
               and _pid_alive(int(record.get("pid", 0))))
    last_message = float(record.get("last_message_at", 0))
    last_tweet = float(record.get("last_tweet_at", 0))
    status.stream = {
        "source": settings.source,
        "running": running,
        "connected": bool(record.get("connected")) and running,
        "connected_since": record.get("connected_since", 0),
        "last_message_age": round(now - last_message, 1) if last_message else None,
        "last_tweet_age": round(now - last_tweet, 1) if last_tweet else None,
        "open_chunk": record.get("open_chunk", "") if running else "",
        "messages": record.get("messages", 0),
        "tweets": record.get("tweets", 0),
        "connections": record.get("connections", 0),
        "malformed_lines": record.get("malformed_lines", 0),
        "replay_gaps": record.get("replay_gaps", 0),
        "stalled": bool(record.get("stalled")),
        "disk_full": bool(record.get("disk_full")),
        "backlog_bytes": record.get("backlog_bytes", 0),
        "dropped_messages": record.get("dropped_messages", 0),
        "last_error": record.get("last_error", ""),
        "health_record_age": round(age, 1),
    }
    if not running:
        reason = "stopped" if record.get("stopped") else f"no update for {age:.0f} s"
        status.worsen(Verdict.DOWN, f"the stream is not running ({reason})")
        return
    if record.get("disk_full"):
        status.worsen(Verdict.DEGRADED, "data_storage_dst is full; messages wait in memory")
    if dropped := int(record.get("dropped_messages", 0)):
        # Lost for good on this host (another server may still hold them): stays visible
        # until the stream restarts, so the hourly check cannot miss it.
        status.worsen(Verdict.DEGRADED, f"{dropped} message(s) dropped since the stream "
                                        "started: the disk was full and memory too")
    if not record.get("connected"):
        since = max(float(record.get("last_message_at", 0)), float(record.get("started_at", 0)))
        if now - since > DISCONNECTED_DEGRADED_AFTER:
            status.worsen(Verdict.DEGRADED,
                          f"not connected for {now - since:.0f} s: {record.get('last_error', '')}")
            return
    if record.get("stalled"):
        quiet = now - max(last_tweet, float(record.get("started_at", 0)))
        status.worsen(Verdict.DEGRADED,
                      f"no {source_for(settings).record_name} for {quiet:.0f} s (stall)")


def secondary_part(status: HostStatus, settings: Settings, now: float) -> None:
    """Closed chunks the current main has not confirmed, the kept ones, and the last pushes."""
    ledger = send.load_send_ledger(settings)
    root = settings.data_storage_dst
    waiting: list[tuple[float, str]] = []
    for chunk in iter_closed_chunks(root):
        stamp = file_stamp(chunk.path)
        if stamp is None:
            continue
        if ledger.confirms(chunk.path.relative_to(root).as_posix(), stamp):
            status.kept_chunks += 1
        else:
            waiting.append((stamp[1] / 1e9, chunk.path.name))
    status.chunks_waiting = len(waiting)
    if waiting:
        oldest_mtime, oldest_name = min(waiting)
        status.oldest_chunk_waiting = oldest_name
        age = now - oldest_mtime
        if age > CHUNK_AGE_DEGRADED:
            status.worsen(Verdict.DEGRADED,
                          f"chunks wait to be sent for {age / 3600:.1f} h "
                          f"(oldest {oldest_name})")
    state = send.load_send_state(settings.state_dir / send.STATE_FILE)
    status.sending = {
        "last_success_at": state.last_success_at,
        "last_success_files": state.last_success_files,
        "consecutive_failures": state.consecutive_failures,
        "last_error": state.last_error,
    }
    if state.consecutive_failures >= SEND_FAILURES_DEGRADED:
        status.worsen(Verdict.DEGRADED,
                      f"{state.consecutive_failures} pushes to the main failed in a row: "
                      f"{state.last_error}")


def _timestamp(text: str) -> float | None:
    """An ISO 8601 time from a state file as a POSIX time; None for "" or garbage."""
    try:
        return datetime.fromisoformat(text).timestamp() if text else None
    except ValueError:
        return None


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def replication_lag(now: float, oldest_waiting: float | None, last_success: float | None,
                    ledger_changed: float | None) -> float:
    """How long a replica host has been missing something the main holds (pure), 0 if
    nothing is missing.

    `oldest_waiting` is the mtime of the oldest chunk not confirmed there; `last_success` the
    last run that reached it; `ledger_changed` the mtime of the main's process ledger, which
    `process` rewrites with every hour's outputs: newer than the last success means outputs
    the replica lacks. Then the host is behind since its last success (or since that change,
    if it never had one).
    """
    lag = 0.0 if oldest_waiting is None else now - oldest_waiting
    if ledger_changed is not None and (last_success is None or ledger_changed > last_success):
        lag = max(lag, now - (ledger_changed if last_success is None else last_success))
    elif oldest_waiting is not None and last_success is not None:
        lag = max(lag, now - last_success)
    return max(lag, 0.0)


def replication_part(status: HostStatus, settings: Settings, now: float) -> None:
    """The main: per replica host, what waits and how the last replications went."""
    if not settings.replicas:
        status.replication = {"configured": False, "targets": {}}
        return
    chunks = replicate.list_chunks(settings)
    states = replicate.load_replicate_state(settings.state_dir / replicate.STATE_FILE)
    ledger_changed = _mtime(settings.state_dir / process_ledger.LEDGER_NAME)
    targets: dict[str, Any] = {}
    for target in settings.replicas:
        ledger = ConfirmedLedger.load(
            replicate.target_ledger_path(settings.state_dir, target.server_id), "target",
            target.label)
        waiting = replicate.waiting_chunks(chunks, ledger)
        state = states.get(target.server_id, replicate.TargetState())
        if state.label != target.label:
            state = replicate.TargetState(label=target.label)
        oldest = min(waiting, key=lambda chunk: chunk.stamp[1]) if waiting else None
        oldest_mtime = None if oldest is None else oldest.stamp[1] / 1e9
        lag = replication_lag(now, oldest_mtime, _timestamp(state.last_success_at),
                              ledger_changed)
        targets[target.server_id] = {
            "label": target.label,
            "chunks_waiting": len(waiting),
            "oldest_chunk_waiting": "" if oldest is None else oldest.key,
            "behind_seconds": round(lag, 1),
            "last_attempt_at": state.last_attempt_at,
            "last_success_at": state.last_success_at,
            "consecutive_failures": state.consecutive_failures,
            "last_error": state.last_error,
        }
        if lag > REPLICATION_BEHIND_DEGRADED:
            detail = (f"{len(waiting)} chunks wait (oldest {oldest.key})" if oldest is not None
                      else "the vault and ledger changed since")
            last = state.last_success_at or "never"
            status.worsen(Verdict.DEGRADED,
                          f"replication to {target.label} is {lag / 3600:.1f} h behind: "
                          f"{detail}; last success {last}")
        elif state.consecutive_failures >= SEND_FAILURES_DEGRADED:
            status.worsen(Verdict.DEGRADED,
                          f"{state.consecutive_failures} replications to {target.label} failed "
                          f"in a row: {state.last_error}")
    status.replication = {"configured": True, "targets": targets}


def replica_part(status: HostStatus, settings: Settings, now: float) -> None:
    """What the main replicated to this host (`replica_dst`); see the module docstring."""
    replica_dst = settings.replica_dst
    assert replica_dst is not None
    held = retention.held_replica_chunks(replica_dst, settings.max_chunk_bytes)
    by_server: dict[str, int] = {}
    for chunk in held:
        by_server[chunk.server_id] = by_server.get(chunk.server_id, 0) + 1
    newest = max(held, key=lambda chunk: (chunk.hour, chunk.parts[-1]), default=None)
    newest_mtime = None if newest is None else _mtime(
        replica_dst.joinpath(retention.CHUNKS_DIR, newest.server_id, *newest.parts))
    ledger_mtime = _mtime(retention.replica_ledger_path(replica_dst))
    received = max((t for t in (newest_mtime, ledger_mtime) if t is not None), default=None)

    def age(moment: float | None) -> float | None:
        return None if moment is None else round(now - moment, 1)

    status.replica = {
        "path": str(replica_dst),
        "received": received is not None,
        "chunks_held": len(held),
        "chunks_by_server": dict(sorted(by_server.items())),
        "newest_chunk": "" if newest is None else newest.parts[-1],
        "newest_chunk_age": age(newest_mtime),
        "ledger_age": age(ledger_mtime),
        "age": age(received),
    }
    if settings.is_main:
        return
    if received is not None:
        if now - received > REPLICA_AGE_DEGRADED:
            status.worsen(Verdict.DEGRADED,
                          f"the newest replica from the main is {(now - received) / 3600:.1f} "
                          f"h old (replicated ledger {_hours(ledger_mtime, now)}, newest "
                          f"replica chunk {_hours(newest_mtime, now)})")
        return
    set_up = _mtime(replica_dst / retention.STATE_DIR) or _mtime(replica_dst)
    if set_up is None:
        status.worsen(Verdict.DEGRADED, f"replica_dst {replica_dst} does not exist: the main "
                                        "cannot replicate to this host")
        return
    status.replica["set_up_age"] = age(set_up)
    if now - set_up > REPLICA_AGE_DEGRADED:
        status.worsen(Verdict.DEGRADED,
                      f"no replica received from the main in the {(now - set_up) / 3600:.1f} h "
                      f"since {replica_dst} was set up")


def _hours(moment: float | None, now: float) -> str:
    return "never" if moment is None else f"{(now - moment) / 3600:.1f} h old"


# An hour's IDs file as the upload ledger names it (`YYYY/MM/DD/<day>_<HH[b]>_IDs.txt.xz`).
_IDS_FILE = re.compile(r"(?:^|/)(?P<day>\d{4}-\d{2}-\d{2})_(?P<hour>\d{2}b?)_IDs\.txt\.xz$")


def newest_uploaded_hour(remotes: list[str]) -> HourKey | None:
    """The newest hour whose IDs file the upload ledger records on OSF (pure); None if none."""
    hours = []
    for remote in remotes:
        match = _IDS_FILE.search(remote)
        if match is None:
            continue
        try:
            hours.append(HourKey.parse(f"{match['day']}T{match['hour']}"))
        except ValueError:
            continue
    return max(hours, default=None)


def hour_age(hour: HourKey | None, settings: Settings, now: float) -> float | None:
    """Seconds since `hour` ended (0 for an hour not over yet, processed with --force): how
    far processing or publishing is behind the clock. None for no hour."""
    if hour is None:
        return None
    end = hour_bounds(hour, settings.timezone)[1].timestamp()
    return round(max(now - end, 0.0), 1)


def main_part(status: HostStatus, settings: Settings, now: float) -> None:
    """The last hour processed, the due hours still waiting, and the last upload."""
    ledger = process_ledger.ProcessLedger.load(settings.state_dir / process_ledger.LEDGER_NAME)
    merged = sorted((HourKey.parse(key), entry) for key, entry in ledger.hours.items()
                    if not entry.get("pruned"))
    vault = settings.data_vault_dst
    assert vault is not None  # required on a main by the settings
    folders = process_scan.server_folders(settings)
    found = process_scan.scan_folders(folders, settings.max_chunk_bytes)
    moment = datetime.fromtimestamp(now, UTC)
    waiting = process_plan.due_hours(found.hours, ledger, settings, moment, vault)
    status.processing = {
        "last_hour_processed": str(merged[-1][0]) if merged else "",
        "last_hour_processed_age": hour_age(merged[-1][0] if merged else None, settings, now),
        "processed_at": merged[-1][1].get("processed_at", "") if merged else "",
        "hours_waiting": len(waiting),
        "oldest_hour_waiting": str(waiting[0]) if waiting else "",
        # Entries that are no chunk files: the next `process` run moves them to quarantine;
        # what the quarantine holds waits for a human (nothing deletes it).
        "entries_to_quarantine": len(found.rejected),
        "quarantined_entries": process_quarantine.quarantined_total(folders),
    }
    if len(waiting) >= HOURS_WAITING_DEGRADED:
        status.worsen(Verdict.DEGRADED,
                      f"{len(waiting)} due hours are not processed (oldest {waiting[0]})")
    if not settings.osf_enabled:
        status.uploading = {"enabled": False}
        return
    upload_ledger = upload_ledger_file.load_ledger(
        upload_ledger_file.upload_state_dir(vault) / upload_ledger_file.LEDGER_NAME,
        upload_ledger_file.ledger_target(settings))
    last_run = upload_ledger.last_run
    uploaded = newest_uploaded_hour(list(upload_ledger.files))
    status.uploading = {"enabled": True, "files_uploaded": len(upload_ledger.files),
                        "last_hour_uploaded": "" if uploaded is None else str(uploaded),
                        "last_hour_uploaded_age": hour_age(uploaded, settings, now),
                        "last_run_at": last_run.get("at", ""), "last_run_ok": last_run.get("ok"),
                        "last_error": last_run.get("error", "")}
    if last_run and not last_run.get("ok"):
        status.worsen(Verdict.DEGRADED, f"the last upload failed: {last_run.get('error', '')}")


Part = Callable[[HostStatus, Settings, float], None]


def status_parts(settings: Settings) -> list[Part]:
    """The parts that apply to this host, in order; `collector metrics` runs them one by one
    so that one unreadable part costs only its own metrics."""
    parts: list[Part] = [stream_part]
    if settings.is_main:
        parts += [main_part, replication_part]
    else:
        parts.append(secondary_part)
    if settings.replica_dst is not None:
        parts.append(replica_part)
    return parts


def host_status(settings: Settings, now: float | None = None) -> HostStatus:
    """The health of this host as `collector status` reports it."""
    now = time.time() if now is None else now
    status = HostStatus(settings.server_id, settings.role)
    for part in status_parts(settings):
        part(status, settings, now)
    return status
