"""Health of one host, from the files its commands leave behind (no network needed).

The verdict is the worst of the parts: `down` (2) when the stream is not running at all,
`degraded` (1) when it runs but does not capture (disconnected, stalled, disk full) or data
waits too long, `healthy` (0) otherwise. cron, Ansible and monitoring read the exit code.
"""

from __future__ import annotations

import enum
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from collector import osf, process, send
from collector.health import STATUS_FILE, read_health
from collector.layout import HourKey, iter_closed_chunks
from collector.settings import Settings

# The stream rewrites its health record every 2 s; older than this means it is not running.
HEALTH_STALE_AFTER = 30.0
# Disconnected for longer than this is worth a look (reconnects normally take seconds).
DISCONNECTED_DEGRADED_AFTER = 60.0
# Hourly cron jobs: this many due hours left unprocessed means processing is not running.
HOURS_WAITING_DEGRADED = 2
# A secondary's chunks normally leave within the hour; older ones mean sending is stuck.
CHUNK_AGE_DEGRADED = 2 * 3600.0
SEND_FAILURES_DEGRADED = 3


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
    sending: dict[str, Any] = field(default_factory=dict)
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
            "sending": self.sending,
            "processing": self.processing,
            "uploading": self.uploading,
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
        status.worsen(Verdict.DEGRADED, f"no tweet for {quiet:.0f} s (stall)")


def secondary_part(status: HostStatus, settings: Settings, now: float) -> None:
    """Closed chunks not yet sent to the main, and how the last pushes went."""
    chunks = list(iter_closed_chunks(settings.data_storage_dst))
    status.chunks_waiting = len(chunks)
    if chunks:
        oldest = min(chunks, key=lambda chunk: chunk.path.stat().st_mtime)
        status.oldest_chunk_waiting = oldest.path.name
        age = now - oldest.path.stat().st_mtime
        if age > CHUNK_AGE_DEGRADED:
            status.worsen(Verdict.DEGRADED,
                          f"chunks wait to be sent for {age / 3600:.1f} h "
                          f"(oldest {oldest.path.name})")
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


def main_part(status: HostStatus, settings: Settings, now: float) -> None:
    """The last hour processed, the due hours still waiting, and the last upload."""
    ledger = process.Ledger.load(settings.state_dir / process.LEDGER_NAME)
    merged = sorted((HourKey.parse(key), entry) for key, entry in ledger.hours.items()
                    if not entry.get("pruned"))
    vault = settings.data_vault_dst
    assert vault is not None  # required on a main by the settings
    all_sources = process.sources(settings)
    found = process.scan_sources(all_sources, settings.max_chunk_bytes)
    moment = datetime.fromtimestamp(now, UTC)
    waiting = process.due_hours(found.hours, ledger, settings, moment, vault)
    status.processing = {
        "last_hour_processed": str(merged[-1][0]) if merged else "",
        "processed_at": merged[-1][1].get("processed_at", "") if merged else "",
        "hours_waiting": len(waiting),
        "oldest_hour_waiting": str(waiting[0]) if waiting else "",
        # Entries that are no chunk files: the next `process` run moves them to quarantine;
        # what the quarantine holds waits for a human (nothing deletes it).
        "entries_to_quarantine": len(found.rejected),
        "quarantined_entries": process.quarantined_total(all_sources),
    }
    if len(waiting) >= HOURS_WAITING_DEGRADED:
        status.worsen(Verdict.DEGRADED,
                      f"{len(waiting)} due hours are not processed (oldest {waiting[0]})")
    if not settings.osf_enabled:
        status.uploading = {"enabled": False}
        return
    upload_ledger = osf.load_ledger(vault / ".collector" / osf.LEDGER_NAME,
                                    osf.ledger_target(settings))
    last_run = upload_ledger.last_run
    status.uploading = {"enabled": True, "files_uploaded": len(upload_ledger.files),
                        "last_run_at": last_run.get("at", ""), "last_run_ok": last_run.get("ok"),
                        "last_error": last_run.get("error", "")}
    if last_run and not last_run.get("ok"):
        status.worsen(Verdict.DEGRADED, f"the last upload failed: {last_run.get('error', '')}")


def host_status(settings: Settings, now: float | None = None) -> HostStatus:
    """The health of this host as `collector status` reports it."""
    now = time.time() if now is None else now
    status = HostStatus(settings.server_id, settings.role)
    stream_part(status, settings, now)
    if settings.is_main:
        main_part(status, settings, now)
    else:
        secondary_part(status, settings, now)
    return status
