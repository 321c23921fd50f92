"""This host's health as Prometheus metrics, in a file for node_exporter's textfile collector.

Operators already scrape node_exporter on every host; a `collector.prom` in its textfile folder
puts the collector beside the host's own metrics with no new port, daemon or firewall rule.
Every value is one `collector status` computes (collector.status), turned into the exposition
text by a pure function (`exposition`), so the status table, the exit code and the graphs can
never disagree.

Rules:

* base units (seconds, bytes); every metric is labelled `server` (the settings' server id,
  which need not be node_exporter's `instance`);
* gauges, except the stream's own counts (`*_total`), which only grow while one stream runs
  (a restart starts them at 0 again, which `rate()` handles as a counter reset);
* a value nobody has (the stream never connected, no hour processed yet) is omitted, never
  invented as 0;
* a part of the status that cannot be read (an unreadable ledger, a permission error) costs
  only its own metrics, and counts in `collector_metrics_errors`; the verdict, which needs
  every part, is then omitted too;
* only numbers, server ids, the role and the version reach the file: no path, no error text,
  so no secret.

The file is replaced atomically (temporary in the same folder, fsync, rename, mode 0644):
node_exporter reads only `*.prom` names, so it never sees the hidden temporary, and a scrape
sees the previous minute's file or this one, never half of one.
"""

from __future__ import annotations

import copy
import logging
import math
import stat
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from collector import __version__
from collector.errors import CollectorError, DiskFullError
from collector.fsutil import write_bytes_atomic
from collector.settings import Settings
from collector.status import HostStatus, status_parts

log = logging.getLogger(__name__)

TEXTFILE_NAME = "collector.prom"

Labels = dict[str, str]


def collect(settings: Settings, now: float | None = None) -> tuple[HostStatus, list[str]]:
    """What `collector status` computes, part by part: a part that fails is left out whole
    (its half-filled fields rolled back) and named in the returned list of errors."""
    now = time.time() if now is None else now
    status = HostStatus(settings.server_id, settings.role)
    errors: list[str] = []
    for part in status_parts(settings):
        before = copy.deepcopy(status)
        try:
            part(status, settings, now)
        # Whatever breaks one part (a corrupt ledger, a bug) must not cost the others.
        except Exception as error:
            status = before
            name = part.__name__.removesuffix("_part")
            errors.append(f"{name}: {type(error).__name__}: {error}")
    return status, errors


def _number(raw: Any) -> int | float | None:
    """A sample value from a status field; None (omit) for missing or non-numeric data."""
    if isinstance(raw, bool):
        return int(raw)
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and math.isfinite(raw):
        return int(raw) if raw.is_integer() else raw
    return None


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Exposition:
    """Prometheus text format 0.0.4: HELP and TYPE, then the samples, per family."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[Labels, Any]]) -> None:
        present = [(labels, value) for labels, raw in samples
                   if (value := _number(raw)) is not None]
        if not present:
            return  # a family without samples says nothing; leave it out entirely
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for labels, value in present:
            text = ",".join(f'{key}="{_escape(val)}"'
                            for key, val in {"server": self.server, **labels}.items())
            self.lines.append(f"{name}{{{text}}} {value}")

    def gauge(self, name: str, help_text: str, value: Any) -> None:
        self.family(name, "gauge", help_text, [({}, value)])

    def counter(self, name: str, help_text: str, value: Any) -> None:
        self.family(name, "counter", help_text, [({}, value)])

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def exposition(status: HostStatus, errors: int = 0) -> str:
    """The metrics file for `status` (pure). A part's metrics appear only when the part was
    read: `collect` leaves a failed part's fields empty (stream, sending, processing, ...)."""
    out = _Exposition(status.server_id)
    out.family("collector_info", "gauge",
               "Always 1; the labels name this host's role and the collector version.",
               [({"role": status.role, "version": __version__}, 1)])
    if errors == 0:
        out.gauge("collector_status_verdict",
                  "What collector status says: 0 healthy, 1 degraded, 2 down (its exit code).",
                  int(status.verdict))
    out.gauge("collector_metrics_errors",
              "Parts of the status this run could not read; their metrics are left out.", errors)

    stream = status.stream
    if stream:
        out.gauge("collector_stream_running", "1 if collector stream runs on this host.",
                  bool(stream.get("running")))
        out.gauge("collector_stream_connected", "1 if the stream is connected to the API.",
                  bool(stream.get("connected")))
        out.gauge("collector_stream_stalled",
                  "1 if the stream is connected but no tweet arrived for stall_seconds.",
                  stream.get("stalled"))
        out.gauge("collector_stream_last_message_age_seconds",
                  "Seconds since the stream received its last message (heartbeats excluded).",
                  stream.get("last_message_age"))
        out.gauge("collector_stream_last_tweet_age_seconds",
                  "Seconds since the stream received its last message with data.",
                  stream.get("last_tweet_age"))
        out.gauge("collector_stream_backlog_bytes",
                  "Bytes of messages waiting in memory for disk space.",
                  stream.get("backlog_bytes"))
        out.counter("collector_stream_dropped_messages_total",
                    "Messages dropped (disk and memory full) since the stream started.",
                    stream.get("dropped_messages"))
        out.counter("collector_stream_messages_total",
                    "Messages received since the stream started.", stream.get("messages"))
        out.counter("collector_stream_tweets_total",
                    "Messages with data received since the stream started.",
                    stream.get("tweets"))
        out.counter("collector_stream_malformed_lines_total",
                    "Lines that were not a JSON object, skipped since the stream started.",
                    stream.get("malformed_lines"))
        out.counter("collector_stream_connections_total",
                    "Connections made to the API since the stream started.",
                    stream.get("connections"))

    if status.sending:  # secondary_part fills it last, after its counts
        out.gauge("collector_chunks_waiting",
                  "Closed chunks the current main has not confirmed yet (secondary).",
                  status.chunks_waiting)
        out.gauge("collector_chunks_kept",
                  "Chunks the main confirmed, kept here until raw_retention_days (secondary).",
                  status.kept_chunks)
        out.gauge("collector_send_consecutive_failures",
                  "Pushes to the main that failed in a row (secondary).",
                  status.sending.get("consecutive_failures"))

    processing = status.processing
    if processing:
        out.gauge("collector_process_last_hour_age_seconds",
                  "Seconds since the end of the newest processed hour (main).",
                  processing.get("last_hour_processed_age"))
        out.gauge("collector_process_hours_waiting",
                  "Due hours not processed yet (main).", processing.get("hours_waiting"))
        out.gauge("collector_process_quarantined_entries",
                  "Entries in the quarantine, waiting for a human (main).",
                  processing.get("quarantined_entries"))

    uploading = status.uploading
    if uploading.get("enabled"):
        out.gauge("collector_upload_last_hour_age_seconds",
                  "Seconds since the end of the newest hour whose IDs file is on OSF (main).",
                  uploading.get("last_hour_uploaded_age"))
        out.gauge("collector_upload_last_run_ok",
                  "1 if the last upload run succeeded, 0 if it failed (main).",
                  uploading.get("last_run_ok"))

    targets: dict[str, dict[str, Any]] = status.replication.get("targets", {})
    if targets:
        replicas = sorted(targets.items())
        out.family("collector_replication_lag_seconds", "gauge",
                   "How long a replica host has been missing something the main holds "
                   "(0 when it holds everything; main).",
                   [({"replica": name}, target.get("behind_seconds"))
                    for name, target in replicas])
        out.family("collector_replication_chunks_waiting", "gauge",
                   "Chunks not yet confirmed on a replica host (main).",
                   [({"replica": name}, target.get("chunks_waiting"))
                    for name, target in replicas])
        out.family("collector_replication_consecutive_failures", "gauge",
                   "Replications to a replica host that failed in a row (main).",
                   [({"replica": name}, target.get("consecutive_failures"))
                    for name, target in replicas])

    replica = status.replica
    if replica:
        out.gauge("collector_replica_age_seconds",
                  "Seconds since this host last received the main's replicas.",
                  replica.get("age"))
        out.gauge("collector_replica_chunks_held",
                  "Replica chunks this host holds for the main.", replica.get("chunks_held"))
    return out.text()


def write_textfile(folder: Path, text: str) -> Path:
    """Replace `folder/collector.prom` atomically; one-line CollectorError when it cannot.

    The folder must exist: it is node_exporter's, so creating it here would only hide a typo
    in the path (the role creates it when it is missing).
    """
    try:
        mode = folder.stat().st_mode
    except FileNotFoundError:
        raise CollectorError(f"textfile folder {folder} does not exist") from None
    except OSError as error:
        raise CollectorError(f"cannot use textfile folder {folder}: {error.strerror}") from None
    if not stat.S_ISDIR(mode):
        raise CollectorError(f"textfile folder {folder} is not a folder")
    final = folder / TEXTFILE_NAME
    try:
        write_bytes_atomic(final, text.encode())
    except DiskFullError:
        raise CollectorError(f"cannot write {final}: the disk is full") from None
    except OSError as error:
        raise CollectorError(f"cannot write {final}: {error.strerror or error}") from None
    return final
