"""`collector status [--json]`: this host's health; exit 0 healthy, 1 degraded, 2 down."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from collector.commands import settings_from_args
from collector.status import HostStatus, host_status


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _age(seconds: Any) -> str:
    if seconds is None:
        return "never"
    return f"{float(seconds):.1f} s ago"


def _upload_state(uploading: dict[str, Any]) -> str:
    if not uploading.get("enabled"):
        return "OSF upload is off"
    if not uploading.get("last_run_at"):
        return "never"
    outcome = "ok" if uploading.get("last_run_ok") else f"failed: {uploading.get('last_error')}"
    return f"{uploading['last_run_at']} ({outcome})"


def _replica_state(replica: dict[str, Any]) -> str:
    if not replica.get("received"):
        return "nothing received from the main yet"
    text = f"{replica.get('chunks_held', 0)} chunks, newest {_age(replica.get('age'))}"
    return text


def _replication_state(target: dict[str, Any]) -> str:
    text = (f"{target.get('chunks_waiting', 0)} chunks waiting, last success "
            f"{target.get('last_success_at') or 'never'}")
    if target.get("consecutive_failures"):
        text += f", {target['consecutive_failures']} failed runs"
    return text


def render(status: HostStatus) -> str:
    """The human view: one `label  value` line per fact, problems last."""
    stream = status.stream
    if stream.get("running"):
        state = "connected" if stream.get("connected") else "running, not connected"
        if stream.get("stalled"):
            state += ", stalled"
    else:
        state = "not running"
    rows = [
        ("host", f"{status.server_id} ({status.role})"),
        ("verdict", status.verdict.name.lower()),
        ("stream", state),
        ("last message", _age(stream.get("last_message_age"))),
        ("last tweet", _age(stream.get("last_tweet_age"))),
        ("open chunk", stream.get("open_chunk") or "-"),
    ]
    if stream.get("backlog_bytes"):
        rows.append(("waiting in memory", f"{stream['backlog_bytes']} bytes"))
    if status.role == "main":
        processing, uploading = status.processing, status.uploading
        rows += [
            ("last hour processed", processing.get("last_hour_processed") or "none yet"),
            ("hours waiting", f"{processing.get('hours_waiting', 0)}"
                              + (f" (oldest {processing['oldest_hour_waiting']})"
                                 if processing.get("oldest_hour_waiting") else "")),
            ("last upload", _upload_state(uploading)),
        ]
        rows += [(f"replica {server_id}", _replication_state(target))
                 for server_id, target in status.replication.get("targets", {}).items()]
    else:
        sending = status.sending
        rows += [
            ("chunks not sent", f"{status.chunks_waiting}"
                                + (f" (oldest {status.oldest_chunk_waiting})"
                                   if status.oldest_chunk_waiting else "")),
            ("kept chunks", str(status.kept_chunks)),
            ("last push", sending.get("last_success_at") or "never"),
            ("failed pushes", str(sending.get("consecutive_failures", 0))),
        ]
    if status.replica:
        rows.append(("replica held", _replica_state(status.replica)))
    rows += [("problem", problem) for problem in status.problems]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in rows)


def main(args: argparse.Namespace) -> int:
    status = host_status(settings_from_args(args))
    if args.json:
        sys.stdout.write(orjson.dumps(status.as_dict()).decode() + "\n")
    else:
        sys.stdout.write(render(status) + "\n")
    return int(status.verdict)
