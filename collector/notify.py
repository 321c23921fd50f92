"""Alerts: one interface for every stage, so a stage never knows how the team is told.

`LogNotifier` writes the alert to the log (journald); email delivery implements the same
`Notifier` protocol. An alert has a `kind` (a stable key such as `stream_stalled`, used to
rate-limit repeats) and a subject that must be safe to show to anyone: no secrets.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collector.settings import Settings

log = logging.getLogger("collector.alert")

STREAM_STARTED = "stream_started"
STREAM_STOPPED = "stream_stopped"
STREAM_CRASHED = "stream_crashed"
STREAM_STALLED = "stream_stalled"
STREAM_FAILING = "stream_failing"
STREAM_RECOVERED = "stream_recovered"
DISK_FULL = "disk_full"
UPLOAD_FAILING = "upload_failing"
SEND_FAILING = "send_failing"
SEND_CONFLICT = "send_conflict"


class Notifier(Protocol):
    def alert(self, kind: str, subject: str, body: str = "") -> None:
        """Tell the team about an event; must never raise."""


class LogNotifier:
    """Alerts as WARNING log lines, e.g. `ALERT stream_stalled: no tweet for 300 s`."""

    def __init__(self, server_id: str) -> None:
        self.server_id = server_id

    def alert(self, kind: str, subject: str, body: str = "") -> None:
        log.warning("ALERT %s on %s: %s", kind, self.server_id, subject)


def make_notifier(settings: Settings) -> Notifier:
    """The notifier this host's settings ask for."""
    return LogNotifier(settings.server_id)
